//! Secure by default, against the real servers and the real binary: no
//! deployment without its own JWT secret, a port in use named, login timing
//! that does not tell which users exist, oversized input refused with a
//! clear status, and Register/Login rate-limited per peer address.
// Tests may read the wall clock to name their namespace uniquely.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use fafnir_platform::config::{PasswordHashing, RateLimit};
use fafnir_platform::proto::common::{Role, Side};
use fafnir_platform::proto::gateway::gateway_client::GatewayClient;
use fafnir_platform::proto::gateway::{
    DepositRequest, GetQuoteRequest, LoginRequest, RegisterRequest, StreamMarketDataRequest,
};
use fafnir_platform::services::launch;
use fafnir_scenarios::client::{Client, OrderSpec};
use tonic::Code;

use crate::real::{test_config, RealPlatform};

const SECRET: &str = "a-test-secret-of-at-least-32-bytes";

/// Runs the real `fafnir` binary with no JWT secret in its environment.
fn fafnir(args: &[&str], secret: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fafnir"));
    cmd.args(args).env_remove("FAFNIR_JWT_SECRET").env_remove("FAFNIR_JWT_SECRET_FILE");
    if let Some(secret) = secret {
        cmd.env("FAFNIR_JWT_SECRET", secret);
    }
    cmd.output().expect("run fafnir")
}

#[test]
fn fafnir_up_refuses_to_start_without_a_jwt_secret() {
    for args in [&["up"][..], &["serve", "auth"][..]] {
        let out = fafnir(args, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        for named in ["no JWT secret", "--jwt-secret-file", "FAFNIR_JWT_SECRET_FILE", "--jwt-secret ", "openssl rand"] {
            assert!(stderr.contains(named), "{args:?} should name {named:?}: {stderr}");
        }
    }
    let out = fafnir(&["up"], Some("too-short"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("9 bytes") && stderr.contains("at least 32"), "{stderr}");
}

#[test]
fn fafnir_up_names_a_port_in_use() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let port = held.local_addr().unwrap().port();
    let namespace = format!("t-port-{}", std::process::id());
    let out = fafnir(
        &["up", "--base-port", &port.to_string(), "--namespace", &namespace, "--graphql-addr", "off"],
        Some(SECRET),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("gateway cannot listen on 127.0.0.1:{port}")), "{stderr}");
    assert!(stderr.contains("in use"), "the OS's reason: {stderr}");
}

#[tokio::test]
async fn a_service_that_cannot_listen_is_named_at_once() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let mut cfg = test_config("cannot-listen");
    cfg.addrs.orders = held.local_addr().unwrap();
    let (deps, nats) = fafnir_scenarios::real::connect(cfg).await.expect("real servers needed");
    let mut services = launch::spawn_all(&deps);
    // Ten minutes would be waited out in full if the early end were lost.
    let err = launch::wait_until_serving_or_stopped(&deps, &mut services, Duration::from_secs(600))
        .await
        .expect_err("orders cannot listen");
    assert!(err.starts_with("orders stopped before it served"), "{err}");
    assert!(err.contains(&deps.cfg.addrs.orders.to_string()), "{err}");
    for (_, h) in services {
        h.kill();
    }
    let prefix = deps.cfg.names().orders_stream().trim_end_matches("ORDERS").to_string();
    nats.delete_streams_with_prefix(&prefix).await.expect("delete test streams");
    fafnir_platform::kv::wipe_prefix(deps.kv.as_ref(), &deps.cfg.names().key_prefix()).await.expect("wipe keys");
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

/// Not a performance target: the same work whether or not the user exists.
/// Before the dummy verification an unknown user was answered about twenty
/// times faster than a wrong password, which told anyone which names exist.
#[tokio::test]
async fn login_takes_as_long_for_an_unknown_user_as_for_a_wrong_password() {
    let mut cfg = test_config("login-timing");
    // Costly enough that the verification dominates a login (argon2id, 2 MiB, 2 passes).
    cfg.password_hashing = PasswordHashing { memory_kib: 2 * 1024, iterations: 2, lanes: 1 };
    let p = RealPlatform::start_with(cfg).await;
    let gateway = crate::Platform::gateway(&p);
    Client::register_and_login(gateway, "known", "the right password", Role::Trader).await.expect("register");
    let mut client = Client::new(gateway);
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for i in 0..15 {
        for (name, times) in [("known".to_string(), &mut known), (format!("nobody-{i}"), &mut unknown)] {
            let t = Instant::now();
            let err = client.login(&name, "a wrong password").await.expect_err("wrong password");
            times.push(t.elapsed());
            assert_eq!(err.code(), Code::Unauthenticated, "{err}");
            assert_eq!(err.message(), "invalid username or password", "the same answer for both");
        }
    }
    let (known, unknown) = (median(known), median(unknown));
    eprintln!("median login: wrong password {known:?}, unknown user {unknown:?}");
    let ratio = unknown.as_secs_f64() / known.as_secs_f64();
    assert!((0.5..=2.0).contains(&ratio), "unknown user {unknown:?} vs wrong password {known:?}");
    p.cleanup().await;
}

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// A refusal that says what was wrong in a few words, whatever was sent.
fn refused(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, words: &str) {
    let err = result.expect_err("refused");
    assert_eq!(err.code(), code, "{err}");
    assert!(err.message().contains(words), "{:?} should say {words:?}", err.message());
    assert!(err.message().len() < 120, "a short message: {:?}", err.message());
}

#[tokio::test]
async fn oversized_input_is_refused_with_a_clear_status() {
    let p = RealPlatform::start("oversized").await;
    let gateway = crate::Platform::gateway(&p);
    let user = Client::register_and_login(gateway, "big", "a good password", Role::Trader).await.unwrap();
    let token = user.token.clone().unwrap();
    let mut api = user.api.clone();
    let huge = "X".repeat(100_000);

    // A 1 MB token reaches the gateway, which refuses it as a token.
    let megabyte_token = "t".repeat(1_000_000);
    refused(api.get_portfolio(with_token(Default::default(), &megabyte_token)).await, Code::Unauthenticated, "4096");
    // A valid token among 20 KB of other metadata.
    let mut r = with_token(GetQuoteRequest { symbol: "ACME".into() }, &token);
    r.metadata_mut().insert("x-padding", "p".repeat(20_000).parse().unwrap());
    refused(api.get_quote(r).await, Code::InvalidArgument, "metadata");

    refused(user.quote(&huge).await, Code::InvalidArgument, "symbol: at most 12 bytes");
    refused(user.submit(&OrderSpec::limit("c1", &huge, Side::Buy, 100, 1)).await, Code::InvalidArgument, "symbol");
    refused(
        user.submit(&OrderSpec::limit(&huge, "ACME", Side::Buy, 100, 1)).await,
        Code::InvalidArgument,
        "client_order_id: at most 64 bytes",
    );
    refused(user.candles(&huge).await, Code::InvalidArgument, "symbol");
    let deposit = DepositRequest { cents: 1, request_id: huge.clone(), symbol: String::new(), qty: 0 };
    refused(api.deposit(with_token(deposit, &token)).await, Code::InvalidArgument, "request_id");
    let md = StreamMarketDataRequest { symbols: vec![huge.clone()] };
    refused(api.stream_market_data(with_token(md, &token)).await, Code::InvalidArgument, "unknown symbol");
    let md = StreamMarketDataRequest { symbols: vec!["ACME".into(); 1000] };
    refused(api.stream_market_data(with_token(md, &token)).await, Code::InvalidArgument, "symbols: at most");

    let register = RegisterRequest { username: huge.clone(), password: "a good password".into(), role: 0 };
    refused(api.register(register).await, Code::InvalidArgument, "username: at most 32 bytes");
    let register = RegisterRequest { username: "fine".into(), password: huge.clone(), role: 0 };
    refused(api.register(register).await, Code::InvalidArgument, "password");
    refused(
        api.login(LoginRequest { username: "big".into(), password: huge.clone() }).await,
        Code::InvalidArgument,
        "password",
    );
    // Larger than any request message may be: refused by the server's decoder.
    let login = LoginRequest { username: "X".repeat(2 << 20), password: String::new() };
    let err = api.login(login).await.expect_err("too large");
    assert_eq!(err.code(), Code::OutOfRange, "{err}");

    // None of it hurt the connection or the account.
    assert_eq!(user.portfolio().await.expect("still served").cash_cents, 0);
    p.cleanup().await;
}

/// A client of `gateway` whose connections leave from `local` (any 127.x
/// address reaches a server on 127.0.0.1).
fn client_from(gateway: SocketAddr, local: [u8; 4]) -> GatewayClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{gateway}"))
        .unwrap()
        .local_address(Some(local.into()))
        .connect_lazy();
    GatewayClient::new(channel)
}

#[tokio::test]
async fn register_and_login_are_rate_limited_per_address() {
    let mut cfg = test_config("peer-limit");
    cfg.peer_rate_limit = RateLimit { per_second: 1, burst: 3 };
    let p = RealPlatform::start_with(cfg).await;
    let gateway = crate::Platform::gateway(&p);
    let login = || LoginRequest { username: "nobody".into(), password: "a wrong password".into() };
    let mut busy = client_from(gateway, [127, 0, 0, 1]);
    let mut refused = 0;
    for _ in 0..6 {
        let err = busy.login(login()).await.expect_err("nobody");
        match err.code() {
            Code::Unauthenticated => {}
            Code::ResourceExhausted => {
                assert!(err.message().contains("from one address"), "{err}");
                refused += 1;
            }
            _ => panic!("{err}"),
        }
    }
    assert!((2..=3).contains(&refused), "a burst of 3 at 1/s lets 3 or 4 of 6 through; refused {refused}");
    let err = busy.register(RegisterRequest::default()).await.expect_err("limited");
    assert_eq!(err.code(), Code::ResourceExhausted, "Register shares Login's bucket: {err}");
    let mut other = client_from(gateway, [127, 0, 0, 2]);
    let err = other.login(login()).await.expect_err("nobody");
    assert_eq!(err.code(), Code::Unauthenticated, "another address has its own bucket: {err}");
    p.cleanup().await;
}
