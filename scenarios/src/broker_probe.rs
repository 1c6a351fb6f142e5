//! The broker probe of `fafnir calibrate`: what one message costs
//! nats-server's CPU, by kind, on a stream of the probe's own.
//!
//! Measured, not assumed (this machine, nats-server 2.9): a publish sent
//! while others stream in costs the server about 8 µs of CPU, one sent after
//! an idle pause of 200 µs or more about 100 µs: waking its goroutines and
//! threads up costs more than the message. So the probe measures, by the CPU
//! time the server's own threads used (`/proc/<pid>/task/*/schedstat`, in
//! ns), each kind of message back to back, where the wake-ups are shared:
//!
//! - `publish`: pipelined publishes, each with a message id, acknowledged;
//! - `deliver`: the stored messages read back by an ordered consumer;
//! - `ack`: a durable consumer's fetches, each delivery acknowledged, less
//!   the deliveries;
//!
//! then single publishes sent a pause apart (their acks come back
//! meanwhile), for pauses from 25 µs to 1.6 ms: what the longest pauses cost
//! beyond `publish` is the wake-up (`wake`), and the share of it each pause
//! paid is the curve the simulated broker interpolates the wake-up's share
//! on, by the idle gap before its work (see `ServiceModel::warm`). The
//! paced publishes' median latency at each pause (`latency_curve`) is the
//! broker's wake-up as latency rather than CPU (`ServiceModel::wake_latency`).
//!
//! The server's CPU can be read only when it runs on this machine: the
//! probe finds the process listening on the NATS address's port. When none
//! is found it says so and measures nothing (the calibration then keeps the
//! latency-based `broker.publish`).

use std::time::Duration;

use bytes::Bytes;
use fafnir_platform::bus::nats::NatsBus;
use fafnir_platform::bus::{ConsumerSpec, EventBus, Publish, Storage, StreamSpec};
use fafnir_platform::time::Instant;

/// Messages of each back-to-back phase.
const MESSAGES: usize = 20_000;
/// Publishes sent together in the back-to-back publish phase.
const PIPELINED: usize = 64;
/// Single publishes at each pause.
const PACED: usize = 1_000;
/// The pauses between a publish's ack and the next publish, µs.
const PAUSES_US: [u64; 7] = [25, 50, 100, 200, 400, 800, 1_600];

/// What the probe measured: nats-server's CPU per message, ns.
#[derive(Clone, Debug, PartialEq)]
pub struct BrokerCosts {
    pub pid: u32,
    pub publish_ns: u64,
    pub deliver_ns: u64,
    pub ack_ns: u64,
    /// What a publish after a long pause costs beyond `publish_ns`.
    pub wake_ns: u64,
    /// Each pause (µs) and the share of `wake_ns` paid at it (thousandths).
    pub wake_curve: Vec<(u64, u32)>,
    /// Each pause between sends (µs) and a publish's CPU at it (ns).
    pub curve: Vec<(u64, u64)>,
    /// Each pause between sends (µs) and a publish's median latency at it
    /// (ns, from sending it to its ack, as the client saw it).
    pub latency_curve: Vec<(u64, u64)>,
}

/// Probes the nats-server at `nats` (`host:port`); None when no process of
/// this machine listens on its port.
pub async fn probe(nats: &str) -> Result<Option<BrokerCosts>, String> {
    let Some(port) = nats.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()) else {
        return Err(format!("broker probe: {nats:?} has no port"));
    };
    let Some(pid) = listening_pid(port) else { return Ok(None) };
    let cpu = || server_cpu_ns(pid).ok_or_else(|| format!("broker probe: cannot read the CPU time of process {pid}"));
    let bus = std::sync::Arc::new(NatsBus::connect(nats).await.map_err(|e| format!("broker probe: {e}"))?);
    // Ends in a letter: deleted by prefix, it is no other probe's
    // (FAFNIR_PROBE_12 would be a prefix of FAFNIR_PROBE_123).
    let stream = format!("FAFNIR_PROBE_{}_S", std::process::id());
    let subject = format!("fafnir_probe_{}.m", std::process::id());
    let spec = StreamSpec {
        name: stream.clone(),
        subjects: vec![subject.clone()],
        storage: Storage::File,
        duplicate_window: Duration::from_secs(120),
        max_msgs: 0,
        replicas: 1,
    };
    let result = async {
        bus.ensure_stream(&spec).await.map_err(|e| format!("broker probe: {e}"))?;
        let payload = Bytes::from(vec![b'x'; 160]);
        let msg = |i: usize| Publish {
            subject: subject.clone(),
            msg_id: format!("probe-{i}"),
            payload: payload.clone(),
            trace_parent: None,
        };

        // Publishes, back to back.
        let before = cpu()?;
        for start in (0..MESSAGES).step_by(PIPELINED) {
            let batch = (start..(start + PIPELINED).min(MESSAGES)).map(msg).collect();
            if let Some(Err(e)) = bus.publish_batch(batch).await.into_iter().find(|r| r.is_err()) {
                return Err(format!("broker probe: publish: {e}"));
            }
        }
        let publish_ns = (cpu()? - before) / MESSAGES as u64;

        // The same messages read back by an ordered consumer.
        let before = cpu()?;
        let mut next = 1;
        while next <= MESSAGES as u64 {
            let read = bus.read(&stream, &subject, next, 1024, Duration::from_secs(1)).await;
            let msgs = read.map_err(|e| format!("broker probe: read: {e}"))?;
            let Some(last) = msgs.last() else { return Err("broker probe: a read found nothing".into()) };
            next = last.seq + 1;
        }
        let deliver_ns = (cpu()? - before) / MESSAGES as u64;

        // A durable consumer: delivered and acknowledged.
        let consumer = ConsumerSpec {
            stream: stream.clone(),
            durable: "probe".into(),
            filter: subject.clone(),
            ack_wait: Duration::from_secs(30),
            max_deliver: -1,
            max_ack_pending: 100_000,
        };
        bus.ensure_consumer(&consumer).await.map_err(|e| format!("broker probe: {e}"))?;
        let before = cpu()?;
        let mut acked = 0;
        while acked < MESSAGES {
            let fetched = bus.fetch(&stream, "probe", 256, Duration::from_secs(1)).await;
            let ds = fetched.map_err(|e| format!("broker probe: fetch: {e}"))?;
            if ds.is_empty() {
                return Err("broker probe: a fetch found nothing".into());
            }
            let tokens: Vec<_> = ds.into_iter().map(|d| d.token).collect();
            bus.ack_many(&tokens).await.map_err(|e| format!("broker probe: ack: {e}"))?;
            acked += tokens.len();
        }
        // The acks are one-way: a request answered after them has them applied.
        bus.consumer_lag(&stream, "probe").await.map_err(|e| format!("broker probe: {e}"))?;
        let ack_ns = ((cpu()? - before) / acked as u64).saturating_sub(deliver_ns);

        // Single publishes, sent a pause apart (not waiting for the acks,
        // which come back meanwhile).
        let mut curve = Vec::new();
        let mut latency_curve = Vec::new();
        let mut i = MESSAGES;
        for pause_us in PAUSES_US {
            let pause = Duration::from_micros(pause_us);
            let before = cpu()?;
            let mut acks = Vec::with_capacity(PACED);
            let mut at = Instant::now();
            for _ in 0..PACED {
                let (bus, subject, payload, id) = (bus.clone(), subject.clone(), payload.clone(), format!("probe-{i}"));
                acks.push(tokio::spawn(async move {
                    let sent = Instant::now();
                    bus.publish(&subject, &id, payload).await.map(|_| sent.elapsed())
                }));
                i += 1;
                at += pause;
                while Instant::now() < at {
                    tokio::task::yield_now().await;
                }
            }
            let mut latencies = Vec::with_capacity(PACED);
            for ack in acks {
                let took = ack
                    .await
                    .map_err(|e| format!("broker probe: publish: {e}"))?
                    .map_err(|e| format!("broker probe: publish: {e}"))?;
                latencies.push(took.as_nanos() as u64);
            }
            curve.push((pause_us, (cpu()? - before) / PACED as u64));
            latencies.sort_unstable();
            latency_curve.push((pause_us, latencies[latencies.len() / 2]));
        }
        let (wake_ns, wake_curve) = wake(publish_ns, &curve);
        Ok(Some(BrokerCosts { pid, publish_ns, deliver_ns, ack_ns, wake_ns, wake_curve, curve, latency_curve }))
    }
    .await;
    let _ = bus.delete_streams_with_prefix(&stream).await;
    result
}

/// The wake-up's cost (what the three longest pauses cost on average beyond
/// `publish_ns`: by then the server sleeps between messages, and one pause
/// alone is noisy), and the share of it each pause paid (thousandths, at
/// most all of it; made non-decreasing, as a longer pause never costs less
/// but by noise).
pub fn wake(publish_ns: u64, curve: &[(u64, u64)]) -> (u64, Vec<(u64, u32)>) {
    if curve.is_empty() {
        return (0, Vec::new());
    }
    let tail = &curve[curve.len().saturating_sub(3)..];
    let plateau = tail.iter().map(|(_, ns)| ns).sum::<u64>() / tail.len() as u64;
    let wake_ns = plateau.saturating_sub(publish_ns).max(1);
    let mut highest = 0;
    let shares = curve
        .iter()
        .map(|&(pause, ns)| {
            let share = (ns.saturating_sub(publish_ns) * 1_000 / wake_ns).min(1_000) as u32;
            highest = highest.max(share);
            (pause, highest)
        })
        .collect();
    (wake_ns, shares)
}

/// The CPU time all threads of process `pid` have used, ns.
fn server_cpu_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0;
    for task in tasks.flatten() {
        // A thread that ended meanwhile is gone from the sum (Go's rarely end).
        if let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) {
            total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
        }
    }
    Some(total)
}

/// The process of this machine listening on TCP `port`, if any (and this
/// process may see it).
fn listening_pid(port: u16) -> Option<u32> {
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local_port = fields.get(1)?.rsplit(':').next()?;
                    // State 0A: listening.
                    (u16::from_str_radix(local_port, 16).ok()? == port && *fields.get(3)? == "0A")
                        .then(|| fields.get(9).map(|s| s.to_string()))?
                })
                .collect::<Vec<_>>()
        })
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let mut procs: Vec<u32> =
        std::fs::read_dir("/proc").ok()?.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
    procs.sort_unstable();
    procs.into_iter().find(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| wanted.iter().any(|w| target.as_os_str() == w.as_str()))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::wake;

    #[test]
    fn the_wake_up_is_the_plateau_and_each_pause_pays_its_share() {
        // Measured here: 9.2 µs back to back; a publish every 25, 50, 100,
        // 200, 400, 800, 1,600 µs cost 19.5, 38.9, 60.4, 90.6, 91.1, 86.3, 111.8.
        let curve =
            [(25, 19_500), (50, 38_900), (100, 60_400), (200, 90_600), (400, 91_100), (800, 86_300), (1_600, 111_800)];
        let (wake_ns, shares) = wake(9_200, &curve);
        // The plateau: (91.1 + 86.3 + 111.8) / 3 = 96.4 µs, less the publish.
        assert_eq!(wake_ns, 87_200);
        // 800 µs cost less than 400 µs (noise): it keeps 400's share; 1,600 µs is capped at all.
        assert_eq!(shares, vec![(25, 118), (50, 340), (100, 587), (200, 933), (400, 939), (800, 939), (1_600, 1_000)]);
    }

    #[test]
    fn no_curve_no_wake_up() {
        assert_eq!(wake(10_000, &[]), (0, Vec::new()));
        // A flat one: nothing beyond the publish (at least 1 ns, so no division by zero).
        assert_eq!(wake(10_000, &[(25, 10_000), (50, 9_000)]), (1, vec![(25, 0), (50, 0)]));
    }

    #[test]
    fn the_process_listening_on_a_port_is_found_and_a_free_port_has_none() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        let port = listener.local_addr().expect("its address").port();
        assert_eq!(super::listening_pid(port), Some(std::process::id()));
        drop(listener);
        assert_eq!(super::listening_pid(port), None);
    }
}
