//! The market service: instruments, last trade, top of book and one-minute
//! OHLC candles.
//!
//! Quotes and candles live in Redis (derived state), computed from the
//! TRADES stream read in order from its start on every boot, and top of book
//! from the market-data stream (each update supersedes the symbol's last).
//! The service keeps what it computed in memory too, so Redis can always be
//! made whole again: a marker key says Redis holds a complete copy, and
//! when it is gone (a redis-server restart loses everything) every quote
//! and candle is written again within one read of TRADES. (Without that, a
//! quote's trade count and volume restarted from zero after a Redis restart
//! and stayed wrong, even across platform restarts.)

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};

use crate::domain::Instrument;
use crate::kv::{Kv, KvError};
use crate::proto::common::{self, Candle, Quote};
use crate::proto::events::{engine_event, EngineEvent, FillEvent, MarketData};
use crate::proto::market::market_server::{Market, MarketServer};
use crate::proto::market::{
    GetCandlesReply, GetCandlesRequest, GetQuoteRequest, ListInstrumentsReply, ListInstrumentsRequest,
};
use crate::services::front::Front;
use crate::services::{decode, ensure_streams, shown, Deps, Follower, ServiceError, ServiceKind, Shutdown, TaskGroup};
use crate::telemetry::{grpc_call, trace, Rpc};

/// The gRPC service this module serves, as its metrics name it.
const GRPC_SERVICE: &str = crate::services::ServiceKind::Market.grpc_name();

const CANDLE_MS: i64 = 60_000;

/// A candle: open, high, low, close (ticks), volume (shares), and the match
/// sequence of the last fill it holds; stored in Redis as six decimals.
type StoredCandle = [i64; 6];

/// What the market knows of one symbol, all of it derived from the streams.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct SymbolState {
    /// The last fill's match sequence, price and quantity.
    match_seq: i64,
    last_ticks: i64,
    last_qty: i64,
    /// Fills and shares traded since the symbol's first trade.
    trades: i64,
    volume: i64,
    /// Keyed by the candle's start (ms since the epoch).
    candles: BTreeMap<i64, StoredCandle>,
    /// The last market-data update: input sequence, bid, bid size, ask, ask size.
    top: Option<[i64; 5]>,
}

impl SymbolState {
    /// Applies a fill (fills of a symbol arrive in match order); returns the
    /// start of the candle it changed, or None for a fill seen before.
    fn apply_fill(&mut self, ts_ms: i64, f: &FillEvent) -> Option<i64> {
        let seq = i64::try_from(f.match_seq).unwrap_or(i64::MAX);
        if seq <= self.match_seq {
            return None;
        }
        self.match_seq = seq;
        self.last_ticks = f.price_ticks;
        self.last_qty = f.qty;
        self.trades = self.trades.saturating_add(1);
        self.volume = self.volume.saturating_add(f.qty);
        let start = ts_ms.div_euclid(CANDLE_MS) * CANDLE_MS;
        let p = f.price_ticks;
        let c = self.candles.entry(start).or_insert([p, p, p, p, 0, 0]);
        c[1] = c[1].max(p);
        c[2] = c[2].min(p);
        c[3] = p;
        c[4] = c[4].saturating_add(f.qty);
        c[5] = seq;
        Some(start)
    }
}

/// Everything the market derived, and whether Redis is known to hold it all.
#[derive(Default)]
struct State {
    symbols: BTreeMap<String, SymbolState>,
    /// Redis held a complete copy at the last check of its marker key.
    redis_whole: bool,
    /// A write to Redis failed, so one given up on may still land until
    /// then (see [`LATE_WRITES_FOR`]): till then Redis is checked each round.
    late_writes_until: Option<crate::time::Instant>,
    /// When Redis was last compared with what the market derived (at most
    /// once per [`LATE_WRITES_CHECK_EVERY`]).
    late_writes_checked: Option<crate::time::Instant>,
}

impl State {
    /// A write failed: Redis may lack it, or get it late, over newer ones.
    fn write_failed(&mut self) {
        self.redis_whole = false;
        self.late_writes_until = Some(crate::time::Instant::now() + LATE_WRITES_FOR);
    }
}

/// How long after a failed write the market checks that what Redis holds is
/// what it wrote last. A write that timed out may still be on its way and be
/// applied after newer ones (in the simulation it waits for the link to heal
/// plus madsim's retry backoff, at most 10 s; for real, TCP retransmits what
/// a closed connection had sent): without the check, a quote's top of book
/// stayed at an update the market had given up on (chaos seeds 413 and 872).
const LATE_WRITES_FOR: Duration = Duration::from_secs(30);

/// How often, during [`LATE_WRITES_FOR`], Redis is compared with what the
/// market derived. Each comparison reads a symbol's quote and all its
/// candles back; done on every read of TRADES (hundreds a second under
/// load, and every platform is in its first 30 s after a start) it cost
/// more than the writes themselves. A late write is found this much later
/// at most, beyond the next read (which waits at most 500 ms).
const LATE_WRITES_CHECK_EVERY: Duration = Duration::from_millis(100);

/// What a read of TRADES changed: per symbol, whether the quote's trade
/// fields did and which candles.
type Changes = BTreeMap<String, BTreeSet<i64>>;

/// Runs the market service until `shutdown`.
pub async fn serve(deps: Deps, shutdown: Shutdown) -> Result<(), ServiceError> {
    let addr = deps.cfg.addrs.market;
    let mut front = Front::listen(ServiceKind::Market, addr, shutdown.clone()).await;
    let Some(tasks) = front.rebuilding(rebuild(&deps, &shutdown)).await? else { return Ok(()) };
    tracing::info!(%addr, "market serving");
    front.serve(MarketServer::new(MarketSvc { deps: Arc::new(deps) }), tasks).await
}

/// Each symbol's last update so far, and the tasks that follow the streams from here.
async fn rebuild(deps: &Deps, shutdown: &Shutdown) -> Result<TaskGroup, ServiceError> {
    ensure_streams(deps).await?;
    let names = deps.cfg.names();
    let md = Follower::open(deps, names.md_stream(), names.md_all(), shutdown.clone()).await?;
    // A market that died with writes on their way (Redis cut off) may see
    // them land after it started again, over what it writes now (chaos seed
    // 872 with restart_all): Redis is watched from the start.
    let watch = Some(crate::time::Instant::now() + LATE_WRITES_FOR);
    let state = Arc::new(Mutex::new(State { late_writes_until: watch, ..State::default() }));
    // Each symbol's last update so far (the tail gives only those from now on).
    for inst in &deps.cfg.instruments {
        let last = deps.bus.last_on_subject(&names.md_stream(), &names.md_of(&inst.symbol)).await?;
        if let Some(md) = last.and_then(|m| decode::<MarketData>(&names.md_stream(), m.seq, &m.payload).ok()) {
            state.lock().await.symbols.entry(inst.symbol.clone()).or_default().top = Some(top_of(&md));
        }
    }
    if deps.cfg.planted(crate::config::PlantedBug::QuoteRecountedOnRestart) {
        warm_start_counters(deps, &state).await;
    }
    let mut tasks = TaskGroup::default();
    let trades = follow_trades(deps.clone(), state.clone(), shutdown.clone());
    let metered = deps.clone();
    tasks.spawn(async move { crate::telemetry::cpu_metered(&metered, "market.trade", trades).await });
    tasks.spawn(follow_md(deps.clone(), state, md));
    tasks.spawn(crate::services::keep_streams(deps.clone(), &[], shutdown.clone()));
    Ok(tasks)
}

/// Plants [`crate::config::PlantedBug::QuoteRecountedOnRestart`]: each
/// symbol's trade count and volume are taken from the quote Redis holds,
/// though TRADES is then replayed from its start on top of them.
async fn warm_start_counters(deps: &Deps, state: &Mutex<State>) {
    for inst in &deps.cfg.instruments {
        let key = deps.cfg.names().key(&format!("market:quote:{}", inst.symbol));
        let Ok(q) = deps.kv.hgetall(&key).await else { continue };
        let mut state = state.lock().await;
        let s = state.symbols.entry(inst.symbol.clone()).or_default();
        s.trades = field_i64(q.get("trades"));
        s.volume = field_i64(q.get("volume"));
    }
}

async fn follow_trades(deps: Deps, state: Arc<Mutex<State>>, shutdown: Shutdown) {
    let names = deps.cfg.names();
    let (stream, filter) = (names.trades_stream(), names.trades_all());
    let mut next = 1;
    let mut changes = Changes::new();
    loop {
        let read = tokio::select! {
            biased;
            _ = shutdown.clone() => return,
            r = deps.bus.read(&stream, &filter, next, 512, Duration::from_millis(500)) => r,
        };
        let msgs = match read {
            Ok(msgs) => msgs,
            Err(e) => {
                tracing::warn!(error = %e, "market read failed; retrying");
                crate::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut state = state.lock().await;
        for m in &msgs {
            deps.work("market.trade").await;
            next = m.seq + 1;
            let Ok(event) = decode::<EngineEvent>(&stream, m.seq, &m.payload) else {
                tracing::error!(seq = m.seq, "undecodable trade event skipped by market");
                continue;
            };
            if let Some(engine_event::Kind::Fill(f)) = &event.kind {
                let symbol = state.symbols.entry(event.symbol.clone()).or_default();
                if let Some(candle) = symbol.apply_fill(event.ts_ms, f) {
                    changes.entry(event.symbol).or_default().insert(candle);
                }
            }
        }
        // Unwritten changes stay for the next round; a failed check of the
        // marker counts as Redis not whole.
        let stored = match store(&deps, &mut state, &changes).await {
            Ok(()) => {
                changes.clear();
                check_late_writes(&deps, &mut state).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = stored {
            tracing::warn!(error = %e, "market update not stored; retrying");
            state.write_failed();
            drop(state);
            crate::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn num(v: i64) -> Bytes {
    Bytes::from(v.to_string())
}

/// Brings Redis up to date: the `changes` alone while its marker key says it
/// holds everything else, otherwise everything, then the marker (written
/// last: present means a complete copy was written since Redis last started).
async fn store(deps: &Deps, state: &mut State, changes: &Changes) -> Result<(), KvError> {
    let marker = deps.cfg.names().key("market:whole");
    if state.redis_whole && deps.kv.get(&marker).await?.is_none() {
        tracing::warn!("Redis lost the market's data; writing every quote and candle again");
        state.redis_whole = false;
    }
    let names = deps.cfg.names();
    let kv = deps.kv.as_ref();
    for (symbol, s) in &state.symbols {
        let changed = changes.get(symbol);
        if state.redis_whole && changed.is_none() {
            continue;
        }
        let candles: Vec<(String, Bytes)> = s
            .candles
            .iter()
            .filter(|(start, _)| !state.redis_whole || changed.is_some_and(|c| c.contains(start)))
            .map(|(start, c)| (candle_field(*start), candle_value(c)))
            .collect();
        if !candles.is_empty() {
            let fields: Vec<(&str, Bytes)> = candles.iter().map(|(f, v)| (f.as_str(), v.clone())).collect();
            kv.hset(&names.key(&format!("market:candles:{symbol}")), &fields).await?;
        }
        write_quote(kv, &names.key(&format!("market:quote:{symbol}")), s, !state.redis_whole).await?;
    }
    if !state.redis_whole {
        kv.set(&marker, Bytes::from_static(b"1")).await?;
        state.redis_whole = true;
    }
    Ok(())
}

/// While a write given up on may still land (see [`LATE_WRITES_FOR`]),
/// compares what Redis holds with what the market derived, and has
/// everything written again when they differ.
async fn check_late_writes(deps: &Deps, state: &mut State) -> Result<(), KvError> {
    let Some(until) = state.late_writes_until else { return Ok(()) };
    let now = crate::time::Instant::now();
    if now >= until {
        state.late_writes_until = None;
        return Ok(());
    }
    if state.late_writes_checked.is_some_and(|at| now < at + LATE_WRITES_CHECK_EVERY) {
        return Ok(());
    }
    state.late_writes_checked = Some(now);
    let names = deps.cfg.names();
    for (symbol, s) in &state.symbols {
        let quote = deps.kv.hgetall(&names.key(&format!("market:quote:{symbol}"))).await?;
        let candles = deps.kv.hgetall(&names.key(&format!("market:candles:{symbol}"))).await?;
        let quote_agrees = quote_fields(s, true).iter().all(|(f, v)| quote.get(*f) == Some(v));
        let candles_agree =
            s.candles.iter().all(|(start, c)| candles.get(&candle_field(*start)) == Some(&candle_value(c)));
        if !quote_agrees || !candles_agree {
            tracing::warn!(
                symbol,
                "Redis holds an older market write (one given up on, applied late); writing everything again"
            );
            state.redis_whole = false;
            return Ok(());
        }
    }
    Ok(())
}

/// A candle's field in its symbol's hash: its start, zero-padded so fields sort by time.
fn candle_field(start_ms: i64) -> String {
    format!("{start_ms:015}")
}

/// A candle as stored: its six numbers, comma-separated.
fn candle_value(c: &StoredCandle) -> Bytes {
    Bytes::from(c.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(","))
}

/// Writes a symbol's quote: the trade fields (when it traded), and the top
/// of book too when `with_top`.
async fn write_quote(kv: &dyn Kv, key: &str, s: &SymbolState, with_top: bool) -> Result<(), KvError> {
    let fields = quote_fields(s, with_top);
    if fields.is_empty() {
        return Ok(());
    }
    kv.hset(key, &fields).await
}

/// A symbol's quote as stored: the trade fields (when it traded), and the
/// top of book too (when there is one) if `with_top`.
fn quote_fields(s: &SymbolState, with_top: bool) -> Vec<(&'static str, Bytes)> {
    let mut fields = Vec::new();
    if s.match_seq > 0 {
        fields.extend([
            ("match_seq", num(s.match_seq)),
            ("last_ticks", num(s.last_ticks)),
            ("last_qty", num(s.last_qty)),
            ("trades", num(s.trades)),
            ("volume", num(s.volume)),
        ]);
    }
    if let (true, Some(top)) = (with_top, s.top) {
        fields.extend(["book_seq", "bid_ticks", "bid_qty", "ask_ticks", "ask_qty"].into_iter().zip(top.map(num)));
    }
    fields
}

fn field_i64(v: Option<&Bytes>) -> i64 {
    v.and_then(|b| std::str::from_utf8(b).ok()).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// A market-data update's top of book as [`SymbolState::top`] keeps it.
fn top_of(md: &MarketData) -> [i64; 5] {
    [i64::try_from(md.input_seq).unwrap_or(i64::MAX), md.bid_ticks, md.bid_qty, md.ask_ticks, md.ask_qty]
}

async fn follow_md(deps: Deps, state: Arc<Mutex<State>>, mut updates: Follower) {
    while let Some((_, md)) = updates.next::<MarketData>().await {
        // Each update supersedes the symbol's last: of what has arrived
        // together, only the newest of each symbol is written.
        let mut newest = BTreeMap::new();
        newest.insert(md.symbol.clone(), md);
        while let Some((_, md)) = updates.next_ready::<MarketData>() {
            newest.insert(md.symbol.clone(), md);
        }
        let mut state = state.lock().await;
        for md in newest.values() {
            if deps.cfg.instrument(&md.symbol).is_none() {
                continue;
            }
            let top = top_of(md);
            state.symbols.entry(md.symbol.clone()).or_default().top = Some(top);
            let key = deps.cfg.names().key(&format!("market:quote:{}", md.symbol));
            let fields: Vec<(&str, Bytes)> =
                ["book_seq", "bid_ticks", "bid_qty", "ask_ticks", "ask_qty"].into_iter().zip(top.map(num)).collect();
            if let Err(e) = deps.kv.hset(&key, &fields).await {
                tracing::warn!(error = %e, "top of book not stored");
                state.write_failed();
            }
        }
    }
}

struct MarketSvc {
    deps: Arc<Deps>,
}

impl MarketSvc {
    fn instrument(&self, symbol: &str) -> Result<&Instrument, Status> {
        self.deps
            .cfg
            .instrument(symbol)
            .ok_or_else(|| Status::not_found(format!("symbol: unknown symbol {}", shown(symbol))))
    }
}

fn kv_status(e: KvError) -> Status {
    Status::unavailable(e.to_string())
}

#[tonic::async_trait]
impl Market for MarketSvc {
    async fn list_instruments(
        &self,
        req: Request<ListInstrumentsRequest>,
    ) -> Result<Response<ListInstrumentsReply>, Status> {
        let rpc = Rpc::unary(GRPC_SERVICE, "ListInstruments", "market.list_instruments");
        grpc_call(&self.deps, rpc, trace::of(&req), async move {
            let instruments = self
                .deps
                .cfg
                .instruments
                .iter()
                .map(|i| common::Instrument {
                    symbol: i.symbol.clone(),
                    tick_cents: i.tick_cents,
                    lot_shares: i.lot_shares,
                    min_price_cents: i.min_price_ticks * i.tick_cents,
                    max_price_cents: i.max_price_ticks * i.tick_cents,
                })
                .collect();
            Ok(Response::new(ListInstrumentsReply { instruments }))
        })
        .await
    }

    async fn get_quote(&self, req: Request<GetQuoteRequest>) -> Result<Response<Quote>, Status> {
        let rpc = Rpc::unary(GRPC_SERVICE, "GetQuote", "market.get_quote");
        grpc_call(&self.deps, rpc, trace::of(&req), async move {
            let symbol = req.into_inner().symbol;
            let tick = self.instrument(&symbol)?.tick_cents;
            // Redis holds what this service wrote; read defensively all the same.
            let key = self.deps.cfg.names().key(&format!("market:quote:{symbol}"));
            let q = self.deps.kv.hgetall(&key).await.map_err(kv_status)?;
            let get = |f: &str| field_i64(q.get(f));
            Ok(Response::new(Quote {
                symbol,
                last_price_cents: get("last_ticks").saturating_mul(tick),
                last_qty: get("last_qty"),
                bid_cents: get("bid_ticks").saturating_mul(tick),
                bid_qty: get("bid_qty"),
                ask_cents: get("ask_ticks").saturating_mul(tick),
                ask_qty: get("ask_qty"),
                trades: u64::try_from(get("trades")).unwrap_or(0),
                volume: get("volume"),
                match_seq: u64::try_from(get("match_seq")).unwrap_or(0),
                book_seq: u64::try_from(get("book_seq")).unwrap_or(0),
            }))
        })
        .await
    }

    async fn get_candles(&self, req: Request<GetCandlesRequest>) -> Result<Response<GetCandlesReply>, Status> {
        let rpc = Rpc::unary(GRPC_SERVICE, "GetCandles", "market.get_candles");
        grpc_call(&self.deps, rpc, trace::of(&req), async move {
            let req = req.into_inner();
            let tick = self.instrument(&req.symbol)?.tick_cents;
            let key = self.deps.cfg.names().key(&format!("market:candles:{}", req.symbol));
            let all = self.deps.kv.hgetall(&key).await.map_err(kv_status)?;
            let mut candles: Vec<Candle> = all
                .iter()
                .filter_map(|(start, v)| {
                    let c: Vec<i64> = std::str::from_utf8(v).ok()?.split(',').filter_map(|x| x.parse().ok()).collect();
                    (c.len() == 6).then(|| Candle {
                        start_ms: start.parse().unwrap_or(0),
                        open_cents: c[0].saturating_mul(tick),
                        high_cents: c[1].saturating_mul(tick),
                        low_cents: c[2].saturating_mul(tick),
                        close_cents: c[3].saturating_mul(tick),
                        volume: c[4],
                    })
                })
                .collect();
            if req.limit > 0 && candles.len() > req.limit as usize {
                candles.drain(..candles.len() - req.limit as usize);
            }
            Ok(Response::new(GetCandlesReply { candles }))
        })
        .await
    }
}
