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
        other => go_print(other),
    }
}

/// A value as Go's `fmt` prints it where a template shows it: lists as
/// `[a b]`, maps as `map[k:v]` (keys sorted), structs as `{v …}`.
fn go_print(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Nil => "<nil>".into(),
        Value::NoValue => "<no value>".into(),
        Value::Array(a) => format!("[{}]", a.iter().map(go_print).collect::<Vec<_>>().join(" ")),
        Value::Map(m) => format!("map[{}]", by_key(m, |k, v| format!("{k}:{}", go_print(v)))),
        Value::Object(m) => format!("{{{}}}", by_key(m, |_, v| go_print(v))),
        other => other.to_string(),
    }
}

/// `f` of each entry of `m`, in key order, joined by spaces.
fn by_key(m: &HashMap<String, Value>, f: impl Fn(&str, &Value) -> String) -> String {
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort();
    keys.iter().map(|k| f(k, &m[*k])).collect::<Vec<_>>().join(" ")
}

/// `{{EXPR}}` actions that print a value become `{{EXPR | goprint}}`, so
/// that lists and maps print as Go's templates print them (gtmpl prints
/// its own debug form); control actions, assignments and comments stay.
fn with_go_printing(body: &str) -> String {
    const KEYWORDS: &[&str] =
        &["if", "else", "end", "range", "with", "define", "template", "block", "break", "continue"];
    let mut out = String::new();
    let mut rest = body;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let Some(j) = rest[i..].find("}}") else {
            out.push_str(&rest[i..]);
            return out;
        };
        let inner = &rest[i + 2..i + j];
        let (lt, core, rt) = {
            let lt = if inner.starts_with('-') { "-" } else { "" };
            let rt = if inner.ends_with('-') && inner.len() > lt.len() { "-" } else { "" };
            (lt, &inner[lt.len()..inner.len() - rt.len()], rt)
        };
        let word = core.trim().split(|c: char| c.is_whitespace() || c == '(').next().unwrap_or("");
        let prints = !core.trim().is_empty()
            && !core.trim_start().starts_with("/*")
            && !KEYWORDS.contains(&word)
            && !core.contains(":=")
            && !core.split_whitespace().any(|w| w == "=");
        if prints {
            out.push_str(&format!(
                "{{{{{lt}{} | goprint{}{rt}}}}}",
                core.trim_end(),
                if rt.is_empty() { "" } else { " " }
            ));
        } else {
            out.push_str(&rest[i..i + j + 2]);
        }
        rest = &rest[i + j + 2..];
    }
    out.push_str(rest);
    out
}

/// Go's `printf` for the verbs templates use: `%v %s %d %q %x %X %f %t %%`,
/// with the flags `-`, `0`, `+` and a width (and a precision for `%f`, `%s`).
fn f_printf(args: &[Value]) -> Result<Value, gtmpl::FuncError> {
    let fmt = text(arg(args, 0)?);
    let mut vals = args[1..].iter();
    let mut out = String::new();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let (mut left, mut zero, mut plus) = (false, false, false);
        while let Some(&f) = chars.peek() {
            match f {
                '-' => left = true,
                '0' => zero = true,
                '+' => plus = true,
                _ => break,
            }
            chars.next();
        }
        let mut width = String::new();
        while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            width.push(d);
            chars.next();
        }
        let mut prec: Option<usize> = None;
        if chars.peek() == Some(&'.') {
            chars.next();
            let mut p = String::new();
            while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                p.push(d);
                chars.next();
            }
            prec = Some(p.parse().unwrap_or(0));
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(v) = vals.next() else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        let num = |v: &Value| text(v).parse::<f64>().ok();
        let body = match verb {
            'd' => match num(v) {
                Some(n) => format!("{}{}", if plus && n >= 0.0 { "+" } else { "" }, n as i64),
                None => format!("%!d({})", go_print(v)),
            },
            'f' => match num(v) {
                Some(n) => format!("{}{:.*}", if plus && n >= 0.0 { "+" } else { "" }, prec.unwrap_or(6), n),
                None => format!("%!f({})", go_print(v)),
            },
            'x' | 'X' => match num(v) {
                Some(n) if verb == 'x' => format!("{:x}", n as i64),
                Some(n) => format!("{:X}", n as i64),
                None => {
                    text(v).bytes().map(|b| if verb == 'x' { format!("{b:02x}") } else { format!("{b:02X}") }).collect()
                }
            },
            'q' => format!("{:?}", text(v)),
            't' => text(v),
            _ => {
                let s = go_print(v);
                match prec {
                    Some(p) => s.chars().take(p).collect(),
                    None => s,
                }
            }
        };
        let w: usize = width.parse().unwrap_or(0);
        let pad = w.saturating_sub(body.chars().count());
        if left {
            out.push_str(&body);
            out.push_str(&" ".repeat(pad));
        } else if zero && matches!(verb, 'd' | 'f' | 'x' | 'X') {
            // zeros after the sign
            let (sign, digits) = match body.strip_prefix(['-', '+']) {
                Some(d) => (&body[..1], d),
                None => ("", body.as_str()),
            };
            out.push_str(sign);
            out.push_str(&"0".repeat(pad));
            out.push_str(digits);
        } else {
            out.push_str(&" ".repeat(pad));
            out.push_str(&body);
        }
    }
    Ok(Value::from(out))
}

fn f_goprint(args: &[Value]) -> Result<Value, gtmpl::FuncError> {
    Ok(Value::from(go_print(arg(args, 0)?)))
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
/// Go's `len`: of a string, a list, a map or a struct's fields.
fn f_len(args: &[Value]) -> Result<Value, gtmpl::FuncError> {
    Ok(Value::from(match arg(args, 0)? {
        Value::Array(a) => a.len(),
        Value::Map(m) | Value::Object(m) => m.len(),
        Value::String(s) => s.len(),
        Value::Nil | Value::NoValue => 0,
        other => return Err(gtmpl::FuncError::Generic(format!("len of {}", text(other)))),
    } as u64))
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
/// `label ROW "KEY"`: what Docker's `{{.Label "KEY"}}` method gives (a list
/// row's `Labels` is `k=v,...`; an object's is a map).
fn f_label(args: &[Value]) -> Result<Value, gtmpl::FuncError> {
    let key = text(arg(args, 1)?);
    let labels = match arg(args, 0)? {
        Value::Object(o) | Value::Map(o) => o.get("Labels").cloned().unwrap_or(Value::Nil),
        _ => Value::Nil,
    };
    Ok(Value::from(match labels {
        Value::String(s) => s
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
            .unwrap_or_default(),
        Value::Object(m) | Value::Map(m) => m.get(&key).map(text).unwrap_or_default(),
        _ => String::new(),
    }))
}

/// Docker's `.Label "KEY"` method call (which gtmpl's fields cannot take
/// arguments for) as a call of [`f_label`] on the same dot.
fn with_label_calls(body: &str) -> String {
    let mut out = String::with_capacity(body.len());
    let mut rest = body;
    while let Some(i) = rest.find(".Label") {
        let after = &rest[i + ".Label".len()..];
        let before_ok = i == 0 || rest[..i].ends_with(|c: char| c.is_whitespace() || c == '{' || c == '(');
        let arg_follows = after.starts_with(char::is_whitespace) && after.trim_start().starts_with('"');
        out.push_str(&rest[..i]);
        if before_ok && arg_follows {
            out.push_str("label .");
        } else {
            out.push_str(".Label");
        }
        rest = after;
    }
    out.push_str(rest);
    out
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
            ("len", f_len),
            ("lower", f_lower),
            ("upper", f_upper),
            ("title", f_title),
            ("split", f_split),
            ("truncate", f_truncate),
            ("println", f_println),
            ("goprint", f_goprint),
            ("printf", f_printf),
            ("label", f_label),
        ];
        tmpl.add_funcs(funcs);
        tmpl.parse(with_go_printing(&with_label_calls(&body))).map_err(|e| anyhow!("template parsing error: {e}"))?;
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

    /// Lists, maps and printf as Go's templates print them (each value
    /// checked against the docker CLI's output for the same template).
    #[test]
    fn go_printing_and_printf() -> Result<()> {
        let v = serde_json::json!({
            "Env": ["A=1", "B=2"], "Labels": {"b": "2", "a": "1"}, "N": 3, "Name": "/c1", "Empty": [],
            "Policy": {"MaximumRetryCount": 3, "Name": "on-failure"}
        });
        let t = Tmpl::parse(
            "{{.Env}}|{{.Labels}}|{{.Empty}}|{{range .Env}}<{{.}}>{{end}}|{{len .Labels}}|{{- .Name -}}|{{$x := .N}}{{$x}}",
        )?;
        assert_eq!(t.render(&v)?, "[A=1 B=2]|map[a:1 b:2]|[]|<A=1><B=2>|2|/c1|3");
        let t = Tmpl::parse(
            r#"{{printf "%05d|%-6s|%6s|%q|%.2f|%x|%v|%+d|%d%%" .N .Name "ab" .Name 3.14159 255 .Env 4 -7}}"#,
        )?;
        assert_eq!(t.render(&v)?, "00003|/c1   |    ab|\"/c1\"|3.14|ff|[A=1 B=2]|+4|-7%");
        Ok(())
    }

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
