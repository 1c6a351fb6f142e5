//! Distributed load (issue 20, point 3) against the real NATS and Redis on
//! 127.0.0.1:4222 and :6379: one seeded scenario run as one share and as
//! three (three tasks of this process standing in for three workers), each
//! on a fresh in-process platform under a namespace of its own. The same
//! orders are submitted either way, the merged histograms hold every part's
//! latencies, and the checker, run once on the platform, passes.
#![cfg(not(madsim))]

use std::collections::BTreeSet;

use fafnir_scenarios::real_run::{Platform, Target};
use fafnir_scenarios::run::{RunMeta, RunResult};
use fafnir_scenarios::scenario::Scenario;
use fafnir_scenarios::split_load::{self, LoadJob, Merged, ShareResult};

const NATS: &str = "127.0.0.1:4222";
const REDIS: &str = "127.0.0.1:6379";

/// Noise traders whose orders the seed fixes, however they are split.
const SCENARIO: &str = include_str!("support/split-noise.toml");

const SEED: u64 = 11;

/// How far ahead of the jobs the barrier is: set-up registers every agent
/// (a password hash each) on a machine the test shares.
const BARRIER_AHEAD_MS: u64 = 8_000;

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_millis() as u64
}

struct Distributed {
    run_id: String,
    shares: Vec<ShareResult>,
    merged: Merged,
    run: RunResult,
}

/// `text` run with `seed` as `shares` shares, concurrently, on a fresh platform.
async fn distributed(text: &str, seed: u64, shares: u32) -> Distributed {
    let scn = Scenario::parse(text).unwrap();
    let run_id = split_load::new_run_id();
    let platform =
        Platform::start(&scn, NATS, REDIS, &run_id).await.unwrap_or_else(|e| panic!("real servers needed: {e}"));
    let target = || Target {
        gateway: Some(platform.deps().cfg.addrs.gateway),
        nats: NATS.into(),
        redis: REDIS.into(),
        namespace: Some(platform.deps().cfg.namespace.clone()),
    };
    split_load::preflight(&scn, seed, &run_id, &target()).await.unwrap();
    let start_at_unix_ms = unix_ms() + BARRIER_AHEAD_MS;
    let workers: Vec<_> = (0..shares)
        .map(|share| {
            let job = LoadJob {
                run_id: run_id.clone(),
                scenario_text: text.into(),
                seed,
                gateway: platform.deps().cfg.addrs.gateway.to_string(),
                share,
                shares,
                capacity: None,
                start_at_unix_ms,
            };
            // Through JSON, as a job travels.
            let job: LoadJob = serde_json::from_str(&serde_json::to_string(&job).unwrap()).unwrap();
            tokio::spawn(async move { split_load::run_share(&job).await })
        })
        .collect();
    let mut loaded = Vec::new();
    for w in workers {
        loaded.push(w.await.expect("the worker task").unwrap_or_else(|e| panic!("a share failed: {e}")));
    }
    for l in &loaded {
        let f = l.figures();
        assert!(f.t0_unix_ms >= start_at_unix_ms && f.t0_unix_ms < start_at_unix_ms + 500, "{f:?}");
        assert!(f.setup_ms > 0 && f.load_ms > 0, "{f:?}");
    }
    let quiesced = split_load::quiesce(&scn, &target()).await;
    let results: Vec<ShareResult> = loaded
        .into_iter()
        .map(|l| {
            let json = serde_json::to_string(&l.result()).unwrap();
            eprintln!("share result of {shares} shares: {} bytes of JSON", json.len());
            serde_json::from_str(&json).unwrap()
        })
        .collect();
    let merged = split_load::merge(results.clone()).unwrap();
    let meta = RunMeta {
        mode: format!("real, {shares} shares"),
        seed,
        config_hash: "test".into(),
        trace_hash: "-".into(),
        rerun: "test".into(),
        agents: merged.users.len() as u64,
        nemesis: None,
    };
    let run = split_load::finish(&scn, seed, target(), merged.clone(), quiesced, meta).await.unwrap();
    platform.stop().await;
    Distributed { run_id, shares: results, merged, run }
}

fn passed(d: &Distributed) {
    let s = &d.run.summary;
    assert!(s.checker.passed && s.checker.checks.len() == 11, "{:#?}", s.checker);
    assert!(s.checker.checks.iter().all(|c| c.passed), "{:#?}", s.checker);
    assert!(s.error_budget.passed, "{:?} {:?}", s.error_budget, s.errors);
    assert_eq!(s.outcome, fafnir_scenarios::run::Outcome::Success, "{:?}", s.stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_share_and_three_submit_the_same_orders_and_pass_the_checker() {
    let one = distributed(SCENARIO, SEED, 1).await;
    let three = distributed(SCENARIO, SEED, 3).await;
    eprintln!(
        "one: {:?}\nthree: {:?}\nshares: {:?}",
        one.run.summary.counts, three.run.summary.counts, three.merged.shares
    );
    passed(&one);
    passed(&three);
    let (a, b) = (&one.run.summary.counts, &three.run.summary.counts);
    assert!(a.submitted > 150, "7 traders at 20 a second for 2 s: {a:?}");
    assert_eq!(a.submitted, b.submitted, "the seed fixes the orders submitted: {a:?} {b:?}");
    assert!(a.fills_reported > 0 && b.fills_reported > 0, "the traders traded: {a:?} {b:?}");
    for c in [a, b] {
        assert_eq!(c.accepted + c.rejected + c.failed + c.timed_out, c.submitted, "{c:?}");
    }

    // Every part's latencies are in the merged histograms, exactly once.
    assert_eq!(three.shares.len(), 3);
    for stage in fafnir_scenarios::scenario::STAGES {
        let parts: u64 =
            three.shares.iter().map(|s| split_load::decode_histogram(&s.histograms[stage]).unwrap().len()).sum();
        assert_eq!(three.merged.histograms[stage].len(), parts, "{stage}");
        assert_eq!(three.run.summary.stages[stage].count, parts, "{stage}");
    }
    let acks = three.merged.histograms["submit_to_ack"].len();
    assert_eq!(acks, b.accepted, "one submit_to_ack latency per accepted order");
    assert_eq!(one.merged.histograms["submit_to_ack"].len(), a.accepted);
    let shares_submitted: u64 = three.shares.iter().map(|s| s.figures.submitted).sum();
    assert_eq!(shares_submitted, b.submitted);
    let lags: u64 = three.shares.iter().map(|s| split_load::decode_histogram(&s.send_lag).unwrap().len()).sum();
    assert_eq!((three.merged.send_lag.len(), lags), (lags, three.run.recorder.send_lag.len()));
    // The timeline's buckets hold every accepted order's latency, once.
    let in_buckets: u64 =
        three.run.timeline.buckets.iter().filter_map(|b| b.stages.get("submit_to_ack")).map(|s| s.count).sum();
    assert_eq!(in_buckets, acks);
    assert_eq!(three.run.timeline.buckets.iter().map(|b| b.accepted).sum::<u64>(), b.accepted);

    // Every agent once, its user distinct across shares and runs.
    let users: Vec<&String> = three.shares.iter().flat_map(|s| s.agents.iter().map(|a| &a.user_name)).collect();
    let distinct: BTreeSet<&String> = users.iter().copied().collect();
    assert_eq!((users.len(), distinct.len()), (7, 7), "{users:?}");
    assert!(users.iter().all(|u| u.ends_with(&format!("-{}", three.run_id))), "{users:?}");
    assert_ne!(one.run_id, three.run_id);
    assert_eq!(three.shares.iter().map(|s| s.agents.len()).collect::<Vec<_>>(), vec![3, 2, 2]);
    let accounts: BTreeSet<u64> = three.merged.views.iter().map(|v| v.user).collect();
    assert_eq!(accounts.len(), 7, "seven accounts");
}

/// A worker whose set-up ends after the barrier refuses to start late,
/// saying by how much it missed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_set_up_after_the_barrier_says_by_how_much() {
    let scn = Scenario::parse(SCENARIO).unwrap();
    let run_id = split_load::new_run_id();
    let platform =
        Platform::start(&scn, NATS, REDIS, &run_id).await.unwrap_or_else(|e| panic!("real servers needed: {e}"));
    let job = LoadJob {
        run_id,
        scenario_text: SCENARIO.into(),
        seed: SEED,
        gateway: platform.deps().cfg.addrs.gateway.to_string(),
        share: 1,
        shares: 3,
        capacity: None,
        start_at_unix_ms: unix_ms(),
    };
    let err = split_load::run_share(&job).await.err().expect("too late");
    platform.stop().await;
    assert!(err.starts_with("share 1 of 3 of run"), "{err}");
    assert!(err.contains("ended") && err.contains("ms after the barrier"), "{err}");
}

/// A resting trader alone in share 0, who stops trading early, and a
/// taker alone in share 1, who trades to the end: the resting trader's
/// orders are filled after its share's load is over, and it is told so.
const LATE_FILLS: &str = r#"
name = "split-late-fills"
description = "One trader rests orders early on, another takes them until the end"
duration_ms = 2000
quiesce_ms = 15000
slos = ["submit_to_ack.p99 < 10s"]

[[instrument]]
symbol = "ACME"
tick_cents = 1
lot_shares = 1
start_price_cents = 10000
min_price_cents = 100
max_price_cents = 1000000

[[population]]
kind = "noise"
count = 1
cash_cents = 20000000
holdings = { ACME = 2000 }
rate_per_s = 4.0
market_pct = 0
marketable_pct = 0
offset_ticks_max = 1
cancel_pct = 0
cancel_min_age_ms = 86400000
max_open = 10000

[[population]]
kind = "noise"
count = 1
cash_cents = 20000000
holdings = { ACME = 2000 }
rate_per_s = 20.0
market_pct = 0
marketable_pct = 100
cancel_pct = 0
cancel_min_age_ms = 86400000
max_open = 10000
"#;

/// A share's agents listen until the coordinator has quiesced the
/// platform, not only until the share's own load is over: another share's
/// orders fill its resting orders after that, and the checker compares what
/// each agent was told with the platform's final records. (Taking share
/// 0's views when its load ended failed `agents_told_the_truth` on this
/// seed: "told 0 shares / 0 cents filled, record says 1 / 10004".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_whose_load_ends_early_hears_of_the_fills_after_it() {
    let scn = Scenario::parse(LATE_FILLS).unwrap();
    let resting_last_ms = last_wake_ms(&scn, LATE_FILLS_SEED, 0);
    assert!(resting_last_ms < 600, "the resting trader's last order is at {resting_last_ms} ms: pick another seed");
    let d = distributed(LATE_FILLS, LATE_FILLS_SEED, 2).await;
    let (resting, taking) = (&d.shares[0], &d.shares[1]);
    assert!(resting.figures.load_ms + 1_000 < taking.figures.load_ms, "{:?} {:?}", resting.figures, taking.figures);
    assert!(
        resting.counts.fills_reported > resting.figures.fills_reported,
        "the resting trader heard of fills after its share's load: {} then {}",
        resting.figures.fills_reported,
        resting.counts.fills_reported
    );
    passed(&d);
}

/// The resting trader's last order is at 498 ms (see [`last_wake_ms`]).
const LATE_FILLS_SEED: u64 = 44;

/// When the agent at `place` of the plan last wakes (ms from the start of
/// the load): its schedule is drawn from its seed alone.
fn last_wake_ms(scn: &Scenario, seed: u64, place: usize) -> u64 {
    let (_, p, i, agent_seed) = fafnir_scenarios::run::agent_plan(scn, seed).swap_remove(place);
    let mut agent = scn.populations[p].config.build(agent_seed, i, &scn.symbols);
    let (market, open) = (Default::default(), Default::default());
    let holdings = scn.populations[p].holdings.clone();
    let end_us = scn.duration.as_micros() as u64;
    let (mut now_us, mut last_us, mut intents) = (agent.start(0), 0, Vec::new());
    while now_us < end_us {
        last_us = now_us;
        let view = fafnir_scenarios::agents::View {
            now_us,
            now_ms: now_us / 1_000,
            market: &market,
            cash_cents: scn.populations[p].cash_cents,
            holdings: &holdings,
            open: &open,
        };
        match agent.wake(&view, &mut intents) {
            Some(next) => now_us = next,
            None => break,
        }
    }
    last_us / 1_000
}
