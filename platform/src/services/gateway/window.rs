//! The gateway's window of recent execution reports, indexed by account: what
//! a stream resumed with `after_cursor` is sent first. Serving a resume from
//! here costs in proportion to the caller's own missed reports (a binary
//! search and a copy), where reading TRADES back from the cursor cost in
//! proportion to everything every account did since, for every resume.

use std::collections::{BTreeMap, VecDeque};

use tonic::Status;

use crate::proto::gateway::ExecutionReport;

/// The last `max` execution reports of every account, with the TRADES
/// sequence each came from. Complete after its floor: every report of a
/// TRADES message with sequence in `(floor, cursor]` is here.
pub(super) struct ExecutionWindow {
    /// Reports of sequences up to here are gone (evicted, or never read).
    floor: u64,
    /// The last TRADES sequence recorded: what a new stream's opening report carries.
    cursor: u64,
    by_account: BTreeMap<u64, VecDeque<(u64, ExecutionReport)>>,
    /// Every report held, oldest first, as (sequence, account): the eviction order.
    order: VecDeque<(u64, u64)>,
    max: usize,
}

impl ExecutionWindow {
    /// An empty window that starts complete after `floor`, holding at most `max` reports.
    pub(super) fn new(floor: u64, max: usize) -> ExecutionWindow {
        assert!(max > 0, "an execution window holds at least one report");
        ExecutionWindow { floor, cursor: floor, by_account: BTreeMap::new(), order: VecDeque::new(), max }
    }

    pub(super) fn cursor(&self) -> u64 {
        self.cursor
    }

    pub(super) fn floor(&self) -> u64 {
        self.floor
    }

    /// Records the reports of the TRADES message at `seq` (none, for an
    /// event that tells no account anything). Sequences only grow; a message
    /// at or before the cursor was recorded already and is ignored.
    pub(super) fn record(&mut self, seq: u64, reports: &[(u64, ExecutionReport)]) {
        if seq <= self.cursor {
            return;
        }
        self.cursor = seq;
        for (account, report) in reports {
            assert_eq!(report.cursor, seq, "a report carries its TRADES sequence");
            self.by_account.entry(*account).or_default().push_back((seq, report.clone()));
            self.order.push_back((seq, *account));
        }
        while self.order.len() > self.max {
            let (old, account) = self.order.pop_front().expect("longer than max > 0");
            let reports = self.by_account.get_mut(&account).expect("every held report is indexed");
            let (indexed, _) = reports.pop_front().expect("every held report is indexed");
            assert_eq!(indexed, old, "an account's reports are evicted oldest first");
            if reports.is_empty() {
                self.by_account.remove(&account);
            }
            self.floor = self.floor.max(old);
        }
        assert!(self.floor <= self.cursor, "the window's floor passed its cursor");
    }

    /// `account`'s reports after `after` up to the cursor, in order; refused
    /// when reports after `after` may have left the window already.
    pub(super) fn after(&self, account: u64, after: u64) -> Result<Vec<ExecutionReport>, Status> {
        if after < self.floor {
            return Err(Status::out_of_range(format!(
                "after_cursor {after} is too old: reports after {} only are kept; read your orders with \
                 ListOrders and open the stream again without after_cursor",
                self.floor
            )));
        }
        let Some(reports) = self.by_account.get(&account) else { return Ok(Vec::new()) };
        let first = reports.partition_point(|(seq, _)| *seq <= after);
        Ok(reports.range(first..).map(|(_, r)| r.clone()).collect())
    }

    /// Reports held (of every account).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(seq: u64, order_id: u64) -> ExecutionReport {
        ExecutionReport { order_id, cursor: seq, ..ExecutionReport::default() }
    }

    fn orders(reports: &[ExecutionReport]) -> Vec<(u64, u64)> {
        reports.iter().map(|r| (r.cursor, r.order_id)).collect()
    }

    #[test]
    fn a_resume_gets_its_own_reports_after_the_cursor_in_order() {
        let mut w = ExecutionWindow::new(10, 100);
        w.record(11, &[(1, report(11, 100)), (2, report(11, 200))]);
        w.record(12, &[]);
        w.record(13, &[(1, report(13, 101))]);
        w.record(14, &[(2, report(14, 201)), (1, report(14, 102))]);
        assert_eq!(w.cursor(), 14);
        assert_eq!(orders(&w.after(1, 10).unwrap()), vec![(11, 100), (13, 101), (14, 102)]);
        assert_eq!(orders(&w.after(1, 11).unwrap()), vec![(13, 101), (14, 102)]);
        assert_eq!(orders(&w.after(1, 12).unwrap()), vec![(13, 101), (14, 102)]);
        assert_eq!(orders(&w.after(2, 11).unwrap()), vec![(14, 201)]);
        assert!(w.after(1, 14).unwrap().is_empty());
        assert!(w.after(3, 10).unwrap().is_empty(), "an account with no reports");
        // Already recorded: ignored, not doubled.
        w.record(13, &[(1, report(13, 101))]);
        assert_eq!(orders(&w.after(1, 12).unwrap()).len(), 2);
    }

    #[test]
    fn a_cursor_older_than_the_window_is_refused_and_the_window_stays_bounded() {
        let mut w = ExecutionWindow::new(0, 3);
        for seq in 1..=10 {
            w.record(seq, &[(seq % 2, report(seq, seq))]);
            assert!(w.len() <= 3);
        }
        assert_eq!(w.floor(), 7, "reports of 8, 9 and 10 are held");
        let err = w.after(0, 6).unwrap_err();
        assert_eq!(err.code(), tonic::Code::OutOfRange);
        assert!(err.message().contains("ListOrders"), "{}", err.message());
        assert_eq!(orders(&w.after(0, 7).unwrap()), vec![(8, 8), (10, 10)]);
        assert_eq!(orders(&w.after(1, 7).unwrap()), vec![(9, 9)]);
        // A fill's two reports share a sequence: evicting one evicts the sequence.
        w.record(11, &[(0, report(11, 11)), (1, report(11, 12))]);
        w.record(12, &[(0, report(12, 13)), (1, report(12, 14))]);
        assert_eq!(w.floor(), 11);
        assert_eq!(orders(&w.after(1, 11).unwrap()), vec![(12, 14)]);
        assert!(w.after(1, 10).is_err());
    }
}
