//! Random 64-hex object IDs (containers, switches) and prefix matching.

use rand::RngCore;

/// A new random 64-hex ID.
pub fn new_id() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// True when `s` could be a short or full ID: 1..=64 lowercase hex chars.
pub fn is_hex_prefix(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hex_and_distinct() {
        let a = new_id();
        assert_eq!(a.len(), 64);
        assert!(is_hex_prefix(&a));
        assert_ne!(a, new_id());
        assert!(!is_hex_prefix("xyz"));
        assert!(!is_hex_prefix(""));
    }
}
