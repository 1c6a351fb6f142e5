//! `fafnir run` for real: the agents drive a platform on real NATS and Redis,
//! either started in this process under a fresh namespace or already running
//! (`--gateway`). Fault schedules need the simulation and are refused here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fafnir_platform::config::PlatformConfig;
use fafnir_platform::services::{launch, Deps};

use crate::driver::{self, AgentHandle, Recorder};
use crate::progress::{Progress, ProgressFn, RunClock, PROGRESS_EVERY};
use crate::run;
use crate::scenario::Scenario;
use fafnir_platform::telemetry::cpu_metered_on;

/// Where the platform is.
pub struct Target {
    /// None: start the platform in this process.
    pub gateway: Option<SocketAddr>,
    pub nats: String,
    pub redis: String,
    /// The running platform's namespace (with `gateway`); a fresh one otherwise.
    pub namespace: Option<String>,
}

/// Runs started by this process.
static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What a real run produced.
pub type RealRun = run::RunResult;

fn platform_config(scn: &Scenario, target: &Target, run_id: &str) -> PlatformConfig {
    let mut cfg = PlatformConfig::local_default();
    cfg.instruments = scn.instruments.clone();
    cfg.engine_shards = scn.engine_shards.clone();
    cfg.nats_addr = target.nats.clone();
    cfg.redis_addr = target.redis.clone();
    cfg.namespace = target.namespace.clone().unwrap_or_else(|| format!("run-{run_id}"));
    // Only this process's platform signs with it (and it dies with the run);
    // with --gateway it is unused: the agents log in to the running platform.
    cfg.jwt_secret = crate::real::random_secret();
    cfg.measure_cpu = scn.measure_cpu;
    cfg.rate_limit.per_second = 1_000_000;
    cfg.rate_limit.burst = 1_000_000;
    // Every agent registers and logs in from this one address.
    cfg.peer_rate_limit = cfg.rate_limit;
    let ports = crate::real::free_ports(5 + scn.engine_shards.len());
    let host: std::net::IpAddr = [127, 0, 0, 1].into();
    cfg.addrs = fafnir_platform::config::ServiceAddrs {
        gateway: target.gateway.unwrap_or(SocketAddr::new(host, ports[0])),
        auth: SocketAddr::new(host, ports[1]),
        market: SocketAddr::new(host, ports[2]),
        orders: SocketAddr::new(host, ports[3]),
        portfolio: SocketAddr::new(host, ports[4]),
        engines: (0..scn.engine_shards.len()).map(|i| SocketAddr::new(host, ports[5 + i])).collect(),
    };
    cfg
}

/// Refuses what only the simulation can play: a fault schedule, a nemesis, buggify.
pub fn refuse_faults(scn: &Scenario) -> Result<(), String> {
    if scn.nemesis.is_some() || scn.buggify || scn.buggify_network {
        return Err("the scenario has a [nemesis] or buggify: faults run in the simulation (cargo fafnir run …)".into());
    }
    if !scn.faults.is_empty() {
        return Err(format!(
            "the scenario has {} faults: fault schedules run in the simulation (cargo fafnir run …)",
            scn.faults.len()
        ));
    }
    Ok(())
}

/// The platform a run drives: started in this process under a fresh
/// namespace ([`Platform::start`]), or already running at `--gateway`
/// ([`Platform::attach`]).
pub struct Platform {
    deps: Deps,
    nats: Arc<fafnir_platform::bus::nats::NatsBus>,
    /// The in-process platform's services and runtime (None: attached).
    local: Option<(BTreeMap<String, launch::ServiceHandle>, PlatformRuntime)>,
}

impl Platform {
    /// Starts the platform in this process, on threads of its own (so that
    /// the CPU it uses and the load generator's can be told apart), on the
    /// NATS and Redis at `nats` and `redis`, under the fresh namespace
    /// `run-<run_id>`; returns once every service is serving.
    pub async fn start(scn: &Scenario, nats: &str, redis: &str, run_id: &str) -> Result<Platform, String> {
        let target = Target { gateway: None, nats: nats.into(), redis: redis.into(), namespace: None };
        let cfg = platform_config(scn, &target, run_id);
        let rt = PlatformRuntime::new()?;
        let (deps, nats) = rt.handle().spawn(crate::real::connect(cfg)).await.map_err(|e| e.to_string())??;
        let mut services = {
            let _on_platform_threads = rt.handle().enter();
            launch::spawn_all(&deps)
        };
        launch::wait_until_serving_or_stopped(&deps, &mut services, Duration::from_secs(30)).await?;
        Ok(Platform { deps, nats, local: Some((services, rt)) })
    }

    /// Connects to the NATS and Redis of the platform at `target.gateway`,
    /// under `target.namespace` (`run-<run_id>` when it has none).
    pub async fn attach(scn: &Scenario, target: &Target, run_id: &str) -> Result<Platform, String> {
        let cfg = platform_config(scn, target, run_id);
        let (deps, nats) = crate::real::connect(cfg).await?;
        Ok(Platform { deps, nats, local: None })
    }

    /// What the platform's services are given: its configuration (the
    /// gateway's address, the namespace), its bus, its store and its clock.
    pub fn deps(&self) -> &Deps {
        &self.deps
    }

    /// Refuses a platform that has been traded on before: the checker
    /// verifies every account and order in the streams, and it holds the
    /// tokens of this run's agents only (another run's accounts would read
    /// as reporting no portfolio, their orders as never finished: a
    /// violation the platform did not commit).
    pub async fn refuse_if_traded(&self) -> Result<(), String> {
        let names = self.deps.cfg.names();
        let orders = names.orders_stream();
        // No stream (an error): nothing was traded under this namespace; the
        // run's own set-up says what is wrong with the platform if anything is.
        let held = self.deps.bus.last_seq(&orders).await.unwrap_or(0);
        if held > 0 {
            return Err(format!(
                "the platform at --gateway (namespace {}) has been traded on before ({orders} holds {held} events): \
                 the checker can verify only a platform this run is the first to trade on; start it afresh \
                 or under a new namespace (fafnir up --namespace <new>) and pass that --namespace",
                self.deps.cfg.namespace
            ));
        }
        Ok(())
    }

    /// Stops the in-process platform and drops its streams and keys (the
    /// run directory keeps what the run measured and the checker's
    /// verdict); leaves a platform it attached to as it is.
    pub async fn stop(self) {
        let Some((services, _rt)) = self.local else { return };
        for (_, h) in services {
            h.stop(Duration::from_secs(2)).await;
        }
        let prefix = self.deps.cfg.names().orders_stream().trim_end_matches("ORDERS").to_string();
        let _ = self.nats.delete_streams_with_prefix(&prefix).await;
        let _ = fafnir_platform::kv::wipe_prefix(self.deps.kv.as_ref(), &self.deps.cfg.names().key_prefix()).await;
    }
}

/// Runs `scn` against real servers, reporting progress to `progress` every
/// [`PROGRESS_EVERY`] of wall time while the load and liveness phases last.
///
/// A run that starts ends in a result, also when it stops early: a platform
/// that does not settle is a liveness outcome, a panic of the harness or an
/// agent a crash, each with what was measured until then. Only a run that
/// cannot start (servers unreachable, ports taken) is an error.
pub async fn run(
    scn: &Scenario,
    seed: u64,
    target: Target,
    config_hash: String,
    rerun: String,
    progress: Option<ProgressFn>,
) -> Result<RealRun, String> {
    use futures::FutureExt as _;
    refuse_faults(scn)?;
    // Unique per run of this process too: a capacity measurement runs one a step.
    let nth = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let run_id = format!("{}-{seed}-{}-{nth}", scn.name, std::process::id());
    let platform = match target.gateway {
        Some(_) => {
            let p = Platform::attach(scn, &target, &run_id).await?;
            p.refuse_if_traded().await?;
            p
        }
        None => Platform::start(scn, &target.nats, &target.redis, &run_id).await?,
    };
    let deps = platform.deps();
    let meta = run::RunMeta {
        mode: format!("real (namespace {})", deps.cfg.namespace),
        seed,
        config_hash,
        trace_hash: "-".into(),
        rerun,
        agents: run::agent_plan(scn, seed).len() as u64,
        nemesis: None,
    };
    crate::observe::install_global();
    let rec = Arc::new(Mutex::new(Recorder::new(fafnir_platform::time::Instant::now())));
    let measured = std::panic::AssertUnwindSafe(measure(scn, seed, deps, &rec, meta.clone(), progress, nth));
    let result = match measured.catch_unwind().await {
        Ok(Ok(result)) => result,
        Ok(Err(stopped)) => run::stopped(scn, meta, snapshot(&rec), stopped),
        Err(panic) => {
            let why = run::Stopped::Crash(format!("panic: {}", run::panic_message(&*panic)));
            run::stopped(scn, meta, snapshot(&rec), why)
        }
    };
    platform.stop().await;
    Ok(result)
}

/// The name of the in-process platform's threads (the OS keeps 15 bytes).
const PLATFORM_THREADS: &str = "fafnir-platform";

/// The in-process platform's own runtime, shut down (without waiting for
/// its tasks) when dropped, also on an early return of the run.
struct PlatformRuntime(Option<tokio::runtime::Runtime>);

impl PlatformRuntime {
    fn new() -> Result<PlatformRuntime, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .thread_name(PLATFORM_THREADS)
            .enable_all()
            .build()
            .map_err(|e| format!("the platform's runtime: {e}"))?;
        Ok(PlatformRuntime(Some(rt)))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("running until dropped").handle()
    }
}

impl Drop for PlatformRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Each thread of this process now: its id, whether it is the in-process
/// platform's, and its CPU time so far (user and system, in the kernel's
/// 1/100 s ticks).
fn threads() -> BTreeMap<u64, (bool, u64)> {
    let mut threads = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return threads };
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<u64>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        // "tid (name) state ppid ...": the name may hold spaces, so split after its ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // utime and stime are the stat file's fields 14 and 15; `fields` starts at field 3.
        let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        threads.insert(tid, (&stat[open + 1..close] == PLATFORM_THREADS, field(11) + field(12)));
    }
    threads
}

/// The CPU this process uses from the moment it is made.
pub(crate) struct CpuMeter {
    start: BTreeMap<u64, (bool, u64)>,
    at: fafnir_platform::time::Instant,
}

impl CpuMeter {
    pub(crate) fn start() -> CpuMeter {
        CpuMeter { start: threads(), at: fafnir_platform::time::Instant::now() }
    }

    /// The share of the machine's CPU used since the start, each thread's
    /// own (threads that have exited meanwhile are not counted): the
    /// platform's threads', when it runs in this process, and the rest's.
    pub(crate) fn share(&self) -> crate::driver::CpuShare {
        let (mut platform, mut rest) = (None, 0);
        for (tid, (is_platform, ticks)) in threads() {
            let used = ticks.saturating_sub(self.start.get(&tid).map_or(0, |s| s.1));
            if is_platform {
                *platform.get_or_insert(0) += used;
            } else {
                rest += used;
            }
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let wall_ms = (self.at.elapsed().as_millis() as u64).max(1);
        let pct = |ticks: u64| (ticks * 10 * 100 / (wall_ms * cores)) as u32;
        // Clock ticks are 10 ms (USER_HZ 100).
        crate::driver::CpuShare {
            load_generator_pct: pct(rest),
            platform_pct: platform.map(pct),
            load_generator_cpu_ms: rest * 10,
            platform_cpu_ms: platform.map(|t| t * 10),
        }
    }
}

/// What the recorder holds (a panic may have poisoned its lock; each update
/// is made whole under it, so it is read all the same).
fn snapshot(rec: &Mutex<Recorder>) -> Recorder {
    rec.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Set-up, load, liveness phase and checker of a real run, recording into `rec`.
async fn measure(
    scn: &Scenario,
    seed: u64,
    deps: &Deps,
    rec: &Arc<Mutex<Recorder>>,
    meta: run::RunMeta,
    progress: Option<ProgressFn>,
    nth: u64,
) -> Result<RealRun, run::Stopped> {
    let plan = run::agent_plan(scn, seed);
    // Unique per run, so a running platform can host many runs (and
    // within the 32 bytes of a username: "market-maker-0-12-4242r3").
    let users: Vec<String> = plan.iter().map(|(name, ..)| format!("{name}-{}r{nth}", std::process::id())).collect();
    // Listening until this returns (the liveness phase hears fills settle): dropped then.
    let set_up = set_up_agents(scn, deps.cfg.addrs.gateway, &plan, &users, rec, deps.clock.clone()).await?;
    let agents = &set_up.handles;
    fafnir_platform::time::sleep(SUBSCRIPTIONS_SETTLE).await;
    let t0 = fafnir_platform::time::Instant::now();
    start_recording(rec, t0, deps.clock.now_ms());
    let ticker = progress.map(|report| tokio::spawn(tick(rec.clone(), t0, scn.duration, report)));
    let refresh = crate::observe::Refresh::of(deps.bus.clone(), &deps.cfg.names());
    let sampler = tokio::spawn(sample_metrics(rec.clone(), t0, refresh));
    let load = match drive(scn, agents, &plan, rec, t0).await {
        Ok(()) => liveness_phase(scn, deps).await,
        Err(crashed) => Err(crashed),
    };
    sampler.abort();
    let _ = sampler.await;
    let lags = crate::observe::Refresh::of(deps.bus.clone(), &deps.cfg.names()).consumer_lags().await;
    rec.lock().expect("recorder").metrics.sample_last(&crate::observe::install_global(), t0.elapsed(), &lags);
    if let Some(ticker) = ticker {
        // Awaited, not only aborted: no bar is drawn once the run has returned.
        ticker.abort();
        let _ = ticker.await;
    }
    load?;
    let mut input = run::gather(deps.bus.as_ref(), &deps.cfg, agents).await.map_err(run::Stopped::from_error)?;
    let recorder = snapshot(rec);
    input.hostile = recorder.hostile.clone();
    Ok(run::finish(scn, meta, recorder, &input))
}

/// How long the streams the agents opened at set-up get to be open before
/// the load starts.
pub(crate) const SUBSCRIPTIONS_SETTLE: Duration = Duration::from_millis(200);

/// A run's agents, set up at the gateway and listening.
pub(crate) struct Agents {
    /// In the order of the plan they were set up from.
    pub(crate) handles: Vec<Arc<AgentHandle>>,
    /// The tasks that follow their execution reports and market data: they
    /// run (reconnecting when a stream breaks) until aborted, which dropping
    /// the agents does.
    pub(crate) listeners: Vec<tokio::task::JoinHandle<()>>,
}

impl Agents {
    /// Stops the listeners: nothing reaches the agents' state any more.
    pub(crate) fn stop_listening(&mut self) {
        self.listeners.drain(..).for_each(|l| l.abort());
    }
}

impl Drop for Agents {
    /// A listener outlives its run otherwise: a dropped JoinHandle detaches
    /// its task, and an execution follower retries a stopped gateway every
    /// 100 ms for as long as the process lives (each capacity step, fidelity
    /// repeat or calibration run left all its agents doing so, spending the
    /// load generator's CPU in every later step).
    fn drop(&mut self) {
        self.stop_listening();
    }
}

/// Registers each agent of `plan` at the gateway as the user of the same
/// place in `users`, deposits its starting cash and shares and opens its
/// streams (one market-data subscription for them all when the scenario
/// shares it), which record into `rec`. A set-up that fails is a liveness
/// failure of the platform.
pub(crate) async fn set_up_agents(
    scn: &Scenario,
    gateway: SocketAddr,
    plan: &[(String, usize, u32, u64)],
    users: &[String],
    rec: &Arc<Mutex<Recorder>>,
    clock: Arc<dyn fafnir_platform::clock::Clock>,
) -> Result<Agents, run::Stopped> {
    assert_eq!(plan.len(), users.len(), "one user per agent");
    // Calibrating: the load generator's own CPU is metered, per request and per market-data update.
    let meter = scn.measure_cpu.then(|| clock.clone());
    let mut agents = Agents { handles: Vec::new(), listeners: Vec::new() };
    for ((name, p, _, _), user) in plan.iter().zip(users) {
        let pop = &scn.populations[*p];
        let handle = match AgentHandle::setup(gateway, user, pop.cash_cents, &pop.holdings).await {
            Ok(handle) => handle,
            Err(e) => {
                // Dropping them stops the listeners already started: a worker outlives a failed share.
                return Err(run::Stopped::Liveness(format!("liveness: the set-up of {name} failed: {e}")));
            }
        };
        let handle = Arc::new(AgentHandle { cpu_clock: meter.clone(), ..handle });
        let (h, r) = (handle.clone(), rec.clone());
        let executions = driver::keep_following_executions(h, r);
        agents.listeners.push(tokio::spawn(cpu_metered_on(meter.clone(), driver::LOADGEN_REQUEST, executions)));
        if !scn.shared_market_data {
            let (h, r, clock) = (handle.clone(), rec.clone(), clock.clone());
            let follow = async move {
                if let Ok(s) = driver::retry(|| h.client.market_data(&[])).await {
                    driver::follow_market_data(s, vec![h.state.clone()], r, clock).await;
                }
            };
            agents.listeners.push(tokio::spawn(cpu_metered_on(meter.clone(), driver::LOADGEN_MARKET_DATA, follow)));
        }
        agents.handles.push(handle);
    }
    if let (true, Some(first)) = (scn.shared_market_data, agents.handles.first()) {
        // One subscription for the whole load generator.
        let (h, r) = (first.clone(), rec.clone());
        let states = agents.handles.iter().map(|a| a.state.clone()).collect();
        let follow = async move {
            if let Ok(s) = driver::retry(|| h.client.market_data(&[])).await {
                driver::follow_market_data(s, states, r, clock).await;
            }
        };
        agents.listeners.push(tokio::spawn(cpu_metered_on(meter, driver::LOADGEN_MARKET_DATA, follow)));
    }
    Ok(agents)
}

/// Starts the recorder afresh at `t0`, the start of the load (what set-up
/// received is not part of the run), when the platform's clock read
/// `t0_clock_ms`.
pub(crate) fn start_recording(rec: &Mutex<Recorder>, t0: fafnir_platform::time::Instant, t0_clock_ms: i64) {
    let mut r = rec.lock().expect("recorder");
    *r = Recorder::new(t0);
    r.t0_clock_ms = t0_clock_ms;
}

/// The load phase: every agent of `plan` (with its handle at the same
/// place in `agents`) trades for the scenario's duration from `t0`; returns
/// when every request has been answered or has timed out, with the CPU the
/// process used meanwhile in the recorder.
pub(crate) async fn drive(
    scn: &Scenario,
    agents: &[Arc<AgentHandle>],
    plan: &[(String, usize, u32, u64)],
    rec: &Arc<Mutex<Recorder>>,
    t0: fafnir_platform::time::Instant,
) -> Result<(), run::Stopped> {
    assert_eq!(agents.len(), plan.len(), "one handle per agent");
    let cpu = CpuMeter::start();
    let mut runs = Vec::new();
    for (handle, (_, p, i, agent_seed)) in agents.iter().zip(plan) {
        let agent = scn.populations[*p].config.build(*agent_seed, *i, &scn.symbols);
        let run = driver::run_agent(agent, handle.clone(), rec.clone(), t0, scn.duration);
        runs.push(tokio::spawn(cpu_metered_on(handle.cpu_clock.clone(), driver::LOADGEN_REQUEST, run)));
    }
    for r in runs {
        r.await.map_err(|e| run::Stopped::Crash(format!("an agent crashed: {e}")))?;
    }
    rec.lock().expect("recorder").cpu = Some(cpu.share());
    Ok(())
}

/// The liveness phase: the platform settles within the scenario's quiesce time.
pub(crate) async fn liveness_phase(scn: &Scenario, deps: &Deps) -> Result<(), run::Stopped> {
    if let Err(why) = run::quiesce(deps.bus.as_ref(), &deps.cfg, scn.quiesce, Duration::from_secs(1)).await {
        return Err(run::Stopped::Liveness(format!(
            "liveness: the platform did not quiesce within {:?}: {why}",
            scn.quiesce
        )));
    }
    Ok(())
}

/// Samples the process's metrics (the load generator's, and the platform's
/// when it runs in this process) with the consumers' lag, each second since
/// `t0`, until aborted. A sample (rendering every series and reading them
/// back) takes 4-10 ms of CPU here: it runs on a blocking thread, and the
/// recorder, which every agent's reply needs, is held only to store it.
/// Taken on the runtime under the recorder's lock, it held the agents'
/// replies once a second, and a real run's p99 measured that, not the
/// platform.
async fn sample_metrics(
    rec: Arc<Mutex<Recorder>>,
    t0: fafnir_platform::time::Instant,
    refresh: crate::observe::Refresh,
) {
    let handle = crate::observe::install_global();
    let mut every = fafnir_platform::time::interval_at(t0, Duration::from_secs(1));
    every.set_missed_tick_behavior(fafnir_platform::time::MissedTickBehavior::Skip);
    loop {
        every.tick().await;
        let lags = refresh.consumer_lags().await;
        let Some(t_s) = rec.lock().expect("recorder").metrics.due(t0.elapsed()) else { continue };
        let handle = handle.clone();
        match tokio::task::spawn_blocking(move || crate::observe::snapshot(&handle, t_s, &lags)).await {
            Ok(taken) => rec.lock().expect("recorder").metrics.push(taken),
            Err(e) => tracing::warn!(error = %e, "a metrics sample was not taken"),
        }
    }
}

/// Reports progress every [`PROGRESS_EVERY`] of wall time since `t0`, until aborted.
async fn tick(rec: Arc<Mutex<Recorder>>, t0: fafnir_platform::time::Instant, duration: Duration, report: ProgressFn) {
    let mut every = fafnir_platform::time::interval_at(t0 + PROGRESS_EVERY, PROGRESS_EVERY);
    // A busy runtime skips a redraw rather than drawing several at once.
    every.set_missed_tick_behavior(fafnir_platform::time::MissedTickBehavior::Skip);
    loop {
        every.tick().await;
        let p = Progress::read(&rec.lock().expect("recorder"), RunClock::Wall, t0.elapsed(), duration);
        report(&p);
    }
}

#[cfg(test)]
mod tests {
    use super::Agents;
    use std::sync::Arc;

    #[tokio::test]
    async fn dropping_a_runs_agents_stops_their_listeners() {
        // A listener holds its share of `alive` for as long as its task lives.
        let alive = Arc::new(());
        let held = alive.clone();
        let listener = tokio::spawn(async move {
            let _held = held;
            futures::future::pending::<()>().await
        });
        let agents = Agents { handles: Vec::new(), listeners: vec![listener] };
        tokio::task::yield_now().await;
        assert_eq!(Arc::strong_count(&alive), 2, "the listener runs while the agents do");
        drop(agents);
        for _ in 0..100 {
            if Arc::strong_count(&alive) == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(Arc::strong_count(&alive), 1, "the listener outlived its run's agents");
    }
}
