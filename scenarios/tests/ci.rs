//! The latency guard (`fafnir ci check`): the shipped baselines file parses
//! and names real scenarios, and (in the simulation) a rerun of a blessed run
//! passes while a deliberately slowed service-time model fails the check.

use fafnir_scenarios::baselines::Baselines;

fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root").to_path_buf()
}

#[test]
fn the_shipped_baselines_are_blessed_and_name_library_scenarios() {
    let path = repo_root().join("ci/baselines.toml");
    let text = std::fs::read_to_string(&path).expect("ci/baselines.toml");
    let b = Baselines::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let labels: Vec<String> = b.runs.iter().map(|r| r.label()).collect();
    for want in ["baseline.toml", "flash-crash.toml", "partition-engine.toml"] {
        assert!(labels.iter().any(|l| l.starts_with(want)), "{want} is not guarded: {labels:?}");
    }
    for r in &b.runs {
        assert!(repo_root().join(&r.scenario).is_file(), "{}: no such scenario", r.scenario);
        assert!(r.percentiles.contains_key("submit_to_ack.p99"), "{} is not blessed", r.label());
    }
}

#[cfg(madsim)]
mod sim {
    use fafnir_scenarios::baselines::{self, BaselineRun, Baselines};
    use fafnir_scenarios::run::{self, Summary};
    use fafnir_scenarios::scenario::Scenario;

    fn run(scn: &Scenario) -> Summary {
        fafnir_scenarios::sim_run::run(scn, scn.seed, "t".into(), "t".into()).expect("the run completes").summary
    }

    #[test]
    fn a_slowed_service_time_model_fails_the_check() {
        let path = super::repo_root().join("scenarios/baseline.toml");
        let (mut scn, _, _) = run::load(&path, Some(4), Some(std::time::Duration::from_secs(3))).unwrap();
        let file = Baselines {
            tolerance_pct: 10,
            slack_us: 100,
            runs: vec![BaselineRun {
                scenario: "scenarios/baseline.toml".into(),
                seed: 4,
                duration_ms: Some(3_000),
                noise_rate_per_s: None,
                tolerance_pct: None,
                calibration: None,
                percentiles: Default::default(),
            }],
        };
        let blessed = file.blessed(&[run(&scn)]);
        // Deterministic: the same run again is exactly the baseline.
        let again = baselines::check(&blessed, &[run(&scn)]);
        assert!(again.passed(), "{:?}\n{}", again.failures, again.table());
        assert!(again.rows.iter().all(|r| r.measured_ns == r.baseline_ns), "{}", again.table());
        // The orders service, on every order's path to its ack, made 1000 times slower.
        let orders = scn.service_time.get_mut("orders").expect("baseline models the orders service");
        orders.us.iter_mut().for_each(|us| *us *= 1000);
        let slowed = baselines::check(&blessed, &[run(&scn)]);
        assert!(!slowed.passed(), "{}", slowed.table());
        assert!(
            slowed.failures.iter().any(|f| f.contains("submit_to_ack.p99 regressed")),
            "{:?}\n{}",
            slowed.failures,
            slowed.table()
        );
    }
}
