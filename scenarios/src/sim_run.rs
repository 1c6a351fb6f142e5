//! `fafnir run` in the simulation: the scenario's platform as a madsim world,
//! each agent on its own client node, the fault schedule playing from t0.

use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fafnir_sim::faults::FaultSchedule;
use fafnir_sim::nemesis::{self, NemesisOptions};
use fafnir_sim::service_time::{Dist, ServiceModel};
use fafnir_sim::world::{sim_addrs, NetworkModel, World, WorldSpec};

use crate::driver::{self, AgentHandle, Recorder};
use crate::progress::{Progress, ProgressFn, RunClock, PROGRESS_EVERY};
use crate::run;
use crate::scenario::Scenario;

/// What a simulated run produced.
pub type SimRun = run::RunResult;

fn world_spec(scn: &Scenario, seed: u64) -> WorldSpec {
    let mut spec = WorldSpec::standard(seed);
    spec.cfg.namespace = "run".into();
    spec.cfg.instruments = scn.instruments.clone();
    spec.cfg.engine_shards = scn.engine_shards.clone();
    spec.cfg.planted_bug = scn.planted_bug;
    spec.buggify = scn.buggify;
    spec.network_buggify = scn.buggify_network;
    spec.cfg.addrs = sim_addrs(scn.engine_shards.len());
    // Agents are well-behaved users; the rate limit is not what a run measures.
    spec.cfg.rate_limit.per_second = 1_000_000;
    spec.cfg.rate_limit.burst = 1_000_000;
    spec.network = NetworkModel { latency_us: scn.network.latency_us, loss_ppm: scn.network.loss_ppm };
    for (service, st) in &scn.service_time {
        let us = |i: usize| Duration::from_micros(st.us[i]);
        let dist = match st.dist.as_str() {
            "fixed" => Dist::Fixed(us(0)),
            "uniform" => Dist::Uniform(us(0), us(1)),
            _ => Dist::Exp(us(0)),
        };
        let handlers =
            st.handlers.iter().map(|(h, mean)| (h.clone(), Dist::Exp(Duration::from_micros(*mean)))).collect();
        spec.service_time.insert(
            service.clone(),
            ServiceModel {
                default: dist,
                handlers,
                concurrency: st.concurrency,
                cores: None,
                warm: st.wake_curve.as_ref().map(|points| {
                    points.iter().map(|[gap, share]| (Duration::from_micros(*gap), *share as u32)).collect()
                }),
                wake_latency: st.wake_latency_us.as_deref().map(delays),
                reply_wake: st.reply_wake_us.as_deref().map(delays),
                platform: false,
            },
        );
    }
    spec.cores = scn.cores;
    spec.core_sharing = scn.core_sharing.unwrap_or_default();
    spec
}

/// Points `[gap µs, µs]` as durations.
fn delays(points: &[[u64; 2]]) -> Vec<(Duration, Duration)> {
    points.iter().map(|[gap, us]| (Duration::from_micros(*gap), Duration::from_micros(*us))).collect()
}

/// What the random nemesis draws for `seed` (None when the scenario has none):
/// its options and the faults it adds to the scenario's own.
pub fn nemesis_draw(scn: &Scenario, seed: u64) -> Option<(NemesisOptions, FaultSchedule)> {
    let cfg = scn.nemesis.as_ref()?;
    let load_ms = scn.duration.as_millis() as u64;
    Some(nemesis::draw(fafnir_sim::rng::derive_seed(seed, "nemesis"), cfg, &scn.fault_targets(), load_ms))
}

/// Runs `scn` in a fresh madsim runtime with `seed`.
pub fn run(scn: &Scenario, seed: u64, config_hash: String, rerun: String) -> Result<SimRun, String> {
    run_with_progress(scn, seed, config_hash, rerun, None)
}

/// [`run`], reporting progress to `progress`. The progress ticker runs
/// whether or not anyone listens, so the trace is the same either way.
///
/// Every run that starts ends in a result: one that stops early (the
/// platform does not settle, or a panic anywhere in the world) has the
/// outcome liveness or crash, the reason in `stopped`, and what was measured
/// until then. Only a run that cannot start (a fault naming no node) is an
/// error.
pub fn run_with_progress(
    scn: &Scenario,
    seed: u64,
    config_hash: String,
    rerun: String,
    progress: Option<ProgressFn>,
) -> Result<SimRun, String> {
    run_observed(scn, seed, (config_hash, rerun), progress, true)
}

/// [`run`] without ever reading the world's metrics (no metrics.jsonl): a
/// run whose trace is compared against an observed one's.
pub fn run_unobserved(scn: &Scenario, seed: u64, config_hash: String, rerun: String) -> Result<SimRun, String> {
    run_observed(scn, seed, (config_hash, rerun), None, false)
}

fn run_observed(
    scn: &Scenario,
    seed: u64,
    (config_hash, rerun): (String, String),
    progress: Option<ProgressFn>,
    sample_metrics: bool,
) -> Result<SimRun, String> {
    let mut scn = scn.clone();
    let nemesis = nemesis_draw(&scn, seed).map(|(options, drawn)| {
        scn.faults.extend(drawn.faults);
        scn.faults.sort_by_key(|f| f.at_ms);
        options
    });
    // This world's metrics, recorded on this thread only. Made outside the
    // world: the recorder calibrates its clock against the machine's time.
    let recorder = crate::observe::recorder();
    let metrics_handle = sample_metrics.then(|| recorder.handle());
    let _recording = metrics::set_default_local_recorder(&recorder);
    crate::observe::describe();
    let rt = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
    let meta = run::RunMeta {
        mode: "simulation".into(),
        seed,
        config_hash,
        trace_hash: String::new(),
        rerun,
        agents: plan_len(&scn),
        nemesis,
    };
    // What the run measured, reachable after a panic has unwound the runtime.
    let measured: Measured = Arc::new(Mutex::new(None));
    let (scn_, meta_, measured_) = (scn.clone(), meta.clone(), measured.clone());
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(async move {
            let world = Arc::new(World::build(world_spec(&scn_, seed)));
            crate::driver::set_loadgen_time(world.loadgen.clone());
            let lag_seed = fafnir_sim::rng::derive_seed(seed, "send-lag");
            crate::driver::set_send_lag(scn_.send_lag_us.clone(), lag_seed);
            let schedule = FaultSchedule { faults: scn_.faults.clone() };
            schedule.validate(&world.node_names()).map_err(|e| format!("fault: {e}"))?;
            let driver_node = world.client_node("driver");
            let w = world.clone();
            let outcome = driver_node
                .spawn(async move { drive(w, scn_, schedule, meta_, (progress, metrics_handle), measured_).await })
                .await;
            let trace_hash = format!("{:016x}", world.trace.hash());
            // Every task of the world dropped before the runtime is (a sweep runs world after world).
            world.tear_down();
            crate::driver::set_loadgen_time(None);
            crate::driver::set_send_lag(None, 0);
            fafnir_platform::time::sleep(Duration::from_millis(1)).await;
            let outcome = outcome.map_err(|e| run::Stopped::Crash(format!("the driver crashed: {e}")));
            Ok((outcome.and_then(|r| r), trace_hash))
        })
    }));
    let mut meta = meta;
    let stopped = match ran {
        Ok(Err(cannot_start)) => return Err(cannot_start),
        Ok(Ok((Ok(result), _))) => return Ok(result),
        Ok(Ok((Err(stopped), trace_hash))) => {
            meta.trace_hash = trace_hash;
            stopped
        }
        // The world's trace is lost with it; the seed replays the panic.
        Err(panic) => run::Stopped::Crash(format!("panic: {}", run::panic_message(&*panic))),
    };
    let slot = measured.lock().unwrap_or_else(|e| e.into_inner()).take();
    let Some(rec) = slot else {
        // The world did not get as far as the driver: nothing was measured.
        return Err(match stopped {
            run::Stopped::Liveness(why) | run::Stopped::Crash(why) => format!("the simulated world crashed: {why}"),
        });
    };
    // A panic may have poisoned the recorder's lock: what it holds is whole
    // (each update is made under it), so it is read all the same.
    let rec = rec.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(run::stopped(&scn, meta, rec, stopped))
}

type Measured = Arc<Mutex<Option<Arc<Mutex<Recorder>>>>>;

fn plan_len(scn: &Scenario) -> u64 {
    scn.populations.iter().map(|p| u64::from(p.count)).sum()
}

async fn drive(
    world: Arc<World>,
    scn: Scenario,
    schedule: FaultSchedule,
    mut meta: run::RunMeta,
    (progress, metrics): (Option<ProgressFn>, Option<PrometheusHandle>),
    measured: Measured,
) -> Result<SimRun, run::Stopped> {
    let seed = meta.seed;
    let rec = Arc::new(Mutex::new(Recorder::new(fafnir_platform::time::Instant::now())));
    *measured.lock().expect("measured") = Some(rec.clone());
    if let Err(e) = world.try_wait_serving(Duration::from_secs(30)).await {
        return Err(run::Stopped::Liveness(format!("liveness: the platform did not come up: {e}")));
    }
    let gateway = world.cfg.addrs.gateway;
    // Set-up: every agent registers, deposits and subscribes, on its own node.
    let mut agents = Vec::new();
    let mut nodes = Vec::new();
    let plan = run::agent_plan(&scn, seed);
    for (name, p, _, _) in &plan {
        let node = world.client_node(name);
        let pop = &scn.populations[*p];
        let (n, cash, holdings) = (name.clone(), pop.cash_cents, pop.holdings.clone());
        let handle = node
            .spawn(async move { AgentHandle::setup(gateway, &n, cash, &holdings).await })
            .await
            .map_err(|e| run::Stopped::Crash(format!("the set-up of {name} crashed: {e}")))?
            .map_err(run::Stopped::from_error)?;
        let handle = Arc::new(handle);
        let (h, r) = (handle.clone(), rec.clone());
        node.spawn(driver::keep_following_executions(h, r));
        if !scn.shared_market_data {
            let (h, r, clock) = (handle.clone(), rec.clone(), world.clock);
            node.spawn(async move {
                if let Ok(s) = driver::retry(|| h.client.market_data(&[])).await {
                    driver::follow_market_data(s, vec![h.state.clone()], r, Arc::new(clock)).await;
                }
            });
        }
        agents.push(handle);
        nodes.push(node);
    }
    if let (true, Some(first)) = (scn.shared_market_data, agents.first()) {
        // One subscription for the whole load generator, on the first agent's node.
        let (h, r, clock) = (first.clone(), rec.clone(), world.clock);
        let states = agents.iter().map(|a| a.state.clone()).collect();
        nodes[0].spawn(async move {
            if let Ok(s) = driver::retry(|| h.client.market_data(&[])).await {
                driver::follow_market_data(s, states, r, Arc::new(clock)).await;
            }
        });
    }
    // Let the subscriptions reach the gateway before the first order.
    fafnir_platform::time::sleep(Duration::from_millis(200)).await;
    let t0 = fafnir_platform::time::Instant::now();
    {
        let mut r = rec.lock().expect("recorder");
        *r = Recorder::new(t0);
        r.t0_clock_ms = fafnir_platform::clock::Clock::now_ms(&world.clock);
    }
    let w = world.clone();
    let player = tokio::spawn(async move { w.play(&schedule).await });
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = tokio::spawn(tick(rec.clone(), (t0, scn.duration), done.clone(), progress, (world.clone(), metrics)));
    let mut runs = Vec::new();
    for ((handle, node), (_, p, i, agent_seed)) in agents.iter().zip(&nodes).zip(&plan) {
        let agent = scn.populations[*p].config.build(*agent_seed, *i, &scn.symbols);
        runs.push(node.spawn(driver::run_agent(agent, handle.clone(), rec.clone(), t0, scn.duration)));
    }
    for r in runs {
        r.await.map_err(|e| run::Stopped::Crash(format!("an agent crashed: {e}")))?;
    }
    player.await.map_err(|e| run::Stopped::Crash(format!("the fault player crashed: {e}")))?;
    // Liveness phase: faults are over; the platform must catch up and settle.
    if let Err(why) = run::quiesce(&world.bus(), &world.cfg, scn.quiesce, Duration::from_secs(2)).await {
        return Err(run::Stopped::Liveness(format!(
            "liveness: the platform did not quiesce within {:?} after the faults ended: {why}",
            scn.quiesce
        )));
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = ticker.await;
    let mut input = run::gather(&world.bus(), &world.cfg, &agents).await.map_err(run::Stopped::from_error)?;
    // The stream listeners still hold the recorder: take a snapshot.
    let recorder = rec.lock().expect("recorder").clone();
    input.hostile = recorder.hostile.clone();
    meta.trace_hash = format!("{:016x}", world.trace.hash());
    meta.agents = agents.len() as u64;
    Ok(run::finish(&scn, meta, recorder, &input))
}

/// Reports progress every [`PROGRESS_EVERY`] of simulated time until `done`.
/// Samples the world's metrics each simulated second on the same tick
/// (reading the recorder and the broker's state directly: no message
/// travels, so the trace is the same whether or not anyone reads them).
async fn tick(
    rec: Arc<Mutex<Recorder>>,
    (t0, duration): (fafnir_platform::time::Instant, Duration),
    done: Arc<std::sync::atomic::AtomicBool>,
    progress: Option<ProgressFn>,
    (world, metrics): (Arc<World>, Option<PrometheusHandle>),
) {
    let consumers = crate::observe::durable_consumers(&world.cfg.names());
    while !done.load(std::sync::atomic::Ordering::Relaxed) {
        fafnir_platform::time::sleep(PROGRESS_EVERY).await;
        if let Some(metrics) = &metrics {
            let lags = world.consumer_lags(&consumers);
            rec.lock().expect("recorder").metrics.sample_if_due(metrics, t0.elapsed(), &lags);
        }
        let Some(report) = &progress else { continue };
        let p = Progress::read(&rec.lock().expect("recorder"), RunClock::Simulated, t0.elapsed(), duration);
        report(&p);
    }
    if let Some(metrics) = &metrics {
        let lags = world.consumer_lags(&consumers);
        rec.lock().expect("recorder").metrics.sample_last(metrics, t0.elapsed(), &lags);
    }
}
