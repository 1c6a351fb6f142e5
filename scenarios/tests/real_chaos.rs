//! Real-process chaos: `fafnir up` (the real binary, as a process) on a
//! nats-server and a redis-server of the test's own, driven by the agents of
//! `scenarios/real-chaos.toml` (traders near their whole buying power) while
//! the test kills and restarts nats-server, then redis-server, then the
//! platform process itself. Then it checks what a user of the real platform
//! would: the run's fill checker (every fill right, every acknowledged order
//! present with a final status, balances and holdings equal to deposits plus
//! settled fills, reservations equal to open orders, totals conserved);
//! market data flowing again within seconds of each restart, and execution
//! reports too; quotes and candles equal to what the trades make; no panic
//! in the platform's logs; and a second restart of the platform that comes
//! back with the same state. Bounded to well under a minute.
#![cfg(not(madsim))]
// A test of processes reads the wall clock and sleeps its own thread.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fafnir_platform::bus::nats::NatsBus;
use fafnir_platform::bus::{read_to_end, EventBus};
use fafnir_platform::proto::common::{Order, OrderStatus, Role, Side};
use fafnir_platform::proto::events::{engine_event, EngineEvent};
use fafnir_platform::proto::gateway::execution_report;
use fafnir_scenarios::client::{Client, OrderSpec};
use fafnir_scenarios::real_run::{self, Target};
use fafnir_scenarios::servers::Server;

const NAMESPACE: &str = "chaos";
const SECRET: &str = "real-chaos-test-secret-0123456789abcdef";
/// Market data with a trade must arrive within this long of nats-server or
/// redis-server being back (the agents trade several times a second)...
const FLOWS_AGAIN_WITHIN: Duration = Duration::from_secs(2);
/// ...and within this long of the platform process being back (it has
/// rebuilt itself from the streams once it says it is ready; the agents' clients
/// reconnect with backoff).
const PLATFORM_FLOWS_AGAIN_WITHIN: Duration = Duration::from_secs(5);

/// Six consecutive free ports (gateway, auth, market, orders, portfolio, engine-0).
fn free_port_block() -> u16 {
    for _ in 0..100 {
        let ports = fafnir_scenarios::real::free_ports(6);
        if ports.windows(2).all(|w| w[1] == w[0] + 1) {
            return ports[0];
        }
    }
    panic!("no six consecutive free ports");
}

/// The platform as a process: `fafnir up`.
struct Up {
    args: Vec<String>,
    base_port: u16,
    logs: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl Up {
    fn new(nats: &str, redis: &str) -> Up {
        let base_port = free_port_block();
        let args = ["up", "--nats", nats, "--redis", redis, "--namespace", NAMESPACE, "--jwt-secret", SECRET]
            .map(String::from)
            .into_iter()
            .chain(["--base-port".to_string(), base_port.to_string(), "--graphql-addr".into(), "off".into()])
            .collect();
        let logs = std::env::temp_dir().join(format!("fafnir-real-chaos-{}", std::process::id()));
        std::fs::create_dir_all(&logs).expect("log dir");
        Up { args, base_port, logs, child: None, starts: 0 }
    }

    fn gateway(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.base_port).into()
    }

    fn start(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.logs.join(format!("up-{}.log", self.starts))).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_fafnir"))
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start fafnir up");
        self.child = Some(child);
        // Ready once every service says SERVING in the health protocol (its
        // port is open from the start, while it rebuilds).
        let deadline = Instant::now() + Duration::from_secs(30);
        let log = self.logs.join(format!("up-{}.log", self.starts));
        while !std::fs::read_to_string(&log).unwrap_or_default().contains("fafnir is up and ready") {
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            assert!(exited.is_none(), "fafnir up exited ({exited:?}): {}", self.log_text());
            assert!(Instant::now() < deadline, "fafnir up not ready after 30 s: {}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the process at once (SIGKILL).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_text(&self) -> String {
        (1..=self.starts)
            .map(|i| std::fs::read_to_string(self.logs.join(format!("up-{i}.log"))).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n----- restarted -----\n")
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        self.kill();
        if std::env::var_os("FAFNIR_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.logs);
        }
    }
}

/// When something was back after a restart, and what it was.
type Restarts = Arc<Mutex<Vec<(&'static str, Instant)>>>;

/// Follows market data (reopening the stream whenever it breaks) and records
/// when each update that carries a trade arrived.
async fn watch_market_data(c: Client, seen: Arc<Mutex<Vec<Instant>>>) {
    loop {
        let Ok(mut stream) = c.market_data(&[]).await else {
            fafnir_platform::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while let Ok(Some(update)) = stream.message().await {
            if !update.trades.is_empty() {
                seen.lock().unwrap().push(Instant::now());
            }
        }
    }
}

/// The chaos: nats-server, redis-server and the platform, each killed and
/// started again while the load runs. Records when each was back.
async fn chaos(nats: Arc<Mutex<Server>>, redis: Arc<Mutex<Server>>, up: Arc<Mutex<Up>>, back: Restarts) {
    let blocking = |f: Box<dyn FnOnce() + Send>| tokio::task::spawn_blocking(f);
    fafnir_platform::time::sleep(Duration::from_secs(3)).await;
    let n = nats.clone();
    blocking(Box::new(move || n.lock().unwrap().kill())).await.unwrap();
    fafnir_platform::time::sleep(Duration::from_millis(1_000)).await;
    let n = nats.clone();
    blocking(Box::new(move || n.lock().unwrap().restart().expect("nats-server restarts"))).await.unwrap();
    back.lock().unwrap().push(("nats-server", Instant::now()));

    fafnir_platform::time::sleep(Duration::from_secs(4)).await;
    let r = redis.clone();
    blocking(Box::new(move || r.lock().unwrap().kill())).await.unwrap();
    fafnir_platform::time::sleep(Duration::from_millis(500)).await;
    let r = redis.clone();
    blocking(Box::new(move || r.lock().unwrap().restart().expect("redis-server restarts"))).await.unwrap();
    back.lock().unwrap().push(("redis-server", Instant::now()));

    fafnir_platform::time::sleep(Duration::from_secs(3)).await;
    let u = up.clone();
    blocking(Box::new(move || {
        let mut up = u.lock().unwrap();
        up.kill();
        std::thread::sleep(Duration::from_millis(500));
        up.start();
    }))
    .await
    .unwrap();
    back.lock().unwrap().push(("the platform", Instant::now()));
}

/// Quotes and candles as the fills in TRADES make them, per symbol: (trades,
/// volume, last price in cents, last qty) and candles (start, o, h, l, c, volume).
type Derived = BTreeMap<String, ((u64, i64, i64, i64), Vec<[i64; 6]>)>;

fn derive(trades: &[EngineEvent], ticks: &BTreeMap<&str, i64>) -> Derived {
    let mut out = Derived::new();
    let mut candles: BTreeMap<(String, i64), [i64; 6]> = BTreeMap::new();
    for e in trades {
        let Some(engine_event::Kind::Fill(f)) = &e.kind else { continue };
        let tick = ticks[e.symbol.as_str()];
        let price = f.price_ticks * tick;
        let q = &mut out.entry(e.symbol.clone()).or_default().0;
        *q = (q.0 + 1, q.1 + f.qty, price, f.qty);
        let start = e.ts_ms.div_euclid(60_000) * 60_000;
        let c = candles.entry((e.symbol.clone(), start)).or_insert([start, price, price, price, price, 0]);
        c[2] = c[2].max(price);
        c[3] = c[3].min(price);
        c[4] = price;
        c[5] += f.qty;
    }
    for ((symbol, _), c) in candles {
        out.entry(symbol).or_default().1.push(c);
    }
    out
}

/// What the platform serves of quotes and candles, in the shape of [`derive`].
async fn served(c: &Client, symbols: &[&str]) -> Derived {
    let mut out = Derived::new();
    for symbol in symbols {
        let q = c.quote(symbol).await.expect("quote");
        let candles = c.candles(symbol).await.expect("candles");
        if q.trades == 0 && candles.is_empty() {
            continue;
        }
        let candles = candles
            .iter()
            .map(|c| [c.start_ms, c.open_cents, c.high_cents, c.low_cents, c.close_cents, c.volume])
            .collect();
        out.insert(symbol.to_string(), ((q.trades, q.volume, q.last_price_cents, q.last_qty), candles));
    }
    out
}

async fn engine_events(bus: &dyn EventBus) -> Vec<EngineEvent> {
    let mut cfg = fafnir_platform::config::PlatformConfig::local_default();
    cfg.namespace = NAMESPACE.into();
    let stream = cfg.names().trades_stream();
    let msgs = read_to_end(bus, &stream, "", 1).await.expect("TRADES readable");
    msgs.iter().map(|m| prost::Message::decode(&m.payload[..]).expect("an engine event")).collect()
}

async fn retry<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(s) => assert!(Instant::now() < deadline, "{what}: {s}"),
        }
        fafnir_platform::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two users trade with each other once more: the buyer's execution report
/// and the market data of the trade must arrive within `within`.
async fn probe(gateway: SocketAddr, tag: &str, within: Duration) -> (Client, Client) {
    let login = |name: String| async move {
        retry("register", || Client::register_or_login(gateway, &name, "probe-password", Role::Trader)).await
    };
    let seller = login(format!("probe-s-{tag}")).await;
    let buyer = login(format!("probe-b-{tag}")).await;
    retry("deposit", || seller.deposit_shares("ACME", 10, "p")).await;
    retry("deposit", || buyer.deposit_cash(10_000_000, "p")).await;
    let mut reports = retry("executions", || buyer.executions()).await;
    let mut md = retry("market data", || buyer.market_data(&["ACME"])).await;
    let start = Instant::now();
    // Above every agent's price, so the buy fills (the sell rests first).
    let (sell, buy) =
        (OrderSpec::limit("s", "ACME", Side::Sell, 900_000, 10), OrderSpec::limit("b", "ACME", Side::Buy, 900_000, 10));
    retry("sell", || seller.submit(&sell)).await;
    let bought = retry("buy", || buyer.submit(&buy)).await;
    let got_fill = async {
        while let Some(r) = reports.message().await.expect("execution stream") {
            if r.order_id == bought.order_id && matches!(r.kind, Some(execution_report::Kind::Fill(_))) {
                return;
            }
        }
        panic!("the execution stream ended");
    };
    fafnir_platform::time::timeout(within, got_fill).await.expect("the fill's execution report in time");
    let got_md = async {
        // The buy may have met an agent's ask first: any trade will do.
        while let Some(u) = md.message().await.expect("market-data stream") {
            if !u.trades.is_empty() {
                return;
            }
        }
        panic!("the market-data stream ended");
    };
    let left = within.saturating_sub(start.elapsed());
    fafnir_platform::time::timeout(left, got_md).await.expect("the trade's market data in time");
    (seller, buyer)
}

/// What must not change across a restart of the platform.
async fn state_of(users: &[&Client], quotes: &Client) -> (Vec<(u64, i64, i64, Vec<Order>)>, Derived) {
    let mut out = Vec::new();
    for u in users {
        let p = retry("portfolio", || u.portfolio()).await;
        let mut orders = retry("orders", || u.orders()).await;
        orders.sort_by_key(|o| o.order_id);
        out.push((p.account_id, p.cash_cents, p.reserved_cents, orders));
    }
    (out, served(quotes, &["ACME", "GLOBX"]).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_platform_survives_its_servers_and_itself_being_killed() {
    let (nats, redis) = tokio::task::spawn_blocking(|| {
        (Server::nats().expect("private nats-server"), Server::redis().expect("private redis-server"))
    })
    .await
    .unwrap();
    let (nats_addr, redis_addr) = (nats.addr(), redis.addr());
    let mut up = Up::new(&nats_addr, &redis_addr);
    tokio::task::block_in_place(|| up.start());
    let gateway = up.gateway();
    let (nats, redis, up) = (Arc::new(Mutex::new(nats)), Arc::new(Mutex::new(redis)), Arc::new(Mutex::new(up)));

    let watcher =
        retry("watcher", || Client::register_or_login(gateway, "md-watcher", "watch-pass", Role::Trader)).await;
    let md_seen = Arc::new(Mutex::new(Vec::new()));
    let watching = tokio::spawn(watch_market_data(watcher.clone(), md_seen.clone()));

    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("real-chaos.toml");
    let (scn, config_hash, rerun) = fafnir_scenarios::run::load(&file, None, None).expect("scenario");
    let target = Target {
        gateway: Some(gateway),
        nats: nats_addr.clone(),
        redis: redis_addr.clone(),
        namespace: Some(NAMESPACE.into()),
    };
    let back: Restarts = Arc::default();
    let chaos = tokio::spawn(chaos(nats.clone(), redis.clone(), up.clone(), back.clone()));
    let run = real_run::run(&scn, scn.seed, target, config_hash, rerun, None).await;
    chaos.await.expect("the chaos played");
    let log = || up.lock().unwrap().log_text();
    let run = run.unwrap_or_else(|e| panic!("the run failed: {e}\nplatform log:\n{}", log()));

    // The fill checker: every check passed.
    let failed: Vec<_> = run.summary.checker.checks.iter().filter(|c| !c.passed).collect();
    assert!(failed.is_empty(), "checks failed: {failed:#?}");
    let counts = &run.summary.counts;
    assert!(counts.accepted > 100 && counts.fills_reported > 20, "the load traded: {counts:?}");

    // Market data flowed again within seconds of each restart.
    let seen = md_seen.lock().unwrap().clone();
    for (what, at) in back.lock().unwrap().iter() {
        let next = seen.iter().find(|t| **t > *at).map(|t| t.duration_since(*at));
        let within = if *what == "the platform" { PLATFORM_FLOWS_AGAIN_WITHIN } else { FLOWS_AGAIN_WITHIN };
        eprintln!("market data with a trade {next:?} after {what} was back");
        assert!(
            next.is_some_and(|d| d <= within),
            "market data after {what} was back: {next:?} (want within {within:?})"
        );
    }
    eprintln!("the run: {counts:?}");
    watching.abort();

    // Execution reports and market data flow now, within seconds.
    let (s1, b1) = probe(gateway, "1", Duration::from_secs(3)).await;

    // Quotes and candles are what the trades make.
    let bus = NatsBus::connect(&nats_addr).await.expect("NATS");
    let ticks: BTreeMap<&str, i64> = [("ACME", 1), ("GLOBX", 5)].into();
    let want = derive(&engine_events(&bus).await, &ticks);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let quotes = served(&watcher, &["ACME", "GLOBX"]).await;
        if quotes == want {
            break;
        }
        assert!(Instant::now() < deadline, "quotes and candles against TRADES:\n{quotes:?}\nwant\n{want:?}");
        fafnir_platform::time::sleep(Duration::from_millis(200)).await;
    }

    // No panic anywhere in the platform's logs.
    let text = log();
    assert!(!text.contains("panicked"), "the platform panicked:\n{text}");

    // A second restart comes back, with the same state.
    let before = state_of(&[&s1, &b1, &watcher], &watcher).await;
    assert_eq!(before.0[1].3.iter().filter(|o| o.status == OrderStatus::Filled as i32).count(), 1);
    let u = up.clone();
    tokio::task::spawn_blocking(move || {
        let mut up = u.lock().unwrap();
        up.kill();
        up.start();
    })
    .await
    .unwrap();
    let after = state_of(&[&s1, &b1, &watcher], &watcher).await;
    assert_eq!(after, before, "state across the second restart");
    probe(gateway, "2", Duration::from_secs(3)).await;
    let text = log();
    assert!(!text.contains("panicked"), "the platform panicked:\n{text}");
}
