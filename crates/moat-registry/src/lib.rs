//! moat's registry client: the client side of the OCI distribution
//! protocol, synchronous, on `ureq` with rustls (see `docs/registry.md` for
//! why not `oci-client`).
//!
//! - [`Target`]: where an image reference lives — Docker Hub naming
//!   (`busybox` is `docker.io/library/busybox`, served by
//!   `registry-1.docker.io`), other registries by host name.
//! - [`Client`]: manifests, blobs (streamed to a writer), uploads and
//!   manifest pushes, with the `WWW-Authenticate` challenge answered (basic,
//!   or a bearer token fetched from the realm and cached per scope until it
//!   expires), retries with back-off on 429/5xx and dropped connections,
//!   HTTPS by default and plain HTTP only for loopback or insecure registries.
//! - [`manifest`]: Docker schema 2 and OCI manifests and indexes, and the
//!   choice of a platform.
//! - [`auth`]: credentials (`auths` of a docker `config.json`) and the
//!   challenge parser.

pub mod auth;
pub mod manifest;

#[cfg(test)]
mod fuzz;

use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use auth::Credential;
pub use moat_core::Digest;

/// Errors of registry operations.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry could not be reached.
    #[error("cannot reach registry {registry}: {message}")]
    Unreachable {
        /// Host.
        registry: String,
        /// Why.
        message: String,
    },
    /// Credentials were refused (or are needed).
    #[error("{registry}: unauthorized: {message}")]
    Unauthorized {
        /// Host.
        registry: String,
        /// The registry's words.
        message: String,
    },
    /// The manifest or blob does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A URL could not be fetched (`import` from a URL).
    #[error("cannot fetch {url}: {message}")]
    Fetch {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// Content does not match its digest.
    #[error("{what}: digest mismatch: expected {want}, got {got}")]
    DigestMismatch {
        /// What was checked.
        what: String,
        /// Expected.
        want: String,
        /// Computed.
        got: String,
    },
    /// A manifest the client does not accept.
    #[error("{0}")]
    Unsupported(String),
    /// The registry answered something else than expected.
    #[error("{registry}: {message}")]
    Protocol {
        /// Host.
        registry: String,
        /// What went wrong.
        message: String,
    },
    /// A blob's length is not the one its descriptor announced.
    #[error("{what}: size mismatch: the descriptor announced {want} bytes, the registry sent {got}")]
    SizeMismatch {
        /// What was fetched.
        what: String,
        /// The descriptor's size.
        want: u64,
        /// What came (for a blob too long: the bytes read when it was stopped).
        got: String,
    },
    /// A blob larger than what this client accepts for its kind.
    #[error("{what}: {size} bytes is more than the {max} bytes accepted")]
    TooLarge {
        /// What was to be fetched.
        what: String,
        /// Its announced size.
        size: u64,
        /// The cap.
        max: u64,
    },
    /// Local I/O (writing what was fetched).
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// Where an image lives: registry host (as named) and repository path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The registry as the user names it (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// Repository path on that registry (`library/busybox`).
    pub repo: String,
}

/// Docker Hub's name and API endpoint.
pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

impl Target {
    /// From a normalised repository name (`busybox`, `user/app`,
    /// `127.0.0.1:5000/app`): Docker's rule — a first component with a
    /// `.` or `:`, or `localhost`, is a registry; otherwise Docker Hub, where
    /// a single component is an official image under `library/`.
    pub fn of_repo(repo: &str) -> Self {
        match repo.split_once('/') {
            Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                Self { registry: first.to_string(), repo: rest.to_string() }
            }
            Some(_) => Self { registry: DOCKER_HUB.into(), repo: repo.to_string() },
            None => Self { registry: DOCKER_HUB.into(), repo: format!("library/{repo}") },
        }
    }

    /// The host the API is served from.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }
}

/// True for registries on this machine (`localhost`, 127.0.0.0/8, `::1`),
/// which, like Docker, may speak plain HTTP.
pub fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(false)
}

/// What [`Client::push_blob`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobPush {
    /// The repository had the blob.
    Present,
    /// The registry mounted it from the other repository.
    Mounted,
    /// Its bytes were sent.
    Uploaded,
}

/// How the client reaches registries.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Registries that may use plain HTTP or unverified TLS.
    pub insecure: Vec<String>,
    /// Skip TLS verification everywhere (`--tls-verify=false`).
    pub no_tls_verify: bool,
    /// Mirrors tried first for Docker Hub pulls (`https://mirror.example`).
    pub mirrors: Vec<String>,
}

/// A manifest as fetched.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Its `Content-Type` (or the `mediaType` inside).
    pub media_type: String,
    /// The bytes, exactly as served.
    pub bytes: Vec<u8>,
    /// Their digest.
    pub digest: Digest,
}

/// What `www-authenticate` asked for, remembered per registry.
#[derive(Debug, Clone)]
enum Scheme {
    Basic,
    Bearer { realm: String, service: Option<String> },
}

struct Token {
    value: String,
    expires: Instant,
}

/// Answers the credentials for a registry.
pub type CredentialSource = dyn Fn(&str) -> Option<Credential> + Send + Sync;

/// A registry client (one per operation is fine; tokens are cached in it).
pub struct Client {
    secure: ureq::Agent,
    lax: ureq::Agent,
    opts: ClientOptions,
    creds: Box<CredentialSource>,
    schemes: Mutex<HashMap<String, Scheme>>,
    tokens: Mutex<HashMap<(String, String), Token>>,
    bases: Mutex<HashMap<String, String>>,
}

/// Manifests this client understands, in order of preference.
pub const ACCEPT: &[&str] = &[
    manifest::OCI_INDEX,
    manifest::DOCKER_LIST,
    manifest::OCI_MANIFEST,
    manifest::DOCKER_MANIFEST,
    manifest::DOCKER_SCHEMA1_SIGNED,
];

fn agent(verify: bool) -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder().disable_verification(!verify).build();
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(120)))
        .max_redirects(8)
        .user_agent(concat!("moat/", env!("CARGO_PKG_VERSION")))
        .tls_config(tls)
        .build()
        .into()
}

/// A plain `GET` of an `http(s)://` URL (`import` from a URL): the body as a
/// reader; a status other than 200 is an error naming it.
pub fn fetch_url(url: &str) -> Result<Box<dyn std::io::Read + Send>, RegistryError> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(RegistryError::Unsupported(format!("{url:?} is not an http(s) URL")));
    }
    let fail = |message: String| RegistryError::Fetch { url: url.to_string(), message };
    let r = agent(true).get(url).call().map_err(|e| fail(e.to_string()))?;
    match r.status().as_u16() {
        200 => Ok(Box::new(r.into_body().into_reader())),
        404 => Err(RegistryError::NotFound(format!("cannot fetch {url}: 404 Not Found"))),
        s => Err(fail(format!("the server answered {s}"))),
    }
}

/// sha256 of bytes as a [`Digest`].
pub fn digest_of(b: &[u8]) -> Digest {
    Digest::of(b)
}

/// The first byte of a `206` answer (`Content-Range: bytes N-M/T`).
fn range_start(resp: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    let v = resp.headers().get("content-range")?.to_str().ok()?;
    v.strip_prefix("bytes ")?.split('-').next()?.trim().parse().ok()
}

/// Whether a request may be repeated after this answer.
fn retryable(status: u16) -> bool {
    status == 429 || status == 502 || status == 503 || status == 504 || status == 500
}

impl Client {
    /// A client; `creds(registry)` answers credentials for a registry.
    pub fn new(opts: ClientOptions, creds: impl Fn(&str) -> Option<Credential> + Send + Sync + 'static) -> Self {
        Self {
            secure: agent(!opts.no_tls_verify),
            lax: agent(false),
            opts,
            creds: Box::new(creds),
            schemes: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            bases: Mutex::new(HashMap::new()),
        }
    }

    fn insecure(&self, registry: &str) -> bool {
        self.opts.no_tls_verify || is_loopback(registry) || self.opts.insecure.iter().any(|r| r == registry)
    }

    fn agent_for(&self, registry: &str) -> &ureq::Agent {
        if self.insecure(registry) {
            &self.lax
        } else {
            &self.secure
        }
    }

    /// `https://host` (or `http://host` for an insecure registry that does
    /// not speak TLS: tried once, then remembered).
    fn base(&self, t: &Target) -> Result<String, RegistryError> {
        if let Some(b) = self.bases.lock().ok().and_then(|m| m.get(&t.registry).cloned()) {
            return Ok(b);
        }
        let host = t.api_host();
        let https = format!("https://{host}");
        let chosen = if self.insecure(&t.registry) {
            match self.agent_for(&t.registry).get(format!("{https}/v2/")).call() {
                Ok(_) => https,
                Err(_) => format!("http://{host}"),
            }
        } else {
            https
        };
        if let Ok(mut m) = self.bases.lock() {
            m.insert(t.registry.clone(), chosen.clone());
        }
        Ok(chosen)
    }

    fn unreachable(t: &Target, e: impl std::fmt::Display) -> RegistryError {
        RegistryError::Unreachable { registry: t.registry.clone(), message: e.to_string() }
    }

    /// The `Authorization` header for `scope`, if the registry wants one.
    fn authorization(&self, t: &Target, scope: &str) -> Result<Option<String>, RegistryError> {
        let scheme = self.schemes.lock().ok().and_then(|m| m.get(&t.registry).cloned());
        match scheme {
            None => Ok(None),
            Some(Scheme::Basic) => Ok((self.creds)(&t.registry).and_then(|c| c.basic_header())),
            Some(Scheme::Bearer { realm, service }) => {
                let key = (t.registry.clone(), scope.to_string());
                if let Some(tok) =
                    self.tokens.lock().ok().and_then(|m| m.get(&key).map(|t| (t.value.clone(), t.expires)))
                {
                    if tok.1 > Instant::now() {
                        return Ok(Some(format!("Bearer {}", tok.0)));
                    }
                }
                let (value, expires) = self.fetch_token(t, &realm, service.as_deref(), scope)?;
                if let Ok(mut m) = self.tokens.lock() {
                    m.insert(key, Token { value: value.clone(), expires });
                }
                Ok(Some(format!("Bearer {value}")))
            }
        }
    }

    /// GET realm?service=..&scope=.. (with basic credentials if any).
    fn fetch_token(
        &self,
        t: &Target,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<(String, Instant), RegistryError> {
        let mut q = Vec::new();
        if let Some(s) = service {
            q.push(format!("service={}", auth::urlencode(s)));
        }
        if !scope.is_empty() {
            q.push(format!("scope={}", auth::urlencode(scope)));
        }
        let url = if q.is_empty() { realm.to_string() } else { format!("{realm}?{}", q.join("&")) };
        let mut req = self.agent_for(&t.registry).get(&url);
        if let Some(h) = (self.creds)(&t.registry).and_then(|c| c.basic_header()) {
            req = req.header("Authorization", &h);
        }
        let mut resp = req.call().map_err(|e| Self::unreachable(t, format!("token server {realm}: {e}")))?;
        let status = resp.status().as_u16();
        let body = resp.body_mut().with_config().limit(1 << 20).read_to_vec().unwrap_or_default();
        if status == 401 || status == 403 {
            return Err(RegistryError::Unauthorized {
                registry: t.registry.clone(),
                message: format!("the token server refused the credentials ({status})"),
            });
        }
        if status != 200 {
            return Err(RegistryError::Protocol {
                registry: t.registry.clone(),
                message: format!("token server {realm} answered {status}"),
            });
        }
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| RegistryError::Protocol {
            registry: t.registry.clone(),
            message: format!("token server {realm}: {e}"),
        })?;
        let token = v["token"].as_str().or_else(|| v["access_token"].as_str()).ok_or_else(|| {
            RegistryError::Protocol { registry: t.registry.clone(), message: "token server sent no token".into() }
        })?;
        // Docker's rule: 60 s when the server does not say
        let secs = v["expires_in"].as_u64().unwrap_or(60).max(10);
        Ok((token.to_string(), Instant::now() + Duration::from_secs(secs.saturating_sub(5))))
    }

    /// Sends a request built by `build`, answering one auth challenge and
    /// retrying transient failures (3 tries, 0.5 s doubling).
    fn send(
        &self,
        t: &Target,
        scope: &str,
        mut build: impl FnMut(&ureq::Agent, Option<&str>) -> Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<ureq::http::Response<ureq::Body>, RegistryError> {
        let mut challenged = false;
        let mut delay = Duration::from_millis(500);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let auth = self.authorization(t, scope)?;
            let r = build(self.agent_for(&t.registry), auth.as_deref());
            match r {
                Ok(resp) if resp.status().as_u16() == 401 && !challenged => {
                    challenged = true;
                    let h = resp.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or("");
                    let scheme = match auth::parse_challenge(h) {
                        Some(auth::Challenge::Bearer { realm, service, .. }) => Scheme::Bearer { realm, service },
                        Some(auth::Challenge::Basic) => Scheme::Basic,
                        None => {
                            return Err(RegistryError::Unauthorized {
                                registry: t.registry.clone(),
                                message: "the registry wants credentials in a way moat does not speak".into(),
                            })
                        }
                    };
                    if let Ok(mut m) = self.schemes.lock() {
                        m.insert(t.registry.clone(), scheme);
                    }
                    if let Ok(mut m) = self.tokens.lock() {
                        m.retain(|(r, _), _| r != &t.registry);
                    }
                }
                Ok(resp) if resp.status().as_u16() == 401 => {
                    let who = if (self.creds)(&t.registry).is_some() {
                        "the credentials were refused"
                    } else {
                        "authentication required: run moat login"
                    };
                    return Err(RegistryError::Unauthorized { registry: t.registry.clone(), message: who.into() });
                }
                Ok(resp) if retryable(resp.status().as_u16()) && attempt < 3 => {
                    std::thread::sleep(delay);
                    delay *= 2;
                }
                Ok(resp) => return Ok(resp),
                Err(e)
                    if attempt < 3
                        && matches!(
                            e,
                            ureq::Error::Io(_) | ureq::Error::ConnectionFailed | ureq::Error::Timeout(_)
                        ) =>
                {
                    tracing::debug!("{}: {e}; retrying", t.registry);
                    std::thread::sleep(delay);
                    delay *= 2;
                }
                Err(e) => return Err(Self::unreachable(t, e)),
            }
        }
    }

    fn scope(t: &Target, actions: &str) -> String {
        format!("repository:{}:{actions}", t.repo)
    }

    fn failed(t: &Target, what: &str, resp: &mut ureq::http::Response<ureq::Body>) -> RegistryError {
        let status = resp.status().as_u16();
        let body = resp.body_mut().with_config().limit(64 << 10).read_to_string().unwrap_or_default();
        // distribution's {"errors":[{"code":..,"message":..}]}
        let msg = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| body.trim().chars().take(200).collect());
        match status {
            404 => RegistryError::NotFound(format!("{what}: not found in {}/{}", t.registry, t.repo)),
            401 | 403 => {
                RegistryError::Unauthorized { registry: t.registry.clone(), message: format!("{what}: {msg}") }
            }
            _ => RegistryError::Protocol { registry: t.registry.clone(), message: format!("{what}: {status} {msg}") },
        }
    }

    /// Checks that the registry answers and takes the credentials
    /// (`login`): `GET /v2/`, with a token fetched if it asks for one.
    pub fn ping(&self, t: &Target) -> Result<(), RegistryError> {
        let base = self.base(t)?;
        let mut resp = self.send(t, "", |a, auth| {
            let mut r = a.get(format!("{base}/v2/"));
            if let Some(h) = auth {
                r = r.header("Authorization", h);
            }
            r.call()
        })?;
        if resp.status().as_u16() == 200 {
            Ok(())
        } else {
            Err(Self::failed(t, "login", &mut resp))
        }
    }

    /// A manifest (or index) by tag or digest. A digest reference is checked.
    pub fn manifest(&self, t: &Target, reference: &str) -> Result<Fetched, RegistryError> {
        let mut bases = Vec::new();
        if t.registry == DOCKER_HUB {
            bases.extend(self.opts.mirrors.iter().map(|m| m.trim_end_matches('/').to_string()));
        }
        bases.push(self.base(t)?);
        let mut last = None;
        for base in bases {
            let url = format!("{base}/v2/{}/manifests/{reference}", t.repo);
            let r = self.send(t, &Self::scope(t, "pull"), |a, auth| {
                let mut r = a.get(&url).header("Accept", ACCEPT.join(", "));
                if let Some(h) = auth {
                    r = r.header("Authorization", h);
                }
                r.call()
            });
            let mut resp = match r {
                Ok(r) => r,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            if resp.status().as_u16() != 200 {
                last = Some(Self::failed(t, &format!("manifest {reference}"), &mut resp));
                continue;
            }
            let ct = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            let bytes = resp
                .body_mut()
                .with_config()
                .limit(8 << 20)
                .read_to_vec()
                .map_err(|e| Self::unreachable(t, format!("read manifest: {e}")))?;
            let digest = digest_of(&bytes);
            if let Ok(want) = reference.parse::<Digest>() {
                if want != digest {
                    return Err(RegistryError::DigestMismatch {
                        what: format!("manifest of {}/{}", t.registry, t.repo),
                        want: want.to_string(),
                        got: digest.to_string(),
                    });
                }
            }
            let media_type = manifest::media_type(&ct, &bytes);
            return Ok(Fetched { media_type, bytes, digest });
        }
        Err(last.unwrap_or_else(|| RegistryError::NotFound(format!("manifest {reference}"))))
    }

    /// Streams blob `digest` of `size` bytes (its descriptor's) into `w`,
    /// checking its size and digest: a registry that sends more is stopped
    /// at the first byte past `size`, one that sends less fails. A failing
    /// `w` stops the download. `progress(n)` is called with the bytes
    /// received so far. A download that breaks off is resumed where it
    /// stopped (`Range`, up to 3 times; a registry that answers the whole
    /// blob again has the bytes already written skipped). Returns the size.
    pub fn blob(
        &self,
        t: &Target,
        digest: &Digest,
        size: u64,
        w: &mut dyn Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, RegistryError> {
        let what = || format!("blob {digest} of {}/{}", t.registry, t.repo);
        let base = self.base(t)?;
        let url = format!("{base}/v2/{}/blobs/{digest}", t.repo);
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 17];
        let mut n = 0u64;
        let mut resumes = 0;
        'request: loop {
            let range = (n > 0).then(|| format!("bytes={n}-"));
            let mut resp = self.send(t, &Self::scope(t, "pull"), |a, auth| {
                let mut r = a.get(&url);
                if let Some(h) = auth {
                    r = r.header("Authorization", h);
                }
                if let Some(range) = &range {
                    r = r.header("Range", range);
                }
                r.call()
            })?;
            let status = resp.status().as_u16();
            // bytes of this answer to drop: a 200 to a ranged request starts over
            let mut skip = match status {
                200 => n,
                206 if n > 0 && range_start(&resp) == Some(n) => 0,
                206 => {
                    return Err(RegistryError::Protocol {
                        registry: t.registry.clone(),
                        message: format!("blob {digest}: the registry resumed at the wrong offset"),
                    })
                }
                _ => return Err(Self::failed(t, &format!("blob {digest}"), &mut resp)),
            };
            let mut body = resp.body_mut().as_reader();
            loop {
                let k = match body.read(&mut buf) {
                    Ok(0) => break 'request,
                    Ok(k) => k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) if resumes < 3 => {
                        resumes += 1;
                        tracing::debug!("download of {digest} broke off at {n} bytes ({e}); resuming");
                        continue 'request;
                    }
                    Err(e) => return Err(Self::unreachable(t, format!("download of {digest} broke off: {e}"))),
                };
                let drop = skip.min(k as u64) as usize;
                skip -= drop as u64;
                let fresh = &buf[drop..k];
                if fresh.is_empty() {
                    continue;
                }
                if n + fresh.len() as u64 > size {
                    return Err(RegistryError::SizeMismatch {
                        what: what(),
                        want: size,
                        got: format!("more (stopped at {})", n + fresh.len() as u64),
                    });
                }
                h.update(fresh);
                w.write_all(fresh).map_err(|e| RegistryError::Io(format!("write blob {digest}"), e))?;
                n += fresh.len() as u64;
                progress(n);
            }
        }
        if n != size {
            return Err(RegistryError::SizeMismatch { what: what(), want: size, got: n.to_string() });
        }
        let got = format!("sha256:{}", hex::encode(h.finalize()));
        if got != digest.to_string() {
            return Err(RegistryError::DigestMismatch {
                what: format!("blob of {}/{}", t.registry, t.repo),
                want: digest.to_string(),
                got,
            });
        }
        Ok(n)
    }

    /// The repository's tags (`GET /v2/<repo>/tags/list`, following the
    /// `Link` header of a paginated answer).
    pub fn tags(&self, t: &Target) -> Result<Vec<String>, RegistryError> {
        let base = self.base(t)?;
        let mut url = format!("{base}/v2/{}/tags/list", t.repo);
        let mut tags = Vec::new();
        for _ in 0..1000 {
            let mut resp = self.send(t, &Self::scope(t, "pull"), |a, auth| {
                let mut r = a.get(&url);
                if let Some(h) = auth {
                    r = r.header("Authorization", h);
                }
                r.call()
            })?;
            if resp.status().as_u16() != 200 {
                return Err(Self::failed(t, "tag list", &mut resp));
            }
            // `<...?n=..&last=..>; rel="next"`
            let next = resp
                .headers()
                .get("link")
                .and_then(|v| v.to_str().ok())
                .and_then(|l| l.split_once('<').and_then(|(_, r)| r.split_once('>')).map(|(u, _)| u.to_string()));
            let body =
                resp.body_mut().with_config().limit(16 << 20).read_to_vec().map_err(|e| Self::unreachable(t, e))?;
            let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| RegistryError::Protocol {
                registry: t.registry.clone(),
                message: format!("tag list: {e}"),
            })?;
            tags.extend(v["tags"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_string)));
            match next {
                Some(n) if n.starts_with('/') => url = format!("{base}{n}"),
                Some(n) => url = n,
                None => break,
            }
        }
        Ok(tags)
    }

    /// Whether the repository has blob `digest`.
    pub fn has_blob(&self, t: &Target, digest: &Digest) -> Result<bool, RegistryError> {
        let base = self.base(t)?;
        let url = format!("{base}/v2/{}/blobs/{digest}", t.repo);
        let resp = self.send(t, &Self::scope(t, "pull,push"), |a, auth| {
            let mut r = a.head(&url);
            if let Some(h) = auth {
                r = r.header("Authorization", h);
            }
            r.call()
        })?;
        Ok(resp.status().as_u16() == 200)
    }

    /// Uploads a blob (`POST` then one `PUT` with the content), unless the
    /// registry has it; `from` names a repository of the same registry to
    /// mount it from first.
    pub fn push_blob(
        &self,
        t: &Target,
        digest: &Digest,
        size: u64,
        from: Option<&str>,
        content: &mut dyn FnMut() -> Result<Box<dyn Read + Send>, RegistryError>,
    ) -> Result<BlobPush, RegistryError> {
        if self.has_blob(t, digest)? {
            return Ok(BlobPush::Present);
        }
        let base = self.base(t)?;
        let url = format!("{base}/v2/{}/blobs/uploads/", t.repo);
        let scope = Self::scope(t, "pull,push");
        let start = |url: &str| {
            self.send(t, &scope, |a, auth| {
                let mut r = a.post(url);
                if let Some(h) = auth {
                    r = r.header("Authorization", h);
                }
                r.header("Content-Length", "0").send_empty()
            })
        };
        // a mount needs pull access to the other repository too; when the
        // registry refuses it, upload instead
        let mut resp = match from.filter(|f| *f != t.repo) {
            Some(f) => match start(&format!("{url}?mount={digest}&from={}", auth::urlencode(f))) {
                Ok(r) if r.status().as_u16() == 201 => return Ok(BlobPush::Mounted),
                Ok(r) if r.status().as_u16() == 202 => r,
                Ok(_) | Err(RegistryError::Unauthorized { .. }) => start(&url)?,
                Err(e) => return Err(e),
            },
            None => start(&url)?,
        };
        if resp.status().as_u16() != 202 {
            return Err(Self::failed(t, &format!("upload of {digest}"), &mut resp));
        }
        let loc = resp.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        if loc.is_empty() {
            return Err(RegistryError::Protocol {
                registry: t.registry.clone(),
                message: "upload without a Location".into(),
            });
        }
        let loc = if loc.starts_with('/') { format!("{base}{loc}") } else { loc };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let put = format!("{loc}{sep}digest={digest}");
        let mut resp = self.send(t, &scope, |a, auth| {
            let reader = content().map_err(|e| ureq::Error::Io(std::io::Error::other(e.to_string())))?;
            let mut r = a
                .put(&put)
                .header("Content-Type", "application/octet-stream")
                .header("Content-Length", size.to_string());
            if let Some(h) = auth {
                r = r.header("Authorization", h);
            }
            r.send(ureq::SendBody::from_owned_reader(reader))
        })?;
        if resp.status().as_u16() != 201 {
            return Err(Self::failed(t, &format!("upload of {digest}"), &mut resp));
        }
        Ok(BlobPush::Uploaded)
    }

    /// Puts a manifest under `reference` (a tag); returns its digest.
    pub fn push_manifest(
        &self,
        t: &Target,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest, RegistryError> {
        let base = self.base(t)?;
        let url = format!("{base}/v2/{}/manifests/{reference}", t.repo);
        let mut resp = self.send(t, &Self::scope(t, "pull,push"), |a, auth| {
            let mut r = a.put(&url).header("Content-Type", media_type);
            if let Some(h) = auth {
                r = r.header("Authorization", h);
            }
            r.send(bytes)
        })?;
        if resp.status().as_u16() != 201 {
            return Err(Self::failed(t, "manifest", &mut resp));
        }
        Ok(digest_of(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_naming() {
        assert_eq!(Target::of_repo("busybox"), Target { registry: "docker.io".into(), repo: "library/busybox".into() });
        assert_eq!(Target::of_repo("user/app"), Target { registry: "docker.io".into(), repo: "user/app".into() });
        assert_eq!(
            Target::of_repo("127.0.0.1:5000/a/b"),
            Target { registry: "127.0.0.1:5000".into(), repo: "a/b".into() }
        );
        assert_eq!(Target::of_repo("localhost/x").registry, "localhost");
        assert_eq!(Target::of_repo("busybox").api_host(), "registry-1.docker.io");
        assert!(is_loopback("127.0.0.1:5000") && is_loopback("localhost") && is_loopback("[::1]:5000"));
        assert!(!is_loopback("quay.io") && !is_loopback("10.0.0.1:5000"));
    }

    /// A one-blob HTTP registry on 127.0.0.1 whose first blob answer
    /// breaks off after `cut` bytes; later answers honour `Range` when
    /// `ranges`, else send the whole blob again.
    fn flaky_registry(blob: Vec<u8>, cut: usize, ranges: bool) -> (String, std::thread::JoinHandle<Vec<String>>) {
        use std::io::BufRead;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let h = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut blob_answers = 0;
            for c in l.incoming() {
                let Ok(mut c) = c else { break };
                let mut r = std::io::BufReader::new(c.try_clone().unwrap());
                let mut head = Vec::new();
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push(line.trim_end().to_string());
                }
                let Some(first) = head.first().cloned() else { continue }; // a TLS hello, or nothing
                if !first.starts_with("GET ") {
                    continue;
                }
                seen.push(head.join("|"));
                if first.starts_with("GET /v2/ ") {
                    let _ = c.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
                    continue;
                }
                blob_answers += 1;
                let range = head.iter().find_map(|h| {
                    h.to_ascii_lowercase()
                        .strip_prefix("range: bytes=")
                        .map(|v| v.trim_end_matches('-').parse::<usize>().unwrap())
                });
                match (blob_answers, range) {
                    (1, _) => {
                        let _ = c.write_all(
                            format!("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n", blob.len())
                                .as_bytes(),
                        );
                        let _ = c.write_all(&blob[..cut]);
                    }
                    (_, Some(from)) if ranges => {
                        let rest = &blob[from..];
                        let _ = c.write_all(format!(
                            "HTTP/1.1 206 Partial Content\r\nConnection: close\r\nContent-Length: {}\r\nContent-Range: bytes {from}-{}/{}\r\n\r\n",
                            rest.len(), blob.len() - 1, blob.len()).as_bytes());
                        let _ = c.write_all(rest);
                        break;
                    }
                    _ => {
                        let _ = c.write_all(
                            format!("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n", blob.len())
                                .as_bytes(),
                        );
                        let _ = c.write_all(&blob);
                        break;
                    }
                }
            }
            seen
        });
        (addr, h)
    }

    #[test]
    fn a_broken_download_resumes_where_it_stopped() {
        let blob: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let digest = digest_of(&blob);
        for ranges in [true, false] {
            let (addr, server) = flaky_registry(blob.clone(), 100_000, ranges);
            let c = Client::new(ClientOptions::default(), |_| None);
            let t = Target::of_repo(&format!("{addr}/r"));
            let mut out = Vec::new();
            let n = c.blob(&t, &digest, blob.len() as u64, &mut out, &mut |_| {}).unwrap();
            assert_eq!((n, out == blob), (blob.len() as u64, true), "ranges: {ranges}");
            let seen = server.join().unwrap();
            let asked = seen.iter().filter(|h| h.contains("/blobs/")).collect::<Vec<_>>();
            assert_eq!(asked.len(), 2, "{seen:?}");
            assert!(asked[1].to_ascii_lowercase().contains("range: bytes=100000-"), "{seen:?}");
        }
    }
}
