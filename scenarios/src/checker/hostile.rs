//! Check 9, `hostile_refused`: every request of a hostile agent was refused
//! (none accepted, none failing the way only a broken handler does), and
//! nothing it sent took effect: its account ends with exactly what it
//! deposited at set-up, nothing reserved, and no order of its was accepted.

use std::collections::BTreeMap;

use super::facts::Facts;
use super::{CheckResult, Tally};

pub(crate) fn hostile_refused(facts: &Facts) -> CheckResult {
    let mut tally = Tally::new("hostile_refused");
    let input = facts.input;
    let log = &input.hostile;
    for line in &log.violations {
        tally.flag(|| format!("a hostile request was not refused: {line}"));
    }
    // Those beyond the ones kept word for word.
    for _ in log.violations.len() as u64..log.violations_total {
        tally.flag(String::new);
    }
    for (&account, (cash, holdings)) in &input.hostile_accounts {
        let Some(view) = input.portfolios.get(&account) else {
            tally.flag(|| format!("hostile account {account}: no portfolio reported"));
            continue;
        };
        let held: BTreeMap<&str, (i64, i64)> = view
            .holdings
            .iter()
            .filter(|h| h.qty != 0 || h.reserved_qty != 0)
            .map(|h| (h.symbol.as_str(), (h.qty, h.reserved_qty)))
            .collect();
        let want: BTreeMap<&str, (i64, i64)> =
            holdings.iter().filter(|(_, q)| **q != 0).map(|(s, q)| (s.as_str(), (*q, 0))).collect();
        if view.cash_cents != *cash || view.reserved_cents != 0 || held != want {
            tally.flag(|| {
                format!(
                    "hostile account {account} ends with cash {} (reserved {}) and holdings {held:?}, \
                     not what it deposited: cash {cash}, holdings {want:?}",
                    view.cash_cents, view.reserved_cents
                )
            });
        }
        for a in facts.accepted.values().filter(|a| a.order.account == account) {
            tally.flag(|| format!("hostile account {account}: order {:x} accepted at ORDERS#{}", a.id(), a.seq));
        }
    }
    tally.finish()
}
