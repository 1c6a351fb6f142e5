//! Distributed load (issue 20, point 3): one real run's agents split over
//! workers, its measurements merged exactly, its fills checked once.
//!
//! Nothing here knows how jobs and results travel: everything that crosses
//! between the coordinator and a worker is serde data (JSON).
//!
//! 1. Coordinator: [`new_run_id`], [`preflight`] (no faults, every user name
//!    fits, a platform nobody has traded on), then one [`LoadJob`] per share,
//!    all with one barrier time far enough ahead for the slowest set-up
//!    (a share's [`ShareFigures::setup_ms`] says how long one took).
//! 2. Worker: [`run_share`] sets its agents up, waits for the barrier, runs
//!    the load and returns a [`LoadedShare`] whose agents *keep listening*;
//!    it sends [`LoadedShare::figures`] to say its load is over.
//! 3. Coordinator, once every share's load is over: [`quiesce`] (the
//!    liveness phase, once, on the platform), then tells every worker —
//!    whether the platform settled or not.
//! 4. Worker: [`LoadedShare::result`], a [`ShareResult`], sent back.
//! 5. Coordinator: [`merge`] the results (pure: histograms added exactly,
//!    counts summed), then [`finish`]: gather and check once, as a local
//!    run does after its load.
//!
//! Why two steps on the worker: the checker compares what each agent was
//! told with the platform's final records, so an agent must hear every
//! execution report the platform sends it until the platform has settled,
//! including reports of its resting orders filled by another share's
//! orders. A worker that stopped listening when its own load ended would
//! make the checker see lies the platform never told.
//!
//! A share takes the agents whose place in [`run::agent_plan`] is `share`
//! modulo `shares`: the union of the shares is the plan, so a seeded
//! open-loop scenario submits the same orders split or not. Each agent's user
//! is `<agent>-<run_id>` ([`user_name`]), distinct across shares and runs,
//! and known to the coordinator, which logs in as each agent to read its
//! portfolio and orders for the checker.
//!
//! What a distributed run's result lacks against a local one (see
//! [`ShareResult`]): the raw latency samples stay on the workers (the
//! timeline's per-bucket quantiles come from per-bucket histograms, to
//! HdrHistogram's three significant digits); `metrics.jsonl` is not written
//! (each worker's load-generator metrics are its own; the platform's are
//! the platform's); the submit log behind fault coverage is dropped (real
//! runs have no faults); `md_fanout` compares the engine host's clock with
//! each worker's; and with a shared market-data subscription there is one
//! per worker, so `counts.md_updates` counts each update once per worker.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use fafnir_platform::clock::Clock as _;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::driver::{self, AgentView, Counts, CpuShare, ErrorKind, Recorder, SlotCounts};
use crate::hostile_calls::HostileLog;
use crate::real_run::{self, Platform, Target};
use crate::run::{self, RunMeta, RunResult, Stopped};
use crate::scenario::{Scenario, STAGES};

/// One worker's share of a distributed run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadJob {
    /// Unique per distributed run ([`new_run_id`]): part of every user
    /// name, so shares and runs never collide. a-z, 0-9, '-' and '_'.
    pub run_id: String,
    /// The scenario file's text ([`Scenario::parse`]), with the
    /// coordinator's overrides already applied.
    pub scenario_text: String,
    /// The run's root seed (the agents' seeds derive from it).
    pub seed: u64,
    /// HOST:PORT of the running platform's gateway (a name is resolved here).
    pub gateway: String,
    /// This share's index, `0..shares`.
    pub share: u32,
    pub shares: u32,
    /// The barrier: every share's load starts at this wall-clock time (ms
    /// since the Unix epoch).
    pub start_at_unix_ms: u64,
    /// A capacity step: the scenario scaled as `fafnir capacity` scales it
    /// ([`crate::capacity::scaled`]) before it is split.
    #[serde(default)]
    pub capacity: Option<CapacityStep>,
}

/// A capacity step's scaling of the scenario (see [`crate::capacity::scaled`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapacityStep {
    /// The agents' decisions a second the step asks for.
    pub decisions_per_s: u64,
    pub step_ms: u64,
}

/// What one share did, for "which worker ran what"; also what a worker
/// sends when its load is over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareFigures {
    pub share: u32,
    pub agents: u64,
    pub submitted: u64,
    pub accepted: u64,
    /// Fill reports its agents had received when its load was over (more
    /// may arrive until the platform has quiesced: see
    /// [`ShareResult::counts`]).
    pub fills_reported: u64,
    /// Registering the agents, their deposits and opening their streams
    /// (with the 200 ms the streams get before a load starts).
    pub setup_ms: u64,
    /// When its load started (ms since the Unix epoch, its own clock).
    pub t0_unix_ms: u64,
    /// From the start of its load until its last request was answered.
    pub load_ms: u64,
    /// How late it woke its agents (the 99th percentile, ns).
    pub send_lag_p99_ns: u64,
    /// The worker process's CPU over its load.
    pub cpu: Option<CpuShare>,
}

/// One agent of a share: its user name and what the checker needs of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareAgent {
    pub user_name: String,
    pub view: AgentView,
}

/// What one share measured, and its agents' views, for the coordinator.
///
/// Histograms are HdrHistogram V2 encodings (`V2Serializer`, no deflate) in
/// standard padded base64, values in nanoseconds. Of the recorder it drops
/// the raw samples (kept instead as one histogram per timeline bucket),
/// the submit log (fault coverage: real runs have no faults) and the
/// metrics log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareResult {
    pub run_id: String,
    pub shares: u32,
    pub figures: ShareFigures,
    /// In the order of the plan.
    pub agents: Vec<ShareAgent>,
    pub counts: Counts,
    pub errors: BTreeMap<String, ErrorKind>,
    pub hostile: HostileLog,
    /// Per stage, every latency of the run.
    pub histograms: BTreeMap<String, String>,
    pub send_lag: String,
    /// The timeline's bucket width ([`crate::timeline::bucket_ms`]).
    pub bucket_ms: u64,
    /// Per stage, per bucket number (from the share's t0), the latencies
    /// recorded in that bucket.
    pub buckets: BTreeMap<String, BTreeMap<u64, String>>,
    /// Outcome counts per [`driver::SLOT_MS`] slot from the share's t0.
    pub slots: BTreeMap<u64, SlotCounts>,
}

/// Every share's result, merged.
#[derive(Clone, Debug)]
pub struct Merged {
    pub run_id: String,
    /// By share.
    pub shares: Vec<ShareFigures>,
    /// Every agent's user name and view, in the order of the plan.
    pub users: Vec<String>,
    pub views: Vec<AgentView>,
    pub counts: Counts,
    pub errors: BTreeMap<String, ErrorKind>,
    pub hostile: HostileLog,
    pub histograms: BTreeMap<&'static str, Histogram<u64>>,
    pub send_lag: Histogram<u64>,
    pub bucket_ms: u64,
    pub buckets: BTreeMap<&'static str, BTreeMap<u64, Histogram<u64>>>,
    pub slots: BTreeMap<u64, SlotCounts>,
    /// The load generators' CPU: the busiest worker's share of its machine,
    /// and the CPU time of them all.
    pub cpu: Option<CpuShare>,
    /// The earliest share's start of load (ms since the Unix epoch).
    pub t0_unix_ms: u64,
    /// How far apart the shares' starts were.
    pub t0_spread_ms: u64,
}

/// A share whose load is over and whose agents still listen (see the
/// module doc); its listeners stop when it is dropped.
pub struct LoadedShare {
    run_id: String,
    shares: u32,
    users: Vec<String>,
    /// Their listeners stop when the agents are dropped.
    agents: real_run::Agents,
    rec: Arc<Mutex<Recorder>>,
    figures: ShareFigures,
    bucket_ms: u64,
}

/// A user name's bytes at most (the platform's limit).
const USER_NAME_BYTES_MAX: usize = fafnir_platform::services::auth::USERNAME_BYTES_MAX;

/// The user of agent `agent` (a name of [`run::agent_plan`]) in run `run_id`.
pub fn user_name(run_id: &str, agent: &str) -> String {
    format!("{agent}-{run_id}")
}

/// Every agent's user in run `run_id`, in the order of the plan; an error
/// if the run id is not made of a-z, 0-9, '-' and '_', or makes a name
/// longer than the platform allows.
pub fn user_names(scn: &Scenario, seed: u64, run_id: &str) -> Result<Vec<String>, String> {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
    if run_id.is_empty() || !run_id.chars().all(allowed) {
        return Err(format!("run id {run_id:?}: one or more of a-z, 0-9, '-' and '_'"));
    }
    let users: Vec<String> = run::agent_plan(scn, seed).iter().map(|(name, ..)| user_name(run_id, name)).collect();
    if let Some(long) = users.iter().max_by_key(|u| u.len()).filter(|u| u.len() > USER_NAME_BYTES_MAX) {
        return Err(format!(
            "run id {run_id:?} makes the user name {long:?}, {} bytes; the platform takes {USER_NAME_BYTES_MAX}: \
             use a run id of at most {} bytes",
            long.len(),
            run_id.len() - (long.len() - USER_NAME_BYTES_MAX)
        ));
    }
    Ok(users)
}

/// A fresh run id: the time in ms since the Unix epoch in base 36 (eight
/// digits until the year 2059) and four random base-36 digits.
pub fn new_run_id() -> String {
    let now_ms = crate::real::SystemClock.now_ms().max(0) as u64;
    let mut random = [0u8; 4];
    fafnir_platform::services::Entropy::fill(&crate::real::OsEntropy, &mut random);
    let mut id = base36(now_ms);
    id.extend(random.iter().map(|b| base36(u64::from(*b) % 36)));
    id
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii digits")
}

/// The places in the plan of a run's `agents` that share `share` of `shares` takes.
pub fn share_places(agents: usize, share: u32, shares: u32) -> impl Iterator<Item = usize> {
    (share as usize..agents).step_by(shares.max(1) as usize)
}

/// A histogram as a [`ShareResult`] carries it: V2, base64.
pub fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut raw = Vec::new();
    // Only a count above i64::MAX cannot be encoded.
    V2Serializer::new().serialize(h, &mut raw).expect("a latency histogram encodes");
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// A histogram from its [`ShareResult`] form.
pub fn decode_histogram(text: &str) -> Result<Histogram<u64>, String> {
    let raw = base64::engine::general_purpose::STANDARD.decode(text).map_err(|e| format!("not base64: {e}"))?;
    Deserializer::new().deserialize(&mut &raw[..]).map_err(|e| format!("not a V2 histogram: {e:?}"))
}

impl LoadJob {
    fn check(&self) -> Result<(), String> {
        if self.shares == 0 || self.share >= self.shares {
            return Err("a job's share is 0 to shares - 1, and shares at least 1".into());
        }
        Ok(())
    }

    /// "share 1 of 3 of run <id>", for messages.
    fn describe(&self) -> String {
        format!("share {} of {} of run {}", self.share, self.shares, self.run_id)
    }
}

/// Worker: sets this share's agents up at the gateway, waits for the
/// barrier, runs the load (with the t0 of a local run: the start of the
/// load, every intended time counted from it) and returns once every
/// request it sent has been answered or has timed out. Its agents go on
/// listening: send [`LoadedShare::figures`], wait for the coordinator's
/// word that the platform has quiesced, then take [`LoadedShare::result`].
///
/// An error when the job is malformed, the gateway unknown, a set-up fails
/// (the message starts with "liveness:") or ends after the barrier (it
/// says by how much).
pub async fn run_share(job: &LoadJob) -> Result<LoadedShare, String> {
    let at = |e: String| format!("{}: {e}", job.describe());
    let (scn, plan, users) = share_of(job).map_err(at)?;
    let gateway = resolve(&job.gateway).await.map_err(at)?;
    crate::observe::install_global();
    let clock: Arc<dyn fafnir_platform::clock::Clock> = Arc::new(crate::real::SystemClock);
    let set_up_at = fafnir_platform::time::Instant::now();
    let rec = Arc::new(Mutex::new(Recorder::new(set_up_at)));
    let agents = real_run::set_up_agents(&scn, gateway, &plan, &users, &rec, clock.clone())
        .await
        .map_err(|s| at(stopped_text(s)))?;
    let mut share = LoadedShare {
        run_id: job.run_id.clone(),
        shares: job.shares,
        users,
        agents,
        rec,
        figures: ShareFigures {
            share: job.share,
            agents: plan.len() as u64,
            submitted: 0,
            accepted: 0,
            fills_reported: 0,
            setup_ms: 0,
            t0_unix_ms: 0,
            load_ms: 0,
            send_lag_p99_ns: 0,
            cpu: None,
        },
        bucket_ms: crate::timeline::bucket_ms(scn.duration.as_millis() as u64),
    };
    fafnir_platform::time::sleep(real_run::SUBSCRIPTIONS_SETTLE).await;
    share.figures.setup_ms = set_up_at.elapsed().as_millis() as u64;
    let now_ms = clock.now_ms().max(0) as u64;
    if now_ms > job.start_at_unix_ms {
        return Err(at(format!(
            "the set-up of its {} agents took {} ms and ended {} ms after the barrier (start_at_unix_ms {}): \
             choose a barrier at least that much later",
            plan.len(),
            share.figures.setup_ms,
            now_ms - job.start_at_unix_ms,
            job.start_at_unix_ms
        )));
    }
    let barrier =
        fafnir_platform::time::Instant::now() + std::time::Duration::from_millis(job.start_at_unix_ms - now_ms);
    crate::precise::sleep_until(barrier).await;
    let t0 = fafnir_platform::time::Instant::now();
    let t0_clock_ms = clock.now_ms();
    real_run::start_recording(&share.rec, t0, t0_clock_ms);
    real_run::drive(&scn, &share.agents.handles, &plan, &share.rec, t0).await.map_err(|s| at(stopped_text(s)))?;
    let r = share.rec.lock().expect("recorder");
    share.figures = ShareFigures {
        submitted: r.counts.submitted,
        accepted: r.counts.accepted,
        fills_reported: r.counts.fills_reported,
        t0_unix_ms: t0_clock_ms.max(0) as u64,
        load_ms: t0.elapsed().as_millis() as u64,
        send_lag_p99_ns: if r.send_lag.is_empty() { 0 } else { r.send_lag.value_at_quantile(0.99) },
        cpu: r.cpu,
        ..share.figures.clone()
    };
    drop(r);
    Ok(share)
}

/// The job's scenario, and the agents of its share with their users.
type Share = (Scenario, Vec<(String, usize, u32, u64)>, Vec<String>);

fn share_of(job: &LoadJob) -> Result<Share, String> {
    job.check()?;
    let mut scn = Scenario::parse(&job.scenario_text).map_err(|e| format!("the scenario: {e}"))?;
    if let Some(c) = job.capacity {
        let step = std::time::Duration::from_millis(c.step_ms);
        scn = crate::capacity::scaled(&scn, c.decisions_per_s, step).map_err(|e| format!("the capacity step: {e}"))?;
    }
    real_run::refuse_faults(&scn)?;
    let all_users = user_names(&scn, job.seed, &job.run_id)?;
    let all = run::agent_plan(&scn, job.seed);
    let places: Vec<usize> = share_places(all.len(), job.share, job.shares).collect();
    let plan = places.iter().map(|&p| all[p].clone()).collect();
    let users = places.iter().map(|&p| all_users[p].clone()).collect();
    Ok((scn, plan, users))
}

/// The address of `gateway` (HOST:PORT, the host a name or an address).
async fn resolve(gateway: &str) -> Result<SocketAddr, String> {
    let mut addrs = tokio::net::lookup_host(gateway).await.map_err(|e| format!("the gateway {gateway:?}: {e}"))?;
    addrs.next().ok_or_else(|| format!("the gateway {gateway:?}: the name has no address"))
}

fn stopped_text(s: Stopped) -> String {
    match s {
        Stopped::Liveness(why) | Stopped::Crash(why) => why,
    }
}

impl LoadedShare {
    /// What the share did; the word that its load is over.
    pub fn figures(&self) -> &ShareFigures {
        &self.figures
    }

    /// Stops the agents' listeners and returns what the share measured and
    /// what its agents saw. Take it once the platform has quiesced.
    pub fn result(mut self) -> ShareResult {
        self.agents.stop_listening();
        let rec = {
            // Taken, not copied: nothing records into it any more.
            let mut r = self.rec.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut *r, Recorder::new(fafnir_platform::time::Instant::now()))
        };
        let mut views: Vec<AgentView> =
            self.agents.handles.iter().map(|h| h.state.lock().expect("agent state").view()).collect();
        drop_repeated_market_data(&mut views);
        let agents = std::mem::take(&mut self.users)
            .into_iter()
            .zip(views)
            .map(|(user_name, view)| ShareAgent { user_name, view })
            .collect();
        let encode_all = |hs: &BTreeMap<&'static str, Histogram<u64>>| -> BTreeMap<String, String> {
            hs.iter().map(|(stage, h)| (stage.to_string(), encode_histogram(h))).collect()
        };
        let buckets = crate::timeline::bucket_histograms(&rec, self.bucket_ms)
            .iter()
            .map(|(stage, per_bucket)| {
                (stage.to_string(), per_bucket.iter().map(|(i, h)| (*i, encode_histogram(h))).collect())
            })
            .collect();
        ShareResult {
            run_id: self.run_id.clone(),
            shares: self.shares,
            figures: self.figures.clone(),
            agents,
            counts: rec.counts.clone(),
            errors: rec.errors.clone(),
            hostile: rec.hostile.clone(),
            histograms: encode_all(&rec.histograms),
            send_lag: encode_histogram(&rec.send_lag),
            bucket_ms: self.bucket_ms,
            buckets,
            slots: rec.slots.clone(),
        }
    }
}

/// Keeps each distinct top of book and trade the agents received in the
/// first view that holds it only. The checker keeps each once, with the
/// first account in the plan's order that received it, and the views of a
/// share are in the plan's order: what it sees is the same, and a share's
/// agents who each follow the market do not each ship it.
fn drop_repeated_market_data(views: &mut [AgentView]) {
    let mut tops_seen: BTreeMap<String, std::collections::BTreeSet<(u64, [i64; 4])>> = BTreeMap::new();
    let mut trades_seen: BTreeMap<String, std::collections::BTreeSet<(u64, u64, i64, i64)>> = BTreeMap::new();
    for v in views {
        for (symbol, tops) in &mut v.received.tops {
            let seen = tops_seen.entry(symbol.clone()).or_default();
            tops.retain(|t| seen.insert(*t));
        }
        v.received.tops.retain(|_, tops| !tops.is_empty());
        for (symbol, trades) in &mut v.received.trades {
            let seen = trades_seen.entry(symbol.clone()).or_default();
            trades.retain(|t| seen.insert(*t));
        }
        v.received.trades.retain(|_, trades| !trades.is_empty());
    }
}

/// The known stage of this name.
fn stage(name: &str) -> Result<&'static str, String> {
    STAGES.iter().copied().find(|s| *s == name).ok_or_else(|| format!("unknown stage {name:?}"))
}

/// Adds the encoded histogram `text` into `into`, exactly.
fn add_encoded(into: &mut Histogram<u64>, text: &str, what: &str) -> Result<(), String> {
    let h = decode_histogram(text).map_err(|e| format!("{what}: {e}"))?;
    into.add(&h).map_err(|e| format!("{what}: {e:?}"))
}

/// Checks that `shares` are the whole of one run (each share once, the
/// same run id, share count and bucket width, each the agents of its
/// places), sorted by share.
fn check_whole(shares: &mut [ShareResult]) -> Result<(), String> {
    let first = shares.first().ok_or("no share to merge")?;
    let (run_id, n, bucket_ms) = (first.run_id.clone(), first.shares, first.bucket_ms);
    let first_share = first.figures.share;
    shares.sort_by_key(|s| s.figures.share);
    for (k, s) in shares.iter().enumerate() {
        if (&s.run_id, s.shares, s.bucket_ms) != (&run_id, n, bucket_ms) {
            return Err(format!(
                "share {} of run {} is of {} shares with buckets of {} ms; share {first_share} of run {run_id} \
                 of {n} shares with {bucket_ms} ms",
                s.figures.share, s.run_id, s.shares, s.bucket_ms
            ));
        }
        if s.figures.share as usize != k {
            return Err(format!("{n} shares were run; share {k} is missing or another is there twice"));
        }
    }
    if shares.len() != n as usize {
        return Err(format!("{} of {n} shares of run {run_id}: share {} is missing", shares.len(), shares.len()));
    }
    let total: usize = shares.iter().map(|s| s.agents.len()).sum();
    let whole = shares.iter().all(|s| {
        s.agents.len() == share_places(total, s.figures.share, n).count() && s.figures.agents == s.agents.len() as u64
    });
    if !whole {
        let held: Vec<String> = shares.iter().map(|s| s.agents.len().to_string()).collect();
        return Err(format!(
            "the shares of run {run_id} hold {} agents: not the {total} agents of a plan taken in turn",
            held.join(", ")
        ));
    }
    Ok(())
}

/// Coordinator: merges every share's result exactly. Histograms are added
/// (HdrHistogram addition of the decoded histograms, never re-rounded
/// percentiles), counts and slots summed, error tables merged (counts
/// summed, the first [`ErrorKind::EXAMPLES`] distinct messages kept, in
/// share order), the agents put back in the order of the plan. An error
/// when the shares are not the whole of one run or a histogram is
/// malformed.
pub fn merge(mut shares: Vec<ShareResult>) -> Result<Merged, String> {
    check_whole(&mut shares)?;
    let n = shares.len();
    let total: usize = shares.iter().map(|s| s.agents.len()).sum();
    let mut m = Merged {
        run_id: shares[0].run_id.clone(),
        shares: shares.iter().map(|s| s.figures.clone()).collect(),
        users: Vec::with_capacity(total),
        views: Vec::with_capacity(total),
        counts: Counts::default(),
        errors: BTreeMap::new(),
        hostile: HostileLog::default(),
        histograms: STAGES.iter().map(|s| (*s, driver::latency_histogram())).collect(),
        send_lag: driver::latency_histogram(),
        bucket_ms: shares[0].bucket_ms,
        buckets: BTreeMap::new(),
        slots: BTreeMap::new(),
        cpu: None,
        t0_unix_ms: shares.iter().map(|s| s.figures.t0_unix_ms).min().unwrap_or(0),
        t0_spread_ms: 0,
    };
    m.t0_spread_ms = shares.iter().map(|s| s.figures.t0_unix_ms).max().unwrap_or(0) - m.t0_unix_ms;
    for s in &shares {
        let who = format!("share {}", s.figures.share);
        m.counts.add(&s.counts);
        for (kind, e) in &s.errors {
            m.errors.entry(kind.clone()).or_default().merge(e);
        }
        m.hostile.merge(&s.hostile);
        for (name, text) in &s.histograms {
            let stage = stage(name).map_err(|e| format!("{who}: {e}"))?;
            let into = m.histograms.get_mut(stage).expect("every stage");
            add_encoded(into, text, &format!("{who}'s {stage} histogram"))?;
        }
        add_encoded(&mut m.send_lag, &s.send_lag, &format!("{who}'s send lag"))?;
        for (name, per_bucket) in &s.buckets {
            let stage = stage(name).map_err(|e| format!("{who}: {e}"))?;
            for (i, text) in per_bucket {
                let into = m.buckets.entry(stage).or_default().entry(*i).or_insert_with(driver::latency_histogram);
                add_encoded(into, text, &format!("{who}'s {stage} histogram of bucket {i}"))?;
            }
        }
        for (slot, c) in &s.slots {
            m.slots.entry(*slot).or_default().add(c);
        }
        if let Some(c) = s.figures.cpu {
            let cpu = m.cpu.get_or_insert_with(CpuShare::default);
            cpu.load_generator_pct = cpu.load_generator_pct.max(c.load_generator_pct);
            cpu.load_generator_cpu_ms += c.load_generator_cpu_ms;
        }
    }
    // Plan place p is share p % n's agent number p / n.
    let mut agents: Vec<_> = shares.into_iter().map(|s| s.agents.into_iter()).collect();
    for p in 0..total {
        let a = agents[p % n].next().expect("checked: each share holds the agents of its places");
        m.users.push(a.user_name);
        m.views.push(a.view);
    }
    Ok(m)
}

impl Merged {
    /// A recorder holding what the shares measured, as a local run's would
    /// after its load (no samples, submit log or metrics log: see [`ShareResult`]).
    pub fn recorder(&self) -> Recorder {
        let mut r = Recorder::new(fafnir_platform::time::Instant::now());
        r.histograms = self.histograms.clone();
        r.counts = self.counts.clone();
        r.slots = self.slots.clone();
        r.t0_clock_ms = i64::try_from(self.t0_unix_ms).unwrap_or(i64::MAX);
        r.hostile = self.hostile.clone();
        r.errors = self.errors.clone();
        r.send_lag = self.send_lag.clone();
        r.cpu = self.cpu;
        r
    }

    /// Puts the per-bucket latencies into a run's timeline.
    fn fill_timeline(&self, result: &mut RunResult) {
        assert_eq!(result.timeline.bucket_ms, self.bucket_ms, "checked before the run's result was made");
        for (stage, per_bucket) in &self.buckets {
            crate::timeline::set_stage_from_histograms(&mut result.timeline, stage, per_bucket);
        }
    }
}

/// Connects to the platform of `target`, which names its gateway and namespace.
async fn attach(scn: &Scenario, target: &Target, run_id: &str) -> Result<Platform, String> {
    if target.gateway.is_none() || target.namespace.is_none() {
        return Err("a distributed run drives a running platform: give its gateway and namespace".into());
    }
    Platform::attach(scn, target, run_id).await
}

/// Coordinator, before any job is sent: refuses a scenario with faults, a
/// run id that makes a user name the platform refuses, and a platform
/// that has been traded on (the checker needs to be the first).
pub async fn preflight(scn: &Scenario, seed: u64, run_id: &str, target: &Target) -> Result<(), String> {
    real_run::refuse_faults(scn)?;
    user_names(scn, seed, run_id)?;
    attach(scn, target, run_id).await?.refuse_if_traded().await
}

/// Coordinator, once every share's load is over: the liveness phase, once
/// on the platform (as a local run's: every consumer caught up within the
/// scenario's quiesce time, then a second for reports to drain). An error
/// when the platform cannot be reached, or did not settle (the message
/// then starts with "liveness:"); either way pass the outcome to [`finish`].
pub async fn quiesce(scn: &Scenario, target: &Target) -> Result<(), String> {
    let platform = attach(scn, target, "quiesce").await?;
    real_run::liveness_phase(scn, platform.deps()).await.map_err(stopped_text)
}

/// Logs in as each of `users` (a few at a time: a login hashes a
/// password), in their order.
async fn log_in(gateway: SocketAddr, users: &[String]) -> Result<Vec<Client>, String> {
    use futures::StreamExt as _;
    const AT_ONCE: usize = 8;
    let logins = futures::stream::iter(users).map(|user| log_in_one(gateway, user)).buffered(AT_ONCE);
    logins.collect::<Vec<_>>().await.into_iter().collect()
}

async fn log_in_one(gateway: SocketAddr, user: &str) -> Result<Client, String> {
    let fresh = Client::new(gateway);
    driver::retry(|| {
        let mut c = fresh.clone();
        async move { c.login(user, driver::AGENT_PASSWORD).await.map(|()| c) }
    })
    .await
    .map_err(|s| format!("liveness: {user} cannot log in again to be checked: {s}"))
}

/// Coordinator: the result of the distributed run, as a local run's after
/// its load. `quiesced` is what [`quiesce`] returned: when the platform did
/// not settle, the result is a liveness outcome with what the shares
/// measured and no verdict. Otherwise it logs in as every agent, gathers
/// what the checker needs (the streams, each account's portfolio and
/// orders, the agents' views) and checks once.
///
/// An error when the shares are not of this scenario and seed, or the
/// platform's NATS and Redis cannot be reached.
pub async fn finish(
    scn: &Scenario,
    seed: u64,
    target: Target,
    merged: Merged,
    quiesced: Result<(), String>,
    meta: RunMeta,
) -> Result<RunResult, String> {
    let users = user_names(scn, seed, &merged.run_id)?;
    if merged.users != users {
        return Err(format!(
            "the shares ran {} agents, not the {} of scenario {:?} with seed {seed} in run {}",
            merged.users.len(),
            users.len(),
            scn.name,
            merged.run_id
        ));
    }
    let bucket_ms = crate::timeline::bucket_ms(scn.duration.as_millis() as u64);
    if merged.bucket_ms != bucket_ms {
        return Err(format!("the shares' buckets are {} ms wide, this scenario's {bucket_ms}", merged.bucket_ms));
    }
    let recorder = merged.recorder();
    let stopped = |why: String| {
        let mut result = run::stopped(scn, meta.clone(), recorder.clone(), Stopped::from_error(why));
        merged.fill_timeline(&mut result);
        Ok(result)
    };
    if let Err(why) = quiesced {
        return stopped(why);
    }
    let platform = attach(scn, &target, &merged.run_id).await?;
    let deps = platform.deps();
    let clients = match log_in(deps.cfg.addrs.gateway, &users).await {
        Ok(clients) => clients,
        Err(why) => return stopped(why),
    };
    let accounts: Vec<(&str, &Client)> = users.iter().map(String::as_str).zip(&clients).collect();
    let mut input = match run::gather_views(deps.bus.as_ref(), &deps.cfg, &accounts, &merged.views).await {
        Ok(input) => input,
        Err(why) => return stopped(why),
    };
    input.hostile = recorder.hostile.clone();
    let mut result = run::finish(scn, meta, recorder, &input);
    merged.fill_timeline(&mut result);
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(values: impl IntoIterator<Item = u64>) -> Histogram<u64> {
        let mut h = driver::latency_histogram();
        for v in values {
            h.record(v).unwrap();
        }
        h
    }

    /// Share `share` of 3 of run "t", its agents those of places
    /// share, share + 3, ... of 7, its submit_to_ack latencies `values`.
    fn share(share: u32, values: &[u64], error: Option<(&str, &str)>) -> ShareResult {
        let agents: Vec<ShareAgent> = share_places(7, share, 3)
            .map(|p| ShareAgent {
                user_name: format!("noise-0-{p}-t"),
                view: AgentView { user: p as u64, ..AgentView::default() },
            })
            .collect();
        let counts = Counts { submitted: values.len() as u64, accepted: values.len() as u64, ..Counts::default() };
        let errors = error
            .map(|(kind, message)| (kind.to_string(), ErrorKind { count: 2, first: vec![message.to_string()] }))
            .into_iter()
            .collect();
        let mut buckets = BTreeMap::new();
        buckets.insert(
            "submit_to_ack".to_string(),
            BTreeMap::from([(0, encode_histogram(&histogram(values.iter().copied())))]),
        );
        ShareResult {
            run_id: "t".into(),
            shares: 3,
            figures: ShareFigures {
                share,
                agents: agents.len() as u64,
                submitted: values.len() as u64,
                accepted: values.len() as u64,
                fills_reported: 0,
                setup_ms: 100,
                t0_unix_ms: 1_000 + u64::from(share),
                load_ms: 2_000,
                send_lag_p99_ns: 0,
                cpu: Some(CpuShare {
                    load_generator_pct: 10 * (share + 1),
                    load_generator_cpu_ms: 5,
                    ..CpuShare::default()
                }),
            },
            agents,
            counts,
            errors,
            hostile: HostileLog::default(),
            histograms: BTreeMap::from([(
                "submit_to_ack".into(),
                encode_histogram(&histogram(values.iter().copied())),
            )]),
            send_lag: encode_histogram(&histogram([1_000 * (u64::from(share) + 1)])),
            bucket_ms: 100,
            buckets,
            slots: BTreeMap::from([(0, SlotCounts { submitted: values.len() as u64, ..SlotCounts::default() })]),
        }
    }

    /// Values spread over six decades, so that rounding would show.
    fn values(seed: u64, n: u64) -> Vec<u64> {
        (0..n).map(|i| 1 + (seed * 7_919 + i * 104_729).pow(2) % 9_999_999_937).collect()
    }

    #[test]
    fn merging_adds_the_histograms_exactly_and_sums_the_rest() {
        let (a, b, c) = (values(1, 1_000), values(2, 10), values(3, 333));
        // Handed in out of order: merge sorts the shares.
        let shares = vec![
            share(2, &c, Some(("submit Unavailable", "gone"))),
            share(0, &a, Some(("submit Unavailable", "down"))),
            share(1, &b, None),
        ];
        let json = serde_json::to_string(&shares[0]).unwrap();
        assert_eq!(serde_json::from_str::<ShareResult>(&json).unwrap(), shares[0], "a share result round-trips");
        let m = merge(shares).unwrap();
        let all = histogram(a.iter().chain(&b).chain(&c).copied());
        let merged = &m.histograms["submit_to_ack"];
        assert_eq!(merged.len(), 1_343);
        for q in [0.0, 0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(merged.value_at_quantile(q), all.value_at_quantile(q), "quantile {q}");
        }
        assert!(merged
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .eq(all.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value()))));
        assert_eq!((merged.min(), merged.max()), (all.min(), all.max()));
        assert_eq!(m.buckets["submit_to_ack"][&0], all, "per-bucket histograms add up too");
        assert_eq!((m.send_lag.len(), m.send_lag.max()), (3, m.send_lag.highest_equivalent(3_000)));
        assert_eq!((m.counts.submitted, m.counts.accepted), (1_343, 1_343));
        assert_eq!(m.slots[&0].submitted, 1_343);
        let e = &m.errors["submit Unavailable"];
        assert_eq!((e.count, e.first.clone()), (4, vec!["down".to_string(), "gone".to_string()]));
        assert_eq!(m.users, (0..7).map(|p| format!("noise-0-{p}-t")).collect::<Vec<_>>(), "the plan's order");
        assert!(m.views.iter().enumerate().all(|(p, v)| v.user == p as u64));
        assert_eq!(m.shares.iter().map(|s| s.agents).collect::<Vec<_>>(), vec![3, 2, 2]);
        let cpu = m.cpu.unwrap();
        assert_eq!((cpu.load_generator_pct, cpu.load_generator_cpu_ms, cpu.platform_pct), (30, 15, None));
        assert_eq!((m.t0_unix_ms, m.t0_spread_ms), (1_000, 2));
        let rec = m.recorder();
        assert_eq!(rec.histograms["submit_to_ack"], all);
        assert_eq!(rec.t0_clock_ms, 1_000);
    }

    #[test]
    fn merging_refuses_what_is_not_one_whole_run() {
        let v = values(1, 10);
        let err = merge(vec![share(0, &v, None), share(2, &v, None)]).unwrap_err();
        assert!(err.contains("share 1 is missing"), "{err}");
        let err = merge(vec![share(0, &v, None), share(1, &v, None), share(1, &v, None)]).unwrap_err();
        assert!(err.contains("share 2 is missing or another is there twice"), "{err}");
        let mut other = share(1, &v, None);
        other.run_id = "u".into();
        let err = merge(vec![share(0, &v, None), other, share(2, &v, None)]).unwrap_err();
        assert!(err.contains("share 1 of run u"), "{err}");
        let mut short = share(1, &v, None);
        short.agents.pop();
        short.figures.agents -= 1;
        let err = merge(vec![share(0, &v, None), short, share(2, &v, None)]).unwrap_err();
        assert!(err.contains("hold 3, 1, 2 agents: not the 6 agents"), "{err}");
        let mut bad = share(1, &v, None);
        bad.histograms.insert("submit_to_ack".into(), "not base64!".into());
        let err = merge(vec![share(0, &v, None), bad, share(2, &v, None)]).unwrap_err();
        assert!(err.contains("share 1's submit_to_ack histogram: not base64"), "{err}");
        assert!(merge(Vec::new()).unwrap_err().contains("no share"));
    }

    #[test]
    fn market_data_is_kept_with_the_first_agent_that_received_it() {
        let view = |tops: &[u64], trades: &[u64]| {
            let mut v = AgentView::default();
            v.received.tops.insert("ACME".into(), tops.iter().map(|&s| (s, [s as i64, 1, 0, 0])).collect());
            v.received.trades.insert("ACME".into(), trades.iter().map(|&s| (s, s, 100, 1)).collect());
            v
        };
        let mut views = vec![view(&[1, 2], &[]), view(&[1, 2, 3], &[7]), view(&[2, 3, 4], &[7, 8]), view(&[], &[])];
        drop_repeated_market_data(&mut views);
        let tops = |v: &AgentView| v.received.tops.get("ACME").map(|t| t.iter().map(|t| t.0).collect::<Vec<_>>());
        let trades = |v: &AgentView| v.received.trades.get("ACME").map(|t| t.iter().map(|t| t.0).collect::<Vec<_>>());
        assert_eq!(
            views.iter().map(tops).collect::<Vec<_>>(),
            vec![Some(vec![1, 2]), Some(vec![3]), Some(vec![4]), None]
        );
        assert_eq!(views.iter().map(trades).collect::<Vec<_>>(), vec![None, Some(vec![7]), Some(vec![8]), None]);
    }

    #[test]
    fn the_shares_take_every_agent_once() {
        for (agents, shares) in [(0, 1), (1, 3), (7, 3), (12, 4), (5, 8)] {
            let mut taken: Vec<usize> = (0..shares).flat_map(|k| share_places(agents, k, shares)).collect();
            taken.sort_unstable();
            assert_eq!(taken, (0..agents).collect::<Vec<_>>(), "{agents} agents over {shares} shares");
        }
    }

    #[test]
    fn run_ids_are_fresh_and_make_valid_user_names() {
        let text = include_str!("../baseline.toml");
        let scn = Scenario::parse(text).unwrap();
        let (a, b) = (new_run_id(), new_run_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 12, "{a}");
        let users = user_names(&scn, 1, &a).unwrap();
        assert_eq!(users.len(), 12);
        assert!(users.iter().all(|u| u.ends_with(&format!("-{a}")) && u.len() <= USER_NAME_BYTES_MAX), "{users:?}");
        let err = user_names(&scn, 1, "Upper").unwrap_err();
        assert!(err.contains("a-z, 0-9"), "{err}");
        let err = user_names(&scn, 1, &"x".repeat(20)).unwrap_err();
        assert!(err.contains("use a run id of at most 16 bytes"), "{err}");
        assert_eq!(base36(0), "0");
        assert_eq!(base36(36 * 36 - 1), "zz");
    }
}
