use fafnir_reports::compare;

use crate::fixture::Options;
use crate::{fixture_run, write};

/// A minimal summary.json with one stage's quantiles (ns) and one count.
fn summary(p50_ns: u64, max_ns: u64, submitted: u64) -> String {
    format!(
        r#"{{"scenario": "s", "mode": "simulation", "seed": 1, "config_hash": "c", "trace_hash": "t",
            "duration_ms": 1000, "outcome": "success", "counts": {{"submitted": {submitted}}},
            "stages": {{"submit_to_ack": {{"count": 10, "p50_ns": {p50_ns}, "p90_ns": 0, "p99_ns": 8000000,
                "p999_ns": 8000000, "max_ns": {max_ns}}}}}}}"#
    )
}

#[test]
fn table_shows_both_runs_and_the_change() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    write(&a, "summary.json", &summary(4_000_000, 0, 200));
    write(&b, "summary.json", &summary(5_000_000, 9_000_000, 150));
    let table = compare(&a, &b, &tmp.path().join("cmp")).expect("compares");
    let row = |label: &str| -> Vec<String> {
        let line = table.lines().find(|l| l.split_whitespace().any(|w| w == label)).expect(label);
        line.split_whitespace().map(str::to_string).collect()
    };
    assert_eq!(row("p50")[1..], ["4.000", "5.000", "+25.0%"], "{table}");
    assert_eq!(row("p90")[1..], ["0.000", "0.000", "n/a"], "A is 0: no percentage\n{table}");
    assert_eq!(row("max")[1..], ["0.000", "9.000", "n/a"], "{table}");
    assert_eq!(row("p99")[1..], ["8.000", "8.000", "+0.0%"], "{table}");
    assert_eq!(row("submitted")[1..], ["200", "150", "-25.0%"], "{table}");
    assert!(table.contains(&format!("A: {}", a.display())), "{table}");
    // No histograms: the spectrum comes from the summaries' quantiles.
    assert!(tmp.path().join("cmp/compare_spectrum.png").exists());
    assert!(tmp.path().join("cmp/compare_spectrum.svg").exists());
}

#[test]
fn compares_two_fixture_runs() {
    let (_ta, a) = fixture_run(&Options::default());
    let (_tb, b) = fixture_run(&Options { seed: 7, latency_factor: 1.3, ..Options::default() });
    let out = a.parent().unwrap().join("compare");
    let table = compare(&a, &b, &out).expect("compares");
    for stage in ["submit_to_ack", "submit_to_first_fill", "submit_to_final", "cancel_to_ack", "md_fanout"] {
        assert!(table.contains(stage), "{stage} missing:\n{table}");
    }
    let svg = std::fs::read_to_string(out.join("compare_spectrum.svg")).unwrap();
    assert!(svg.contains(&format!("B (dashed): {}", b.display())), "legend names the run directories");
    assert!(svg.contains(&format!("A (solid): {}", a.display())));
}
