//! `fafnir run` in the simulation: the scenario's platform as a madsim world,
//! each agent on its own client node, the fault schedule playing from t0.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fafnir_sim::faults::FaultSchedule;
use fafnir_sim::service_time::{Dist, ServiceModel};
use fafnir_sim::world::{sim_addrs, NetworkModel, World, WorldSpec};

use crate::checker;
use crate::driver::{self, AgentHandle, Recorder};
use crate::run::{self, Summary};
use crate::scenario::Scenario;

/// What a simulated run produced.
pub struct SimRun {
    pub summary: Summary,
    pub recorder: Recorder,
}

fn world_spec(scn: &Scenario, seed: u64) -> WorldSpec {
    let mut spec = WorldSpec::standard(seed);
    spec.cfg.namespace = "run".into();
    spec.cfg.instruments = scn.instruments.clone();
    spec.cfg.engine_shards = scn.engine_shards.clone();
    spec.cfg.planted_bug = scn.planted_bug;
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
        spec.service_time.insert(
            service.clone(),
            ServiceModel { default: dist, handlers: Default::default(), concurrency: st.concurrency },
        );
    }
    spec
}

/// Runs `scn` in a fresh madsim runtime with `seed`.
pub fn run(scn: &Scenario, seed: u64, config_hash: String, rerun: String) -> Result<SimRun, String> {
    let rt = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
    let scn = scn.clone();
    rt.block_on(async move {
        let world = Arc::new(World::build(world_spec(&scn, seed)));
        let schedule = FaultSchedule { faults: scn.faults.clone() };
        schedule.validate(&world.node_names()).map_err(|e| format!("fault: {e}"))?;
        let driver_node = world.client_node("driver");
        let w = world.clone();
        let outcome = driver_node
            .spawn(async move { drive(w, scn, seed, schedule, config_hash, rerun).await })
            .await
            .map_err(|e| format!("driver crashed: {e}"))?;
        outcome
    })
}

async fn drive(
    world: Arc<World>,
    scn: Scenario,
    seed: u64,
    schedule: FaultSchedule,
    config_hash: String,
    rerun: String,
) -> Result<SimRun, String> {
    world.wait_serving(Duration::from_secs(30)).await;
    let gateway = world.cfg.addrs.gateway;
    // Set-up: every agent registers, deposits and subscribes, on its own node.
    let mut agents = Vec::new();
    let mut nodes = Vec::new();
    let plan = run::agent_plan(&scn, seed);
    let rec = Arc::new(Mutex::new(Recorder::new(tokio::time::Instant::now())));
    for (name, p, _, _) in &plan {
        let node = world.client_node(name);
        let pop = &scn.populations[*p];
        let (n, cash, holdings) = (name.clone(), pop.cash_cents, pop.holdings.clone());
        let handle = node
            .spawn(async move { AgentHandle::setup(gateway, &n, cash, &holdings).await })
            .await
            .map_err(|e| format!("set-up of {name} crashed: {e}"))??;
        let handle = Arc::new(handle);
        let (h, r) = (handle.clone(), rec.clone());
        node.spawn(async move {
            if let Ok(s) = driver::retry(|| h.client.executions()).await {
                driver::follow_executions(s, h.state.clone(), r).await;
            }
        });
        let (h, r, clock) = (handle.clone(), rec.clone(), world.clock);
        node.spawn(async move {
            if let Ok(s) = driver::retry(|| h.client.market_data(&[])).await {
                driver::follow_market_data(s, h.state.clone(), r, Arc::new(clock)).await;
            }
        });
        agents.push(handle);
        nodes.push(node);
    }
    // Let the subscriptions reach the gateway before the first order.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = tokio::time::Instant::now();
    *rec.lock().expect("recorder") = Recorder::new(t0);
    let w = world.clone();
    let player = tokio::spawn(async move { w.play(&schedule).await });
    let mut runs = Vec::new();
    for ((handle, node), (_, p, i, agent_seed)) in agents.iter().zip(&nodes).zip(&plan) {
        let agent = scn.populations[*p].config.build(*agent_seed, *i, &scn.symbols);
        runs.push(node.spawn(driver::run_agent(agent, handle.clone(), rec.clone(), t0, scn.duration)));
    }
    for r in runs {
        r.await.map_err(|e| format!("an agent crashed: {e}"))?;
    }
    player.await.map_err(|e| format!("fault player crashed: {e}"))?;
    // Liveness phase: faults are over; the platform must catch up and settle.
    if let Err(why) = run::quiesce(&world.bus(), &world.cfg, scn.quiesce, Duration::from_secs(2)).await {
        return Err(format!(
            "liveness: the platform did not quiesce within {:?} after the faults ended: {why}",
            scn.quiesce
        ));
    }
    let input = run::gather(&world.bus(), &world.cfg, &agents).await?;
    let verdict = checker::check(&input);
    // The stream listeners still hold the recorder: take a snapshot.
    let recorder = rec.lock().expect("recorder").clone();
    let (stages, slos, outcome) = run::judge(&recorder, &scn.slos, &verdict);
    let summary = Summary {
        scenario: scn.name.clone(),
        mode: "simulation".into(),
        seed,
        config_hash,
        trace_hash: format!("{:016x}", world.trace.hash()),
        duration_ms: scn.duration.as_millis() as u64,
        agents: agents.len() as u64,
        counts: recorder.counts.clone(),
        stages,
        accepted_per_s: throughput(&recorder, scn.duration),
        slos,
        checker: verdict,
        faults: scn.faults.clone(),
        outcome,
        rerun,
    };
    Ok(SimRun { summary, recorder })
}

fn throughput(rec: &Recorder, duration: Duration) -> Vec<u64> {
    (0..duration.as_secs().max(1)).map(|s| rec.accepted_per_s.get(&s).copied().unwrap_or(0)).collect()
}
