//! Scenario files and whole runs: every library scenario parses; a malformed
//! file is refused naming the field and the reason; and (in the simulation) a
//! run is deterministic. (The planted-bug canaries are in `planted.rs`.)

use fafnir_scenarios::scenario::Scenario;

fn library() -> Vec<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<(String, String)> = std::fs::read_dir(dir)
        .expect("scenarios dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "toml")
                && p.file_name().is_some_and(|n| n != "Cargo.toml" && n != "clippy.toml")
        })
        .map(|p| (p.display().to_string(), std::fs::read_to_string(&p).expect("read scenario")))
        .collect();
    files.sort();
    files
}

#[test]
fn every_library_scenario_parses_and_has_slos() {
    let files = library();
    let names: Vec<&str> = files.iter().map(|(p, _)| p.rsplit('/').next().unwrap()).collect();
    for want in [
        "baseline.toml",
        "flash-crash.toml",
        "burst.toml",
        "many-symbols.toml",
        "partition-engine.toml",
        "broker-restart.toml",
        "redis-loss.toml",
        "slow-portfolio.toml",
    ] {
        assert!(names.contains(&want), "scenario library lacks {want}: {names:?}");
    }
    for (path, text) in &files {
        let scn = Scenario::parse(text).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(!scn.slos.is_empty(), "{path} states no SLO");
        let nodes = scn.fault_targets();
        for f in &scn.faults {
            f.validate(&nodes).unwrap_or_else(|e| panic!("{path}: fault: {e}"));
        }
    }
    let many = Scenario::parse(&files.iter().find(|(p, _)| p.ends_with("many-symbols.toml")).unwrap().1).unwrap();
    assert!(many.engine_shards.len() >= 2, "many-symbols spreads symbols across shards");
}

/// `base` with one `[[fault]]` table of `body` appended.
fn fault(base: &str, body: &str) -> String {
    format!("{base}\n[[fault]]\n{body}\n")
}

#[test]
fn a_malformed_file_names_the_field_and_the_reason() {
    let base = library().into_iter().find(|(p, _)| p.ends_with("baseline.toml")).unwrap().1;
    let cases: Vec<(String, &str)> = vec![
        (base.replace("duration_ms = 10000", "duration_ms = 0"), "duration_ms: must be positive"),
        (base.replace("duration_ms = 10000", "duration_ms = \"long\""), "duration_ms"),
        (base.replace("seed = 1", "seed = 1\ncolour = \"red\""), "colour"),
        (base.replace("tick_cents = 1", "tick_cents = 0"), "instrument[0].tick_cents: must be positive"),
        (base.replace("start_price_cents = 10000", "start_price_cents = 50"), "instrument[0].start_price_cents"),
        (base.replace("count = 8", "count = 0"), "population[1].count: 0 must be between 1 and 10000"),
        (base.replace("kind = \"noise\"", "kind = \"lemming\""), "population[1]"),
        (base.replace("rate_per_s = 5.0", "rate_per_s = -1.0"), "population[1].rate_per_s"),
        (
            base.replace("holdings = { ACME = 2000 }", "holdings = { NOPE = 2000 }"),
            "population[1].holdings.NOPE: unknown symbol",
        ),
        (base.replace("\"md_fanout.p99 < 100ms\"", "\"md_fanout.p99 < 100 parsecs\""), "slos[1]"),
        (
            base.replace("dist = \"uniform\"\nus = [20, 60]", "dist = \"gaussian\"\nus = [20, 60]"),
            "service_time.orders.dist",
        ),
        (base.replace("latency_us = [50, 250]", "latency_us = [250, 50]"), "network.latency_us"),
        // An inverted band names the band, not the start price.
        (
            base.replace(
                "min_price_cents = 100\nmax_price_cents = 1000000",
                "min_price_cents = 1000000\nmax_price_cents = 100",
            ),
            "instrument[0].min_price_cents: 1000000 is above max_price_cents (100)",
        ),
        (base.replace("quiesce_ms = 15000", "quiesce_ms = 0"), "quiesce_ms: 0 is too short"),
        (
            fault(&base, "at_ms = 1000\naction = \"kill\"\ntarget = \"engine-7\"\nduration_ms = 500"),
            "fault[0] (at_ms 1000): target: no node \"engine-7\"",
        ),
        (
            fault(&base, "at_ms = 12000\naction = \"kill\"\ntarget = \"orders\"\nduration_ms = 500"),
            "fault[0] (at_ms 12000): starts after the load phase ends",
        ),
        (
            fault(&base, "at_ms = 9000\naction = \"pause\"\ntarget = \"orders\"\nduration_ms = 5000"),
            "duration_ms: ends at 14000 ms, after the load phase",
        ),
        (fault(&base, "at_ms = 9000\naction = \"isolate\"\ntarget = \"orders\""), "duration_ms: missing"),
    ];
    for (text, want) in cases {
        let err = Scenario::parse(&text).expect_err(want);
        assert!(err.contains(want), "expected {want:?} in: {err}");
    }
}

#[cfg(madsim)]
mod simulated {
    use std::time::Duration;

    use super::*;
    use fafnir_scenarios::run::Outcome;

    fn baseline(seconds: u64) -> Scenario {
        let text = library().into_iter().find(|(p, _)| p.ends_with("baseline.toml")).unwrap().1;
        let mut scn = Scenario::parse(&text).unwrap();
        scn.duration = Duration::from_secs(seconds);
        scn
    }

    fn run(scn: &Scenario, seed: u64) -> fafnir_scenarios::sim_run::SimRun {
        fafnir_scenarios::sim_run::run(scn, seed, "test".into(), "test".into()).expect("the run completes")
    }

    #[test]
    fn the_same_seed_gives_the_same_summary_and_trace() {
        let scn = baseline(3);
        let a = run(&scn, 5);
        let b = run(&scn, 5);
        assert!(a.summary.counts.accepted > 20, "the agents traded: {:?}", a.summary.counts);
        assert_eq!(a.summary.trace_hash, b.summary.trace_hash);
        let json = |r: &fafnir_scenarios::sim_run::SimRun| serde_json::to_string(&r.summary).unwrap();
        assert_eq!(json(&a), json(&b), "same seed, same summary");
        assert_ne!(run(&scn, 6).summary.trace_hash, a.summary.trace_hash, "another seed, another run");
        assert_eq!(a.summary.outcome, Outcome::Success, "{:#?}", a.summary.checker);
    }

    /// Simulated time is microsecond-true (`fafnir_platform::time`): a noise
    /// trader drawing arrivals 200 µs apart on average (5,000 a second) wakes
    /// at every one of them, each sent no more than 1 µs after its intended
    /// time. Clamped to madsim's 1 ms floor it could wake at most 200 times
    /// in the 200 ms run, and would send up to a millisecond late.
    #[test]
    fn an_open_loop_schedule_is_kept_to_the_microsecond() {
        let text = library().into_iter().find(|(p, _)| p.ends_with("baseline.toml")).unwrap().1;
        let noise = "kind = \"noise\"\ncount = 8\ncash_cents = 20000000\nholdings = { ACME = 2000 }\nrate_per_s = 5.0";
        assert!(text.contains(noise), "baseline.toml's noise traders changed: update this test");
        let text = text.replace(noise, &noise.replace("count = 8", "count = 1").replace("5.0", "5000.0"));
        let mut scn = Scenario::parse(&text).unwrap();
        scn.duration = Duration::from_millis(200);
        let r = run(&scn, 3);
        let lag = &r.recorder.send_lag;
        // About 1,000 wakes of the fast trader (Poisson: ±10 % is 3 sigma), a handful of the others'.
        assert!((900..1_150).contains(&lag.len()), "{} wakes in 200 ms", lag.len());
        assert!(lag.max() <= 1_000, "a send was {} ns behind its intended time", lag.max());
    }

    /// Every run samples every metric each simulated second into its
    /// metrics.jsonl, the counters agree with what the load generator saw,
    /// the same seed samples the same numbers, and a run whose metrics are
    /// never read has the same trace: observing changes nothing.
    #[test]
    fn metrics_are_sampled_each_second_and_reading_them_changes_nothing() {
        let scn = baseline(3);
        let a = run(&scn, 5);
        let unread = fafnir_scenarios::sim_run::run_unobserved(&scn, 5, "test".into(), "test".into()).unwrap();
        assert_eq!(a.summary.trace_hash, unread.summary.trace_hash, "reading the metrics changed the run");
        assert!(unread.recorder.metrics.samples.is_empty());
        let m = &a.recorder.metrics;
        let seconds: std::collections::BTreeSet<u64> = m.samples.iter().map(|s| s.t_s).collect();
        assert!(seconds.len() >= 4 && seconds.iter().copied().eq(0..seconds.len() as u64), "{seconds:?}");
        let last = |name: &str, labels: &[(&str, &str)]| m.series(name, labels).last().map_or(0.0, |p| p.1) as u64;
        let accepted = a.summary.counts.accepted;
        assert!(accepted > 20, "{:?}", a.summary.counts);
        assert_eq!(last("fafnir_orders_accepted_total", &[]), accepted);
        assert_eq!(last("fafnir_loadgen_requests_total", &[("op", "submit"), ("outcome", "accepted")]), accepted);
        let submit_ok = [("grpc_method", "SubmitOrder"), ("grpc_code", "OK")];
        assert_eq!(last("grpc_server_handled_total", &submit_ok), accepted);
        assert_eq!(
            last("grpc_server_handling_seconds_count", &[("grpc_method", "SubmitOrder")]),
            last("grpc_server_started_total", &[("grpc_method", "SubmitOrder")])
        );
        assert!(last("fafnir_fills_settled_total", &[]) > 0);
        assert_eq!(last("fafnir_fills_settled_total", &[]), last("fafnir_fills_total", &[]));
        assert_eq!(last("fafnir_consumer_lag_messages", &[]), 0, "caught up once quiesced");
        assert!(m.series("fafnir_consumer_lag_messages", &[("consumer", "portfolio")]).len() >= 4);
        let again = run(&scn, 5);
        assert!(again.recorder.metrics.samples == m.samples, "same seed, same metrics");
    }

    /// A broker modelled per message (`--broker-model per-message`): each
    /// message delivered costs `broker.deliver` before it is sent, so market
    /// data reaches the load generator that much later; the same seed still
    /// gives the same run.
    #[test]
    fn a_broker_modelled_per_message_charges_each_delivery_and_stays_deterministic() {
        use fafnir_scenarios::scenario::RawServiceTime;
        let per_message = |deliver_us: u64| {
            let mut scn = baseline(3);
            let handlers = [("publish", 10), ("deliver", deliver_us), ("ack", 3), ("wake", 80)]
                .into_iter()
                .map(|(h, us)| (format!("broker.{h}"), us))
                .collect();
            let broker = RawServiceTime {
                dist: "exp".into(),
                us: vec![10],
                concurrency: 2,
                handlers,
                wake_curve: Some(vec![[25, 100], [200, 1_000]]),
                wake_latency_us: None,
                reply_wake_us: None,
            };
            scn.service_time.insert("broker".into(), broker);
            scn.cores = Some(2);
            scn
        };
        let (cheap, dear) = (run(&per_message(1), 5), run(&per_message(400), 5));
        for r in [&cheap, &dear] {
            assert!(r.summary.checker.passed, "{:#?}", r.summary.checker);
        }
        assert_eq!(run(&per_message(1), 5).summary.trace_hash, cheap.summary.trace_hash, "same seed, same run");
        let p50 = |r: &fafnir_scenarios::sim_run::SimRun| r.summary.stages["md_fanout"].p50_ns;
        // The engine's update is delivered once to the gateway's tail (one
        // message a frame at this rate): 399 µs more, less what the seeds'
        // different markets move.
        assert!(p50(&dear) >= p50(&cheap) + 300_000, "md_fanout p50 {} ns against {} ns", p50(&dear), p50(&cheap));
    }

    /// Market data's fan-out is priced only where a calibration measured it:
    /// with `gateway.market_data` (each update sent to each subscriber) and
    /// `loadgen.market_data` (each received) named, updates reach the load
    /// generator later by their time, queued on the shared cores; a model
    /// that does not name them leaves the run exactly as it was.
    #[test]
    fn market_data_fan_out_costs_only_what_a_calibration_names() {
        use fafnir_scenarios::scenario::RawServiceTime;
        let with = |gateway_us: Option<u64>, loadgen_us: Option<u64>| {
            let mut scn = baseline(3);
            scn.cores = Some(2);
            let model = |handler: &str, us: Option<u64>| RawServiceTime {
                dist: "exp".into(),
                us: vec![30],
                concurrency: 2,
                handlers: us.map(|us| (handler.to_string(), us)).into_iter().collect(),
                wake_curve: None,
                wake_latency_us: None,
                reply_wake_us: None,
            };
            scn.service_time.insert("gateway".into(), model("gateway.market_data", gateway_us));
            scn.service_time.insert("loadgen".into(), model("loadgen.market_data", loadgen_us));
            scn
        };
        let (unnamed, named) = (run(&with(None, None), 5), run(&with(Some(100), Some(100)), 5));
        for r in [&unnamed, &named] {
            assert!(r.summary.checker.passed, "{:#?}", r.summary.checker);
        }
        assert_eq!(run(&with(Some(100), Some(100)), 5).summary.trace_hash, named.summary.trace_hash, "same seed");
        let p50 = |r: &fafnir_scenarios::sim_run::SimRun| r.summary.stages["md_fanout"].p50_ns;
        // At least one send and one receipt: 200 µs more at the median (the
        // baseline's dozen subscribers queue behind one another on two cores).
        assert!(
            p50(&named) >= p50(&unnamed) + 200_000,
            "md_fanout p50 {} ns against {} ns",
            p50(&named),
            p50(&unnamed)
        );
    }

    /// A calibration's `core_sharing = "fair"`: the shared cores are
    /// time-shared among every call in progress instead of queued, which
    /// changes the run; every check still passes and the same seed still
    /// gives the same trace, also under load (capacity.toml's 1,000 orders/s
    /// for a second, where many calls share the cores at once).
    #[test]
    fn time_shared_cores_change_the_run_and_keep_it_deterministic() {
        use fafnir_sim::service_time::CoreSharing;
        let text = library().into_iter().find(|(p, _)| p.ends_with("capacity.toml")).unwrap().1;
        let mut loaded = Scenario::parse(&text).unwrap();
        loaded.duration = Duration::from_secs(1);
        let with = |sharing: Option<CoreSharing>| {
            let mut scn =
                loaded.clone().with_calibration("calibration/baseline.toml").expect("the committed calibration");
            scn.core_sharing = sharing;
            scn
        };
        let (queued, fair) = (run(&with(None), 5), run(&with(Some(CoreSharing::Fair)), 5));
        for r in [&queued, &fair] {
            assert!(r.summary.checker.passed, "{:#?}", r.summary.checker);
        }
        assert_eq!(run(&with(Some(CoreSharing::Fair)), 5).summary.trace_hash, fair.summary.trace_hash, "same seed");
        assert_eq!(
            run(&with(Some(CoreSharing::Queue)), 5).summary.trace_hash,
            queued.summary.trace_hash,
            "the default"
        );
        assert_ne!(fair.summary.trace_hash, queued.summary.trace_hash, "time-shared cores are another model");
    }

    /// A calibration's `send_lag_us` (how late the real load generator woke
    /// for its intended sends) makes the simulated agents wake as late, by
    /// draws from its quantiles: the run's send lag has the calibrated median,
    /// and every stage measured from the intended time carries it.
    #[test]
    fn agents_wake_as_late_as_the_calibrated_send_lag() {
        let with = |lag: Option<Vec<[u64; 2]>>| {
            let mut scn = baseline(3);
            scn.send_lag_us = lag;
            scn
        };
        let lag = vec![[0, 100], [500, 200], [990, 400], [1_000, 500]];
        let (on_time, late) = (run(&with(None), 5), run(&with(Some(lag.clone())), 5));
        for r in [&on_time, &late] {
            assert!(r.summary.checker.passed, "{:#?}", r.summary.checker);
        }
        assert_eq!(run(&with(Some(lag)), 5).summary.trace_hash, late.summary.trace_hash, "same seed");
        let lg = |r: &fafnir_scenarios::sim_run::SimRun| r.summary.load_generator.clone();
        assert!(lg(&on_time).send_lag_p50_ns <= 1_000, "{:?}", lg(&on_time));
        // The median draw is 200 µs (histograms keep three digits).
        let p50 = lg(&late).send_lag_p50_ns;
        assert!((190_000..=215_000).contains(&p50), "send lag p50 {p50} ns");
        assert!(lg(&late).send_lag_max_ns <= 501_000, "{:?}", lg(&late));
        let ack = |r: &fafnir_scenarios::sim_run::SimRun| r.summary.stages["submit_to_ack"].p50_ns;
        assert!(
            ack(&late) >= ack(&on_time) + 150_000,
            "submit_to_ack p50 {} ns against {} ns",
            ack(&late),
            ack(&on_time)
        );
    }

    /// Mid-load, every service is killed at once and started again a second
    /// later, then a tenth of all answers is lost for a second and a half:
    /// the run passes the checker (the baseline's 100 ms SLOs do not hold
    /// through a restart, and are not the point), and the coverage counts both.
    #[test]
    fn a_run_through_a_whole_platform_restart_and_lost_answers_passes_the_checker() {
        use fafnir_sim::faults::{Action, Fault};
        let mut scn = baseline(7);
        scn.faults = vec![
            Fault::new(2_000, Action::RestartAll, None).lasting(1_000),
            Fault { rate_ppm: Some(100_000), ..Fault::new(4_000, Action::ReplyLost, None).lasting(1_500) },
        ];
        // The requests sent while the platform is down, and those whose
        // answers are lost, fail (16 % here): a budget of a quarter, not the
        // default 1 %.
        scn.error_budget_ppm = 250_000;
        let r = run(&scn, 2);
        assert!(r.summary.checker.passed, "{:#?}", r.summary.checker);
        let budget = &r.summary.error_budget;
        assert!(budget.errors > 0 && budget.passed, "{budget:?}: {:?}", r.summary.errors);
        assert!(matches!(r.summary.outcome, Outcome::Success | Outcome::SloViolated), "{:?}", r.summary.outcome);
        assert!(r.summary.counts.fills_reported > 0, "the agents traded: {:?}", r.summary.counts);
        let fired = &r.summary.coverage.fired;
        assert_eq!((fired.get("restart_all"), fired.get("reply_lost")), (Some(&1), Some(&1)), "{fired:?}");
    }
}

#[cfg(not(madsim))]
mod real {
    use super::*;

    #[tokio::test]
    async fn a_real_run_against_nats_and_redis_checks_every_fill() {
        let text = library().into_iter().find(|(p, _)| p.ends_with("baseline.toml")).unwrap().1;
        let mut scn = Scenario::parse(&text).unwrap();
        scn.duration = std::time::Duration::from_secs(3);
        let target = fafnir_scenarios::real_run::Target {
            gateway: None,
            nats: "127.0.0.1:4222".into(),
            redis: "127.0.0.1:6379".into(),
            namespace: None,
        };
        let r = fafnir_scenarios::real_run::run(&scn, 3, target, "test".into(), "test".into(), None)
            .await
            .unwrap_or_else(|e| panic!("real servers needed: {e}"));
        assert!(r.summary.counts.accepted > 20, "the agents traded: {:?}", r.summary.counts);
        assert!(r.summary.checker.passed, "{:#?}", r.summary.checker);
        assert!(r.summary.stages["submit_to_ack"].count > 0);
        let budget = &r.summary.error_budget;
        assert!(budget.passed && budget.requests > 20, "{budget:?} {:?}", r.summary.errors);
        assert_eq!(budget.errors, r.summary.errors.values().map(|k| k.count).sum::<u64>(), "{:?}", r.summary.errors);
    }

    #[tokio::test]
    async fn a_real_run_whose_platform_never_answers_ends_in_liveness_with_why() {
        let text = library().into_iter().find(|(p, _)| p.ends_with("baseline.toml")).unwrap().1;
        let mut scn = Scenario::parse(&text).unwrap();
        scn.duration = std::time::Duration::from_secs(1);
        // A gateway address nothing listens on.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let target = fafnir_scenarios::real_run::Target {
            gateway: Some(closed),
            nats: "127.0.0.1:4222".into(),
            redis: "127.0.0.1:6379".into(),
            namespace: Some(format!("absent-{}", std::process::id())),
        };
        let r = fafnir_scenarios::real_run::run(&scn, 1, target, "t".into(), "t".into(), None)
            .await
            .unwrap_or_else(|e| panic!("real servers needed: {e}"));
        assert_eq!(r.summary.outcome, fafnir_scenarios::run::Outcome::Liveness, "{:?}", r.summary.stopped);
        let why = r.summary.stopped.as_deref().unwrap_or_default();
        assert!(why.starts_with("liveness: the set-up of") && why.contains("register"), "{why}");
        assert!(!r.summary.checker.passed && r.summary.checker.checks.is_empty(), "the checker did not run");
        let dir = std::env::temp_dir().join(format!("fafnir-real-liveness-{}", std::process::id()));
        fafnir_scenarios::run::write_run_dir(&dir, &r).unwrap();
        assert!(dir.join("summary.json").is_file());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A platform another run has traded on cannot be checked by this one
    /// (it holds no token of those accounts): `--gateway` refuses it before
    /// the run starts, saying why and what to do, instead of a verdict of
    /// "correctness violated" the platform did not earn.
    #[tokio::test]
    async fn a_real_run_refuses_a_platform_another_run_traded_on() {
        let text = library().into_iter().find(|(p, _)| p.ends_with("baseline.toml")).unwrap().1;
        let mut scn = Scenario::parse(&text).unwrap();
        scn.duration = std::time::Duration::from_secs(1);
        let namespace = format!("traded-{}", std::process::id());
        let mut cfg = fafnir_platform::config::PlatformConfig::local_default();
        cfg.namespace = namespace.clone();
        cfg.jwt_secret = "a-test-secret-of-at-least-32-bytes".into();
        let (deps, nats) = fafnir_scenarios::real::connect(cfg).await.expect("real servers needed");
        fafnir_platform::services::ensure_streams(&deps).await.unwrap();
        let subject = deps.cfg.names().orders_of("ACME");
        deps.bus.publish(&subject, "an-earlier-run", bytes::Bytes::from_static(b"")).await.unwrap();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let target = fafnir_scenarios::real_run::Target {
            gateway: Some(closed),
            nats: "127.0.0.1:4222".into(),
            redis: "127.0.0.1:6379".into(),
            namespace: Some(namespace.clone()),
        };
        let refused = fafnir_scenarios::real_run::run(&scn, 1, target, "t".into(), "t".into(), None).await;
        let prefix = deps.cfg.names().orders_stream().trim_end_matches("ORDERS").to_string();
        nats.delete_streams_with_prefix(&prefix).await.unwrap();
        let why = refused.err().expect("refused");
        assert!(why.contains("traded on before") && why.contains("holds 1 events"), "{why}");
        assert!(why.contains("--namespace"), "says what to do: {why}");
    }

    #[tokio::test]
    async fn a_real_run_refuses_a_fault_schedule() {
        let text = library().into_iter().find(|(p, _)| p.ends_with("broker-restart.toml")).unwrap().1;
        let scn = Scenario::parse(&text).unwrap();
        let target = fafnir_scenarios::real_run::Target {
            gateway: None,
            nats: "127.0.0.1:4222".into(),
            redis: "127.0.0.1:6379".into(),
            namespace: None,
        };
        let err = fafnir_scenarios::real_run::run(&scn, 1, target, "t".into(), "t".into(), None)
            .await
            .err()
            .expect("refused");
        assert!(err.contains("fault schedules run in the simulation"), "{err}");
    }
}
