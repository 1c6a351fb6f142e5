//! Faults as data. A fault is (time, action, target, duration): it is applied
//! `at_ms` after the world starts and undone `duration_ms` later (a fault
//! without a duration lasts to the end, except that a killed node given a
//! duration is restarted when it ends). A schedule prints, saves and loads as
//! TOML, so a run's faults can be replayed exactly:
//!
//! ```toml
//! [[fault]]
//! at_ms = 2000
//! action = "kill"          # isolate | partition | kill | restart_all | pause | slow
//! target = "engine-0"      #   | packet_loss | latency_spike | reply_lost
//! duration_ms = 1500
//!
//! [[fault]]
//! at_ms = 5000
//! action = "partition"
//! target = "engine-0"
//! peer = "broker"
//! one_way = true           # engine-0 -> broker only
//! duration_ms = 3000
//!
//! [[fault]]
//! at_ms = 7000
//! action = "restart_all"   # every service node killed, all started again at the end
//! duration_ms = 800
//!
//! [[fault]]
//! at_ms = 9000
//! action = "reply_lost"    # 5% of answers never arrive (the request took effect)
//! rate_ppm = 50000
//! duration_ms = 2000
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
//! So no madsim fault makes a message *never* arrive. `reply_lost` does, and
//! only for answers: while it is in force, the simulated broker drops a
//! fraction of its replies (publish acks, each ack of a pipelined batch on
//! its own, fetch and read replies, stream and consumer answers; not tail
//! frames) after it has acted on the request, and the order path's
//! multiplexed gRPC servers ([`fafnir_platform::rpc`]) drop a fraction of
//! their answers after the handler ran. The caller times out: its request took
//! effect, and it cannot know. A model-only fault (no real server does this on
//! purpose; a lost TCP segment is retransmitted): it stands for a connection
//! that died after the server acted, a proxy that dropped the answer, or a
//! reply that missed its deadline.
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
    /// Kill every service node at once (gateway, auth, market, orders,
    /// portfolio, every engine shard; not the broker, not Redis) and start
    /// them all again when the fault's duration ends, as a whole deployment
    /// stopped and started again. No target; needs a duration.
    RestartAll,
    /// Drop `rate_ppm` of a million answers (the broker's replies, the order
    /// path's gRPC answers) after the request took effect (see the module docs).
    ReplyLost,
}

impl Action {
    /// Whether the action applies to the whole world rather than to one node.
    pub fn is_global(self) -> bool {
        matches!(self, Action::PacketLoss | Action::LatencySpike | Action::RestartAll | Action::ReplyLost)
    }
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
        let needs_target = !self.action.is_global();
        match (&self.target, needs_target) {
            (None, true) => return Err(format!("target: {:?} needs a target node", self.action)),
            (Some(_), false) => return Err(format!("target: {:?} applies to the whole world", self.action)),
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
        check_field("rate_ppm", self.rate_ppm.is_some(), is(Action::PacketLoss) || is(Action::ReplyLost))?;
        check_field("latency_ms", self.latency_ms.is_some(), is(Action::LatencySpike))?;
        if self.factor == Some(0) {
            return Err("factor: must be at least 1".into());
        }
        if self.rate_ppm.is_some_and(|r| r > 1_000_000) {
            return Err("rate_ppm: at most 1000000 (all of them)".into());
        }
        if let Some([lo, hi]) = self.latency_ms {
            if lo > hi {
                return Err(format!("latency_ms: [{lo}, {hi}] is not [low, high]"));
            }
        }
        if self.duration_ms == Some(0) {
            return Err("duration_ms: must be positive when given".into());
        }
        if is(Action::RestartAll) && self.duration_ms.is_none() {
            return Err("duration_ms: required by restart_all (the services start again when it ends)".into());
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
        let lost = Fault { rate_ppm: Some(50_000), ..Fault::new(3_000, Action::ReplyLost, None).lasting(2_000) };
        let all = Fault::new(4_000, Action::RestartAll, None).lasting(800);
        let s = FaultSchedule {
            faults: vec![Fault::new(2_000, Action::Kill, Some("portfolio")).lasting(100), p, spike, lost, all],
        };
        let text = s.to_toml();
        assert!(text.contains("action = \"partition\""), "{text}");
        assert!(text.contains("action = \"reply_lost\"\nduration_ms = 2000\nrate_ppm = 50000"), "{text}");
        assert!(text.contains("action = \"restart_all\"\nduration_ms = 800"), "{text}");
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
        let e = err("[[fault]]\nat_ms = 1\naction = \"restart_all\"\n");
        assert!(e.contains("duration_ms: required by restart_all"), "{e}");
        let e = err("[[fault]]\nat_ms = 1\naction = \"restart_all\"\ntarget = \"broker\"\nduration_ms = 5\n");
        assert!(e.contains("applies to the whole world"), "{e}");
        assert!(err("[[fault]]\nat_ms = 1\naction = \"reply_lost\"\n").contains("rate_ppm: required"));
        let e = err("[[fault]]\nat_ms = 1\naction = \"reply_lost\"\nrate_ppm = 2000000\n");
        assert!(e.contains("rate_ppm: at most 1000000"), "{e}");
    }
}
