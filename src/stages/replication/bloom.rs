//! `KeySet`: a set of keys that answers "certainly not in it" or "maybe", in about 1.2 bytes
//! per key whatever the keys' length — a scalable Bloom filter (a chain of filters, each twice
//! the capacity of the last and with a tighter false-positive rate, so the total rate stays
//! under [`FALSE_POSITIVES`] however many keys go in).
//!
//! The key index uses it for what a target holds: "certainly not" lets a first copy skip its
//! pre-check, "maybe" only costs the HEAD the copy would have made anyway. It never says "not"
//! of a key that was inserted.

use std::hash::{BuildHasher, Hasher};

/// The false-positive rate the whole chain stays under.
const FALSE_POSITIVES: f64 = 0.01;
/// The rate the chain is sized for: the filters' rates add up to it once all are full, and
/// the margin to [`FALSE_POSITIVES`] covers chance (a chain sized for 1 % measures 0.97 %).
const DESIGN_RATE: f64 = 0.8 * FALSE_POSITIVES;
/// Keys the first filter is sized for.
const FIRST_CAPACITY: usize = 4096;

/// A scalable Bloom filter of strings.
pub struct KeySet {
    filters: Vec<Filter>,
    len: usize,
    hasher: std::collections::hash_map::RandomState,
}

struct Filter {
    bits: Vec<u64>,
    hashes: u32,
    capacity: usize,
    len: usize,
}

impl Filter {
    /// A filter for `capacity` keys at false-positive rate `rate`.
    fn new(capacity: usize, rate: f64) -> Self {
        let ln2 = std::f64::consts::LN_2;
        let bits = ((capacity as f64) * -rate.ln() / (ln2 * ln2))
            .ceil()
            .max(64.0) as usize;
        let hashes = ((bits as f64 / capacity as f64) * ln2)
            .round()
            .clamp(1.0, 30.0) as u32;
        Self {
            bits: vec![0; bits.div_ceil(64)],
            hashes,
            capacity,
            len: 0,
        }
    }

    /// The bit positions of a key with hashes `(a, b)` (Kirsch–Mitzenmacher double hashing).
    fn positions(&self, (a, b): (u64, u64)) -> impl Iterator<Item = usize> + '_ {
        let m = (self.bits.len() * 64) as u64;
        (0..u64::from(self.hashes)).map(move |i| (a.wrapping_add(i.wrapping_mul(b)) % m) as usize)
    }

    fn insert(&mut self, h: (u64, u64)) {
        let positions: Vec<usize> = self.positions(h).collect();
        for p in positions {
            self.bits[p / 64] |= 1 << (p % 64);
        }
        self.len += 1;
    }

    fn may_contain(&self, h: (u64, u64)) -> bool {
        self.positions(h)
            .all(|p| self.bits[p / 64] & (1 << (p % 64)) != 0)
    }
}

impl Default for KeySet {
    fn default() -> Self {
        Self {
            filters: Vec::new(),
            len: 0,
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }
}

impl KeySet {
    fn hash(&self, key: &str) -> (u64, u64) {
        let mut first = self.hasher.build_hasher();
        first.write(key.as_bytes());
        let a = first.finish();
        let mut second = self.hasher.build_hasher();
        second.write_u64(a);
        second.write(key.as_bytes());
        // An odd step visits every residue of a power of two and most others.
        (a, second.finish() | 1)
    }

    /// Adds `key`.
    pub fn insert(&mut self, key: &str) {
        let h = self.hash(key);
        let full = self.filters.last().is_none_or(|f| f.len >= f.capacity);
        if full {
            // Filter i gets rate DESIGN_RATE / 2^(i+1): the rates sum below DESIGN_RATE.
            let n = self.filters.len() as i32;
            let capacity = FIRST_CAPACITY << n.min(40);
            self.filters
                .push(Filter::new(capacity, DESIGN_RATE / 2f64.powi(n + 1)));
        }
        if let Some(last) = self.filters.last_mut() {
            last.insert(h);
        }
        self.len += 1;
    }

    /// False if `key` was certainly never inserted; true if it may have been.
    pub fn may_contain(&self, key: &str) -> bool {
        let h = self.hash(key);
        self.filters.iter().any(|f| f.may_contain(h))
    }

    /// Keys inserted.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Bytes the filters take.
    pub fn bytes(&self) -> usize {
        self.filters.iter().map(|f| f.bits.len() * 8).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_says_no_to_an_inserted_key_and_rarely_yes_to_others() {
        let mut set = KeySet::default();
        let n = 200_000;
        for i in 0..n {
            set.insert(&format!("photos/2026/{i:08}.jpg"));
        }
        assert_eq!(set.len(), n);
        for i in 0..n {
            assert!(set.may_contain(&format!("photos/2026/{i:08}.jpg")), "{i}");
        }
        let false_positives = (0..n)
            .filter(|i| set.may_contain(&format!("other/{i:08}")))
            .count();
        let rate = false_positives as f64 / n as f64;
        assert!(rate < FALSE_POSITIVES, "false-positive rate {rate}");
        // About 1.2 bytes a key (plus the chain's slack), not the keys themselves.
        assert!(set.bytes() < 4 * n, "{} bytes for {n} keys", set.bytes());
    }

    #[test]
    fn an_empty_set_holds_nothing() {
        let set = KeySet::default();
        assert!(!set.may_contain(""));
        assert!(!set.may_contain("a"));
        assert_eq!(set.bytes(), 0);
    }
}
