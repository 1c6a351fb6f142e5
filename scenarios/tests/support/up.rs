//! `fafnir up` (the real binary) as a process of a test: started with the
//! test's arguments, waited for until every service says SERVING, killed
//! when dropped. Shared by the test binaries that include it with
//! `#[path = "support/up.rs"] mod up;`.
#![allow(clippy::disallowed_methods, dead_code)] // a test of processes reads the wall clock

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `fafnir up`, killed on drop.
pub struct Up {
    child: Child,
    log: PathBuf,
}

impl Up {
    /// Starts `fafnir up <args>` (logs at info into a file of its own) and
    /// waits until it says it is up and ready, at most `within`.
    pub fn start(name: &str, args: &[&str], within: Duration) -> Up {
        let log = std::env::temp_dir().join(format!("fafnir-{name}-{}.log", std::process::id()));
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_fafnir"))
            .arg("up")
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("start fafnir up");
        let mut up = Up { child, log };
        let deadline = Instant::now() + within;
        while !up.log_text().contains("fafnir is up and ready") {
            let exited = up.child.try_wait().ok().flatten();
            assert!(exited.is_none(), "fafnir up exited ({exited:?}):\n{}", up.log_text());
            assert!(Instant::now() < deadline, "fafnir up not ready after {within:?}:\n{}", up.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        up
    }

    /// What it has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first of `n` consecutive free ports of 127.0.0.1.
pub fn free_port_block(n: u16) -> u16 {
    loop {
        let base = fafnir_scenarios::real::free_ports(1)[0];
        if base < 60_000 && (base..base + n).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
}
