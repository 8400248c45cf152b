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

/// Splits `a=1 b="two words" c='x'` into words, honouring quotes and `\`
/// escapes like a Dockerfile.
fn words(s: &str) -> Result<Vec<String>, &'static str> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (Some('\''), c) => cur.push(c),
            (_, '\\') => {
                cur.push(chars.next().ok_or("a trailing backslash")?);
                in_word = true;
            }
            (_, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err("an unterminated quote");
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// `KEY=VALUE ...` pairs, or the legacy one-pair form `KEY VALUE` (the rest of
/// the line is the value), as `ENV` and `LABEL` take them.
fn pairs(change: &str, arg: &str) -> Result<Vec<(String, String)>, ImageError> {
    let first = arg.split_whitespace().next().unwrap_or("");
    if !first.contains('=') {
        let (k, v) = arg.split_once(char::is_whitespace).ok_or_else(|| bad(change, "expected KEY=VALUE"))?;
        return Ok(vec![(k.to_string(), v.trim().to_string())]);
    }
    words(arg)
        .map_err(|w| bad(change, w))?
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(bad(change, &format!("{w:?} is not KEY=VALUE"))),
        })
        .collect()
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
            let env = obj.entry("Env").or_insert_with(|| json!([]));
            let list = env.as_array_mut().ok_or_else(|| bad(change, "Env is not a list"))?;
            for (k, v) in pairs(change, arg)? {
                list.retain(|e| e.as_str().and_then(|s| s.split_once('=')).map(|(ek, _)| ek != k).unwrap_or(true));
                list.push(json!(format!("{k}={v}")));
            }
        }
        "LABEL" => {
            let labels = obj.entry("Labels").or_insert_with(|| json!({}));
            for (k, v) in pairs(change, arg)? {
                labels[k] = json!(v);
            }
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
        // several pairs, quotes, and the legacy one-pair form
        apply(&mut c, r#"ENV A=1 B="two words" C='x y' D=a\ b"#)?;
        assert_eq!(c["Env"], json!(["PATH=/bin", "A=1", "B=two words", "C=x y", "D=a b"]));
        apply(&mut c, "ENV GREETING hello there")?;
        assert_eq!(c["Env"].as_array().and_then(|a| a.last()).cloned(), Some(json!("GREETING=hello there")));
        apply(&mut c, r#"LABEL a=1 "b c"=2"#)?;
        assert_eq!((c["Labels"]["a"].clone(), c["Labels"]["b c"].clone()), (json!("1"), json!("2")));
        assert!(apply(&mut c, r#"ENV A="unterminated"#).is_err());
        assert!(apply(&mut c, "CMD [broken").is_err());
        Ok(())
    }
}
