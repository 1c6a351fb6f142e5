//! The switch behind the `reply_lost` fault: while its rate is above zero, a
//! fraction of the answers the world's servers send is dropped after the
//! request took effect (see [`crate::faults`]). One knob per world, shared
//! by the simulated broker (its replies) and the order path's multiplexed
//! gRPC servers (through `fafnir_platform::rpc::set_reply_loss`, simulated build only); it draws
//! from its own seed, derived from the root seed, so the same seed drops the
//! same answers. Nothing is drawn while the rate is zero, so a world that
//! never plays the fault takes exactly the path it took without the knob.

use std::sync::{Arc, Mutex};

use crate::rng::SplitMix64;

/// A shared drop switch; clones share it.
#[derive(Clone, Debug)]
pub struct ReplyLoss {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    rate_ppm: u32,
    rng: SplitMix64,
    lost: u64,
}

impl ReplyLoss {
    /// A switch drawing from `seed`, off until [`ReplyLoss::set_rate_ppm`].
    pub fn new(seed: u64) -> ReplyLoss {
        ReplyLoss { inner: Arc::new(Mutex::new(Inner { rate_ppm: 0, rng: SplitMix64::new(seed), lost: 0 })) }
    }

    /// A switch that stays off (for a broker outside a world, as in the conformance tests).
    pub fn never() -> ReplyLoss {
        ReplyLoss::new(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("reply loss lock")
    }

    /// Drops `rate_ppm` of a million answers from now on (0: none).
    pub fn set_rate_ppm(&self, rate_ppm: u32) {
        assert!(rate_ppm <= 1_000_000, "rate_ppm {rate_ppm} is more than a million per million");
        self.lock().rate_ppm = rate_ppm;
    }

    /// Whether the answer about to be sent is lost (draws only while the rate is above zero).
    pub fn lose(&self) -> bool {
        let mut s = self.lock();
        if s.rate_ppm == 0 {
            return false;
        }
        let lost = s.rng.next_u64() % 1_000_000 < u64::from(s.rate_ppm);
        s.lost += u64::from(lost);
        lost
    }

    /// How many answers were dropped so far.
    pub fn lost(&self) -> u64 {
        self.lock().lost
    }
}

#[cfg(test)]
mod tests {
    use super::ReplyLoss;

    #[test]
    fn drops_about_the_rate_and_only_while_on() {
        let knob = ReplyLoss::new(7);
        assert!((0..1_000).all(|_| !knob.lose()), "off: nothing lost");
        knob.set_rate_ppm(100_000);
        let lost = (0..10_000).filter(|_| knob.lose()).count();
        assert!((800..1_200).contains(&lost), "10% of 10,000: {lost}");
        assert_eq!(knob.lost(), lost as u64);
        knob.set_rate_ppm(0);
        assert!(!knob.lose());
        // The same seed drops the same answers.
        let (a, b) = (ReplyLoss::new(3), ReplyLoss::new(3));
        a.set_rate_ppm(500_000);
        b.set_rate_ppm(500_000);
        assert!((0..100).all(|_| a.lose() == b.lose()));
        knob.set_rate_ppm(1_000_000);
        assert!(knob.lose());
    }
}
