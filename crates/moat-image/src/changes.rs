//! Dockerfile-style `--change` instructions applied to an imported image's config
//! (`CMD`, `ENTRYPOINT`, `ENV`, `WORKDIR`, `USER`, `LABEL`, `EXPOSE`).

use crate::ImageError;
use serde_json::{json, Value};

fn bad(c: &str, why: &str) -> ImageError {
    ImageError::BadConfig(format!("--change {c:?}: {why}"))
}

/// JSON exec form `["a","b"]`, or shell form wrapped in `/bin/sh -c`.
fn command(c: &str, arg: &str) -> Result<Value, ImageError> {
    if arg.trim_start().starts_with('[') {
        let v: Vec<String> = serde_json::from_str(arg).map_err(|_| bad(c, "expected a JSON array of strings"))?;
        Ok(json!(v))
    } else {
        Ok(json!(["/bin/sh", "-c", arg]))
    }
}

/// Applies one instruction to the `config` object of an image config.
pub fn apply(cfg: &mut Value, change: &str) -> Result<(), ImageError> {
    let (inst, arg) = change.trim().split_once(char::is_whitespace).ok_or_else(|| bad(change, "missing argument"))?;
    let arg = arg.trim();
    let obj = cfg.as_object_mut().ok_or_else(|| bad(change, "config is not an object"))?;
    match inst.to_ascii_uppercase().as_str() {
        "CMD" => {
            obj.insert("Cmd".into(), command(change, arg)?);
        }
        "ENTRYPOINT" => {
            obj.insert("Entrypoint".into(), command(change, arg)?);
        }
        "WORKDIR" => {
            obj.insert("WorkingDir".into(), json!(arg));
        }
        "USER" => {
            obj.insert("User".into(), json!(arg));
        }
        "ENV" => {
            let (k, v) = arg
                .split_once('=')
                .or_else(|| arg.split_once(char::is_whitespace))
                .ok_or_else(|| bad(change, "expected ENV KEY=VALUE"))?;
            let env = obj.entry("Env").or_insert_with(|| json!([]));
            let list = env.as_array_mut().ok_or_else(|| bad(change, "Env is not a list"))?;
            list.retain(|e| e.as_str().and_then(|s| s.split_once('=')).map(|(ek, _)| ek != k).unwrap_or(true));
            list.push(json!(format!("{k}={}", v.trim())));
        }
        "LABEL" => {
            let (k, v) = arg.split_once('=').ok_or_else(|| bad(change, "expected LABEL KEY=VALUE"))?;
            let labels = obj.entry("Labels").or_insert_with(|| json!({}));
            labels[k.trim()] = json!(v.trim().trim_matches('"'));
        }
        "EXPOSE" => {
            let ports = obj.entry("ExposedPorts").or_insert_with(|| json!({}));
            for p in arg.split_whitespace() {
                let p = if p.contains('/') { p.to_string() } else { format!("{p}/tcp") };
                ports[p] = json!({});
            }
        }
        other => return Err(bad(change, &format!("unsupported instruction {other}"))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions() -> Result<(), ImageError> {
        let mut c = json!({"Env": ["PATH=/bin", "A=1"]});
        apply(&mut c, r#"CMD ["sh"]"#)?;
        apply(&mut c, "ENTRYPOINT echo hi")?;
        apply(&mut c, "ENV A=2")?;
        apply(&mut c, "WORKDIR /w")?;
        apply(&mut c, "EXPOSE 80 53/udp")?;
        assert_eq!(c["Cmd"], json!(["sh"]));
        assert_eq!(c["Entrypoint"], json!(["/bin/sh", "-c", "echo hi"]));
        assert_eq!(c["Env"], json!(["PATH=/bin", "A=2"]));
        assert_eq!(c["WorkingDir"], "/w");
        assert!(c["ExposedPorts"].get("53/udp").is_some());
        assert!(apply(&mut c, "RUN rm -rf /").is_err());
        assert!(apply(&mut c, "CMD [broken").is_err());
        Ok(())
    }
}
