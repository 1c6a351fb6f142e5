//! The modelled processing time of the services (madsim runs CPU work in zero
//! simulated time). Each call to a handler draws its time from the handler's
//! distribution, and a service processes at most `concurrency` calls at once,
//! so a busy service builds a queue and the queueing shows in the latencies.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fafnir_platform::services::ServiceTime;
use tokio::sync::Semaphore;

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
}

impl ServiceModel {
    /// A few tens of microseconds per call, four at a time.
    pub fn typical() -> ServiceModel {
        ServiceModel {
            default: Dist::Uniform(Duration::from_micros(20), Duration::from_micros(60)),
            handlers: BTreeMap::new(),
            concurrency: 4,
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
        }
    }
}

/// A [`ServiceTime`] for one service instance, seeded from the root seed and
/// the instance name.
pub struct Modelled {
    model: ServiceModel,
    rng: Mutex<SplitMix64>,
    slots: Arc<Semaphore>,
    slow: SlowKnob,
}

/// A multiplier of one instance's service time, turned by `slow` faults. It
/// outlives the instance's restarts.
pub type SlowKnob = Arc<AtomicU32>;

impl Modelled {
    pub fn new(model: ServiceModel, root_seed: u64, instance: &str, slow: SlowKnob) -> Modelled {
        let slots = Arc::new(Semaphore::new(model.concurrency.max(1)));
        let rng = Mutex::new(SplitMix64::new(derive_seed(root_seed, &format!("service-time/{instance}"))));
        Modelled { model, rng, slots, slow }
    }
}

#[async_trait::async_trait]
impl ServiceTime for Modelled {
    async fn process(&self, handler: &'static str) {
        let _slot = self.slots.acquire().await.expect("semaphore never closed");
        let dist = self.model.handlers.get(handler).copied().unwrap_or(self.model.default);
        let t = dist.draw(&mut self.rng.lock().expect("rng lock"));
        tokio::time::sleep(t * self.slow.load(Ordering::Relaxed).max(1)).await;
    }
}
