//! The modelled processing time of the services (madsim runs CPU work in zero
//! simulated time). Each call to a handler draws its time from the handler's
//! distribution, and a service processes at most `concurrency` calls at once,
//! so a busy service builds a queue and the queueing shows in the latencies.
//!
//! The service is `concurrency` workers, each with the simulated instant it is
//! next free; a call goes to the worker free soonest (first come, first
//! served) and completes at `max(now, free) + time`, exactly: simulated time
//! is microsecond-true (`fafnir_platform::time`), so a 20 µs call takes 20 µs.
//!
//! Cores shared by the whole platform (a calibration's `cores`) are either
//! such a queue or, with `core_sharing = "fair"`, time-shared as an
//! operating system shares them among its threads: every call in progress
//! advances at once, each at `cores / calls` of a core when there are more
//! calls than cores (processor sharing), so a short call is not held behind
//! a long one, and a crowd slows everything in it. (Queued per process
//! instead, each process running as many calls at once as it has threads,
//! was measured too: a process's calls are not whole pieces of work but
//! many short polls that interleave, and the load generator's market-data
//! receipts queued behind its requests made market data's p99 twice real
//! at 500 orders/s.)

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

/// How cores shared by the platform take its calls (a calibration's
/// `core_sharing`): first come, first served (`queue`, the default), or
/// time-shared among every call in progress (`fair`, as an operating
/// system shares them among threads; see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CoreSharing {
    #[default]
    Queue,
    Fair,
}

/// Cores shared by services: when each is next free (None: free since the
/// start), and when the platform's last work on them completes; or, when
/// time-shared ([`Cores::fair`]), the calls in progress on them.
#[derive(Clone, Debug)]
pub struct Cores {
    free_at: Arc<Mutex<Vec<Option<Instant>>>>,
    platform_done: Arc<Mutex<Option<Instant>>>,
    fair: Option<Arc<Fair>>,
}

impl Cores {
    /// `n` cores, each taking calls first come, first served.
    pub fn new(n: usize) -> Cores {
        Cores { free_at: Arc::new(Mutex::new(vec![None; n.max(1)])), platform_done: Arc::default(), fair: None }
    }

    /// `n` cores time-shared among every call in progress (see the module docs).
    pub fn fair(n: usize) -> Cores {
        let state = FairState { cores: n.max(1) as u128, ..FairState::default() };
        Cores { fair: Some(Arc::new(Fair { state: Mutex::new(state) })), ..Cores::new(n) }
    }

    /// How long the platform has been idle on these cores (zero while its
    /// work is in progress; `Duration::MAX` if it never worked).
    fn platform_gap(&self, now: Instant) -> Duration {
        if let Some(fair) = &self.fair {
            if fair.state.lock().expect("fair lock").platform_calls > 0 {
                return Duration::ZERO;
            }
        }
        let last = *self.platform_done.lock().expect("platform_done lock");
        last.map_or(Duration::MAX, |done| now.saturating_duration_since(done))
    }
}

/// Time-shared cores: the calls in progress and how much work each has left.
#[derive(Debug)]
struct Fair {
    state: Mutex<FairState>,
}

#[derive(Debug, Default)]
struct FairState {
    cores: u128,
    /// By arrival (ids increase), so the order never depends on a hash.
    calls: BTreeMap<u64, FairCall>,
    next_id: u64,
    /// When the calls' work left was last brought up to date.
    at: Option<Instant>,
    /// Calls in progress of the platform's own processes (see [`ServiceModel::platform`]).
    platform_calls: usize,
}

#[derive(Debug)]
struct FairCall {
    /// Modelled nanoseconds of work left, as of `FairState::at`.
    left_ns: u128,
    /// When it completes if no call comes or goes.
    due: Instant,
    /// Told when another call completes: this one speeds up and looks again.
    /// (One `Notify` per call, told in the calls' order: a watch channel's
    /// waiters are woken in an order drawn from the runtime's own random
    /// numbers, which made runs of one seed differ.)
    sooner: Arc<tokio::sync::Notify>,
}

impl FairState {
    /// Each call's share of a core, as (numerator, denominator).
    fn share(&self) -> (u128, u128) {
        let n = self.calls.len().max(1) as u128;
        (n.min(self.cores), n)
    }

    /// Brings every call's work left and completion up to `now`.
    fn advance(&mut self, now: Instant) {
        let (num, den) = self.share();
        let elapsed = self.at.map_or(0, |at| now.saturating_duration_since(at).as_nanos());
        for call in self.calls.values_mut() {
            call.left_ns = call.left_ns.saturating_sub(elapsed * num / den);
        }
        self.at = Some(now);
    }

    /// Recomputes every call's completion from its work left (after `advance`).
    fn reschedule(&mut self, now: Instant) {
        let (num, den) = self.share();
        for call in self.calls.values_mut() {
            let ns = (call.left_ns * den).div_ceil(num);
            call.due = now + Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX));
        }
    }
}

impl Fair {
    /// Serves `t` of work on the shared cores from now; returns when it completed.
    async fn serve(&self, t: Duration, platform: bool) -> Instant {
        let now = Instant::now();
        let sooner = Arc::new(tokio::sync::Notify::new());
        let id = {
            let mut s = self.state.lock().expect("fair lock");
            s.advance(now);
            let id = s.next_id;
            s.next_id += 1;
            s.calls.insert(id, FairCall { left_ns: t.as_nanos(), due: now, sooner: sooner.clone() });
            s.platform_calls += usize::from(platform);
            s.reschedule(now);
            id
        };
        // Leaves the cores however the call ends: completed, or dropped
        // half-way (its node killed), which must not hold a share forever.
        let _in_progress = InProgress { fair: self, id, platform };
        loop {
            let due = self.state.lock().expect("fair lock").calls[&id].due;
            if Instant::now() < due {
                // An arrival only postpones `due` (looked at again on waking
                // early); a completion brings it forward and says so.
                tokio::select! {
                    biased;
                    _ = sooner.notified() => {}
                    _ = fafnir_platform::time::sleep_until(due) => {}
                }
            }
            let now = Instant::now();
            if now >= self.state.lock().expect("fair lock").calls[&id].due {
                return now;
            }
        }
    }

    /// Takes call `id` off the cores now; the others speed up.
    fn leave(&self, id: u64, platform: bool) {
        let now = Instant::now();
        let mut s = self.state.lock().expect("fair lock");
        s.advance(now);
        if s.calls.remove(&id).is_some() {
            s.platform_calls -= usize::from(platform);
        }
        s.reschedule(now);
        s.calls.values().for_each(|call| call.sooner.notify_one());
    }
}

/// A call on time-shared cores; it leaves them when dropped.
struct InProgress<'a> {
    fair: &'a Fair,
    id: u64,
    platform: bool,
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.fair.leave(self.id, self.platform);
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
    /// When this instance's last booked work completes (see
    /// [`Modelled::process_many`]), and how many of its calls are in progress
    /// on time-shared cores (whose completions are not known ahead).
    last_done: Mutex<(Option<Instant>, usize)>,
}

/// An instance's work in progress on time-shared cores, counted in its
/// `last_done` while it lasts (also when dropped half-way, its node killed).
struct Busy<'a>(&'a Mutex<(Option<Instant>, usize)>);

impl<'a> Busy<'a> {
    fn new(last_done: &'a Mutex<(Option<Instant>, usize)>) -> Busy<'a> {
        last_done.lock().expect("last_done lock").1 += 1;
        Busy(last_done)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut last = self.0.lock().expect("last_done lock");
        *last = (Some(last.0.map_or(now, |at| at.max(now))), last.1 - 1);
    }
}

/// A multiplier of one instance's service time, turned by `slow` faults. It
/// outlives the instance's restarts.
pub type SlowKnob = Arc<AtomicU32>;

impl Modelled {
    pub fn new(model: ServiceModel, root_seed: u64, instance: &str, slow: SlowKnob) -> Modelled {
        let rng = Mutex::new(SplitMix64::new(derive_seed(root_seed, &format!("service-time/{instance}"))));
        let free_at = model.cores.clone().unwrap_or_else(|| Cores::new(model.concurrency));
        Modelled { model, rng, free_at, slow, last_done: Mutex::default() }
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
        let gap = match *self.last_done.lock().expect("last_done lock") {
            (_, busy) if busy > 0 => Duration::ZERO,
            (last, _) => last.map_or(Duration::MAX, |done| now.saturating_duration_since(done)),
        };
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
        if self.free_at.fair.is_none() {
            let done = self.book(start, t);
            self.last_done.lock().expect("last_done lock").0 = Some(done);
            if done > now {
                fafnir_platform::time::sleep_until(done).await;
            }
            return;
        }
        let _busy = Busy::new(&self.last_done);
        if start > now {
            fafnir_platform::time::sleep_until(start).await;
        }
        self.serve_fair(t).await;
    }

    /// Serves `t` on time-shared cores; returns when it completed.
    async fn serve_fair(&self, t: Duration) -> Instant {
        let fair = self.free_at.fair.as_ref().expect("time-shared cores");
        let done = fair.serve(t, self.model.platform).await;
        if self.model.platform {
            let mut last = self.free_at.platform_done.lock().expect("platform_done lock");
            *last = Some(last.map_or(done, |at| at.max(done)));
        }
        done
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
        wake_delay(points, self.free_at.platform_gap(Instant::now()))
    }
}

#[async_trait::async_trait]
impl ServiceTime for Modelled {
    async fn process(&self, handler: &'static str) {
        let dist = self.model.handlers.get(handler).copied().unwrap_or(self.model.default);
        let t = dist.draw(&mut self.rng.lock().expect("rng lock")) * self.slow.load(Ordering::Relaxed).max(1);
        if self.free_at.fair.is_some() {
            if !t.is_zero() {
                self.serve_fair(t).await;
            }
            return;
        }
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

    /// An instance (named `instance`) of fixed `us` per call on `cores`.
    fn on(cores: &Cores, instance: &str, us: u64) -> Arc<Modelled> {
        let mut model = fixed(us, 1).model;
        (model.cores, model.platform) = (Some(cores.clone()), true);
        Arc::new(Modelled::new(model, 1, instance, SlowKnob::default()))
    }

    /// Calls started together on `cores` (in one task, in the order given),
    /// each (instance, µs): when each completed, in µs after the start.
    async fn together(cores: &Cores, calls: &[(&str, u64)]) -> Vec<u128> {
        let start = Instant::now();
        let calls = calls.iter().map(|&(instance, us)| {
            let m = on(cores, instance, us);
            async move {
                m.process("x").await;
                Instant::now().duration_since(start).as_micros()
            }
        });
        futures::future::join_all(calls).await
    }

    /// Queued, a short call waits for the long one before it; time-shared,
    /// both advance at once, each at half the one core, and when the short
    /// one completes the long one has the core to itself.
    #[madsim::test]
    async fn time_shared_cores_hold_no_short_call_behind_a_long_one() {
        let (orders, loadgen, broker) = ("orders", "loadgen", "broker");
        assert_eq!(together(&Cores::new(1), &[(loadgen, 1_000), (orders, 100)]).await, vec![1_000, 1_100]);
        assert_eq!(together(&Cores::fair(1), &[(loadgen, 1_000), (orders, 100)]).await, vec![1_100, 200]);
        // Three calls on two cores: each at two thirds of a core.
        let three = [(loadgen, 300), (orders, 300), (broker, 300)];
        assert_eq!(together(&Cores::fair(2), &three).await, vec![450, 450, 450]);
        // No more calls than cores: each at a whole core.
        assert_eq!(together(&Cores::fair(2), &[(loadgen, 300), (orders, 100)]).await, vec![300, 100]);
    }

    /// A call that arrives mid-way slows the one in progress from then on.
    #[madsim::test]
    async fn a_call_arriving_on_time_shared_cores_slows_the_others() {
        let cores = Cores::fair(1);
        let start = Instant::now();
        let long = on(&cores, "loadgen", 400);
        let first = async move {
            long.process("x").await;
            Instant::now().duration_since(start).as_micros()
        };
        let second = async {
            fafnir_platform::time::sleep(Duration::from_micros(100)).await;
            // 300 µs left of the first; 100 µs of this one, both at half speed.
            on(&cores, "orders", 100).process("x").await;
            start.elapsed()
        };
        assert_eq!(tokio::join!(first, second), (500, Duration::from_micros(300)));
    }

    /// A call dropped half-way (its node killed) leaves the cores: it slows
    /// no later call, and the platform is idle again.
    #[madsim::test]
    async fn a_call_dropped_half_way_leaves_the_time_shared_cores() {
        let cores = Cores::fair(1);
        let long = on(&cores, "orders", 1_000);
        let cut = fafnir_platform::time::timeout(us(100), long.process("x")).await;
        assert!(cut.is_err(), "cut short");
        let start = Instant::now();
        on(&cores, "loadgen", 100).process("x").await;
        assert_eq!(start.elapsed(), us(100));
        fafnir_platform::time::sleep(us(10)).await;
        assert_eq!(cores.platform_gap(Instant::now()), us(10));
        // A per-message server's work cut short: it is idle again, and the
        // next message after a long gap pays the whole wake-up.
        let mut broker = per_message().model;
        broker.cores = Some(cores.clone());
        let broker = Modelled::new(broker, 1, "broker", SlowKnob::default());
        assert!(fafnir_platform::time::timeout(us(5), timed(&broker, 1)).await.is_err());
        fafnir_platform::time::sleep(us(1_000)).await;
        assert_eq!(timed(&broker, 1).await, us(110));
    }

    /// On time-shared cores, too, the platform is awake while its work is in progress.
    #[madsim::test]
    async fn the_platform_is_awake_while_its_time_shared_work_is_in_progress() {
        let cores = Cores::fair(2);
        let mut broker = per_message().model;
        broker.cores = Some(cores.clone());
        broker.reply_wake = Some(vec![(Duration::ZERO, Duration::ZERO), (Duration::from_micros(25), us(100))]);
        let broker = Modelled::new(broker, 1, "broker", SlowKnob::default());
        let service = on(&cores, "orders", 40);
        assert_eq!(broker.reply_delay(), us(100));
        let (_, during) = tokio::join!(service.process("x"), async {
            fafnir_platform::time::sleep(us(20)).await;
            broker.reply_delay()
        });
        assert_eq!(during, Duration::ZERO);
        fafnir_platform::time::sleep(us(10)).await;
        assert_eq!(broker.reply_delay(), us(40));
        // A per-message server's work on them: no wake-up share while it is busy.
        assert_eq!(timed(&broker, 1).await, us(110));
        let (a, b) = tokio::join!(timed(&broker, 1), timed(&broker, 1));
        assert_eq!((a, b), (us(10), us(10)));
        // After an idle gap, two together: the first pays the wake-up, the
        // second finds the server busy and does not.
        fafnir_platform::time::sleep(us(1_000)).await;
        let (a, b) = tokio::join!(timed(&broker, 1), timed(&broker, 1));
        assert_eq!((a, b), (us(110), us(10)));
    }

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
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
