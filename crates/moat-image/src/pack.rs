//! Writing tar streams from trees that someone else may be changing while
//! they are read: a container's files (`cp`, `export`, `commit`).
//!
//! The `tar` crate's `append_path`/`append_dir_all` write a header with the
//! size `stat` gave and then copy the file *until EOF*: a container that
//! grows the file meanwhile appends bytes of its choosing after the data the
//! header announced, and a reader on the host takes them for further
//! entries (a tar of the container's making: `~/.bashrc`, a setuid binary).
//! Go's `tar.Writer` refuses to write more than a header announced; this
//! writer does the same: every regular file contributes exactly the size in
//! its header: what grew is cut off, what shrank is zero-filled, and the
//! file is reported as changed. Symbolic links are archived as links, never
//! followed; FIFOs and device nodes as nodes, never opened.

use rustix::fs::{Mode, OFlags};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

/// Reads exactly `size` bytes: at most `size` from `inner`, then zeros if
/// `inner` ended early. Whether the source had a different length is in
/// [`Exact::changed`] once it was read to its end.
pub struct Exact<R> {
    inner: R,
    left: u64,
    /// The source ended before `size` bytes.
    short: bool,
}

impl<R: Read> Exact<R> {
    /// A reader of exactly `size` bytes of `inner`.
    pub fn new(inner: R, size: u64) -> Self {
        Self { inner, left: size, short: false }
    }

    /// Whether the source's length differed from the announced size: it
    /// ended early (zero-filled), or it has more (cut off). Reads at most
    /// one byte past the announced size.
    pub fn changed(&mut self) -> bool {
        if self.short {
            return true;
        }
        let mut one = [0u8; 1];
        loop {
            match self.inner.read(&mut one) {
                Ok(n) => return n > 0,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return true,
            }
        }
    }
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = if self.short {
            0
        } else {
            loop {
                match self.inner.read(&mut buf[..want]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
        };
        let n = if n == 0 {
            // the source ended early: zeros for the rest
            self.short = true;
            buf[..want].fill(0);
            want
        } else {
            n
        };
        self.left -= n as u64;
        Ok(n)
    }
}

/// A tar writer whose entries are exactly what their headers announce.
pub struct Packer<W: Write> {
    b: tar::Builder<W>,
    owner: Option<(u64, u64)>,
    mode: Option<u32>,
}

impl<W: Write> Packer<W> {
    /// A packer writing to `w`.
    pub fn new(w: W) -> Self {
        let mut b = tar::Builder::new(w);
        b.follow_symlinks(false);
        Self { b, owner: None, mode: None }
    }

    /// Entries added from now on get this owner (`COPY --chown`) and
    /// permission bits (`COPY --chmod`; links keep theirs) instead of the
    /// files' own.
    pub fn set_override(&mut self, owner: Option<(u64, u64)>, mode: Option<u32>) {
        self.owner = owner;
        self.mode = mode;
    }

    fn apply(&self, h: &mut tar::Header, link: bool) {
        if let Some((u, g)) = self.owner {
            h.set_uid(u);
            h.set_gid(g);
            h.set_username("").ok();
            h.set_groupname("").ok();
        }
        if let (Some(m), false) = (self.mode, link) {
            h.set_mode(m);
        }
    }

    /// One entry `name` for the file at `host` (not followed if it is a
    /// link); a directory's children are not added.
    pub fn append_path(&mut self, host: &Path, name: &Path) -> io::Result<()> {
        self.append_entry(host, name).map(|_| ())
    }

    /// [`Packer::append_path`], saying whether the entry was a directory
    /// (from the one `lstat` its header was made from).
    fn append_entry(&mut self, host: &Path, name: &Path) -> io::Result<bool> {
        let meta = std::fs::symlink_metadata(host)?;
        let ft = meta.file_type();
        if ft.is_file() {
            return self.append_file(host, name).map(|_| false);
        }
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        h.set_size(0);
        self.apply(&mut h, ft.is_symlink());
        if ft.is_symlink() {
            let target = std::fs::read_link(host)?;
            self.b.append_link(&mut h, name, &target)?;
        } else if ft.is_dir() {
            // a directory's name ends with '/', as Docker's and GNU tar's do
            let mut n = name.as_os_str().to_owned();
            if !n.as_encoded_bytes().ends_with(b"/") {
                n.push("/");
            }
            self.b.append_data(&mut h, Path::new(&n), io::empty())?;
        } else if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
            self.b.append_data(&mut h, name, io::empty())?;
        }
        // (sockets have no archive form: Docker skips them too)
        Ok(ft.is_dir())
    }

    /// A regular file: opened without following a link and without
    /// blocking (a FIFO swapped in is not waited on), described by the open
    /// file's own `fstat`, and exactly that many bytes written.
    fn append_file(&mut self, host: &Path, name: &Path) -> io::Result<()> {
        let fd = rustix::fs::open(
            host,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io::Error::from)?;
        let f = File::from(fd);
        let meta = f.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::other(format!("{} changed its type while it was archived", host.display())));
        }
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        let size = meta.len();
        h.set_size(size);
        self.apply(&mut h, false);
        let mut data = Exact::new(f, size);
        self.b.append_data(&mut h, name, &mut data)?;
        if data.changed() {
            tracing::warn!(
                "{} changed while it was copied: archived as its {size} bytes at the start of the copy",
                host.display()
            );
        }
        Ok(())
    }

    /// `host` as `name` and, for a directory, everything below it, children
    /// in name order.
    pub fn append_tree(&mut self, host: &Path, name: &Path) -> io::Result<()> {
        if self.append_entry(host, name)? {
            self.append_children(host, name)?;
        }
        Ok(())
    }

    /// The children of directory `host` (and everything below them) under
    /// `prefix` (empty: at the archive's top).
    pub fn append_children(&mut self, host: &Path, prefix: &Path) -> io::Result<()> {
        let mut names: Vec<_> = std::fs::read_dir(host)?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
        names.sort();
        for n in names {
            self.append_tree(&host.join(&n), &prefix.join(&n))?;
        }
        Ok(())
    }

    /// An entry of the caller's making (header size = `data`'s length).
    pub fn append_data(&mut self, h: &mut tar::Header, name: &Path, data: impl Read) -> io::Result<()> {
        let size = h.entry_size()?;
        self.b.append_data(h, name, Exact::new(data, size))
    }

    /// Ends the archive (each file that changed while it was read has had
    /// its warning); returns the writer.
    pub fn finish(self) -> io::Result<W> {
        let mut w = self.b.into_inner()?;
        w.flush()?;
        Ok(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn exact_cuts_and_fills() {
        let mut long = Exact::new(&b"abcdef"[..], 4);
        let mut out = Vec::new();
        long.read_to_end(&mut out).ok();
        assert_eq!(out, b"abcd");
        assert!(long.changed());
        let mut short = Exact::new(&b"ab"[..], 4);
        let mut out = Vec::new();
        short.read_to_end(&mut out).ok();
        assert_eq!(out, b"ab\0\0");
        assert!(short.changed());
        let mut same = Exact::new(&b"abcd"[..], 4);
        let mut out = Vec::new();
        same.read_to_end(&mut out).ok();
        assert_eq!(out, b"abcd");
        assert!(!same.changed());
    }

    /// A file that grows between `fstat` and EOF: only the announced bytes
    /// are archived, and the archive has exactly one entry.
    #[test]
    fn a_growing_file_adds_no_entries() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("app.log");
        std::fs::write(&p, vec![b'x'; 1024])?;
        // a reader that sees more than the header: simulate the growth by
        // packing a file and appending to it from inside the data reader
        struct Growing(File, PathBuf, bool);
        impl Read for Growing {
            fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                if !self.2 {
                    self.2 = true;
                    let mut inner = Vec::new();
                    let mut t = tar::Builder::new(&mut inner);
                    let mut h = tar::Header::new_gnu();
                    h.set_size(3);
                    h.set_mode(0o644);
                    h.set_cksum();
                    t.append_data(&mut h, "injected", &b"bad"[..])?;
                    drop(t);
                    std::fs::OpenOptions::new().append(true).open(&self.1)?.write_all(&inner)?;
                }
                self.0.read(b)
            }
        }
        let mut h = tar::Header::new_gnu();
        h.set_size(1024);
        h.set_mode(0o644);
        let mut p2 = Packer::new(Vec::new());
        p2.append_data(&mut h, Path::new("app.log"), Growing(File::open(&p)?, p.clone(), false))?;
        let bytes = p2.finish()?;
        let mut a = tar::Archive::new(&bytes[..]);
        let names: Vec<String> = a
            .entries()?
            .map(|e| e.map(|e| e.path().map(|p| p.display().to_string()).unwrap_or_default()))
            .collect::<Result<_, _>>()?;
        assert_eq!(names, ["app.log"]);
        Ok(())
    }
}
