//! OTLP export (feature `otlp`, real build): an in-process platform exports
//! its spans to a collector this test runs (OTLP/HTTP, protobuf), and one
//! order's trace holds a span of every hop of its life: the gateway's RPC,
//! orders' and the portfolio's RPCs, the engine's match and the portfolio's
//! settlement, all under the trace id its client sent.
#![cfg(all(feature = "otlp", not(madsim)))]
// Tests may read the wall clock to name their namespace uniquely.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fafnir_platform::config::{PasswordHashing, PlatformConfig, ServiceAddrs};
use fafnir_platform::proto::common::{Role, Side};
use fafnir_platform::services::launch;
use fafnir_scenarios::client::{Client, OrderSpec};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use prost::Message;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// (trace id in hex, span name) of every span the collector received.
type Received = Arc<Mutex<Vec<(String, String)>>>;

/// An OTLP/HTTP collector on a free port: what it receives goes into the list.
async fn collector() -> (std::net::SocketAddr, Received) {
    let received: Received = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: bytes::Bytes| {
            let sink = sink.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
                let mut sink = sink.lock().unwrap();
                for span in request.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans) {
                    let trace: String = span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                    sink.push((trace, span.name.clone()));
                }
                (
                    [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, received)
}

fn config() -> PlatformConfig {
    let mut cfg = PlatformConfig::local_default();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    cfg.namespace = format!("t-otlp-{}-{nanos}", std::process::id());
    let ports = fafnir_scenarios::real::free_ports(5 + cfg.engine_shards.len());
    let at = |i: usize| std::net::SocketAddr::from(([127, 0, 0, 1], ports[i]));
    cfg.addrs = ServiceAddrs {
        gateway: at(0),
        auth: at(1),
        market: at(2),
        orders: at(3),
        portfolio: at(4),
        engines: (0..cfg.engine_shards.len()).map(|i| at(5 + i)).collect(),
    };
    cfg.password_hashing = PasswordHashing::CHEAP;
    cfg.jwt_secret = "a-test-secret-of-at-least-32-bytes!".into();
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_is_one_trace_across_every_service() {
    let (collector, received) = collector().await;
    let (layer, exporter) = fafnir_scenarios::otlp::layer(&format!("http://{collector}"), "fafnir-test").unwrap();
    tracing_subscriber::registry().with(layer).init();

    let (deps, nats) = fafnir_scenarios::real::connect(config()).await.expect("real servers needed");
    let services = launch::spawn_all(&deps);
    launch::wait_until_serving(&deps, Duration::from_secs(30)).await.expect("platform serving");
    let gateway = deps.cfg.addrs.gateway;
    let symbol = deps.cfg.instruments[0].symbol.clone();
    let password = "correct horse battery";
    let bob = Client::register_and_login(gateway, "bob", password, Role::Trader).await.unwrap();
    let alice = Client::register_and_login(gateway, "alice", password, Role::Trader).await.unwrap();
    bob.deposit_shares(&symbol, 10, "b-1").await.unwrap();
    alice.deposit_cash(10_000_000, "a-1").await.unwrap();
    bob.submit(&OrderSpec::limit("b-sell", &symbol, Side::Sell, 10_000, 4)).await.unwrap();
    let sent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let buy = OrderSpec::limit("a-buy", &symbol, Side::Buy, 10_000, 4);
    alice.submit_traced(&buy, Some(sent)).await.unwrap();
    // Settled: alice holds what she bought.
    let deadline = fafnir_platform::time::Instant::now() + Duration::from_secs(20);
    loop {
        let view = alice.portfolio().await.unwrap();
        if view.holdings.iter().any(|h| h.symbol == symbol && h.qty == 4) {
            break;
        }
        assert!(fafnir_platform::time::Instant::now() < deadline, "alice's buy did not settle: {view:?}");
        fafnir_platform::time::sleep(Duration::from_millis(50)).await;
    }
    fafnir_platform::time::sleep(Duration::from_millis(200)).await;
    tokio::task::spawn_blocking(move || exporter.shutdown()).await.unwrap();

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let names: BTreeSet<String> =
        received.lock().unwrap().iter().filter(|(t, _)| t == trace).map(|(_, n)| n.clone()).collect();
    for want in [
        "fafnir.gateway.Gateway/SubmitOrder",
        "gateway.submit",
        "fafnir.orders.Orders/Submit",
        "fafnir.portfolio.Portfolio/Reserve",
        "engine.match",
        "portfolio.settle",
    ] {
        assert!(names.contains(want), "no {want} span in the order's trace; it has {names:?}");
    }
    for (_, h) in services {
        h.kill();
    }
    let prefix = deps.cfg.names().orders_stream().trim_end_matches("ORDERS").to_string();
    nats.delete_streams_with_prefix(&prefix).await.expect("delete test streams");
    fafnir_platform::kv::wipe_prefix(deps.kv.as_ref(), &format!("{}:", deps.cfg.namespace)).await.unwrap();
}
