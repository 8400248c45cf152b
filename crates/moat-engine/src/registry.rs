//! `pull`, `push`, `login`, `logout`, and the implicit pull of `run`
//! and `create` (`--pull missing|always|never`), on the `moat-registry`
//! client. Progress is reported as [`PullEvent`]s, which the CLI draws as
//! bars and the API server will send as Docker's progress JSON.
//!
//! A pull resolves the reference to a manifest (an index to this machine's
//! platform, or `--platform`), fetches the config, then every layer not
//! already stored: each on its own thread, streamed into the pull's scratch
//! directory with its digest checked, then unpacked (and checked against
//! the config's diff ID) while the other layers download. Nothing becomes
//! visible until every layer is in place; a killed pull leaves only scratch
//! space that the next command sweeps.

use crate::{Engine, EngineError};
use moat_core::reference::ImageRef;
use moat_core::Digest;
use moat_registry::manifest::{self, Descriptor, Parsed, Platform};
use moat_registry::{BlobPush, Client, ClientOptions, Credential, RegistryError, Target};
use std::path::PathBuf;

/// What a pull or push reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullEvent {
    /// A line of status (`Pulling from library/busybox`, `Digest: ...`).
    Status(String),
    /// A layer's progress; `id` is its short digest (12 hex).
    Layer {
        /// Short digest.
        id: String,
        /// What is happening to it.
        status: LayerStatus,
        /// Bytes done.
        current: u64,
        /// Bytes in all (0 when unknown).
        total: u64,
    },
}

/// States of a layer, as Docker names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerStatus {
    /// Queued.
    Waiting,
    /// Stored already: not downloaded (pull) or not uploaded (push).
    Exists,
    /// Bytes coming (pull) or going (push).
    Transferring,
    /// Being unpacked.
    Extracting,
    /// Mounted from another repository of the registry (push).
    Mounted,
    /// Done.
    Complete,
}

impl LayerStatus {
    /// Docker's words for a pull (`push`: the pushing ones).
    pub fn text(&self, push: bool) -> &'static str {
        match (self, push) {
            (Self::Waiting, false) => "Waiting",
            (Self::Waiting, true) => "Preparing",
            (Self::Exists, false) => "Already exists",
            (Self::Exists, true) => "Layer already exists",
            (Self::Transferring, false) => "Downloading",
            (Self::Transferring, true) => "Pushing",
            (Self::Extracting, _) => "Extracting",
            (Self::Mounted, _) => "Mounted from another repository",
            (Self::Complete, false) => "Pull complete",
            (Self::Complete, true) => "Pushed",
        }
    }
}

/// `--pull`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Pull only when the image is not here (Docker's default).
    #[default]
    Missing,
    /// Always pull (a no-op download when nothing changed).
    Always,
    /// Never pull: an unknown image is an error.
    Never,
}

impl std::str::FromStr for PullPolicy {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self, EngineError> {
        match s {
            "missing" => Ok(Self::Missing),
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            _ => Err(EngineError::Invalid(format!("invalid pull policy {s:?}: use missing, always or never"))),
        }
    }
}

/// Options of `pull`/`push`.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// `os/arch[/variant]` (default: this machine's).
    pub platform: Option<String>,
    /// `--tls-verify=false`.
    pub no_tls_verify: bool,
    /// Credentials for this operation only (the API's `X-Registry-Auth`),
    /// used before the stored logins.
    pub auth: Option<RegistryAuth>,
}

/// Credentials a client passes with one pull or push.
#[derive(Debug, Clone, Default)]
pub struct RegistryAuth {
    /// User name.
    pub user: String,
    /// Password or token.
    pub password: String,
    /// An identity token instead of the password.
    pub identity_token: String,
}

/// What a pull stored.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The image ID.
    pub id: Digest,
    /// The reference as stored (`busybox:latest`).
    pub reference: String,
    /// The manifest digest (`busybox@sha256:...`).
    pub repo_digest: String,
    /// True when something new was stored (Docker's "Downloaded newer image").
    pub new: bool,
}

impl From<RegistryError> for EngineError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NotFound(m) => EngineError::NotFound(m),
            RegistryError::Unsupported(m) => EngineError::Unsupported(m),
            RegistryError::DigestMismatch { .. }
            | RegistryError::SizeMismatch { .. }
            | RegistryError::TooLarge { .. } => EngineError::Invalid(e.to_string()),
            RegistryError::Unauthorized { .. } => EngineError::Unauthorized(e.to_string()),
            e => EngineError::Registry(e.to_string()),
        }
    }
}

/// The tag or digest part of a reference to ask a registry for (`latest`
/// when it names neither).
fn reference_part(r: &ImageRef) -> String {
    match (&r.digest, &r.tag) {
        (Some(d), _) => d.to_string(),
        (None, Some(t)) => t.clone(),
        (None, None) => "latest".into(),
    }
}

/// An image's config blob, refused before download when its descriptor
/// announces more than moat takes.
fn fetch_config(client: &Client, target: &Target, d: &Descriptor) -> Result<Vec<u8>, EngineError> {
    if d.size > moat_image::MAX_CONFIG_BYTES {
        return Err(RegistryError::TooLarge {
            what: format!("the image config {}", d.digest),
            size: d.size,
            max: moat_image::MAX_CONFIG_BYTES,
        }
        .into());
    }
    let mut config = Vec::new();
    client.blob(target, &d.digest, d.size, &mut config, &mut |_| {})?;
    Ok(config)
}

fn short(d: &Digest) -> String {
    d.hex()[..12].to_string()
}

impl Engine {
    /// Where moat keeps its registry logins (`auths` of a docker config, 0600).
    pub fn auth_file(&self) -> PathBuf {
        self.layout.root().join("auth.json")
    }

    fn client(&self, o: &PullOptions) -> Client {
        let file = self.auth_file();
        let opts = ClientOptions {
            insecure: self.settings.insecure_registries.clone(),
            no_tls_verify: o.no_tls_verify,
            mirrors: self.settings.registry_mirrors.clone(),
        };
        let given = o.auth.as_ref().and_then(|a| {
            if !a.identity_token.is_empty() {
                Some(Credential::Identity(a.identity_token.clone()))
            } else if !a.user.is_empty() {
                Some(Credential::Basic { user: a.user.clone(), password: a.password.clone() })
            } else {
                None
            }
        });
        Client::new(opts, move |registry| {
            given
                .clone()
                .or_else(|| moat_registry::auth::stored(&file, registry))
                .or_else(|| moat_registry::auth::docker(registry))
        })
    }

    /// Pulls every tag of repository `repo` (`pull -a`).
    pub fn pull_all_tags(
        &mut self,
        repo: &str,
        o: &PullOptions,
        progress: &(dyn Fn(PullEvent) + Sync),
    ) -> Result<Vec<Pulled>, EngineError> {
        let r = ImageRef::parse(repo).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let last = repo.rsplit('/').next().unwrap_or(repo);
        if last.contains(':') || last.contains('@') {
            return Err(EngineError::Invalid("tag can't be used with --all-tags/-a".into()));
        }
        let mut tags = self.client(o).tags(&Target::of_repo(&r.repo))?;
        tags.sort();
        if tags.is_empty() {
            return Err(EngineError::NotFound(format!("repository {} has no tags", r.repo)));
        }
        tags.iter().map(|t| self.pull(&format!("{}:{t}", r.repo), o, progress)).collect()
    }

    /// Pulls `reference` (`busybox`, `host:port/app:tag`, `name@sha256:...`).
    pub fn pull(
        &mut self,
        reference: &str,
        o: &PullOptions,
        progress: &(dyn Fn(PullEvent) + Sync),
    ) -> Result<Pulled, EngineError> {
        let r = ImageRef::parse(reference).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let target = Target::of_repo(&r.repo);
        let want = match &o.platform {
            Some(p) => Platform::parse(p)?,
            None => Platform::host(),
        };
        let client = self.client(o);
        let reference_part = reference_part(&r);
        // nothing is reported before the manifest resolved: a pull that
        // cannot start fails as a whole (the API answers an HTTP error then,
        // as dockerd does), one that started reports its error in the stream
        let top = client.manifest(&target, &reference_part)?;
        moat_core::crash::point("pull.manifest");
        let manifest = match manifest::parse(&top.media_type, &top.bytes)? {
            Parsed::Image(m) => m,
            Parsed::Index(idx) => {
                let d = manifest::choose(&idx, &want)?;
                let f = client.manifest(&target, &d.digest.to_string())?;
                match manifest::parse(&f.media_type, &f.bytes)? {
                    Parsed::Image(m) => m,
                    Parsed::Index(_) => {
                        return Err(EngineError::Unsupported("an index entry is itself an index".into()))
                    }
                }
            }
        };
        progress(PullEvent::Status(format!(
            "{}: Pulling from {}",
            r.tag.clone().unwrap_or_else(|| reference_part.clone()),
            if target.registry == moat_registry::DOCKER_HUB { target.repo.clone() } else { r.repo.clone() }
        )));
        // the manifest digest users pin is the top one (the index's, for a multi-platform image)
        let repo_digest = format!("{}@{}", r.repo, top.digest);
        let config = fetch_config(&client, &target, &manifest.config)?;
        let (_, diff_ids) = moat_image::parse_config(&config)?;
        if diff_ids.len() != manifest.layers.len() {
            return Err(EngineError::Invalid(format!(
                "image {reference}: the manifest has {} layers but its config {}",
                manifest.layers.len(),
                diff_ids.len()
            )));
        }
        let id = Digest::of(&config);
        if let Ok(existing) = self.images.store().image(&id) {
            if existing.is_some() && diff_ids.iter().all(|d| self.images.has_layer_data(d)) {
                for l in &manifest.layers {
                    progress(PullEvent::Layer {
                        id: short(&l.digest),
                        status: LayerStatus::Exists,
                        current: 0,
                        total: l.size,
                    });
                }
                let tags: Vec<String> = r.tagged().into_iter().collect();
                for t in &tags {
                    self.images.store_mut().tag(t, &id)?;
                }
                self.images.store_mut().add_repo_digest(&repo_digest, &id)?;
                progress(PullEvent::Status(format!("Digest: {}", top.digest)));
                progress(PullEvent::Status(format!("Status: Image is up to date for {}", r)));
                return Ok(Pulled { id, reference: r.to_string(), repo_digest, new: false });
            }
        }
        let txn = self.images.begin_pull()?;
        let sizes = self.download_layers(&client, &target, &manifest.layers, &diff_ids, &txn, progress)?;
        let tags: Vec<String> = r.tagged().into_iter().collect();
        let layers: Vec<(usize, Digest, u64)> =
            diff_ids.iter().enumerate().map(|(i, d)| (i, d.clone(), sizes[i])).collect();
        let id = self.images.finish_pull(txn, &config, &layers, tags, Some(repo_digest.clone()))?;
        progress(PullEvent::Status(format!("Digest: {}", top.digest)));
        progress(PullEvent::Status(format!("Status: Downloaded newer image for {r}")));
        crate::events::record(self.store(), crate::events::Event::new("image", "pull", &r.to_string()));
        Ok(Pulled { id, reference: r.to_string(), repo_digest, new: true })
    }

    /// Downloads and unpacks the layers not stored yet, in parallel (at
    /// most four at a time). Returns each layer's uncompressed size.
    fn download_layers(
        &self,
        client: &Client,
        target: &Target,
        layers: &[Descriptor],
        diff_ids: &[Digest],
        txn: &moat_image::PullTxn,
        progress: &(dyn Fn(PullEvent) + Sync),
    ) -> Result<Vec<u64>, EngineError> {
        let mut sizes = vec![0u64; layers.len()];
        let mut todo = Vec::new();
        for (i, (l, d)) in layers.iter().zip(diff_ids).enumerate() {
            if self.images.has_layer_data(d) {
                sizes[i] = self.images.layer_size(d)?;
                progress(PullEvent::Layer {
                    id: short(&l.digest),
                    status: LayerStatus::Exists,
                    current: 0,
                    total: l.size,
                });
            } else {
                progress(PullEvent::Layer {
                    id: short(&l.digest),
                    status: LayerStatus::Waiting,
                    current: 0,
                    total: l.size,
                });
                todo.push(i);
            }
        }
        let images = self.images.unpacker();
        let images = &images;
        // each layer streams through a pipe: the download (which checks the
        // compressed digest) on one thread, the unpacker (which checks the
        // uncompressed one) on another; nothing is kept unless both agree
        let one = |i: usize| -> Result<u64, EngineError> {
            let l = &layers[i];
            let id = short(&l.digest);
            let (rx, tx) = std::io::pipe().map_err(EngineError::io("create a pipe"))?;
            std::thread::scope(|s| {
                let unpack = s.spawn(move || images.unpack_pulled_stream(txn, i, rx, &diff_ids[i]));
                let mut sink = PipeSink::new(tx);
                let mut last = 0u64;
                let got = client.blob(target, &l.digest, l.size, &mut sink, &mut |n| {
                    if n - last >= (256 << 10) || n == l.size {
                        last = n;
                        progress(PullEvent::Layer {
                            id: id.clone(),
                            status: LayerStatus::Transferring,
                            current: n,
                            total: l.size,
                        });
                    }
                });
                drop(sink); // EOF for the unpacker
                if got.is_ok() {
                    progress(PullEvent::Layer {
                        id: id.clone(),
                        status: LayerStatus::Extracting,
                        current: 0,
                        total: l.size,
                    });
                }
                let unpacked = unpack
                    .join()
                    .unwrap_or_else(|_| Err(moat_image::ImageError::BadArchive("the unpack thread panicked".into())));
                // the download's verdict first (a corrupt blob is a digest
                // mismatch even when the unpacker choked on it), unless it was
                // stopped because the unpacker had stopped (a limit, a full
                // disk, a broken archive): then the unpacker's reason
                match got {
                    Err(RegistryError::Io(..)) => {
                        unpacked?;
                        return Err(EngineError::Invalid(format!("layer {}: the unpacker stopped", i + 1)));
                    }
                    g => g?,
                };
                let size = unpacked?;
                progress(PullEvent::Layer { id, status: LayerStatus::Complete, current: l.size, total: l.size });
                Ok(size)
            })
        };
        let results: Vec<(usize, Result<u64, EngineError>)> = std::thread::scope(|s| {
            let mut out = Vec::new();
            for chunk in todo.chunks(4) {
                let handles: Vec<_> = chunk.iter().map(|&i| (i, s.spawn(move || one(i)))).collect();
                for (i, h) in handles {
                    out.push((
                        i,
                        h.join().unwrap_or_else(|_| Err(EngineError::Invalid("a download thread panicked".into()))),
                    ));
                }
            }
            out
        });
        for (i, r) in results {
            sizes[i] = r?;
        }
        Ok(sizes)
    }

    /// Pushes `reference` (an image of this store named for a registry)
    /// as an OCI manifest with uncompressed layers, uploading only the
    /// blobs the registry lacks. Returns the manifest digest.
    pub fn push(
        &mut self,
        reference: &str,
        o: &PullOptions,
        progress: &(dyn Fn(PullEvent) + Sync),
    ) -> Result<Digest, EngineError> {
        let img = self.images.resolve(reference)?;
        let r = ImageRef::parse(reference).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let tag = r.tag.clone().unwrap_or_else(|| "latest".into());
        let target = Target::of_repo(&r.repo);
        let client = self.client(o);
        progress(PullEvent::Status(format!("The push refers to repository [{}/{}]", target.registry, target.repo)));
        let layout = self.layout.clone();
        let mut layers = Vec::new();
        for d in &img.diff_ids {
            let path = layout.blob(d.hex());
            let size = std::fs::metadata(&path).map_err(EngineError::io(format!("layer blob {d}")))?.len();
            layers.push(Descriptor {
                media_type: manifest::OCI_LAYER.into(),
                digest: d.clone(),
                size,
                platform: None,
                annotations: None,
            });
        }
        for l in &layers {
            progress(PullEvent::Layer {
                id: short(&l.digest),
                status: LayerStatus::Waiting,
                current: 0,
                total: l.size,
            });
        }
        // another repository of the same registry this image is named in:
        // the registry can mount its blobs instead of receiving them again
        let from = img
            .tags
            .iter()
            .filter_map(|t| ImageRef::parse(t).ok())
            .map(|t| Target::of_repo(&t.repo))
            .find(|o| o.registry == target.registry && o.repo != target.repo)
            .map(|o| o.repo);
        for l in layers.iter().rev() {
            let path = layout.blob(l.digest.hex());
            let sent = client.push_blob(&target, &l.digest, l.size, from.as_deref(), &mut || {
                let f =
                    std::fs::File::open(&path).map_err(|e| RegistryError::Io(format!("open {}", path.display()), e))?;
                Ok(Box::new(f))
            })?;
            let status = match sent {
                BlobPush::Uploaded => LayerStatus::Complete,
                BlobPush::Mounted => LayerStatus::Mounted,
                BlobPush::Present => LayerStatus::Exists,
            };
            progress(PullEvent::Layer { id: short(&l.digest), status, current: l.size, total: l.size });
        }
        let cfg = img.config.clone();
        let cfg_digest = img.id.clone();
        moat_core::crash::point("push.layers");
        client.push_blob(&target, &cfg_digest, cfg.len() as u64, None, &mut || {
            Ok(Box::new(std::io::Cursor::new(cfg.clone())))
        })?;
        let m = manifest::Manifest {
            schema_version: 2,
            media_type: manifest::OCI_MANIFEST.into(),
            config: Descriptor {
                media_type: manifest::OCI_CONFIG.into(),
                digest: cfg_digest,
                size: img.config.len() as u64,
                platform: None,
                annotations: None,
            },
            layers,
        };
        let bytes = serde_json::to_vec(&m).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let digest = client.push_manifest(&target, &tag, manifest::OCI_MANIFEST, &bytes)?;
        self.images.store_mut().add_repo_digest(&format!("{}@{digest}", r.repo), &img.id)?;
        progress(PullEvent::Status(format!("{tag}: digest: {digest} size: {}", bytes.len())));
        crate::events::record(self.store(), crate::events::Event::new("image", "push", &r.to_string()));
        Ok(digest)
    }

    /// Checks credentials against `registry` (Docker Hub when `None`) and
    /// keeps them (0600). Returns the registry's name.
    pub fn login(&mut self, registry: Option<&str>, user: &str, password: &str) -> Result<String, EngineError> {
        let reg = registry
            .map(|r| r.trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/'))
            .map(|r| if r == "index.docker.io" || r == "registry-1.docker.io" { moat_registry::DOCKER_HUB } else { r })
            .unwrap_or(moat_registry::DOCKER_HUB)
            .to_string();
        let target = Target { registry: reg.clone(), repo: String::new() };
        let cred = Credential::Basic { user: user.into(), password: password.into() };
        let opts = ClientOptions { insecure: self.settings.insecure_registries.clone(), ..Default::default() };
        let client = Client::new(opts, move |_| Some(cred.clone()));
        client.ping(&target)?;
        moat_registry::auth::store(&self.auth_file(), &reg, user, password)?;
        Ok(reg)
    }

    /// Forgets the login for `registry`; false when there was none.
    pub fn logout(&mut self, registry: Option<&str>) -> Result<(String, bool), EngineError> {
        let reg = registry.unwrap_or(moat_registry::DOCKER_HUB).to_string();
        Ok((reg.clone(), moat_registry::auth::forget(&self.auth_file(), &reg)?))
    }

    /// The image a `create`/`run` needs, pulled first by `policy`.
    pub fn ensure_image(
        &mut self,
        reference: &str,
        policy: PullPolicy,
        o: &PullOptions,
        progress: &(dyn Fn(PullEvent) + Sync),
    ) -> Result<(), EngineError> {
        let local = self.images.resolve(reference).ok();
        if let (Some(img), Some(p)) = (&local, &o.platform) {
            // Docker's refusal: a local image of another platform is not the one asked for
            let want = Platform::parse(p)?;
            let (head, _) = moat_image::parse_config(&img.config)?;
            let actual =
                format!("{}/{}", head.os.unwrap_or_else(|| "linux".into()), head.architecture.unwrap_or_default());
            if actual != format!("{}/{}", want.os, want.architecture) {
                return Err(EngineError::Invalid(format!(
                    "image with reference {reference} was found but does not match the specified platform: wanted {want}, actual: {actual}"
                )));
            }
        }
        let have = local.is_some();
        match (policy, have) {
            (PullPolicy::Never, _) | (PullPolicy::Missing, true) => Ok(()),
            (PullPolicy::Always, _) | (PullPolicy::Missing, false) => {
                // a local-only name (an image ID) cannot be pulled
                if ImageRef::parse(reference).is_err()
                    || (moat_core::id::is_hex_prefix(reference) && reference.len() >= 12)
                {
                    return Ok(());
                }
                if !have {
                    progress(PullEvent::Status(format!("Unable to find image '{reference}' locally")));
                }
                self.pull(reference, o, progress).map(|_| ())
            }
        }
    }
}

/// The download's end of a layer's pipe. When the unpacker has stopped
/// reading (it finished the tar and its trailing bytes, or it failed: a
/// limit, a full disk, a broken archive), up to [`PipeSink::TAIL`] more
/// bytes are still taken and only hashed (a compressed stream may end
/// before the blob does; a corrupt blob still gets its digest verdict if it
/// is short), and then the sink fails, which stops the download.
struct PipeSink {
    pipe: Option<std::io::PipeWriter>,
    /// Bytes taken since the pipe closed.
    tail: u64,
}

impl PipeSink {
    const TAIL: u64 = 1 << 20;

    fn new(pipe: std::io::PipeWriter) -> Self {
        Self { pipe: Some(pipe), tail: 0 }
    }
}

impl std::io::Write for PipeSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(p) = &mut self.pipe {
            if p.write_all(buf).is_ok() {
                return Ok(buf.len());
            }
            self.pipe = None;
        }
        self.tail += buf.len() as u64;
        if self.tail > Self::TAIL {
            return Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the layer's unpacker stopped"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What a registry says of a reference without pulling it (Docker's
/// `GET /distribution/{name}/json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DistributionInspect {
    /// The manifest (or index) the reference resolves to.
    #[serde(rename = "Descriptor")]
    pub descriptor: Descriptor,
    /// The platforms it offers: an index's entries, or a single image's
    /// config's.
    #[serde(rename = "Platforms")]
    pub platforms: Vec<Platform>,
}

impl Engine {
    /// Resolves `reference` at its registry: the top manifest's descriptor
    /// and the platforms it offers (a single image's from its config).
    pub fn distribution_inspect(
        &mut self,
        reference: &str,
        o: &PullOptions,
    ) -> Result<DistributionInspect, EngineError> {
        let r = ImageRef::parse(reference).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let target = Target::of_repo(&r.repo);
        let client = self.client(o);
        let reference_part = reference_part(&r);
        let top = client.manifest(&target, &reference_part)?;
        let platforms = match manifest::parse(&top.media_type, &top.bytes)? {
            Parsed::Index(idx) => idx.manifests.iter().filter_map(|d| d.platform.clone()).collect(),
            Parsed::Image(m) => {
                let config = fetch_config(&client, &target, &m.config)?;
                let p: Platform = serde_json::from_slice(&config)
                    .map_err(|e| EngineError::Invalid(format!("image {reference}: bad config: {e}")))?;
                vec![p]
            }
        };
        Ok(DistributionInspect {
            descriptor: Descriptor {
                media_type: top.media_type.clone(),
                digest: top.digest.clone(),
                size: top.bytes.len() as u64,
                platform: None,
                annotations: None,
            },
            platforms,
        })
    }
}
