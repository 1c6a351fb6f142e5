//! `index.html`: one self-contained page (inline CSS, no script, nothing
//! fetched) with the plots next to it and every table of the run.

use std::fmt::Write as _;

use serde_json::Value;

use crate::input::{ordered_counts, Run};

/// A plot on the page: its name (files `<name>.png`, `<name>.svg`) and caption,
/// or why it is not there.
pub struct PlotEntry {
    pub name: &'static str,
    pub caption: &'static str,
    pub drawn: bool,
}

/// Text made safe for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Nanoseconds as milliseconds with three decimals.
pub fn ms(ns: u64) -> String {
    format!("{:.3}", ns as f64 / 1e6)
}

const STYLE: &str = "
body { font-family: 'DejaVu Sans', Verdana, sans-serif; margin: 2em auto; max-width: 1250px; color: #222; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f6f6; border: 1px solid #ddd; padding: 0.7em; overflow-x: auto; }
img { max-width: 100%; border: 1px solid #ddd; }
figure { margin: 1em 0; }
.pass { color: #1a7f37; font-weight: bold; }
.fail { color: #c62828; font-weight: bold; }
.note { color: #8a6d00; }
tr.knee td { background: #eaf5ec; }
";

/// The whole page.
pub fn page(run: &Run, plots: &[PlotEntry], notes: &[String]) -> String {
    let s = &run.summary;
    let mut h = head(&format!("fafnir run: {}", s.scenario));
    let verdict_class = if s.outcome == "success" { "pass" } else { "fail" };
    let _ = writeln!(h, "<p>Outcome: <span class=\"{verdict_class}\">{}</span></p>", escape(&s.outcome));
    facts(&mut h, run);
    if !notes.is_empty() {
        h.push_str("<h2>Notes</h2>\n<ul>\n");
        for n in notes {
            let _ = writeln!(h, "<li class=\"note\">{}</li>", escape(n));
        }
        h.push_str("</ul>\n");
    }
    plots_section(&mut h, plots);
    counts(&mut h, run);
    stages(&mut h, run);
    slos(&mut h, run);
    checker(&mut h, run);
    faults(&mut h, run);
    extras(&mut h, run);
    h.push_str("</body>\n</html>\n");
    h
}

/// A page's start, up to and including its `<h1>`; the caller closes `body` and `html`.
pub fn head(title: &str) -> String {
    let mut h = String::new();
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    let _ = writeln!(h, "<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>", escape(title));
    let _ = writeln!(h, "<h1>{}</h1>", escape(title));
    h
}

fn facts(h: &mut String, run: &Run) {
    let s = &run.summary;
    h.push_str("<h2>Run</h2>\n<table>\n");
    let rows = [
        ("scenario", s.scenario.clone()),
        ("mode", s.mode.clone()),
        ("seed", s.seed.to_string()),
        ("config hash", s.config_hash.clone()),
        ("trace hash", s.trace_hash.clone()),
        ("duration", format!("{} ms", s.duration_ms)),
        ("agents", s.agents.to_string()),
    ];
    for (k, v) in rows {
        let _ = writeln!(h, "<tr><th>{k}</th><td>{}</td></tr>", escape(&v));
    }
    h.push_str("</table>\n<h3>Rerun</h3>\n");
    let rerun = if s.rerun.is_empty() { "(not recorded)" } else { s.rerun.as_str() };
    let _ = writeln!(h, "<pre>{}</pre>", escape(rerun));
}

pub fn plots_section(h: &mut String, plots: &[PlotEntry]) {
    h.push_str("<h2>Plots</h2>\n");
    for p in plots {
        if p.drawn {
            let _ = writeln!(
                h,
                "<figure><a href=\"{n}.svg\"><img src=\"{n}.png\" alt=\"{c}\"></a><figcaption>{c} \
                 (<a href=\"{n}.png\">PNG</a>, <a href=\"{n}.svg\">SVG</a>)</figcaption></figure>",
                n = p.name,
                c = escape(p.caption)
            );
        } else {
            let _ = writeln!(h, "<p class=\"note\">{}: not drawn (see the notes).</p>", escape(p.caption));
        }
    }
}

fn counts(h: &mut String, run: &Run) {
    h.push_str("<h2>Counts</h2>\n<table>\n<tr><th>count</th><th>value</th></tr>\n");
    for (k, v) in ordered_counts(&run.summary.counts) {
        let v = match v {
            Value::Number(n) => n.to_string(),
            other => other.to_string(),
        };
        let _ = writeln!(h, "<tr><td>{}</td><td class=\"num\">{}</td></tr>", escape(k), escape(&v));
    }
    h.push_str("</table>\n");
}

fn stages(h: &mut String, run: &Run) {
    h.push_str("<h2>Latency per stage (ms)</h2>\n<table>\n");
    h.push_str("<tr><th>stage</th><th>count</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>\n");
    for name in crate::input::ordered(run.summary.stages.keys().cloned()) {
        let st = &run.summary.stages[&name];
        let _ = write!(h, "<tr><td>{}</td><td class=\"num\">{}</td>", escape(&name), st.count);
        for ns in [st.p50_ns, st.p90_ns, st.p99_ns, st.p999_ns, st.max_ns] {
            let _ = write!(h, "<td class=\"num\">{}</td>", ms(ns));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");
}

fn pass(passed: bool) -> &'static str {
    if passed {
        "<span class=\"pass\">passed</span>"
    } else {
        "<span class=\"fail\">FAILED</span>"
    }
}

fn slos(h: &mut String, run: &Run) {
    h.push_str("<h2>SLOs</h2>\n");
    if run.summary.slos.is_empty() {
        h.push_str("<p>None set.</p>\n");
        return;
    }
    h.push_str("<table>\n<tr><th>SLO</th><th>stage</th><th>limit (ms)</th><th>value (ms)</th><th>result</th></tr>\n");
    for r in &run.summary.slos {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            escape(&r.slo.text),
            escape(&r.slo.stage),
            ms(r.slo.limit_ns),
            ms(r.value_ns),
            pass(r.passed)
        );
    }
    h.push_str("</table>\n");
}

fn checker(h: &mut String, run: &Run) {
    h.push_str("<h2>Checker</h2>\n");
    let Some(v) = &run.summary.checker else {
        h.push_str("<p class=\"note\">No checker verdict in summary.json.</p>\n");
        return;
    };
    let _ = writeln!(h, "<p>Verdict: {}</p>", pass(v.passed));
    h.push_str("<table>\n<tr><th>check</th><th>result</th><th>violations</th><th>first violations</th></tr>\n");
    for c in &v.checks {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>",
            escape(&c.name),
            pass(c.passed),
            c.violations
        );
        if !c.first.is_empty() {
            h.push_str("<ul>");
            for f in &c.first {
                let _ = write!(h, "<li>{}</li>", escape(f));
            }
            h.push_str("</ul>");
        }
        h.push_str("</td></tr>\n");
    }
    h.push_str("</table>\n");
}

fn faults(h: &mut String, run: &Run) {
    h.push_str("<h2>Faults</h2>\n");
    let windows = run.fault_windows();
    if windows.is_empty() {
        h.push_str("<p>No faults.</p>\n");
        return;
    }
    h.push_str("<table>\n<tr><th>start (ms)</th><th>end (ms)</th><th>kind</th><th>fault</th></tr>\n");
    for w in &windows {
        let end = w.end_ms.map_or("end of run".to_string(), |e| e.to_string());
        let _ = writeln!(
            h,
            "<tr><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            w.start_ms,
            escape(&end),
            escape(&w.kind),
            escape(&w.label)
        );
    }
    h.push_str("</table>\n");
}

/// The nemesis, any summary field this crate does not know, and the effective config.
fn extras(h: &mut String, run: &Run) {
    let s = &run.summary;
    if let Some(n) = &s.nemesis {
        h.push_str("<h2>Nemesis</h2>\n");
        let _ = writeln!(h, "<pre>{}</pre>", escape(&pretty(n)));
    }
    if !s.other.is_empty() {
        h.push_str("<h2>Other summary fields</h2>\n<table>\n");
        for (k, v) in &s.other {
            let _ = writeln!(h, "<tr><th>{}</th><td><pre>{}</pre></td></tr>", escape(k), escape(&pretty(v)));
        }
        h.push_str("</table>\n");
    }
    h.push_str("<h2>Effective config</h2>\n");
    if s.effective_config.is_empty() {
        h.push_str("<p class=\"note\">Not recorded in summary.json.</p>\n");
    } else {
        let _ = writeln!(h, "<pre>{}</pre>", escape(&s.effective_config));
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).expect("a JSON value serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(escape("<a href=\"x\">&'</a>"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;");
    }
}
