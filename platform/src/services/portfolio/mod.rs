//! The portfolio service: accounts, deposits, cash, holdings, reservations,
//! and exactly-once settlement of fills.
//!
//! Every change is first made durable in the LEDGER stream (deposits,
//! reservations, releases; this service is its only writer) or comes from the
//! TRADES stream (fills, closes), and only then applied to the in-memory
//! [`Ledger`]. On start the ledger is rebuilt by replaying both streams, so a
//! restart or a Redis wipe loses nothing and applies nothing twice.

pub mod fold;
pub mod ledger;

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tokio::sync::{mpsc, oneshot, Mutex};
use tonic::{Request, Response, Status};

use crate::bus::{BusError, Publish};
use crate::config::PlantedBug;
use crate::domain::{AccountId, Cents, OrderId, PriceTicks, Shares};
use crate::proto::common::{Holding as HoldingView, PortfolioView};
use crate::proto::events::{self, ledger_event, EngineEvent, LedgerEvent};
use crate::proto::portfolio::portfolio_server::{Portfolio, PortfolioServer};
use crate::proto::portfolio::{
    DepositRequest, GetPortfolioRequest, ReleaseReply, ReleaseRequest, ReserveReply, ReserveRequest,
};
use crate::services::front::Front;
use crate::services::{
    bus_status, decode, ensure_streams, shown, side_from_proto, side_to_proto, Deps, ServiceError, ServiceKind,
    Shutdown, TaskGroup,
};
use crate::telemetry::{self, grpc_call, trace, Rpc};

/// The gRPC service this module serves, as its metrics name it.
const GRPC_SERVICE: &str = crate::services::ServiceKind::Portfolio.grpc_name();

pub use fold::{replay, Fold, ReplayOptions};
pub use ledger::{Ledger, LedgerError, Reservation, ReserveError};

/// The durable consumer of the TRADES stream.
pub const DURABLE: &str = "portfolio";

struct State {
    deps: Deps,
    fold: Mutex<Fold>,
}

/// The most LEDGER writes one group commit records.
const MAX_GROUP: usize = 256;
/// Writes waiting for the committer; a handler waits to hand one over when it is full.
const WRITE_QUEUE: usize = 4096;

/// Runs the portfolio service until `shutdown`.
pub async fn serve(deps: Deps, shutdown: Shutdown) -> Result<(), ServiceError> {
    let addr = deps.cfg.addrs.portfolio;
    let mut front = Front::listen(ServiceKind::Portfolio, addr, shutdown.clone()).await;
    let Some((state, writes, tasks)) = front.rebuilding(start(&deps, &shutdown)).await? else { return Ok(()) };
    tracing::info!(%addr, "portfolio serving");
    front.serve(PortfolioServer::new(PortfolioSvc { state, writes }), tasks).await
}

/// The accounts rebuilt, the queue of writes, and the tasks that follow
/// TRADES and commit the writes from here.
async fn start(deps: &Deps, shutdown: &Shutdown) -> Result<(Arc<State>, mpsc::Sender<Write>, TaskGroup), ServiceError> {
    ensure_streams(deps).await?;
    crate::services::ensure_trades_consumer(deps, DURABLE).await?;
    let fold = rebuild(deps).await?;
    let state = Arc::new(State { deps: deps.clone(), fold: Mutex::new(fold) });
    let (writes, queued) = mpsc::channel(WRITE_QUEUE);
    let mut tasks = TaskGroup::default();
    let (settle, metered) = (consume(state.clone(), shutdown.clone()), deps.clone());
    tasks.spawn_fallible(async move { crate::telemetry::cpu_metered(&metered, "portfolio.settle", settle).await });
    // The committer publishes what the reserve and release handlers queued: their work.
    let (committer, metered) = (commit(state.clone(), queued, shutdown.clone()), deps.clone());
    tasks.spawn(async move { crate::telemetry::cpu_metered(&metered, "portfolio.reserve", committer).await });
    tasks.spawn(crate::services::keep_streams(deps.clone(), &[DURABLE], shutdown.clone()));
    Ok((state, writes, tasks))
}

/// Replays LEDGER and TRADES, interleaved as the live service applied them,
/// into a fresh ledger (see [`fold`]).
pub async fn rebuild(deps: &Deps) -> Result<Fold, ServiceError> {
    let names = deps.cfg.names();
    let mut ledger = Ledger::new(&deps.cfg.instruments);
    if deps.cfg.planted(PlantedBug::SettleTwice) {
        ledger.plant_settle_twice();
    }
    let options = ReplayOptions {
        skip_closes: deps.cfg.planted(PlantedBug::NoReleaseOnCancel),
        ledger_first: deps.cfg.planted(PlantedBug::ReplayLedgerFirst),
    };
    let (ledger_stream, trades_stream) = (names.ledger_stream(), names.trades_stream());
    let ledger_msgs = crate::bus::read_to_end(deps.bus.as_ref(), &ledger_stream, "", 1).await?;
    let trades = crate::bus::read_to_end(deps.bus.as_ref(), &trades_stream, "", 1).await?;
    let fold = replay(Fold::new(ledger), (&ledger_stream, &ledger_msgs), (&trades_stream, &trades), options)
        .inspect_err(|e| tracing::error!(error = %e, "portfolio cannot rebuild its ledger"))?;
    tracing::info!(
        ledger_events = ledger_msgs.len(),
        trade_events = trades.len(),
        trades_applied = fold.trades_applied(),
        "portfolio rebuilt from streams"
    );
    Ok(fold)
}

/// Tells the world a fill is settled (best effort: the notice is informational).
async fn announce_settled(deps: &Deps, s: &ledger::FillSettlement) {
    let event = LedgerEvent {
        kind: Some(ledger_event::Kind::Settled(events::Settled {
            symbol: s.symbol.clone(),
            match_seq: s.match_seq,
            buy_order: s.buy_order.0,
            buyer: s.buyer.0,
            sell_order: s.sell_order.0,
            seller: s.seller.0,
        })),
        trades_applied: 0,
    };
    let subject = deps.cfg.names().ledger("settled");
    let msg_id = format!("settled-{}-{}", s.symbol, s.match_seq);
    if let Err(e) = deps.bus.publish(&subject, &msg_id, Bytes::from(event.encode_to_vec())).await {
        tracing::debug!(error = %e, "settlement notice not published");
    }
}

/// Follows TRADES through the durable consumer and applies each event in
/// stream order. A redelivery of an applied event is skipped; a delivery
/// that skips ahead (one before it was lost on the way) first has the gap
/// read from the stream and applied, so the ledger is always exactly
/// "TRADES through `trades_applied`", which is what a replay rebuilds.
async fn consume(state: Arc<State>, shutdown: Shutdown) -> Result<(), ServiceError> {
    let stream = state.deps.cfg.names().trades_stream();
    let in_order = !state.deps.cfg.planted(PlantedBug::SettleTwice);
    let mut gauges = ReservationGauges::default();
    loop {
        let fetched = tokio::select! {
            biased;
            _ = shutdown.clone() => return Ok(()),
            r = state.deps.bus.fetch(&stream, DURABLE, 256, Duration::from_millis(500)) => r,
        };
        let deliveries = match fetched {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "portfolio fetch failed; retrying");
                crate::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Acked together once the batch is applied: a crash before that
        // redelivers the batch, which the rebuilt ledger has applied already.
        let mut done = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            state.deps.work("portfolio.settle").await;
            let mut fold = state.fold.lock().await;
            if in_order && d.msg.seq > fold.trades_applied() + 1 {
                fill_gap(&state, &mut fold, d.msg.seq).await?;
            }
            apply_stored(&state, &mut fold, &d.msg)?;
            gauges.update(fold.ledger());
            drop(fold);
            if crate::services::buggify(0.02) {
                // No ack: the broker redelivers after the ack wait; settlement must stay once.
                continue;
            }
            done.push(d.token);
        }
        if let Err(e) = state.deps.bus.ack_many(&done).await {
            // Harmless: the redeliveries are recognised as applied.
            tracing::warn!(error = %e, "ack failed");
        }
    }
}

/// Applies one TRADES message. One that does not decode stops the service
/// (its replay would stop at the same place); one the ledger cannot apply is
/// a broken invariant: the engine trades only orders the portfolio reserved.
fn apply_stored(state: &State, fold: &mut Fold, m: &crate::bus::StoredMsg) -> Result<(), ServiceError> {
    let stream = state.deps.cfg.names().trades_stream();
    let event = decode::<EngineEvent>(&stream, m.seq, &m.payload)
        .inspect_err(|e| tracing::error!(error = %e, "portfolio stops at an undecodable trade event"))?;
    let _hop = telemetry::hop("portfolio.settle", m.trace_parent.as_deref()).entered();
    let settled = fold.apply_trade(m.seq, &event).unwrap_or_else(|e| panic!("portfolio: {stream}#{}: {e}", m.seq));
    if let Some(s) = settled {
        metrics::counter!(telemetry::FILLS_SETTLED).increment(1);
        if let Some(context) = &m.trace_parent {
            tracing::debug!(trace_id = trace::trace_id(context), seq = m.seq, "portfolio: fill settled");
        }
        // From the acceptance of the order whose arrival made the fill (the
        // event's time) to now: engine queueing, matching, TRADES, settlement.
        let lag_ms = state.deps.clock.now_ms().saturating_sub(event.ts_ms).max(0);
        metrics::histogram!(telemetry::SETTLEMENT_LAG_SECONDS).record(lag_ms as f64 / 1000.0);
        // Off the settlement path: the notice is informational.
        let deps = state.deps.clone();
        tokio::spawn(async move { announce_settled(&deps, &s).await });
    }
    Ok(())
}

/// Reads and applies what TRADES holds after the applied sequence and before `seq`.
async fn fill_gap(state: &State, fold: &mut Fold, seq: u64) -> Result<(), ServiceError> {
    let stream = state.deps.cfg.names().trades_stream();
    while fold.trades_applied() + 1 < seq {
        let from = fold.trades_applied() + 1;
        let want = usize::try_from(seq - from).unwrap_or(usize::MAX).min(1024);
        let msgs = match state.deps.bus.read(&stream, "", from, want, Duration::ZERO).await {
            Ok(msgs) => msgs,
            Err(e) => {
                tracing::warn!(error = %e, from, "portfolio could not read a TRADES gap; retrying");
                crate::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let before = fold.trades_applied();
        for m in msgs.iter().take_while(|m| m.seq < seq) {
            apply_stored(state, fold, m)?;
        }
        if fold.trades_applied() == before {
            break; // nothing stored in between
        }
    }
    Ok(())
}

fn view(ledger: &Ledger, account: AccountId) -> PortfolioView {
    let a = ledger.account(account);
    PortfolioView {
        account_id: account.0,
        cash_cents: a.cash.0,
        reserved_cents: a.reserved_cash.0,
        holdings: a
            .holdings
            .iter()
            .filter(|(_, h)| h.qty.0 != 0 || h.reserved.0 != 0)
            .map(|(symbol, h)| HoldingView { symbol: symbol.clone(), qty: h.qty.0, reserved_qty: h.reserved.0 })
            .collect(),
    }
}

struct PortfolioSvc {
    state: Arc<State>,
    writes: mpsc::Sender<Write>,
}

/// What a checked write records in LEDGER.
struct Entry {
    kind: &'static str,
    msg_id: String,
    event: ledger_event::Kind,
}

/// Checks a write against the ledger as it is: the entry to record, `None`
/// when it is recorded already (a retried request), or the refusal.
type Check = Box<dyn FnOnce(&Ledger) -> Result<Option<Entry>, Status> + Send>;

/// One LEDGER write asked for over gRPC, waiting for the committer.
struct Write {
    /// The account it changes (a release: none when the order has no reservation).
    account: Option<AccountId>,
    order: Option<OrderId>,
    check: Check,
    /// Answered once the write is applied (or refused).
    reply: oneshot::Sender<Result<(), Status>>,
}

impl Write {
    /// What the write touches. Writes that share none commute: each checked
    /// against the ledger without the others comes out as if checked after
    /// them, and their LEDGER order does not matter to a replay.
    fn keys(&self, ledger: &Ledger) -> [Option<(u8, u64)>; 2] {
        let account = self.account.or_else(|| self.order.and_then(|o| ledger.reservation(o)).map(|r| r.account));
        [account.map(|a| (0, a.0)), self.order.map(|o| (1, o.0))]
    }
}

/// A checked write's LEDGER event, stamped, and its publish.
struct Stamped {
    event: LedgerEvent,
    publish: Publish,
}

/// Records the writes the handlers hand over, a group at a time (a group
/// commit). The ledger is held across one group's LEDGER publishes, which
/// are pipelined, instead of across every single write's: the writes that
/// arrive while a group is in flight form the next group, and the TRADES
/// consumer gets the ledger between groups.
///
/// A group holds writes that touch distinct accounts and orders (a write
/// that shares one with an earlier write waits for a later group, in order),
/// so each is checked against the ledger alone, and whichever of them the
/// broker stores, in whatever order, a replay applies exactly what was
/// applied here. Every write is applied only once the broker has stored it,
/// and the group is retried until the broker answers, so the ledger is never
/// behind LEDGER when it is let go (see [`PortfolioSvc::record_group`]).
async fn commit(state: Arc<State>, mut queued: mpsc::Receiver<Write>, shutdown: Shutdown) {
    let mut waiting: VecDeque<Write> = VecDeque::new();
    let mut gauges = ReservationGauges::default();
    loop {
        if waiting.is_empty() {
            let next = tokio::select! {
                biased;
                _ = shutdown.clone() => return,
                w = queued.recv() => w,
            };
            let Some(w) = next else { return };
            waiting.push_back(w);
        }
        let mut fold = state.fold.lock().await;
        let mut touched = BTreeSet::new();
        let (mut group, mut later) = (Vec::new(), VecDeque::new());
        let mut looked_at = 0;
        while group.len() < MAX_GROUP && looked_at < 4 * MAX_GROUP {
            let Some(w) = waiting.pop_front().or_else(|| queued.try_recv().ok()) else { break };
            looked_at += 1;
            let keys = w.keys(fold.ledger());
            let clash = keys.iter().flatten().any(|k| touched.contains(k));
            touched.extend(keys.into_iter().flatten());
            if clash {
                later.push_back(w);
            } else {
                group.push(w);
            }
        }
        later.extend(waiting.drain(..));
        waiting = later;
        record_group(&state, &mut fold, group).await;
        gauges.update(fold.ledger());
    }
}

/// Sets the outstanding-reservation gauges from the ledger, at most every
/// [`ReservationGauges::EVERY`] (the sum walks every account).
#[derive(Default)]
struct ReservationGauges {
    set: Option<crate::time::Instant>,
}

impl ReservationGauges {
    const EVERY: Duration = Duration::from_millis(100);

    fn update(&mut self, ledger: &Ledger) {
        if self.set.is_some_and(|at| at.elapsed() < Self::EVERY) {
            return;
        }
        self.set = Some(crate::time::Instant::now());
        let mut cents: i64 = 0;
        let mut shares: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
        for account in ledger.accounts().values() {
            cents = cents.saturating_add(account.reserved_cash.0);
            for (symbol, h) in &account.holdings {
                *shares.entry(symbol.as_str()).or_default() += h.reserved.0;
            }
        }
        metrics::gauge!(telemetry::RESERVED_CENTS).set(cents as f64);
        for (symbol, qty) in shares {
            metrics::gauge!(telemetry::RESERVED_SHARES, "symbol" => symbol.to_string()).set(qty as f64);
        }
        metrics::gauge!(telemetry::RESERVATIONS_OPEN).set(ledger.open_reservations() as f64);
    }
}

/// Checks, records and applies one group, then answers each write.
async fn record_group(state: &State, fold: &mut Fold, group: Vec<Write>) {
    let mut checked = Vec::with_capacity(group.len());
    for w in group {
        let stamped = (w.check)(fold.ledger()).map(|entry| {
            entry.map(|Entry { kind, msg_id, event }| {
                let event = fold.stamp(event);
                let subject = state.deps.cfg.names().ledger(kind);
                let payload = Bytes::from(event.encode_to_vec());
                let publish = Publish { subject, msg_id, payload, trace_parent: None };
                Stamped { event, publish }
            })
        });
        checked.push((w.reply, stamped));
    }
    let publishes = checked.iter().filter_map(|(_, c)| Some(c.as_ref().ok()?.as_ref()?.publish.clone())).collect();
    let mut results = state.deps.bus.publish_batch(publishes).await.into_iter();
    for (reply, stamped) in checked {
        let answer = match stamped {
            Err(refused) => Err(refused),
            Ok(None) => Ok(()),
            Ok(Some(Stamped { event, publish })) => {
                let stored = match results.next().expect("one result per publish") {
                    Ok(_) => Ok(()),
                    Err(e) => publish_until_answered(state, &publish, e).await,
                };
                // Checked before recording: failing now is a broken invariant.
                stored.map(|()| {
                    fold.apply_ledger(&event)
                        .unwrap_or_else(|e| panic!("portfolio: recorded {} cannot be applied: {e}", publish.msg_id))
                })
            }
        };
        let _ = reply.send(answer);
    }
}

/// Publishes a LEDGER write whose first publish failed with `first`.
///
/// A failure that leaves the outcome unknown (a timeout, a connection lost
/// with the publish in flight, a broker restarting) is no answer: the event
/// may be stored, and the ledger must never be behind LEDGER (a reservation
/// stored but not applied let later reservations overdraw the account, which
/// a replay then found), so the same publish, under the same message id, is
/// retried until the broker answers. Only a stream that does not exist
/// (nothing can have been stored) is an error.
async fn publish_until_answered(state: &State, p: &Publish, first: BusError) -> Result<(), Status> {
    let mut error = first;
    let mut backoff = Duration::from_millis(10);
    loop {
        if let e @ BusError::NotFound(_) = error {
            return Err(bus_status(e));
        }
        tracing::warn!(msg_id = p.msg_id, error = %error, "ledger write unanswered; publishing it again");
        crate::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
        match state.deps.bus.publish(&p.subject, &p.msg_id, p.payload.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) => error = e,
        }
    }
}

impl PortfolioSvc {
    /// Hands a write to the committer and waits for its answer.
    async fn write(&self, account: Option<AccountId>, order: Option<OrderId>, check: Check) -> Result<(), Status> {
        let (reply, answer) = oneshot::channel();
        let unavailable = || Status::unavailable("the portfolio is shutting down");
        self.writes.send(Write { account, order, check, reply }).await.map_err(|_| unavailable())?;
        answer.await.map_err(|_| unavailable())?
    }
}

fn deposit_refusal(e: ledger::DepositError) -> Status {
    Status::failed_precondition(e.to_string())
}

#[tonic::async_trait]
impl Portfolio for PortfolioSvc {
    async fn deposit(&self, req: Request<DepositRequest>) -> Result<Response<PortfolioView>, Status> {
        let rpc = Rpc::unary(GRPC_SERVICE, "Deposit", "portfolio.deposit");
        grpc_call(&self.state.deps, rpc, trace::of(&req), async move {
            let req = req.into_inner();
            if req.request_id.is_empty() || req.request_id.len() > 128 {
                return Err(Status::invalid_argument("request_id: 1 to 128 bytes, unique per deposit"));
            }
            if req.symbol.is_empty() {
                if req.cents <= 0 || req.qty != 0 {
                    return Err(Status::invalid_argument(format!(
                        "cents: {} is not a positive amount (a cash deposit takes qty 0)",
                        req.cents
                    )));
                }
            } else {
                let Some(inst) = self.state.deps.cfg.instrument(&req.symbol) else {
                    return Err(Status::invalid_argument(format!("symbol: unknown symbol {}", shown(&req.symbol))));
                };
                if req.qty <= 0 || req.qty % inst.lot_shares != 0 || req.cents != 0 {
                    return Err(Status::invalid_argument(format!(
                        "qty: a share deposit needs a positive multiple of the lot ({}) and cents 0",
                        inst.lot_shares
                    )));
                }
            }
            let account = AccountId(req.account_id);
            let request_id = format!("{}/{}", account.0, req.request_id);
            // Planted bug DepositsUnchecked: recorded before the limit is checked.
            let checked = !self.state.deps.cfg.planted(PlantedBug::DepositsUnchecked);
            let check: Check = Box::new(move |ledger: &Ledger| {
                if ledger.has_deposit(&request_id) {
                    return Ok(None);
                }
                let within_limits = if !checked {
                    Ok(())
                } else if req.symbol.is_empty() {
                    ledger.check_deposit(account, Cents(req.cents))
                } else {
                    ledger.check_deposit_shares(account, &req.symbol, Shares(req.qty))
                };
                within_limits.map_err(deposit_refusal)?;
                Ok(Some(Entry {
                    kind: "deposit",
                    msg_id: format!("dep-{request_id}"),
                    event: ledger_event::Kind::Deposited(events::Deposited {
                        account: account.0,
                        cents: req.cents,
                        request_id,
                        symbol: req.symbol,
                        qty: req.qty,
                    }),
                }))
            });
            self.write(Some(account), None, check).await?;
            Ok(Response::new(view(self.state.fold.lock().await.ledger(), account)))
        })
        .await
    }

    async fn reserve(&self, req: Request<ReserveRequest>) -> Result<Response<ReserveReply>, Status> {
        let rpc = Rpc::unary(GRPC_SERVICE, "Reserve", "portfolio.reserve");
        let context = trace::of(&req);
        grpc_call(&self.state.deps, rpc, context.clone(), async move {
            if let Some(context) = &context {
                let order = crate::domain::OrderId(req.get_ref().order_id);
                tracing::debug!(trace_id = trace::trace_id(context), %order, "portfolio: reserve");
            }
            let req = req.into_inner();
            let side = side_from_proto(req.side)?;
            if req.qty <= 0 || req.price_ticks <= 0 {
                return Err(Status::invalid_argument("qty and price_ticks must be positive"));
            }
            let order = OrderId(req.order_id);
            let reservation = Reservation {
                account: AccountId(req.account_id),
                symbol: req.symbol.clone(),
                side,
                qty: Shares(req.qty),
                price: PriceTicks(req.price_ticks),
            };
            let check: Check = Box::new(move |ledger: &Ledger| {
                let exists = ledger.check_reserve(order, &reservation).map_err(|e| match e {
                    ReserveError::UnknownSymbol(_) => {
                        Status::invalid_argument(format!("symbol: unknown symbol {}", shown(&req.symbol)))
                    }
                    ReserveError::Limit(_) => Status::invalid_argument(e.to_string()),
                    ReserveError::AlreadyReleased(_) => Status::aborted(e.to_string()),
                    _ => Status::failed_precondition(e.to_string()),
                })?;
                Ok((!exists).then(|| Entry {
                    kind: "reserve",
                    msg_id: format!("res-{order}"),
                    event: ledger_event::Kind::Reserved(events::Reserved {
                        order_id: order.0,
                        account: req.account_id,
                        symbol: req.symbol,
                        side: side_to_proto(side) as i32,
                        qty: req.qty,
                        price_ticks: req.price_ticks,
                    }),
                }))
            });
            self.write(Some(AccountId(req.account_id)), Some(order), check).await?;
            Ok(Response::new(ReserveReply {}))
        })
        .await
    }

    async fn release(&self, req: Request<ReleaseRequest>) -> Result<Response<ReleaseReply>, Status> {
        let rpc = Rpc::unary(GRPC_SERVICE, "Release", "portfolio.release");
        grpc_call(&self.state.deps, rpc, trace::of(&req), async move {
            let order = OrderId(req.into_inner().order_id);
            let check: Check = Box::new(move |_: &Ledger| {
                Ok(Some(Entry {
                    kind: "release",
                    msg_id: format!("rel-{order}"),
                    event: ledger_event::Kind::Released(events::Released { order_id: order.0 }),
                }))
            });
            self.write(None, Some(order), check).await?;
            Ok(Response::new(ReleaseReply {}))
        })
        .await
    }

    async fn get_portfolio(&self, req: Request<GetPortfolioRequest>) -> Result<Response<PortfolioView>, Status> {
        let rpc = Rpc::unary(GRPC_SERVICE, "GetPortfolio", "portfolio.get_portfolio");
        grpc_call(&self.state.deps, rpc, trace::of(&req), async move {
            let account = AccountId(req.into_inner().account_id);
            Ok(Response::new(view(self.state.fold.lock().await.ledger(), account)))
        })
        .await
    }
}
