//! Exact duplicates: sha256 of the normalised prompt (the prompt's identity) and of the
//! normalised prompt plus response (an example whose prompt and response both repeat an
//! earlier one is dropped). Hashes are kept as their first 16 bytes.

use sha2::{Digest, Sha256};

/// 16 bytes of a sha256: collisions are out of reach at any corpus size.
pub type Key = [u8; 16];

fn key_of(h: Sha256) -> Key {
    let full = h.finalize();
    let mut k = [0u8; 16];
    k.copy_from_slice(&full[..16]);
    k
}

/// The key of a normalised prompt.
pub fn prompt_key(norm_prompt: &str) -> Key {
    let mut h = Sha256::new();
    h.update(norm_prompt.as_bytes());
    key_of(h)
}

/// The key of a normalised prompt and its normalised response.
pub fn pair_key(norm_prompt: &str, norm_response: &str) -> Key {
    let mut h = Sha256::new();
    h.update(norm_prompt.as_bytes());
    h.update([0u8]);
    h.update(norm_response.as_bytes());
    key_of(h)
}

/// A uniform number in [0, 1) from a key: which split a cluster goes to.
pub fn unit_interval(k: &Key) -> f64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&k[..8]);
    (u64::from_be_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::super::norm::normalized;
    use super::*;

    #[test]
    fn keys_follow_normalisation_and_keep_numbers() {
        let k = |s: &str| prompt_key(&normalized(s));
        assert_eq!(k("What is  457+187?"), k("what is 457+187?\n"));
        assert_ne!(k("What is 457+187?"), k("What is 12+19?"));
        assert_ne!(k("What is 457+187?"), k("What is 457+187"), "punctuation is kept");
        assert_ne!(pair_key("a", "bc"), pair_key("ab", "c"));
        let u = unit_interval(&k("x"));
        assert!((0.0..1.0).contains(&u));
    }
}
