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
    let r = run(&scn, 1, Some(PlantedBug::LoseOnBrokerRestart)).expect("the run ends in a result");
    match r.summary.outcome {
        // The stream of record is gone (and made again empty, its numbering
        // from 1): what the engine was owed is never answered, and the orders
        // accepted into the new stream lie behind the engine's position.
        Outcome::Liveness => {
            assert!(r.summary.stopped.as_ref().is_some_and(|w| w.contains("liveness")), "{:?}", r.summary)
        }
        _ => {
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

/// The chaos scenario's market (with its all-in traders and hostile client),
/// shortened to `seconds`, with `faults` instead of the nemesis.
fn chaos_market(seconds: u64, faults: Vec<Fault>) -> Scenario {
    Scenario { nemesis: None, buggify: false, ..scenario("chaos.toml", seconds, faults) }
}

/// How a run with a bug the platform cannot recover from ends: in liveness
/// (the service cannot start again: the run never quiesces) or in a crash
/// (a panic in the world), with the reason in the summary.
fn fails_to_recover(scn: &Scenario, seed: u64, bug: PlantedBug) -> String {
    let r = run(scn, seed, Some(bug)).unwrap_or_else(|e| panic!("{bug:?}: the run did not start: {e}"));
    assert!(matches!(r.summary.outcome, Outcome::Liveness | Outcome::Crash), "{bug:?}: {:?}", r.summary.outcome);
    r.summary.stopped.clone().expect("a stopped run says why")
}

/// Issue 13's first finding, in simulation: a portfolio restart after the
/// all-in traders bought, canceled and bought again near their whole cash
/// cannot rebuild when LEDGER is replayed before TRADES.
#[test]
fn a_replay_out_of_live_order_is_caught_after_a_portfolio_restart() {
    let kill = Fault::new(4_000, Action::Kill, Some("portfolio")).lasting(500);
    let scn = chaos_market(6, vec![kill]);
    assert_clean(&scn, 4);
    let why = fails_to_recover(&scn, 4, PlantedBug::ReplayLedgerFirst);
    // The portfolio cannot rebuild ("reserved cash out of range"), so it never serves again.
    assert!(why.contains("portfolio") && (why.contains("liveness") || why.contains("reserved cash")), "{why}");
}

/// Issue 13's third finding, in simulation: the hostile client's deposit
/// beyond the account limit, recorded before it is checked, cannot be
/// applied (and would poison every later replay).
#[test]
fn a_deposit_recorded_before_its_check_is_caught_by_the_hostile_client() {
    let scn = chaos_market(4, vec![]);
    assert_clean(&scn, 2);
    let why = fails_to_recover(&scn, 2, PlantedBug::DepositsUnchecked);
    assert!(why.contains("cannot be applied") && why.contains("overflows"), "{why}");
}

/// One answer in twenty lost from 1 s to 4 s (the request took effect).
fn replies_lost() -> Fault {
    Fault { rate_ppm: Some(50_000), ..Fault::new(1_000, Action::ReplyLost, None).lasting(3_000) }
}

#[test]
fn an_event_republished_under_a_fresh_id_is_caught_when_its_ack_is_lost() {
    // Engine batches come back with an event's ack lost and a later one's
    // there: the planted engine publishes the event again as a new message.
    // Which batch loses which ack is up to the seed (about one seed in six
    // has an event's ack lost before a later one's arrives), so the first
    // seed of ten that shows it is taken, and must be clean without the bug.
    let scn = scenario("baseline.toml", 5, vec![replies_lost()]);
    let bug = PlantedBug::RepublishUnderFreshId;
    let seed = (1..=10)
        .find(|&seed| {
            let r = run(&scn, seed, Some(bug)).unwrap_or_else(|e| panic!("seed {seed}: the run did not complete: {e}"));
            failed(&r).contains(&"settled_exactly_once")
        })
        .expect("some seed of 1..=10 loses an event's ack before a later one's, and settled_exactly_once flags it");
    assert_clean(&scn, seed);
    assert_caught(&scn, seed, bug, "settled_exactly_once");
}

#[test]
fn an_event_republished_under_a_fresh_id_needs_a_lost_answer() {
    // Not a bug that fires always, nor one the other faults show: with no
    // fault, and with the engine cut off from the broker over the same
    // window (its batches then fail as a whole and are republished under
    // their own ids), the planted run is clean.
    let bug = Some(PlantedBug::RepublishUnderFreshId);
    let calm = scenario("baseline.toml", 5, vec![]);
    let r = run(&calm, 1, bug).expect("the run completes");
    assert!(r.summary.checker.passed, "{:#?}", r.summary.checker);
    let mut cut = Fault::new(1_000, Action::Partition, Some("engine-0")).lasting(3_000);
    cut.peer = Some("broker".into());
    let partitioned = scenario("baseline.toml", 5, vec![cut]);
    let r = run(&partitioned, 1, bug).expect("the run completes");
    assert!(r.summary.checker.passed, "{:#?}", r.summary.checker);
    assert!(r.summary.counts.fills_reported > 0, "the run traded: {:?}", r.summary.counts);
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

/// The hostile client's cancels of other users' orders (their ids computed
/// from user id and client order id) are accepted when the orders service
/// does not check the owner: only `hostile_refused` sees it (the victims are
/// told of their orders' close like any other).
#[test]
fn a_cancel_without_an_owner_check_is_caught_by_the_hostile_client() {
    let mut scn = chaos_market(4, vec![]);
    // A busier hostile client than chaos.toml's, so a short run meets a live order of another.
    for p in &mut scn.populations {
        if let fafnir_scenarios::agents::AgentParams::Hostile(h) = &mut p.config.params {
            h.rate_per_s = 40.0;
        }
    }
    assert_clean(&scn, 3);
    let r = run(&scn, 3, Some(PlantedBug::CancelWithoutOwnerCheck)).expect("the run completes");
    assert_eq!(failed(&r), ["hostile_refused"], "{:#?}", r.summary.checker);
    let lines = &r.summary.checker.checks.iter().find(|c| c.name == "hostile_refused").unwrap().first;
    assert!(lines.iter().any(|l| l.contains("cancel_theirs accepted")), "{lines:#?}");
}
