//! The gRPC health protocol (`grpc.health.v1.Health`) that every service
//! answers on its own address: under "" and its full gRPC service name,
//! NOT_SERVING while it rebuilds its state from the streams (its own calls
//! refused with UNAVAILABLE, at once), SERVING after. Written once against
//! [`Platform`] for both worlds; the clients are the platform's health
//! clients (tonic-health's `HealthClient` for real, the simulated build's own).

use std::net::SocketAddr;
use std::time::Duration;

use fafnir_platform::proto::common::{Role, Side};
use fafnir_platform::proto::{auth, engine, gateway, market, orders, portfolio};
use fafnir_platform::services::health::proto::health_client::HealthClient;
use fafnir_platform::services::health::proto::HealthCheckRequest;
use fafnir_platform::services::health::{self, ServingStatus};
use fafnir_platform::services::launch::{self, Instance};
use fafnir_platform::services::{channel, ServiceKind};
use fafnir_scenarios::client::{Client, OrderSpec};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::flows::{eventually, PASSWORD};
use crate::Platform;

/// A call that must be answered, with a value or a refusal, within this long.
const ANSWERED_WITHIN: Duration = Duration::from_secs(3);

fn health_client(addr: SocketAddr) -> HealthClient<Channel> {
    health::client(addr, Duration::from_secs(2))
}

/// The status of `service`, or None while the server cannot say.
async fn status_of(client: &mut HealthClient<Channel>, service: &str) -> Option<ServingStatus> {
    health::check(client, service).await.ok()
}

/// The statuses of "" and `service` once both are `want`.
async fn until_both(addr: SocketAddr, service: &'static str, want: ServingStatus, what: &str) {
    let client = health_client(addr);
    eventually(what, || {
        let mut client = client.clone();
        async move {
            let whole = status_of(&mut client, "").await?;
            let named = status_of(&mut client, service).await?;
            (whole == want && named == want).then_some(())
        }
    })
    .await;
}

/// A Watch of `service` whose first word is `want` (opened again while the
/// server cannot be reached or says otherwise).
async fn watch_saying(addr: SocketAddr, service: &'static str, want: ServingStatus, what: &str) -> Watch {
    let client = health_client(addr);
    eventually(what, || {
        let mut client = client.clone();
        async move {
            let request = HealthCheckRequest { service: service.into() };
            let mut watch = client.watch(request).await.ok()?.into_inner();
            let first = watch.message().await.ok()??;
            (first.status() == want).then_some(watch)
        }
    })
    .await
}

type Watch = tonic::Streaming<fafnir_platform::services::health::proto::HealthCheckResponse>;

/// One call of the service's own that any caller may make: a value or a
/// refusal about the request, except while it is not serving.
async fn call_the_service(p: &dyn Platform, kind: ServiceKind, shard: usize, addr: SocketAddr) -> Result<(), Status> {
    let ch = channel(addr, Duration::from_secs(2));
    let nobody = || auth::LoginRequest { username: "nobody".into(), password: "a wrong password".into() };
    match kind {
        ServiceKind::Gateway => {
            let request = gateway::LoginRequest { username: "nobody".into(), password: "a wrong password".into() };
            gateway::gateway_client::GatewayClient::new(ch).login(request).await.map(drop)
        }
        ServiceKind::Auth => auth::auth_client::AuthClient::new(ch).login(nobody()).await.map(drop),
        ServiceKind::Market => market::market_client::MarketClient::new(ch)
            .list_instruments(market::ListInstrumentsRequest {})
            .await
            .map(drop),
        ServiceKind::Orders => {
            let request = orders::GetRequest { user_id: 1, order_id: 1 };
            orders::orders_client::OrdersClient::new(ch).get(request).await.map(drop)
        }
        ServiceKind::Portfolio => {
            let request = portfolio::GetPortfolioRequest { account_id: 1 };
            portfolio::portfolio_client::PortfolioClient::new(ch).get_portfolio(request).await.map(drop)
        }
        ServiceKind::Engine => {
            let symbol = p.cfg().engine_shards[shard][0].clone();
            engine::engine_client::EngineClient::new(ch)
                .get_book(engine::GetBookRequest { symbol, depth: 1 })
                .await
                .map(drop)
        }
    }
}

/// Every service answers the health protocol on its address: SERVING for
/// "" and for its own full gRPC name, NOT_FOUND for any other name; a
/// Watch says SERVING at once.
pub async fn every_service_says_serving_under_its_name(p: &dyn Platform) {
    let instances = launch::instances(p.cfg());
    assert_eq!(instances.len(), 5 + p.cfg().engine_shards.len());
    let names: std::collections::BTreeSet<_> = ServiceKind::ALL.iter().map(|k| k.grpc_name()).collect();
    assert_eq!(names.len(), ServiceKind::ALL.len(), "one name a kind");
    for Instance { name, kind, addr, .. } in &instances {
        let mut client = health_client(*addr);
        for service in ["", kind.grpc_name()] {
            let status = health::check(&mut client, service).await;
            assert_eq!(status.ok(), Some(ServingStatus::Serving), "{name} on {addr}, service {service:?}");
        }
        let others = ServiceKind::ALL.iter().filter(|k| *k != kind).map(|k| k.grpc_name());
        for other in others.chain(["fafnir.nothing.Here", "grpc.health.v1.Health"]) {
            let err = health::check(&mut client, other).await.expect_err("a name it does not serve");
            assert_eq!(err.code(), Code::NotFound, "{name} asked for {other}: {err:?}");
        }
        let request = HealthCheckRequest { service: kind.grpc_name().into() };
        let mut watch = client.watch(request).await.expect("watch").into_inner();
        let first = watch.message().await.expect("a status").expect("the stream goes on");
        assert_eq!(first.status(), ServingStatus::Serving, "{name}'s watch");
        let request = HealthCheckRequest { service: "fafnir.nothing.Here".into() };
        let err = client.watch(request).await.expect_err("no watch of a name it does not serve");
        assert_eq!(err.code(), Code::NotFound, "{name}: {err:?}");
    }
}

/// Each service in turn, killed and started again with its rebuild held
/// (see [`Platform::start_held`]): it answers the health protocol at once,
/// NOT_SERVING under both names, and refuses its own calls with
/// UNAVAILABLE at once (never a hang, never an answer from a half-rebuilt
/// state); a Watch opened then says NOT_SERVING. Released, it rebuilds and
/// says SERVING, the Watch says so too, and its calls are answered. The
/// gateway, held while the others serve, refuses an order cleanly, and so
/// does it while the orders service is held (the order's own path). What
/// the platform held before (a deposit, a trade) is all there after.
pub async fn a_service_says_not_serving_until_it_has_rebuilt(p: &dyn Platform) {
    let seller = Client::register_and_login(p.gateway(), "hold-seller", PASSWORD, Role::Trader).await.expect("seller");
    let buyer = Client::register_and_login(p.gateway(), "hold-buyer", PASSWORD, Role::Trader).await.expect("buyer");
    seller.deposit_shares("ACME", 10, "s").await.expect("shares");
    buyer.deposit_cash(100_000, "b").await.expect("cash");
    seller.submit(&OrderSpec::limit("s1", "ACME", Side::Sell, 100, 4)).await.expect("sell");
    buyer.submit(&OrderSpec::limit("b1", "ACME", Side::Buy, 100, 4)).await.expect("buy");
    let settled = eventually("the trade settled", || async {
        buyer.portfolio().await.ok().filter(|v| v.holdings.iter().any(|h| h.symbol == "ACME" && h.qty == 4))
    })
    .await;

    for Instance { name, kind, shard, addr } in launch::instances(p.cfg()) {
        p.kill(&name).await;
        p.start_held(&name).await;
        until_both(addr, kind.grpc_name(), ServingStatus::NotServing, &format!("{name} to say NOT_SERVING")).await;
        let watch = watch_saying(addr, kind.grpc_name(), ServingStatus::NotServing, &format!("{name}'s watch")).await;
        let refused = fafnir_platform::time::timeout(ANSWERED_WITHIN, call_the_service(p, kind, shard, addr))
            .await
            .unwrap_or_else(|_| panic!("{name} did not answer while held"))
            .expect_err("refused while held");
        assert_eq!(refused.code(), Code::Unavailable, "{name} while held: {refused:?}");
        if kind == ServiceKind::Orders {
            // The order's path (gateway -> orders): refused, not hung.
            let order = OrderSpec::limit("b2", "ACME", Side::Buy, 90, 1);
            let refused = fafnir_platform::time::timeout(ANSWERED_WITHIN, buyer.submit(&order))
                .await
                .expect("the gateway answers while orders is held")
                .expect_err("refused while orders is held");
            assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        }

        p.release(&name).await;
        until_both(addr, kind.grpc_name(), ServingStatus::Serving, &format!("{name} to say SERVING")).await;
        watch_says_serving(addr, watch, kind, &name).await;
        let answered = fafnir_platform::time::timeout(ANSWERED_WITHIN, call_the_service(p, kind, shard, addr))
            .await
            .expect("answered");
        assert!(answered.as_ref().err().is_none_or(|e| e.code() != Code::Unavailable), "{name}: {answered:?}");
    }

    let now = eventually("the buyer's portfolio", || async { buyer.portfolio().await.ok() }).await;
    assert_eq!(now, settled, "rebuilt with what it held");
}

/// Reads `watch` (opened while the service was held) until it says SERVING.
/// A server that ended meanwhile (in simulation a held service gives up and
/// starts again) ended its streams after a last NOT_SERVING: then a new
/// watch says SERVING at once.
async fn watch_says_serving(addr: SocketAddr, mut watch: Watch, kind: ServiceKind, name: &str) {
    loop {
        let next =
            fafnir_platform::time::timeout(ANSWERED_WITHIN, watch.message()).await.expect("the watch goes on or ends");
        match next {
            Ok(Some(reply)) if reply.status() == ServingStatus::Serving => return,
            Ok(Some(reply)) => assert_eq!(reply.status(), ServingStatus::NotServing, "{name}'s watch"),
            Ok(None) | Err(_) => break,
        }
    }
    let mut watch = watch_saying(addr, kind.grpc_name(), ServingStatus::Serving, &format!("{name}'s new watch")).await;
    // It goes on: nothing more to say while the service serves.
    let more = fafnir_platform::time::timeout(Duration::from_millis(200), watch.message()).await;
    assert!(more.is_err(), "{name}'s watch said more: {more:?}");
}
