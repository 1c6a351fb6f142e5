//! Faults as data. A fault is (time, action, target, duration): it is applied
//! `at_ms` after the world starts and undone `duration_ms` later (a fault
//! without a duration lasts to the end, except that a killed node given a
//! duration is restarted when it ends). A schedule prints, saves and loads as
//! TOML, so a run's faults can be replayed exactly:
//!
//! ```toml
//! [[fault]]
//! at_ms = 2000
//! action = "kill"          # isolate | partition | kill | pause | slow | packet_loss | latency_spike
//! target = "engine-0"
//! duration_ms = 1500
//!
//! [[fault]]
//! at_ms = 5000
//! action = "partition"
//! target = "engine-0"
//! peer = "broker"
//! one_way = true           # engine-0 -> broker only
//! duration_ms = 3000
//! ```
//!
//! How madsim turns these into network behaviour: its connections are
//! reliable ordered channels. A message sent while the link is clogged
//! (isolate, partition) or that draws a packet loss is not dropped: the
//! channel retries it with exponential backoff (1 ms doubling up to 10 s) and
//! delivers it, in order, once the link passes. So packet loss shows as delay
//! and jitter, and a partition as a stall whose messages arrive after it heals
//! (up to one backoff step late); requests time out at the caller meanwhile.
//! New connections to a clogged peer are refused.
//!
//! A floor under every simulated latency: madsim's `sleep_until` never sleeps
//! less than 1 ms (to match tokio), and both its per-send random delay and its
//! channel delivery sleep through it. So each simulated message costs at least
//! about 1 ms of simulated time whatever the configured latency, and a gRPC
//! call through madsim-tonic (bind, handshake, request, reply) about 4-8 ms.
//! Simulated latencies are therefore good for comparing runs and seeing
//! queueing and faults, not as absolute microsecond figures.

use serde::{Deserialize, Serialize};

/// What a fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Cut `target` off the network, both directions.
    Isolate,
    /// Cut the link between `target` and `peer` (only target -> peer if `one_way`).
    Partition,
    /// Kill `target`; with a duration it is restarted when the fault ends.
    Kill,
    /// Freeze `target` (no task runs) until the fault ends.
    Pause,
    /// Multiply `target`'s modelled service time by `factor`.
    Slow,
    /// Lose `rate_ppm` of a million packets anywhere (shows as delay; see the module docs).
    PacketLoss,
    /// Raise every link's latency to between `latency_ms[0]` and `latency_ms[1]`.
    LatencySpike,
}

/// One fault. Fields an action does not use must be absent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    pub at_ms: u64,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub one_way: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_ppm: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<[u64; 2]>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A list of faults in time order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSchedule {
    #[serde(default, rename = "fault")]
    pub faults: Vec<Fault>,
}

impl Fault {
    /// A fault with only time, action and target set.
    pub fn new(at_ms: u64, action: Action, target: Option<&str>) -> Fault {
        Fault {
            at_ms,
            action,
            target: target.map(str::to_string),
            peer: None,
            one_way: false,
            duration_ms: None,
            factor: None,
            rate_ppm: None,
            latency_ms: None,
        }
    }

    pub fn lasting(mut self, duration_ms: u64) -> Fault {
        self.duration_ms = Some(duration_ms);
        self
    }

    /// Checks the fault names what its action needs and nothing else;
    /// `nodes` are the names a target or peer may take.
    pub fn validate(&self, nodes: &[String]) -> Result<(), String> {
        let needs_target = !matches!(self.action, Action::PacketLoss | Action::LatencySpike);
        match (&self.target, needs_target) {
            (None, true) => return Err(format!("target: {:?} needs a target node", self.action)),
            (Some(_), false) => return Err(format!("target: {:?} applies to the whole network", self.action)),
            (Some(t), true) if !nodes.contains(t) => {
                return Err(format!("target: no node {t:?} (nodes: {})", nodes.join(", ")));
            }
            _ => {}
        }
        let is = |a: Action| self.action == a;
        check_field("peer", self.peer.is_some(), is(Action::Partition))?;
        if let Some(p) = &self.peer {
            if !nodes.contains(p) {
                return Err(format!("peer: no node {p:?}"));
            }
            if Some(p) == self.target.as_ref() {
                return Err("peer: a node cannot be partitioned from itself".into());
            }
        }
        if self.one_way && !is(Action::Partition) {
            return Err("one_way: only a partition can be one-way".into());
        }
        check_field("factor", self.factor.is_some(), is(Action::Slow))?;
        check_field("rate_ppm", self.rate_ppm.is_some(), is(Action::PacketLoss))?;
        check_field("latency_ms", self.latency_ms.is_some(), is(Action::LatencySpike))?;
        if self.factor == Some(0) {
            return Err("factor: must be at least 1".into());
        }
        if self.rate_ppm.is_some_and(|r| r > 1_000_000) {
            return Err("rate_ppm: at most 1000000 (every packet)".into());
        }
        if let Some([lo, hi]) = self.latency_ms {
            if lo > hi {
                return Err(format!("latency_ms: [{lo}, {hi}] is not [low, high]"));
            }
        }
        if self.duration_ms == Some(0) {
            return Err("duration_ms: must be positive when given".into());
        }
        Ok(())
    }
}

fn check_field(name: &str, present: bool, wanted: bool) -> Result<(), String> {
    match (present, wanted) {
        (false, true) => Err(format!("{name}: required by this action")),
        (true, false) => Err(format!("{name}: not used by this action")),
        _ => Ok(()),
    }
}

impl FaultSchedule {
    /// Parses a schedule; the error names the fault and the field.
    pub fn from_toml(text: &str, nodes: &[String]) -> Result<FaultSchedule, String> {
        let schedule: FaultSchedule = toml::from_str(text).map_err(|e| e.to_string())?;
        schedule.validate(nodes)?;
        Ok(schedule)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a schedule serializes")
    }

    pub fn validate(&self, nodes: &[String]) -> Result<(), String> {
        for (i, f) in self.faults.iter().enumerate() {
            f.validate(nodes).map_err(|e| format!("fault[{i}] (at_ms {}): {e}", f.at_ms))?;
        }
        Ok(())
    }

    /// The faults sorted by start time (stable for equal times).
    pub fn sorted(&self) -> Vec<Fault> {
        let mut faults = self.faults.clone();
        faults.sort_by_key(|f| f.at_ms);
        faults
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> Vec<String> {
        ["broker", "redis", "engine-0", "portfolio"].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn round_trips_through_toml() {
        let mut p = Fault::new(5_000, Action::Partition, Some("engine-0")).lasting(3_000);
        p.peer = Some("broker".into());
        p.one_way = true;
        let mut spike = Fault::new(1_000, Action::LatencySpike, None).lasting(500);
        spike.latency_ms = Some([5, 20]);
        let s =
            FaultSchedule { faults: vec![Fault::new(2_000, Action::Kill, Some("portfolio")).lasting(100), p, spike] };
        let text = s.to_toml();
        assert!(text.contains("action = \"partition\""), "{text}");
        assert_eq!(FaultSchedule::from_toml(&text, &nodes()).unwrap(), s);
        assert_eq!(s.sorted()[0].at_ms, 1_000);
    }

    #[test]
    fn refuses_with_the_field_and_the_reason() {
        let err = |text: &str| FaultSchedule::from_toml(text, &nodes()).unwrap_err();
        assert!(err("[[fault]]\nat_ms = 1\naction = \"kill\"\n").contains("target: Kill needs a target"));
        assert!(err("[[fault]]\nat_ms = 1\naction = \"kill\"\ntarget = \"nope\"\n").contains("no node \"nope\""));
        assert!(err("[[fault]]\nat_ms = 1\naction = \"explode\"\ntarget = \"broker\"\n").contains("explode"));
        assert!(err("[[fault]]\nat_ms = 1\naction = \"slow\"\ntarget = \"broker\"\n").contains("factor: required"));
        let e = err("[[fault]]\nat_ms = 1\naction = \"kill\"\ntarget = \"broker\"\nfactor = 3\n");
        assert!(e.contains("fault[0]") && e.contains("factor: not used"), "{e}");
        assert!(err("[[fault]]\nat_ms = 1\naction = \"kill\"\ntarget = \"broker\"\ncolour = 3\n").contains("colour"));
        let e = err("[[fault]]\nat_ms = 1\naction = \"partition\"\ntarget = \"broker\"\npeer = \"broker\"\n");
        assert!(e.contains("itself"), "{e}");
    }
}
