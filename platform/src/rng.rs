//! A seeded generator for the platform's own draws (its in-code fault
//! points); the simulation uses it too, and as the world's source of
//! [`Entropy`]. Never seeded from the OS.

use crate::services::Entropy;

/// SplitMix64: small, fast, and good enough for modelling.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi] (inclusive); `lo` when `hi <= lo`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// [`Entropy`] drawn from a [`SplitMix64`]: the simulation's stand-in for the
/// OS's random bytes, reproducible from its seed. Predictable by design, so
/// never for a real deployment.
#[derive(Debug)]
pub struct SeededEntropy(std::sync::Mutex<SplitMix64>);

impl SeededEntropy {
    pub fn new(seed: u64) -> SeededEntropy {
        SeededEntropy(std::sync::Mutex::new(SplitMix64::new(seed)))
    }
}

impl Entropy for SeededEntropy {
    fn fill(&self, buf: &mut [u8]) {
        let mut rng = self.0.lock().expect("entropy lock");
        for chunk in buf.chunks_mut(8) {
            let word = rng.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_entropy_is_reproducible_and_not_constant() {
        let (a, b) = (SeededEntropy::new(5), SeededEntropy::new(5));
        let (mut x, mut y) = ([0u8; 13], [0u8; 13]);
        a.fill(&mut x);
        b.fill(&mut y);
        assert_eq!(x, y, "the same seed gives the same bytes");
        a.fill(&mut y);
        assert_ne!(x, y, "the next draw differs");
        assert_ne!(x, [0u8; 13]);
    }
}
