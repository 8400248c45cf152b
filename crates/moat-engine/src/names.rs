//! Docker-style generated names (`brave_turing`) and name validation.

use rand::seq::SliceRandom;

const LEFT: &[&str] = &[
    "admiring",
    "agitated",
    "amazing",
    "angry",
    "awesome",
    "blissful",
    "bold",
    "brave",
    "busy",
    "charming",
    "clever",
    "cool",
    "dazzling",
    "determined",
    "eager",
    "ecstatic",
    "elegant",
    "epic",
    "festive",
    "focused",
    "friendly",
    "gallant",
    "gifted",
    "goofy",
    "happy",
    "hopeful",
    "inspiring",
    "jolly",
    "keen",
    "kind",
    "laughing",
    "loving",
    "lucid",
    "magical",
    "modest",
    "nice",
    "nifty",
    "optimistic",
    "peaceful",
    "pensive",
    "practical",
    "quirky",
    "relaxed",
    "serene",
    "sharp",
    "silly",
    "stoic",
    "sweet",
    "tender",
    "trusting",
    "upbeat",
    "vibrant",
    "wizardly",
    "youthful",
    "zealous",
];
const RIGHT: &[&str] = &[
    "albattani",
    "allen",
    "babbage",
    "bardeen",
    "bell",
    "bohr",
    "brahmagupta",
    "cannon",
    "curie",
    "darwin",
    "dijkstra",
    "einstein",
    "euclid",
    "euler",
    "fermat",
    "feynman",
    "franklin",
    "galileo",
    "gauss",
    "goldberg",
    "hamilton",
    "hawking",
    "hodgkin",
    "hopper",
    "hypatia",
    "johnson",
    "kepler",
    "knuth",
    "lamarr",
    "lovelace",
    "mayer",
    "mccarthy",
    "meitner",
    "newton",
    "noether",
    "pasteur",
    "perlman",
    "pike",
    "poincare",
    "ritchie",
    "shannon",
    "sinoussi",
    "stallman",
    "swartz",
    "tesla",
    "thompson",
    "torvalds",
    "turing",
    "wilson",
    "wozniak",
    "wright",
];

/// A random `adjective_scientist` name.
pub fn generate() -> String {
    let mut r = rand::thread_rng();
    format!("{}_{}", LEFT.choose(&mut r).unwrap_or(&"moat"), RIGHT.choose(&mut r).unwrap_or(&"box"))
}

/// Docker's character rule `[a-zA-Z0-9][a-zA-Z0-9_.-]*`; unlike docker a
/// one-character name (`s`) is allowed.
pub fn valid(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b[1..].iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    #[test]
    fn names() {
        assert!(super::valid(&super::generate()));
        assert!(super::valid("web-1.a_b"));
        assert!(!super::valid("-x"));
        assert!(super::valid("a"));
        assert!(!super::valid(""));
        assert!(!super::valid("a/b"));
    }
}
