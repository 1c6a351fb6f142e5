//! The portfolio's state as a fold of its two streams, in the order the live
//! service applied them.
//!
//! The live portfolio changes its ledger in two ways, one at a time under one
//! lock: it records a group of LEDGER events (deposits, reservations and
//! releases asked for over gRPC, each of a different account and order) and
//! applies them, or it applies the next TRADES event (a fill or a close), in
//! stream order. Every LEDGER event it records carries
//! `trades_applied`, how far into TRADES it was, so [`replay`] interleaves
//! the two streams exactly as they happened: replay equals live.
//!
//! (Replaying all of LEDGER before TRADES did not: a buy, its cancel and a
//! second buy that fitted only because the cancel released the first came
//! back as two reservations with no release between, more than the cash,
//! and the portfolio could never start again.)

use crate::bus::StoredMsg;
use crate::domain::{AccountId, Cents, OrderId, PriceTicks, Shares, Side};
use crate::proto::events::{self, engine_event, ledger_event, EngineEvent, LedgerEvent};
use crate::services::{decode, side_from_proto, ServiceError};

use super::ledger::{FillSettlement, Ledger, LedgerError, Reservation};

/// The ledger and how far into TRADES it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fold {
    ledger: Ledger,
    /// Every TRADES event up to this sequence is applied, none after it.
    trades_applied: u64,
}

impl Fold {
    pub fn new(ledger: Ledger) -> Fold {
        Fold { ledger, trades_applied: 0 }
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The TRADES sequence applied through; what a recorded LEDGER event carries.
    pub fn trades_applied(&self) -> u64 {
        self.trades_applied
    }

    /// The LEDGER event that records `kind` now, stamped with how far into
    /// TRADES the ledger is. The caller publishes it and then applies it,
    /// applying nothing else in between.
    pub fn stamp(&self, kind: ledger_event::Kind) -> LedgerEvent {
        LedgerEvent { kind: Some(kind), trades_applied: self.trades_applied }
    }

    /// Applies the TRADES event at `seq`: settles a fill or releases a closed
    /// order's rest. Events must come in stream order; one at or below the
    /// applied sequence (a redelivery) is skipped. Returns the settlement
    /// when this event settled a fill.
    pub fn apply_trade(&mut self, seq: u64, event: &EngineEvent) -> Result<Option<FillSettlement>, LedgerError> {
        // Planted bug SettleTwice: a redelivery is applied again (and not recognised as settled).
        if seq <= self.trades_applied && self.ledger.dedupes_fills() {
            return Ok(None);
        }
        self.trades_applied = self.trades_applied.max(seq);
        match &event.kind {
            Some(engine_event::Kind::Fill(f)) => {
                let s = settlement(&event.symbol, f)?;
                Ok(self.ledger.settle(&s)?.then_some(s))
            }
            Some(engine_event::Kind::Closed(c)) => {
                self.ledger.close(OrderId(c.order_id), Shares(c.remaining))?;
                Ok(None)
            }
            Some(engine_event::Kind::Rested(_)) | Some(engine_event::Kind::Ignored(_)) | None => Ok(None),
        }
    }

    /// Passes over the TRADES event at `seq` without applying it (what the
    /// planted bug NoReleaseOnCancel does to closes in a replay).
    fn skip_trade(&mut self, seq: u64) {
        self.trades_applied = self.trades_applied.max(seq);
    }

    /// Applies one LEDGER event (the TRADES it names as applied before it
    /// must be applied already).
    pub fn apply_ledger(&mut self, event: &LedgerEvent) -> Result<(), LedgerError> {
        let l = &mut self.ledger;
        match &event.kind {
            Some(ledger_event::Kind::Deposited(d)) if d.symbol.is_empty() => {
                l.deposit(AccountId(d.account), Cents(d.cents), &d.request_id)?;
            }
            Some(ledger_event::Kind::Deposited(d)) => {
                l.deposit_shares(AccountId(d.account), &d.symbol, Shares(d.qty), &d.request_id)?;
            }
            Some(ledger_event::Kind::Reserved(r)) => {
                let side = side_from_proto(r.side).map_err(|s| LedgerError::Malformed(s.message().to_string()))?;
                let reservation = Reservation {
                    account: AccountId(r.account),
                    symbol: r.symbol.clone(),
                    side,
                    qty: Shares(r.qty),
                    price: PriceTicks(r.price_ticks),
                };
                l.reserve(OrderId(r.order_id), reservation)?;
            }
            Some(ledger_event::Kind::Released(r)) => l.release(OrderId(r.order_id))?,
            // Informational; the fill it announces is in TRADES.
            Some(ledger_event::Kind::Settled(_)) => {}
            None => return Err(LedgerError::Malformed("a ledger event of no kind".into())),
        }
        Ok(())
    }
}

/// Who bought and who sold in a fill event.
pub fn settlement(symbol: &str, f: &events::FillEvent) -> Result<FillSettlement, LedgerError> {
    let side = side_from_proto(f.taker_side).map_err(|s| LedgerError::Malformed(s.message().to_string()))?;
    let (buy_order, buyer, sell_order, seller) = if side == Side::Buy {
        (f.taker_order, f.taker_account, f.maker_order, f.maker_account)
    } else {
        (f.maker_order, f.maker_account, f.taker_order, f.taker_account)
    };
    Ok(FillSettlement {
        symbol: symbol.to_string(),
        match_seq: f.match_seq,
        price: PriceTicks(f.price_ticks),
        qty: Shares(f.qty),
        buy_order: OrderId(buy_order),
        buyer: AccountId(buyer),
        sell_order: OrderId(sell_order),
        seller: AccountId(seller),
    })
}

/// What a replay does with the events it reads (planted bugs aside, exactly
/// what the live service did).
#[derive(Clone, Copy, Debug, Default)]
pub struct ReplayOptions {
    /// Planted bug NoReleaseOnCancel: closes "move no money", so the replay leaves them out.
    pub skip_closes: bool,
    /// Planted bug ReplayLedgerFirst: all of LEDGER, then TRADES.
    pub ledger_first: bool,
}

/// Rebuilds the portfolio from LEDGER and TRADES as read from their streams
/// (named `ledger_stream` and `trades_stream` in errors). An event that does
/// not decode or cannot be applied stops the replay with its stream,
/// sequence and reason: the portfolio does not start on a ledger it cannot
/// trust, and says exactly why.
pub fn replay(
    mut fold: Fold,
    (ledger_stream, ledger): (&str, &[StoredMsg]),
    (trades_stream, trades): (&str, &[StoredMsg]),
    options: ReplayOptions,
) -> Result<Fold, ServiceError> {
    let corrupt = |stream: &str, seq: u64, reason: String| ServiceError::Corrupt { stream: stream.into(), seq, reason };
    let trades_end = trades.last().map_or(0, |m| m.seq);
    let mut next_trade = trades.iter().peekable();
    let mut apply_trades_through = |fold: &mut Fold, through: u64| -> Result<(), ServiceError> {
        while let Some(m) = next_trade.next_if(|m| m.seq <= through) {
            let event: EngineEvent = decode(trades_stream, m.seq, &m.payload)?;
            if options.skip_closes && matches!(event.kind, Some(engine_event::Kind::Closed(_))) {
                fold.skip_trade(m.seq);
                continue;
            }
            fold.apply_trade(m.seq, &event).map_err(|e| corrupt(trades_stream, m.seq, e.to_string()))?;
        }
        Ok(())
    };
    for m in ledger {
        let event: LedgerEvent = decode(ledger_stream, m.seq, &m.payload)?;
        if event.trades_applied > trades_end {
            let reason =
                format!("recorded after {trades_stream}#{} was applied, but that stream ends at #{trades_end}", {
                    event.trades_applied
                });
            return Err(corrupt(ledger_stream, m.seq, reason));
        }
        let through = if options.ledger_first { 0 } else { event.trades_applied };
        apply_trades_through(&mut fold, through)?;
        fold.apply_ledger(&event).map_err(|e| corrupt(ledger_stream, m.seq, e.to_string()))?;
    }
    apply_trades_through(&mut fold, u64::MAX)?;
    Ok(fold)
}
