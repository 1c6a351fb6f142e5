//! Integration tests of fafnir-reports, one binary: render a made-up run
//! directory ([`fixture`]), compare two, read malformed ones, and render a
//! capacity search ([`capacity`]).

mod capacity;
mod compare;
mod errors;
mod fixture;
mod render;

use std::path::Path;

/// A fresh temporary directory holding the fixture run made with `o`, at `<tmp>/run`.
pub fn fixture_run(o: &fixture::Options) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("run");
    fixture::write_run(&dir, o);
    (tmp, dir)
}

/// Writes `text` to `dir/name`.
pub fn write(dir: &Path, name: &str, text: &str) {
    std::fs::create_dir_all(dir).expect("create dir");
    std::fs::write(dir.join(name), text).expect("write");
}
