//! A sweep runs in bounded memory: 2,000 seeds of scenarios/chaos.toml, two
//! at a time, peak within a fixed bound (a sweep that kept every run grew by
//! about 5 MB a seed: 10 GB here). Its own test binary, so that the peak
//! resident set it reads (`VmHWM`) is this sweep's alone.
//!
//! Release only (about a minute and a half):
//! `cargo sim test --release -p fafnir-scenarios --test sweep_memory -- --ignored`.
#![cfg(madsim)]

use fafnir_scenarios::chaos;
use fafnir_scenarios::scenario::Scenario;

/// The issue asked for under 1.5 GB; the sweep peaks at about 28 MB, so
/// 256 MB leaves room and still catches a leak of 128 KB a seed.
const PEAK_LIMIT_KB: u64 = 256 * 1024;

/// The process's peak resident set, in KiB (Linux: /proc/self/status).
fn peak_rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("a VmHWM line");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmHWM in kB")
}

#[test]
#[ignore = "sweeps 2,000 seeds: run in release (ci/test does)"]
fn a_2000_seed_sweep_stays_under_its_memory_bound() {
    let path = format!("{}/chaos.toml", env!("CARGO_MANIFEST_DIR"));
    let scn = Scenario::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let before = peak_rss_kb();
    let failing = std::sync::atomic::AtomicU64::new(0);
    let runs = chaos::sweep(&scn, &(1..2001).collect::<Vec<_>>(), 2, &|_| String::new(), &|r| {
        if r.failure.is_some() {
            failing.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let peak = peak_rss_kb();
    println!(
        "2000 seeds ({} failing): peak RSS {} MB (before the sweep {} MB)",
        failing.into_inner(),
        peak / 1024,
        before / 1024
    );
    assert_eq!(runs.len(), 2000);
    assert!(runs.iter().all(|r| r.trace_hash.is_some()), "every seed ran to a result");
    assert!(peak < PEAK_LIMIT_KB, "peak RSS {} MB, over {} MB", peak / 1024, PEAK_LIMIT_KB / 1024);
}
