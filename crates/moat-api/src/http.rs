//! Responses in Docker's shape, bodies, query strings and API versions.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Frame, Incoming};
use hyper::{Response, StatusCode};
use moat_engine::EngineError;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The API version moat speaks and the oldest it accepts.
pub(crate) use moat_engine::view::{API_VERSION, MIN_API_VERSION};

/// Every response body.
pub(crate) type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;
pub(crate) type Resp = Response<Body>;

/// An error answered as `{"message": ...}` with its status.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub(crate) fn bad(message: impl Into<String>) -> Self {
        Self { status: 400, message: message.into() }
    }
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self { status: 404, message: message.into() }
    }
    pub(crate) fn unsupported(message: impl Into<String>) -> Self {
        Self { status: 501, message: message.into() }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        Self { status: e.kind().http_status(), message: e.to_string() }
    }
}

pub(crate) type Result<T> = std::result::Result<T, ApiError>;

pub(crate) fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn base(status: u16) -> hyper::http::response::Builder {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("Api-Version", API_VERSION)
        .header("Ostype", "linux")
        .header("Server", concat!("moat/", env!("CARGO_PKG_VERSION"), " (linux)"))
        .header("Docker-Experimental", "false")
}

fn finish(b: hyper::http::response::Builder, body: Body) -> Resp {
    match b.body(body) {
        Ok(r) => r,
        Err(_) => Response::new(full("")),
    }
}

pub(crate) fn json<T: serde::Serialize>(status: u16, v: &T) -> Resp {
    match serde_json::to_vec(v) {
        Ok(b) => body(status, "application/json", b),
        Err(e) => error(&ApiError { status: 500, message: format!("encode the answer: {e}") }),
    }
}

pub(crate) fn empty(status: u16) -> Resp {
    finish(base(status), full(""))
}

pub(crate) fn text(status: u16, t: &str) -> Resp {
    body(status, "text/plain; charset=utf-8", t.to_string())
}

/// A whole body of `content_type`.
pub(crate) fn body(status: u16, content_type: &str, b: impl Into<Bytes>) -> Resp {
    finish(base(status).header("Content-Type", content_type), full(b))
}

pub(crate) fn error(e: &ApiError) -> Resp {
    json(e.status, &serde_json::json!({ "message": e.message }))
}

/// A response whose body arrives from a channel (streams of JSON, logs,
/// `wait`): the headers go out at once.
pub(crate) fn streaming(status: u16, content_type: &str) -> (tokio::sync::mpsc::Sender<Bytes>, Resp) {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let r = finish(base(status).header("Content-Type", content_type), ChanBody { rx }.boxed());
    (tx, r)
}

/// A 101 answer that hands the connection over.
pub(crate) fn upgraded(content_type: &str) -> Resp {
    finish(
        base(101).header("Content-Type", content_type).header("Connection", "Upgrade").header("Upgrade", "tcp"),
        full(""),
    )
}

struct ChanBody {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for ChanBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, std::io::Error>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// The next frame of a request body, failing with 408 when none comes
/// within `idle`.
pub(crate) async fn next_frame(b: &mut Incoming, idle: std::time::Duration) -> Result<Option<Frame<Bytes>>> {
    match tokio::time::timeout(idle, b.frame()).await {
        Err(_) => Err(ApiError {
            status: 408,
            message: format!("the request body sent nothing for {} s", idle.as_secs_f64()),
        }),
        Ok(None) => Ok(None),
        Ok(Some(Ok(f))) => Ok(Some(f)),
        Ok(Some(Err(e))) => Err(ApiError::bad(format!("cannot read the request body: {e}"))),
    }
}

/// The request body, at most `max` bytes.
pub(crate) async fn read_body(mut b: Incoming, max: usize, idle: std::time::Duration) -> Result<Bytes> {
    let too_large = || ApiError { status: 413, message: format!("request body larger than {max} bytes") };
    if b.size_hint().lower() > max as u64 {
        return Err(too_large());
    }
    let mut out = Vec::new();
    while let Some(f) = next_frame(&mut b, idle).await? {
        if let Ok(d) = f.into_data() {
            if out.len() + d.len() > max {
                return Err(too_large());
            }
            out.extend_from_slice(&d);
        }
    }
    Ok(Bytes::from(out))
}

/// The body as JSON of type `T`; an empty body is `T::default()`.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned + Default>(b: &[u8]) -> Result<T> {
    if b.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(b).map_err(|e| ApiError::bad(format!("invalid JSON in the request body: {e}")))
}

/// Decoded query parameters (the last value of a repeated key wins).
pub(crate) struct Query {
    pairs: Vec<(String, String)>,
}

/// A URL path segment decoded (`%XX`; a `+` stays a `+`).
pub(crate) fn path_decode(s: &str) -> String {
    pct_decode_with(s, false)
}

fn pct_decode(s: &str) -> String {
    pct_decode_with(s, true)
}

fn pct_decode_with(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Query {
    pub(crate) fn parse(q: Option<&str>) -> Self {
        let pairs = q
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (pct_decode(k), pct_decode(v))
            })
            .collect();
        Self { pairs }
    }

    pub(crate) fn get(&self, k: &str) -> Option<&str> {
        self.pairs.iter().rev().find(|(x, _)| x == k).map(|(_, v)| v.as_str())
    }

    /// `name`, with `:TAG` when the `tag` parameter is set (push, tag, commit).
    pub(crate) fn with_tag(&self, name: &str) -> String {
        match self.get("tag").filter(|t| !t.is_empty()) {
            Some(t) => format!("{name}:{t}"),
            None => name.to_string(),
        }
    }

    pub(crate) fn all(&self, k: &str) -> Vec<&str> {
        self.pairs.iter().filter(|(x, _)| x == k).map(|(_, v)| v.as_str()).collect()
    }

    /// Docker's booleans: `1`, `true`, `True`; absent is `default`.
    pub(crate) fn bool(&self, k: &str, default: bool) -> Result<bool> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" => Ok(true),
                "0" | "false" | "no" | "" => Ok(false),
                _ => Err(ApiError::bad(format!("invalid value for {k}: {v:?} (use 1/0 or true/false)"))),
            },
        }
    }

    pub(crate) fn num<T: std::str::FromStr>(&self, k: &str) -> Result<Option<T>> {
        match self.get(k).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| ApiError::bad(format!("invalid value for {k}: {v:?}"))),
        }
    }
}

/// Splits `/v1.45/containers/json` into the version (if any) and the path.
pub(crate) fn strip_version(path: &str) -> Result<(Option<(u32, u32)>, &str)> {
    let Some(rest) = path.strip_prefix("/v") else { return Ok((None, path)) };
    let (ver, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let Some((maj, min)) = ver.split_once('.') else { return Ok((None, path)) };
    let (Ok(maj), Ok(min)) = (maj.parse::<u32>(), min.parse::<u32>()) else { return Ok((None, path)) };
    let (want_maj, want_min) = split_ver(MIN_API_VERSION);
    if (maj, min) < (want_maj, want_min) {
        return Err(ApiError::bad(format!(
            "client version {maj}.{min} is too old. Minimum supported API version is {MIN_API_VERSION}, please upgrade your client to a newer version"
        )));
    }
    Ok((Some((maj, min)), tail))
}

fn split_ver(v: &str) -> (u32, u32) {
    let (a, b) = v.split_once('.').unwrap_or((v, "0"));
    (a.parse().unwrap_or(1), b.parse().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_queries() {
        assert_eq!(strip_version("/v1.45/containers/json").ok(), Some((Some((1, 45)), "/containers/json")));
        assert_eq!(strip_version("/v1.53/_ping").ok(), Some((Some((1, 53)), "/_ping")));
        assert_eq!(strip_version("/_ping").ok(), Some((None, "/_ping")));
        assert!(strip_version("/v1.12/info").is_err());
        let q = Query::parse(Some("all=1&filters=%7B%22label%22%3A%5B%22a%3Db%22%5D%7D&x=%zz&t=a+b"));
        assert_eq!(q.bool("all", false).ok(), Some(true));
        assert_eq!(q.get("filters"), Some(r#"{"label":["a=b"]}"#));
        assert_eq!(q.get("x"), Some("%zz"));
        assert_eq!(q.get("t"), Some("a b"));
        assert!(q.bool("t", false).is_err());
        assert_eq!(Query::parse(Some("a=%4")).get("a"), Some("%4"));
        assert_eq!(Query::parse(Some("repo=r&tag=v1")).with_tag("r"), "r:v1");
        assert_eq!(Query::parse(Some("repo=r&tag=")).with_tag("r"), "r");
    }
}
