//! `--format`: `table` (moat's columns), `json` (one object per line for
//! lists), or a Go template (`{{.Names}}\t{{.Status}}`, `{{json .Config}}`,
//! `table {{.ID}}\t{{.Image}}` for a header row) rendered with the `gtmpl`
//! crate over the engine's typed views. Like Docker, a field that does not
//! exist is an error; a missing map key prints nothing.

use anyhow::{anyhow, Result};
use gtmpl::{Context, Template, Value};
use serde::Serialize;
use std::collections::HashMap;
use std::io::Write;

/// A struct (all keys Go-style exported field names) or a map (labels,
/// networks, ports: any other keys).
fn is_struct(o: &serde_json::Map<String, serde_json::Value>) -> bool {
    !o.is_empty()
        && o.keys().all(|k| {
            k.chars().next().is_some_and(|c| c.is_ascii_uppercase()) && k.chars().all(|c| c.is_ascii_alphanumeric())
        })
}

/// Keys of Docker's JSON whose Go field (what a template names) is spelled
/// otherwise: `docker version --format '{{.Server.APIVersion}}'`.
const GO_NAMES: &[(&str, &str)] = &[("ApiVersion", "APIVersion")];

fn value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(u)) => Value::from(u),
            _ => Value::from(n.as_f64().unwrap_or(0.0)),
        },
        serde_json::Value::String(s) => Value::from(s.clone()),
        serde_json::Value::Array(a) => Value::Array(a.iter().map(value).collect()),
        serde_json::Value::Object(o) => {
            let mut m: HashMap<String, Value> = o.iter().map(|(k, v)| (k.clone(), value(v))).collect();
            if is_struct(o) {
                // the Go field names of keys Docker's JSON spells otherwise
                for (json, go) in GO_NAMES {
                    if let (Some(v), false) = (m.get(*json).cloned(), m.contains_key(*go)) {
                        m.insert((*go).to_string(), v);
                    }
                }
                Value::Object(m)
            } else {
                Value::Map(m)
            }
        }
    }
}

fn to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Nil | Value::NoValue => serde_json::Value::Null,
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::String(s) => serde_json::Value::String(s.clone()),
        Value::Number(n) => serde_json::from_str(&n.to_string()).unwrap_or(serde_json::Value::Null),
        Value::Array(a) => serde_json::Value::Array(a.iter().map(to_json).collect()),
        Value::Object(o) | Value::Map(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            serde_json::Value::Object(keys.into_iter().map(|k| (k.clone(), to_json(&o[k]))).collect())
        }
        Value::Function(_) => serde_json::Value::Null,
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Nil | Value::NoValue => String::new(),
        other => other.to_string(),
    }
}

fn arg(args: &[Value], n: usize) -> Result<&Value, gtmpl::FuncError> {
    args.get(n).ok_or(gtmpl::FuncError::AtLeastXArgs("function".into(), n + 1))
}

fn f_json(args: &[Value]) -> Result<Value, gtmpl::FuncError> {
    Ok(Value::from(serde_json::to_string(&to_json(arg(args, 0)?)).unwrap_or_default()))
}
fn f_join(args: &[Value]) -> Result<Value, gtmpl::FuncError> {
    let sep = text(arg(args, 1)?);
    let items: Vec<String> = match arg(args, 0)? {
        Value::Array(a) => a.iter().map(text).collect(),
        other => vec![text(other)],
    };
    Ok(Value::from(items.join(&sep)))
}
fn f_lower(args: &[Value]) -> Result<Value, gtmpl::FuncError> {
    Ok(Value::from(text(arg(args, 0)?).to_lowercase()))
}
fn f_upper(args: &[Value]) -> Result<Value, gtmpl::FuncError> {
    Ok(Value::from(text(arg(args, 0)?).to_uppercase()))
}
fn f_title(args: &[Value]) -> Result<Value, gtmpl::FuncError> {
    let s = text(arg(args, 0)?);
    let mut c = s.chars();
    Ok(Value::from(c.next().map(|f| f.to_uppercase().chain(c).collect::<String>()).unwrap_or_default()))
}
fn f_split(args: &[Value]) -> Result<Value, gtmpl::FuncError> {
    let (s, sep) = (text(arg(args, 0)?), text(arg(args, 1)?));
    Ok(Value::Array(s.split(sep.as_str()).map(|p| Value::from(p.to_string())).collect()))
}
fn f_truncate(args: &[Value]) -> Result<Value, gtmpl::FuncError> {
    let s = text(arg(args, 0)?);
    let n = text(arg(args, 1)?).parse::<usize>().unwrap_or(usize::MAX);
    Ok(Value::from(s.chars().take(n).collect::<String>()))
}
fn f_println(args: &[Value]) -> Result<Value, gtmpl::FuncError> {
    Ok(Value::from(format!("{}\n", args.iter().map(text).collect::<Vec<_>>().join(" "))))
}

/// A parsed `--format` template (the `table` prefix stripped).
pub struct Tmpl {
    tmpl: Template,
    /// The template had the `table` prefix: print a header row.
    pub table: bool,
    source: String,
}

impl Tmpl {
    /// Parses a template; `\t` and `\n` escapes become tabs and newlines, as in Docker.
    pub fn parse(s: &str) -> Result<Self> {
        let (table, body) = match s.strip_prefix("table") {
            Some(rest) if rest.is_empty() || rest.starts_with(char::is_whitespace) => (true, rest.trim_start()),
            _ => (false, s),
        };
        let body = body.replace("\\t", "\t").replace("\\n", "\n");
        let mut tmpl = Template::default();
        let funcs: &[(&str, gtmpl::Func)] = &[
            ("json", f_json),
            ("join", f_join),
            ("lower", f_lower),
            ("upper", f_upper),
            ("title", f_title),
            ("split", f_split),
            ("truncate", f_truncate),
            ("println", f_println),
        ];
        tmpl.add_funcs(funcs);
        tmpl.parse(&body).map_err(|e| anyhow!("template parsing error: {e}"))?;
        Ok(Self { tmpl, table, source: body })
    }

    /// Renders the template for one value.
    pub fn render(&self, v: &impl Serialize) -> Result<String> {
        let j = serde_json::to_value(v)?;
        self.tmpl.render(&Context::from(value(&j))).map_err(|e| {
            let m = e.to_string();
            match m.split_once("no field ") {
                Some((_, rest)) => {
                    let field = rest.split(" for ").next().unwrap_or(rest).trim();
                    anyhow!("template: executing \"\" at <.{field}>: map has no entry for key \"{field}\"")
                }
                None => anyhow!("template: {}", m.lines().next().unwrap_or("execution failed")),
            }
        })
    }

    /// The header row of a `table` template: each `{{.Field}}` as Docker names its column.
    pub fn header(&self, id_header: &str) -> String {
        let mut out = String::new();
        let mut rest = self.source.as_str();
        while let Some(i) = rest.find("{{") {
            out.push_str(&rest[..i]);
            let Some(j) = rest[i..].find("}}") else { break };
            let expr = rest[i + 2..i + j].trim();
            let field = expr.rsplit('.').next().unwrap_or(expr).trim();
            out.push_str(&match field {
                "ID" => id_header.to_string(),
                "RunningFor" | "CreatedSince" => "CREATED".into(),
                "CreatedAt" => "CREATED AT".into(),
                f => {
                    let mut h = String::new();
                    for (n, c) in f.chars().enumerate() {
                        if n > 0 && c.is_ascii_uppercase() {
                            h.push(' ');
                        }
                        h.push(c.to_ascii_uppercase());
                    }
                    h
                }
            });
            rest = &rest[i + j + 2..];
        }
        out.push_str(rest);
        out
    }
}

/// Prints a list with `--format`: `table` (moat's `columns` of each row),
/// `json` (a line per value), or a template.
pub fn list<T: Serialize>(
    format: &str,
    id_header: &str,
    header: &[&str],
    items: &[T],
    columns: impl Fn(&T) -> Vec<String>,
) -> Result<()> {
    match format {
        "" | "table" => {
            let rows: Vec<Vec<String>> = items.iter().map(&columns).collect();
            crate::output::table(header, &rows)?;
        }
        "json" => {
            let mut out = std::io::stdout().lock();
            for i in items {
                writeln!(out, "{}", serde_json::to_string(i)?)?;
            }
        }
        t => {
            let t = Tmpl::parse(t)?;
            let mut lines = Vec::new();
            if t.table {
                lines.push(t.header(id_header));
            }
            for i in items {
                lines.push(t.render(i)?);
            }
            if t.table {
                let mut tw = tabwriter::TabWriter::new(std::io::stdout().lock()).padding(3);
                for l in lines {
                    writeln!(tw, "{l}")?;
                }
                tw.flush()?;
            } else {
                let mut out = std::io::stdout().lock();
                for l in lines {
                    writeln!(out, "{l}")?;
                }
            }
        }
    }
    Ok(())
}

/// Prints inspect results: a JSON array, or each rendered with the template.
pub fn inspect(format: Option<&str>, items: &[serde_json::Value]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        None | Some("") | Some("json") => writeln!(out, "{}", serde_json::to_string_pretty(items)?)?,
        Some(t) => {
            let t = Tmpl::parse(t)?;
            for i in items {
                writeln!(out, "{}", t.render(i)?)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_templates() -> Result<()> {
        let v = serde_json::json!({
            "State": {"Status": "exited", "ExitCode": 3},
            "Config": {"Labels": {"com.example": "x"}, "Env": ["A=1", "B=2"]},
            "Names": "web",
        });
        let r = |t: &str| Tmpl::parse(t).and_then(|t| t.render(&v));
        assert_eq!(r("{{.State.ExitCode}} {{.State.Status}}")?, "3 exited");
        assert_eq!(r("{{json .State}}")?, r#"{"ExitCode":3,"Status":"exited"}"#);
        assert_eq!(r("{{index .Config.Labels \"com.example\"}}")?, "x");
        assert_eq!(r("{{join .Config.Env \",\"}}")?, "A=1,B=2");
        assert_eq!(r("{{.Names}}\\t{{upper .State.Status}}")?, "web\tEXITED");
        let e = r("{{.Nope}}").map(|_| String::new()).unwrap_err().to_string();
        assert!(e.contains("map has no entry for key \"Nope\""), "{e}");
        assert!(Tmpl::parse("{{.Unclosed").is_err());
        let t = Tmpl::parse("table {{.ID}}\\t{{.Names}}\\t{{.RunningFor}}")?;
        assert!(t.table);
        assert_eq!(t.header("CONTAINER ID"), "CONTAINER ID\tNAMES\tCREATED");
        Ok(())
    }
}
