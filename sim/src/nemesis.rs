//! A random nemesis with swarm testing: from one seed, a [`FaultSchedule`]
//! for the load phase of a run.
//!
//! Swarm testing (Groce et al., "Swarm Testing", ISSTA 2012): rather than
//! every run mixing every kind of fault at a fixed rate, each seed switches
//! each allowed kind on or off independently (at least one stays on) and draws,
//! for every kind on, its own rate and its own range of durations. Some seeds
//! then hammer one weakness hard while others mix several, which finds more
//! than one averaged mix would.
//!
//! A scenario file turns it on with a `[nemesis]` table ([`NemesisConfig`]):
//!
//! ```toml
//! [nemesis]
//! enabled = true
//! kinds = ["isolate", "partition_link", "kill_service", "packet_loss"]  # default: every kind
//! intensity_pct = 100      # scales every drawn rate (also accepted as `intensity`)
//! first_fault_ms = 500     # no fault starts before this
//! quiet_tail_ms = 1000     # every fault is over this long before the load ends
//! ```
//!
//! [`draw`] turns (seed, config, nodes, load length) into the options drawn
//! for the seed ([`NemesisOptions`], printed with the run's config) and the
//! schedule itself. Rules the schedule keeps, so that the world can undo every
//! fault cleanly:
//!
//! - every fault has a duration and ends by `load_ms - quiet_tail_ms`, so kills
//!   are restarts and the platform has a quiet tail to recover in;
//! - a node has at most one fault on it at a time (as target or as peer): undoing
//!   one fault never heals another (a partition's undo unclogs its link, a
//!   restart would end a pause);
//! - `packet_loss` and `latency_spike` windows never overlap, not even with each
//!   other: the world ends either by restoring its whole network model;
//! - `restart_all` holds every service node while it lasts (no other fault on
//!   a service overlaps it), and `reply_lost` windows never overlap each other
//!   (the end of one turns the switch off).
//!
//! Faults of each kind arrive as a Poisson process (10 ms slots, integer
//! probabilities); a fault whose node (or the network) is still busy when it
//! arrives is dropped, not delayed, and one that would outlast the window is cut
//! short at its end.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::faults::{Action, Fault, FaultSchedule};
use crate::rng::{derive_seed, SplitMix64};

/// A kind of fault the nemesis can draw (the names of `[nemesis] kinds`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// One node (any service, the broker or Redis) cut off the network.
    Isolate,
    /// The nodes split at random into two halves that cannot reach each other.
    PartitionHalves,
    /// One ordered pair of nodes: the first cannot reach the second.
    PartitionOneWay,
    /// One pair of nodes cut off from each other, both ways.
    PartitionLink,
    /// A service node killed and restarted (the gateway with a lower weight).
    KillService,
    /// The broker killed and restarted (file-stored streams survive).
    KillBroker,
    /// Redis killed and restarted (it loses its data).
    KillRedis,
    /// A window of packet loss on every link.
    PacketLoss,
    /// A window of high latency on every link.
    LatencySpike,
    /// A service node's modelled service time multiplied.
    Slow,
    /// A service node frozen.
    Pause,
    /// Every service node killed at once and all restarted (the broker and Redis stay up).
    RestartAll,
    /// A window in which a fraction of answers (the broker's replies, the
    /// order path's gRPC answers) is lost after the request took effect.
    ReplyLost,
}

impl Kind {
    pub const ALL: [Kind; 13] = [
        Kind::Isolate,
        Kind::PartitionHalves,
        Kind::PartitionOneWay,
        Kind::PartitionLink,
        Kind::KillService,
        Kind::KillBroker,
        Kind::KillRedis,
        Kind::PacketLoss,
        Kind::LatencySpike,
        Kind::Slow,
        Kind::Pause,
        Kind::RestartAll,
        Kind::ReplyLost,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Isolate => "isolate",
            Kind::PartitionHalves => "partition_halves",
            Kind::PartitionOneWay => "partition_one_way",
            Kind::PartitionLink => "partition_link",
            Kind::KillService => "kill_service",
            Kind::KillBroker => "kill_broker",
            Kind::KillRedis => "kill_redis",
            Kind::PacketLoss => "packet_loss",
            Kind::LatencySpike => "latency_spike",
            Kind::Slow => "slow",
            Kind::Pause => "pause",
            Kind::RestartAll => "restart_all",
            Kind::ReplyLost => "reply_lost",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The range a seed draws this kind's rate from, in faults per 10 s of load
    /// (thousandths), at intensity 100 %.
    fn per_10s_milli_range(self) -> [u32; 2] {
        match self {
            // Whole-cluster and stateful-dependency faults are the heaviest: rarer.
            Kind::PartitionHalves | Kind::KillBroker | Kind::KillRedis => [200, 1_000],
            // The whole platform down at once: the rarest.
            Kind::RestartAll => [100, 500],
            Kind::PacketLoss | Kind::LatencySpike => [300, 1_500],
            Kind::ReplyLost => [200, 1_000],
            _ => [300, 2_000],
        }
    }

    /// The range a seed draws this kind's duration range from, in ms.
    fn duration_ms_range(self) -> [u64; 2] {
        match self {
            Kind::Isolate | Kind::PartitionHalves | Kind::PartitionOneWay | Kind::PartitionLink => [100, 3_000],
            Kind::KillService => [100, 3_000],
            Kind::KillBroker | Kind::KillRedis => [100, 2_000],
            Kind::PacketLoss => [200, 4_000],
            Kind::LatencySpike => [100, 2_000],
            // Down for up to two seconds: long enough to break every
            // connection and lease, short enough to leave the load time to go on.
            Kind::RestartAll => [200, 2_000],
            Kind::ReplyLost => [300, 3_000],
            Kind::Slow => [500, 5_000],
            // Up to beyond the bus's 5 s ack wait: a stall as long as a bad
            // GC pause or a descheduled VM, which makes deliveries redeliver.
            Kind::Pause => [100, 8_000],
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Packet loss of a `packet_loss` fault, per million packets: 1 % to 20 %.
pub const PACKET_LOSS_PPM: [u32; 2] = [10_000, 200_000];
/// Answers lost by a `reply_lost` fault, per million: 1 % to 20 %.
pub const REPLY_LOST_PPM: [u32; 2] = [10_000, 200_000];
/// Bounds of a `latency_spike` fault's latency window, in ms.
pub const LATENCY_SPIKE_MS: [u64; 2] = [5, 200];
/// Service-time multiplier of a `slow` fault.
pub const SLOW_FACTOR: [u32; 2] = [2, 20];
/// `kill_service` draws the gateway with this weight and every other service
/// node with [`KILL_SERVICE_WEIGHT`]: killing the gateway cuts every client's
/// streams, which tests reconnection rather than the services behind it, so it
/// comes up about a quarter as often as any other service.
pub const KILL_GATEWAY_WEIGHT: u64 = 1;
pub const KILL_SERVICE_WEIGHT: u64 = 4;
/// Nodes that are not services (not targets of `kill_service`, `slow`, `pause`, `restart_all`).
pub const BROKER: &str = "broker";
pub const REDIS: &str = "redis";
const GATEWAY: &str = "gateway";
/// Arrivals are drawn per slot of this length.
const SLOT_MS: u64 = 10;
const INTENSITY_PCT_MAX: u32 = 1_000;

/// The `[nemesis]` table of a scenario file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NemesisConfig {
    /// Off by default: a scenario without the table runs only its own `[[fault]]`s.
    pub enabled: bool,
    /// The kinds a seed may switch on ([`Kind`] names); `None` allows every kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kinds: Option<Vec<String>>,
    /// Scales every drawn rate, in percent (1 to 1000).
    #[serde(alias = "intensity")]
    pub intensity_pct: u32,
    /// No fault is in force during the last this-many ms of the load.
    pub quiet_tail_ms: u64,
    /// No fault starts before this.
    pub first_fault_ms: u64,
}

impl Default for NemesisConfig {
    fn default() -> NemesisConfig {
        NemesisConfig { enabled: false, kinds: None, intensity_pct: 100, quiet_tail_ms: 1_000, first_fault_ms: 500 }
    }
}

impl NemesisConfig {
    /// Checks the table; the error names the field and the reason.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(kinds) = &self.kinds {
            if kinds.is_empty() {
                return Err("nemesis.kinds: empty (omit it to allow every kind, or set enabled = false)".into());
            }
            let mut seen = BTreeSet::new();
            for (i, name) in kinds.iter().enumerate() {
                if Kind::from_name(name).is_none() {
                    let expected: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
                    return Err(format!(
                        "nemesis.kinds[{i}]: unknown kind {name:?} (expected one of {})",
                        expected.join(", ")
                    ));
                }
                if !seen.insert(name.as_str()) {
                    return Err(format!("nemesis.kinds[{i}]: {name:?} is listed twice"));
                }
            }
        }
        if !(1..=INTENSITY_PCT_MAX).contains(&self.intensity_pct) {
            return Err(format!(
                "nemesis.intensity_pct: {} is not in 1..={INTENSITY_PCT_MAX} (set enabled = false for no faults)",
                self.intensity_pct
            ));
        }
        Ok(())
    }

    /// The kinds the table allows, in [`Kind::ALL`] order (after [`NemesisConfig::validate`]).
    pub fn allowed(&self) -> Vec<Kind> {
        match &self.kinds {
            None => Kind::ALL.to_vec(),
            Some(names) => Kind::ALL.into_iter().filter(|k| names.iter().any(|n| n == k.name())).collect(),
        }
    }

    /// The span faults must fit in, `[first_fault_ms, load_ms - quiet_tail_ms)`;
    /// `None` when the load is too short to leave one.
    pub fn window_ms(&self, load_ms: u64) -> Option<(u64, u64)> {
        let end = load_ms.checked_sub(self.quiet_tail_ms)?;
        (self.first_fault_ms < end).then_some((self.first_fault_ms, end))
    }
}

/// What one seed drew for one kind it switched on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindDraw {
    pub kind: Kind,
    /// Mean faults per 10 s of load, in thousandths (1400 = 1.4 per 10 s), intensity applied.
    pub per_10s_milli: u32,
    /// Each fault's duration is uniform in this range (inclusive).
    pub duration_ms: [u64; 2],
}

/// What the swarm drew for one seed: the kinds on, with their rates and
/// durations, and the allowed kinds it switched off. Empty when the nemesis is
/// disabled; otherwise at least one kind is on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NemesisOptions {
    pub off: Vec<Kind>,
    pub on: Vec<KindDraw>,
}

impl NemesisOptions {
    pub fn get(&self, kind: Kind) -> Option<&KindDraw> {
        self.on.iter().find(|d| d.kind == kind)
    }

    pub fn is_on(&self, kind: Kind) -> bool {
        self.get(kind).is_some()
    }

    /// One line per allowed kind, in [`Kind::ALL`] order:
    /// `kill_service: on, 1.4/10s, 200..1500 ms` or `pause: off`.
    pub fn describe(&self) -> String {
        let mut out = format!("nemesis: {} of {} kinds on", self.on.len(), self.on.len() + self.off.len());
        for kind in Kind::ALL {
            if let Some(d) = self.get(kind) {
                let [lo, hi] = d.duration_ms;
                out += &format!("\n  {kind}: on, {}/10s, {lo}..{hi} ms", thousandths(d.per_10s_milli));
            } else if self.off.contains(&kind) {
                out += &format!("\n  {kind}: off");
            }
        }
        out
    }
}

impl fmt::Display for NemesisOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// `1400` as "1.4", `50` as "0.05", `2000` as "2".
fn thousandths(milli: u32) -> String {
    let (whole, frac) = (milli / 1_000, milli % 1_000);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:03}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// The nodes a kind can hit, from the world's node names.
struct Targets {
    /// Every node, sorted, so that the input order does not matter.
    all: Vec<String>,
    /// Every node but the broker and Redis.
    services: Vec<String>,
}

impl Targets {
    fn new(nodes: &[String]) -> Targets {
        let all: Vec<String> = nodes.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect();
        let services = all.iter().filter(|n| *n != BROKER && *n != REDIS).cloned().collect();
        Targets { all, services }
    }

    fn has(&self, name: &str) -> bool {
        self.all.iter().any(|n| n == name)
    }

    /// Whether the world has what `kind` needs (a broker for `kill_broker`, ...).
    fn can(&self, kind: Kind) -> bool {
        match kind {
            Kind::Isolate => !self.all.is_empty(),
            Kind::PartitionHalves | Kind::PartitionOneWay | Kind::PartitionLink => self.all.len() >= 2,
            Kind::KillService | Kind::Slow | Kind::Pause | Kind::RestartAll => !self.services.is_empty(),
            Kind::KillBroker => self.has(BROKER),
            Kind::KillRedis => self.has(REDIS),
            Kind::PacketLoss | Kind::LatencySpike | Kind::ReplyLost => true,
        }
    }
}

/// Draws the options and the schedule of one seed; the same arguments always
/// give the same result. `seed` is the run's root seed: every draw here uses a
/// seed derived from it under a `nemesis.` name, one per kind, so restricting
/// `kinds` does not reshuffle the kinds that remain. `nodes` are the world's
/// node names (`World::node_names` in the simulated build);
/// kinds whose nodes are missing (no `redis`, one node only) are not drawn.
///
/// Panics if `cfg` does not validate: configs are checked when loaded.
pub fn draw(seed: u64, cfg: &NemesisConfig, nodes: &[String], load_ms: u64) -> (NemesisOptions, FaultSchedule) {
    cfg.validate().unwrap_or_else(|e| panic!("nemesis config was not validated: {e}"));
    if !cfg.enabled {
        return (NemesisOptions::default(), FaultSchedule::default());
    }
    let targets = Targets::new(nodes);
    let allowed: Vec<Kind> = cfg.allowed().into_iter().filter(|k| targets.can(*k)).collect();
    let options = draw_options(seed, &allowed, cfg.intensity_pct);
    let schedule = match cfg.window_ms(load_ms) {
        Some(window) => draw_schedule(seed, &options, &targets, window),
        None => FaultSchedule::default(),
    };
    let valid = schedule.validate(&targets.all);
    assert!(valid.is_ok(), "the nemesis drew an invalid schedule: {valid:?}");
    (options, schedule)
}

/// The swarm: each allowed kind on with probability 1/2, at least one on.
fn draw_options(seed: u64, allowed: &[Kind], intensity_pct: u32) -> NemesisOptions {
    let mut options = NemesisOptions::default();
    let mut drawn = Vec::new();
    for &kind in allowed {
        let mut rng = SplitMix64::new(derive_seed(seed, &format!("nemesis.{kind}")));
        // Every draw is made whether the kind is on or not, so that the swarm's
        // choice below never shifts a kind's rate or durations.
        let on = rng.next_u64() & 1 == 1;
        let [rate_lo, rate_hi] = kind.per_10s_milli_range();
        let base = rng.range(u64::from(rate_lo), u64::from(rate_hi));
        let per_10s_milli = u32::try_from(base * u64::from(intensity_pct) / 100).expect("rate fits").max(1);
        let [d_lo, d_hi] = kind.duration_ms_range();
        let (a, b) = (rng.range(d_lo, d_hi), rng.range(d_lo, d_hi));
        drawn.push((on, KindDraw { kind, per_10s_milli, duration_ms: [a.min(b), a.max(b)] }));
    }
    if !drawn.is_empty() && drawn.iter().all(|(on, _)| !on) {
        let mut rng = SplitMix64::new(derive_seed(seed, "nemesis.swarm"));
        let i = rng.range(0, drawn.len() as u64 - 1) as usize;
        drawn[i].0 = true;
    }
    for (on, d) in drawn {
        if on {
            options.on.push(d);
        } else {
            options.off.push(d.kind);
        }
    }
    assert!(allowed.is_empty() || !options.on.is_empty(), "the swarm leaves at least one kind on");
    options
}

/// One arrival of a kind: its faults (one, or one per cross pair for halves),
/// all starting at `at_ms` and lasting `duration_ms`.
struct Arrival {
    at_ms: u64,
    kind: Kind,
    duration_ms: u64,
    faults: Vec<Fault>,
    /// What it holds while in force (see [`Arrival::holds`]).
    holds: BTreeSet<String>,
}

/// What `packet_loss` and `latency_spike` hold: the network model.
const NETWORK: &str = "(network)";
/// What `reply_lost` holds: the answer-loss switch.
const REPLIES: &str = "(replies)";

impl Arrival {
    fn new(at_ms: u64, kind: Kind, duration_ms: u64, faults: Vec<Fault>, targets: &Targets) -> Arrival {
        let holds = Arrival::holds(kind, &faults, targets);
        Arrival { at_ms, kind, duration_ms, faults, holds }
    }

    /// The nodes it acts on (every service for `restart_all`), and the
    /// network model or the answer-loss switch for the kinds that set them:
    /// two faults holding one of these never overlap.
    fn holds(kind: Kind, faults: &[Fault], targets: &Targets) -> BTreeSet<String> {
        let mut holds: BTreeSet<String> =
            faults.iter().flat_map(|f| f.target.iter().chain(f.peer.iter())).cloned().collect();
        match kind {
            Kind::RestartAll => holds.extend(targets.services.iter().cloned()),
            Kind::PacketLoss | Kind::LatencySpike => {
                holds.insert(NETWORK.to_string());
            }
            Kind::ReplyLost => {
                holds.insert(REPLIES.to_string());
            }
            _ => {}
        }
        holds
    }
}

fn draw_schedule(seed: u64, options: &NemesisOptions, targets: &Targets, (start, end): (u64, u64)) -> FaultSchedule {
    assert!(start < end);
    let mut arrivals = Vec::new();
    for d in &options.on {
        let mut rng = SplitMix64::new(derive_seed(seed, &format!("nemesis.{}.arrivals", d.kind)));
        let mut slot = start;
        while slot < end {
            // One slot is SLOT_MS of a 10 s period: per_10s_milli / 1000 * SLOT_MS / 10_000.
            let hit = rng.next_u64() % 1_000_000 < u64::from(d.per_10s_milli);
            let at_ms = slot + rng.range(0, SLOT_MS - 1);
            if hit && at_ms < end {
                let duration_ms = rng.range(d.duration_ms[0], d.duration_ms[1]);
                let faults = faults_of(d.kind, at_ms, &mut rng, targets);
                arrivals.push(Arrival::new(at_ms, d.kind, duration_ms, faults, targets));
            }
            slot += SLOT_MS;
        }
    }
    arrivals.sort_by_key(|a| (a.at_ms, a.kind));
    admit(arrivals, end)
}

/// Keeps the arrivals whose nodes (and network model, and answer-loss
/// switch) are free when they come, cut short at `end`; returns their faults
/// in time order.
fn admit(arrivals: Vec<Arrival>, end: u64) -> FaultSchedule {
    let mut free_at_ms: BTreeMap<String, u64> = BTreeMap::new();
    let mut schedule = FaultSchedule::default();
    for mut a in arrivals {
        let busy = a.holds.iter().any(|n| free_at_ms.get(n).is_some_and(|&t| t > a.at_ms));
        if busy {
            continue;
        }
        let duration_ms = a.duration_ms.min(end - a.at_ms);
        assert!(duration_ms > 0 && a.at_ms + duration_ms <= end);
        let until = a.at_ms + duration_ms;
        for n in std::mem::take(&mut a.holds) {
            free_at_ms.insert(n, until);
        }
        for f in &mut a.faults {
            f.duration_ms = Some(duration_ms);
        }
        if let Some(last) = schedule.faults.last() {
            assert!(last.at_ms <= a.at_ms, "admitted in time order");
        }
        schedule.faults.append(&mut a.faults);
    }
    schedule
}

/// The faults of one arrival of `kind` at `at_ms` (durations are set on admission).
fn faults_of(kind: Kind, at_ms: u64, rng: &mut SplitMix64, targets: &Targets) -> Vec<Fault> {
    let on = |action: Action, target: &str| Fault::new(at_ms, action, Some(target));
    match kind {
        Kind::Isolate => vec![on(Action::Isolate, pick(rng, &targets.all))],
        Kind::PartitionHalves => halves(rng, &targets.all)
            .into_iter()
            .map(|(a, b)| Fault { peer: Some(b.to_string()), ..on(Action::Partition, a) })
            .collect(),
        Kind::PartitionOneWay | Kind::PartitionLink => {
            let (a, b) = pair(rng, &targets.all);
            vec![Fault {
                peer: Some(b.to_string()),
                one_way: kind == Kind::PartitionOneWay,
                ..on(Action::Partition, a)
            }]
        }
        Kind::KillService => vec![on(Action::Kill, pick_kill_service(rng, &targets.services))],
        Kind::KillBroker => vec![on(Action::Kill, BROKER)],
        Kind::KillRedis => vec![on(Action::Kill, REDIS)],
        Kind::PacketLoss => {
            let rate_ppm = rng.range(u64::from(PACKET_LOSS_PPM[0]), u64::from(PACKET_LOSS_PPM[1]));
            vec![Fault {
                rate_ppm: Some(u32::try_from(rate_ppm).expect("ppm fits")),
                ..Fault::new(at_ms, Action::PacketLoss, None)
            }]
        }
        Kind::LatencySpike => {
            let [floor, ceiling] = LATENCY_SPIKE_MS;
            let (a, b) = (rng.range(floor, ceiling), rng.range(floor, ceiling));
            vec![Fault { latency_ms: Some([a.min(b), a.max(b)]), ..Fault::new(at_ms, Action::LatencySpike, None) }]
        }
        Kind::Slow => {
            let factor = rng.range(u64::from(SLOW_FACTOR[0]), u64::from(SLOW_FACTOR[1]));
            let target = pick(rng, &targets.services);
            vec![Fault { factor: Some(u32::try_from(factor).expect("factor fits")), ..on(Action::Slow, target) }]
        }
        Kind::Pause => vec![on(Action::Pause, pick(rng, &targets.services))],
        Kind::RestartAll => vec![Fault::new(at_ms, Action::RestartAll, None)],
        Kind::ReplyLost => {
            let rate_ppm = rng.range(u64::from(REPLY_LOST_PPM[0]), u64::from(REPLY_LOST_PPM[1]));
            vec![Fault {
                rate_ppm: Some(u32::try_from(rate_ppm).expect("ppm fits")),
                ..Fault::new(at_ms, Action::ReplyLost, None)
            }]
        }
    }
}

fn pick<'a>(rng: &mut SplitMix64, from: &'a [String]) -> &'a str {
    assert!(!from.is_empty(), "a kind is drawn only when it has targets");
    &from[rng.range(0, from.len() as u64 - 1) as usize]
}

fn pick_kill_service<'a>(rng: &mut SplitMix64, services: &'a [String]) -> &'a str {
    let weight = |n: &String| if n == GATEWAY { KILL_GATEWAY_WEIGHT } else { KILL_SERVICE_WEIGHT };
    let total: u64 = services.iter().map(weight).sum();
    assert!(total > 0, "a kind is drawn only when it has targets");
    let mut x = rng.range(0, total - 1);
    for n in services {
        if x < weight(n) {
            return n;
        }
        x -= weight(n);
    }
    unreachable!("x < total")
}

/// Two distinct nodes, in a random order.
fn pair<'a>(rng: &mut SplitMix64, all: &'a [String]) -> (&'a str, &'a str) {
    assert!(all.len() >= 2, "a partition needs two nodes");
    let i = rng.range(0, all.len() as u64 - 1) as usize;
    let j = (i + 1 + rng.range(0, all.len() as u64 - 2) as usize) % all.len();
    assert_ne!(i, j);
    (&all[i], &all[j])
}

/// A random split of `all` into halves (sizes n/2 and n - n/2): every cross pair (a, b).
fn halves<'a>(rng: &mut SplitMix64, all: &'a [String]) -> Vec<(&'a str, &'a str)> {
    assert!(all.len() >= 2, "halves need two nodes");
    let mut shuffled: Vec<&str> = all.iter().map(String::as_str).collect();
    for i in (1..shuffled.len()).rev() {
        let j = rng.range(0, i as u64) as usize;
        shuffled.swap(i, j);
    }
    let (left, right) = shuffled.split_at(shuffled.len() / 2);
    let mut left = left.to_vec();
    let mut right = right.to_vec();
    left.sort_unstable();
    right.sort_unstable();
    left.iter().flat_map(|a| right.iter().map(move |b| (*a, *b))).collect()
}

/// The kind of one fault, for reporting. A both-way partition is
/// `partition_link` here: a halves split is several of them at once, which only
/// [`count_kinds`] can see.
pub fn kind_of(f: &Fault) -> Kind {
    match f.action {
        Action::Isolate => Kind::Isolate,
        Action::Partition if f.one_way => Kind::PartitionOneWay,
        Action::Partition => Kind::PartitionLink,
        Action::Kill => match f.target.as_deref() {
            Some(BROKER) => Kind::KillBroker,
            Some(REDIS) => Kind::KillRedis,
            _ => Kind::KillService,
        },
        Action::Pause => Kind::Pause,
        Action::Slow => Kind::Slow,
        Action::PacketLoss => Kind::PacketLoss,
        Action::LatencySpike => Kind::LatencySpike,
        Action::RestartAll => Kind::RestartAll,
        Action::ReplyLost => Kind::ReplyLost,
    }
}

/// Each fault's kind, a halves split (two or more both-way partitions with
/// the same start and duration) as `partition_halves`, and whether the fault
/// stands for its whole split (true for every fault but a split's later ones).
pub fn kinds(faults: &[Fault]) -> Vec<(Kind, bool)> {
    let mut links: BTreeMap<(u64, Option<u64>), u32> = BTreeMap::new();
    for f in faults.iter().filter(|f| kind_of(f) == Kind::PartitionLink) {
        *links.entry((f.at_ms, f.duration_ms)).or_default() += 1;
    }
    let mut seen = BTreeSet::new();
    faults
        .iter()
        .map(|f| match kind_of(f) {
            Kind::PartitionLink if links[&(f.at_ms, f.duration_ms)] > 1 => {
                (Kind::PartitionHalves, seen.insert((f.at_ms, f.duration_ms)))
            }
            kind => (kind, true),
        })
        .collect()
}

/// How many faults of each kind a schedule holds, counting a halves split
/// once as `partition_halves`. Kinds with no fault are absent.
pub fn count_kinds(faults: &[Fault]) -> BTreeMap<Kind, u32> {
    let mut counts = BTreeMap::new();
    for (kind, _) in kinds(faults).into_iter().filter(|(_, stands)| *stands) {
        *counts.entry(kind).or_default() += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOAD_MS: u64 = 10_000;

    fn nodes() -> Vec<String> {
        ["auth", "broker", "engine-0", "engine-1", "gateway", "market", "orders", "portfolio", "redis"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn enabled() -> NemesisConfig {
        NemesisConfig { enabled: true, ..NemesisConfig::default() }
    }

    fn only(kinds: &[&str]) -> NemesisConfig {
        NemesisConfig { kinds: Some(kinds.iter().map(|s| s.to_string()).collect()), ..enabled() }
    }

    fn on_set(o: &NemesisOptions) -> Vec<Kind> {
        o.on.iter().map(|d| d.kind).collect()
    }

    #[test]
    fn the_same_seed_draws_the_same() {
        for seed in [0, 1, 42, u64::MAX] {
            let a = draw(seed, &enabled(), &nodes(), LOAD_MS);
            let b = draw(seed, &enabled(), &nodes(), LOAD_MS);
            assert_eq!(a, b);
            // The order the nodes come in does not matter.
            let mut reversed = nodes();
            reversed.reverse();
            assert_eq!(draw(seed, &enabled(), &reversed, LOAD_MS), a);
        }
    }

    #[test]
    fn different_seeds_draw_different_swarms() {
        let sets: BTreeSet<Vec<Kind>> = (0..8).map(|s| on_set(&draw(s, &enabled(), &nodes(), LOAD_MS).0)).collect();
        assert!(sets.len() >= 2, "{sets:?}");
        let schedules: BTreeSet<String> = (0..8).map(|s| draw(s, &enabled(), &nodes(), LOAD_MS).1.to_toml()).collect();
        assert!(schedules.len() >= 2);
    }

    /// Every fault's interval on every node it touches (`restart_all`: every
    /// service); a halves split counts once per node (all its faults share one interval).
    fn node_intervals(s: &FaultSchedule) -> BTreeMap<String, BTreeSet<(u64, u64)>> {
        let services: Vec<String> = nodes().into_iter().filter(|n| n != BROKER && n != REDIS).collect();
        let mut by_node: BTreeMap<String, BTreeSet<(u64, u64)>> = BTreeMap::new();
        for f in &s.faults {
            let span = (f.at_ms, f.at_ms + f.duration_ms.unwrap());
            let all = if f.action == Action::RestartAll { &services[..] } else { &[] };
            for n in f.target.iter().chain(f.peer.iter()).chain(all) {
                let fresh = by_node.entry(n.clone()).or_default().insert(span);
                let is_halves_link = f.action == Action::Partition && !f.one_way;
                assert!(fresh || is_halves_link, "{n} has two faults over {span:?}");
            }
        }
        by_node
    }

    fn assert_disjoint(what: &str, spans: impl IntoIterator<Item = (u64, u64)>) {
        let mut last_end = 0;
        for (start, end) in spans {
            assert!(start >= last_end, "{what}: a fault at {start} overlaps one ending at {last_end}");
            last_end = end;
        }
    }

    #[test]
    fn every_schedule_keeps_the_rules() {
        let cfg = enabled();
        let (start, end) = cfg.window_ms(LOAD_MS).unwrap();
        assert_eq!((start, end), (500, 9_000));
        let mut total = 0;
        for seed in 0..200 {
            let (options, s) = draw(seed, &cfg, &nodes(), LOAD_MS);
            assert!(!options.on.is_empty());
            s.validate(&nodes()).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert_eq!(s.sorted(), s.faults, "seed {seed}: not in time order");
            for f in &s.faults {
                let d = f.duration_ms.unwrap_or_else(|| panic!("seed {seed}: {f:?} has no duration"));
                assert!(f.at_ms >= start && f.at_ms + d <= end, "seed {seed}: {f:?} outside [{start}, {end})");
                assert!(options.is_on(kind_of(f)) || options.is_on(Kind::PartitionHalves), "seed {seed}: {f:?}");
            }
            for (node, spans) in node_intervals(&s) {
                assert_disjoint(&format!("seed {seed} node {node}"), spans);
            }
            let network = s.faults.iter().filter(|f| matches!(f.action, Action::PacketLoss | Action::LatencySpike));
            assert_disjoint(
                &format!("seed {seed} network"),
                network.map(|f| (f.at_ms, f.at_ms + f.duration_ms.unwrap())),
            );
            let lost = s.faults.iter().filter(|f| f.action == Action::ReplyLost);
            assert_disjoint(&format!("seed {seed} replies"), lost.map(|f| (f.at_ms, f.at_ms + f.duration_ms.unwrap())));
            for f in s.faults.iter().filter(|f| f.action == Action::ReplyLost) {
                let ppm = f.rate_ppm.unwrap();
                assert!((REPLY_LOST_PPM[0]..=REPLY_LOST_PPM[1]).contains(&ppm), "seed {seed}: {f:?}");
            }
            total += s.faults.len();
        }
        assert!(total > 400, "only {total} faults over 200 seeds");
    }

    #[test]
    fn the_kinds_restriction_is_kept() {
        let allowed = [Kind::KillBroker, Kind::PacketLoss, Kind::Pause];
        let cfg = only(&["kill_broker", "packet_loss", "pause"]);
        let mut seen = BTreeSet::new();
        for seed in 0..100 {
            let (options, s) = draw(seed, &cfg, &nodes(), LOAD_MS);
            assert_eq!(options.on.len() + options.off.len(), 3);
            assert!(on_set(&options).iter().all(|k| allowed.contains(k)), "{options}");
            for f in &s.faults {
                assert!(allowed.contains(&kind_of(f)), "seed {seed}: {f:?}");
                seen.insert(kind_of(f));
            }
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), allowed);
    }

    #[test]
    fn restricting_kinds_does_not_reshuffle_the_rest() {
        let all = draw(7, &enabled(), &nodes(), LOAD_MS).0;
        let d = all.on[0].clone();
        let narrowed = draw(7, &only(&[d.kind.name(), "pause"]), &nodes(), LOAD_MS).0;
        assert_eq!(narrowed.get(d.kind), Some(&d));
    }

    #[test]
    fn a_bad_table_is_refused_with_the_field_and_the_reason() {
        let parse = |text: &str| {
            toml::from_str::<NemesisConfig>(text).map_err(|e| e.to_string()).and_then(|c| {
                c.validate()?;
                Ok(c)
            })
        };
        let e = parse("enabled = true\nkinds = [\"isolate\", \"pause\", \"explode\"]\n").unwrap_err();
        assert!(e.starts_with("nemesis.kinds[2]: unknown kind \"explode\" (expected one of isolate, "), "{e}");
        assert!(e.contains("kill_redis"), "{e}");
        let e = parse("kinds = [\"pause\", \"pause\"]\n").unwrap_err();
        assert!(e.contains("nemesis.kinds[1]") && e.contains("twice"), "{e}");
        assert!(parse("kinds = []\n").unwrap_err().contains("nemesis.kinds: empty"));
        assert!(parse("intensity_pct = 0\n").unwrap_err().contains("nemesis.intensity_pct"));
        assert!(parse("colour = 3\n").unwrap_err().contains("colour"));
        // Defaults, and `intensity` as an alias.
        assert_eq!(parse("").unwrap(), NemesisConfig::default());
        let c = parse("enabled = true\nintensity = 250\nquiet_tail_ms = 2000\nfirst_fault_ms = 0\n").unwrap();
        assert_eq!(c, NemesisConfig { intensity_pct: 250, quiet_tail_ms: 2_000, first_fault_ms: 0, ..enabled() });
        assert_eq!(toml::from_str::<NemesisConfig>(&toml::to_string(&c).unwrap()).unwrap(), c);
    }

    #[test]
    fn the_swarm_switches_every_kind_both_ways() {
        let mut on = BTreeMap::<Kind, u32>::new();
        for seed in 0..200 {
            let (options, _) = draw(seed, &enabled(), &nodes(), LOAD_MS);
            assert!(!options.on.is_empty());
            assert_eq!(options.on.len() + options.off.len(), Kind::ALL.len());
            for k in on_set(&options) {
                *on.entry(k).or_default() += 1;
            }
        }
        for k in Kind::ALL {
            let n = on.get(&k).copied().unwrap_or(0);
            assert!(n > 0 && n < 200, "{k} on in {n} of 200 seeds");
        }
    }

    #[test]
    fn a_halves_split_cuts_every_cross_pair() {
        let all = nodes();
        let cfg = only(&["partition_halves"]);
        let mut splits = 0;
        for seed in 0..20 {
            let (_, s) = draw(seed, &cfg, &all, LOAD_MS);
            let mut by_start: BTreeMap<u64, Vec<&Fault>> = BTreeMap::new();
            for f in &s.faults {
                by_start.entry(f.at_ms).or_default().push(f);
            }
            for group in by_start.values() {
                let left: BTreeSet<&String> = group.iter().map(|f| f.target.as_ref().unwrap()).collect();
                let right: BTreeSet<&String> = group.iter().map(|f| f.peer.as_ref().unwrap()).collect();
                assert!(left.is_disjoint(&right));
                assert_eq!(left.len() + right.len(), all.len());
                assert_eq!(left.len(), all.len() / 2);
                assert_eq!(group.len(), left.len() * right.len());
                let pairs: BTreeSet<(&String, &String)> =
                    group.iter().map(|f| (f.target.as_ref().unwrap(), f.peer.as_ref().unwrap())).collect();
                assert_eq!(pairs.len(), group.len(), "a pair twice");
                assert!(group.iter().all(|f| !f.one_way && f.duration_ms == group[0].duration_ms));
                splits += 1;
            }
            let counts = count_kinds(&s.faults);
            assert_eq!(counts.get(&Kind::PartitionHalves).copied().unwrap_or(0) as usize, by_start.len());
            assert!(!counts.contains_key(&Kind::PartitionLink));
        }
        assert!(splits >= 10, "only {splits} splits over 20 seeds");
    }

    #[test]
    fn faults_are_classified_by_kind() {
        let mut seen = BTreeSet::new();
        for seed in 0..50 {
            let (options, s) = draw(seed, &enabled(), &nodes(), LOAD_MS);
            for kind in count_kinds(&s.faults).into_keys() {
                assert!(options.is_on(kind), "seed {seed}: {kind} counted but off");
                seen.insert(kind);
            }
        }
        assert_eq!(seen.len(), Kind::ALL.len(), "{seen:?}");
        let kill = |t: &str| kind_of(&Fault::new(0, Action::Kill, Some(t)).lasting(1));
        assert_eq!(
            (kill("broker"), kill("redis"), kill("engine-0")),
            (Kind::KillBroker, Kind::KillRedis, Kind::KillService)
        );
        assert_eq!(kind_of(&Fault::new(0, Action::RestartAll, None).lasting(1)), Kind::RestartAll);
        let lost = Fault { rate_ppm: Some(1), ..Fault::new(0, Action::ReplyLost, None) };
        assert_eq!(kind_of(&lost), Kind::ReplyLost);
    }

    #[test]
    fn intensity_scales_the_rates() {
        let twice = NemesisConfig { intensity_pct: 200, ..enabled() };
        let (mut faults_1x, mut faults_2x) = (0, 0);
        for seed in 0..50 {
            let (a, sa) = draw(seed, &enabled(), &nodes(), LOAD_MS);
            let (b, sb) = draw(seed, &twice, &nodes(), LOAD_MS);
            assert_eq!(on_set(&a), on_set(&b));
            for (x, y) in a.on.iter().zip(&b.on) {
                assert_eq!(x.per_10s_milli * 2, y.per_10s_milli);
                assert_eq!(x.duration_ms, y.duration_ms);
            }
            faults_1x += count_kinds(&sa.faults).values().sum::<u32>();
            faults_2x += count_kinds(&sb.faults).values().sum::<u32>();
        }
        assert!(faults_2x > faults_1x, "{faults_2x} at 200% vs {faults_1x} at 100%");
    }

    #[test]
    fn disabled_or_short_or_small_worlds_draw_what_they_can() {
        assert_eq!(draw(1, &NemesisConfig::default(), &nodes(), LOAD_MS), Default::default());
        // A load shorter than first fault + quiet tail: options, but no faults.
        let (options, s) = draw(1, &enabled(), &nodes(), 1_500);
        assert!(!options.on.is_empty() && s.faults.is_empty());
        // One node without broker or Redis: only what it can take.
        let one = vec!["engine-0".to_string()];
        for seed in 0..50 {
            let (options, s) = draw(seed, &enabled(), &one, LOAD_MS);
            let drawable = [
                Kind::Isolate,
                Kind::KillService,
                Kind::PacketLoss,
                Kind::LatencySpike,
                Kind::Slow,
                Kind::Pause,
                Kind::RestartAll,
                Kind::ReplyLost,
            ];
            assert!(on_set(&options).iter().chain(&options.off).all(|k| drawable.contains(k)), "{options}");
            s.validate(&one).unwrap();
        }
        // Nothing allowed can be drawn: nothing on, nothing scheduled.
        let (options, s) = draw(1, &only(&["kill_redis"]), &one, LOAD_MS);
        assert_eq!((options, s), Default::default());
    }

    #[test]
    fn options_describe_and_round_trip() {
        let options = NemesisOptions {
            off: vec![Kind::Pause],
            on: vec![
                KindDraw { kind: Kind::KillService, per_10s_milli: 1_400, duration_ms: [200, 1_500] },
                KindDraw { kind: Kind::PacketLoss, per_10s_milli: 50, duration_ms: [300, 300] },
            ],
        };
        assert_eq!(
            options.to_string(),
            "nemesis: 2 of 3 kinds on\n  kill_service: on, 1.4/10s, 200..1500 ms\n  \
             packet_loss: on, 0.05/10s, 300..300 ms\n  pause: off"
        );
        let text = toml::to_string(&options).unwrap();
        assert_eq!(toml::from_str::<NemesisOptions>(&text).unwrap(), options);
        let (drawn, _) = draw(3, &enabled(), &nodes(), LOAD_MS);
        assert_eq!(toml::from_str::<NemesisOptions>(&toml::to_string(&drawn).unwrap()).unwrap(), drawn);
        assert_eq!(thousandths(2_000), "2");
        assert_eq!(thousandths(1_234), "1.234");
    }
}
