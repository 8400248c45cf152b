//! The SQLite metadata database.

use crate::layout::Layout;
use chrono::{DateTime, Utc};
use moat_core::{id::is_hex_prefix, Digest};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use std::time::Duration;

/// Errors from the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("metadata store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Filesystem failure.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Stored JSON could not be decoded.
    #[error("metadata store holds a corrupt record: {0}")]
    Corrupt(String),
    /// No image matches the reference.
    #[error("No such image: {0}")]
    NoSuchImage(String),
    /// A short ID matches more than one object.
    #[error("{kind} ID {prefix:?} is ambiguous: it matches {count} {kind}s")]
    Ambiguous {
        /// What was looked up.
        kind: &'static str,
        /// The prefix given.
        prefix: String,
        /// How many matched.
        count: usize,
    },
    /// The root was created by a newer moat.
    #[error("metadata store schema version {0} is newer than this moat understands ({1})")]
    SchemaTooNew(i64, i64),
    /// The filesystem holding the root is full.
    #[error("no space left on the engine root ({0}): remove containers, images or files there to free space")]
    NoSpace(String),
    /// A volume is used by containers.
    #[error("remove {name}: volume is in use - [{}]", users.join(", "))]
    InUse {
        /// The volume.
        name: String,
        /// IDs of the containers using it.
        users: Vec<String>,
    },
    /// A unique name is taken.
    #[error("{kind} name {name:?} is already in use")]
    NameInUse {
        /// What kind of object.
        kind: &'static str,
        /// The name.
        name: String,
    },
}

impl StoreError {
    /// True for a full disk, whatever layer reported it.
    pub fn is_no_space(&self) -> bool {
        match self {
            Self::NoSpace(_) => true,
            Self::Sqlite(e) => e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull),
            Self::Io { source, .. } => source.raw_os_error() == Some(libc::ENOSPC),
            _ => false,
        }
    }

    /// True for a violated UNIQUE constraint.
    fn is_constraint(&self) -> bool {
        matches!(self, Self::Sqlite(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation))
    }
}

/// Converts an io error with context.
pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

/// One image as stored.
#[derive(Debug, Clone)]
pub struct ImageRecord {
    /// Image ID: the digest of the config JSON.
    pub id: Digest,
    /// The raw config JSON, byte for byte as loaded (its digest is the ID).
    pub config: Vec<u8>,
    /// Uncompressed layer digests, bottom first.
    pub diff_ids: Vec<Digest>,
    /// Sum of the uncompressed layer sizes.
    pub size: u64,
    /// Creation time from the config.
    pub created: Option<DateTime<Utc>>,
    /// When it entered this store.
    pub added: DateTime<Utc>,
    /// `repo:tag` names pointing at it.
    pub tags: Vec<String>,
}

/// A container row: identity plus opaque JSON owned by the engine.
#[derive(Debug, Clone)]
pub struct ContainerRow {
    /// 64-hex ID.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Image it was created from.
    pub image_id: Digest,
    /// Creation time.
    pub created: DateTime<Utc>,
    /// Engine-owned configuration JSON.
    pub config: String,
    /// Engine-owned state JSON.
    pub state: String,
}

/// A switch (virtual network) row.
#[derive(Debug, Clone)]
pub struct SwitchRow {
    /// 64-hex ID.
    pub id: String,
    /// Unique name (any case, spaces allowed).
    pub name: String,
    /// Creation time.
    pub created: DateTime<Utc>,
    /// Engine-owned configuration JSON.
    pub config: String,
}

const SCHEMA_VERSION: i64 = 8;

const SCHEMA: &str = "
CREATE TABLE images(
  id TEXT PRIMARY KEY,
  config BLOB NOT NULL,
  diff_ids TEXT NOT NULL,
  size INTEGER NOT NULL,
  created TEXT,
  added TEXT NOT NULL
);
CREATE TABLE tags(
  name TEXT PRIMARY KEY,
  image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
);
CREATE INDEX tags_image ON tags(image_id);
CREATE TABLE layers(
  diff_id TEXT PRIMARY KEY,
  size INTEGER NOT NULL
);
CREATE TABLE containers(
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  image_id TEXT NOT NULL REFERENCES images(id),
  created TEXT NOT NULL,
  config TEXT NOT NULL,
  state TEXT NOT NULL
);
CREATE TABLE switches(
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  created TEXT NOT NULL,
  config TEXT NOT NULL
);
";

/// Version 2: IP address management for switches.
const SCHEMA_V2: &str = "
CREATE TABLE endpoints(
  container_id TEXT NOT NULL REFERENCES containers(id) ON DELETE CASCADE,
  switch_id TEXT NOT NULL REFERENCES switches(id),
  ip TEXT NOT NULL,
  PRIMARY KEY (container_id, switch_id),
  UNIQUE (switch_id, ip)
);
";

/// Version 3: the event log.
const SCHEMA_V3: &str = "
CREATE TABLE events(
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  time_nano INTEGER NOT NULL,
  type TEXT NOT NULL,
  action TEXT NOT NULL,
  actor TEXT NOT NULL,
  attributes TEXT NOT NULL
);
CREATE INDEX events_time ON events(time_nano);
";

/// Version 4: volumes, and which containers use them (a volume in use cannot
/// be deleted: the foreign key refuses it in the same transaction).
const SCHEMA_V4: &str = "
CREATE TABLE volumes(
  name TEXT PRIMARY KEY,
  created TEXT NOT NULL,
  config TEXT NOT NULL
);
CREATE TABLE volume_refs(
  container_id TEXT NOT NULL REFERENCES containers(id) ON DELETE CASCADE,
  volume TEXT NOT NULL REFERENCES volumes(name),
  PRIMARY KEY (container_id, volume)
);
CREATE INDEX volume_refs_volume ON volume_refs(volume);
";

/// Version 5: repository digests of pulled and pushed images
/// (`name@sha256:...`, Docker's `RepoDigests`).
const SCHEMA_V5: &str = "
CREATE TABLE repo_digests(
  name TEXT PRIMARY KEY,
  image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
);
CREATE INDEX repo_digests_image ON repo_digests(image_id);
";

/// Version 6: the image a committed image was made from (Docker's `Parent`).
const SCHEMA_V6: &str = "
CREATE TABLE image_parents(
  image_id TEXT PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
  parent TEXT NOT NULL
);
";

/// Version 7: pods (a sandbox holding a group of containers).
const SCHEMA_V7: &str = "
CREATE TABLE pods(
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  created TEXT NOT NULL,
  config TEXT NOT NULL
);
";

/// Version 8: the build cache (a step's key to the image it made; the
/// entry goes with the image, so the cache never keeps one alive).
const SCHEMA_V8: &str = "
CREATE TABLE build_cache(
  key TEXT PRIMARY KEY,
  image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
  created TEXT NOT NULL
);
CREATE INDEX build_cache_image ON build_cache(image_id);
";

/// A pod row.
#[derive(Debug, Clone)]
pub struct PodRow {
    /// 64-hex ID.
    pub id: String,
    /// Unique name among pods.
    pub name: String,
    /// Creation time.
    pub created: DateTime<Utc>,
    /// Engine-owned configuration JSON.
    pub config: String,
}

/// A volume row.
#[derive(Debug, Clone)]
pub struct VolumeRow {
    /// Unique name (64 hex characters for an anonymous volume).
    pub name: String,
    /// Creation time.
    pub created: DateTime<Utc>,
    /// Engine-owned configuration JSON (driver, labels, options).
    pub config: String,
}

/// One recorded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    /// Position in the log (increasing).
    pub seq: i64,
    /// Nanoseconds since the epoch.
    pub time_nano: i64,
    /// `container`, `image`, `network`, `volume`.
    pub kind: String,
    /// `create`, `start`, `die`, ...
    pub action: String,
    /// ID of the object.
    pub actor: String,
    /// JSON object of string attributes.
    pub attributes: String,
}

/// Events older than this many seconds are dropped as new ones arrive.
const EVENT_RETENTION_SECS: i64 = 7 * 24 * 3600;

/// An open metadata store.
pub struct Store {
    conn: Connection,
    layout: Layout,
}

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

fn parse_ts(s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("timestamp {s:?}: {e}")))
}

fn digest(s: &str) -> Result<Digest, StoreError> {
    Digest::from_hex(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Space given up to let a transaction that frees space (removing a
/// container, recording an exit) through when the filesystem is full.
const RESERVE_BYTES: u64 = 4 << 20;

/// Makes `path` mode `mode` unless it already is.
fn restrict(path: &std::path::Path, mode: u32) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(m) if m.permissions().mode() & 0o7777 != mode => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(io(format!("cannot restrict {}", path.display())))
        }
        _ => Ok(()),
    }
}

/// Recreates the reserve file when it is missing and the filesystem has room
/// for it twice over.
fn ensure_reserve(layout: &Layout) {
    let p = layout.reserve();
    if p.exists() {
        return;
    }
    let free = rustix::fs::statvfs(layout.root()).map(|s| s.f_bavail * s.f_frsize).unwrap_or(0);
    if free < 2 * RESERVE_BYTES {
        return;
    }
    let tmp = layout.root().join(".reserve.tmp");
    let made = (|| -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, RESERVE_BYTES)?;
        std::fs::rename(&tmp, &p)
    })();
    if made.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

impl Store {
    /// Opens (creating if needed) the store under `layout`. The root and the
    /// database are readable by root only (0700 / 0600): they hold container
    /// environments and logs.
    pub fn open(layout: Layout) -> Result<Self, StoreError> {
        let root = layout.root().display().to_string();
        let nospace = |e: StoreError| if e.is_no_space() { StoreError::NoSpace(root.clone()) } else { e };
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(layout.root())
                .map_err(io(format!("cannot create {}", layout.root().display())))
                .map_err(nospace)?;
        }
        restrict(layout.root(), 0o700)?;
        for d in layout.dirs() {
            std::fs::create_dir_all(&d).map_err(io(format!("cannot create {}", d.display()))).map_err(nospace)?;
        }
        {
            use std::os::unix::fs::OpenOptionsExt;
            // created 0600 before SQLite opens it: its WAL and shm files take the same mode
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(layout.db())
                .map_err(io(format!("cannot create {}", layout.db().display())))
                .map_err(nospace)?;
        }
        for suffix in ["", "-wal", "-shm"] {
            restrict(std::path::Path::new(&format!("{}{suffix}", layout.db().display())), 0o600)?;
        }
        ensure_reserve(&layout);
        // Processes that open a brand-new root together race for the switch
        // to WAL and the schema; SQLite answers some of those races with
        // SQLITE_BUSY without calling the busy handler: try again.
        let mut tries = 0;
        loop {
            match Self::connect(&layout) {
                Err(StoreError::Sqlite(e))
                    if tries < 200
                        && matches!(
                            e.sqlite_error_code(),
                            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                        ) =>
                {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                r => return r.map_err(nospace),
            }
        }
    }

    /// One connection, configured and migrated.
    fn connect(layout: &Layout) -> Result<Self, StoreError> {
        let conn = Connection::open(layout.db())?;
        conn.busy_timeout(Duration::from_secs(60))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // WAL + NORMAL: a commit is atomic and survives any process crash
        // (the WAL is in the page cache); only a power loss may roll back the
        // last commits, never corrupt the database. FULL would fsync every
        // commit, several per `moat run`.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // moat's processes are short-lived or idle (the shim): a small page
        // cache keeps each shim's memory low
        conn.pragma_update(None, "cache_size", -128)?;
        // every moat command is short-lived and usually the last connection:
        // without this, each would checkpoint (and fsync) the WAL on exit.
        // Checkpoints still happen every 1000 pages (wal_autocheckpoint).
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
        let mut store = Self { conn, layout: layout.clone() };
        store.migrate()?;
        Ok(store)
    }

    /// The root's layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        // the common case (already current) needs no write lock
        let v: i64 = self.conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if v == SCHEMA_VERSION {
            return Ok(());
        }
        self.write(|tx| {
            let v: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            if v > SCHEMA_VERSION {
                return Err(StoreError::SchemaTooNew(v, SCHEMA_VERSION));
            }
            if v == 0 {
                tx.execute_batch(SCHEMA)?;
            }
            if v < 2 {
                tx.execute_batch(SCHEMA_V2)?;
            }
            if v < 3 {
                tx.execute_batch(SCHEMA_V3)?;
            }
            if v < 4 {
                tx.execute_batch(SCHEMA_V4)?;
            }
            if v < 5 {
                tx.execute_batch(SCHEMA_V5)?;
            }
            if v < 6 {
                tx.execute_batch(SCHEMA_V6)?;
            }
            if v < 7 {
                tx.execute_batch(SCHEMA_V7)?;
            }
            if v < 8 {
                tx.execute_batch(SCHEMA_V8)?;
            }
            if v < SCHEMA_VERSION {
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            }
            Ok(())
        })
    }

    /// Runs `f` in one immediate (write-locked) transaction and commits it.
    /// On a full filesystem the reserve file is given up and `f` runs once
    /// more; if that fails too, the error is [`StoreError::NoSpace`].
    pub fn write<T>(&mut self, mut f: impl FnMut(&Transaction<'_>) -> Result<T, StoreError>) -> Result<T, StoreError> {
        match self.write_once(&mut f) {
            Err(e) if e.is_no_space() => {
                let released = std::fs::remove_file(self.layout.reserve()).is_ok();
                let again = if released { self.write_once(&mut f) } else { Err(e) };
                again.map_err(|e| {
                    if e.is_no_space() {
                        StoreError::NoSpace(self.layout.root().display().to_string())
                    } else {
                        e
                    }
                })
            }
            r => r,
        }
    }

    fn write_once<T>(
        &mut self,
        f: &mut impl FnMut(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        moat_core::crash::point("store.commit");
        tx.commit()?;
        Ok(out)
    }

    // ---------------------------------------------------------------- images

    /// The recorded size of a stored layer, if it is recorded.
    pub fn layer_size(&self, diff: &Digest) -> Result<Option<u64>, StoreError> {
        let s: Option<i64> =
            self.conn.query_row("SELECT size FROM layers WHERE diff_id = ?1", [diff.hex()], |r| r.get(0)).optional()?;
        Ok(s.map(|s| s.max(0) as u64))
    }

    /// Records a loaded image, its layers and tags in one transaction. Tags
    /// that pointed elsewhere move to this image.
    pub fn put_image(&mut self, img: &ImageRecord, layer_sizes: &[(Digest, u64)]) -> Result<(), StoreError> {
        let diff_ids = serde_json::to_string(&img.diff_ids.iter().map(|d| d.hex()).collect::<Vec<_>>())
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.write(|tx| {
            for (d, size) in layer_sizes {
                tx.execute(
                    "INSERT OR IGNORE INTO layers(diff_id, size) VALUES (?1, ?2)",
                    params![d.hex(), *size as i64],
                )?;
            }
            tx.execute(
                "INSERT OR IGNORE INTO images(id, config, diff_ids, size, created, added) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![img.id.hex(), img.config, diff_ids, img.size as i64, img.created.as_ref().map(ts), ts(&img.added)],
            )?;
            for t in &img.tags {
                tx.execute(
                    "INSERT INTO tags(name, image_id) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET image_id = excluded.image_id",
                    params![t, img.id.hex()],
                )?;
            }
            Ok(())
        })
    }

    fn image_from_row(&self, r: &rusqlite::Row<'_>) -> Result<ImageRecord, StoreError> {
        let id: String = r.get(0)?;
        let diff_ids: String = r.get(2)?;
        let diff_ids: Vec<String> = serde_json::from_str(&diff_ids).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let created: Option<String> = r.get(4)?;
        let added: String = r.get(5)?;
        let mut tags: Vec<String> = self
            .conn
            .prepare_cached("SELECT name FROM tags WHERE image_id = ?1 ORDER BY name")?
            .query_map([&id], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        tags.sort();
        Ok(ImageRecord {
            id: digest(&id)?,
            config: r.get(1)?,
            diff_ids: diff_ids.iter().map(|d| digest(d)).collect::<Result<_, _>>()?,
            size: r.get::<_, i64>(3)? as u64,
            created: created.as_deref().map(parse_ts).transpose()?,
            added: parse_ts(&added)?,
            tags,
        })
    }

    const IMAGE_COLS: &'static str = "id, config, diff_ids, size, created, added";

    /// Every image, newest first.
    pub fn images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let mut st = self
            .conn
            .prepare(&format!("SELECT {} FROM images ORDER BY COALESCE(created, added) DESC, id", Self::IMAGE_COLS))?;
        let mut rows = st.query([])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(self.image_from_row(r)?);
        }
        Ok(out)
    }

    /// One image by exact ID.
    pub fn image(&self, id: &Digest) -> Result<Option<ImageRecord>, StoreError> {
        let mut st = self.conn.prepare(&format!("SELECT {} FROM images WHERE id = ?1", Self::IMAGE_COLS))?;
        let mut rows = st.query([id.hex()])?;
        match rows.next()? {
            Some(r) => Ok(Some(self.image_from_row(r)?)),
            None => Ok(None),
        }
    }

    /// The image a `repo:tag` name points at.
    pub fn tag_target(&self, name: &str) -> Result<Option<Digest>, StoreError> {
        let id: Option<String> =
            self.conn.query_row("SELECT image_id FROM tags WHERE name = ?1", [name], |r| r.get(0)).optional()?;
        id.as_deref().map(digest).transpose()
    }

    /// Images whose ID starts with `prefix` (hex).
    pub fn images_by_prefix(&self, prefix: &str) -> Result<Vec<Digest>, StoreError> {
        if !is_hex_prefix(prefix) {
            return Ok(Vec::new());
        }
        let mut st = self.conn.prepare("SELECT id FROM images WHERE id >= ?1 AND id < ?2")?;
        let upper = format!("{prefix}g");
        let ids: Vec<String> = st.query_map(params![prefix, upper], |r| r.get(0))?.collect::<Result<_, _>>()?;
        ids.iter().map(|s| digest(s)).collect()
    }

    /// Points `name` (`repo:tag`) at `id`.
    pub fn tag(&mut self, name: &str, id: &Digest) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO tags(name, image_id) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET image_id = excluded.image_id",
                params![name, id.hex()],
            )?;
            Ok(())
        })
    }

    /// Removes a tag; true if it existed.
    pub fn untag(&mut self, name: &str) -> Result<bool, StoreError> {
        self.write(|tx| Ok(tx.execute("DELETE FROM tags WHERE name = ?1", [name])? > 0))
    }

    /// Deletes an image row and its tags.
    pub fn delete_image(&mut self, id: &Digest) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute("DELETE FROM tags WHERE image_id = ?1", [id.hex()])?;
            tx.execute("DELETE FROM images WHERE id = ?1", [id.hex()])?;
            Ok(())
        })
    }

    /// Names of containers created from image `id`.
    pub fn containers_using(&self, id: &Digest) -> Result<Vec<String>, StoreError> {
        let mut st = self.conn.prepare("SELECT name FROM containers WHERE image_id = ?1 ORDER BY name")?;
        let names = st.query_map([id.hex()], |r| r.get(0))?.collect::<Result<_, _>>()?;
        Ok(names)
    }

    /// Layer diff IDs recorded as unpacked.
    pub fn layers(&self) -> Result<Vec<(Digest, u64)>, StoreError> {
        let mut st = self.conn.prepare("SELECT diff_id, size FROM layers")?;
        let rows: Vec<(String, i64)> = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
        rows.into_iter().map(|(d, s)| Ok((digest(&d)?, s as u64))).collect()
    }

    /// True when the layer is recorded as unpacked.
    pub fn has_layer(&self, d: &Digest) -> Result<bool, StoreError> {
        Ok(self.conn.query_row("SELECT 1 FROM layers WHERE diff_id = ?1", [d.hex()], |_| Ok(())).optional()?.is_some())
    }

    /// Deletes layer rows no image references; returns their digests.
    pub fn drop_unreferenced_layers(&mut self) -> Result<Vec<Digest>, StoreError> {
        self.write(|tx| {
            let mut used = std::collections::HashSet::new();
            {
                let mut st = tx.prepare("SELECT diff_ids FROM images")?;
                let rows: Vec<String> = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
                for r in rows {
                    let v: Vec<String> = serde_json::from_str(&r).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    used.extend(v);
                }
            }
            let all: Vec<String> = {
                let mut st = tx.prepare("SELECT diff_id FROM layers")?;
                let v = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
                v
            };
            let mut dropped = Vec::new();
            for d in all.into_iter().filter(|d| !used.contains(d)) {
                tx.execute("DELETE FROM layers WHERE diff_id = ?1", [&d])?;
                dropped.push(digest(&d)?);
            }
            Ok(dropped)
        })
    }

    // ------------------------------------------------------------ containers

    /// Inserts a new container; [`StoreError::NameInUse`] on a name clash.
    pub fn insert_container(&mut self, c: &ContainerRow) -> Result<(), StoreError> {
        self.insert_container_with_volumes(c, &[])
    }

    /// Inserts a new container and its references to `volumes`, creating
    /// those that do not exist yet, in one transaction.
    pub fn insert_container_with_volumes(&mut self, c: &ContainerRow, volumes: &[VolumeRow]) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO containers(id, name, image_id, created, config, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![c.id, c.name, c.image_id.hex(), ts(&c.created), c.config, c.state],
            )?;
            for v in volumes {
                tx.execute(
                    "INSERT OR IGNORE INTO volumes(name, created, config) VALUES (?1, ?2, ?3)",
                    params![v.name, ts(&v.created), v.config],
                )?;
                tx.execute(
                    "INSERT OR IGNORE INTO volume_refs(container_id, volume) VALUES (?1, ?2)",
                    params![c.id, v.name],
                )?;
            }
            Ok(())
        })
        .map_err(|e| {
            if e.is_constraint() {
                StoreError::NameInUse { kind: "container", name: c.name.clone() }
            } else {
                e
            }
        })
    }

    fn container_from_row(r: &rusqlite::Row<'_>) -> Result<ContainerRow, StoreError> {
        let image: String = r.get(2)?;
        let created: String = r.get(3)?;
        Ok(ContainerRow {
            id: r.get(0)?,
            name: r.get(1)?,
            image_id: digest(&image)?,
            created: parse_ts(&created)?,
            config: r.get(4)?,
            state: r.get(5)?,
        })
    }

    /// Every container, newest first.
    pub fn containers(&self) -> Result<Vec<ContainerRow>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT id, name, image_id, created, config, state FROM containers ORDER BY created DESC")?;
        let mut rows = st.query([])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(Self::container_from_row(r)?);
        }
        Ok(out)
    }

    /// Finds a container by exact name, exact ID or unique ID prefix.
    pub fn find_container(&self, key: &str) -> Result<Option<ContainerRow>, StoreError> {
        let all = self.containers()?;
        if let Some(c) = all.iter().find(|c| c.name == key || c.id == key) {
            return Ok(Some(c.clone()));
        }
        if !is_hex_prefix(key) {
            return Ok(None);
        }
        let m: Vec<_> = all.into_iter().filter(|c| c.id.starts_with(key)).collect();
        match m.len() {
            0 => Ok(None),
            1 => Ok(m.into_iter().next()),
            n => Err(StoreError::Ambiguous { kind: "container", prefix: key.into(), count: n }),
        }
    }

    /// Replaces a container's state JSON.
    pub fn set_container_state(&mut self, id: &str, state: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute("UPDATE containers SET state = ?2 WHERE id = ?1", params![id, state])?;
            Ok(())
        })
    }

    /// Renames a container; [`StoreError::NameInUse`] on a clash.
    pub fn rename_container(&mut self, id: &str, name: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute("UPDATE containers SET name = ?2 WHERE id = ?1", params![id, name])?;
            Ok(())
        })
        .map_err(|e| {
            if e.is_constraint() {
                StoreError::NameInUse { kind: "container", name: name.into() }
            } else {
                e
            }
        })
    }

    /// Replaces a container's config JSON.
    pub fn set_container_config(&mut self, id: &str, config: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute("UPDATE containers SET config = ?2 WHERE id = ?1", params![id, config])?;
            Ok(())
        })
    }

    /// Deletes a container row (and its addresses).
    pub fn delete_container(&mut self, id: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute("DELETE FROM endpoints WHERE container_id = ?1", [id])?;
            tx.execute("DELETE FROM containers WHERE id = ?1", [id])?;
            Ok(())
        })
    }

    // ------------------------------------------------------------------ pods

    /// Inserts a pod ([`StoreError::NameInUse`] on a name clash).
    pub fn insert_pod(&mut self, row: &PodRow) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO pods(id, name, created, config) VALUES (?1, ?2, ?3, ?4)",
                params![row.id, row.name, ts(&row.created), row.config],
            )?;
            Ok(())
        })
        .map_err(|e| {
            if e.is_constraint() {
                StoreError::NameInUse { kind: "pod", name: row.name.clone() }
            } else {
                e
            }
        })
    }

    /// Replaces a pod's configuration.
    pub fn update_pod(&mut self, id: &str, config: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute("UPDATE pods SET config = ?2 WHERE id = ?1", params![id, config])?;
            Ok(())
        })
    }

    /// Deletes a pod row.
    pub fn delete_pod(&mut self, id: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute("DELETE FROM pods WHERE id = ?1", [id])?;
            Ok(())
        })
    }

    /// Every pod, oldest first.
    pub fn pods(&self) -> Result<Vec<PodRow>, StoreError> {
        let mut st = self.conn.prepare("SELECT id, name, created, config FROM pods ORDER BY created, id")?;
        let rows: Vec<(String, String, String, String)> =
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?.collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(id, name, created, config)| Ok(PodRow { id, name, created: parse_ts(&created)?, config }))
            .collect()
    }

    // -------------------------------------------------------------- switches

    /// Inserts a switch built by `make(existing switches)` in the same write
    /// transaction, so parallel callers never choose the same subnet or name
    /// ([`StoreError::NameInUse`] on a name clash). `make` may refuse.
    pub fn insert_switch_with<E>(
        &mut self,
        make: impl Fn(&[SwitchRow]) -> Result<SwitchRow, E>,
    ) -> Result<Result<SwitchRow, E>, StoreError> {
        let mut name = String::new();
        self.write(|tx| {
            let existing = Self::switch_rows(tx)?;
            let row = match make(&existing) {
                Ok(r) => r,
                Err(e) => return Ok(Err(e)),
            };
            name = row.name.clone();
            tx.execute(
                "INSERT INTO switches(id, name, created, config) VALUES (?1, ?2, ?3, ?4)",
                params![row.id, row.name, ts(&row.created), row.config],
            )?;
            Ok(Ok(row))
        })
        .map_err(|e| if e.is_constraint() { StoreError::NameInUse { kind: "switch", name } } else { e })
    }

    /// Deletes a switch row.
    pub fn delete_switch(&mut self, id: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute("DELETE FROM switches WHERE id = ?1", [id])?;
            Ok(())
        })
    }

    /// Addresses in use on a switch.
    pub fn switch_ips(&self, switch_id: &str) -> Result<Vec<String>, StoreError> {
        let mut st = self.conn.prepare("SELECT ip FROM endpoints WHERE switch_id = ?1")?;
        let v = st.query_map([switch_id], |r| r.get(0))?.collect::<Result<_, _>>()?;
        Ok(v)
    }

    /// Containers with an endpoint on a switch.
    pub fn switch_members(&self, switch_id: &str) -> Result<Vec<String>, StoreError> {
        let mut st = self.conn.prepare("SELECT container_id FROM endpoints WHERE switch_id = ?1")?;
        let v = st.query_map([switch_id], |r| r.get(0))?.collect::<Result<_, _>>()?;
        Ok(v)
    }

    /// Records an endpoint, choosing its address with `pick(used)` inside the
    /// same write transaction (so parallel callers never get the same address).
    pub fn allocate_ip(
        &mut self,
        container_id: &str,
        switch_id: &str,
        pick: impl Fn(&[String]) -> Result<String, String>,
    ) -> Result<Result<String, String>, StoreError> {
        self.write(|tx| {
            let used: Vec<String> = {
                let mut st = tx.prepare("SELECT ip FROM endpoints WHERE switch_id = ?1")?;
                let v = st.query_map([switch_id], |r| r.get(0))?.collect::<Result<_, _>>()?;
                v
            };
            match pick(&used) {
                Ok(ip) => {
                    tx.execute(
                        "INSERT INTO endpoints(container_id, switch_id, ip) VALUES (?1, ?2, ?3)",
                        params![container_id, switch_id, ip],
                    )?;
                    Ok(Ok(ip))
                }
                Err(e) => Ok(Err(e)),
            }
        })
    }

    /// Releases a container's address on a switch.
    pub fn release_ip(&mut self, container_id: &str, switch_id: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM endpoints WHERE container_id = ?1 AND switch_id = ?2",
                params![container_id, switch_id],
            )?;
            Ok(())
        })
    }

    // ---------------------------------------------------------------- events

    /// Appends an event; returns its sequence number. Events older than a
    /// week are dropped in the same transaction.
    pub fn append_event(&mut self, e: &EventRow) -> Result<i64, StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO events(time_nano, type, action, actor, attributes) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![e.time_nano, e.kind, e.action, e.actor, e.attributes],
            )?;
            let seq = tx.last_insert_rowid();
            if seq % 256 == 0 {
                tx.execute(
                    "DELETE FROM events WHERE time_nano < ?1",
                    [e.time_nano - EVENT_RETENTION_SECS * 1_000_000_000],
                )?;
            }
            Ok(seq)
        })
    }

    /// Events with `seq >= from_seq` and `since_nano <= time < until_nano`, oldest first.
    pub fn events(&self, from_seq: i64, since_nano: i64, until_nano: i64) -> Result<Vec<EventRow>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT seq, time_nano, type, action, actor, attributes FROM events
             WHERE seq >= ?1 AND time_nano >= ?2 AND time_nano < ?3 ORDER BY seq",
        )?;
        let rows = st
            .query_map(params![from_seq, since_nano, until_nano], |r| {
                Ok(EventRow {
                    seq: r.get(0)?,
                    time_nano: r.get(1)?,
                    kind: r.get(2)?,
                    action: r.get(3)?,
                    actor: r.get(4)?,
                    attributes: r.get(5)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The newest event's sequence number (0 when there is none).
    pub fn last_event_seq(&self) -> Result<i64, StoreError> {
        Ok(self.conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?)
    }

    // ---------------------------------------------------------- repo digests

    /// Records that `name@digest` (a registry's manifest) is image `id`.
    pub fn add_repo_digest(&mut self, name: &str, id: &Digest) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO repo_digests(name, image_id) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET image_id = excluded.image_id",
                params![name, id.hex()],
            )?;
            Ok(())
        })
    }

    /// Records that `id` was committed from a container of `parent`.
    pub fn set_image_parent(&mut self, id: &Digest, parent: &Digest) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO image_parents(image_id, parent) VALUES (?1, ?2) ON CONFLICT(image_id) DO UPDATE SET parent = excluded.parent",
                params![id.hex(), parent.hex()],
            )?;
            Ok(())
        })
    }

    /// The image a build step with cache key `key` made, if it still exists.
    pub fn build_cache_get(&self, key: &str) -> Result<Option<Digest>, StoreError> {
        let id: Option<String> =
            self.conn.query_row("SELECT image_id FROM build_cache WHERE key = ?1", [key], |r| r.get(0)).optional()?;
        id.map(|i| digest(&i)).transpose()
    }

    /// Records that the build step with key `key` made image `id`, unless
    /// an image made for that key still exists (the first one stays the
    /// step's result: a `--no-cache` build does not change what later
    /// builds reuse).
    pub fn build_cache_put(&mut self, key: &str, id: &Digest) -> Result<(), StoreError> {
        let now = ts(&Utc::now());
        self.write(|tx| {
            tx.execute(
                "INSERT INTO build_cache(key, image_id, created) VALUES (?1, ?2, ?3) ON CONFLICT(key) DO NOTHING",
                params![key, id.hex(), now],
            )?;
            Ok(())
        })
    }

    /// Images the build cache refers to (each once).
    pub fn build_cache_images(&self) -> Result<Vec<Digest>, StoreError> {
        let mut st = self.conn.prepare("SELECT DISTINCT image_id FROM build_cache")?;
        let ids: Vec<String> = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        ids.iter().map(|i| digest(i)).collect()
    }

    /// Forgets every build cache entry; returns how many there were.
    pub fn build_cache_clear(&mut self) -> Result<usize, StoreError> {
        self.write(|tx| Ok(tx.execute("DELETE FROM build_cache", [])?))
    }

    /// Forgets that other images were made from `id` (it is being removed).
    pub fn forget_children(&mut self, id: &Digest) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute("DELETE FROM image_parents WHERE parent = ?1", [id.hex()])?;
            Ok(())
        })
    }

    /// Images recorded as made from `id`.
    pub fn image_children(&self, id: &Digest) -> Result<Vec<Digest>, StoreError> {
        let mut st = self.conn.prepare("SELECT image_id FROM image_parents WHERE parent = ?1")?;
        let ids: Vec<String> = st.query_map([id.hex()], |r| r.get(0))?.collect::<Result<_, _>>()?;
        ids.iter().map(|i| digest(i)).collect()
    }

    /// The image `id` was committed from, if it was and is still recorded.
    pub fn image_parent(&self, id: &Digest) -> Result<Option<Digest>, StoreError> {
        let p: Option<String> = self
            .conn
            .query_row("SELECT parent FROM image_parents WHERE image_id = ?1", [id.hex()], |r| r.get(0))
            .optional()?;
        p.map(|p| digest(&p)).transpose()
    }

    /// The `name@sha256:...` entries of an image.
    pub fn repo_digests(&self, id: &Digest) -> Result<Vec<String>, StoreError> {
        let mut st = self.conn.prepare("SELECT name FROM repo_digests WHERE image_id = ?1 ORDER BY name")?;
        let v = st.query_map([id.hex()], |r| r.get(0))?.collect::<Result<_, _>>()?;
        Ok(v)
    }

    /// The image a `name@sha256:...` entry names.
    pub fn repo_digest_target(&self, name: &str) -> Result<Option<Digest>, StoreError> {
        let id: Option<String> = self
            .conn
            .query_row("SELECT image_id FROM repo_digests WHERE name = ?1", [name], |r| r.get(0))
            .optional()?;
        id.map(|i| digest(&i)).transpose()
    }

    // --------------------------------------------------------------- volumes

    /// Inserts a volume; [`StoreError::NameInUse`] if the name is taken.
    pub fn insert_volume(&mut self, v: &VolumeRow) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO volumes(name, created, config) VALUES (?1, ?2, ?3)",
                params![v.name, ts(&v.created), v.config],
            )?;
            Ok(())
        })
        .map_err(|e| {
            if e.is_constraint() {
                StoreError::NameInUse { kind: "volume", name: v.name.clone() }
            } else {
                e
            }
        })
    }

    /// Every volume by name.
    pub fn volumes(&self) -> Result<Vec<VolumeRow>, StoreError> {
        let mut st = self.conn.prepare("SELECT name, created, config FROM volumes ORDER BY name")?;
        let rows: Vec<(String, String, String)> =
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(name, created, config)| Ok(VolumeRow { name, created: parse_ts(&created)?, config }))
            .collect()
    }

    /// One volume.
    pub fn volume(&self, name: &str) -> Result<Option<VolumeRow>, StoreError> {
        Ok(self.volumes()?.into_iter().find(|v| v.name == name))
    }

    /// IDs of the containers using a volume.
    pub fn volume_users(&self, name: &str) -> Result<Vec<String>, StoreError> {
        let mut st =
            self.conn.prepare("SELECT container_id FROM volume_refs WHERE volume = ?1 ORDER BY container_id")?;
        let v = st.query_map([name], |r| r.get(0))?.collect::<Result<_, _>>()?;
        Ok(v)
    }

    /// Names of the volumes a container uses.
    pub fn volumes_of(&self, container_id: &str) -> Result<Vec<String>, StoreError> {
        let mut st = self.conn.prepare("SELECT volume FROM volume_refs WHERE container_id = ?1 ORDER BY volume")?;
        let v = st.query_map([container_id], |r| r.get(0))?.collect::<Result<_, _>>()?;
        Ok(v)
    }

    /// Deletes a volume row unless a container uses it (then
    /// [`StoreError::InUse`] with the users' IDs). Returns false if there
    /// was no such volume.
    pub fn delete_volume(&mut self, name: &str) -> Result<bool, StoreError> {
        self.write(|tx| {
            let mut st = tx.prepare("SELECT container_id FROM volume_refs WHERE volume = ?1 ORDER BY container_id")?;
            let users: Vec<String> = st.query_map([name], |r| r.get(0))?.collect::<Result<_, _>>()?;
            if !users.is_empty() {
                return Err(StoreError::InUse { name: name.to_string(), users });
            }
            Ok(tx.execute("DELETE FROM volumes WHERE name = ?1", [name])? > 0)
        })
    }

    /// Every switch by name.
    pub fn switches(&self) -> Result<Vec<SwitchRow>, StoreError> {
        Self::switch_rows(&self.conn)
    }

    fn switch_rows(conn: &Connection) -> Result<Vec<SwitchRow>, StoreError> {
        let mut st = conn.prepare("SELECT id, name, created, config FROM switches ORDER BY name")?;
        let rows: Vec<(String, String, String, String)> =
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?.collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(id, name, created, config)| Ok(SwitchRow { id, name, created: parse_ts(&created)?, config }))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(n: u8, tags: &[&str]) -> ImageRecord {
        let config = format!("{{\"n\":{n}}}").into_bytes();
        ImageRecord {
            id: Digest::of(&config),
            config,
            diff_ids: vec![Digest::of(&[n])],
            size: 10,
            created: None,
            added: Utc::now(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn images_tags_and_prefixes() -> Result<(), StoreError> {
        let d = tempfile::tempdir().map_err(io("tempdir"))?;
        let mut s = Store::open(Layout::new(d.path()))?;
        let a = image(1, &["a:latest"]);
        let b = image(2, &["b:latest", "a:latest"]);
        s.put_image(&a, &[(a.diff_ids[0].clone(), 10)])?;
        s.put_image(&b, &[(b.diff_ids[0].clone(), 10)])?;
        assert_eq!(s.tag_target("a:latest")?, Some(b.id.clone()), "tag moves to the newer image");
        assert_eq!(s.images()?.len(), 2);
        assert_eq!(s.images_by_prefix(&a.id.hex()[..6])?, vec![a.id.clone()]);
        assert!(s.images_by_prefix("zz")?.is_empty());
        s.delete_image(&a.id)?;
        assert_eq!(s.drop_unreferenced_layers()?, vec![a.diff_ids[0].clone()]);
        assert!(s.has_layer(&b.diff_ids[0])?);
        Ok(())
    }

    #[test]
    fn reopen_keeps_data() -> Result<(), StoreError> {
        let d = tempfile::tempdir().map_err(io("tempdir"))?;
        {
            let mut s = Store::open(Layout::new(d.path()))?;
            s.put_image(&image(3, &["x:1"]), &[])?;
        }
        let s = Store::open(Layout::new(d.path()))?;
        assert_eq!(s.images()?[0].tags, vec!["x:1".to_string()]);
        Ok(())
    }
}
