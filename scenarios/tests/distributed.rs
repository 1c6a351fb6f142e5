//! Sweeps spread over `fafnir worker` processes through a private
//! nats-server's JetStream: seed for seed the same outcomes and trace hashes
//! as the simulated build's `chaos --jobs` on one machine, also when a worker
//! is killed mid-job; a restarted coordinator picks up the stored results;
//! a job whose run keeps failing is reported, not retried forever. And a
//! real run's load split over 1 and 3 workers: the same orders, histograms
//! merged whole, the checker passing.
//!
//! They run the simulated build's binary (target/sim/release/fafnir) from
//! the release build's workers, so ci/test runs them after building both:
//! `cargo test --release -p fafnir-scenarios --test distributed -- --ignored`.
#![cfg(not(madsim))]
#![allow(clippy::disallowed_methods)] // a test of processes reads the wall clock

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support/up.rs"]
mod up;

use fafnir_scenarios::servers::Server;
use fafnir_scenarios::sweep::{parse_outcomes, FailureKind, SeedOutcome};

const FAFNIR: &str = env!("CARGO_BIN_EXE_fafnir");

fn sim_bin() -> PathBuf {
    // target/release/fafnir -> target/sim/release/fafnir
    let target = Path::new(FAFNIR).parent().and_then(Path::parent).expect("a target directory");
    let bin = target.join("sim/release/fafnir");
    assert!(
        bin.is_file(),
        "{} is missing: `cargo sim build --release -p fafnir-scenarios --bin fafnir` first",
        bin.display()
    );
    bin
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("fafnir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A process killed on drop, its output in a log file.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn start(bin: &Path, args: &[String], log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        Proc { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit, at most `within`; its exit code.
    fn wait(&mut self, within: Duration) -> i32 {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "still running after {within:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// scenarios/chaos.toml with an SLO that some seeds' faults break and others'
/// do not: the sweep has failures (whose run directories travel back) and passes.
fn scenario(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/chaos.toml")).unwrap();
    let text = text.replace("\"submit_to_ack.p99 < 10s\"", "\"submit_to_ack.p99 < 100ms\"");
    let path = dir.join("chaos-tight.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn s(x: impl ToString) -> String {
    x.to_string()
}

fn worker(nats: &str, ns: &str, name: &str, sim: &Path, dir: &Path) -> Proc {
    let args = [
        s("worker"),
        s("--nats"),
        s(nats),
        s("--namespace"),
        s(ns),
        s("--jobs"),
        s(1),
        s("--ack-wait"),
        s("3s"),
        s("--sim-bin"),
        sim.display().to_string(),
        s("--name"),
        s(name),
    ];
    Proc::start(Path::new(FAFNIR), &args, dir.join(format!("{name}.log")))
}

/// `fafnir chaos FILE --seeds SEEDS --nats NATS --namespace NS --out OUT`, then `extra`.
fn coordinator_args(scn: &Path, seeds: &str, nats: &str, ns: &str, out: &Path, extra: &[String]) -> Vec<String> {
    let mut a = vec![
        s("chaos"),
        scn.display().to_string(),
        s("--seeds"),
        s(seeds),
        s("--nats"),
        s(nats),
        s("--namespace"),
        s(ns),
        s("--out"),
        out.display().to_string(),
    ];
    a.extend_from_slice(extra);
    a
}

fn outcomes(path: &Path) -> Vec<SeedOutcome> {
    parse_outcomes(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

const SEEDS: &str = "0..12";

#[test]
#[ignore = "runs the release builds' binaries: ci/test runs it in release"]
fn a_sweep_over_three_workers_matches_one_machine_also_when_a_worker_is_killed() {
    let sim = sim_bin();
    let dir = Scratch::new("distributed");
    let scn = scenario(&dir.0);
    let scn_arg = scn.display().to_string();

    // The same sweep on one machine.
    let local_out = dir.0.join("local");
    let local_jsonl = dir.0.join("local.jsonl");
    let args = [
        s("chaos"),
        scn_arg.clone(),
        s("--seeds"),
        s(SEEDS),
        s("--jobs"),
        s(2),
        s("--duration"),
        s("2s"),
        s("--out"),
        local_out.display().to_string(),
        s("--outcomes"),
        local_jsonl.display().to_string(),
    ];
    let mut local = Proc::start(&sim, &args, dir.0.join("local.log"));
    let local_code = local.wait(Duration::from_secs(300));
    let local_runs = outcomes(&local_jsonl);
    assert_eq!(local_runs.len(), 12);
    let failing: Vec<u64> = local_runs.iter().filter(|r| r.failure.is_some()).map(|r| r.seed).collect();
    assert!(
        !failing.is_empty() && failing.len() < 12,
        "the test wants failing and passing seeds, got failures at {failing:?}:\n{}",
        local.log()
    );
    assert_eq!(local_code, 4);

    // Over three workers, one killed while it runs a job.
    let nats = Server::nats().unwrap();
    let ns = format!("t{}", std::process::id());
    let mut workers: Vec<Proc> = (0..3).map(|i| worker(&nats.addr(), &ns, &format!("w{i}"), &sim, &dir.0)).collect();
    // Every worker pulling before the jobs come: each takes one at once.
    for w in &workers {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !w.log().contains("taking jobs") {
            assert!(Instant::now() < deadline, "a worker did not start:\n{}", w.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let dist_out = dir.0.join("dist");
    let sweep_args = |out: &Path, extra: &[String]| {
        let extra = [&[s("--duration"), s("2s"), s("--batch"), s(2)], extra].concat();
        coordinator_args(&scn, SEEDS, &nats.addr(), &ns, out, &extra)
    };
    let mut coordinator = Proc::start(Path::new(FAFNIR), &sweep_args(&dist_out, &[]), dir.0.join("coordinator.log"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !workers[0].log().contains(", attempt ") {
        assert!(Instant::now() < deadline, "w0 took no job:\n{}", workers[0].log());
        std::thread::sleep(Duration::from_millis(20));
    }
    workers[0].kill();
    assert!(!workers[0].log().contains(" done in "), "w0 was to be killed mid-job:\n{}", workers[0].log());
    let code = coordinator.wait(Duration::from_secs(300));
    let log = coordinator.log();
    assert_eq!(code, local_code, "{log}");
    let dist_runs = outcomes(&dist_out.join("outcomes.jsonl"));
    assert_eq!(dist_runs, local_runs, "seed for seed the same outcomes and trace hashes");
    assert!(dist_runs.iter().all(|r| r.trace_hash.is_some()));

    // The same lines and table as the local sweep.
    let local_log = local.log();
    let table =
        |log: &str| log[log.find("\nruns ").expect("a table")..].replace(&local_out.display().to_string(), "OUT");
    assert_eq!(table(&log).replace(&dist_out.display().to_string(), "OUT"), table(&local_log), "{log}");
    for seed in &failing {
        assert!(log.contains(&format!("seed {seed} FAILED")), "{log}");
        let seed_dir = dist_out.join(format!("seed-{seed}"));
        for file in ["replay.toml", "failure.json", "summary.json"] {
            let (got, want) = (seed_dir.join(file), local_out.join(format!("seed-{seed}")).join(file));
            assert!(got.is_file(), "{} missing", got.display());
            if file != "summary.json" {
                assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(&want).unwrap(), "{file} of seed {seed}");
            }
        }
    }

    // Which worker ran what: the killed worker's job ran again elsewhere.
    let sweep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dist_out.join("sweep.json")).unwrap()).unwrap();
    let jobs = sweep["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 6);
    assert!(jobs.iter().all(|j| j["error"].is_null() && j["worker"] != "w0"), "{sweep:#}");
    assert!(jobs.iter().any(|j| j["attempt"].as_i64() > Some(1)), "the killed worker's job redelivered: {sweep:#}");
    let logs: Vec<String> = workers.iter().map(|w| w.log()).collect();
    assert!(sweep["workers"].as_object().unwrap().len() >= 2, "{sweep:#}\n{}", logs.join("\n"));

    // A coordinator started again on the same sweep picks up its results,
    // with no worker left to run anything.
    for w in &mut workers {
        w.kill();
    }
    let run_id = log.lines().find_map(|l| l.strip_prefix("sweep ")).and_then(|l| l.split(' ').next()).unwrap();
    let again = dir.0.join("again");
    let args = sweep_args(&again, &[s("--run-id"), s(run_id)]);
    let mut resumed = Proc::start(Path::new(FAFNIR), &args, dir.0.join("resumed.log"));
    assert_eq!(resumed.wait(Duration::from_secs(60)), local_code, "{}", resumed.log());
    assert!(resumed.log().contains("picked up 6 finished jobs of 6"), "{}", resumed.log());
    assert_eq!(outcomes(&again.join("outcomes.jsonl")), local_runs);
    assert!(local_runs.iter().any(|r| r.failure.as_ref().is_some_and(|f| f.kind == FailureKind::Slo)));
}

#[test]
#[ignore = "runs the release build's binary: ci/test runs it in release"]
fn a_job_whose_run_keeps_failing_is_reported_and_not_retried_forever() {
    let dir = Scratch::new("distributed-failing");
    let scn = scenario(&dir.0);
    let nats = Server::nats().unwrap();
    let ns = format!("f{}", std::process::id());
    // A "simulated build" that fails every run.
    let _w = worker(&nats.addr(), &ns, "broken", Path::new("/bin/false"), &dir.0);
    let out = dir.0.join("out");
    let args = coordinator_args(&scn, "0..2", &nats.addr(), &ns, &out, &[]);
    let mut coordinator = Proc::start(Path::new(FAFNIR), &args, dir.0.join("coordinator.log"));
    let code = coordinator.wait(Duration::from_secs(60));
    let log = coordinator.log();
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("job 0 (seeds 0..2) could not be run (4 attempts, last on broken)"), "{log}");
    assert!(log.contains("1 jobs (2 seeds) could not be run"), "{log}");
    let sweep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("sweep.json")).unwrap()).unwrap();
    assert!(sweep["jobs"][0]["error"].as_str().unwrap().contains("/bin/false"), "{sweep:#}");
}

/// Noise traders whose orders the seed fixes, however they are split.
const NOISE: &str = include_str!("support/split-noise.toml");

/// What `fafnir run --workers n` against a fresh `fafnir up` wrote.
fn run_over_workers(n: u32, scn: &Path, queue: &str, dir: &Path) -> (serde_json::Value, serde_json::Value) {
    let base = up::free_port_block(6);
    let namespace = format!("spread{n}x{}", std::process::id());
    let base_arg = base.to_string();
    let args = [
        "--namespace",
        &namespace,
        "--jwt-secret",
        "spread-test-secret-0123456789abcdefghijkl",
        "--base-port",
        &base_arg,
        "--graphql-addr",
        "off",
        "--metrics-addr",
        "off",
    ];
    let _up = up::Up::start(&format!("spread{n}"), &args, Duration::from_secs(30));
    let out = dir.join(format!("run{n}"));
    let args = [
        s("run"),
        scn.display().to_string(),
        s("--gateway"),
        format!("127.0.0.1:{base}"),
        s("--namespace"),
        namespace,
        s("--workers"),
        s(n),
        s("--queue"),
        s(queue),
        s("--out"),
        out.display().to_string(),
    ];
    let mut run = Proc::start(Path::new(FAFNIR), &args, dir.join(format!("run{n}.log")));
    let code = run.wait(Duration::from_secs(120));
    let worker_logs = || {
        (0..3).map(|i| std::fs::read_to_string(dir.join(format!("l{i}.log"))).unwrap_or_default()).collect::<Vec<_>>()
    };
    assert_eq!(code, 0, "{}\nworkers:\n{}", run.log(), worker_logs().join("\n"));
    let read = |f: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(out.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"))).unwrap()
    };
    (read("summary.json"), read("workers.json"))
}

#[test]
#[ignore = "runs the release build's binaries against the real NATS and Redis: ci/test runs it in release"]
fn a_run_over_one_and_three_workers_submits_the_same_orders_and_merges_every_part() {
    let dir = Scratch::new("spread-load");
    let scn = dir.0.join("noise.toml");
    std::fs::write(&scn, NOISE).unwrap();
    let queue = format!("spread{}", std::process::id());
    let _workers: Vec<Proc> =
        (0..3).map(|i| worker("127.0.0.1:4222", &queue, &format!("l{i}"), &sim_bin(), &dir.0)).collect();
    let (one, one_shares) = run_over_workers(1, &scn, &queue, &dir.0);
    let (three, three_shares) = run_over_workers(3, &scn, &queue, &dir.0);
    let submitted = |s: &serde_json::Value| s["counts"]["submitted"].as_u64().unwrap();
    assert!(submitted(&one) > 100, "{one:#}");
    assert_eq!(submitted(&one), submitted(&three), "the same orders split or not");
    for (summary, shares, n) in [(&one, &one_shares, 1), (&three, &three_shares, 3)] {
        let shares = shares.as_array().unwrap();
        assert_eq!(shares.len(), n);
        let workers: BTreeSet<&str> = shares.iter().map(|s| s["worker"].as_str().unwrap()).collect();
        assert_eq!(workers.len(), n, "each share on a worker of its own: {shares:#?}");
        let sum = |f: &str| shares.iter().map(|s| s["figures"][f].as_u64().unwrap()).sum::<u64>();
        assert_eq!(sum("submitted"), submitted(summary));
        // The merged submit_to_ack histogram holds every share's answers.
        let accepted = summary["counts"]["accepted"].as_u64().unwrap();
        assert_eq!(sum("accepted"), accepted);
        assert_eq!(summary["stages"]["submit_to_ack"]["count"].as_u64(), Some(accepted), "{summary:#}");
        assert!(summary["checker"]["checks"].as_array().unwrap().iter().all(|c| c["passed"] == true));
    }
}

#[test]
#[ignore = "runs the release builds' binaries: ci/test runs it in release"]
fn a_job_whose_every_taker_dies_is_reported_then_runs_again_when_the_sweep_resumes() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = Scratch::new("distributed-dying");
    let scn = scenario(&dir.0);
    // A "simulated build" that never ends: the worker reports progress until it is killed.
    let hang = dir.0.join("hang");
    std::fs::write(&hang, "#!/bin/sh\nexec sleep 600\n").unwrap();
    std::fs::set_permissions(&hang, std::fs::Permissions::from_mode(0o755)).unwrap();
    let nats = Server::nats().unwrap();
    let ns = format!("d{}", std::process::id());
    let out = dir.0.join("out");
    let args = coordinator_args(&scn, "0..2", &nats.addr(), &ns, &out, &[s("--duration"), s("2s")]);
    let mut coordinator = Proc::start(Path::new(FAFNIR), &args, dir.0.join("coordinator.log"));
    // Every delivery's taker dies while it runs the job (a delivery may
    // also go to a pull request the last killed worker left behind).
    let attempt_of = |log: &str| {
        log.split(", attempt ").nth(1).and_then(|a| a.split_whitespace().next()).and_then(|a| a.parse::<u32>().ok())
    };
    for n in 1.. {
        assert!(n <= 8, "the job was not delivered 4 times");
        let mut w = worker(&nats.addr(), &ns, &format!("dies{n}"), &hang, &dir.0);
        let deadline = Instant::now() + Duration::from_secs(30);
        let attempt = loop {
            if let Some(a) = attempt_of(&w.log()) {
                break a;
            }
            assert!(Instant::now() < deadline, "no delivery taken:\n{}\ncoordinator:\n{}", w.log(), coordinator.log());
            std::thread::sleep(Duration::from_millis(20));
        };
        w.kill();
        if attempt >= 4 {
            break;
        }
    }
    // A worker alive when the queue gives up on the job stores its failure.
    let _witness = worker(&nats.addr(), &ns, "witness", &hang, &dir.0);
    let code = coordinator.wait(Duration::from_secs(60));
    let log = coordinator.log();
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("job 0 (seeds 0..2) could not be run"), "{log}");
    assert!(log.contains("delivered 4 times and never finished"), "{log}");

    // Resumed with a worker that can run it: the job runs again.
    drop(_witness);
    let run_id = log.lines().find_map(|l| l.strip_prefix("sweep ")).and_then(|l| l.split(' ').next()).unwrap();
    let _healthy = worker(&nats.addr(), &ns, "healthy", &sim_bin(), &dir.0);
    let args = [args, vec![s("--run-id"), s(run_id)]].concat();
    let mut resumed = Proc::start(Path::new(FAFNIR), &args, dir.0.join("resumed.log"));
    let code = resumed.wait(Duration::from_secs(120));
    assert!(code == 0 || code == 4, "{}", resumed.log());
    assert!(resumed.log().contains("picked up 0 finished jobs of 1; 0 still queued"), "{}", resumed.log());
    let runs = outcomes(&out.join("outcomes.jsonl"));
    assert_eq!(runs.iter().map(|r| r.seed).collect::<Vec<_>>(), vec![0, 1]);
}
