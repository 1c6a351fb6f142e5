//! Calls in flight on one simulated connection (simulation only): each waits
//! for its answer until a deadline. Shared by the connections that multiplex
//! calls by id: the order path's RPCs ([`crate::rpc`]), and in `sim` the
//! event-bus and key-value clients.
//!
//! The deadlines are kept by one sweeper task per connection, not by a timer
//! per call. madsim keeps every timer it is asked for in one heap until it is
//! due, even when its future is long gone: a `timeout` around each call left
//! an entry per call in the heap for the whole timeout (seconds), so the heap
//! held thousands of dead entries and every timer event of the world paid for
//! them. The sweeper sleeps until the earliest deadline; with one timeout per
//! connection, deadlines come in the order calls are made, so it wakes about
//! once per timeout while calls keep coming, and not at all when none waits.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::time::Instant;
use tokio::sync::{oneshot, Notify};

/// How a call's wait ended without an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unanswered {
    /// No answer by the deadline (the other side may still act on the call).
    TimedOut,
    /// The connection broke (or was closed) first.
    Closed,
}

/// The calls of one connection. Clones share them.
pub struct Calls<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Calls<T> {
    fn clone(&self) -> Self {
        Calls { shared: self.shared.clone() }
    }
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Wakes the sweeper when a deadline earlier than its target appears.
    sweeper: Notify,
}

struct State<T> {
    next_id: u64,
    waiting: BTreeMap<u64, (Instant, oneshot::Sender<Result<T, Unanswered>>)>,
    /// The same calls by (deadline, id).
    deadlines: BTreeSet<(Instant, u64)>,
    closed: bool,
    /// What the sweeper sleeps until; None while it waits for a call.
    sweeping_until: Option<Instant>,
}

/// One call waiting for its answer; it leaves the connection's calls when
/// dropped, however it ends.
pub struct Call<T> {
    id: u64,
    answer: Option<oneshot::Receiver<Result<T, Unanswered>>>,
    calls: Calls<T>,
}

impl<T: Send + 'static> Calls<T> {
    /// Calls of a new connection; starts its sweeper on the current node,
    /// which ends when the connection is closed (or the node dies).
    pub fn spawn() -> Calls<T> {
        let state = State {
            next_id: 1,
            waiting: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            closed: false,
            sweeping_until: None,
        };
        let calls = Calls { shared: Arc::new(Shared { state: Mutex::new(state), sweeper: Notify::new() }) };
        tokio::spawn(calls.clone().sweep());
        calls
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.shared.state.lock().expect("calls lock")
    }

    /// A new call, answered by [`Calls::answer`] with its id before `deadline`.
    pub fn start(&self, deadline: Instant) -> Result<Call<T>, Unanswered> {
        let (tx, rx) = oneshot::channel();
        let mut s = self.lock();
        if s.closed {
            return Err(Unanswered::Closed);
        }
        let id = s.next_id;
        s.next_id += 1;
        s.waiting.insert(id, (deadline, tx));
        s.deadlines.insert((deadline, id));
        if s.sweeping_until.is_none_or(|target| deadline < target) {
            s.sweeping_until = Some(deadline);
            self.shared.sweeper.notify_one();
        }
        Ok(Call { id, answer: Some(rx), calls: self.clone() })
    }

    /// Hands `value` to the call `id`; nothing when it no longer waits (it
    /// timed out or went away).
    pub fn answer(&self, id: u64, value: T) {
        let mut s = self.lock();
        assert!(id < s.next_id, "an answer to call {id}, which was never made");
        if let Some((deadline, tx)) = s.waiting.remove(&id) {
            s.deadlines.remove(&(deadline, id));
            let _ = tx.send(Ok(value));
        }
    }

    /// The connection is done: every waiting call fails as closed, and so
    /// does every call started from now on.
    pub fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        s.deadlines.clear();
        for (_, (_, tx)) in std::mem::take(&mut s.waiting) {
            let _ = tx.send(Err(Unanswered::Closed));
        }
        drop(s);
        self.shared.sweeper.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// A guard that closes these calls when dropped: held by a connection's
    /// reader, so the calls fail as soon as the reader ends, also when its
    /// task is dropped with a killed node.
    pub fn close_on_drop(&self) -> CloseOnDrop<T> {
        CloseOnDrop(self.clone())
    }

    /// Fails the calls whose deadline has passed, until the connection closes.
    async fn sweep(self) {
        loop {
            let target = {
                let mut s = self.lock();
                if s.closed {
                    return;
                }
                let now = Instant::now();
                while let Some(&(deadline, id)) = s.deadlines.first() {
                    if deadline > now {
                        break;
                    }
                    s.deadlines.pop_first();
                    if let Some((_, tx)) = s.waiting.remove(&id) {
                        let _ = tx.send(Err(Unanswered::TimedOut));
                    }
                }
                s.sweeping_until = s.deadlines.first().map(|&(deadline, _)| deadline);
                s.sweeping_until
            };
            match target {
                None => self.shared.sweeper.notified().await,
                Some(deadline) => tokio::select! {
                    biased;
                    () = crate::time::sleep_until(deadline) => {}
                    () = self.shared.sweeper.notified() => {}
                },
            }
        }
    }
}

/// See [`Calls::close_on_drop`].
pub struct CloseOnDrop<T: Send + 'static>(Calls<T>);

impl<T: Send + 'static> Drop for CloseOnDrop<T> {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl<T> Call<T> {
    /// The call's id on the connection.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Waits for the answer, the deadline or the connection's end.
    pub async fn answer(&mut self) -> Result<T, Unanswered> {
        let rx = self.answer.take().expect("a call is awaited once");
        // A dropped sender: the connection's calls are gone with its node.
        rx.await.unwrap_or(Err(Unanswered::Closed))
    }
}

impl<T> Drop for Call<T> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.calls.shared.state.lock() {
            if let Some((deadline, _)) = s.waiting.remove(&self.id) {
                s.deadlines.remove(&(deadline, self.id));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[madsim::test]
    async fn an_answer_reaches_its_call_and_no_other() {
        let calls: Calls<&str> = Calls::spawn();
        let deadline = Instant::now() + Duration::from_secs(1);
        let (mut a, mut b) = (calls.start(deadline).expect("open"), calls.start(deadline).expect("open"));
        calls.answer(b.id(), "for b");
        calls.answer(a.id(), "for a");
        assert_eq!((a.answer().await, b.answer().await), (Ok("for a"), Ok("for b")));
    }

    #[madsim::test]
    async fn a_call_times_out_at_its_deadline_not_before() {
        let calls: Calls<()> = Calls::spawn();
        let start = Instant::now();
        let mut late = calls.start(start + Duration::from_millis(300)).expect("open");
        let mut early = calls.start(start + Duration::from_millis(100)).expect("open");
        assert_eq!(early.answer().await, Err(Unanswered::TimedOut));
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(100) && took < Duration::from_millis(110), "{took:?}");
        assert_eq!(late.answer().await, Err(Unanswered::TimedOut));
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(300) && took < Duration::from_millis(310), "{took:?}");
        // An answer after the deadline finds no one.
        calls.answer(late.id(), ());
    }

    #[madsim::test]
    async fn closing_fails_waiting_and_later_calls() {
        let calls: Calls<()> = Calls::spawn();
        let mut waiting = calls.start(Instant::now() + Duration::from_secs(5)).expect("open");
        let closer = calls.clone();
        tokio::spawn(async move {
            crate::time::sleep(Duration::from_millis(10)).await;
            closer.close();
        });
        assert_eq!(waiting.answer().await, Err(Unanswered::Closed));
        assert!(calls.is_closed());
        assert_eq!(calls.start(Instant::now() + Duration::from_secs(5)).err(), Some(Unanswered::Closed));
    }

    #[madsim::test]
    async fn a_dropped_call_leaves() {
        let calls: Calls<()> = Calls::spawn();
        let dropped = calls.start(Instant::now() + Duration::from_secs(5)).expect("open");
        let id = dropped.id();
        drop(dropped);
        assert!(calls.lock().waiting.is_empty() && calls.lock().deadlines.is_empty());
        calls.answer(id, ());
    }
}
