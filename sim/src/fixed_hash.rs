//! A fixed, seedless hasher for hash maps that are only looked up, never
//! iterated where the order could reach the run: FNV-1a over the key's
//! bytes. std's default `RandomState` reads OS randomness (banned here), and a
//! `BTreeMap` keyed by long strings that share a prefix (message ids) pays a
//! string comparison per level on every lookup.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// FNV-1a, 64 bits.
#[derive(Clone, Copy, Debug)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// A hash map with the fixed hasher. Never iterate it where the order matters.
pub type FixedHashMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_bytes_hash_alike_and_others_apart() {
        let hash = |s: &str| {
            let mut h = Fnv::default();
            h.write(s.as_bytes());
            h.finish()
        };
        assert_eq!(hash("ACME-md1"), hash("ACME-md1"));
        assert_ne!(hash("ACME-md1"), hash("ACME-md2"));
        // The published FNV-1a 64 value of "a".
        assert_eq!(hash("a"), 0xaf63_dc4c_8601_ec8c);
        let mut m: FixedHashMap<String, u64> = FixedHashMap::default();
        m.insert("x".into(), 1);
        assert_eq!(m.get("x"), Some(&1));
        assert_eq!(m.get("y"), None);
    }
}
