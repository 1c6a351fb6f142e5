//! The simulated JetStream broker: a madsim node that implements the
//! JetStream semantics the platform relies on, and [`SimBus`], the platform's
//! [`fafnir_platform::bus::EventBus`] spoken to it over the simulated network.
//! Built on the pattern of madsim's simulated etcd: the server is a task on its
//! node serving requests that arrive over `madsim::net::Endpoint` connections.
//!
//! What it models, as nats-server v2.9 does it (the conformance suite in
//! [`crate::conformance::bus`] checks both against the same cases):
//!
//! - streams over subject wildcards; subjects of two streams may not overlap;
//!   a publish no stream covers is NotFound (nothing stored); sequences per stream from 1;
//! - a publish is acknowledged once stored; message-id de-duplication inside the
//!   stream's duplicate window (simulated time); `max_msgs` drops the oldest;
//! - durable pull consumers with one filter: in-order delivery, ack, nak with a
//!   delay, term, redelivery after the ack wait, `max_deliver`,
//!   `max_ack_pending`, and `delivered` / `pending` counts as NATS reports them;
//! - reads from a sequence, the last message of a subject, and tails;
//! - a restart keeps file streams with their de-duplication state and durable
//!   consumers (position, unacked deliveries and their counts) on the
//!   [`BrokerDisk`]; memory streams and their consumers are lost;
//! - a durable consumer's state is written lazily, as nats-server 2.9 writes
//!   it: a snapshot at most every [`CONSUMER_SAVE_EVERY`] of simulated time
//!   (of a consumer that changed since the last one), not on every ack. A
//!   kill (a crash, SIGKILL) brings the consumer back as last saved: it may
//!   deliver again what was acked after that, and what was delivered and not
//!   acked comes back too, so nothing is lost. A graceful stop
//!   ([`BrokerDisk::save_all`] then a restart) saves everything first.
//!
//! Every stored publish is recorded in the [`Trace`](crate::trace::Trace) as
//! `pub` (stream, seq, subject, payload) and every delivery to a durable
//! consumer as `deliver` (stream, consumer, seq, delivered count).
//!
//! Where it deliberately differs from NATS:
//!
//! - ack, nak and term are confirmed by the broker: `Ok` means the broker
//!   applied it, and an unreachable broker makes them fail (async-nats only
//!   queues them on the connection and never reports a lost ack);
//! - a fetch asks the broker for deliveries when it is called; the real
//!   adapter keeps a pull request open between fetches, so the broker may have
//!   delivered (and started the ack wait of) messages the client has not
//!   fetched yet;
//! - storage is durable the moment a publish is acknowledged (nats-server
//!   buffers writes for a few milliseconds and syncs every two minutes);
//! - under the `reply_lost` fault ([`crate::faults`]) it drops replies after
//!   acting on the request; no real server does that on purpose.
//!
//! ## Layout
//!
//! - `store`: the state machine (streams, consumers), no I/O and no clock;
//! - `server`: the node: connections, long polls, tails;
//! - `client`: [`SimBus`] and its tails;
//! - `proto`: the requests and replies between them.

mod client;
mod proto;
mod server;
mod store;

use std::sync::{Arc, Mutex};

use fafnir_platform::time::Instant;

pub use client::SimBus;
pub use server::{serve, serve_modelled, serve_with};
pub use store::CONSUMER_SAVE_EVERY;

/// What survives a broker restart: file-storage streams (messages, the Msg-Id dedupe
/// state) and the durable consumers on them (position, pending acks, delivery counts)
/// as last saved (see [`CONSUMER_SAVE_EVERY`]).
/// Memory-storage streams and their consumers are lost on restart. Created outside the
/// broker node and moved into its init closure, so a restarted node sees the same disk.
#[derive(Clone, Default)]
pub struct BrokerDisk {
    store: Arc<Mutex<store::Store>>,
}

impl BrokerDisk {
    /// An empty disk.
    pub fn new() -> BrokerDisk {
        BrokerDisk::default()
    }

    /// Saves every durable consumer's state now, as a graceful stop of
    /// nats-server does (SIGTERM); a kill right after this loses nothing.
    pub fn save_all(&self) {
        self.store.lock().expect("broker disk lock").save_all();
    }

    /// A durable consumer's lag as the broker holds it now, read directly
    /// (no message travels: an observer outside the world, such as the
    /// metrics sampler, reads it without changing the run).
    pub fn consumer_lag(&self, stream: &str, durable: &str) -> Option<fafnir_platform::bus::ConsumerLag> {
        self.store.lock().expect("broker disk lock").consumer_lag(stream, durable).ok()
    }
}

/// Now, on the simulated clock.
fn now() -> Instant {
    Instant::now()
}

impl std::fmt::Debug for BrokerDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerDisk").finish_non_exhaustive()
    }
}
