//! `moat serve`: the Docker Engine API over moat's engine.
//!
//! HTTP/1.1 on hyper 1.x with a small tokio runtime; every request that
//! touches the engine runs on the blocking pool with an [`Engine`] of its
//! own, opened from the same options as the CLI's (the engine's state is
//! on disk and shared with every other moat process, so containers made
//! here are the CLI's, and they keep running while the server is down).
//! Attach and exec hijack the connection (`101 UPGRADED`) and relay it on
//! plain threads. See `docs/api.md`.

mod create;
#[cfg(test)]
mod fuzz;
mod http;
mod listen;
mod routes;
mod stream;

pub use listen::{Listen, ListenError};

use moat_engine::{Engine, EngineError, EngineOptions};
use std::sync::Arc;

/// Errors of the server itself (not of requests: those are answered).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener could not be set up.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The runtime could not start.
    #[error("cannot start the server runtime: {0}")]
    Runtime(std::io::Error),
    /// The engine cannot be opened with these options.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// What `moat serve` was asked for.
#[derive(Clone)]
pub struct ServeOptions {
    /// The engine every request opens.
    pub engine: EngineOptions,
    /// Where to listen.
    pub listen: Vec<Listen>,
    /// Group that may use unix sockets (mode 0660, owner root).
    pub group: Option<u32>,
    /// Accept `tcp://` on addresses other than loopback (unauthenticated!).
    pub insecure_tcp: bool,
    /// Largest request body of the JSON endpoints.
    pub max_body: usize,
    /// Limits on clients: connections at once, time to send a request head,
    /// time a request body may send nothing.
    pub limits: ConnLimits,
}

/// What one client may hold of the server.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// Connections served at once; more are answered 503 and closed
    /// (hijacked attach and exec streams count while they last).
    pub max_connections: usize,
    /// How long a client may take to send a request's line and headers.
    pub header_timeout: std::time::Duration,
    /// How long a request body may send nothing (a body shorter than its
    /// `Content-Length` fails with 408 after this).
    pub body_idle: std::time::Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_connections: 1000,
            header_timeout: std::time::Duration::from_secs(30),
            body_idle: std::time::Duration::from_secs(60),
        }
    }
}

/// Shared by every request.
pub(crate) struct Ctx {
    pub(crate) engine: EngineOptions,
    pub(crate) max_body: usize,
    pub(crate) limits: ConnLimits,
    /// Attaches waiting for their container's start (`docker run` attaches first).
    pub(crate) pending: std::sync::Mutex<std::collections::HashMap<String, Vec<stream::PendingAttach>>>,
    /// Opened engines between short requests (opening one per request
    /// costs a database open and the config files each time).
    pub(crate) idle: std::sync::Mutex<Vec<Engine>>,
}

impl Ctx {
    pub(crate) fn open(&self) -> Result<Engine, EngineError> {
        Engine::open(self.engine.clone())
    }

    /// A request body under this server's size and idle limits.
    pub(crate) async fn read_body(&self, b: hyper::body::Incoming) -> http::Result<bytes::Bytes> {
        http::read_body(b, self.max_body, self.limits.body_idle).await
    }

    /// Runs `f` with an idle engine (or a new one), kept for the next request.
    pub(crate) fn with_engine<T>(
        &self,
        f: impl FnOnce(&mut Engine) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
        let mut e = match idle {
            Some(e) => e,
            None => self.open()?,
        };
        let r = f(&mut e);
        if let Ok(mut v) = self.idle.lock() {
            if v.len() < 8 {
                v.push(e);
            }
        }
        r
    }
}

/// Serves until SIGINT or SIGTERM. Containers are not touched on the way out.
pub fn serve(o: ServeOptions) -> Result<(), ServeError> {
    // fail early (a bad root, a bad config) rather than on the first request
    drop(Engine::open(o.engine.clone())?);
    // like dockerd at its start: repair what a crash left and restart the
    // containers whose policy wants them running (beside the listeners)
    let boot_opts = o.engine.clone();
    std::thread::spawn(move || match Engine::open(boot_opts).and_then(|mut e| e.boot()) {
        Ok(booted) => {
            for b in booted {
                match b.result {
                    Ok(()) => tracing::info!("restarted {} by its restart policy", b.name),
                    Err(err) => tracing::warn!("cannot restart {}: {err}", b.name),
                }
            }
        }
        Err(err) => tracing::warn!("boot: {err}"),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(256)
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    let ctx = Arc::new(Ctx {
        engine: o.engine.clone(),
        max_body: o.max_body,
        limits: o.limits,
        pending: Default::default(),
        idle: Default::default(),
    });
    let listen = o.listen.clone();
    rt.block_on(async move {
        let listeners = listen::bind_all(&o.listen, o.group, o.insecure_tcp)?;
        for l in &listeners {
            tracing::info!("listening on {}", l.describe());
        }
        for l in listeners {
            let ctx = ctx.clone();
            tokio::spawn(async move { l.accept_loop(ctx).await });
        }
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(ServeError::Runtime)?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        Ok::<(), ServeError>(())
    })?;
    listen::remove_sockets(&listen);
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    Ok(())
}
