//! The flows against the real nats-server and redis-server. Each test runs its
//! own deployment in this process under its own namespace (streams, subjects,
//! Redis keys) and its own ports, so tests run in parallel, and deletes what
//! it created. A test that cannot reach NATS or Redis fails: it is never
//! silently skipped (`ci/test` starts the servers).
// Tests may read the wall clock to name their namespace uniquely.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fafnir_platform::bus::nats::NatsBus;
use fafnir_platform::bus::{
    AckToken, BusError, ConsumerLag, ConsumerSpec, Delivery, EventBus, PubAck, Publish, StoredMsg, StreamSpec, Tail,
};
use fafnir_platform::config::{PasswordHashing, PlatformConfig, ServiceAddrs};
use fafnir_platform::domain::Instrument;
use fafnir_platform::kv::wipe_prefix;
use fafnir_platform::services::launch::{self, ServiceHandle};
use fafnir_platform::services::{Deps, ServiceKind};
use fafnir_scenarios::servers::Server;

use crate::{flows, Platform};

pub(crate) fn test_config(test: &str) -> PlatformConfig {
    let mut cfg = PlatformConfig::local_default();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    cfg.namespace = format!("t-{test}-{}-{nanos}", std::process::id());
    cfg.instruments = vec![Instrument::new("ACME", 1, 1, 1, 100_000), Instrument::new("GLOBX", 5, 10, 1, 200_000)];
    cfg.engine_shards = vec![vec!["ACME".into()], vec!["GLOBX".into()]];
    let ports = fafnir_scenarios::real::free_ports(7);
    cfg.addrs = ServiceAddrs {
        gateway: ([127, 0, 0, 1], ports[0]).into(),
        auth: ([127, 0, 0, 1], ports[1]).into(),
        market: ([127, 0, 0, 1], ports[2]).into(),
        orders: ([127, 0, 0, 1], ports[3]).into(),
        portfolio: ([127, 0, 0, 1], ports[4]).into(),
        engines: vec![([127, 0, 0, 1], ports[5]).into(), ([127, 0, 0, 1], ports[6]).into()],
    };
    cfg.password_hashing = PasswordHashing::CHEAP;
    cfg.jwt_secret = format!("secret-{test}");
    // Every client of a test calls from 127.0.0.1.
    cfg.peer_rate_limit = fafnir_platform::config::RateLimit { per_second: 10_000, burst: 10_000 };
    cfg
}

pub(crate) struct RealPlatform {
    deps: Deps,
    nats: Arc<NatsBus>,
    services: Arc<Mutex<BTreeMap<String, ServiceHandle>>>,
    /// The instances started with their rebuild held, each with its switch.
    held: Mutex<BTreeMap<String, tokio::sync::watch::Sender<bool>>>,
    /// The platform's own nats-server and redis-server, for flows that
    /// restart them (None: the machine's shared ones).
    private: Option<tokio::sync::Mutex<(Server, Server)>>,
}

fn parse_instance(instance: &str) -> (ServiceKind, usize) {
    match instance.strip_prefix("engine-") {
        Some(shard) => (ServiceKind::Engine, shard.parse().expect("engine shard number")),
        None => (ServiceKind::parse(instance).unwrap_or_else(|| panic!("no service {instance}")), 0),
    }
}

impl RealPlatform {
    pub(crate) async fn start(test: &str) -> RealPlatform {
        RealPlatform::start_with(test_config(test)).await
    }

    pub(crate) async fn start_with(cfg: PlatformConfig) -> RealPlatform {
        let (deps, nats) =
            fafnir_scenarios::real::connect(cfg).await.unwrap_or_else(|e| panic!("real servers needed: {e}"));
        let services = Arc::new(Mutex::new(launch::spawn_all(&deps)));
        let p = RealPlatform { deps, nats, services, held: Mutex::default(), private: None };
        p.wait_serving().await;
        p
    }

    /// A platform on a nats-server and a redis-server of its own, which the flow may restart.
    async fn start_private(test: &str) -> RealPlatform {
        let servers = tokio::task::spawn_blocking(|| {
            let nats = Server::nats().unwrap_or_else(|e| panic!("private nats-server: {e}"));
            let redis = Server::redis().unwrap_or_else(|e| panic!("private redis-server: {e}"));
            (nats, redis)
        })
        .await
        .expect("servers started");
        let mut cfg = test_config(test);
        cfg.nats_addr = servers.0.addr();
        cfg.redis_addr = servers.1.addr();
        let mut p = RealPlatform::start_with(cfg).await;
        p.private = Some(tokio::sync::Mutex::new(servers));
        p
    }

    pub(crate) fn deps(&self) -> &Deps {
        &self.deps
    }

    /// Takes a running instance out of the platform's hands (the caller stops it).
    pub(crate) fn take(&self, instance: &str) -> ServiceHandle {
        self.services.lock().unwrap().remove(instance).unwrap_or_else(|| panic!("{instance} is not running"))
    }

    fn kill_all(&self) {
        let services = std::mem::take(&mut *self.services.lock().unwrap());
        for (_, h) in services {
            h.kill();
        }
    }

    async fn wait_serving(&self) {
        launch::wait_until_serving(&self.deps, Duration::from_secs(30)).await.expect("platform serving");
    }

    pub(crate) async fn cleanup(self) {
        let services = std::mem::take(&mut *self.services.lock().unwrap());
        for (name, h) in &services {
            assert!(!h.is_finished(), "{name} died during the test");
        }
        for (_, h) in services {
            h.kill();
        }
        let ns = self.deps.cfg.namespace.clone();
        let prefix = self.deps.cfg.names().orders_stream().trim_end_matches("ORDERS").to_string();
        self.nats.delete_streams_with_prefix(&prefix).await.expect("delete test streams");
        wipe_prefix(self.deps.kv.as_ref(), &format!("{ns}:")).await.expect("wipe test keys");
    }
}

#[async_trait::async_trait]
impl Platform for RealPlatform {
    fn cfg(&self) -> &PlatformConfig {
        &self.deps.cfg
    }

    fn bus(&self) -> Arc<dyn EventBus> {
        self.deps.bus.clone()
    }

    async fn kill(&self, instance: &str) {
        let h = self.services.lock().unwrap().remove(instance);
        h.unwrap_or_else(|| panic!("{instance} is not running")).kill();
        // Let the killed server release its port.
        fafnir_platform::time::sleep(Duration::from_millis(50)).await;
    }

    async fn start(&self, instance: &str) {
        let (kind, shard) = parse_instance(instance);
        let h = launch::spawn(kind, shard, self.deps.clone());
        self.services.lock().unwrap().insert(instance.to_string(), h);
    }

    async fn start_held(&self, instance: &str) {
        let (kind, shard) = parse_instance(instance);
        let (release, released) = tokio::sync::watch::channel(false);
        let bus: Arc<dyn EventBus> = Arc::new(HeldBus { bus: self.deps.bus.clone(), released });
        let h = launch::spawn(kind, shard, Deps { bus, ..self.deps.clone() });
        self.services.lock().unwrap().insert(instance.to_string(), h);
        self.held.lock().unwrap().insert(instance.to_string(), release);
    }

    async fn release(&self, instance: &str) {
        let release = self.held.lock().unwrap().remove(instance);
        release.unwrap_or_else(|| panic!("{instance} is not held")).send_replace(true);
    }

    fn start_after(&self, instance: &str, delay: Duration) {
        let (kind, shard) = parse_instance(instance);
        let (deps, services, name) = (self.deps.clone(), self.services.clone(), instance.to_string());
        tokio::spawn(async move {
            fafnir_platform::time::sleep(delay).await;
            let h = launch::spawn(kind, shard, deps);
            services.lock().unwrap().insert(name, h);
        });
    }

    async fn restart_all(&self) {
        self.kill_all();
        fafnir_platform::time::sleep(Duration::from_millis(100)).await;
        *self.services.lock().unwrap() = launch::spawn_all(&self.deps);
        self.wait_serving().await;
    }

    async fn restart_broker(&self) {
        let servers = self.private.as_ref().expect("a flow that restarts the broker runs on private servers");
        let mut servers = servers.lock().await;
        servers.0.kill();
        fafnir_platform::time::sleep(Duration::from_millis(300)).await;
        tokio::task::block_in_place(|| servers.0.restart()).expect("nats-server restarts");
    }

    async fn restart_redis(&self) {
        let servers = self.private.as_ref().expect("a flow that restarts Redis runs on private servers");
        let mut servers = servers.lock().await;
        servers.1.kill();
        fafnir_platform::time::sleep(Duration::from_millis(300)).await;
        tokio::task::block_in_place(|| servers.1.restart()).expect("redis-server restarts");
    }

    async fn restart_all_with_empty_redis(&self) {
        self.kill_all();
        fafnir_platform::time::sleep(Duration::from_millis(100)).await;
        let wiped = wipe_prefix(self.deps.kv.as_ref(), &format!("{}:", self.deps.cfg.namespace)).await.unwrap();
        assert!(wiped > 0, "the market kept state in Redis");
        *self.services.lock().unwrap() = launch::spawn_all(&self.deps);
        self.wait_serving().await;
    }
}

/// An event bus whose every call waits until released: a service started
/// on it answers the health protocol but cannot rebuild its state.
struct HeldBus {
    bus: Arc<dyn EventBus>,
    released: tokio::sync::watch::Receiver<bool>,
}

impl HeldBus {
    async fn held(&self) {
        let mut released = self.released.clone();
        // The platform dropping the switch releases too.
        let _ = released.wait_for(|released| *released).await;
    }
}

#[async_trait::async_trait]
impl EventBus for HeldBus {
    async fn ensure_stream(&self, spec: &StreamSpec) -> Result<(), BusError> {
        self.held().await;
        self.bus.ensure_stream(spec).await
    }
    async fn ensure_consumer(&self, spec: &ConsumerSpec) -> Result<(), BusError> {
        self.held().await;
        self.bus.ensure_consumer(spec).await
    }
    async fn publish(&self, subject: &str, msg_id: &str, payload: Bytes) -> Result<PubAck, BusError> {
        self.held().await;
        self.bus.publish(subject, msg_id, payload).await
    }
    async fn publish_traced(&self, msg: Publish) -> Result<PubAck, BusError> {
        self.held().await;
        self.bus.publish_traced(msg).await
    }
    async fn publish_batch(&self, msgs: Vec<Publish>) -> Vec<Result<PubAck, BusError>> {
        self.held().await;
        self.bus.publish_batch(msgs).await
    }
    async fn fetch(&self, stream: &str, durable: &str, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        self.held().await;
        self.bus.fetch(stream, durable, max, wait).await
    }
    async fn ack(&self, token: &AckToken) -> Result<(), BusError> {
        self.held().await;
        self.bus.ack(token).await
    }
    async fn ack_many(&self, tokens: &[AckToken]) -> Result<(), BusError> {
        self.held().await;
        self.bus.ack_many(tokens).await
    }
    async fn nak(&self, token: &AckToken, delay: Duration) -> Result<(), BusError> {
        self.held().await;
        self.bus.nak(token, delay).await
    }
    async fn term(&self, token: &AckToken) -> Result<(), BusError> {
        self.held().await;
        self.bus.term(token).await
    }
    async fn read(
        &self,
        stream: &str,
        filter: &str,
        from_seq: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<StoredMsg>, BusError> {
        self.held().await;
        self.bus.read(stream, filter, from_seq, max, wait).await
    }
    async fn last_on_subject(&self, stream: &str, subject: &str) -> Result<Option<StoredMsg>, BusError> {
        self.held().await;
        self.bus.last_on_subject(stream, subject).await
    }
    async fn consumer_lag(&self, stream: &str, durable: &str) -> Result<ConsumerLag, BusError> {
        self.held().await;
        self.bus.consumer_lag(stream, durable).await
    }
    async fn last_seq(&self, stream: &str) -> Result<u64, BusError> {
        self.held().await;
        self.bus.last_seq(stream).await
    }
    async fn tail(&self, stream: &str, filter: &str) -> Result<Box<dyn Tail>, BusError> {
        self.held().await;
        self.bus.tail(stream, filter).await
    }
}

macro_rules! real_flows {
    ($($flow:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $flow() {
            let p = RealPlatform::start(stringify!($flow)).await;
            flows::$flow(&p).await;
            p.cleanup().await;
        }
    )*};
}

real_flows!(
    end_to_end_crossing_limits_and_a_market_order,
    ioc_and_fok_partial_and_no_fill,
    a_retried_submit_is_booked_once,
    restarts_and_a_redis_wipe_change_nothing,
    bad_input_changes_nothing_and_says_why,
    market_data_streams_candles_and_roles,
    a_whole_platform_restart_replays_what_the_portfolio_did,
    writes_sent_together_are_checked_one_account_at_a_time,
    hostile_requests_are_refused_without_effect,
    passwords_are_salted_per_user_and_survive_an_auth_restart,
    a_resumed_stream_gets_what_it_missed_across_a_gateway_restart,
    graphql_users_trade_and_resume_their_executions,
    every_service_says_serving_under_its_name,
    a_service_says_not_serving_until_it_has_rebuilt,
    an_order_carries_one_trace_through_every_stream,
);

/// Flows that kill and restart nats-server and redis-server: on servers of their own.
macro_rules! private_server_flows {
    ($($flow:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $flow() {
            let p = RealPlatform::start_private(stringify!($flow)).await;
            flows::$flow(&p).await;
            let services = std::mem::take(&mut *p.services.lock().unwrap());
            for (name, h) in &services {
                assert!(!h.is_finished(), "{name} died during the test");
            }
        }
    )*};
}

private_server_flows!(the_broker_and_redis_restart_mid_trading);

#[tokio::test]
async fn the_rate_limit_is_per_user() {
    let mut cfg = test_config("ratelimit");
    cfg.rate_limit = fafnir_platform::config::RateLimit { per_second: 1, burst: 5 };
    let p = RealPlatform::start_with(cfg).await;
    flows::the_rate_limit_is_per_user(&p).await;
    p.cleanup().await;
}

#[tokio::test]
async fn an_overload_is_refused_not_queued() {
    let mut cfg = test_config("overload");
    cfg.max_orders_in_flight = 4;
    let p = RealPlatform::start_with(cfg).await;
    flows::an_overload_is_refused_not_queued(&p).await;
    p.cleanup().await;
}

/// The process's metrics are served on /metrics: the gRPC series of the
/// order path, the business counters and the lag of this platform's
/// TRADES consumers, after one order. (The recorder is the process's, shared
/// with the other tests running beside this one: counts are at least ours.)
#[tokio::test]
async fn metrics_are_served_on_their_own_port() {
    let p = RealPlatform::start("metrics").await;
    let handle = fafnir_scenarios::observe::install_global();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], fafnir_scenarios::real::free_ports(1)[0]).into();
    let refresh = fafnir_scenarios::observe::Refresh::of(p.bus(), &p.cfg().names());
    let server = fafnir_scenarios::observe::serve(addr, handle, Some(refresh)).await.expect("listens");
    let alice = flows::user(&p, "alice").await;
    alice.deposit_cash(100_000, "m-1").await.unwrap();
    let spec =
        fafnir_scenarios::client::OrderSpec::limit("m1", "ACME", fafnir_platform::proto::common::Side::Buy, 100, 2);
    alice.submit(&spec).await.expect("accepted");
    let text = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(addr).expect("connects");
        conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).unwrap();
        text
    })
    .await
    .unwrap();
    assert!(text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"), "{}", &text[..text.len().min(200)]);
    assert!(text.contains("content-type: text/plain"), "Prometheus text format");
    let value = |series: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(series)).unwrap_or_else(|| panic!("no {series} in:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let submit_ok = r#"grpc_server_handled_total{grpc_type="unary",grpc_service="fafnir.gateway.Gateway",grpc_method="SubmitOrder",grpc_code="OK"}"#;
    assert!(value(submit_ok) >= 1.0);
    assert!(value(r#"fafnir_orders_accepted_total{symbol="ACME"}"#) >= 1.0);
    assert!(text.contains("# TYPE grpc_server_handling_seconds histogram"), "a histogram, not a summary");
    assert!(text.contains(r#"grpc_server_handling_seconds_bucket{grpc_type="unary",grpc_service="fafnir.orders.Orders",grpc_method="Submit",le="0.00001"}"#));
    let trades = p.cfg().names().trades_stream();
    assert_eq!(value(&format!(r#"fafnir_consumer_lag_messages{{stream="{trades}",consumer="portfolio"}}"#)), 0.0);
    assert!(text.contains("fafnir_bus_publish_seconds_count{op=\"publish\""), "publishes are timed");
    assert!(text.contains("fafnir_redis_call_seconds_count{op="), "Redis commands are timed");
    server.abort();
    p.cleanup().await;
}

#[test]
fn fafnir_up_names_the_unreachable_server() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fafnir"))
        .args(["up", "--nats", "127.0.0.1:1", "--base-port", "1"])
        .env("FAFNIR_JWT_SECRET", "a-test-secret-of-at-least-32-bytes")
        .output()
        .expect("run fafnir");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot reach NATS") && stderr.contains("127.0.0.1:1"), "{stderr}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fafnir"))
        .args(["serve", "nonsense"])
        .output()
        .expect("run fafnir");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown service \"nonsense\""), "{stderr}");
}

#[tokio::test]
async fn a_cursor_older_than_the_window_is_refused() {
    let mut cfg = test_config("window");
    cfg.execution_window = 4;
    let p = RealPlatform::start_with(cfg).await;
    flows::a_cursor_older_than_the_window_is_refused(&p).await;
    p.cleanup().await;
}

/// A stream holding an event the portfolio cannot apply (here written by
/// hand: a deposit of no cash, then bytes that are no event) stops the
/// portfolio at start with the event's place and the reason, once, instead
/// of a panic that a supervisor would meet again on every restart.
#[tokio::test]
async fn an_event_the_portfolio_cannot_apply_is_named() {
    use fafnir_platform::proto::events::{ledger_event, Deposited, LedgerEvent};
    use prost::Message;
    let cfg = test_config("poisoned");
    let (deps, nats) = fafnir_scenarios::real::connect(cfg).await.expect("real servers needed");
    fafnir_platform::services::ensure_streams(&deps).await.expect("streams");
    let names = deps.cfg.names();
    let bad = Deposited { account: 1, cents: -5, request_id: "1/x".into(), symbol: String::new(), qty: 0 };
    let event = LedgerEvent { kind: Some(ledger_event::Kind::Deposited(bad)), trades_applied: 0 };
    let subject = names.ledger("deposit");
    deps.bus.publish(&subject, "bad-1", event.encode_to_vec().into()).await.expect("publish");
    let stopped = fafnir_platform::time::timeout(
        Duration::from_secs(20),
        launch::spawn(ServiceKind::Portfolio, 0, deps.clone()).join(),
    );
    let err = stopped.await.expect("the portfolio stops").expect_err("it cannot start");
    let text = err.to_string();
    let ledger = names.ledger_stream();
    assert!(text.contains(&format!("{ledger}#1")) && text.contains("deposit of -5 cents"), "{text}");

    let prefix = names.orders_stream().trim_end_matches("ORDERS").to_string();
    nats.delete_streams_with_prefix(&prefix).await.expect("clean up");
    fafnir_platform::services::ensure_streams(&deps).await.expect("streams");
    deps.bus.publish(&subject, "bad-2", bytes::Bytes::from_static(b"\xff\xff not an event")).await.expect("publish");
    let stopped = fafnir_platform::time::timeout(
        Duration::from_secs(20),
        launch::spawn(ServiceKind::Portfolio, 0, deps.clone()).join(),
    );
    let text = stopped.await.expect("the portfolio stops").expect_err("it cannot start").to_string();
    assert!(text.contains(&format!("{ledger}#1")) && text.contains("does not decode"), "{text}");
    nats.delete_streams_with_prefix(&prefix).await.expect("clean up");
}
