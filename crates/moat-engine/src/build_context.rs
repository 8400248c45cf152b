//! What a build reads files from: its context (a directory, or a tar
//! stream unpacked into a scratch directory) with `.dockerignore`, and the
//! root filesystems of images and earlier stages (`COPY --from`) — all as
//! a [`Tree`]: directories stacked top first, read without following any
//! link (a link is copied as a link) and without leaving the tree.

use crate::EngineError;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

/// `.dockerignore`: Docker's rules (each pattern a `filepath.Match` glob
/// with `**`; a pattern matching a directory excludes what is below it;
/// `!` re-includes; the last matching pattern wins).
#[derive(Debug, Default)]
pub struct Ignore {
    patterns: Vec<(globset::GlobMatcher, bool)>,
}

impl Ignore {
    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<Self, EngineError> {
        let mut patterns = Vec::new();
        for line in text.lines() {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            let (neg, p) = match t.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, t),
            };
            let p = clean(p);
            if p.is_empty() {
                continue;
            }
            let g = globset::GlobBuilder::new(&p)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| EngineError::Invalid(format!(".dockerignore: bad pattern {t:?}: {e}")))?;
            patterns.push((g.compile_matcher(), neg));
        }
        Ok(Self { patterns })
    }

    /// Whether `rel` (a clean relative path) is excluded.
    pub fn excluded(&self, rel: &str) -> bool {
        let mut out = false;
        for (g, neg) in &self.patterns {
            let mut hit = g.is_match(rel);
            if !hit {
                // a pattern that names a parent directory excludes its content
                let mut p = Path::new(rel);
                while let Some(parent) = p.parent().filter(|p| !p.as_os_str().is_empty()) {
                    if g.is_match(parent) {
                        hit = true;
                        break;
                    }
                    p = parent;
                }
            }
            if hit {
                out = !neg;
            }
        }
        out
    }
}

/// A path cleaned as Go's `filepath.Clean`, relative (no leading `/`);
/// `..` never climbs above the top.
pub fn clean(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str().unwrap_or_default()),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    parts.join("/")
}

/// Whether `s` has glob characters (`COPY *.txt`).
pub fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// One file of a tree.
#[derive(Debug, Clone)]
pub struct Found {
    /// Path relative to the tree's top.
    pub rel: String,
    /// Where it is on the host.
    pub host: PathBuf,
    /// Its `lstat`.
    pub meta: std::fs::Metadata,
}

/// Directories stacked top first (an image's layers, with overlayfs
/// whiteouts; or one context directory, with its `.dockerignore`).
#[derive(Debug, Default)]
pub struct Tree {
    layers: Vec<PathBuf>,
    ignore: Ignore,
}

/// An overlayfs whiteout (a 0:0 character device).
pub(crate) fn is_whiteout(m: &std::fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

/// An overlayfs opaque directory (hides the layers below it).
pub(crate) fn is_opaque(p: &Path) -> bool {
    matches!(rustix::fs::lgetxattr(p, "trusted.overlay.opaque", &mut [0u8; 4]), Ok(1))
}

impl Tree {
    /// An image's root filesystem from its unpacked layers, top first.
    pub fn layers(layers: Vec<PathBuf>) -> Self {
        Self { layers, ignore: Ignore::default() }
    }

    /// A build context directory with its ignore rules.
    pub fn context(dir: PathBuf, ignore: Ignore) -> Self {
        Self { layers: vec![dir], ignore }
    }

    /// `rel` (clean, relative; empty: the top), if present: the topmost
    /// layer's entry. A link on the way is not followed: `rel` is then
    /// absent, as the path names nothing inside this tree.
    pub fn stat(&self, rel: &str) -> Option<Found> {
        if !rel.is_empty() && self.ignore.excluded(rel) {
            return None;
        }
        'layers: for l in &self.layers {
            let mut cur = l.clone();
            let comps: Vec<&str> = if rel.is_empty() { Vec::new() } else { rel.split('/').collect() };
            for (i, c) in comps.iter().enumerate() {
                cur.push(c);
                match std::fs::symlink_metadata(&cur) {
                    Ok(m) if is_whiteout(&m) => return None,
                    Ok(m) if i + 1 == comps.len() => return Some(Found { rel: rel.into(), host: cur, meta: m }),
                    Ok(m) if m.is_dir() => {
                        if is_opaque(&cur) {
                            // below here only this layer counts
                            let p = l.join(rel);
                            return std::fs::symlink_metadata(&p).ok().filter(|m| !is_whiteout(m)).map(|meta| Found {
                                rel: rel.into(),
                                host: p,
                                meta,
                            });
                        }
                    }
                    // a file or link where a directory should be hides what is below
                    Ok(_) => return None,
                    Err(_) => continue 'layers,
                }
            }
            if comps.is_empty() {
                return std::fs::symlink_metadata(l).ok().map(|meta| Found {
                    rel: String::new(),
                    host: l.clone(),
                    meta,
                });
            }
        }
        None
    }

    /// The names in directory `rel`, merged over the layers, sorted.
    pub fn children(&self, rel: &str) -> Vec<String> {
        let mut names = std::collections::BTreeSet::new();
        let mut hidden = std::collections::HashSet::new();
        for l in &self.layers {
            let d = if rel.is_empty() { l.clone() } else { l.join(rel) };
            let Ok(rd) = std::fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if hidden.contains(&n) {
                    continue;
                }
                match e.metadata() {
                    Ok(m) if is_whiteout(&m) => {
                        hidden.insert(n);
                    }
                    Ok(_) => {
                        names.insert(n.clone());
                        hidden.insert(n);
                    }
                    Err(_) => {}
                }
            }
            if is_opaque(&d) {
                break;
            }
        }
        let join = |n: &String| if rel.is_empty() { n.clone() } else { format!("{rel}/{n}") };
        names.into_iter().filter(|n| !self.ignore.excluded(&join(n))).collect()
    }

    /// `rel` and, for a directory, everything below it, parents first.
    pub fn walk(&self, rel: &str) -> Vec<Found> {
        let mut out = Vec::new();
        let Some(top) = self.stat(rel) else { return out };
        let dir = top.meta.is_dir();
        out.push(top);
        if dir {
            for n in self.children(rel) {
                let r = if rel.is_empty() { n } else { format!("{rel}/{n}") };
                out.extend(self.walk(&r));
            }
        }
        out
    }

    /// Paths matching glob `pattern` (relative), in name order.
    pub fn glob(&self, pattern: &str) -> Result<Vec<String>, EngineError> {
        let g = globset::GlobBuilder::new(pattern)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| EngineError::Invalid(format!("bad pattern {pattern:?}: {e}")))?
            .compile_matcher();
        let mut out = Vec::new();
        // only as deep as the pattern goes (a `**` goes all the way)
        let depth = if pattern.contains("**") { usize::MAX } else { pattern.split('/').count() };
        fn visit(t: &Tree, rel: &str, left: usize, g: &globset::GlobMatcher, out: &mut Vec<String>) {
            if left == 0 {
                return;
            }
            for n in t.children(rel) {
                let r = if rel.is_empty() { n } else { format!("{rel}/{n}") };
                if g.is_match(&r) {
                    out.push(r.clone());
                }
                if t.stat(&r).is_some_and(|f| f.meta.is_dir()) {
                    visit(t, &r, left - 1, g, out);
                }
            }
        }
        visit(self, "", depth, &g, &mut out);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerignore_rules() -> Result<(), EngineError> {
        let i = Ignore::parse("# c\n*.log\n!keep.log\nbuild\n**/tmp\n/abs/x\n")?;
        let ex = |p: &str| i.excluded(p);
        assert!(ex("a.log"));
        assert!(!ex("keep.log"));
        assert!(!ex("sub/a.log"), "a pattern is anchored at the top");
        assert!(ex("build"));
        assert!(ex("build/deep/file"));
        assert!(ex("x/y/tmp/z"));
        assert!(ex("abs/x"));
        assert!(!ex("src/main.rs"));
        Ok(())
    }

    #[test]
    fn clean_paths() {
        assert_eq!(clean("/a/./b/../c/"), "a/c");
        assert_eq!(clean("../../x"), "x");
        assert_eq!(clean("."), "");
    }

    #[test]
    fn layered_tree_honours_whiteouts() -> std::io::Result<()> {
        let d = tempfile::tempdir()?;
        let (top, low) = (d.path().join("top"), d.path().join("low"));
        std::fs::create_dir_all(low.join("etc"))?;
        std::fs::write(low.join("etc/a"), "a")?;
        std::fs::write(low.join("etc/gone"), "g")?;
        std::fs::create_dir_all(top.join("etc"))?;
        std::fs::write(top.join("etc/b"), "b")?;
        nix::sys::stat::mknod(&top.join("etc/gone"), nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::empty(), 0)
            .map_err(std::io::Error::from)?;
        let t = Tree::layers(vec![top, low]);
        assert_eq!(t.children("etc"), vec!["a".to_string(), "b".to_string()]);
        assert!(t.stat("etc/gone").is_none());
        assert!(t.stat("etc/a").is_some());
        let all: Vec<String> = t.walk("").into_iter().map(|f| f.rel).collect();
        assert_eq!(all, vec!["", "etc", "etc/a", "etc/b"]);
        assert_eq!(t.glob("etc/*").map_err(|e| std::io::Error::other(e.to_string()))?, vec!["etc/a", "etc/b"]);
        Ok(())
    }
}
