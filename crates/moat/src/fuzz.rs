//! Fuzz target (bolero): the Go template engine of `--format`, parsing
//! and rendering any template against a container-like value.

use crate::format::Tmpl;

#[test]
fn templates_never_panic() {
    let v = serde_json::json!({
        "ID": "abc", "Names": ["/x"], "Labels": {"a": "b"}, "Ports": [], "Size": 12,
        "State": {"Running": true, "Pid": 1}, "Config": {"Env": ["A=1"], "Cmd": null},
    });
    bolero::check!().for_each(|bytes: &[u8]| {
        let s = String::from_utf8_lossy(bytes);
        if let Ok(t) = Tmpl::parse(&s) {
            let _ = t.render(&v);
        }
        // most random strings are not templates: wrap them in actions too
        if let Ok(t) = Tmpl::parse(&format!("{{{{{s}}}}}")) {
            let _ = t.render(&v);
        }
    });
}
