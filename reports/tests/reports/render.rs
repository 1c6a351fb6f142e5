use fafnir_reports::render_run;

use crate::fixture::Options;
use crate::fixture_run;

const PLOTS: [&str; 5] = ["spectrum", "latency_over_time", "throughput", "prices", "metrics_over_time"];

#[test]
fn renders_every_plot_and_the_page() {
    let (_tmp, dir) = fixture_run(&Options::default());
    let rendered = render_run(&dir).expect("renders");
    assert_eq!(rendered.index, dir.join("index.html"));
    for name in PLOTS {
        for ext in ["png", "svg"] {
            let path = dir.join(format!("{name}.{ext}"));
            assert!(rendered.files.contains(&path), "{} not listed", path.display());
            let len = std::fs::metadata(&path).expect("plot written").len();
            assert!(len > 10_000, "{} is only {len} bytes", path.display());
        }
    }
    assert!(std::fs::read(dir.join("spectrum.png")).unwrap().starts_with(b"\x89PNG"));
    assert_eq!(rendered.files.last(), Some(&rendered.index));
    assert_eq!(rendered.notes, vec!["Stage fill_to_settled has no samples: left out of the plots.".to_string()]);
}

#[test]
fn the_page_holds_every_table_escaped() {
    let (_tmp, dir) = fixture_run(&Options::default());
    render_run(&dir).expect("renders");
    let html = std::fs::read_to_string(dir.join("index.html")).expect("page");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let ack_p99_ms = format!("{:.3}", summary["stages"]["submit_to_ack"]["p99_ns"].as_u64().unwrap() as f64 / 1e6);
    for needle in [
        "<title>fafnir run: steady_with_kill</title>",
        "<h2>Counts</h2>",
        "<tr><td>submitted</td>",
        "<h2>Latency per stage (ms)</h2>",
        &format!("<td class=\"num\">{ack_p99_ms}</td>"),
        "<td>no_overfill</td><td><span class=\"fail\">FAILED</span></td><td class=\"num\">2</td>",
        "order 17: filled 12 &gt; qty 10 &lt;overfill&gt;",
        "order 23: filled 7 &gt; qty 5 &amp; closed",
        "submit_to_ack.max &lt; 50ms",
        "<td>partition engine-0 -&gt; broker</td>",
        "<tr><th>seed</th><td>42</td></tr>",
        "<tr><th>trace hash</th><td>a1b2c3d4e5f60718</td></tr>",
        "<tr><th>config hash</th><td>1f2e3d4c5b6a7988</td></tr>",
        "[platform]\nengines = 2\nbroker = &quot;nats&quot;",
        "--out &quot;runs/a&amp;b&quot;</pre>",
        "<h2>Nemesis</h2>",
        "<tr><th>future_field</th>",
        "<img src=\"spectrum.png\"",
        "<img src=\"prices.png\"",
    ] {
        assert!(html.contains(needle), "index.html lacks {needle:?}");
    }
    assert!(!html.contains("<overfill>"), "unescaped text on the page");
    assert!(!html.contains("http"), "the page must not fetch anything");
}

#[test]
fn rendering_is_deterministic() {
    let (_a, dir_a) = fixture_run(&Options::default());
    let (_b, dir_b) = fixture_run(&Options::default());
    let (ra, rb) = (render_run(&dir_a).unwrap(), render_run(&dir_b).unwrap());
    assert_eq!(ra.files.len(), rb.files.len());
    for (fa, fb) in ra.files.iter().zip(&rb.files) {
        assert_eq!(fa.file_name(), fb.file_name());
        assert!(std::fs::read(fa).unwrap() == std::fs::read(fb).unwrap(), "{} differs", fa.display());
    }
}

#[test]
fn without_timeline_or_histograms_draws_what_is_there() {
    let options = Options { with_timeline: false, with_hdr: false, with_metrics: false, ..Options::default() };
    let (_tmp, dir) = fixture_run(&options);
    let rendered = render_run(&dir).expect("renders without timeline.json, .hdr files and metrics.jsonl");
    assert!(!dir.join("metrics_over_time.png").exists());
    assert!(dir.join("spectrum.png").exists(), "spectrum from the summary's quantiles");
    assert!(dir.join("throughput.png").exists(), "throughput from accepted_per_s");
    assert!(!dir.join("latency_over_time.png").exists());
    assert!(!dir.join("prices.png").exists());
    let notes = rendered.notes.join("\n");
    assert!(notes.contains("timeline.json is missing"), "{notes}");
    assert!(notes.contains("submit_to_ack.hdr is missing"), "{notes}");
    assert!(notes.contains("metrics.jsonl is missing"), "{notes}");
    let html = std::fs::read_to_string(&rendered.index).unwrap();
    assert!(html.contains("Trade prices and volume per symbol: not drawn"), "page says what is missing");
    assert!(html.contains("timeline.json is missing"));
}

#[test]
fn an_empty_timeline_is_noted_not_fatal() {
    let (_tmp, dir) = fixture_run(&Options::default());
    crate::write(&dir, "timeline.json", r#"{"bucket_ms": 500}"#);
    let rendered = render_run(&dir).expect("renders");
    assert!(rendered.notes.iter().any(|n| n.contains("no buckets")), "{:?}", rendered.notes);
    assert!(rendered.notes.iter().any(|n| n.contains("no trades")), "{:?}", rendered.notes);
    assert!(dir.join("spectrum.svg").exists());
}

#[test]
fn a_trade_before_the_load_is_drawn() {
    let (_tmp, dir) = fixture_run(&Options::default());
    let path = dir.join("timeline.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["trades"]["EARLY"] =
        serde_json::json!([{"t_ms": -300, "price_cents": 500, "qty": 3}, {"t_ms": 100, "price_cents": 501, "qty": 1}]);
    std::fs::write(&path, v.to_string()).unwrap();
    render_run(&dir).expect("renders a trade stamped before the load");
    let svg = std::fs::read_to_string(dir.join("prices.svg")).unwrap();
    assert!(svg.contains("EARLY"), "the symbol has a panel");
}
