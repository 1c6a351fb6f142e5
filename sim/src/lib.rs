//! # fafnir sim
//!
//! The deterministic world: under `cargo sim` (`--cfg madsim`) every fafnir
//! service, a simulated JetStream broker and a simulated Redis are nodes of
//! one `madsim` world with a modelled network and injected faults. A seed
//! replays a run exactly.
//!
//! ## Layout
//!
//! - [`faults`]: faults as data (time, action, target, duration), as TOML.
//! - [`fixed_hash`]: a seedless hasher for lookup-only hash maps.
//! - [`rng`]: derived seeds, one per subsystem, from the root seed.
//! - [`nemesis`]: the random nemesis: per seed, which fault kinds are on, their rates and durations (swarm testing).
//! - [`reply_loss`]: the switch of the `reply_lost` fault, shared by the broker and the order path's gRPC servers.
//! - [`service_time`]: the modelled processing time of each service.
//! - `world`: the madsim world of every service, the broker and Redis (simulated build).
//! - [`trace`]: the trace hash over every event the world delivers, in order.
//! - [`broker`]: the simulated JetStream broker node and its [`fafnir_platform::bus::EventBus`] client.
//! - [`redis`]: the simulated Redis node and its [`fafnir_platform::kv::Kv`] client.
//! - [`conformance`]: behaviour tests written once against the traits, run against
//!   the simulated models (`cargo sim test`) and the real servers (`cargo test`).

pub mod conformance;
pub mod faults;
pub mod fixed_hash;
pub mod nemesis;
pub mod reply_loss;
pub mod rng;
pub mod service_time;
pub mod trace;

#[cfg(madsim)]
pub mod broker;
#[cfg(madsim)]
pub mod redis;
#[cfg(madsim)]
pub mod world;

/// Source checks of the determinism rules that clippy cannot express.
#[cfg(test)]
mod determinism_rules {
    use std::path::{Path, PathBuf};

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// tokio's unbiased `select!` picks the branch to poll first with a
    /// thread-local generator that outlives a simulated world: a second world
    /// on the same thread (a test, a sweep's next seed) would poll in another
    /// order than a fresh process replaying its seed. Every `select!` in the
    /// code that runs in the world is `biased;`, so its order is the code's.
    #[test]
    fn every_select_is_biased() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = Vec::new();
        for dir in ["platform/src", "sim/src", "scenarios/src"] {
            rust_files(&root.join(dir), &mut files);
        }
        files.sort();
        assert!(files.len() > 20, "found only {} source files under {}", files.len(), root.display());
        let mut unbiased = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).expect("read source");
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                let opens_select = line.trim_end().ends_with("select! {") && !line.trim_start().starts_with("//");
                if opens_select && lines.get(i + 1).map(|l| l.trim()) != Some("biased;") {
                    unbiased.push(format!("{}:{}", file.display(), i + 1));
                }
            }
        }
        assert!(unbiased.is_empty(), "select! without `biased;` (see this test's docs): {unbiased:#?}");
    }
}
