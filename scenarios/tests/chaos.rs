//! Evidence that chaos sweeps find bugs: each planted bug is found by a sweep
//! of scenarios/chaos.toml (random nemesis, the platform's BUGGIFY points on) within 200 seeds, the
//! way it should fail; the same 200 seeds with no bug planted are all clean.
//! Also: a found failure shrinks to fewer faults and still fails the same way,
//! and the bug only lost answers can show is not found without `reply_lost`.
//!
//! These sweep hundreds of whole-platform runs, so they are `#[ignore]`d in
//! the debug build and ci/test runs them in release:
//! `cargo sim test --release -p fafnir-scenarios --test chaos -- --ignored`.
#![cfg(madsim)]

use fafnir_platform::config::PlantedBug;
use fafnir_scenarios::chaos::{self, Failure, FailureKind};
use fafnir_scenarios::scenario::Scenario;
use fafnir_sim::nemesis::Kind;

const SEEDS: std::ops::Range<u64> = 1..201;

fn chaos_scenario() -> (Scenario, String) {
    let text = text("chaos.toml");
    (Scenario::parse(&text).unwrap(), text)
}

/// scenarios/chaos-load.toml: the same sweep near the knee of the calibrated simulation.
fn chaos_at_load() -> Scenario {
    Scenario::parse(&text("chaos-load.toml")).unwrap()
}

fn text(file: &str) -> String {
    std::fs::read_to_string(format!("{}/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Whether `f` is how `bug` shows.
fn shows(bug: PlantedBug, f: &Failure) -> bool {
    let check = |name: &str| f.kind == FailureKind::Correctness && f.failed.contains(name);
    let only = |name: &str| f.kind == FailureKind::Correctness && f.failed.len() == 1 && f.failed.contains(name);
    match bug {
        PlantedBug::SettleTwice => check("settled_exactly_once"),
        PlantedBug::DuplicateFillsOnReplay | PlantedBug::RepublishUnderFreshId => {
            check("settled_exactly_once") || check("agents_told_the_truth")
        }
        PlantedBug::NoReleaseOnCancel => check("reservations_balance"),
        // ORDERS itself is lost: the engine never answers the accepted orders.
        PlantedBug::LoseOnBrokerRestart => f.kind == FailureKind::Liveness || check("every_order_accounted"),
        // The portfolio cannot rebuild after a restart: it never catches up.
        PlantedBug::ReplayLedgerFirst => {
            matches!(f.kind, FailureKind::Liveness | FailureKind::Crash) && f.detail.contains("portfolio")
        }
        // The hostile client's overflowing deposit is stored, then cannot be applied.
        PlantedBug::DepositsUnchecked => f.kind == FailureKind::Crash && f.detail.contains("cannot be applied"),
        // What agents received, seen by the check that looks at it and no other.
        PlantedBug::ReportsToCounterparty => only("reports_isolated"),
        PlantedBug::QuoteRecountedOnRestart => only("market_data_agrees"),
        PlantedBug::CancelWithoutOwnerCheck => only("hostile_refused"),
    }
}

#[test]
#[ignore = "sweeps up to 200 seeds per bug: run in release (ci/test does)"]
fn every_planted_bug_is_found_within_200_seeds() {
    every_planted_bug_is_found(chaos_scenario().0);
}

/// Near the knee, too: the faults meet queues, and the bugs still show.
#[test]
#[ignore = "sweeps up to 200 seeds per bug: run in release (ci/test does)"]
fn every_planted_bug_is_found_within_200_seeds_at_load() {
    every_planted_bug_is_found(chaos_at_load());
}

fn every_planted_bug_is_found(scn: Scenario) {
    for bug in [
        PlantedBug::SettleTwice,
        PlantedBug::LoseOnBrokerRestart,
        PlantedBug::DuplicateFillsOnReplay,
        PlantedBug::NoReleaseOnCancel,
        PlantedBug::ReplayLedgerFirst,
        PlantedBug::DepositsUnchecked,
        PlantedBug::RepublishUnderFreshId,
        PlantedBug::ReportsToCounterparty,
        PlantedBug::QuoteRecountedOnRestart,
        PlantedBug::CancelWithoutOwnerCheck,
    ] {
        let planted = Scenario { planted_bug: Some(bug), ..scn.clone() };
        let found = chaos::find(&planted, SEEDS, |f| shows(bug, f));
        let found = found.unwrap_or_else(|| panic!("{bug:?} not found in seeds {SEEDS:?}"));
        let f = found.failure.as_ref().unwrap();
        println!("{bug:?}: found by seed {} ({}: {})", found.seed, f.kind, f.detail);
    }
}

/// Before the orders reconciler and resumable execution streams, 7 of these
/// seeds failed: reservations left when the orders service died mid-saga
/// (36, 77, 98, 156), execution reports lost while the gateway was down or
/// its tail reopened (77, 183), and the tail crash on a restarted memory
/// stream (65, 197). Later seed 37 found a reservation stored in LEDGER but
/// never applied by the portfolio (a publish unanswered while the broker died).
#[test]
#[ignore = "sweeps 200 seeds: run in release (ci/test does)"]
fn the_same_sweep_is_clean_with_no_bug_planted() {
    sweep_is_clean(chaos_scenario().0);
}

#[test]
#[ignore = "sweeps 200 seeds: run in release (ci/test does)"]
fn the_sweep_at_load_is_clean_with_no_bug_planted() {
    sweep_is_clean(chaos_at_load());
}

fn sweep_is_clean(scn: Scenario) {
    let runs = chaos::sweep(&scn, &SEEDS.collect::<Vec<_>>(), 2, &|_| String::new(), &|_| {});
    let failures: Vec<String> = runs
        .iter()
        .filter_map(|r| r.failure.as_ref().map(|f| format!("seed {}: {} {}", r.seed, f.kind, f.detail)))
        .collect();
    assert_eq!(runs.len(), 200);
    assert!(failures.is_empty(), "{} failing seeds:\n{}", failures.len(), failures.join("\n"));
    let fired: u32 = runs.iter().flat_map(|r| r.coverage.fired.values()).sum();
    assert!(fired > 200, "the nemesis fired only {fired} faults over 200 seeds");
}

#[test]
#[ignore = "reruns a planted-bug seed many times: run in release (ci/test does)"]
fn a_found_failure_shrinks_and_still_fails_the_same_way() {
    let (scn, text) = chaos_scenario();
    let bug = PlantedBug::DuplicateFillsOnReplay;
    let planted = Scenario { planted_bug: Some(bug), ..scn };
    let found = chaos::find(&planted, SEEDS, |f| shows(bug, f)).expect("the sweep finds the bug");
    let replay = chaos::replay_toml(&text, found.seed, &found.faults).unwrap();
    let shrunk = chaos::shrink(&replay, found.seed, Some(bug), &mut |l| println!("{l}")).unwrap();
    println!("{shrunk}");
    assert!(shows(bug, &shrunk.failure), "{:?}", shrunk.failure);
    assert!(shrunk.faults.1 <= shrunk.faults.0 && shrunk.faults.1 >= 1, "{shrunk}");
    assert!(shrunk.agents.1 < shrunk.agents.0 || shrunk.duration_ms.1 < shrunk.duration_ms.0, "{shrunk}");
    // The minimal file replays the failure on its own.
    let mut minimal = Scenario::parse(&shrunk.text).unwrap();
    minimal.planted_bug = Some(bug);
    let again = chaos::run_seed(&minimal, found.seed, "");
    assert!(again.failure.as_ref().is_some_and(|f| shows(bug, f)), "{:?}", again.failure);
}

/// With every fault kind but `reply_lost`, the planted fresh-id republish
/// is never found: only a lost answer leaves an event unacknowledged in a
/// batch whose later outputs were acknowledged (a partition, a pause or a
/// kill fails a batch as a whole).
#[test]
#[ignore = "sweeps 200 seeds: run in release (ci/test does)"]
fn only_lost_answers_find_the_fresh_id_republish() {
    let (scn, _) = chaos_scenario();
    let bug = PlantedBug::RepublishUnderFreshId;
    let mut nemesis = scn.nemesis.clone().expect("chaos.toml has a nemesis");
    let others = Kind::ALL.iter().filter(|k| **k != Kind::ReplyLost).map(|k| k.name().to_string());
    nemesis.kinds = Some(others.collect());
    let planted = Scenario { planted_bug: Some(bug), nemesis: Some(nemesis), ..scn };
    let runs = chaos::sweep(&planted, &SEEDS.collect::<Vec<_>>(), 2, &|_| String::new(), &|_| {});
    let failures: Vec<String> = runs
        .iter()
        .filter_map(|r| r.failure.as_ref().map(|f| format!("seed {}: {} {}", r.seed, f.kind, f.detail)))
        .collect();
    assert!(failures.is_empty(), "{} failing seeds:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(runs.len(), 200);
}
