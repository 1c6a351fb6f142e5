//! The platform on a NATS cluster, as the Kubernetes manifests run it: three
//! nats-servers with JetStream, every stream kept on all three
//! (`--stream-replicas 3`), two engine shards. `fafnir up` (the real binary)
//! must come up on a fresh namespace, where every service creates the same
//! replicated streams at once (nats-server 2.9 leaves some of those requests
//! unanswered; each is made again), and a run driven through a different
//! node of the cluster than the platform's must pass every check. Then one
//! node is killed and the platform must go on taking orders on the two left.
#![cfg(not(madsim))]
// A test of processes reads the wall clock and sleeps its own thread.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fafnir_platform::bus::EventBus as _;
use fafnir_platform::config::PlatformConfig;
use fafnir_platform::proto::common::{Role, Side};
use fafnir_scenarios::client::{Client, OrderSpec};
use fafnir_scenarios::real_run::{self, Target};
use fafnir_scenarios::servers::Server;

#[path = "support/up.rs"]
mod up;
use up::{free_port_block, Up};

const SECRET: &str = "nats-cluster-test-secret-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_runs_on_a_nats_cluster_with_replicated_streams() {
    let mut cluster = Server::nats_cluster(3).expect("a 3-node NATS cluster");
    let redis = std::env::var("FAFNIR_TEST_REDIS").unwrap_or_else(|_| "127.0.0.1:6379".into());
    let namespace = format!("cluster{}", std::process::id());
    let base_port = free_port_block(7);
    let base = base_port.to_string();
    let nats = cluster[0].addr();
    // The cluster elects its JetStream leader within seconds of starting:
    // the services' first requests may meet it still electing.
    let args = ["--nats", &nats, "--redis", &redis, "--namespace", &namespace, "--jwt-secret", SECRET];
    let more = ["--base-port", &base, "--stream-replicas", "3", "--engine-shards", "2", "--graphql-addr", "off"];
    let _up = Up::start("nats-cluster", &[&args[..], &more[..]].concat(), Duration::from_secs(60));
    let gateway: SocketAddr = ([127, 0, 0, 1], base_port).into();

    // Drive it through the second node: the checker reads every stream there.
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("baseline.toml");
    let (scn, config_hash, rerun) =
        fafnir_scenarios::run::load(&file, None, Some(Duration::from_secs(4))).expect("scenario");
    let target = Target {
        gateway: Some(gateway),
        nats: cluster[1].addr(),
        redis: redis.clone(),
        namespace: Some(namespace.clone()),
    };
    let run = real_run::run(&scn, scn.seed, target, config_hash, rerun, None).await.expect("the run");
    let failed: Vec<_> = run.summary.checker.checks.iter().filter(|c| !c.passed).collect();
    assert!(failed.is_empty(), "checks failed: {failed:#?}");
    assert!(run.summary.counts.accepted > 50, "the load traded: {:?}", run.summary.counts);

    // Every stream is on all three nodes: with one killed, the two left
    // are a majority, and the platform goes on storing what it accepts.
    cluster[2].kill();
    let bus = fafnir_platform::bus::nats::NatsBus::connect(&cluster[1].addr()).await.expect("NATS");
    let names = PlatformConfig { namespace: namespace.clone(), ..PlatformConfig::local_default() }.names();
    let before = bus.last_seq(&names.orders_stream()).await.expect("ORDERS' last sequence");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut attempt = 0;
    let stored = loop {
        attempt += 1;
        let placed = async {
            let c = Client::register_or_login(gateway, "survivor", "survivor-password", Role::Trader).await?;
            c.deposit_cash(1_000_000, "survivor-cash").await?;
            c.submit(&OrderSpec::limit(&format!("survivor-{attempt}"), "ACME", Side::Buy, 100, 1)).await
        }
        .await;
        let now = bus.last_seq(&names.orders_stream()).await.unwrap_or(before);
        if placed.is_ok() && now > before {
            break now;
        }
        assert!(Instant::now() < deadline, "no order accepted with one node of three down: {placed:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("ORDERS went from {before} to {stored} with one node of three down");
}
