//! Renders a run directory, or compares two:
//! `cargo run -p fafnir-reports --example render -- runs/x` writes `runs/x/index.html`;
//! `cargo run -p fafnir-reports --example render -- runs/a runs/b out` prints the comparison.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    match args.as_slice() {
        [dir] => {
            let rendered = fafnir_reports::render_run(dir)?;
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
