//! A timer finer than tokio's, for the real load generator's open-loop
//! schedule. tokio's timer wheel ticks each millisecond, so a `sleep_until`
//! wakes up to a millisecond after its deadline (measured: a median send lag
//! of 1.1 ms on this machine), and every latency measured from the intended
//! send time carries that lag. Here a waiter sleeps on tokio until shortly
//! before its deadline, then one thread of this module, which sleeps on the
//! OS's high-resolution timer, wakes it at the deadline.
//!
//! Real build only (the simulated build's time is exact already, see
//! `fafnir_platform::time`).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How long before its deadline a waiter leaves tokio's timer for this one.
const HANDOVER: Duration = Duration::from_millis(2);

/// Waiters by deadline; `seq` keeps equal deadlines apart.
#[derive(Default)]
struct Queue {
    waiting: BTreeMap<(Instant, u64), Waker>,
    seq: u64,
}

struct Timer {
    queue: Mutex<Queue>,
    changed: Condvar,
}

fn timer() -> &'static Timer {
    static TIMER: OnceLock<&'static Timer> = OnceLock::new();
    TIMER.get_or_init(|| {
        let t: &'static Timer = Box::leak(Box::new(Timer { queue: Mutex::default(), changed: Condvar::new() }));
        std::thread::Builder::new()
            .name("fafnir-precise-timer".into())
            .spawn(move || run(t))
            .expect("the precise timer's thread starts");
        t
    })
}

/// The timer's thread: wakes every waiter whose deadline has come, then
/// sleeps until the next deadline or a new waiter.
#[allow(clippy::disallowed_methods)] // the wall clock itself: this is the real build's timer
fn run(t: &'static Timer) {
    let mut q = t.queue.lock().expect("timer lock");
    loop {
        let now = Instant::now();
        while q.waiting.first_key_value().is_some_and(|((at, _), _)| *at <= now) {
            let (_, waker) = q.waiting.pop_first().expect("looked at");
            waker.wake();
        }
        q = match q.waiting.first_key_value() {
            Some(((at, _), _)) => {
                let wait = at.saturating_duration_since(now);
                t.changed.wait_timeout(q, wait).expect("timer lock").0
            }
            None => t.changed.wait(q).expect("timer lock"),
        };
    }
}

/// Waits until `deadline`, to within the OS's timer slack (tens of µs).
pub async fn sleep_until(deadline: fafnir_platform::time::Instant) {
    let deadline_std = deadline.into_runtime().into_std();
    if let Some(early) = deadline.checked_sub(HANDOVER) {
        if early > fafnir_platform::time::Instant::now() {
            fafnir_platform::time::sleep_until(early).await;
        }
    }
    Precise { deadline: deadline_std }.await
}

struct Precise {
    deadline: Instant,
}

impl Future for Precise {
    type Output = ();
    #[allow(clippy::disallowed_methods)] // the wall clock itself: this is the real build's timer
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        let t = timer();
        let mut q = t.queue.lock().expect("timer lock");
        q.seq += 1;
        let seq = q.seq;
        q.waiting.insert((self.deadline, seq), cx.waker().clone());
        drop(q);
        t.changed.notify_one();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deadlines a fraction of a millisecond apart, near and far, are each
    /// kept and never anticipated. (How late it wakes is the OS's and the
    /// machine's: `fafnir run` reports it as the load generator's send lag.)
    #[tokio::test]
    async fn never_wakes_before_its_deadline() {
        let t0 = fafnir_platform::time::Instant::now();
        for i in [1u64, 2, 3, 7, 10, 2_500, 2_800, 6_000] {
            let deadline = t0 + Duration::from_micros(i * 300);
            sleep_until(deadline).await;
            assert!(fafnir_platform::time::Instant::now() >= deadline, "woke before the deadline {i} x 300 µs");
        }
        // Many at once, out of order: each wakes, none early.
        let waits = (0..20u64).rev().map(|i| {
            let deadline = t0 + Duration::from_millis(3) + Duration::from_micros(i * 150);
            tokio::spawn(async move {
                sleep_until(deadline).await;
                fafnir_platform::time::Instant::now() >= deadline
            })
        });
        for w in waits.collect::<Vec<_>>() {
            assert!(w.await.unwrap());
        }
    }
}
