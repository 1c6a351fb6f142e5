//! The GraphQL API end to end against the real platform, over HTTP and
//! WebSocket, with a client that is not the server's own: Python's
//! `requests` and `websockets` speaking graphql-transport-ws
//! (`tests/graphql/e2e.py`) against `fafnir up` (the real binary, which
//! serves the GraphQL API beside the gateway). Two users trade through it,
//! the subscriptions deliver the fills, a reconnect after the last cursor
//! replays what was missed, balances come out exact, and hostile requests
//! are refused and change nothing. ci/test installs the Python packages.
#![cfg(not(madsim))]
// A test of processes reads the wall clock and sleeps its own thread.
#![allow(clippy::disallowed_methods)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "graphql-test-secret-0123456789abcdefghij";
const E2E: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/graphql/e2e.py");

struct Up(Child, std::path::PathBuf);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// 6 consecutive free ports (gateway, auth, market, orders, portfolio,
/// engine-0) and the one after them (GraphQL).
fn ports() -> (u16, u16) {
    loop {
        let base = fafnir_scenarios::real::free_ports(1)[0];
        if base < 60_000 && (base..base + 7).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return (base, base + 6);
        }
    }
}

#[test]
fn two_users_trade_through_graphql_and_hostile_requests_change_nothing() {
    let python = "python3";
    let have = Command::new(python).args(["-c", "import requests, websockets"]).status();
    assert!(
        have.is_ok_and(|s| s.success()),
        "python3 needs requests and websockets: pip install requests websockets (ci/test does)"
    );
    let (base, graphql) = ports();
    let namespace = format!("graphql{}", std::process::id());
    let log = std::env::temp_dir().join(format!("fafnir-graphql-{}.log", std::process::id()));
    let out = std::fs::File::create(&log).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_fafnir"))
        .args(["up", "--namespace", &namespace, "--jwt-secret", SECRET, "--base-port", &base.to_string()])
        .args(["--graphql-addr", &format!("127.0.0.1:{graphql}")])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("start fafnir up");
    let mut up = Up(child, log);
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = |up: &Up| std::fs::read_to_string(&up.1).unwrap_or_default();
    while !text(&up).contains("fafnir is up and ready") {
        let exited = up.0.try_wait().ok().flatten();
        assert!(exited.is_none(), "fafnir up exited ({exited:?}):\n{}", text(&up));
        assert!(Instant::now() < deadline, "fafnir up not ready after 30 s:\n{}", text(&up));
        std::thread::sleep(Duration::from_millis(50));
    }
    let run =
        Command::new(python).arg(E2E).arg(format!("http://127.0.0.1:{graphql}/graphql")).output().expect("run e2e.py");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "e2e.py failed:\n{stdout}\n{stderr}\nplatform log:\n{}", text(&up));
    assert!(stdout.contains("graphql e2e: passed"), "{stdout}");
    assert!(!text(&up).contains("panicked"), "a panic in the platform:\n{}", text(&up));
}
