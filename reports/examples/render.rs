//! Renders a run directory or a capacity search, or compares two runs:
//! `cargo run -p fafnir-reports --example render -- runs/x` writes `runs/x/index.html`
//! (with `render_capacity` when `runs/x/capacity.json` is there);
//! `cargo run -p fafnir-reports --example render -- runs/a runs/b out` prints the comparison.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    match args.as_slice() {
        [dir] => {
            let rendered = if dir.join("capacity.json").exists() {
                fafnir_reports::render_capacity(dir)?
            } else {
                fafnir_reports::render_run(dir)?
            };
            println!("{}", rendered.index.display());
            for note in &rendered.notes {
                println!("  note: {note}");
            }
        }
        [a, b, out] => print!("{}", fafnir_reports::compare(a, b, out)?),
        _ => return Err("usage: render RUN_DIR | render RUN_A RUN_B OUT_DIR".into()),
    }
    Ok(())
}
