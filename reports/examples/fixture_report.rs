//! Writes the test fixture run (and a slower copy) and renders them, to look at:
//! `cargo run -p fafnir-reports --example fixture_report -- /tmp/fixture`
//! gives `/tmp/fixture/a/index.html`, `/tmp/fixture/b/index.html` and
//! `/tmp/fixture/compare/compare_spectrum.png`.

#[path = "../tests/reports/fixture.rs"]
mod fixture;

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "target/fixture_report".to_string()));
    let (a, b) = (out.join("a"), out.join("b"));
    fixture::write_run(&a, &fixture::Options::default());
    fixture::write_run(&b, &fixture::Options { seed: 7, latency_factor: 1.3, ..fixture::Options::default() });
    for dir in [&a, &b] {
        let rendered = fafnir_reports::render_run(dir)?;
        println!("{}", rendered.index.display());
        for note in &rendered.notes {
            println!("  note: {note}");
        }
    }
    print!("{}", fafnir_reports::compare(&a, &b, &out.join("compare"))?);
    Ok(())
}
