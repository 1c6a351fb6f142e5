//! The market service: instruments, last trade, top of book and one-minute
//! OHLC candles.
//!
//! Quotes and candles live in Redis (derived state). Trades come from the
//! TRADES stream read in order; every Redis write is idempotent on the fill's
//! match sequence, so the service replays TRADES from the start on every boot
//! and a Redis that lost its data is rebuilt. Top of book comes from the
//! market-data stream and is superseded by each update.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tonic::{Request, Response, Status};

use crate::domain::Instrument;
use crate::kv::KvError;
use crate::proto::common::{self, Candle, Quote};
use crate::proto::events::{engine_event, EngineEvent, FillEvent, MarketData};
use crate::proto::market::market_server::{Market, MarketServer};
use crate::proto::market::{
    GetCandlesReply, GetCandlesRequest, GetQuoteRequest, ListInstrumentsReply, ListInstrumentsRequest,
};
use crate::services::{decode, ensure_streams, Deps, Follower, ServiceError, Shutdown, TaskGroup};

const CANDLE_MS: i64 = 60_000;

/// Runs the market service until `shutdown`.
pub async fn serve(deps: Deps, shutdown: Shutdown) -> Result<(), ServiceError> {
    ensure_streams(&deps).await?;
    let names = deps.cfg.names();
    let md = Follower::open(&deps, names.md_stream(), names.md_all(), shutdown.clone()).await?;
    let mut tasks = TaskGroup::default();
    tasks.spawn(follow_trades(deps.clone(), shutdown.clone()));
    tasks.spawn(follow_md(deps.clone(), md));
    let addr = deps.cfg.addrs.market;
    tracing::info!(%addr, "market serving");
    let server = crate::services::grpc_server()
        .add_service(MarketServer::new(MarketSvc { deps: Arc::new(deps) }))
        .serve_with_shutdown(addr, shutdown);
    tasks.serve_until_failure(addr, server).await
}

async fn follow_trades(deps: Deps, shutdown: Shutdown) {
    let names = deps.cfg.names();
    let (stream, filter) = (names.trades_stream(), names.trades_all());
    let mut next = 1;
    loop {
        let read = tokio::select! {
            biased;
            _ = shutdown.clone() => return,
            r = deps.bus.read(&stream, &filter, next, 512, Duration::from_millis(500)) => r,
        };
        match read {
            Ok(msgs) => {
                let Some(last) = msgs.last().map(|m| m.seq) else { continue };
                let mut fills: BTreeMap<String, Vec<(i64, FillEvent)>> = BTreeMap::new();
                for m in &msgs {
                    deps.work("market.trade").await;
                    let Ok(event) = decode::<EngineEvent>(&stream, m.seq, &m.payload) else {
                        tracing::error!(seq = m.seq, "undecodable trade event skipped by market");
                        continue;
                    };
                    if let Some(engine_event::Kind::Fill(f)) = event.kind {
                        fills.entry(event.symbol).or_default().push((event.ts_ms, f));
                    }
                }
                for (symbol, fills) in &fills {
                    while let Err(e) = apply_fills(&deps, symbol, fills).await {
                        tracing::warn!(error = %e, "market update failed; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                next = last + 1;
            }
            Err(e) => {
                tracing::warn!(error = %e, "market read failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn field_i64(v: Option<&Bytes>) -> i64 {
    v.and_then(|b| std::str::from_utf8(b).ok()).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// A candle as stored: open, high, low, close, volume, and the match
/// sequence of the last fill it holds (what makes an update idempotent).
type StoredCandle = [i64; 6];

fn parse_candle(stored: Option<&Bytes>) -> Option<StoredCandle> {
    let text = std::str::from_utf8(stored?).ok()?;
    let values: Vec<i64> = text.split(',').filter_map(|x| x.parse().ok()).collect();
    values.try_into().ok()
}

/// Applies one symbol's fills, in match order, to its candles and its quote,
/// each fill at most once (a fill whose match sequence the stored state has
/// seen changes nothing): one read and one write per candle and for the quote,
/// whatever the number of fills.
async fn apply_fills(deps: &Deps, symbol: &str, fills: &[(i64, FillEvent)]) -> Result<(), KvError> {
    let names = deps.cfg.names();
    let kv = deps.kv.as_ref();
    let candles_key = names.key(&format!("market:candles:{symbol}"));
    let mut by_bucket: BTreeMap<i64, Vec<&FillEvent>> = BTreeMap::new();
    for (ts_ms, f) in fills {
        by_bucket.entry(ts_ms.div_euclid(CANDLE_MS) * CANDLE_MS).or_default().push(f);
    }
    for (bucket, fills) in &by_bucket {
        let field = format!("{bucket:015}");
        let old = parse_candle(kv.hget(&candles_key, &field).await?.as_ref());
        let mut c = old;
        for f in fills {
            let c = c.get_or_insert([f.price_ticks, f.price_ticks, f.price_ticks, f.price_ticks, 0, 0]);
            if f.match_seq as i64 > c[5] {
                c[1] = c[1].max(f.price_ticks);
                c[2] = c[2].min(f.price_ticks);
                c[3] = f.price_ticks;
                c[4] += f.qty;
                c[5] = f.match_seq as i64;
            }
        }
        if let Some(c) = c.filter(|c| Some(*c) != old) {
            let value = c.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",");
            kv.hset(&candles_key, &[(&field, Bytes::from(value))]).await?;
        }
    }
    let quote_key = names.key(&format!("market:quote:{symbol}"));
    let q = kv.hgetall(&quote_key).await?;
    let (mut seq, mut trades, mut volume) =
        (field_i64(q.get("match_seq")), field_i64(q.get("trades")), field_i64(q.get("volume")));
    let mut last = None;
    for (_, f) in fills {
        if f.match_seq as i64 > seq {
            seq = f.match_seq as i64;
            trades += 1;
            volume += f.qty;
            last = Some(f);
        }
    }
    if let Some(f) = last {
        let num = |v: i64| Bytes::from(v.to_string());
        kv.hset(
            &quote_key,
            &[
                ("match_seq", num(seq)),
                ("last_ticks", num(f.price_ticks)),
                ("last_qty", num(f.qty)),
                ("trades", num(trades)),
                ("volume", num(volume)),
            ],
        )
        .await?;
    }
    Ok(())
}

async fn follow_md(deps: Deps, mut updates: Follower) {
    while let Some((_, md)) = updates.next::<MarketData>().await {
        // Each update supersedes the symbol's last: of what has arrived
        // together, only the newest of each symbol is written.
        let mut newest = BTreeMap::new();
        newest.insert(md.symbol.clone(), md);
        while let Some((_, md)) = updates.next_ready::<MarketData>() {
            newest.insert(md.symbol.clone(), md);
        }
        for md in newest.values() {
            let key = deps.cfg.names().key(&format!("market:quote:{}", md.symbol));
            let num = |v: i64| Bytes::from(v.to_string());
            let fields = [
                ("book_seq", num(md.input_seq as i64)),
                ("bid_ticks", num(md.bid_ticks)),
                ("bid_qty", num(md.bid_qty)),
                ("ask_ticks", num(md.ask_ticks)),
                ("ask_qty", num(md.ask_qty)),
            ];
            if let Err(e) = deps.kv.hset(&key, &fields).await {
                tracing::warn!(error = %e, "top of book not stored");
            }
        }
    }
}

struct MarketSvc {
    deps: Arc<Deps>,
}

impl MarketSvc {
    fn instrument(&self, symbol: &str) -> Result<&Instrument, Status> {
        self.deps.cfg.instrument(symbol).ok_or_else(|| Status::not_found(format!("symbol: unknown symbol {symbol:?}")))
    }
}

fn kv_status(e: KvError) -> Status {
    Status::unavailable(e.to_string())
}

#[tonic::async_trait]
impl Market for MarketSvc {
    async fn list_instruments(
        &self,
        _: Request<ListInstrumentsRequest>,
    ) -> Result<Response<ListInstrumentsReply>, Status> {
        self.deps.work("market.list_instruments").await;
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
    }

    async fn get_quote(&self, req: Request<GetQuoteRequest>) -> Result<Response<Quote>, Status> {
        self.deps.work("market.get_quote").await;
        let symbol = req.into_inner().symbol;
        let tick = self.instrument(&symbol)?.tick_cents;
        let key = self.deps.cfg.names().key(&format!("market:quote:{symbol}"));
        let q = self.deps.kv.hgetall(&key).await.map_err(kv_status)?;
        let get = |f: &str| field_i64(q.get(f));
        Ok(Response::new(Quote {
            symbol,
            last_price_cents: get("last_ticks") * tick,
            last_qty: get("last_qty"),
            bid_cents: get("bid_ticks") * tick,
            bid_qty: get("bid_qty"),
            ask_cents: get("ask_ticks") * tick,
            ask_qty: get("ask_qty"),
            trades: get("trades") as u64,
            volume: get("volume"),
        }))
    }

    async fn get_candles(&self, req: Request<GetCandlesRequest>) -> Result<Response<GetCandlesReply>, Status> {
        self.deps.work("market.get_candles").await;
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
                    open_cents: c[0] * tick,
                    high_cents: c[1] * tick,
                    low_cents: c[2] * tick,
                    close_cents: c[3] * tick,
                    volume: c[4],
                })
            })
            .collect();
        if req.limit > 0 && candles.len() > req.limit as usize {
            candles.drain(..candles.len() - req.limit as usize);
        }
        Ok(Response::new(GetCandlesReply { candles }))
    }
}
