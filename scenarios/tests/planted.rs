//! Planted bugs (canaries): each [`PlantedBug`] is a realistic mistake; most
//! are ones a fault-free run never shows. For each, one short simulated run
//! (with the fault that exercises the broken recovery path, where there is
//! one) must be flagged with the bug planted, and the very same run (seed,
//! faults) must pass with it off, so a silent checker cannot pass for a
//! healthy platform and a recovery bug is not a bug that fires always.
#![cfg(madsim)]

use std::time::Duration;

use fafnir_platform::config::PlantedBug;
use fafnir_scenarios::run::Outcome;
use fafnir_scenarios::scenario::Scenario;
use fafnir_scenarios::sim_run::SimRun;
use fafnir_sim::faults::{Action, Fault};

/// A library scenario, shortened to `seconds`, with `faults` instead of its own.
fn scenario(file: &str, seconds: u64, faults: Vec<Fault>) -> Scenario {
    let path = format!("{}/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut scn = Scenario::parse(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    scn.duration = Duration::from_secs(seconds);
    scn.faults = faults;
    scn
}

fn run(scn: &Scenario, seed: u64, bug: Option<PlantedBug>) -> Result<SimRun, String> {
    let scn = Scenario { planted_bug: bug, ..scn.clone() };
    fafnir_scenarios::sim_run::run(&scn, seed, "test".into(), "test".into())
}

/// The names of the checks that failed.
fn failed(r: &SimRun) -> Vec<&str> {
    r.summary.checker.checks.iter().filter(|c| !c.passed).map(|c| c.name.as_str()).collect()
}

/// The run with the bug off passes the checker.
fn assert_clean(scn: &Scenario, seed: u64) {
    let clean = run(scn, seed, None).expect("the clean run completes");
    assert!(clean.summary.checker.passed, "bug off, yet flagged: {:#?}", clean.summary.checker);
    assert!(clean.summary.counts.fills_reported > 0, "the run traded: {:?}", clean.summary.counts);
}

/// The run with `bug` planted is a correctness violation that `check` flags.
fn assert_caught(scn: &Scenario, seed: u64, bug: PlantedBug, check: &str) {
    let r = run(scn, seed, Some(bug)).unwrap_or_else(|e| panic!("{bug:?}: the run did not complete: {e}"));
    assert_eq!(r.summary.outcome, Outcome::CorrectnessViolated, "{bug:?}: {:#?}", r.summary.checker);
    assert!(failed(&r).contains(&check), "{bug:?}: flagged {:?}, not {check}: {:#?}", failed(&r), r.summary.checker);
}

/// The run with `bug` planted is a correctness violation that `check`, and
/// no other check, flags (the planted bugs of the checks that look at what
/// agents received).
fn assert_caught_only_by(scn: &Scenario, seed: u64, bug: PlantedBug, check: &str) {
    let r = run(scn, seed, Some(bug)).unwrap_or_else(|e| panic!("{bug:?}: the run did not complete: {e}"));
    assert_eq!(r.summary.outcome, Outcome::CorrectnessViolated, "{bug:?}: {:#?}", r.summary.checker);
    assert_eq!(failed(&r), [check], "{bug:?}: {:#?}", r.summary.checker);
}

/// The portfolio is killed mid-run and back 500 ms later.
fn portfolio_restart() -> Scenario {
    scenario("baseline.toml", 4, vec![Fault::new(2_000, Action::Kill, Some("portfolio")).lasting(500)])
}

#[test]
fn a_settlement_that_is_not_idempotent_is_caught_after_a_portfolio_restart() {
    // A slowed portfolio has a backlog of fetched, unacked fills when it dies; the
    // restarted one replays TRADES, then gets those deliveries again.
    let slow = Fault { factor: Some(1_000), ..Fault::new(1_000, Action::Slow, Some("portfolio")) };
    let kill = Fault::new(2_500, Action::Kill, Some("portfolio")).lasting(500);
    let scn = scenario("slow-portfolio.toml", 8, vec![slow.lasting(2_000), kill]);
    assert_clean(&scn, 9);
    assert_caught(&scn, 9, PlantedBug::SettleTwice, "settled_exactly_once");
}

#[test]
fn settlement_without_a_fault_is_once_even_with_the_dedupe_skipped() {
    // Not a bug that fires always: no redelivery, nothing settled twice.
    let scn = scenario("baseline.toml", 3, vec![]);
    let r = run(&scn, 9, Some(PlantedBug::SettleTwice)).expect("the run completes");
    assert!(r.summary.checker.passed, "{:#?}", r.summary.checker);
}

#[test]
fn orders_in_a_memory_stream_are_lost_when_the_broker_restarts() {
    let scn = scenario("broker-restart.toml", 4, vec![Fault::new(2_000, Action::Kill, Some("broker")).lasting(1_000)]);
    assert_clean(&scn, 1);
    match run(&scn, 1, Some(PlantedBug::LoseOnBrokerRestart)) {
        // The stream of record is gone (and made again empty, its numbering
        // from 1): what the engine was owed is never answered, and the orders
        // accepted into the new stream lie behind the engine's position.
        Err(e) => assert!(e.contains("liveness"), "{e}"),
        Ok(r) => {
            assert_eq!(r.summary.outcome, Outcome::CorrectnessViolated, "{:#?}", r.summary.checker);
            assert!(failed(&r).contains(&"every_order_accounted"), "flagged {:?}", failed(&r));
        }
    }
}

#[test]
fn an_engine_replay_that_republishes_fills_is_caught_after_an_engine_restart() {
    let scn = scenario("baseline.toml", 4, vec![Fault::new(2_000, Action::Kill, Some("engine-0")).lasting(500)]);
    assert_clean(&scn, 5);
    assert_caught(&scn, 5, PlantedBug::DuplicateFillsOnReplay, "settled_exactly_once");
}

#[test]
fn a_reservation_not_released_on_cancel_is_caught_after_a_portfolio_restart() {
    // Cancels and IOC remainders before the restart are held again after it.
    let scn = portfolio_restart();
    assert_clean(&scn, 9);
    assert_caught(&scn, 9, PlantedBug::NoReleaseOnCancel, "reservations_balance");
}

#[test]
fn execution_reports_sent_to_the_counterparty_are_caught_without_a_fault() {
    // Every fill between two agents tells each of the other's order: the
    // agents ignore what they never sent, so only isolation sees it.
    let scn = scenario("baseline.toml", 3, vec![]);
    assert_clean(&scn, 1);
    assert_caught_only_by(&scn, 1, PlantedBug::ReportsToCounterparty, "reports_isolated");
}

#[test]
fn a_quote_recounted_by_a_restarted_market_is_caught_after_a_market_restart() {
    // The fills of the first two seconds are counted twice in the quotes.
    let scn = scenario("baseline.toml", 4, vec![Fault::new(2_000, Action::Kill, Some("market")).lasting(500)]);
    assert_clean(&scn, 1);
    assert_caught_only_by(&scn, 1, PlantedBug::QuoteRecountedOnRestart, "market_data_agrees");
    // Not a bug that fires always: without a restart the quotes are right.
    let quiet = scenario("baseline.toml", 3, vec![]);
    let r = run(&quiet, 1, Some(PlantedBug::QuoteRecountedOnRestart)).expect("the run completes");
    assert!(r.summary.checker.passed, "{:#?}", r.summary.checker);
}
