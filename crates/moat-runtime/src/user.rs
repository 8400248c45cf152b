//! Resolving `--user` against the container's `/etc/passwd` and `/etc/group`.

use crate::RuntimeError;

/// A resolved identity.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// User ID.
    pub uid: u32,
    /// Primary group ID.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Home directory (for `HOME`).
    pub home: String,
}

fn lookup<'a>(db: &'a str, name: &str) -> Option<Vec<&'a str>> {
    db.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| f.len() >= 3 && f[0] == name)
}

/// A group given by number or by name (looked up in the group file), as
/// `--group-add` takes it.
pub fn group_id(g: &str, group: &str) -> Result<u32, RuntimeError> {
    match g.parse::<u32>() {
        Ok(n) => Ok(n),
        Err(_) => lookup(group, g).and_then(|f| f[2].parse().ok()).ok_or_else(|| {
            RuntimeError::Invalid(format!("unable to find group {g}: no matching entries in group file"))
        }),
    }
}

/// Resolves `user[:group]` (names or numbers) using the given file contents.
/// Empty means root. Unknown names are errors; unknown numbers are allowed.
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<Identity, RuntimeError> {
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let u = if u.is_empty() { "0" } else { u };
    let mut id = Identity { home: "/".into(), ..Default::default() };
    let entry = match u.parse::<u32>() {
        Ok(n) => {
            id.uid = n;
            passwd.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| f.len() >= 4 && f[2] == u)
        }
        Err(_) => {
            let f = lookup(passwd, u).ok_or_else(|| {
                RuntimeError::Invalid(format!("unable to find user {u}: no matching entries in passwd file"))
            })?;
            id.uid = f[2].parse().map_err(|_| RuntimeError::Invalid(format!("bad uid for user {u} in /etc/passwd")))?;
            Some(f)
        }
    };
    if let Some(f) = &entry {
        id.gid = f.get(3).and_then(|g| g.parse().ok()).unwrap_or(0);
        if let Some(h) = f.get(5).filter(|h| !h.is_empty()) {
            id.home = h.to_string();
        }
    } else if id.uid == 0 {
        id.home = "/root".into();
    }
    if let Some(g) = g {
        id.gid = group_id(g, group)?;
    }
    // supplementary groups that list the user by name
    if let Some(name) = entry.as_ref().map(|f| f[0]) {
        for l in group.lines() {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() >= 4 && f[3].split(',').any(|m| m == name) {
                if let Ok(n) = f[2].parse::<u32>() {
                    if n != id.gid && !id.groups.contains(&n) {
                        id.groups.push(n);
                    }
                }
            }
        }
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PW: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1000:1000::/home/app:/bin/sh\n";
    const GR: &str = "root:x:0:\nnogroup:x:65534:\napp:x:1000:\nwheel:x:10:app,x\n";

    #[test]
    fn resolves() -> Result<(), RuntimeError> {
        assert_eq!(resolve("", PW, GR)?.home, "/root");
        let a = resolve("app", PW, GR)?;
        assert_eq!((a.uid, a.gid, a.groups.clone(), a.home.as_str()), (1000, 1000, vec![10], "/home/app"));
        assert_eq!(resolve("nobody:wheel", PW, GR)?.gid, 10);
        let n = resolve("4242:4343", PW, GR)?;
        assert_eq!((n.uid, n.gid), (4242, 4343));
        assert!(resolve("ghost", PW, GR).is_err());
        assert!(resolve("app:ghosts", PW, GR).is_err());
        Ok(())
    }
}
