//! Checks 4 and 8: every accepted order's fate and record, and what the agents
//! were told about their orders.

use fafnir_platform::domain::{CloseReason, OrderStatus};
use fafnir_platform::proto::common::{self, Order};

use super::facts::{status_name, Accepted, Activity, Facts};
use super::matching::ReferenceRun;
use super::{CheckResult, Tally};

/// The status the engine's events give an order (the orders service's rule).
fn status_from_events(a: &Accepted, act: &Activity) -> OrderStatus {
    if act.filled_qty >= a.order.qty {
        return OrderStatus::Filled;
    }
    match act.closed {
        Some((CloseReason::Rejected, _)) => OrderStatus::Rejected,
        Some(_) => OrderStatus::Canceled,
        None if act.filled_qty > 0 => OrderStatus::PartiallyFilled,
        None => OrderStatus::Accepted,
    }
}

fn status_proto(s: OrderStatus) -> common::OrderStatus {
    match s {
        OrderStatus::Accepted => common::OrderStatus::Accepted,
        OrderStatus::PartiallyFilled => common::OrderStatus::PartiallyFilled,
        OrderStatus::Filled => common::OrderStatus::Filled,
        OrderStatus::Canceled => common::OrderStatus::Canceled,
        OrderStatus::Rejected => common::OrderStatus::Rejected,
    }
}

/// Check 4: each accepted order has engine events (none lost), a final record
/// whose status, filled quantity and notional agree with them, and, if still
/// open, rests in the reference book with the remainder the fills leave.
pub(crate) fn every_order_accounted(facts: &Facts, reference: &ReferenceRun) -> CheckResult {
    let mut tally = Tally::new("every_order_accounted");
    for (id, a) in &facts.accepted {
        let at = format!("{} order {id:x} (account {}, ORDERS#{})", a.symbol, a.account(), a.seq);
        let act = facts.activity.get(id).copied().unwrap_or_default();
        if act.events == 0 {
            tally.flag(|| {
                format!("{at}: lost: accepted, but no engine event (fill, rested, closed or ignored) names it")
            });
            continue;
        }
        let status = status_from_events(a, &act);
        let qty = a.order.qty;
        if !status.is_final() {
            let left = qty.saturating_sub(act.filled_qty);
            match reference.resting(a.symbol, *id) {
                Some((_, _, rem)) if rem == left => {}
                Some((_, _, rem)) => tally.flag(|| {
                    format!("{at}: open with {left} left per the engine's fills, the reference book rests {rem}")
                }),
                None => tally.flag(|| {
                    format!("{at}: open per the engine ({} of {qty} filled, never closed), not resting in the reference book", act.filled_qty)
                }),
            }
        }
        let Some(record) = facts.input.orders.get(id) else {
            tally.flag(|| format!("{at}: no final order record; expected {:?}", status));
            continue;
        };
        check_record(&mut tally, &at, a, &act, status, record);
    }
    tally.finish()
}

fn check_record(tally: &mut Tally, at: &str, a: &Accepted, act: &Activity, status: OrderStatus, record: &Order) {
    let want = status_proto(status) as i32;
    if record.status != want {
        let (w, got) = (status_name(want), status_name(record.status));
        tally.flag(|| format!("{at}: status expected {w} from the engine's events, record says {got}"));
    }
    if record.filled_qty != act.filled_qty || record.filled_notional_cents != act.filled_notional_cents {
        tally.flag(|| {
            format!(
                "{at}: fills sum to {} shares / {} cents, record says {} / {}",
                act.filled_qty, act.filled_notional_cents, record.filled_qty, record.filled_notional_cents
            )
        });
    }
    if record.qty != a.order.qty || record.symbol != a.symbol || record.user_id != a.account() {
        tally.flag(|| {
            format!(
                "{at}: record is {} of {} for account {}, accepted {} of {}",
                record.qty, record.symbol, record.user_id, a.order.qty, a.symbol
            )
        });
    }
}

/// Check 8: for every order an agent heard of, its fills and notional equal the
/// platform's record, and it was told "closed" exactly when the record is
/// canceled or rejected.
pub(crate) fn agents_told_the_truth(facts: &Facts) -> CheckResult {
    let mut tally = Tally::new("agents_told_the_truth");
    for (id, told) in &facts.input.told {
        let at = format!("{} order {id:x} (account {})", told.symbol, told.account);
        let Some(record) = facts.input.orders.get(id) else {
            tally.flag(|| format!("{at}: agent was told of it (closed: {}), the platform has no record", told.closed));
            continue;
        };
        if told.filled_qty != record.filled_qty || told.filled_notional_cents != record.filled_notional_cents {
            tally.flag(|| {
                format!(
                    "{at}: told {} shares / {} cents filled, record says {} / {}",
                    told.filled_qty, told.filled_notional_cents, record.filled_qty, record.filled_notional_cents
                )
            });
        }
        let canceled = [common::OrderStatus::Canceled, common::OrderStatus::Rejected].map(|s| s as i32);
        let closed = canceled.contains(&record.status);
        if told.closed != closed {
            let status = status_name(record.status);
            tally.flag(|| format!("{at}: told closed: {}, record is {status}", told.closed));
        }
        if told.account != record.user_id || told.symbol != record.symbol {
            let (acct, sym) = (record.user_id, &record.symbol);
            tally.flag(|| format!("{at}: the record is account {acct}'s order on {sym}"));
        }
    }
    tally.finish()
}
