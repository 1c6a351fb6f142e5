use fafnir_reports::{render_run, ReportError};

use crate::fixture::Options;
use crate::{fixture_run, write};

fn message(e: ReportError) -> String {
    e.to_string()
}

#[test]
fn a_missing_field_names_the_file_and_the_field() {
    let (_tmp, dir) = fixture_run(&Options::default());
    let path = dir.join("summary.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("seed");
    std::fs::write(&path, v.to_string()).unwrap();
    let e = message(render_run(&dir).expect_err("no seed"));
    assert!(e.starts_with(&format!("{}: ", path.display())), "{e}");
    assert!(e.contains("missing field `seed`"), "{e}");
}

#[test]
fn bad_json_and_missing_files_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    std::fs::create_dir_all(&dir).unwrap();
    let e = message(render_run(&dir).expect_err("no summary"));
    assert!(e.starts_with(&format!("{}: ", dir.join("summary.json").display())), "{e}");

    write(&dir, "summary.json", "{\"scenario\": ");
    let e = message(render_run(&dir).expect_err("truncated"));
    assert!(e.starts_with(&format!("{}: ", dir.join("summary.json").display())), "{e}");
    assert!(e.contains("EOF"), "{e}");
}

#[test]
fn a_wrong_type_names_the_file() {
    let (_tmp, dir) = fixture_run(&Options::default());
    write(&dir, "timeline.json", r#"{"bucket_ms": "half a second"}"#);
    let e = message(render_run(&dir).expect_err("bucket_ms is a string"));
    assert!(e.starts_with(&format!("{}: ", dir.join("timeline.json").display())), "{e}");
    assert!(e.contains("invalid type"), "{e}");

    write(&dir, "timeline.json", r#"{"bucket_ms": 0}"#);
    let e = message(render_run(&dir).expect_err("zero buckets"));
    assert!(e.contains("timeline.json: bucket_ms must be above 0"), "{e}");
}

#[test]
fn a_corrupt_histogram_names_the_file() {
    let (_tmp, dir) = fixture_run(&Options::default());
    write(&dir, "md_fanout.hdr", "not a histogram");
    let e = message(render_run(&dir).expect_err("corrupt .hdr"));
    assert!(e.starts_with(&format!("{}: not a V2 HdrHistogram", dir.join("md_fanout.hdr").display())), "{e}");
}
