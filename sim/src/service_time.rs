//! The modelled processing time of the services (madsim runs CPU work in zero
//! simulated time). Each call to a handler draws its time from the handler's
//! distribution, and a service processes at most `concurrency` calls at once,
//! so a busy service builds a queue and the queueing shows in the latencies.
//!
//! The service is `concurrency` workers, each with the simulated instant it is
//! next free; a call goes to the worker free soonest (first come, first
//! served) and completes at `max(now, free) + time`, exactly: simulated time
//! is microsecond-true (`fafnir_platform::time`), so a 20 µs call takes 20 µs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fafnir_platform::services::ServiceTime;
use fafnir_platform::time::Instant;

use crate::rng::{derive_seed, SplitMix64};

/// A distribution of processing times.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Dist {
    Fixed(Duration),
    /// Uniform between the two bounds.
    Uniform(Duration, Duration),
    /// Exponential with this mean, capped at 20 means (a heavy but bounded tail).
    Exp(Duration),
}

impl Dist {
    fn draw(&self, rng: &mut SplitMix64) -> Duration {
        match *self {
            Dist::Fixed(d) => d,
            Dist::Uniform(lo, hi) => Duration::from_nanos(rng.range(lo.as_nanos() as u64, hi.as_nanos() as u64)),
            Dist::Exp(mean) => {
                let u = rng.next_unit();
                let factor = (-(1.0 - u).ln()).min(20.0);
                Duration::from_nanos((mean.as_nanos() as f64 * factor) as u64)
            }
        }
    }
}

/// The processing-time model of one service.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceModel {
    /// Used for handlers without their own entry.
    pub default: Dist,
    /// By handler name, e.g. `"orders.submit"`.
    pub handlers: BTreeMap<String, Dist>,
    /// Calls processed at once; the rest wait.
    pub concurrency: usize,
    /// The cores the whole platform shares, when the model has them (a
    /// calibration's `cores`): the calls of every service queue for them,
    /// and `concurrency` is unused.
    pub cores: Option<Cores>,
}

/// Cores shared by services: when each is next free (None: free since the start).
#[derive(Clone, Debug)]
pub struct Cores(Arc<Mutex<Vec<Option<Instant>>>>);

impl Cores {
    pub fn new(n: usize) -> Cores {
        Cores(Arc::new(Mutex::new(vec![None; n.max(1)])))
    }
}

impl PartialEq for Cores {
    fn eq(&self, other: &Cores) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl ServiceModel {
    /// A few tens of microseconds per call, four at a time.
    pub fn typical() -> ServiceModel {
        ServiceModel {
            default: Dist::Uniform(Duration::from_micros(20), Duration::from_micros(60)),
            handlers: BTreeMap::new(),
            concurrency: 4,
            cores: None,
        }
    }

    /// Every call `factor` times slower.
    pub fn slowed(&self, factor: u32) -> ServiceModel {
        let scale = |d: Dist| match d {
            Dist::Fixed(x) => Dist::Fixed(x * factor),
            Dist::Uniform(a, b) => Dist::Uniform(a * factor, b * factor),
            Dist::Exp(m) => Dist::Exp(m * factor),
        };
        ServiceModel {
            default: scale(self.default),
            handlers: self.handlers.iter().map(|(k, v)| (k.clone(), scale(*v))).collect(),
            concurrency: self.concurrency,
            cores: self.cores.clone(),
        }
    }
}

/// A [`ServiceTime`] for one service instance, seeded from the root seed and
/// the instance name.
pub struct Modelled {
    model: ServiceModel,
    rng: Mutex<SplitMix64>,
    /// When each worker is next free (see the module docs); None: free since
    /// the start. The platform's shared cores when the model has them.
    free_at: Cores,
    slow: SlowKnob,
}

/// A multiplier of one instance's service time, turned by `slow` faults. It
/// outlives the instance's restarts.
pub type SlowKnob = Arc<AtomicU32>;

impl Modelled {
    pub fn new(model: ServiceModel, root_seed: u64, instance: &str, slow: SlowKnob) -> Modelled {
        let rng = Mutex::new(SplitMix64::new(derive_seed(root_seed, &format!("service-time/{instance}"))));
        let free_at = model.cores.clone().unwrap_or_else(|| Cores::new(model.concurrency));
        Modelled { model, rng, free_at, slow }
    }

    /// Books one call of `t` on the worker free soonest; returns when it completes.
    fn book(&self, now: Instant, t: Duration) -> Instant {
        let mut free_at = self.free_at.0.lock().expect("workers lock");
        // None (free since the start) orders before any instant.
        let worker = free_at.iter_mut().min_by_key(|at| **at).expect("at least one worker");
        let done = worker.map_or(now, |free| free.max(now)) + t;
        *worker = Some(done);
        done
    }
}

#[async_trait::async_trait]
impl ServiceTime for Modelled {
    async fn process(&self, handler: &'static str) {
        let dist = self.model.handlers.get(handler).copied().unwrap_or(self.model.default);
        let t = dist.draw(&mut self.rng.lock().expect("rng lock")) * self.slow.load(Ordering::Relaxed).max(1);
        let now = Instant::now();
        let done = self.book(now, t);
        if done > now {
            fafnir_platform::time::sleep_until(done).await;
        }
    }
}

#[cfg(all(test, madsim))]
mod tests {
    use super::*;

    fn fixed(us: u64, concurrency: usize) -> Modelled {
        let model = ServiceModel {
            default: Dist::Fixed(Duration::from_micros(us)),
            handlers: BTreeMap::new(),
            concurrency,
            cores: None,
        };
        Modelled::new(model, 1, "test", SlowKnob::default())
    }

    /// Starts `n` calls at once and returns when each completed, in µs after the start.
    async fn burst(m: Arc<Modelled>, n: usize) -> Vec<u128> {
        let start = Instant::now();
        let calls = (0..n).map(|_| {
            let m = m.clone();
            tokio::spawn(async move {
                m.process("x").await;
                Instant::now().duration_since(start).as_micros()
            })
        });
        let mut done = Vec::new();
        for call in calls.collect::<Vec<_>>() {
            done.push(call.await.expect("call"));
        }
        done.sort_unstable();
        done
    }

    #[madsim::test]
    async fn a_short_call_on_an_idle_service_takes_exactly_its_time() {
        let m = fixed(40, 4);
        let start = Instant::now();
        m.process("x").await;
        assert_eq!(start.elapsed(), Duration::from_micros(40));
    }

    #[madsim::test]
    async fn a_long_call_takes_its_time() {
        let m = fixed(5_000, 4);
        let start = Instant::now();
        m.process("x").await;
        assert_eq!(start.elapsed(), Duration::from_millis(5));
    }

    /// 40 calls of 100 µs on one worker are 4 ms of work: the n-th completes
    /// after n × 100 µs.
    #[madsim::test]
    async fn a_queue_of_short_calls_takes_the_sum_of_their_times() {
        let done = burst(Arc::new(fixed(100, 1)), 40).await;
        assert_eq!(done, (1..=40).map(|n| n * 100).collect::<Vec<u128>>());
        // Two workers halve it.
        let done = burst(Arc::new(fixed(100, 2)), 40).await;
        assert_eq!(done, (1..=40u128).map(|n| n.div_ceil(2) * 100).collect::<Vec<u128>>());
    }

    #[madsim::test]
    async fn slowing_multiplies_the_time() {
        let m = fixed(100, 1);
        m.slow.store(50, Ordering::Relaxed);
        let start = Instant::now();
        m.process("x").await;
        assert_eq!(start.elapsed(), Duration::from_millis(5));
    }
}
