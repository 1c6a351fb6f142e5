//! A capacity search: four steps at 500, 1000, 2000 and 4000 orders/s, the
//! last not within the SLO, the knee at 2000, written as `fafnir capacity`
//! writes `capacity.json`, with an `index.html` in each step's directory.

use std::path::{Path, PathBuf};

use fafnir_reports::render_capacity;
use serde_json::{json, Value};

use crate::write;

/// A stage's quantiles from its p50, p99 and p99.9 in µs.
fn stage(count: u64, p50_us: u64, p99_us: u64, p999_us: u64) -> Value {
    let ns = |us: u64| us * 1_000;
    json!({"count": count, "p50_ns": ns(p50_us), "p90_ns": ns(p99_us) / 2, "p99_ns": ns(p99_us),
           "p999_ns": ns(p999_us), "max_ns": ns(p999_us) * 2})
}

/// (target, achieved, ack p50/p99/p99.9 µs, first fill p50/p99 µs, first-fill count).
fn step(target: u64, achieved: f64, ack: [u64; 3], fill: [u64; 2], fills: u64) -> Value {
    json!({
        "target_per_s": target,
        "agents": target / 10 + 2,
        "offered_per_s": target as f64 * 0.99,
        "achieved_per_s": achieved,
        "stages": {
            "submit_to_ack": stage(target * 10, ack[0], ack[1], ack[2]),
            "submit_to_first_fill": stage(fills, fill[0], fill[1], fill[1] * 2),
            "md_fanout": {}
        },
        "errors": {},
        "error_ppm": 0,
        "outcome": "success",
        "checker_passed": true,
        "within": true,
        "why_not": null,
        "send_lag_p99_ns": 40_000,
        "run_dir": format!("step-{target}"),
        "a_later_field": [1, 2]
    })
}

/// The search's `capacity.json` as a value, to be changed by a test before writing.
pub fn capacity() -> Value {
    let mut steps = vec![
        step(500, 495.0, [800, 2_100, 3_500], [1_600, 4_200], 2_000),
        step(1000, 990.5, [850, 2_600, 4_100], [0, 0], 0),
        step(2000, 1985.0, [1_100, 7_900, 9_800], [2_300, 9_100], 9_000),
        step(4000, 2610.0, [6_400, 23_400, 61_000], [9_000, 48_000], 15_000),
    ];
    steps[1]["errors"] = json!({"submit Unavailable": {"count": 3, "first": ["orders is unavailable"]}});
    steps[1]["error_ppm"] = json!(300);
    steps[2]["errors"] = json!({
        "submit Unavailable": {"count": 2, "first": []},
        "submit DeadlineExceeded": {"count": 9, "first": []},
        "cancel Unavailable": {"count": 1, "first": []},
        "cancel <timed out>": {"count": 1, "first": []}
    });
    steps[2]["error_ppm"] = json!(900);
    steps[3]["outcome"] = json!("slo_violated");
    steps[3]["within"] = json!(false);
    steps[3]["why_not"] = json!("submit_to_ack p99 23.4 ms > limit 10 ms & rising");
    steps[3]["error_ppm"] = json!(4_000);
    json!({
        "scenario": "capacity",
        "mode": "simulation",
        "seed": 1,
        "step_ms": 10_000,
        "slo": "submit_to_ack.p99 < 10ms",
        "slo_limit_ns": 10_000_000,
        "max_error_ppm": 1_000,
        "knee_orders_per_s": 2000,
        "steps": steps,
        "notes": ["the load generator lagged at 4000/s: send lag p99 12 ms > 1 ms <check the host>"],
        "a_later_top_field": {"x": 1}
    })
}

/// Writes `c` as `<tmp>/cap/capacity.json`, and an `index.html` in each step's directory.
fn search(c: &Value) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("cap");
    write(&dir, "capacity.json", &serde_json::to_string_pretty(c).unwrap());
    for s in c["steps"].as_array().unwrap() {
        write(&dir.join(s["run_dir"].as_str().unwrap()), "index.html", "<html></html>\n");
    }
    (tmp, dir)
}

fn page(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("index.html")).expect("index.html")
}

#[test]
fn renders_the_plot_and_the_page() {
    let (_tmp, dir) = search(&capacity());
    let rendered = render_capacity(&dir).expect("renders");
    let expected: Vec<PathBuf> =
        ["capacity_latency.png", "capacity_latency.svg", "index.html"].iter().map(|f| dir.join(f)).collect();
    assert_eq!(rendered.files, expected);
    assert_eq!(rendered.index, dir.join("index.html"));
    assert_eq!(rendered.notes, Vec::<String>::new());
    for f in &expected[..2] {
        let len = std::fs::metadata(f).expect("plot written").len();
        assert!(len > 10_000, "{} is only {len} bytes", f.display());
    }
    assert!(std::fs::read(&expected[0]).unwrap().starts_with(b"\x89PNG"));
    let svg = std::fs::read_to_string(&expected[1]).unwrap();
    for needle in [
        "Latency against throughput: capacity (simulation)",
        "submit_to_ack.p99 &lt; 10ms",
        "knee 2000 orders/s",
        "submit_to_ack p99.9",
        "submit_to_first_fill p50",
        "achieved orders per second",
    ] {
        assert!(svg.contains(needle), "the SVG lacks {needle:?}");
    }
}

#[test]
fn the_page_names_the_knee_and_every_step() {
    let (_tmp, dir) = search(&capacity());
    render_capacity(&dir).expect("renders");
    let html = page(&dir);
    for needle in [
        "<title>fafnir capacity: capacity</title>",
        "<p>Knee: <span class=\"pass\">2000 orders/s</span> (the step's target; it achieved 1985 orders/s).</p>",
        "<tr><th>SLO</th><td>submit_to_ack.p99 &lt; 10ms (limit 10.000 ms)</td></tr>",
        "<tr><th>error limit</th><td>0.1% (1000 ppm)</td></tr>",
        "<img src=\"capacity_latency.png\"",
        // The first step, whole: target, agents, offered, achieved, five latencies,
        // errors, outcome, within, send lag, link.
        "<tr><td class=\"num\">500</td><td class=\"num\">52</td><td class=\"num\">495</td>\
         <td class=\"num\">495</td><td class=\"num\">0.800</td><td class=\"num\">2.100</td>\
         <td class=\"num\">3.500</td><td class=\"num\">1.600</td><td class=\"num\">4.200</td><td>0%</td>\
         <td><span class=\"pass\">success</span></td><td><span class=\"pass\">yes</span></td>\
         <td class=\"num\">0.040</td><td><a href=\"step-500/index.html\">step-500</a></td></tr>",
        // No first fill at 1000/s: a dash, not 0.
        "<td class=\"num\">990.5</td><td class=\"num\">0.850</td><td class=\"num\">2.600</td>\
         <td class=\"num\">4.100</td><td class=\"num\">–</td><td class=\"num\">–</td>\
         <td>0.03%<ul><li>submit Unavailable: 3</li></ul></td>",
        // The knee's row is marked; its errors, most frequent first, three named.
        "<tr class=\"knee\"><td class=\"num\">2000</td>",
        "<td>0.09%<ul><li>submit DeadlineExceeded: 9</li><li>submit Unavailable: 2</li>\
         <li>cancel &lt;timed out&gt;: 1</li><li>and 1 more kind</li></ul></td>",
        "<td>0.4%</td><td><span class=\"fail\">slo_violated</span></td>\
         <td><span class=\"fail\">no</span>: submit_to_ack p99 23.4 ms &gt; limit 10 ms &amp; rising</td>",
        "<a href=\"step-1000/index.html\">",
        "<a href=\"step-2000/index.html\">",
        "<a href=\"step-4000/index.html\">",
        "<h2>Notes</h2>",
        "<li>the load generator lagged at 4000/s: send lag p99 12 ms &gt; 1 ms &lt;check the host&gt;</li>",
    ] {
        assert!(html.contains(needle), "index.html lacks {needle:?}");
    }
    assert!(!html.contains("<check the host>") && !html.contains("<timed out>"), "unescaped text on the page");
    assert!(!html.contains("http"), "the page must not fetch anything");
}

#[test]
fn rendering_twice_gives_the_same_bytes() {
    let (_tmp, dir) = search(&capacity());
    let first = render_capacity(&dir).expect("renders");
    let bytes: Vec<Vec<u8>> = first.files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let again = render_capacity(&dir).expect("renders again");
    assert_eq!(first, again);
    for (f, b) in again.files.iter().zip(&bytes) {
        assert!(std::fs::read(f).unwrap() == *b, "{} differs on the second rendering", f.display());
    }
    let (_other, other) = search(&capacity());
    let elsewhere = render_capacity(&other).expect("renders elsewhere");
    for (f, b) in elsewhere.files.iter().zip(&bytes) {
        assert!(std::fs::read(f).unwrap() == *b, "{} differs in another directory", f.display());
    }
}

#[test]
fn without_a_knee_the_page_says_so_and_the_plot_has_no_knee_line() {
    let mut c = capacity();
    c["knee_orders_per_s"] = Value::Null;
    let (_tmp, dir) = search(&c);
    render_capacity(&dir).expect("renders");
    assert!(page(&dir).contains("no step was within the SLO and the error limit"));
    assert!(!page(&dir).contains("class=\"knee\""));
    let svg = std::fs::read_to_string(dir.join("capacity_latency.svg")).unwrap();
    assert!(!svg.contains("knee"), "no knee line without a knee");
    assert!(svg.contains("submit_to_ack.p99 &lt; 10ms"), "the SLO line stays");
}

#[test]
fn a_knee_without_its_step_and_a_missing_step_page_are_noted() {
    let mut c = capacity();
    c["knee_orders_per_s"] = json!(3000);
    let (_tmp, dir) = search(&c);
    std::fs::remove_file(dir.join("step-4000/index.html")).unwrap();
    let rendered = render_capacity(&dir).expect("renders");
    assert_eq!(
        rendered.notes,
        [
            "capacity.json names the knee 3000 orders/s, but no step has that target.",
            "step-4000/index.html is not there: the step's link leads nowhere.",
        ]
    );
    let html = page(&dir);
    assert!(html.contains("<li class=\"note\">step-4000/index.html is not there"), "notes on the page");
    assert!(!std::fs::read_to_string(dir.join("capacity_latency.svg")).unwrap().contains("knee"));
}

#[test]
fn without_any_sample_the_page_has_a_note_and_no_plot() {
    let mut c = capacity();
    for s in c["steps"].as_array_mut().unwrap() {
        s["stages"] = json!({"submit_to_ack": {"count": 0}, "submit_to_first_fill": {}});
    }
    let (_tmp, dir) = search(&c);
    let rendered = render_capacity(&dir).expect("renders without samples");
    assert_eq!(rendered.files, [dir.join("index.html")]);
    assert_eq!(rendered.notes, ["No step has submit_to_ack samples: no latency against throughput plot."]);
    assert!(!dir.join("capacity_latency.png").exists() && !dir.join("capacity_latency.svg").exists());
    let html = page(&dir);
    assert!(html.contains("Latency against throughput, per step: not drawn (see the notes)."), "{html}");
    assert!(html.contains("<li class=\"note\">No step has submit_to_ack samples"), "{html}");
    assert!(!html.contains("<img"), "{html}");
}

#[test]
fn only_scenario_mode_steps_target_and_achieved_are_required() {
    let c = json!({"scenario": "bare", "mode": "real", "steps": [{"target_per_s": 100, "achieved_per_s": 80}]});
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "capacity.json", &c.to_string());
    let rendered = render_capacity(tmp.path()).expect("renders a bare capacity.json");
    assert_eq!(rendered.notes.len(), 2, "no samples, no step page: {:?}", rendered.notes);
    let html = page(tmp.path());
    assert!(html.contains("<tr><th>seed</th><td>(not recorded)</td></tr>"), "{html}");
    assert!(html.contains("<a href=\"step-100/index.html\">step-100</a>"), "the run directory by default");
}

#[test]
fn a_missing_or_malformed_capacity_json_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("capacity.json");
    let e = render_capacity(tmp.path()).expect_err("no capacity.json").to_string();
    assert!(e.starts_with(&format!("{}: ", path.display())), "{e}");

    write(tmp.path(), "capacity.json", "{\"scenario\": ");
    let e = render_capacity(tmp.path()).expect_err("truncated").to_string();
    assert!(e.starts_with(&format!("{}: ", path.display())) && e.contains("EOF"), "{e}");

    let mut c = capacity();
    c["steps"][2].as_object_mut().unwrap().remove("achieved_per_s");
    write(tmp.path(), "capacity.json", &c.to_string());
    let e = render_capacity(tmp.path()).expect_err("a step without achieved_per_s").to_string();
    assert!(e.starts_with(&format!("{}: ", path.display())) && e.contains("missing field `achieved_per_s`"), "{e}");
    assert!(!tmp.path().join("index.html").exists(), "nothing written from a malformed file");
}
