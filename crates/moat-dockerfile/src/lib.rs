//! Dockerfiles as Docker reads them: parser directives (`# syntax`,
//! `# escape`), comments, line continuations, here-documents (`RUN <<EOF`,
//! `COPY <<EOF`), flags, exec (JSON) and shell forms; and Docker's word
//! expansion ([`lex`]). No I/O and no engine: `moat_engine::build` runs
//! what this reads.
//!
//! Written here rather than taken from a crate: `parse-dockerfile` 0.1.9
//! rejects a here-document after a command word (`RUN cat <<EOT > /x`,
//! which Docker accepts), drops where the `<<EOT` stood and keeps the
//! escaped newlines of a continued shell command; `dockerfile-parser` 0.9
//! has no here-documents at all (docs/build.md).

pub mod lex;

/// Instructions Docker knows.
pub const KEYWORDS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// Instructions whose leading `--name[=value]` words are flags.
const WITH_FLAGS: &[&str] = &["ADD", "COPY", "FROM", "HEALTHCHECK", "RUN"];

/// Instructions that take here-documents.
const WITH_HEREDOCS: &[&str] = &["ADD", "COPY", "RUN"];

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// The escape character (`\` unless `# escape=` says otherwise).
    pub escape: char,
    /// The `# syntax=` directive, if any (recorded, not acted on).
    pub syntax: Option<String>,
    /// Instructions in order.
    pub instructions: Vec<Instruction>,
}

/// One `--name[=value]` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    /// Name without the dashes.
    pub name: String,
    /// Value after `=` (`None`: a bare `--name`).
    pub value: Option<String>,
}

/// A here-document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// Its delimiter word.
    pub name: String,
    /// Its content, each line ending with a newline.
    pub body: String,
    /// Variables are expanded in it (the delimiter was not quoted).
    pub expand: bool,
    /// `<<-`: leading tabs are stripped.
    pub strip_tabs: bool,
}

/// One instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// Line it starts on (1-based).
    pub line: usize,
    /// Upper-case keyword.
    pub keyword: String,
    /// Leading flags.
    pub flags: Vec<Flag>,
    /// The arguments after the keyword and flags, continuations joined.
    pub rest: String,
    /// The instruction as written, continuations joined (Docker's
    /// `Step n/m : ...` line).
    pub original: String,
    /// Here-documents, in the order their `<<` appear.
    pub heredocs: Vec<Heredoc>,
}

/// A Dockerfile Docker would not read either.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// At a line.
    #[error("dockerfile parse error on line {line}: {message}")]
    At {
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// No instruction at all.
    #[error("the Dockerfile (or its stdin) is empty: it needs at least a FROM instruction")]
    Empty,
}

impl Instruction {
    /// The exec (JSON array) form's words, when `rest` is one.
    pub fn json(&self) -> Option<Vec<String>> {
        let t = self.rest.trim();
        if !t.starts_with('[') {
            return None;
        }
        serde_json::from_str::<Vec<String>>(t).ok()
    }

    /// The value of flag `name` (`Some("")` for a bare flag).
    pub fn flag(&self, name: &str) -> Option<String> {
        self.flags.iter().rev().find(|f| f.name == name).map(|f| f.value.clone().unwrap_or_default())
    }

    /// Refuses flags other than `known`, as Docker does.
    pub fn check_flags(&self, known: &[&str]) -> Result<(), String> {
        match self.flags.iter().find(|f| !known.contains(&f.name.as_str())) {
            Some(f) => Err(format!("unknown flag: --{} (the classic builder's {} takes {})", f.name, self.keyword, {
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.iter().map(|k| format!("--{k}")).collect::<Vec<_>>().join(", ")
                }
            })),
            None => Ok(()),
        }
    }
}

fn at(line: usize, message: impl Into<String>) -> ParseError {
    ParseError::At { line, message: message.into() }
}

/// `# name=value` at the top of the file.
fn directive(line: &str) -> Option<(String, String)> {
    let t = line.trim_start().strip_prefix('#')?;
    let (k, v) = t.split_once('=')?;
    let k = k.trim();
    if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    Some((k.to_ascii_lowercase(), v.trim().to_string()))
}

/// Parses a whole Dockerfile.
pub fn parse(text: &str) -> Result<Dockerfile, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).collect();
    let mut escape = '\\';
    let mut syntax = None;
    let mut i = 0;
    // directives: only before any comment, blank line or instruction
    let mut seen = std::collections::HashSet::new();
    while i < lines.len() {
        let Some((k, v)) = directive(lines[i]) else { break };
        if !seen.insert(k.clone()) {
            return Err(at(i + 1, format!("only one {k} parser directive can be used")));
        }
        match k.as_str() {
            "escape" => {
                escape = match v.as_str() {
                    "\\" => '\\',
                    "`" => '`',
                    _ => return Err(at(i + 1, format!("invalid escape token '{v}' does not match ` or \\"))),
                }
            }
            "syntax" => syntax = Some(v),
            _ => {}
        }
        i += 1;
    }
    let mut instructions = Vec::new();
    while i < lines.len() {
        let t = lines[i].trim();
        if t.is_empty() || t.starts_with('#') {
            i += 1;
            continue;
        }
        let start = i + 1;
        let mut logical = String::new();
        loop {
            let l = lines[i];
            i += 1;
            let trimmed = l.trim_end();
            match trimmed.strip_suffix(escape) {
                Some(head) => {
                    logical.push_str(head);
                    // comment and blank lines inside a continuation are dropped
                    while i < lines.len() && (lines[i].trim().is_empty() || lines[i].trim_start().starts_with('#')) {
                        i += 1;
                    }
                    if i >= lines.len() {
                        break;
                    }
                }
                None => {
                    logical.push_str(l);
                    break;
                }
            }
        }
        let mut ins = parse_line(logical.trim(), escape, start)?;
        if WITH_HEREDOCS.contains(&ins.keyword.as_str()) {
            for (name, expand, strip_tabs) in heredoc_markers(&ins.rest) {
                let mut body = String::new();
                loop {
                    let Some(l) = lines.get(i) else {
                        return Err(at(start, format!("unterminated here-document {name}: no line {name} ends it")));
                    };
                    i += 1;
                    let l = if strip_tabs { l.trim_start_matches('\t') } else { l };
                    if l == name {
                        break;
                    }
                    body.push_str(l);
                    body.push('\n');
                }
                ins.heredocs.push(Heredoc { name, body, expand, strip_tabs });
            }
        }
        instructions.push(ins);
    }
    if instructions.is_empty() {
        return Err(ParseError::Empty);
    }
    Ok(Dockerfile { escape, syntax, instructions })
}

/// Parses one logical line (`KEYWORD [flags] rest`): an instruction, or
/// an `ONBUILD` trigger when it runs.
pub fn parse_line(logical: &str, escape: char, line: usize) -> Result<Instruction, ParseError> {
    let (kw, rest) = match logical.find(char::is_whitespace) {
        Some(p) => (&logical[..p], logical[p..].trim_start()),
        None => (logical, ""),
    };
    let keyword = kw.to_ascii_uppercase();
    if !KEYWORDS.contains(&keyword.as_str()) {
        return Err(at(line, format!("unknown instruction: {kw}")));
    }
    let mut flags = Vec::new();
    let mut rest = rest;
    if WITH_FLAGS.contains(&keyword.as_str()) {
        while let Some(f) = rest.strip_prefix("--") {
            let end = f.find(char::is_whitespace).unwrap_or(f.len());
            let word = &f[..end];
            if word.is_empty() {
                break;
            }
            let (name, value) = match word.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (word.to_string(), None),
            };
            flags.push(Flag { name, value });
            rest = f[end..].trim_start();
        }
    }
    if rest.is_empty() && !matches!(keyword.as_str(), "CMD" | "ENTRYPOINT" | "RUN" | "SHELL") {
        return Err(at(line, format!("{keyword} requires at least one argument")));
    }
    let _ = escape;
    Ok(Instruction {
        line,
        keyword,
        flags,
        rest: rest.to_string(),
        original: logical.to_string(),
        heredocs: Vec::new(),
    })
}

/// `<<WORD`, `<<-WORD`, `<<"WORD"`, `<<'WORD'` outside quotes, in order:
/// (delimiter, expand, strip tabs).
pub fn heredoc_markers(s: &str) -> Vec<(String, bool, bool)> {
    let c: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut quote: Option<char> = None;
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        match quote {
            Some(q) if ch == q => quote = None,
            Some(_) => {}
            None if ch == '\'' || ch == '"' => quote = Some(ch),
            None if ch == '<' && c.get(i + 1) == Some(&'<') && c.get(i + 2) != Some(&'<') => {
                let mut j = i + 2;
                let strip = c.get(j) == Some(&'-');
                if strip {
                    j += 1;
                }
                let q = c.get(j).copied().filter(|q| *q == '"' || *q == '\'');
                if q.is_some() {
                    j += 1;
                }
                let n0 = j;
                while j < c.len() && (c[j].is_ascii_alphanumeric() || c[j] == '_') {
                    j += 1;
                }
                let name: String = c[n0..j].iter().collect();
                let closed = match q {
                    Some(q) => c.get(j) == Some(&q),
                    None => true,
                };
                if !name.is_empty() && closed && !name.starts_with(|x: char| x.is_ascii_digit()) {
                    out.push((name, q.is_none(), strip));
                    i = if q.is_some() { j + 1 } else { j };
                    continue;
                }
            }
            None => {}
        }
        i += 1;
    }
    out
}

/// `KEY=VALUE ...` (or the legacy `KEY VALUE`) of `ENV` and `LABEL`, and
/// `NAME[=DEFAULT] ...` of `ARG` (`allow_bare`): words split at unquoted
/// white space with their quotes kept, for expansion afterwards.
pub fn name_values(
    rest: &str,
    keyword: &str,
    allow_bare: bool,
    escape: char,
) -> Result<Vec<(String, Option<String>)>, String> {
    let words = raw_words(rest, escape);
    let Some(first) = words.first() else {
        return Err(format!("{keyword} requires at least one argument"));
    };
    if !first.contains('=') && !allow_bare {
        // legacy `ENV KEY the rest of the line`
        let value = rest.trim_start()[first.len()..].trim().to_string();
        if value.is_empty() {
            return Err(format!("{keyword} names {first} without a value: use {keyword} {first}=VALUE"));
        }
        return Ok(vec![(first.clone(), Some(value))]);
    }
    words
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), Some(v.to_string()))),
            None if allow_bare => Ok((w, None)),
            _ => Err(format!("syntax error - can't find = in {w:?}: must be of the form name=value")),
        })
        .collect()
}

/// Splits at unquoted white space, keeping quotes and escapes.
fn raw_words(s: &str, escape: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match quote {
            _ if c == escape && quote != Some('\'') => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            Some(q) if c == q => {
                quote = None;
                cur.push(c);
            }
            Some(_) => cur.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                cur.push(c);
            }
            None if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            None => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_continuations_comments_heredocs() {
        let t = "# syntax=docker/dockerfile:1\n# escape=`\n\nFROM busybox AS b\nRUN echo a `\n  # dropped\n\n  b\nrun cat <<EOT > /x && cat <<-'E2'\nline $A\nEOT\n\tquoted\n\tE2\nCOPY --chown=1:2 --chmod=600 a b /d/\n";
        let d = parse(t).expect("parses");
        assert_eq!(d.escape, '`');
        assert_eq!(d.syntax.as_deref(), Some("docker/dockerfile:1"));
        let k: Vec<(usize, &str, &str)> =
            d.instructions.iter().map(|i| (i.line, i.keyword.as_str(), i.rest.as_str())).collect();
        assert_eq!(
            k,
            vec![
                (4, "FROM", "busybox AS b"),
                (5, "RUN", "echo a   b"),
                (9, "RUN", "cat <<EOT > /x && cat <<-'E2'"),
                (14, "COPY", "a b /d/"),
            ]
        );
        assert_eq!(
            d.instructions[2].heredocs,
            vec![
                Heredoc { name: "EOT".into(), body: "line $A\n".into(), expand: true, strip_tabs: false },
                Heredoc { name: "E2".into(), body: "quoted\n".into(), expand: false, strip_tabs: true },
            ]
        );
        assert_eq!(d.instructions[3].flag("chown").as_deref(), Some("1:2"));
        assert!(d.instructions[3].check_flags(&["chown"]).is_err());
    }

    #[test]
    fn refusals_name_the_line() {
        assert_eq!(parse("FROM a\nFOO bar\n"), Err(at(2, "unknown instruction: FOO")));
        assert_eq!(parse("# just a comment\n\n"), Err(ParseError::Empty));
        assert!(matches!(parse("FROM a\nRUN <<EOF\nno end\n"), Err(ParseError::At { line: 2, .. })));
        assert!(matches!(parse("# escape=x\nFROM a\n"), Err(ParseError::At { line: 1, .. })));
        assert!(matches!(parse("FROM a\nENV\n"), Err(ParseError::At { line: 2, .. })));
    }

    #[test]
    fn json_and_name_values() {
        let i = parse_line("CMD [\"a\", \"b c\"]", '\\', 1).expect("line");
        assert_eq!(i.json(), Some(vec!["a".to_string(), "b c".to_string()]));
        assert_eq!(parse_line("CMD [not json", '\\', 1).expect("line").json(), None);
        let kv = |s: &str| name_values(s, "ENV", false, '\\');
        assert_eq!(
            kv("A=1 B=\"two words\" C=x\\ y"),
            Ok(vec![
                ("A".into(), Some("1".into())),
                ("B".into(), Some("\"two words\"".into())),
                ("C".into(), Some("x\\ y".into()))
            ])
        );
        assert_eq!(kv("KEY the rest  here"), Ok(vec![("KEY".into(), Some("the rest  here".into()))]));
        assert!(kv("A=1 B").is_err());
        assert_eq!(
            name_values("X Y=2", "ARG", true, '\\'),
            Ok(vec![("X".into(), None), ("Y".into(), Some("2".into()))])
        );
    }

    #[test]
    fn parsing_never_panics() {
        bolero::check!().for_each(|b: &[u8]| {
            let _ = parse(&String::from_utf8_lossy(b));
        });
    }
}
