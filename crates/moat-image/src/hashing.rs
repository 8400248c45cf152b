//! Readers that hash (and optionally copy) what passes through them.

use moat_core::Digest;
use sha2::{Digest as _, Sha256};
use std::io::{self, Read, Write};

/// Hashes everything read through it; optionally tees it into a writer.
pub struct HashReader<R, W> {
    inner: R,
    hasher: Sha256,
    tee: Option<W>,
    count: u64,
}

impl<R: Read, W: Write> HashReader<R, W> {
    /// Hashes `inner`, copying bytes to `tee` when given.
    pub fn new(inner: R, tee: Option<W>) -> Self {
        Self { inner, hasher: Sha256::new(), tee, count: 0 }
    }

    /// Reads the rest of the stream (so the digest covers all of it), at
    /// most `max_rest` bytes (more is an `InvalidData` error), and returns
    /// the digest, the byte count and the tee writer.
    pub fn finish(mut self, max_rest: u64) -> io::Result<(Digest, u64, Option<W>)> {
        let rest = io::copy(&mut (&mut self).take(max_rest.saturating_add(1)), &mut io::sink())?;
        if rest > max_rest {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("more than {max_rest} bytes of trailing data after the archive's end"),
            ));
        }
        Ok((Digest::from_hasher(self.hasher), self.count, self.tee))
    }
}

impl<R: Read, W: Write> Read for HashReader<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        if let Some(t) = self.tee.as_mut() {
            t.write_all(&buf[..n])?;
        }
        self.count += n as u64;
        Ok(n)
    }
}
