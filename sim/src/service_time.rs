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

/// Piecewise-linear: the value at `x` of `points` (x, y), x increasing,
/// interpolated between the two points around it; before the first point
/// its y, past the last the last y, and 0 without points.
pub fn interpolate(points: impl IntoIterator<Item = (u128, u128)>, x: u128) -> u128 {
    let mut below: Option<(u128, u128)> = None;
    for (at, y) in points {
        if x <= at {
            let Some((lo_x, lo_y)) = below else { return y };
            let (span, into) = ((at - lo_x).max(1), x - lo_x);
            return if y >= lo_y { lo_y + (y - lo_y) * into / span } else { lo_y - (lo_y - y) * into / span };
        }
        below = Some((at, y));
    }
    below.map_or(0, |(_, y)| y)
}

/// The share, in thousandths, of a wake-up that an idle `gap` calls for:
/// interpolated between the `curve`'s points (gap, thousandths), from none
/// at no gap; past the last point, the last share.
pub fn wake_share(curve: &[(Duration, u32)], gap: Duration) -> u32 {
    let points = curve.iter().map(|&(at, share)| (at.as_nanos(), u128::from(share)));
    interpolate(std::iter::once((0, 0)).chain(points), gap.as_nanos()) as u32
}

/// The delay an idle `gap` calls for: interpolated between the `points`
/// (gap, delay), from none at no gap; past the last point, the last delay.
pub fn wake_delay(points: &[(Duration, Duration)], gap: Duration) -> Duration {
    let points = points.iter().map(|&(at, delay)| (at.as_nanos(), delay.as_nanos()));
    Duration::from_nanos(interpolate(std::iter::once((0, 0)).chain(points), gap.as_nanos()) as u64)
}

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
    /// The mean time.
    pub fn mean(&self) -> Duration {
        match *self {
            Dist::Fixed(d) | Dist::Exp(d) => d,
            Dist::Uniform(lo, hi) => (lo + hi) / 2,
        }
    }

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
    /// For a server whose cost per message falls when messages come close
    /// together (nats-server: measured, a publish after an idle gap costs
    /// it ten times one of a back-to-back stream): the share of the `wake`
    /// handler's time [`Modelled::process_many`] adds after an idle gap, as
    /// points (gap, thousandths) it interpolates between, from none at no
    /// gap; past the last point, the last share. None: no wake-up cost.
    pub warm: Option<Vec<(Duration, u32)>>,
    /// With `warm`: how much later a server that has been idle picks up
    /// work (waking its threads: latency, not CPU), as points (gap, delay)
    /// interpolated between, from none at no gap; past the last point, the
    /// last delay. None: it picks work up at once.
    pub wake_latency: Option<Vec<(Duration, Duration)>>,
    /// For a server the platform waits on (the broker): how much later its
    /// answers are taken up when the platform has been idle, by the gap
    /// since the platform's last work (its threads park while they wait and
    /// the answer wakes them), as points (gap, delay) interpolated between.
    /// None: at once.
    pub reply_wake: Option<Vec<(Duration, Duration)>>,
    /// Its work keeps the platform's threads awake: the platform's services
    /// and the load generator (one process in a calibration's run), not the
    /// broker or Redis. Set by the world.
    pub platform: bool,
}

/// Cores shared by services: when each is next free (None: free since the
/// start), and when the platform's last work on them completes.
#[derive(Clone, Debug)]
pub struct Cores {
    free_at: Arc<Mutex<Vec<Option<Instant>>>>,
    platform_done: Arc<Mutex<Option<Instant>>>,
}

impl Cores {
    pub fn new(n: usize) -> Cores {
        Cores { free_at: Arc::new(Mutex::new(vec![None; n.max(1)])), platform_done: Arc::default() }
    }
}

impl PartialEq for Cores {
    fn eq(&self, other: &Cores) -> bool {
        Arc::ptr_eq(&self.free_at, &other.free_at)
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
            warm: None,
            wake_latency: None,
            reply_wake: None,
            platform: false,
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
            warm: self.warm.clone(),
            wake_latency: self.wake_latency.clone(),
            reply_wake: self.reply_wake.clone(),
            platform: self.platform,
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
    /// When this instance's last booked work completes (see [`Modelled::process_many`]).
    last_done: Mutex<Option<Instant>>,
}

/// A multiplier of one instance's service time, turned by `slow` faults. It
/// outlives the instance's restarts.
pub type SlowKnob = Arc<AtomicU32>;

impl Modelled {
    pub fn new(model: ServiceModel, root_seed: u64, instance: &str, slow: SlowKnob) -> Modelled {
        let rng = Mutex::new(SplitMix64::new(derive_seed(root_seed, &format!("service-time/{instance}"))));
        let free_at = model.cores.clone().unwrap_or_else(|| Cores::new(model.concurrency));
        Modelled { model, rng, free_at, slow, last_done: Mutex::new(None) }
    }

    /// The model has a wake-up cost: its server is modelled per message.
    pub fn per_message(&self) -> bool {
        self.model.warm.is_some()
    }

    /// `n` messages of `handler` processed together (a pipelined batch of
    /// publishes, a frame of deliveries, a run of acks): one draw of its
    /// time, and its mean for each of the others. When the server has been
    /// idle since its last work, it first pays the share of `wake`'s mean
    /// time the gap calls for (see [`ServiceModel::warm`]). A handler the model
    /// does not name costs nothing.
    pub async fn process_many(&self, handler: &'static str, wake: &'static str, n: usize) {
        let Some(dist) = self.model.handlers.get(handler).copied() else { return };
        if n == 0 {
            return;
        }
        let now = Instant::now();
        let last = *self.last_done.lock().expect("last_done lock");
        let gap = last.map_or(Duration::MAX, |done| now.saturating_duration_since(done));
        let t = {
            let mut rng = self.rng.lock().expect("rng lock");
            let mut t = dist.draw(&mut rng) + dist.mean() * (n as u32 - 1);
            if let (Some(curve), Some(w)) = (&self.model.warm, self.model.handlers.get(wake)) {
                // Its mean: waking up is the same machinery each time, not an
                // amount of work (an exponential draw gave the simulated
                // broker a tail of up to 20 wake-ups the real one lacks).
                t += w.mean() * wake_share(curve, gap) / 1_000;
            }
            t * self.slow.load(Ordering::Relaxed).max(1)
        };
        // Work that finds the server idle starts when it has woken up.
        let start = now + self.model.wake_latency.as_deref().map_or(Duration::ZERO, |p| wake_delay(p, gap));
        let done = self.book(start, t);
        *self.last_done.lock().expect("last_done lock") = Some(done);
        if done > now {
            fafnir_platform::time::sleep_until(done).await;
        }
    }

    /// Books one call of `t` on the worker free soonest; returns when it completes.
    fn book(&self, now: Instant, t: Duration) -> Instant {
        let mut free_at = self.free_at.free_at.lock().expect("workers lock");
        // None (free since the start) orders before any instant.
        let worker = free_at.iter_mut().min_by_key(|at| **at).expect("at least one worker");
        let done = worker.map_or(now, |free| free.max(now)) + t;
        *worker = Some(done);
        if self.model.platform {
            let mut last = self.free_at.platform_done.lock().expect("platform_done lock");
            *last = Some(last.map_or(done, |at| at.max(done)));
        }
        done
    }

    /// How much later an answer sent now is taken up (see
    /// [`ServiceModel::reply_wake`]): by how long the platform has been idle.
    pub fn reply_delay(&self) -> Duration {
        let Some(points) = self.model.reply_wake.as_deref() else { return Duration::ZERO };
        let last = *self.free_at.platform_done.lock().expect("platform_done lock");
        let gap = last.map_or(Duration::MAX, |done| Instant::now().saturating_duration_since(done));
        wake_delay(points, gap)
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

    async fn process_if_named(&self, handler: &'static str) {
        if self.model.handlers.contains_key(handler) {
            self.process(handler).await;
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
            warm: None,
            wake_latency: None,
            reply_wake: None,
            platform: false,
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

    /// A server modelled per message: 10 µs a message, 100 µs to wake up
    /// after an idle gap of 200 µs or more, none after 25 µs or less.
    fn per_message() -> Modelled {
        let model = ServiceModel {
            default: Dist::Fixed(Duration::from_micros(1_000)),
            handlers: BTreeMap::from([
                ("b.msg".to_string(), Dist::Fixed(Duration::from_micros(10))),
                ("b.wake".to_string(), Dist::Fixed(Duration::from_micros(100))),
            ]),
            concurrency: 1,
            cores: None,
            warm: Some(vec![(Duration::from_micros(25), 0), (Duration::from_micros(200), 1_000)]),
            wake_latency: None,
            reply_wake: None,
            platform: false,
        };
        Modelled::new(model, 1, "test", SlowKnob::default())
    }

    async fn timed(m: &Modelled, n: usize) -> Duration {
        let start = Instant::now();
        m.process_many("b.msg", "b.wake", n).await;
        start.elapsed()
    }

    #[test]
    fn the_wake_delay_is_interpolated_between_the_measured_points() {
        let us = Duration::from_micros;
        let points = [(us(400), us(5)), (us(1_600), us(85))];
        assert_eq!(wake_delay(&points, us(0)), us(0));
        assert_eq!(wake_delay(&points, us(200)), Duration::from_nanos(2_500));
        assert_eq!(wake_delay(&points, us(1_000)), us(45));
        assert_eq!(wake_delay(&points, us(1_600)), us(85));
        assert_eq!(wake_delay(&points, Duration::MAX), us(85));
        assert_eq!(wake_delay(&[], us(50)), Duration::ZERO);
    }

    /// A server that has been idle picks work up later by the delay its gap
    /// calls for, without occupying a worker meanwhile; one kept busy, at once.
    #[madsim::test]
    async fn an_idle_server_picks_work_up_after_waking() {
        let mut model = per_message().model;
        model.wake_latency = Some(vec![
            (Duration::from_micros(100), Duration::ZERO),
            (Duration::from_micros(1_000), Duration::from_micros(90)),
        ]);
        let m = Modelled::new(model, 1, "test", SlowKnob::default());
        // Never worked: a whole wake-up (90 µs), then the CPU wake and the message.
        assert_eq!(timed(&m, 1).await, Duration::from_micros(90 + 110));
        // At once after it: the message alone.
        assert_eq!(timed(&m, 1).await, Duration::from_micros(10));
        // Idle for 550 µs, half-way: 45 µs later, and the CPU wake-up's whole share.
        fafnir_platform::time::sleep(Duration::from_micros(550)).await;
        assert_eq!(timed(&m, 1).await, Duration::from_micros(45 + 110));
    }

    /// The broker's answers wait for the platform to wake when the
    /// platform's last work ended long enough ago; not while it works.
    #[madsim::test]
    async fn an_answer_waits_for_an_idle_platform_to_wake() {
        let cores = Cores::new(2);
        let mut broker = per_message().model;
        broker.cores = Some(cores.clone());
        broker.reply_wake =
            Some(vec![(Duration::ZERO, Duration::ZERO), (Duration::from_micros(25), Duration::from_micros(100))]);
        let broker = Modelled::new(broker, 1, "broker", SlowKnob::default());
        let mut service = fixed(40, 2).model;
        (service.cores, service.platform) = (Some(cores), true);
        let service = Modelled::new(service, 1, "orders", SlowKnob::default());
        // The platform never worked: a whole wake-up.
        assert_eq!(broker.reply_delay(), Duration::from_micros(100));
        // While it works (40 µs), none; 10 µs after, 40 µs of it; 25 µs after, all of it.
        let working = async { service.process("x").await };
        let (_, during) = tokio::join!(working, async {
            fafnir_platform::time::sleep(Duration::from_micros(20)).await;
            broker.reply_delay()
        });
        assert_eq!(during, Duration::ZERO);
        fafnir_platform::time::sleep(Duration::from_micros(10)).await;
        assert_eq!(broker.reply_delay(), Duration::from_micros(40));
        fafnir_platform::time::sleep(Duration::from_micros(15)).await;
        assert_eq!(broker.reply_delay(), Duration::from_micros(100));
        // The broker's own work does not keep the platform awake.
        broker.process_many("b.msg", "b.wake", 1).await;
        assert_eq!(broker.reply_delay(), Duration::from_micros(100));
    }

    #[test]
    fn the_wake_share_is_interpolated_between_the_measured_points() {
        let us = Duration::from_micros;
        let curve = [(us(25), 100), (us(100), 600), (us(200), 1_000)];
        assert_eq!(wake_share(&curve, us(0)), 0);
        assert_eq!(wake_share(&curve, Duration::from_nanos(12_500)), 50);
        assert_eq!(wake_share(&curve, us(25)), 100);
        assert_eq!(wake_share(&curve, us(50)), 266);
        assert_eq!(wake_share(&curve, us(150)), 800);
        assert_eq!(wake_share(&curve, us(5_000)), 1_000);
        assert_eq!(wake_share(&curve, Duration::MAX), 1_000);
        assert_eq!(wake_share(&[], us(50)), 0);
    }

    #[madsim::test]
    async fn messages_close_together_cost_less_than_after_an_idle_gap() {
        let m = per_message();
        assert!(m.per_message());
        // Never worked: a wake-up and the message.
        assert_eq!(timed(&m, 1).await, Duration::from_micros(110));
        // At once after it: the message alone; a batch of five, five messages.
        assert_eq!(timed(&m, 1).await, Duration::from_micros(10));
        assert_eq!(timed(&m, 5).await, Duration::from_micros(50));
        // Idle for 112.5 µs, half-way through the warm range: half a wake-up.
        fafnir_platform::time::sleep(Duration::from_nanos(112_500)).await;
        assert_eq!(timed(&m, 1).await, Duration::from_micros(60));
        // Idle for a millisecond: all of it.
        fafnir_platform::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(timed(&m, 1).await, Duration::from_micros(110));
        // A handler the model does not name costs nothing (not the default).
        let start = Instant::now();
        m.process_many("b.other", "b.wake", 3).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
