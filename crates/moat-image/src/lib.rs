//! The moat image store.
//!
//! Images are loaded from docker-archive or OCI-layout tarballs (or imported
//! from a rootfs tarball), each layer unpacked once into `layers/<diff-id>/`
//! (overlayfs-ready, whiteouts converted) and its uncompressed tar kept as the
//! content-addressed blob `blobs/sha256/<diff-id>` so `save` reproduces the
//! exact bytes. The image ID is the digest of the config JSON, kept verbatim.
//! See `docs/images.md`.

pub mod archive;
pub mod changes;
pub mod compress;
pub mod hashing;
pub mod pack;
pub mod unpack;

#[cfg(test)]
mod fuzz;

use chrono::{DateTime, Utc};
use compress::{decompress, detect, Compression};
use hashing::HashReader;
use moat_core::{Digest, ImageRef};
use moat_store::{FileLock, ImageRecord, Layout, Store, StoreError, TmpDir};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, Write};
use std::path::Path;
pub use unpack::Limits;

/// The largest image config, manifest or index accepted (from a registry or
/// an archive), as containerd caps manifests: every `images` and `inspect`
/// reads the config, so a huge one costs every later command.
pub const MAX_CONFIG_BYTES: u64 = 8 << 20;

/// The most bytes accepted after a layer's tar end-of-archive blocks (tar
/// writers pad to a record of 10 KiB; anything beyond 1 MiB is not padding
/// and would be stored outside the unpack limits).
pub const MAX_TRAILING_BYTES: u64 = 1 << 20;

/// One step of an image removal, Docker's `ImageDeleteResponseItem`
/// (`{"Untagged": "busybox:latest"}`, `{"Deleted": "sha256:..."}`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum ImageDeleteItem {
    /// A name removed from the image.
    Untagged(String),
    /// The image (its ID) deleted.
    Deleted(String),
}

impl std::fmt::Display for ImageDeleteItem {
    /// The CLI's line: `Untagged: NAME` or `Deleted: ID`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Untagged(t) => write!(f, "Untagged: {t}"),
            Self::Deleted(d) => write!(f, "Deleted: {d}"),
        }
    }
}

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Metadata store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A refused or malformed archive entry.
    #[error(transparent)]
    Unpack(#[from] unpack::UnpackError),
    /// Unsupported compression.
    #[error(transparent)]
    Compress(#[from] compress::CompressError),
    /// The archive is not a valid image archive.
    #[error("invalid image archive: {0}")]
    BadArchive(String),
    /// Content does not match its digest.
    #[error("{what} is corrupt: expected digest {want}, content has {got}")]
    DigestMismatch {
        /// What was checked.
        what: String,
        /// Expected digest.
        want: String,
        /// Actual digest.
        got: String,
    },
    /// Invalid image config JSON.
    #[error("invalid image config: {0}")]
    BadConfig(String),
    /// Unknown image.
    #[error("No such image: {0}")]
    NoSuchImage(String),
    /// Invalid reference.
    #[error(transparent)]
    Reference(#[from] moat_core::reference::RefError),
    /// Removal refused.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Filesystem failure with context.
    #[error("{0}: {1}")]
    Io(String, io::Error),
    /// The engine root's filesystem is full.
    #[error("no space left on the engine root ({root}): the image needs more than the {free} bytes free beyond what is kept in reserve (64 MiB, or a tenth of a smaller filesystem)")]
    NoSpace {
        /// The engine root.
        root: String,
        /// Bytes that were free for it.
        free: u64,
    },
}

impl ImageError {
    /// Maps an io error with context.
    pub fn io(ctx: impl Into<String>) -> impl FnOnce(io::Error) -> ImageError {
        let ctx = ctx.into();
        move |e| ImageError::Io(ctx, e)
    }
}

/// The parts of an image config moat reads (tolerant of docker's extra fields).
#[derive(Debug, Clone, serde::Deserialize, Default)]
pub struct ConfigHead {
    /// Creation time.
    #[serde(default)]
    pub created: Option<String>,
    /// OS.
    #[serde(default)]
    pub os: Option<String>,
    /// Architecture.
    #[serde(default)]
    pub architecture: Option<String>,
    /// Layer digests.
    pub rootfs: RootFsHead,
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, serde::Deserialize, Default)]
pub struct RootFsHead {
    /// Uncompressed layer digests.
    pub diff_ids: Vec<String>,
}

/// The runtime part of an image config (`config` in the OCI image config,
/// Docker's field names), as containers inherit it.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct RuntimeConfig {
    /// Entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Default command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// User.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Stop signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<std::collections::BTreeMap<String, String>>,
    /// Exposed ports (`"80/tcp": {}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<std::collections::BTreeMap<String, serde_json::Value>>,
    /// Volumes (`"/data": {}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<std::collections::BTreeMap<String, serde_json::Value>>,
    /// Health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<serde_json::Value>,
    /// Build triggers (`ONBUILD`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_build: Option<Vec<String>>,
    /// The shell of shell-form commands (`SHELL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
}

#[derive(serde::Deserialize)]
struct ConfigRuntime {
    #[serde(default)]
    config: Option<RuntimeConfig>,
}

/// The runtime config of an image config JSON (empty when it has none).
pub fn runtime_config(raw: &[u8]) -> Result<RuntimeConfig, ImageError> {
    let c: ConfigRuntime = serde_json::from_slice(raw).map_err(|e| ImageError::BadConfig(e.to_string()))?;
    Ok(c.config.unwrap_or_default())
}

/// Parses the fields moat needs from a config.
pub fn parse_config(raw: &[u8]) -> Result<(ConfigHead, Vec<Digest>), ImageError> {
    let head: ConfigHead = serde_json::from_slice(raw).map_err(|e| ImageError::BadConfig(e.to_string()))?;
    let diffs = head
        .rootfs
        .diff_ids
        .iter()
        .map(|d| d.parse::<Digest>().map_err(|e| ImageError::BadConfig(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((head, diffs))
}

/// An image that a load brought in.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Image ID.
    pub id: Digest,
    /// Names given to it.
    pub tags: Vec<String>,
}

impl Loaded {
    /// Docker's report of the load: `Loaded image: NAME` per name, or
    /// `Loaded image ID: ID` for an image without one.
    pub fn report(&self) -> Vec<String> {
        if self.tags.is_empty() {
            return vec![format!("Loaded image ID: {}", self.id)];
        }
        self.tags.iter().map(|t| format!("Loaded image: {t}")).collect()
    }
}

/// What `prune` removed.
#[derive(Debug, Default)]
pub struct PruneReport {
    /// Removed image IDs.
    pub deleted: Vec<Digest>,
    /// Bytes of layer data freed.
    pub reclaimed: u64,
}

/// Unpacks layers into a pull's or load's scratch directory; holds no
/// database handle, so a pull's threads share it.
#[derive(Debug, Clone)]
pub struct Unpacker {
    layout: Layout,
    limits: Limits,
}

impl Unpacker {
    fn no_space(&self, e: unpack::UnpackError) -> ImageError {
        match e {
            unpack::UnpackError::NoSpace(free) => {
                ImageError::NoSpace { root: self.layout.root().display().to_string(), free }
            }
            e => e.into(),
        }
    }

    /// Unpacks one layer stream into `tmp`, checking digests. Returns its
    /// diff ID and size: the bytes of its files' content (Docker's layer
    /// size: no tar headers, links or directories); no size when the layer
    /// is stored already (its recorded one holds).
    fn import_layer(
        &self,
        tmp: &Path,
        idx: usize,
        mut src: File,
        want_blob: Option<&Digest>,
        want_diff: Option<&Digest>,
    ) -> Result<(Digest, Option<u64>), ImageError> {
        let layout = &self.layout;
        if let Some(d) = want_diff {
            let blob = layout.blob(d.hex());
            if layout.layer(d.hex()).is_dir() && blob.exists() {
                return Ok((d.clone(), None));
            }
        }
        let what = format!("layer {}", idx + 1);
        let mut head = BufReader::new(&mut src);
        let compression = detect(&mut head)?;
        drop(head);
        src.rewind().map_err(ImageError::io(format!("read {what}")))?;
        if let (Some(want), true) = (want_blob, compression != Compression::None) {
            let (got, _, _) = HashReader::new(&mut src, None::<io::Sink>)
                .finish(u64::MAX)
                .map_err(ImageError::io(format!("read {what}")))?;
            if &got != want {
                return Err(ImageError::DigestMismatch { what, want: want.to_string(), got: got.to_string() });
            }
            src.rewind().map_err(ImageError::io(format!("read {what}")))?;
        }
        let diff = Self::unpack_into(tmp, idx, src, &what, want_diff, self.limits, |e| self.no_space(e))?;
        if (want_blob.is_some() && compression == Compression::None) && want_blob != Some(&diff.0) {
            return Err(ImageError::DigestMismatch {
                what,
                want: want_blob.map(|d| d.to_string()).unwrap_or_default(),
                got: diff.0.to_string(),
            });
        }
        Ok((diff.0, Some(diff.1)))
    }

    /// Decompresses `src` into `tmp/layer-{idx}` (the tree) and
    /// `tmp/blob-{idx}` (the uncompressed tar), checking the uncompressed
    /// digest against `want_diff`. Returns the diff ID and the bytes of its
    /// files' content.
    fn unpack_into(
        tmp: &Path,
        idx: usize,
        src: impl Read,
        what: &str,
        want_diff: Option<&Digest>,
        limits: Limits,
        no_space: impl Fn(unpack::UnpackError) -> ImageError,
    ) -> Result<(Digest, u64), ImageError> {
        let dir = tmp.join(format!("layer-{idx}"));
        let blob_path = tmp.join(format!("blob-{idx}"));
        std::fs::create_dir(&dir).map_err(ImageError::io("create layer directory"))?;
        let blob = io::BufWriter::with_capacity(
            1 << 20,
            File::create(&blob_path).map_err(ImageError::io("create layer blob"))?,
        );
        let mut hr = HashReader::new(decompress(src)?, Some(blob));
        let stats = unpack::unpack(&mut hr, &dir, unpack::Kind::Layer, limits).map_err(no_space)?;
        let (diff, _, blob) = hr.finish(MAX_TRAILING_BYTES).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => ImageError::BadArchive(format!("{what}: {e}")),
            _ => ImageError::Io(format!("read {what}"), e),
        })?;
        if let Some(mut b) = blob {
            b.flush().map_err(ImageError::io("write layer blob"))?;
        }
        if let Some(w) = want_diff {
            if w != &diff {
                return Err(ImageError::DigestMismatch {
                    what: format!("{what} (uncompressed)"),
                    want: w.to_string(),
                    got: diff.to_string(),
                });
            }
        }
        Ok((diff, stats.bytes))
    }

    /// Unpacks layer `idx` of the pull while it downloads: `src` is the
    /// blob as it arrives (compressed or not). Checks the uncompressed
    /// digest; the caller checks the compressed one of the same bytes
    /// before it finishes the pull. Returns the bytes of its files' content.
    pub fn unpack_pulled_stream(
        &self,
        txn: &PullTxn,
        idx: usize,
        src: impl Read,
        diff: &Digest,
    ) -> Result<u64, ImageError> {
        let what = format!("layer {}", idx + 1);
        Ok(Self::unpack_into(txn.tmp.path(), idx, src, &what, Some(diff), self.limits, |e| self.no_space(e))?.1)
    }
}

/// A pull in progress: its scratch directory and the shared GC lock.
pub struct PullTxn {
    tmp: TmpDir,
    _gc: FileLock,
}

impl PullTxn {
    /// The scratch directory (downloads go here).
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }
}

/// What `commit` records besides the layer.
#[derive(Debug, Clone, Default)]
pub struct CommitInfo {
    /// The runtime `config` of the new image.
    pub config: serde_json::Value,
    /// `-m`.
    pub comment: String,
    /// `-a`.
    pub author: String,
    /// The history's `created_by` (the container's command).
    pub created_by: String,
    /// `repo[:tag]` to give the new image.
    pub tag: Option<String>,
}

/// This host's architecture in OCI's words.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        a => a,
    }
}

/// The image store of one moat root.
pub struct ImageStore {
    store: Store,
    /// Unpack limits (tar-bomb protection).
    pub limits: Limits,
}

fn gc_lock(l: &Layout) -> std::path::PathBuf {
    l.locks().join("gc.lock")
}

impl ImageStore {
    /// Opens the store and removes scratch space left by dead processes.
    pub fn open(store: Store) -> Result<Self, ImageError> {
        moat_store::tmp::sweep(store.layout())?;
        Ok(Self { store, limits: Limits::default() })
    }

    /// The metadata store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The metadata store, mutably.
    pub fn store_mut(&mut self) -> &mut Store {
        &mut self.store
    }

    fn layout(&self) -> &Layout {
        self.store.layout()
    }

    fn no_space(&self, e: unpack::UnpackError) -> ImageError {
        self.unpacker().no_space(e)
    }

    /// The part of the store that unpacks layers: shareable between threads.
    pub fn unpacker(&self) -> Unpacker {
        Unpacker { layout: self.layout().clone(), limits: self.limits }
    }

    /// Unpacks one layer stream into `tmp`, checking digests. Returns its
    /// diff ID and the bytes of its files' content (recorded already for a
    /// stored layer).
    fn import_layer(
        &self,
        tmp: &Path,
        idx: usize,
        src: File,
        want_blob: Option<&Digest>,
        want_diff: Option<&Digest>,
    ) -> Result<(Digest, u64), ImageError> {
        let (diff, size) = self.unpacker().import_layer(tmp, idx, src, want_blob, want_diff)?;
        let size = match size {
            Some(s) => s,
            None => self.layer_size(&diff)?,
        };
        Ok((diff, size))
    }

    /// Moves unpacked layers into place. Layers are complete (verified) before
    /// the rename, so a process crash at any point leaves either no layer or a
    /// whole one. Files are not fsynced one by one; one `syncfs` of the
    /// store's filesystem after the renames makes the layers durable before
    /// the image's record can be (a power cut then loses at most the record,
    /// never the data of a recorded layer — see docs/reliability.md).
    fn commit_layers(&self, tmp: &Path, layers: &[(usize, Digest)]) -> Result<(), ImageError> {
        let layout = self.layout();
        let mut moved = false;
        for (idx, d) in layers {
            let dir = tmp.join(format!("layer-{idx}"));
            if !dir.exists() {
                continue; // reused an existing layer
            }
            std::fs::rename(tmp.join(format!("blob-{idx}")), layout.blob(d.hex()))
                .map_err(ImageError::io("store layer blob"))?;
            moved = true;
            match std::fs::rename(&dir, layout.layer(d.hex())) {
                Ok(()) => {}
                // the same layer arrived concurrently or twice: keep the first
                Err(e) if matches!(e.kind(), io::ErrorKind::DirectoryNotEmpty | io::ErrorKind::AlreadyExists) => {}
                Err(e) => return Err(ImageError::Io("store layer".into(), e)),
            }
        }
        if moved {
            use std::os::fd::AsRawFd;
            let dir = std::fs::File::open(layout.layers()).map_err(ImageError::io("open the layer store"))?;
            // through libc (rustix would make the raw syscall): the power-cut
            // test's LD_PRELOAD library sees libc's calls only
            // SAFETY: syncfs on a descriptor we own
            if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
                return Err(ImageError::Io("sync the layer store".into(), io::Error::last_os_error()));
            }
        }
        Ok(())
    }

    fn stage_archive(&self, r: impl Read, tmp: &TmpDir) -> Result<std::path::PathBuf, ImageError> {
        let stage = tmp.path().join("archive");
        std::fs::create_dir(&stage).map_err(ImageError::io("create staging directory"))?;
        unpack::unpack(decompress(r)?, &stage, unpack::Kind::Plain, self.limits).map_err(|e| self.no_space(e))?;
        Ok(stage)
    }

    /// Loads every image of a docker-archive or OCI-layout tarball.
    pub fn load(&mut self, r: impl Read) -> Result<Vec<Loaded>, ImageError> {
        let _gc = FileLock::shared(&gc_lock(self.layout())).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let tmp = TmpDir::new(self.layout(), "load")?;
        let stage = self.stage_archive(r, &tmp)?;
        moat_core::crash::point("load.staged");
        let images = archive::read(&stage)?;
        let mut out = Vec::new();
        let mut n = 0;
        for img in images {
            let (head, diff_ids) = parse_config(&img.config)?;
            if diff_ids.len() != img.layers.len() {
                return Err(ImageError::BadArchive(format!(
                    "image config lists {} layers but the archive has {}",
                    diff_ids.len(),
                    img.layers.len()
                )));
            }
            let mut done = Vec::new();
            let mut sizes = Vec::new();
            for (l, want) in img.layers.iter().zip(&diff_ids) {
                let f = File::open(&l.path).map_err(ImageError::io("open layer"))?;
                let (d, size) = self.import_layer(tmp.path(), n, f, l.blob_digest.as_ref(), Some(want))?;
                done.push((n, d.clone()));
                sizes.push((d, size));
                n += 1;
            }
            self.commit_layers(tmp.path(), &done)?;
            moat_core::crash::point("load.layers");
            let rec = record(&img.config, &head, diff_ids, &sizes, img.tags.clone())?;
            self.store.put_image(&rec, &sizes)?;
            moat_core::crash::point("load.recorded");
            // an index may name one image several times: report it once
            match out.iter_mut().find(|l: &&mut Loaded| l.id == rec.id) {
                Some(l) => l.tags.extend(img.tags),
                None => out.push(Loaded { id: rec.id, tags: img.tags }),
            }
        }
        Ok(out)
    }

    /// Starts storing a pulled image: a scratch directory, and the GC lock
    /// held shared so nothing it unpacks is collected meanwhile.
    pub fn begin_pull(&self) -> Result<PullTxn, ImageError> {
        let gc = FileLock::shared(&gc_lock(self.layout())).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(PullTxn { tmp: TmpDir::new(self.layout(), "pull")?, _gc: gc })
    }

    /// True when the layer `diff` is stored (unpacked and its blob kept):
    /// a pull need not download it.
    pub fn has_layer_data(&self, diff: &Digest) -> bool {
        self.layout().layer(diff.hex()).is_dir() && self.layout().blob(diff.hex()).is_file()
    }

    /// Commits a pull: the unpacked layers moved into place, the image
    /// recorded with its tags and `repo@digest`. `layers` are (index,
    /// diff ID, uncompressed size) bottom first.
    pub fn finish_pull(
        &mut self,
        txn: PullTxn,
        config: &[u8],
        layers: &[(usize, Digest, u64)],
        tags: Vec<String>,
        repo_digest: Option<String>,
    ) -> Result<Digest, ImageError> {
        let staged: Vec<(usize, Digest)> = layers.iter().map(|(i, d, _)| (*i, d.clone())).collect();
        self.commit_layers(txn.tmp.path(), &staged)?;
        moat_core::crash::point("pull.layers");
        let (head, diff_ids) = parse_config(config)?;
        let sizes: Vec<(Digest, u64)> = layers.iter().map(|(_, d, s)| (d.clone(), *s)).collect();
        if diff_ids != sizes.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>() {
            return Err(ImageError::BadConfig("the manifest's layers do not match the config's diff IDs".into()));
        }
        let rec = record(config, &head, diff_ids, &sizes, tags)?;
        self.store.put_image(&rec, &sizes)?;
        moat_core::crash::point("pull.recorded");
        if let Some(rd) = repo_digest {
            self.store.add_repo_digest(&rd, &rec.id)?;
        }
        drop(txn);
        Ok(rec.id)
    }

    /// The size recorded for a stored layer (its files' content).
    pub fn layer_size(&self, diff: &Digest) -> Result<u64, ImageError> {
        Ok(self.store.layer_size(diff)?.unwrap_or(0))
    }

    /// Stores one layer from a stream (stdin, a pipe): spooled into `tmp`
    /// so it can be sniffed and rewound, unpacked, moved into place.
    fn spool_layer(&self, tmp: &TmpDir, r: impl Read, what: &str) -> Result<(Digest, u64), ImageError> {
        let spool = tmp.path().join("input");
        let mut f = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&spool)
            .map_err(ImageError::io("create spool file"))?;
        let n = io::copy(&mut { r }, &mut f).map_err(ImageError::io(what))?;
        if n == 0 {
            // not even an empty tar (1 KiB of end blocks): no archive at all
            return Err(ImageError::BadArchive("the input is empty: nothing to import".into()));
        }
        f.rewind().map_err(ImageError::io(what))?;
        let (diff, size) = self.import_layer(tmp.path(), 0, f, None, None)?;
        self.commit_layers(tmp.path(), &[(0, diff.clone())])?;
        Ok((diff, size))
    }

    /// Imports a rootfs tarball as a one-layer image (like `docker import`),
    /// applying Dockerfile-style `changes` to its config.
    pub fn import(
        &mut self,
        r: impl Read,
        name: Option<&str>,
        comment: &str,
        changes: &[String],
    ) -> Result<Digest, ImageError> {
        let mut cfg =
            serde_json::json!({ "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"] });
        for c in changes {
            changes::apply(&mut cfg, c)?;
        }
        let tag = name.map(ImageRef::parse).transpose()?.and_then(|r| r.tagged());
        let _gc = FileLock::shared(&gc_lock(self.layout())).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let tmp = TmpDir::new(self.layout(), "import")?;
        let (diff, size) = self.spool_layer(&tmp, r, "read input")?;
        moat_core::crash::point("import.spooled");
        let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "created": now,
            "config": cfg,
            "history": [{ "created": now, "comment": comment }],
            "rootfs": { "type": "layers", "diff_ids": [diff.to_string()] },
        });
        let raw = serde_json::to_vec(&config).map_err(|e| ImageError::BadConfig(e.to_string()))?;
        let (head, diffs) = parse_config(&raw)?;
        let sizes = vec![(diff, size)];
        let rec = record(&raw, &head, diffs, &sizes, tag.into_iter().collect())?;
        self.store.put_image(&rec, &sizes)?;
        moat_core::crash::point("import.recorded");
        Ok(rec.id)
    }

    /// Makes a new image from `parent` plus one layer (a tar stream in the
    /// OCI format, whiteouts as `.wh.` files): `docker commit`. `config` is
    /// the new image's runtime `config`; the history gains one entry.
    pub fn commit(&mut self, parent: &ImageRecord, layer: impl Read, c: CommitInfo) -> Result<Digest, ImageError> {
        let mut layer = layer;
        self.derive(Some(parent), Some(&mut layer), c)
    }

    /// Makes a new image from `parent` (`None`: `FROM scratch`) with its
    /// runtime config replaced and, when `layer` is given, one more layer;
    /// without one the history entry is an `empty_layer` (a build's
    /// `ENV`, `CMD`, ...).
    pub fn derive(
        &mut self,
        parent: Option<&ImageRecord>,
        layer: Option<&mut dyn Read>,
        c: CommitInfo,
    ) -> Result<Digest, ImageError> {
        let tag = c.tag.as_deref().map(ImageRef::parse).transpose()?.and_then(|r| r.tagged());
        let _gc = FileLock::shared(&gc_lock(self.layout())).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let tmp = TmpDir::new(self.layout(), "commit")?;
        let added = match layer {
            Some(l) => Some(self.spool_layer(&tmp, l, "read the new layer")?),
            None => None,
        };
        let mut raw: serde_json::Value = match parent {
            Some(p) => serde_json::from_slice(&p.config).map_err(|e| ImageError::BadConfig(e.to_string()))?,
            None => serde_json::json!({ "architecture": host_arch(), "os": "linux" }),
        };
        let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        raw["config"] = c.config;
        raw["created"] = serde_json::Value::String(now.clone());
        if !c.author.is_empty() {
            raw["author"] = serde_json::Value::String(c.author.clone());
        }
        // the image's own comment (`Comment` in inspect) is this commit's
        // message, as Docker's: never the parent's
        match raw.as_object_mut() {
            Some(o) if c.comment.is_empty() => {
                o.remove("comment");
            }
            Some(o) => {
                o.insert("comment".into(), serde_json::Value::String(c.comment.clone()));
            }
            None => {}
        }
        let mut entry = serde_json::json!({ "created": now, "created_by": c.created_by });
        if !c.comment.is_empty() {
            entry["comment"] = serde_json::Value::String(c.comment.clone());
        }
        if !c.author.is_empty() {
            entry["author"] = serde_json::Value::String(c.author.clone());
        }
        if added.is_none() {
            entry["empty_layer"] = serde_json::Value::Bool(true);
        }
        match raw.get_mut("history").and_then(|h| h.as_array_mut()) {
            Some(h) => h.push(entry),
            None => raw["history"] = serde_json::json!([entry]),
        }
        let parent_diffs = parent.map(|p| p.diff_ids.clone()).unwrap_or_default();
        let mut diffs: Vec<serde_json::Value> =
            parent_diffs.iter().map(|d| serde_json::Value::String(d.to_string())).collect();
        if let Some((d, _)) = &added {
            diffs.push(serde_json::Value::String(d.to_string()));
        }
        raw["rootfs"] = serde_json::json!({ "type": "layers", "diff_ids": diffs });
        let bytes = serde_json::to_vec(&raw).map_err(|e| ImageError::BadConfig(e.to_string()))?;
        let (head, diff_ids) = parse_config(&bytes)?;
        let known: std::collections::HashMap<Digest, u64> = self.store.layers()?.into_iter().collect();
        let mut sizes: Vec<(Digest, u64)> =
            parent_diffs.iter().map(|d| (d.clone(), known.get(d).copied().unwrap_or(0))).collect();
        sizes.extend(added);
        let rec = record(&bytes, &head, diff_ids, &sizes, tag.into_iter().collect())?;
        self.store.put_image(&rec, &sizes)?;
        Ok(rec.id)
    }

    /// Finds an image by name, `name:tag`, full or short (≥ 4 hex) ID, or `sha256:` ID.
    pub fn resolve(&self, s: &str) -> Result<ImageRecord, ImageError> {
        let by_prefix = |p: &str| -> Result<Option<ImageRecord>, ImageError> {
            let ids = self.store.images_by_prefix(p)?;
            match ids.len() {
                0 => Ok(None),
                1 => Ok(self.store.image(&ids[0])?),
                n => Err(StoreError::Ambiguous { kind: "image", prefix: p.into(), count: n }.into()),
            }
        };
        if let Some(hex) = s.strip_prefix("sha256:") {
            return by_prefix(hex)?.ok_or_else(|| ImageError::NoSuchImage(s.into()));
        }
        if let Ok(r) = ImageRef::parse(s) {
            // `name@sha256:...` names the manifest a registry served
            if let Some(d) = &r.digest {
                let id = self.store.repo_digest_target(&format!("{}@{d}", r.repo))?;
                return match id {
                    Some(id) => self.store.image(&id)?.ok_or_else(|| ImageError::NoSuchImage(s.into())),
                    None => Err(ImageError::NoSuchImage(s.into())),
                };
            }
            if let Some(t) = r.tagged() {
                if let Some(id) = self.store.tag_target(&t)? {
                    return self.store.image(&id)?.ok_or_else(|| ImageError::NoSuchImage(s.into()));
                }
            }
        }
        if s.len() >= 4 && moat_core::id::is_hex_prefix(s) {
            if let Some(img) = by_prefix(s)? {
                return Ok(img);
            }
        }
        Err(ImageError::NoSuchImage(s.into()))
    }

    /// Every image.
    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        Ok(self.store.images()?)
    }

    /// Gives image `src` the name `target`.
    pub fn tag(&mut self, src: &str, target: &str) -> Result<(), ImageError> {
        let img = self.resolve(src)?;
        let r = ImageRef::parse(target)?;
        let t = r
            .tagged()
            .ok_or_else(|| ImageError::BadArchive(format!("cannot tag with a digest reference {target:?}")))?;
        self.store.tag(&t, &img.id)?;
        moat_core::crash::point("tag.recorded");
        Ok(())
    }

    /// Removes an image name or image (like `docker rmi`): what was untagged
    /// and deleted, in order.
    pub fn remove(&mut self, s: &str, force: bool) -> Result<Vec<ImageDeleteItem>, ImageError> {
        let img = self.resolve(s)?;
        let by_tag = ImageRef::parse(s).ok().and_then(|r| r.tagged()).filter(|t| img.tags.contains(t));
        let users = self.store.containers_using(&img.id)?;
        let mut out = Vec::new();
        let untag_all = match &by_tag {
            Some(t) if img.tags.len() > 1 => {
                self.store.untag(t)?;
                return Ok(vec![ImageDeleteItem::Untagged(t.clone())]);
            }
            Some(t) => {
                if !users.is_empty() && !force {
                    return Err(ImageError::Conflict(format!(
                        "unable to remove repository reference {t:?} (must force) - container {} is using its referenced image {}",
                        users[0],
                        img.id.short()
                    )));
                }
                vec![t.clone()]
            }
            None => {
                if img.tags.len() > 1 && !force {
                    return Err(ImageError::Conflict(format!(
                        "unable to delete {} (must be forced) - image is referenced in multiple repositories",
                        img.id.short()
                    )));
                }
                if !users.is_empty() && !force {
                    return Err(ImageError::Conflict(format!(
                        "unable to delete {} (must be forced) - image is being used by container {}",
                        img.id.short(),
                        users[0]
                    )));
                }
                img.tags.clone()
            }
        };
        for t in untag_all {
            self.store.untag(&t)?;
            out.push(ImageDeleteItem::Untagged(t));
        }
        moat_core::crash::point("rmi.untagged");
        if users.is_empty() {
            self.store.delete_image(&img.id)?;
            moat_core::crash::point("rmi.deleted");
            out.push(ImageDeleteItem::Deleted(img.id.to_string()));
            self.gc()?;
        }
        Ok(out)
    }

    /// Removes dangling images (all unused ones with `all`) and unreferenced layers.
    pub fn prune(&mut self, all: bool) -> Result<PruneReport, ImageError> {
        let mut rep = PruneReport::default();
        for img in self.store.images()? {
            if (all || img.tags.is_empty()) && self.store.containers_using(&img.id)?.is_empty() {
                self.store.delete_image(&img.id)?;
                moat_core::crash::point("image.prune.deleted");
                rep.deleted.push(img.id);
            }
        }
        rep.reclaimed = self.gc()?;
        Ok(rep)
    }

    /// Deletes layers and blobs no image references, including leftovers of
    /// crashed loads. Skipped (returns 0) while a load is running.
    pub fn gc(&mut self) -> Result<u64, ImageError> {
        let layout = self.layout().clone();
        let Some(_gc) = FileLock::try_exclusive(&gc_lock(&layout)).map_err(|e| StoreError::Corrupt(e.to_string()))?
        else {
            return Ok(0);
        };
        self.store.drop_unreferenced_layers()?;
        moat_core::crash::point("gc.layers");
        let keep: std::collections::HashSet<String> =
            self.store.layers()?.into_iter().map(|(d, _)| d.hex().to_string()).collect();
        let mut freed = 0;
        for (dir, is_blob) in [(layout.blobs(), true), (layout.layers(), false)] {
            let rd = std::fs::read_dir(&dir).map_err(ImageError::io(format!("list {}", dir.display())))?;
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if keep.contains(&name) {
                    continue;
                }
                let p = e.path();
                if is_blob {
                    freed += e.metadata().map(|m| m.len()).unwrap_or(0);
                    std::fs::remove_file(&p).map_err(ImageError::io(format!("remove {}", p.display())))?;
                } else {
                    std::fs::remove_dir_all(&p).map_err(ImageError::io(format!("remove {}", p.display())))?;
                }
            }
        }
        Ok(freed)
    }

    /// Writes `refs` as a docker-archive tarball (what `docker save` writes).
    pub fn save(&self, refs: &[String], w: impl Write) -> Result<(), ImageError> {
        // every name resolves before the first byte is written
        let images = refs.iter().map(|s| self.resolve(s)).collect::<Result<Vec<_>, _>>()?;
        let mut b = tar::Builder::new(w);
        let mut manifest = Vec::new();
        let mut repositories = serde_json::Map::new();
        let mut written = std::collections::HashSet::new();
        for (s, img) in refs.iter().zip(images) {
            let cfg_name = format!("{}.json", img.id.hex());
            if written.insert(cfg_name.clone()) {
                append(&mut b, &cfg_name, img.config.len() as u64, &img.config[..])?;
            }
            let mut layers = Vec::new();
            for d in &img.diff_ids {
                let name = format!("{}/layer.tar", d.hex());
                if written.insert(name.clone()) {
                    let p = self.layout().blob(d.hex());
                    let f = File::open(&p).map_err(ImageError::io(format!("open layer blob {d}")))?;
                    let len = f.metadata().map_err(ImageError::io("stat layer blob"))?.len();
                    append(&mut b, &format!("{}/VERSION", d.hex()), 3, &b"1.0"[..])?;
                    append(&mut b, &name, len, f)?;
                }
                layers.push(name);
            }
            // name only what the user asked for when it is a tag, else every tag
            let tags: Vec<String> = match ImageRef::parse(s).ok().and_then(|r| r.tagged()) {
                Some(t) if img.tags.contains(&t) => vec![t],
                _ => img.tags.clone(),
            };
            for t in &tags {
                if let Some((repo, tag)) = t.rsplit_once(':') {
                    let top = img.diff_ids.last().map(|d| d.hex().to_string()).unwrap_or_default();
                    let e = repositories.entry(repo.to_string()).or_insert_with(|| serde_json::json!({}));
                    e[tag] = serde_json::Value::String(top);
                }
            }
            manifest.push(serde_json::json!({ "Config": cfg_name, "RepoTags": tags, "Layers": layers }));
        }
        let m = serde_json::to_vec(&manifest).map_err(|e| ImageError::BadConfig(e.to_string()))?;
        append(&mut b, "manifest.json", m.len() as u64, &m[..])?;
        let r = serde_json::to_vec(&repositories).map_err(|e| ImageError::BadConfig(e.to_string()))?;
        append(&mut b, "repositories", r.len() as u64, &r[..])?;
        b.into_inner().and_then(|mut w| w.flush()).map_err(ImageError::io("write archive"))?;
        Ok(())
    }
}

/// One entry of exactly `len` bytes (a blob that changed meanwhile cannot
/// add entries: [`pack::Exact`]).
fn append<W: Write>(b: &mut tar::Builder<W>, name: &str, len: u64, data: impl Read) -> Result<(), ImageError> {
    let mut h = tar::Header::new_gnu();
    h.set_size(len);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, name, pack::Exact::new(data, len)).map_err(ImageError::io("write archive"))
}

fn record(
    config: &[u8],
    head: &ConfigHead,
    diff_ids: Vec<Digest>,
    sizes: &[(Digest, u64)],
    tags: Vec<String>,
) -> Result<ImageRecord, ImageError> {
    let created =
        head.created.as_deref().and_then(|c| DateTime::parse_from_rfc3339(c).ok()).map(|t| t.with_timezone(&Utc));
    Ok(ImageRecord {
        id: Digest::of(config),
        config: config.to_vec(),
        diff_ids,
        size: sizes.iter().map(|(_, s)| s).sum(),
        created,
        added: Utc::now(),
        tags,
    })
}
