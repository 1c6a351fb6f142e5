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

use std::process::Command;
use std::time::Duration;

#[path = "support/up.rs"]
mod up;
use up::{free_port_block, Up};

const SECRET: &str = "graphql-test-secret-0123456789abcdefghij";
const E2E: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/graphql/e2e.py");

#[test]
fn two_users_trade_through_graphql_and_hostile_requests_change_nothing() {
    let python = "python3";
    let have = Command::new(python).args(["-c", "import requests, websockets"]).status();
    assert!(
        have.is_ok_and(|s| s.success()),
        "python3 needs requests and websockets: pip install requests websockets (ci/test does)"
    );
    // The services on 6 ports from `base` (one engine shard), GraphQL on the one after them.
    let base = free_port_block(7);
    let graphql = base + 6;
    let namespace = format!("graphql{}", std::process::id());
    let (base_arg, graphql_arg) = (base.to_string(), format!("127.0.0.1:{graphql}"));
    let args =
        ["--namespace", &namespace, "--jwt-secret", SECRET, "--base-port", &base_arg, "--graphql-addr", &graphql_arg];
    let up = Up::start("graphql", &args, Duration::from_secs(30));
    let run =
        Command::new(python).arg(E2E).arg(format!("http://127.0.0.1:{graphql}/graphql")).output().expect("run e2e.py");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "e2e.py failed:\n{stdout}\n{stderr}\nplatform log:\n{}", up.log_text());
    assert!(stdout.contains("graphql e2e: passed"), "{stdout}");
    assert!(!up.log_text().contains("panicked"), "a panic in the platform:\n{}", up.log_text());
}
