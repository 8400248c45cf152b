//! Docker's word expansion (its `shell.Lex`): quotes, the escape
//! character, and `$VAR`, `${VAR}`, `${VAR:-word}`, `${VAR-word}`,
//! `${VAR:+word}`, `${VAR+word}`, `${VAR:?message}`, `${VAR?message}`.
//! No command substitution, globbing or arithmetic: those are the shell's
//! business inside `RUN`, not the builder's.

/// A failed expansion (an unterminated quote or brace, an unknown
/// modifier, a `${VAR:?message}` whose variable is unset).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LexError(pub String);

/// Looks a variable up (`None`: unset).
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

struct Lex<'a> {
    chars: Vec<char>,
    pos: usize,
    escape: char,
    env: Lookup<'a>,
}

/// Expands `word` into one string (quotes removed, nothing split).
pub fn process_word(word: &str, env: Lookup, escape: char) -> Result<String, LexError> {
    let mut l = Lex { chars: word.chars().collect(), pos: 0, escape, env };
    Ok(l.words(false, None)?.into_iter().next().unwrap_or_default())
}

/// Expands `s` into words, split at unquoted white space (an unquoted
/// variable's value is split too, as Docker's `ProcessWords`).
pub fn process_words(s: &str, env: Lookup, escape: char) -> Result<Vec<String>, LexError> {
    let mut l = Lex { chars: s.chars().collect(), pos: 0, escape, env };
    l.words(true, None)
}

fn is_name(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

impl Lex<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    /// Reads words until the end or an unescaped, unquoted `stop`.
    fn words(&mut self, split: bool, stop: Option<char>) -> Result<Vec<String>, LexError> {
        let mut words = Vec::new();
        let mut cur = String::new();
        let mut in_word = false;
        while let Some(c) = self.peek() {
            if Some(c) == stop {
                break;
            }
            if split && c.is_whitespace() {
                self.pos += 1;
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
                continue;
            }
            self.pos += 1;
            match c {
                '\'' => {
                    cur.push_str(&self.single()?);
                    in_word = true;
                }
                '"' => {
                    cur.push_str(&self.double()?);
                    in_word = true;
                }
                '$' => {
                    let v = self.dollar()?;
                    if split {
                        for ch in v.chars() {
                            if ch.is_whitespace() {
                                if in_word {
                                    words.push(std::mem::take(&mut cur));
                                    in_word = false;
                                }
                            } else {
                                cur.push(ch);
                                in_word = true;
                            }
                        }
                    } else {
                        cur.push_str(&v);
                        in_word = true;
                    }
                }
                c if c == self.escape => {
                    if let Some(n) = self.next() {
                        cur.push(n);
                    }
                    in_word = true;
                }
                c => {
                    cur.push(c);
                    in_word = true;
                }
            }
        }
        if in_word || (!split && words.is_empty()) {
            words.push(cur);
        }
        Ok(words)
    }

    fn single(&mut self) -> Result<String, LexError> {
        let mut s = String::new();
        loop {
            match self.next() {
                Some('\'') => return Ok(s),
                Some(c) => s.push(c),
                None => {
                    return Err(LexError("unexpected end of statement while looking for matching single-quote".into()))
                }
            }
        }
    }

    fn double(&mut self) -> Result<String, LexError> {
        let mut s = String::new();
        loop {
            match self.next() {
                Some('"') => return Ok(s),
                Some('$') => s.push_str(&self.dollar()?),
                Some(c) if c == self.escape => match self.peek() {
                    Some(n) if n == '"' || n == '$' || n == self.escape => {
                        self.pos += 1;
                        s.push(n);
                    }
                    _ => s.push(c),
                },
                Some(c) => s.push(c),
                None => {
                    return Err(LexError("unexpected end of statement while looking for matching double-quote".into()))
                }
            }
        }
    }

    fn name(&mut self) -> String {
        let mut n = String::new();
        while let Some(c) = self.peek().filter(|c| is_name(*c)) {
            n.push(c);
            self.pos += 1;
        }
        n
    }

    /// After a `$`.
    fn dollar(&mut self) -> Result<String, LexError> {
        match self.peek() {
            Some('{') => {
                self.pos += 1;
                self.braced()
            }
            Some(c) if is_name(c) => {
                let n = self.name();
                Ok((self.env)(&n).unwrap_or_default())
            }
            _ => Ok("$".into()),
        }
    }

    fn braced(&mut self) -> Result<String, LexError> {
        let name = self.name();
        if name.is_empty() {
            return Err(LexError("bad substitution: a variable name must follow ${".into()));
        }
        let value = (self.env)(&name);
        let colon = self.peek() == Some(':');
        if colon {
            self.pos += 1;
        }
        let op = self.next();
        match op {
            Some('}') if !colon => return Ok(value.unwrap_or_default()),
            Some('-' | '+' | '?') => {}
            Some(c) => return Err(LexError(format!("unsupported modifier ({c}) in substitution of {name}"))),
            None => return Err(LexError(format!("missing '}}' in substitution of {name}"))),
        }
        let word = self.words(false, Some('}'))?.into_iter().next().unwrap_or_default();
        if self.next() != Some('}') {
            return Err(LexError(format!("missing '}}' in substitution of {name}")));
        }
        // `:` treats an empty value as unset
        let set = value.as_ref().is_some_and(|v| !colon || !v.is_empty());
        Ok(match op {
            Some('-') if set => value.unwrap_or_default(),
            Some('-') => word,
            Some('+') if set => word,
            Some('+') => String::new(),
            _ if set => value.unwrap_or_default(),
            _ if word.is_empty() => return Err(LexError(format!("{name}: is not allowed to be unset"))),
            _ => return Err(LexError(format!("{name}: {word}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(n: &str) -> Option<String> {
        match n {
            "A" => Some("one".into()),
            "SP" => Some("x  y".into()),
            "E" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn words_as_docker_expands_them() {
        let w = |s: &str| process_word(s, &env, '\\');
        assert_eq!(w("$A"), Ok("one".into()));
        assert_eq!(w("${A}b"), Ok("oneb".into()));
        assert_eq!(w("'$A'"), Ok("$A".into()));
        assert_eq!(w("\"$A x\""), Ok("one x".into()));
        assert_eq!(w("\\$A"), Ok("$A".into()));
        assert_eq!(w("${U:-def}"), Ok("def".into()));
        assert_eq!(w("${E:-def}"), Ok("def".into()));
        assert_eq!(w("${E-def}"), Ok("".into()));
        assert_eq!(w("${A:+alt}"), Ok("alt".into()));
        assert_eq!(w("${U:+alt}"), Ok("".into()));
        assert_eq!(w("${U:-${A}}"), Ok("one".into()));
        assert_eq!(w("a$"), Ok("a$".into()));
        assert_eq!(w("${U:?must be set}"), Err(LexError("U: must be set".into())));
        assert!(w("${A").is_err());
        assert!(w("'open").is_err());
        let ws = |s: &str| process_words(s, &env, '\\');
        assert_eq!(ws(" a  b "), Ok(vec!["a".into(), "b".into()]));
        assert_eq!(ws("$SP \"$SP\""), Ok(vec!["x".into(), "y".into(), "x  y".into()]));
        assert_eq!(ws("'' z"), Ok(vec!["".into(), "z".into()]));
        assert_eq!(process_word("a`$A", &env, '`'), Ok("a$A".into()));
    }

    #[test]
    fn expansion_never_panics() {
        bolero::check!().for_each(|b: &[u8]| {
            let s = String::from_utf8_lossy(b);
            let _ = process_word(&s, &env, '\\');
            let _ = process_words(&s, &env, '`');
        });
    }
}
