//! `fafnir calibrate` and `fafnir fidelity`'s comparison. Calibrating runs a
//! short baseline against an in-process platform on the real NATS and Redis
//! (127.0.0.1:4222 and :6379, as ci/test starts them) and checks that every
//! handler on the order path was metered, the broker, Redis and the load
//! generator measured, and the file it writes is one a scenario can name.
#![cfg(not(madsim))]

use std::time::Duration;

use fafnir_scenarios::scenario::{BrokerModel, Calibration, FanOutModel, Scenario};

fn baseline(seconds: u64) -> Scenario {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/baseline.toml");
    let mut scn = Scenario::parse(&std::fs::read_to_string(path).unwrap()).unwrap();
    scn.duration = Duration::from_secs(seconds);
    scn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calibrating_meters_every_handler_and_writes_a_file_a_scenario_can_name() {
    let scn = baseline(3);
    let calibrate = |model, fan_out| {
        let (nats, redis) = ("127.0.0.1:4222".into(), "127.0.0.1:6379".into());
        fafnir_scenarios::calibrate::calibrate(&scn, 5, nats, redis, model, fan_out)
    };
    // By default the broker is its publish latency less the network's legs,
    // and the probe's figures are recorded beside.
    let m = calibrate(BrokerModel::Latency, FanOutModel::Folded)
        .await
        .unwrap_or_else(|e| panic!("real servers needed: {e}"));
    assert!(m.servers.iter().any(|c| c.work == "broker.publish" && c.cpu_ns_per_unit >= 1_000), "{:?}", m.servers);
    assert_eq!(m.calibration.service_time["broker"].wake_curve, None);
    assert!(m.calibration.measured["broker_probe"].contains("CPU µs per message"), "{:?}", m.calibration.measured);
    // Folded by default: market data's fan-out is no unit of its own, its
    // CPU in the load generator's requests and the platform's overhead.
    let works: Vec<&str> = m.costs.iter().chain(&m.servers).map(|c| c.work.as_str()).collect();
    assert!(works.contains(&"loadgen.request"), "{works:?}");
    assert!(!works.contains(&"gateway.market_data") && !works.contains(&"loadgen.market_data"), "{works:?}");
    let m = calibrate(BrokerModel::PerMessage, FanOutModel::Priced)
        .await
        .unwrap_or_else(|e| panic!("real servers needed: {e}"));
    assert!(m.run.summary.checker.passed, "{:#?}", m.run.summary.checker);
    let cost =
        |work: &str| m.costs.iter().chain(&m.servers).find(|c| c.work == work).map(|c| (c.units, c.cpu_ns_per_unit));
    for work in ["gateway.submit_order", "orders.submit", "portfolio.reserve", "engine.match", "portfolio.settle"] {
        let (units, ns) = cost(work).unwrap_or_else(|| panic!("{work} not metered: {:?}", m.costs));
        assert!(units > 10 && ns > 0, "{work}: {units} units of {ns} ns");
    }
    for work in ["redis.command", "loadgen.request"] {
        assert!(cost(work).is_some_and(|(units, ns)| units > 0 && ns >= 1_000), "{work}: {:?}", m.servers);
    }
    // Market data's fan-out: each batch of updates sent to a subscriber is a
    // unit of the gateway's, each batch received one of the load
    // generator's (its CPU split from its requests'); a calm run sends and
    // reads them mostly one at a time.
    let (sent, sent_ns) = cost("gateway.market_data").unwrap_or_else(|| panic!("fan-out not metered: {:?}", m.costs));
    let (received, received_ns) = cost("loadgen.market_data").unwrap_or_else(|| panic!("{:?}", m.servers));
    assert!(sent > 100 && sent_ns > 0 && received_ns > 0, "{sent} of {sent_ns} ns, {received} of {received_ns} ns");
    assert!(received <= sent * 2 && sent <= received * 2, "{sent} batches sent, {received} received");
    let loadgen_cpu_ns = m.run.summary.load_generator.cpu.as_ref().unwrap().load_generator_cpu_ms as f64 * 1e6;
    let (requests, request_ns) = cost("loadgen.request").unwrap();
    let split = (requests * request_ns + received * received_ns) as f64;
    assert!((split - loadgen_cpu_ns).abs() <= loadgen_cpu_ns * 0.01, "{split} ns split of {loadgen_cpu_ns}");
    // The broker: nats-server runs here (ci/test starts it), so the probe
    // measured its CPU per message, and the broker is modelled per message.
    let b = m.broker.as_ref().expect("the probe finds the local nats-server by its port");
    assert!(b.publish_ns > 0 && b.deliver_ns > 0 && b.wake_ns > 0, "{b:?}");
    assert_eq!(b.curve.len(), b.wake_curve.len());
    assert!(b.wake_curve.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1), "{b:?}");
    assert!(cost("broker.publish").is_none(), "measured per message, not by latency: {:?}", m.servers);
    let broker = &m.calibration.service_time["broker"];
    for h in ["broker.publish", "broker.deliver", "broker.ack", "broker.wake"] {
        assert!(broker.handlers.get(h).is_some_and(|us| *us >= 1), "{h}: {broker:?}");
    }
    assert_eq!(broker.wake_curve.as_ref().map(Vec::len), Some(b.wake_curve.len()));
    // Its wake-up latency: a median latency at every pause, and the delays
    // from the quickest pause on, never falling.
    assert_eq!(b.latency_curve.len(), b.curve.len(), "{b:?}");
    assert!(b.latency_curve.iter().all(|(_, ns)| *ns > 0), "{b:?}");
    let delays = fafnir_scenarios::calibrate::wake_latency(&b.latency_curve);
    assert!(!delays.is_empty() && delays[0][1] == 0, "{delays:?}");
    assert!(delays.windows(2).all(|w| w[0][0] < w[1][0] && w[0][1] <= w[1][1]), "{delays:?}");
    // The platform's own wake-up for the broker's answers, from the run's
    // publishes, which hold the broker's own wake-up too: the probe's is not
    // added to it.
    assert_eq!(broker.wake_latency_us, None);
    let reply = broker.reply_wake_us.as_ref().expect("the platform's wake-up for the broker's answers");
    assert_eq!((reply.len(), reply[0], reply[1][0]), (2, [0, 0], 25), "{reply:?}");
    assert!(m.calibration.measured["platform_wake"].contains("median latency"), "{:?}", m.calibration.measured);
    assert!(m.one_way_us[0] >= 1 && m.one_way_us[0] <= m.one_way_us[1] && m.one_way_us[1] <= m.one_way_us[2]);
    assert!(m.overhead >= 1.0, "{}", m.overhead);
    // The load generator's send lag, as quantiles from 0 to 1000 thousandths
    // that never fall (the file's own check), and its median the run's.
    let lag = m.calibration.send_lag_us.as_ref().expect("the load generator's send lag");
    assert_eq!((lag.first().map(|p| p[0]), lag.last().map(|p| p[0])), (Some(0), Some(1_000)), "{lag:?}");
    assert!(lag.windows(2).all(|w| w[0][1] <= w[1][1]), "{lag:?}");
    let median = lag.iter().find(|p| p[0] == 500).expect("the median")[1];
    assert_eq!(median, m.run.summary.load_generator.send_lag_p50_ns / 1_000, "{lag:?}");

    // The file: written, read back the same, named by a scenario.
    let dir = std::env::temp_dir().join(format!("fafnir-calibrate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("baseline.toml");
    std::fs::write(&path, fafnir_scenarios::calibrate::to_toml(&m.calibration)).unwrap();
    let read = Calibration::load(path.to_str().unwrap()).unwrap();
    assert_eq!(read, m.calibration);
    assert_eq!(read.cores, Some(std::thread::available_parallelism().unwrap().get()));
    // Queued unless asked (`--time-shared-cores`).
    assert_eq!(read.core_sharing, None);
    let orders = &read.service_time["orders"];
    assert!(orders.handlers["orders.submit"] >= 1, "{orders:?}");
    let named = baseline(1).with_calibration(path.to_str().unwrap()).unwrap();
    assert_eq!((named.network, named.cores, named.core_sharing), (read.network, read.cores, read.core_sharing));
    assert_eq!(named.service_time, read.service_time);
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/baseline.toml")).unwrap();
    let with_key = format!("calibration = {:?}\n{text}", path.display().to_string());
    // Named from the file: the calibration stands in where the scenario says
    // nothing (gateway), and the scenario's own sections win (orders).
    let keyed = Scenario::parse(&with_key).unwrap();
    assert_eq!(keyed.service_time["gateway"], read.service_time["gateway"]);
    assert_eq!(keyed.service_time["orders"], baseline(1).service_time["orders"]);
    assert_eq!((keyed.network, keyed.cores, keyed.core_sharing), (baseline(1).network, read.cores, read.core_sharing));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_calibration_file_that_is_wrong_names_the_file_and_the_field() {
    let dir = std::env::temp_dir().join(format!("fafnir-calibration-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = [
        ("cores = 2\n[network]\nlatency_us = [9, 3]\n[service_time]\n", "network.latency_us"),
        ("[network]\nlatency_us = [1, 3]\n[service_time.ledger]\ndist = \"exp\"\nus = [5]\n", "unknown service"),
        (
            "[network]\nlatency_us = [1, 3]\n[service_time.orders]\ndist = \"exp\"\nus = [5]\nhandlers = { \"engine.match\" = 3 }\n",
            "not a handler of orders",
        ),
        ("cores = 0\n[network]\nlatency_us = [1, 3]\n[service_time]\n", "cores"),
        (
            "[network]\nlatency_us = [1, 3]\n[service_time.broker]\ndist = \"exp\"\nus = [5]\nwake_curve = [[50, 100], [25, 900]]\n",
            "service_time.broker.wake_curve: [gap µs, thousandths] points, at least one, gaps increasing",
        ),
        (
            "[network]\nlatency_us = [1, 3]\n[service_time.broker]\ndist = \"exp\"\nus = [5]\nwake_curve = [[50, 1001]]\n",
            "service_time.broker.wake_curve: a share is at most 1000",
        ),
        (
            "[network]\nlatency_us = [1, 3]\n[service_time.orders]\ndist = \"exp\"\nus = [5]\nwake_curve = [[50, 100]]\n",
            "service_time.orders.wake_curve: only the broker",
        ),
        ("[network]\nlatency_us = [1, 3]\n", "service_time"),
        (
            "[network]\nlatency_us = [1, 3]\n[service_time.broker]\ndist = \"exp\"\nus = [5]\nwake_latency_us = [[50, 10]]\n",
            "service_time.broker.wake_latency_us: only with wake_curve",
        ),
        (
            "[network]\nlatency_us = [1, 3]\n[service_time.broker]\ndist = \"exp\"\nus = [5]\nwake_curve = [[50, 100]]\nwake_latency_us = [[50, 10], [50, 20]]\n",
            "service_time.broker.wake_latency_us: [gap µs, µs] points, at least one, gaps increasing",
        ),
        (
            "send_lag_us = [[0, 10], [900, 50]]\n[network]\nlatency_us = [1, 3]\n[service_time]\n",
            "send_lag_us: [thousandths, µs] points from 0 to 1000",
        ),
        (
            "send_lag_us = [[0, 10], [500, 60], [500, 70], [1000, 90]]\n[network]\nlatency_us = [1, 3]\n[service_time]\n",
            "send_lag_us: thousandths must increase",
        ),
        (
            "send_lag_us = [[0, 10], [500, 60], [1000, 40]]\n[network]\nlatency_us = [1, 3]\n[service_time]\n",
            "send_lag_us: a higher quantile's lag cannot be shorter",
        ),
        (
            "cores = 2\ncore_sharing = \"shared\"\n[network]\nlatency_us = [1, 3]\n[service_time]\n",
            "core_sharing",
        ),
    ];
    for (i, (text, want)) in bad.iter().enumerate() {
        let path = dir.join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let e = Calibration::load(path.to_str().unwrap()).unwrap_err();
        assert!(e.contains(want) && e.contains(&format!("bad{i}.toml")), "{text}: {e}");
    }
    let e = Calibration::load("no/such/calibration.toml").unwrap_err();
    assert!(e.contains("cannot read") && e.contains("no/such/calibration.toml"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The comparison: ratios are simulated over real, and a stage is within
/// the band only when its p50 and p99 both are.
#[test]
fn fidelity_compares_stage_by_stage() {
    let dir = std::env::temp_dir().join(format!("fafnir-fidelity-{}", std::process::id()));
    let write = |world: &str, p50: u64, p99: u64| {
        let d = dir.join(world);
        std::fs::create_dir_all(&d).unwrap();
        let stage = |p50: u64, p99: u64| serde_json::json!({"count": 100, "p50_ns": p50, "p90_ns": p50, "p99_ns": p99});
        let summary = serde_json::json!({
            "scenario": "baseline", "seed": 1,
            "stages": {"submit_to_ack": stage(p50, p99), "md_fanout": stage(1_000, 2_000)},
            "load_generator": {"send_lag_p50_ns": p50 / 10, "send_lag_p99_ns": p99 / 10},
        });
        std::fs::write(d.join("summary.json"), summary.to_string()).unwrap();
        // One hop: 100 publishes, p50 in the bucket up to 100 µs (sim) or 250 µs (real).
        let (under, le) = if world == "sim" { (60, "0.0001") } else { (40, "0.0001") };
        let exposition = format!(
            "# TYPE fafnir_bus_publish_seconds histogram\n\
             fafnir_bus_publish_seconds_bucket{{op=\"publish\",le=\"{le}\"}} {under}\n\
             fafnir_bus_publish_seconds_bucket{{op=\"publish\",le=\"0.00025\"}} 100\n\
             fafnir_bus_publish_seconds_bucket{{op=\"publish\",le=\"+Inf\"}} 100\n\
             fafnir_bus_publish_seconds_sum{{op=\"publish\"}} 0.01\nfafnir_bus_publish_seconds_count{{op=\"publish\"}} 100\n"
        );
        let lines: Vec<String> = fafnir_scenarios::observe::samples(&exposition, 3)
            .iter()
            .map(|s| serde_json::to_string(s).unwrap())
            .collect();
        std::fs::write(d.join("metrics.jsonl"), lines.join("\n") + "\n").unwrap();
        d
    };
    let (sim, real) = (write("sim", 1_100, 2_000), write("real", 1_000, 4_000));
    let f = fafnir_scenarios::fidelity::compare(&sim, &real, None, None).unwrap();
    let ack = f.stages.iter().find(|s| s.stage == "submit_to_ack").unwrap();
    assert!((ack.ratio["p50"] - 1.1).abs() < 1e-9 && (ack.ratio["p99"] - 0.5).abs() < 1e-9, "{ack:?}");
    assert_eq!((&f.within_band, &f.outside_band), (&vec!["md_fanout".to_string()], &vec!["submit_to_ack".to_string()]));
    assert!(f.table().contains("1 of 2 stages"), "{}", f.table());
    assert_eq!((f.send_lag_ns["sim"], f.send_lag_ns["real"]), ([110, 200], [100, 400]));
    assert!(f.table().contains("send lag"), "{}", f.table());
    // With one real run, no spread; with two, each stage's lowest and
    // highest real p50 and p99, and the simulated ones within them widened
    // by 25 % (submit→ack's p99 of 2 ms against 2.2 and 4 ms real: within).
    assert!(f.real_spread.is_empty() && !f.table().contains("against itself"));
    assert!(fafnir_scenarios::fidelity::spread(&f.stages, std::slice::from_ref(&real)).unwrap().is_empty());
    let again = write("real-2", 1_200, 2_200);
    let mut f2 = f.clone();
    f2.real_spread = fafnir_scenarios::fidelity::spread(&f.stages, &[real.clone(), again]).unwrap();
    let ack = f2.real_spread.iter().find(|s| s.stage == "submit_to_ack").unwrap();
    assert_eq!((ack.runs, ack.real_min_ns["p50"], ack.real_max_ns["p50"]), (2, 1_000, 1_200));
    assert_eq!((ack.real_min_ns["p99"], ack.real_max_ns["p99"]), (2_200, 4_000));
    assert!((ack.real_spread["p99"] - 4_000.0 / 2_200.0).abs() < 1e-9 && ack.within, "{ack:?}");
    assert!(f2.table().contains("2 of 2 stages"), "{}", f2.table());
    // The same real run twice: no spread, and 2 ms is outside 4 ms less 20 %.
    let same = fafnir_scenarios::fidelity::spread(&f.stages, &[real.clone(), real.clone()]).unwrap();
    assert!(!same.iter().find(|s| s.stage == "submit_to_ack").unwrap().within);
    assert!(same.iter().find(|s| s.stage == "md_fanout").unwrap().within);
    // The hop: 50th of 100 is 50/60 of the way to 100 µs simulated, 10/60
    // of the way from 100 to 250 µs real.
    assert_eq!(f.hops.len(), 1, "{:?}", f.hops);
    let hop = &f.hops[0];
    assert_eq!((hop.stage.as_str(), hop.count_sim, hop.count_real), ("bus_publish{op=publish}", 100, 100));
    assert_eq!((hop.sim_ns["p50"], hop.real_ns["p50"]), (83_333, 125_000));
    assert!(f.table().contains("bus_publish{op=publish}"), "{}", f.table());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `fafnir calibrate --broker-only`: the probe alone, into a calibration
/// file, which keeps everything else it held.
#[test]
fn the_broker_alone_goes_into_a_calibration_keeping_the_rest() {
    let dir = std::env::temp_dir().join(format!("fafnir-broker-only-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let file = dir.join("cal.toml");
    std::fs::copy(format!("{root}/calibration/baseline.toml"), &file).unwrap();
    let before = Calibration::load(file.to_str().unwrap()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fafnir"))
        .args(["calibrate", &format!("{root}/scenarios/baseline.toml"), "--broker-only", "--out"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("its CPU per message") && text.contains("all else kept"), "{text}");
    let after = Calibration::load(file.to_str().unwrap()).unwrap();
    let broker = &after.service_time["broker"];
    assert!(broker.wake_curve.as_ref().is_some_and(|c| c.len() == 7), "{broker:?}");
    // Without a run, the broker's wake-up latency is the probe's alone.
    assert!(broker.wake_latency_us.as_ref().is_some_and(|d| !d.is_empty() && d[0][1] == 0), "{broker:?}");
    assert!(["publish", "deliver", "ack", "wake"].iter().all(|h| broker.handlers.contains_key(&format!("broker.{h}"))));
    assert!(after.measured["broker_probe"].contains("nats-server"));
    // Everything else as it was.
    let others = |c: &Calibration| {
        c.service_time.iter().filter(|(s, _)| *s != "broker").map(|(s, t)| (s.clone(), t.clone())).collect::<Vec<_>>()
    };
    assert_eq!(others(&after), others(&before));
    assert_eq!((after.network, after.cores), (before.network, before.cores));
    // A file that is not a calibration is refused, and left as it was.
    std::fs::write(&file, "not = \"a calibration\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fafnir"))
        .args(["calibrate", &format!("{root}/scenarios/baseline.toml"), "--broker-only", "--out"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cal.toml"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not = \"a calibration\"\n");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `fafnir calibrate --time-shared-cores` writes `core_sharing = "fair"`,
/// which a scenario naming the file then takes.
#[test]
fn time_shared_cores_are_written_when_asked() {
    let dir = std::env::temp_dir().join(format!("fafnir-time-shared-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let file = dir.join("cal.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fafnir"))
        .args(["calibrate", &format!("{root}/scenarios/baseline.toml"), "--duration", "1s", "--time-shared-cores"])
        .arg("--out")
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let cal = Calibration::load(file.to_str().unwrap()).unwrap();
    assert_eq!(cal.core_sharing, Some(fafnir_sim::service_time::CoreSharing::Fair));
    assert!(std::fs::read_to_string(&file).unwrap().contains("core_sharing = \"fair\""));
    let named = baseline(1).with_calibration(file.to_str().unwrap()).unwrap();
    assert_eq!(named.core_sharing, cal.core_sharing);
    std::fs::remove_dir_all(&dir).unwrap();
}
