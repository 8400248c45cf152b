//! Fuzz targets (bolero): what a client sends the API — paths with their
//! version prefix, query strings, and the JSON bodies of update, network,
//! exec and container create requests.

use crate::http::{parse_json, path_decode, strip_version, Query};
use crate::routes;

#[test]
fn paths_and_queries_never_panic() {
    bolero::check!().for_each(|bytes: &[u8]| {
        let s = String::from_utf8_lossy(bytes);
        let _ = strip_version(&s);
        let _ = path_decode(&s);
        let q = Query::parse(Some(&s));
        for k in ["all", "force", "t", "filters", "h", "w", "since", "tail", "buildargs"] {
            let _ = q.bool(k, false);
            let _ = q.num::<i64>(k);
            let _ = q.all(k);
        }
        let _ = routes::filters(&q);
        let _ = routes::winsize(&q);
    });
}

#[test]
fn request_bodies_never_panic() {
    bolero::check!().for_each(|bytes: &[u8]| {
        if let Ok(v) = parse_json::<serde_json::Value>(bytes) {
            let _ = routes::update_request(&v);
            let _ = routes::switch_request(&v);
            let _ = routes::exec_spec(&v);
            let _ = crate::create::strings(&v, "Cmd");
            let _ = crate::create::restart_policy(&v);
            let _ = crate::create::console_size(&v);
        }
    });
}
