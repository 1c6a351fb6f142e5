//! Check 10: isolation. Every execution report an agent received is of an
//! order its own account placed (the owner ORDERS accepted it for), and a
//! fill report or settled notice names a fill in TRADES its order took part
//! in (as maker or taker): no agent hears of another's order or trade.

use super::facts::Facts;
use super::{CheckResult, ReceivedReport, ReportKind, Tally};

pub(crate) fn reports_isolated(facts: &Facts) -> CheckResult {
    let mut tally = Tally::new("reports_isolated");
    for r in &facts.input.reports {
        check_report(facts, r, &mut tally);
    }
    tally.finish()
}

fn check_report(facts: &Facts, r: &ReceivedReport, tally: &mut Tally) {
    let (account, id) = (r.account, r.order_id);
    let what = match r.kind {
        ReportKind::Opening if id == 0 => return,
        ReportKind::Opening => {
            tally.flag(|| format!("account {account} received a report of order {id:x} without a kind"));
            return;
        }
        ReportKind::Fill { match_seq, maker: true } => format!("maker fill report (match_seq {match_seq})"),
        ReportKind::Fill { match_seq, maker: false } => format!("taker fill report (match_seq {match_seq})"),
        ReportKind::Closed => "close report".to_string(),
        ReportKind::Settled { match_seq } => format!("settled notice (match_seq {match_seq})"),
    };
    let at = || format!("account {account} received a {what} of order {id:x} (cursor {})", r.cursor);
    let Some(order) = facts.accepted.get(&id) else {
        tally.flag(|| format!("{}: ORDERS never accepted that order", at()));
        return;
    };
    if order.account() != account {
        let (owner, symbol) = (order.account(), order.symbol);
        tally.flag(|| format!("{}: account {owner}'s order on {symbol}", at()));
        return;
    }
    // Whether the report says maker or taker rightly is a matter of what the
    // agent was told; that the fill is one of its order's is isolation.
    let match_seq = match r.kind {
        ReportKind::Fill { match_seq, .. } | ReportKind::Settled { match_seq } => match_seq,
        ReportKind::Opening | ReportKind::Closed => return,
    };
    let Some(fill) = facts.fill(order.symbol, match_seq) else {
        tally.flag(|| format!("{}: TRADES has no fill {} match_seq {match_seq}", at(), order.symbol));
        return;
    };
    let (maker, taker) = (fill.f.maker_order, fill.f.taker_order);
    if maker != id && taker != id {
        tally.flag(|| format!("{}: the fill's maker is {maker:x}, its taker {taker:x}", at()));
    }
}
