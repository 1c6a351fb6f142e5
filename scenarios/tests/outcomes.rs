//! Every outcome of `fafnir run` and its exit code, one test per row of the
//! table in `fafnir run --help` and scenarios/SCENARIOS.md
//! ([`fafnir_scenarios::run::EXIT_CODES`]); and every run that starts leaves
//! its run directory, whatever its outcome. Rows a scenario file can bring
//! about run the `fafnir` binary itself; the two that need a planted bug
//! (which no file can name) run the same library call the binary makes.
#![cfg(madsim)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use fafnir_platform::config::PlantedBug;
use fafnir_scenarios::run::{Outcome, EXIT_CODES};
use fafnir_scenarios::scenario::Scenario;

fn library_file(name: &str) -> String {
    let path = format!("{}/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A fresh directory for one test's files.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fafnir-outcomes-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The baseline scenario with `edit` applied to its text, written to `dir`.
fn baseline_with(dir: &Path, edit: impl FnOnce(String) -> String) -> PathBuf {
    let path = dir.join("scenario.toml");
    std::fs::write(&path, edit(library_file("baseline.toml"))).unwrap();
    path
}

fn fafnir(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fafnir")).args(args).env("CI", "1").output().expect("fafnir runs")
}

/// `fafnir run FILE --duration 2s --out DIR`: its exit code, stdout and stderr.
fn run_file(file: &Path, out: &Path) -> (i32, String, String) {
    let o = fafnir(&["run", file.to_str().unwrap(), "--duration", "2s", "--out", out.to_str().unwrap()]);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (o.status.code().expect("an exit code, not a signal"), text(&o.stdout), text(&o.stderr))
}

/// The run directory holds everything a user looks at, and its summary
/// the outcome; returns the summary.
fn assert_run_dir(out: &Path, outcome: &str) -> serde_json::Value {
    for file in ["summary.json", "timeline.json", "submit_to_ack.hgrm", "submit_to_ack.hdr", "index.html"] {
        assert!(out.join(file).is_file(), "{} has no {file}", out.display());
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).expect("summary.json is JSON");
    assert_eq!(summary["outcome"], outcome, "{summary:#}");
    assert!(summary["rerun"].as_str().is_some_and(|r| r.starts_with("cargo fafnir run")), "{summary:#}");
    summary
}

/// The row of the exit code table for `code`: (outcome, when).
fn row(code: u8) -> (String, String) {
    EXIT_CODES
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells.len() == 5 && cells[1] == code.to_string()).then(|| (cells[2].to_string(), cells[3].to_string()))
        })
        .next()
        .unwrap_or_else(|| panic!("no row for exit {code} in:\n{EXIT_CODES}"))
}

#[test]
fn the_table_matches_the_code_the_help_and_the_document() {
    for outcome in Outcome::ALL {
        let name = serde_json::to_value(outcome).unwrap();
        assert_eq!(row(outcome.exit_code()).0, name.as_str().unwrap(), "{outcome:?}");
    }
    assert_eq!(row(2).0, "-", "exit 2 is no outcome: nothing ran");
    let rows: Vec<&str> = EXIT_CODES.lines().filter(|l| l.starts_with('|')).collect();
    assert_eq!(rows.len(), 2 + Outcome::ALL.len() + 1, "a header, a rule, one row per outcome and exit 2");
    let help = fafnir(&["run", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    let doc = library_file("SCENARIOS.md");
    for line in rows {
        assert!(help.contains(line), "`fafnir run --help` lacks {line:?}:\n{help}");
        assert!(doc.contains(line), "scenarios/SCENARIOS.md lacks {line:?}");
    }
}

#[test]
fn exit_0_success_leaves_the_run_directory() {
    let dir = scratch("success");
    let (file, out) = (baseline_with(&dir, |t| t), dir.join("run"));
    let (code, stdout, stderr) = run_file(&file, &out);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let summary = assert_run_dir(&out, "success");
    assert!(out.join("replay.toml").is_file());
    assert_eq!(summary["error_budget"]["passed"], true, "{summary:#}");
    assert!(stdout.contains("errors ok   0 of") && stdout.contains("outcome: Success (exit 0)"), "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn exit_1_error_when_the_run_directory_cannot_be_written() {
    let dir = scratch("error");
    let file = baseline_with(&dir, |t| t);
    // The run directory would be inside a regular file.
    std::fs::write(dir.join("a-file"), "").unwrap();
    let (code, stdout, stderr) = run_file(&file, &dir.join("a-file").join("run"));
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stderr.contains("the run directory") && stderr.contains("was not written"), "{stderr}");
    // The run itself was reported before the error.
    assert!(stdout.contains("outcome: Success"), "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn exit_2_a_bad_file_is_refused_by_run_and_once_by_chaos() {
    let dir = scratch("usage");
    let file = baseline_with(&dir, |t| {
        t + "\n[[fault]]\naction = \"kill\"\ntarget = \"no-such-node\"\nat_ms = 500\nduration_ms = 500\n"
    });
    let (code, stdout, stderr) = run_file(&file, &dir.join("run"));
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    assert!(stderr.contains("fault[0]") && stderr.contains("no-such-node"), "{stderr}");
    assert!(!dir.join("run").exists(), "nothing ran, so no run directory");
    let o =
        fafnir(&["chaos", file.to_str().unwrap(), "--seeds", "1..51", "--out", dir.join("chaos").to_str().unwrap()]);
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(2), "{stdout}\n{stderr}");
    assert_eq!(stderr.matches("no-such-node").count(), 1, "refused once, before sweeping:\n{stderr}");
    assert!(!stdout.contains("seed"), "no seed ran:\n{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn exit_3_slo_violated() {
    let dir = scratch("slo");
    let file = baseline_with(&dir, |t| t.replace("\"submit_to_ack.p99 < 100ms\"", "\"submit_to_ack.p99 < 1us\""));
    let (code, stdout, stderr) = run_file(&file, &dir.join("run"));
    assert_eq!(code, 3, "{stdout}\n{stderr}");
    let summary = assert_run_dir(&dir.join("run"), "slo_violated");
    assert_eq!(summary["slos"][0]["passed"], false, "{summary:#}");
    assert!(stdout.contains("replay: cargo fafnir run"), "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A library scenario shortened to `seconds`, with `bug` planted (and no nemesis), run the way
/// `fafnir run` runs it, its run directory written to `out`.
fn run_planted(file: &str, seed: u64, seconds: u64, bug: PlantedBug, out: &Path) -> fafnir_scenarios::run::RunResult {
    let mut scn = Scenario::parse(&library_file(file)).unwrap();
    scn.seed = seed;
    scn.duration = Duration::from_secs(seconds);
    scn.planted_bug = Some(bug);
    // The bug alone, no random faults.
    (scn.nemesis, scn.buggify) = (None, false);
    let rerun = format!("cargo fafnir run scenarios/{file} --seed {}", scn.seed);
    let r = fafnir_scenarios::sim_run::run(&scn, scn.seed, "test".into(), rerun).expect("the run starts");
    fafnir_scenarios::run::write_run_dir(out, &r).unwrap();
    fafnir_reports::render_run(out).unwrap();
    r
}

#[test]
fn exit_4_correctness_violated() {
    let dir = scratch("correctness");
    let r = run_planted("baseline.toml", 1, 3, PlantedBug::ReportsToCounterparty, &dir);
    assert_eq!((r.summary.outcome, r.summary.outcome.exit_code()), (Outcome::CorrectnessViolated, 4));
    let summary = assert_run_dir(&dir, "correctness_violated");
    assert_eq!(summary["checker"]["passed"], false, "{summary:#}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn exit_5_error_budget_exceeded_says_which_requests_failed() {
    let dir = scratch("budget");
    // The orders service is down for a second of the two: submits fail.
    let file = baseline_with(&dir, |t| {
        t.replace("quiesce_ms = 15000\n", "quiesce_ms = 15000\nerror_budget = \"0.5%\"\n")
            + "\n[[fault]]\naction = \"kill\"\ntarget = \"orders\"\nat_ms = 500\nduration_ms = 1000\n"
    });
    let (code, stdout, stderr) = run_file(&file, &dir.join("run"));
    assert_eq!(code, 5, "{stdout}\n{stderr}");
    let summary = assert_run_dir(&dir.join("run"), "error_budget_exceeded");
    let budget = &summary["error_budget"];
    assert_eq!((budget["budget_ppm"].as_u64(), budget["passed"].as_bool()), (Some(5_000), Some(false)), "{summary:#}");
    let errors = summary["errors"].as_object().expect("errors by request and code");
    let counted: u64 = errors.values().map(|k| k["count"].as_u64().unwrap()).sum();
    assert!(errors.values().all(|k| k["first"][0].as_str().is_some_and(|m| !m.is_empty())), "{summary:#}");
    assert_eq!(budget["errors"].as_u64(), Some(counted), "{summary:#}");
    assert!(errors.keys().any(|k| k.starts_with("submit ")), "{summary:#}");
    assert!(stdout.contains("errors FAIL") && stdout.contains("      submit Unavailable: "), "{stdout}");
    // Every fill was still right.
    assert_eq!(summary["checker"]["passed"], true, "{summary:#}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn exit_6_liveness_leaves_the_run_directory_and_what_it_waited_for() {
    let dir = scratch("liveness");
    // Every message is lost: the platform never comes up.
    let file =
        baseline_with(&dir, |t| t.replace("latency_us = [50, 250]\n", "latency_us = [50, 250]\nloss_ppm = 1000000\n"));
    let (code, stdout, stderr) = run_file(&file, &dir.join("run"));
    assert_eq!(code, 6, "{stdout}\n{stderr}");
    let summary = assert_run_dir(&dir.join("run"), "liveness");
    let why = summary["stopped"].as_str().expect("why it stopped");
    assert!(why.contains("did not come up") && why.contains("gateway"), "{why}");
    assert!(dir.join("run/replay.toml").is_file());
    assert!(stdout.contains("replay: cargo fafnir run"), "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn exit_7_a_panic_in_the_world_is_a_crash_with_its_message_and_what_was_measured() {
    let dir = scratch("crash");
    // The hostile client's overflowing deposit is stored before it is
    // checked; the portfolio panics when it cannot apply it.
    let r = run_planted("chaos.toml", 2, 4, PlantedBug::DepositsUnchecked, &dir);
    assert_eq!((r.summary.outcome, r.summary.outcome.exit_code()), (Outcome::Crash, 7));
    let summary = assert_run_dir(&dir, "crash");
    let why = summary["stopped"].as_str().expect("the panic's message");
    assert!(why.starts_with("panic: ") && why.contains("cannot be applied"), "{why}");
    assert!(summary["counts"]["submitted"].as_u64() > Some(0), "what was measured until the panic: {summary:#}");
    std::fs::remove_dir_all(&dir).unwrap();
}
