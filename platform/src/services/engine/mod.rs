//! The matching engine: one [`Matcher`] per symbol of its shard.
//!
//! It reads each symbol's ORDERS subject in stream order (gap-free), matches,
//! and publishes every outcome to TRADES — one event per fill with the fill id
//! as message id, and at least one event per input — plus a market-data update.
//! What one read brings is matched first and its outputs then published in one
//! pipelined batch, in order.
//!
//! Recovery: the last TRADES event of a symbol names the input it came from
//! (`input_seq`) and its position (`index`). A restarted engine replays the
//! symbol's ORDERS up to that input silently, re-publishes only the missing
//! tail of that input's events, and goes on from the next input. So nothing is
//! published twice and nothing is lost, with or without Redis.

pub mod matcher;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tonic::{Request, Response, Status};

use crate::bus::{read_to_end, Publish};
use crate::proto::engine::engine_server::{Engine, EngineServer};
use crate::proto::engine::{BookView, GetBookRequest, Level};
use crate::proto::events::{engine_event, EngineEvent, MarketData, OrderEvent};
use crate::services::front::Front;
use crate::services::{
    decode, ensure_streams, publish_until_stored, Deps, ServiceError, ServiceKind, Shutdown, TaskGroup,
};
use crate::telemetry::{self, grpc_call, trace, Rpc};

/// The gRPC service this module serves, as its metrics name it.
const GRPC_SERVICE: &str = crate::services::ServiceKind::Engine.grpc_name();

pub use matcher::Matcher;

type Books = Arc<Mutex<BTreeMap<String, Matcher>>>;

/// Runs engine shard `shard` until `shutdown`.
pub async fn serve(deps: Deps, shard: usize, shutdown: Shutdown) -> Result<(), ServiceError> {
    let Some(symbols) = deps.cfg.engine_shards.get(shard).cloned() else {
        return Err(ServiceError::Config(format!("engine shard {shard} does not exist")));
    };
    let addr = deps.cfg.addrs.engines[shard];
    let mut front = Front::listen(ServiceKind::Engine, addr, shutdown.clone()).await;
    let Some((books, tasks)) = front.rebuilding(start(&deps, &symbols, &shutdown)).await? else { return Ok(()) };
    tracing::info!(%addr, shard, ?symbols, "engine serving");
    front.serve(EngineServer::new(EngineSvc { deps, books }), tasks).await
}

/// The books of `symbols` recovered, each matching from there in a task of its own.
async fn start(deps: &Deps, symbols: &[String], shutdown: &Shutdown) -> Result<(Books, TaskGroup), ServiceError> {
    ensure_streams(deps).await?;
    let books: Books = Arc::new(Mutex::new(BTreeMap::new()));
    let mut tasks = TaskGroup::default();
    for symbol in symbols {
        let matcher = recover(deps, symbol).await?;
        let next_seq = matcher.last_input_seq + 1;
        books.lock().expect("books lock").insert(symbol.clone(), matcher);
        let run = run_symbol(deps.clone(), books.clone(), symbol.clone(), next_seq, shutdown.clone());
        let deps = deps.clone();
        tasks.spawn_fallible(async move { crate::telemetry::cpu_metered(&deps, "engine.match", run).await });
    }
    tasks.spawn(crate::services::keep_streams(deps.clone(), &[], shutdown.clone()));
    Ok((books, tasks))
}

/// Rebuilds a symbol's matcher from the streams (see the module docs).
pub async fn recover(deps: &Deps, symbol: &str) -> Result<Matcher, ServiceError> {
    let names = deps.cfg.names();
    let trades = names.trades_stream();
    let last = match deps.bus.last_on_subject(&trades, &names.trades_of(symbol)).await? {
        Some(m) => Some(decode::<EngineEvent>(&trades, m.seq, &m.payload)?),
        None => None,
    };
    let (done_input, done_index) = last.map_or((0, None), |e| (e.input_seq, Some(e.index)));
    let orders = names.orders_stream();
    let inputs = read_to_end(deps.bus.as_ref(), &orders, &names.orders_of(symbol), 1).await?;
    let mut matcher = Matcher::new(symbol);
    let mut republished = 0usize;
    // Planted bug: the replay forgets where it stopped and tags what it
    // publishes as a new generation, which the broker cannot de-duplicate.
    let replay_generation =
        deps.cfg.planted(crate::config::PlantedBug::DuplicateFillsOnReplay).then(|| deps.clock.now_ms());
    for m in &inputs {
        let input: OrderEvent = decode(&orders, m.seq, &m.payload)?;
        let outputs = matcher.apply(m.seq, &input);
        let trace = m.trace_parent.as_deref().map(|t| trace::child(t, "engine"));
        if let Some(generation) = replay_generation {
            for event in &outputs.events {
                let msg_id = format!("{}@{generation}", matcher::msg_id(event));
                let msg = Publish { msg_id, ..event_msg(deps, event, None) };
                publish_until_stored(deps.bus.as_ref(), &msg).await;
                republished += 1;
            }
            continue;
        }
        if m.seq < done_input {
            continue;
        }
        for event in &outputs.events {
            let already = m.seq == done_input && done_index.is_some_and(|i| event.index <= i);
            if !already {
                publish_event(deps, event, &trace).await;
                republished += 1;
            }
        }
        publish_market_data(deps, &outputs.market_data).await;
    }
    tracing::info!(symbol, inputs = inputs.len(), done_input, republished, "engine recovered");
    Ok(matcher)
}

async fn publish_event(deps: &Deps, event: &EngineEvent, trace: &Option<String>) {
    publish_until_stored(deps.bus.as_ref(), &event_msg(deps, event, trace.clone())).await;
}

/// Market data is best effort: a lost update is superseded by the next one.
/// It carries the engine's clock at publication (not the input's), so that
/// clients can measure fan-out; replays need no byte-identical market data.
async fn publish_market_data(deps: &Deps, md: &MarketData) {
    let msg = market_data_msg(deps, md, deps.clock.now_us());
    if let Err(e) = deps.bus.publish(&msg.subject, &msg.msg_id, msg.payload).await {
        tracing::debug!(error = %e, "market data not published");
    }
}

fn market_data_msg(deps: &Deps, md: &MarketData, now_us: i64) -> Publish {
    let md = MarketData { ts_ms: now_us.div_euclid(1_000), ts_us: now_us, ..md.clone() };
    Publish {
        subject: deps.cfg.names().md_of(&md.symbol),
        msg_id: format!("{}-md{}", md.symbol, md.input_seq),
        payload: Bytes::from(md.encode_to_vec()),
        trace_parent: None,
    }
}

/// An event's message, carrying the trace of the input that made it.
fn event_msg(deps: &Deps, event: &EngineEvent, trace: Option<String>) -> Publish {
    Publish {
        subject: deps.cfg.names().trades_of(&event.symbol),
        msg_id: matcher::msg_id(event),
        payload: Bytes::from(event.encode_to_vec()),
        trace_parent: trace,
    }
}

/// What one read batch of inputs produced, in input order.
enum Output {
    /// An event, with the trace of the input that made it.
    Event(EngineEvent, Option<String>),
    MarketData(MarketData),
}

/// Publishes a batch's outputs in order, pipelined (one round trip for the
/// batch, not two per input). Every event must be stored: from the first
/// event the batch did not store on, the events are published again one by
/// one until stored (their ids make a repeat of a stored one a duplicate, so
/// none is stored twice); market data is best effort. Returns whether every
/// market-data update was stored.
async fn publish_outputs(deps: &Deps, mut outputs: Vec<Output>) -> bool {
    if outputs.len() > 1 && crate::services::buggify(0.02) {
        // A pause inside a batch, between two of its events: a crash here must
        // not lose or repeat any.
        let rest = outputs.split_off(outputs.len() / 2);
        let first = publish_pipelined(deps, outputs).await;
        crate::time::sleep(Duration::from_millis(20)).await;
        publish_pipelined(deps, rest).await && first
    } else {
        publish_pipelined(deps, outputs).await
    }
}

async fn publish_pipelined(deps: &Deps, outputs: Vec<Output>) -> bool {
    let now_us = deps.clock.now_us();
    let msgs = outputs
        .iter()
        .map(|o| match o {
            Output::Event(e, trace) => event_msg(deps, e, trace.clone()),
            Output::MarketData(md) => market_data_msg(deps, md, now_us),
        })
        .collect();
    let results = deps.bus.publish_batch(msgs).await;
    assert_eq!(results.len(), outputs.len(), "one publish result per output");
    let md_stored = outputs.iter().zip(&results).all(|(o, r)| matches!(o, Output::Event(..)) || r.is_ok());
    let first_unstored = outputs.iter().zip(&results).position(|(o, r)| matches!(o, Output::Event(..)) && r.is_err());
    let Some(first) = first_unstored else { return md_stored };
    if let Err(e) = &results[first] {
        tracing::warn!(error = %e, "engine batch publish failed; publishing its events one by one");
    }
    if deps.cfg.planted(crate::config::PlantedBug::RepublishUnderFreshId) {
        republish_gaps_as_new(deps, &outputs, &results).await;
    }
    for output in &outputs[first..] {
        if let Output::Event(event, trace) = output {
            publish_event(deps, event, trace).await;
        }
    }
    md_stored
}

/// Planted bug [`crate::config::PlantedBug::RepublishUnderFreshId`]: an event
/// that timed out before a later output of its batch was acknowledged is taken
/// for one the broker dropped, and published again as a new message.
async fn republish_gaps_as_new(
    deps: &Deps,
    outputs: &[Output],
    results: &[Result<crate::bus::PubAck, crate::bus::BusError>],
) {
    let Some(last_acked) = results.iter().rposition(Result::is_ok) else { return };
    for (output, result) in outputs.iter().zip(results).take(last_acked) {
        if let (Output::Event(event, _), Err(crate::bus::BusError::Timeout(_))) = (output, result) {
            let msg = event_msg(deps, event, None);
            let msg = Publish { msg_id: format!("{}-again", msg.msg_id), ..msg };
            publish_until_stored(deps.bus.as_ref(), &msg).await;
        }
    }
}

/// How often an engine checks that MD holds its symbol's top of book.
const MD_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Matches one symbol's inputs until shutdown. An input that does not decode
/// stops the shard with its place in ORDERS: the engine cannot skip an input
/// (the book would diverge from every replay), and its recovery would stop
/// at the same input.
async fn run_symbol(
    deps: Deps,
    books: Books,
    symbol: String,
    mut next_seq: u64,
    shutdown: Shutdown,
) -> Result<(), ServiceError> {
    let names = deps.cfg.names();
    let (orders, filter) = (names.orders_stream(), names.orders_of(&symbol));
    // The top of book is sent again, until stored, when MD may not hold it:
    // at start (a quiet symbol's last update may be gone), after an update
    // was lost, and when MD has nothing for the symbol (the broker restarted
    // and took the memory stream with it). Otherwise quotes would show a book
    // that is no longer there, or none for a book that is.
    let mut md_behind = true;
    let mut md_checked = crate::time::Instant::now();
    loop {
        if md_behind {
            let top = books.lock().expect("books lock").get(&symbol).expect("own symbol").top_of_book();
            let msg = market_data_msg(&deps, &top, deps.clock.now_us());
            // The stream itself may be what is missing: made again at once, not at the next check.
            let _ = ensure_streams(&deps).await;
            md_behind = deps.bus.publish(&msg.subject, &msg.msg_id, msg.payload).await.is_err();
        } else if md_checked.elapsed() >= MD_CHECK_EVERY {
            md_checked = crate::time::Instant::now();
            let last = deps.bus.last_on_subject(&names.md_stream(), &names.md_of(&symbol)).await;
            md_behind = matches!(last, Ok(None));
        }
        let read = tokio::select! {
            biased;
            _ = shutdown.clone() => return Ok(()),
            r = deps.bus.read(&orders, &filter, next_seq, 256, Duration::from_millis(500)) => r,
        };
        let msgs = match read {
            Ok(msgs) => msgs,
            Err(e) => {
                tracing::warn!(symbol, error = %e, "engine read failed; retrying");
                crate::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(last_seq) = msgs.last().map(|m| m.seq) else { continue };
        metrics::counter!(telemetry::ENGINE_INPUTS, "symbol" => symbol.clone()).increment(msgs.len() as u64);
        let mut outputs = Vec::new();
        for m in msgs {
            let input: OrderEvent = decode(&orders, m.seq, &m.payload)
                .inspect_err(|e| tracing::error!(symbol, error = %e, "engine stops at an input it cannot read"))?;
            deps.work("engine.match").await;
            let trace = m.trace_parent.as_deref().map(|t| trace::child(t, "engine"));
            let out = telemetry::hop("engine.match", m.trace_parent.as_deref()).in_scope(|| {
                let out = books.lock().expect("books lock").get_mut(&symbol).expect("own symbol").apply(m.seq, &input);
                if deps.cfg.planted_cost == Some(crate::config::PlantedCost::BookScanPerOrder) {
                    planted_book_scan(books.lock().expect("books lock").get(&symbol).expect("own symbol"));
                }
                if let Some(t) = &trace {
                    let events = out.events.len();
                    tracing::debug!(trace_id = trace::trace_id(t), symbol, seq = m.seq, events, "engine: matched");
                }
                out
            });
            record_fills(&deps, &symbol, &out.events);
            outputs.extend(out.events.into_iter().map(|e| Output::Event(e, trace.clone())));
            outputs.push(Output::MarketData(out.market_data));
        }
        let resting = books.lock().expect("books lock").get(&symbol).expect("own symbol").resting_count();
        metrics::gauge!(telemetry::BOOK_DEPTH_ORDERS, "symbol" => symbol.clone()).set(resting as f64);
        md_behind |= !publish_outputs(&deps, outputs).await;
        next_seq = last_seq + 1;
    }
}

/// Planted cost [`crate::config::PlantedCost::BookScanPerOrder`]: the whole
/// book listed and its resting quantity summed, once per input. The sum goes
/// through `black_box`, so that the optimiser cannot drop the scan.
fn planted_book_scan(matcher: &Matcher) {
    let resting: i64 = matcher.book.resting_orders().iter().map(|&(.., remaining)| remaining.0).sum();
    std::hint::black_box(resting);
}

/// Counts the fills among one input's events, and their notional in cents.
fn record_fills(deps: &Deps, symbol: &str, events: &[EngineEvent]) {
    let tick_cents = deps.cfg.instrument(symbol).map_or(0, |i| i.tick_cents);
    for e in events {
        if let Some(engine_event::Kind::Fill(f)) = &e.kind {
            metrics::counter!(telemetry::FILLS, "symbol" => symbol.to_string()).increment(1);
            // Saturating: a metric, never a balance; the ledger checks the real sums.
            let cents = f.price_ticks.saturating_mul(tick_cents).saturating_mul(f.qty).max(0);
            metrics::counter!(telemetry::FILL_NOTIONAL_CENTS, "symbol" => symbol.to_string()).increment(cents as u64);
        }
    }
}

struct EngineSvc {
    deps: Deps,
    books: Books,
}

#[tonic::async_trait]
impl Engine for EngineSvc {
    async fn get_book(&self, req: Request<GetBookRequest>) -> Result<Response<BookView>, Status> {
        let rpc = Rpc::unary(GRPC_SERVICE, "GetBook", "engine.get_book");
        grpc_call(&self.deps, rpc, trace::of(&req), async move {
            let req = req.into_inner();
            let books = self.books.lock().expect("books lock");
            let m = books
                .get(&req.symbol)
                .ok_or_else(|| Status::not_found(format!("symbol {} is not on this engine shard", req.symbol)))?;
            let depth = if req.depth == 0 { 10 } else { req.depth as usize };
            let (bids, asks) = m.book.depth(depth);
            let level = |(p, q, n): (crate::domain::PriceTicks, crate::domain::Shares, u32)| Level {
                price_ticks: p.0,
                qty: q.0,
                orders: n,
            };
            Ok(Response::new(BookView {
                symbol: req.symbol,
                bids: bids.into_iter().map(level).collect(),
                asks: asks.into_iter().map(level).collect(),
                last_match_seq: m.book.last_match_seq(),
                last_input_seq: m.last_input_seq,
            }))
        })
        .await
    }
}
