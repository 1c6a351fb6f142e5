//! The health protocol against the real servers, seen by clients that are
//! not the platform's own: Python's grpcio (`grpc_health_probe.py`, a gRPC
//! implementation other than tonic, with the messages encoded by hand from
//! the protocol's definition) on a running platform, on a service whose
//! rebuild is held, and on `fafnir up` (the real binary), which says it is
//! ready only once every service says SERVING. And a graceful stop is not
//! held up by an open Watch.
// Tests may read the wall clock and block their own thread.
#![allow(clippy::disallowed_methods)]

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fafnir_platform::services::health::proto::HealthCheckRequest;
use fafnir_platform::services::health::{self, ServingStatus};
use fafnir_platform::services::launch::{self, Instance};

use crate::flows::eventually;
use crate::real::{test_config, RealPlatform};
use crate::Platform as _;

const SECRET: &str = "a-test-secret-of-at-least-32-bytes";

const PROBE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/platform/grpc_health_probe.py");

/// A Python 3 that has grpcio: the one on the PATH, else the system's
/// (Debian's python3-grpcio installs for /usr/bin/python3; ci/test installs it).
fn python_with_grpcio() -> &'static str {
    for python in ["python3", "/usr/bin/python3"] {
        let imports = Command::new(python).args(["-c", "import grpc"]).stderr(Stdio::null()).status();
        if imports.is_ok_and(|s| s.success()) {
            return python;
        }
    }
    panic!("no python3 with grpcio: install it with apt-get install python3-grpcio (ci/test does)");
}

/// What the probe prints for `services` of the server at `addr`, one line each, then the watch's line.
async fn probe(addr: SocketAddr, services: &[&str]) -> Vec<String> {
    let args: Vec<String> = std::iter::once(addr.to_string()).chain(services.iter().map(|s| s.to_string())).collect();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python_with_grpcio()).arg(PROBE).args(&args).output().expect("run the probe")
    })
    .await
    .expect("probe ran");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the probe failed: {stderr}");
    String::from_utf8(out.stdout).expect("utf-8").lines().map(String::from).collect()
}

/// The probe's lines for a service that says `status` and knows nothing else.
fn expected(kind_name: &str, status: &str) -> Vec<String> {
    vec![
        format!("\"\" {status}"),
        "fafnir.nothing.Here NOT_FOUND".to_string(),
        format!("{kind_name} {status}"),
        format!("watch {kind_name} {status}"),
    ]
}

#[tokio::test]
async fn grpcio_sees_every_service_serving_and_a_held_one_not() {
    let p = RealPlatform::start("grpcio").await;
    for Instance { name, kind, addr, .. } in launch::instances(p.cfg()) {
        let lines = probe(addr, &["", "fafnir.nothing.Here", kind.grpc_name()]).await;
        assert_eq!(lines, expected(kind.grpc_name(), "SERVING"), "{name} on {addr}");
    }
    p.kill("portfolio").await;
    p.start_held("portfolio").await;
    let addr = p.cfg().addrs.portfolio;
    let name = "fafnir.portfolio.Portfolio";
    eventually("the held portfolio to listen", || async {
        let mut client = health::client(addr, Duration::from_secs(1));
        health::check(&mut client, name).await.ok()
    })
    .await;
    assert_eq!(probe(addr, &["", "fafnir.nothing.Here", name]).await, expected(name, "NOT_SERVING"));
    p.release("portfolio").await;
    launch::wait_until_serving(p.deps(), Duration::from_secs(30)).await.expect("serving again");
    assert_eq!(probe(addr, &["", "fafnir.nothing.Here", name]).await, expected(name, "SERVING"));
    p.cleanup().await;
}

/// A graceful stop says NOT_SERVING to the Watch streams open on the
/// service and ends them, instead of waiting for them until its grace is
/// over (a stop waits for every open call). Auth: a service with no
/// background task, whose stop is the gRPC server's graceful end.
#[tokio::test]
async fn a_graceful_stop_ends_open_watches_and_is_not_held_up_by_them() {
    let p = RealPlatform::start("graceful").await;
    let auth = p.take("auth");
    let mut client = health::client(p.cfg().addrs.auth, Duration::from_secs(30));
    let request = HealthCheckRequest { service: "fafnir.auth.Auth".into() };
    let mut watch = client.watch(request).await.expect("watch").into_inner();
    assert_eq!(watch.message().await.expect("a status").expect("goes on").status(), ServingStatus::Serving);
    let started = Instant::now();
    auth.stop(Duration::from_secs(20)).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "the stop took {took:?}: it waited for the watch");
    let last = fafnir_platform::time::timeout(Duration::from_secs(5), watch.message()).await.expect("the watch ends");
    assert_eq!(last.expect("said").expect("one more").status(), ServingStatus::NotServing);
    let end = fafnir_platform::time::timeout(Duration::from_secs(5), watch.message()).await.expect("the watch ends");
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
    p.cleanup().await;
}

/// Consecutive free ports for `fafnir up`'s services.
fn free_port_block(count: usize) -> u16 {
    for _ in 0..100 {
        let ports = fafnir_scenarios::real::free_ports(count);
        if ports.windows(2).all(|w| w[1] == w[0] + 1) {
            return ports[0];
        }
    }
    panic!("no {count} consecutive free ports");
}

/// `fafnir up` prints that it is ready once every service says SERVING,
/// and then grpcio finds each of them so.
#[tokio::test]
async fn fafnir_up_says_it_is_ready_when_every_service_says_serving() {
    // What `fafnir up` runs: the default deployment, under the test's namespace and ports.
    let mut cfg = fafnir_platform::config::PlatformConfig::local_default();
    cfg.namespace = test_config("up-ready").namespace;
    cfg.jwt_secret = SECRET.into();
    let shards = cfg.engine_shards.len();
    let base_port = free_port_block(5 + shards);
    cfg.addrs = fafnir_platform::config::ServiceAddrs::local([127, 0, 0, 1].into(), base_port, shards);
    let mut child = Command::new(env!("CARGO_BIN_EXE_fafnir"))
        .args(["up", "--namespace", &cfg.namespace, "--base-port", &base_port.to_string(), "--graphql-addr", "off"])
        .args(["--jwt-secret", SECRET, "--metrics-addr", "off"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start fafnir up");
    let stdout = child.stdout.take().expect("stdout");
    let (lines, said) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.starts_with("fafnir is up and ready")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match said.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(e) => {
                let _ = child.kill();
                panic!("fafnir up did not say it is ready ({e}): {seen:?}");
            }
        }
    }
    let ready = said.recv_timeout(Duration::from_secs(5)).expect("the readiness line");
    assert!(ready.contains(&format!("all {} services", 5 + shards)) && ready.contains("SERVING"), "{ready}");
    for Instance { name, kind, addr, .. } in launch::instances(&cfg) {
        let lines = probe(addr, &["", "fafnir.nothing.Here", kind.grpc_name()]).await;
        assert_eq!(lines, expected(kind.grpc_name(), "SERVING"), "{name} on {addr}");
    }
    let _ = child.kill();
    let _ = child.wait();
    let (deps, nats) = fafnir_scenarios::real::connect(cfg).await.expect("real servers needed");
    let prefix = deps.cfg.names().orders_stream().trim_end_matches("ORDERS").to_string();
    nats.delete_streams_with_prefix(&prefix).await.expect("delete test streams");
    fafnir_platform::kv::wipe_prefix(deps.kv.as_ref(), &deps.cfg.names().key_prefix()).await.expect("wipe keys");
}
