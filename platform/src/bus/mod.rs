//! The event bus: exactly the JetStream semantics the services rely on.
//!
//! - streams over subject wildcards, created idempotently at start-up;
//! - [`EventBus::publish`] returns only once the broker has *stored* the message,
//!   and de-duplicates on the message id inside the stream's duplicate window;
//!   [`EventBus::publish_batch`] pipelines several publishes, stored in order;
//! - durable pull consumers with batch fetch, ack, nak with delay, term,
//!   redelivery after the ack wait and a maximum number of deliveries;
//! - [`EventBus::read`]: an in-order, gap-free read of a stream from a sequence
//!   (what a service replays to rebuild its state, and what the engine consumes);
//! - [`EventBus::tail`]: the messages published from now on (fan-out to clients).
//!
//! The real adapter ([`nats::NatsBus`]) speaks to nats-server through async-nats
//! and compiles only outside simulation; the simulated broker lives in `sim/`.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

#[cfg(not(madsim))]
pub mod nats;

/// Where a stream keeps its messages: `File` survives a broker restart, `Memory` does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    File,
    Memory,
}

/// A stream to create (or find) at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSpec {
    pub name: String,
    /// Subjects, with `*` (one token) and `>` (the rest) wildcards.
    pub subjects: Vec<String>,
    pub storage: Storage,
    /// Messages with an id already seen inside this window are not stored again.
    pub duplicate_window: Duration,
    /// Oldest messages are dropped beyond this many; 0 keeps everything.
    pub max_msgs: i64,
    /// Copies the broker keeps (servers of a cluster that store the stream).
    pub replicas: usize,
}

/// A durable pull consumer to create (or find) at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerSpec {
    pub stream: String,
    pub durable: String,
    /// One subject filter (with wildcards); empty means the whole stream.
    pub filter: String,
    /// An unacknowledged delivery is redelivered after this long.
    pub ack_wait: Duration,
    /// Deliveries of one message before it is given up; -1 means no limit.
    pub max_deliver: i64,
    /// Deliveries outstanding (not yet acked) at most.
    pub max_ack_pending: i64,
}

/// The broker's acknowledgement of a stored publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PubAck {
    pub stream: String,
    /// The sequence the message is stored at (the original one for a duplicate).
    pub seq: u64,
    /// The message id was seen inside the duplicate window; nothing was stored.
    pub duplicate: bool,
}

/// One message of a [`EventBus::publish_batch`] or [`EventBus::publish_traced`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    pub subject: String,
    pub msg_id: String,
    pub payload: Bytes,
    /// The W3C `traceparent` of the order the message is about (NATS header
    /// `traceparent`), stored with the message and read back with it.
    pub trace_parent: Option<String>,
}

/// A message as stored in a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMsg {
    pub subject: String,
    pub seq: u64,
    pub payload: Bytes,
    /// The `traceparent` header it was published with, if any.
    pub trace_parent: Option<String>,
}

/// How far behind its stream a durable consumer is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsumerLag {
    /// Messages matching the consumer not yet delivered (NATS `num_pending`).
    pub pending: u64,
    /// Delivered and not yet acked (NATS `num_ack_pending`).
    pub ack_pending: u64,
}

impl ConsumerLag {
    /// Everything stored so far was delivered and acked.
    pub fn caught_up(&self) -> bool {
        self.pending == 0 && self.ack_pending == 0
    }
}

/// Opaque handle that acknowledges one delivery.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct AckToken(pub String);

/// One delivery of a stored message to a durable consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub msg: StoredMsg,
    /// 1 on the first delivery, 2 on the first redelivery, ...
    pub delivered: u64,
    /// Messages matching the consumer still waiting after this one.
    pub pending: u64,
    pub token: AckToken,
}

/// Why a bus call failed. All are conditions of the world, not bugs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    #[error("event bus unreachable at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("event bus call timed out: {0}")]
    Timeout(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("event bus error: {0}")]
    Other(String),
}

/// Messages published to a stream after the tail was opened.
#[async_trait]
pub trait Tail: Send {
    /// The next message; waits until one arrives.
    async fn next(&mut self) -> Result<StoredMsg, BusError>;
    /// The next message if it has already arrived, without waiting.
    fn try_next(&mut self) -> Option<StoredMsg>;
}

/// The JetStream operations the platform uses. See the module docs.
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Creates the stream, or checks that it exists. Idempotent.
    async fn ensure_stream(&self, spec: &StreamSpec) -> Result<(), BusError>;
    /// Creates the durable consumer, or checks that it exists. Idempotent.
    async fn ensure_consumer(&self, spec: &ConsumerSpec) -> Result<(), BusError>;
    /// Publishes and waits until the broker has stored the message.
    async fn publish(&self, subject: &str, msg_id: &str, payload: Bytes) -> Result<PubAck, BusError>;
    /// [`EventBus::publish`], with the message's trace context as a header.
    async fn publish_traced(&self, msg: Publish) -> Result<PubAck, BusError>;
    /// Publishes `msgs` pipelined, as a NATS client does when it sends several
    /// publishes before awaiting their acks: they reach the broker together
    /// and are stored in order, each de-duplicated on its own id. Returns one
    /// result per message, in order; a failure leaves the others' results
    /// standing (a timed-out batch may still have been stored, in part or in
    /// whole, so a retry relies on the message ids).
    async fn publish_batch(&self, msgs: Vec<Publish>) -> Vec<Result<PubAck, BusError>>;
    /// Up to `max` deliveries for the durable consumer, waiting at most `wait` for the first.
    async fn fetch(&self, stream: &str, durable: &str, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError>;
    /// The delivery is done with; it will not be redelivered.
    async fn ack(&self, token: &AckToken) -> Result<(), BusError>;
    /// Acks each of `tokens`, sent together (a consumer done with a fetched
    /// batch); the same as acking them one by one.
    async fn ack_many(&self, tokens: &[AckToken]) -> Result<(), BusError>;
    /// The delivery failed; redeliver it after `delay`.
    async fn nak(&self, token: &AckToken, delay: Duration) -> Result<(), BusError>;
    /// The delivery can never succeed; never redeliver it.
    async fn term(&self, token: &AckToken) -> Result<(), BusError>;
    /// Up to `max` stored messages matching `filter` with sequence >= `from_seq`,
    /// in stream order, waiting at most `wait` for the first when there are none.
    /// A read that waits is a follower's: an implementation may keep its
    /// reader open for the next read that starts where this one ended.
    async fn read(
        &self,
        stream: &str,
        filter: &str,
        from_seq: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<StoredMsg>, BusError>;
    /// The last stored message on exactly this subject.
    async fn last_on_subject(&self, stream: &str, subject: &str) -> Result<Option<StoredMsg>, BusError>;
    /// How far behind its stream the durable consumer is.
    async fn consumer_lag(&self, stream: &str, durable: &str) -> Result<ConsumerLag, BusError>;
    /// The sequence of the stream's last message (0 when it never had one).
    /// Below what a reader has seen, the stream started over: a memory
    /// stream made again after a broker restart numbers from 1.
    async fn last_seq(&self, stream: &str) -> Result<u64, BusError>;
    /// Messages matching `filter` published from now on.
    async fn tail(&self, stream: &str, filter: &str) -> Result<Box<dyn Tail>, BusError>;
}

/// Whether `subject` matches the NATS subject `pattern` (`*` one token, `>` the rest).
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    // Token by token over the bytes: the broker calls this for every stored
    // message it considers, so it avoids the generic splitters.
    if pattern.is_empty() {
        return true;
    }
    let (p, s) = (pattern.as_bytes(), subject.as_bytes());
    let (mut i, mut j) = (0, 0);
    loop {
        if j > s.len() {
            // The subject ran out of tokens before the pattern did.
            return false;
        }
        let p_end = p[i..].iter().position(|&b| b == b'.').map_or(p.len(), |k| i + k);
        let s_end = s[j..].iter().position(|&b| b == b'.').map_or(s.len(), |k| j + k);
        match &p[i..p_end] {
            b">" => return true,
            b"*" => {}
            token if token == &s[j..s_end] => {}
            _ => return false,
        }
        i = p_end + 1;
        j = s_end + 1;
        if i > p.len() {
            // The pattern is done: the subject must be too.
            return j > s.len();
        }
    }
}

/// Reads every message matching `filter` from `from_seq` to the end of the
/// stream as a read found it, in order. What a restarting service replays.
///
/// A batch shorter than asked for is the end: chasing an end that publishers
/// keep moving would never return while they publish (the orders reconciler
/// did exactly that under steady load). What comes later is the next call's.
pub async fn read_to_end(
    bus: &dyn EventBus,
    stream: &str,
    filter: &str,
    from_seq: u64,
) -> Result<Vec<StoredMsg>, BusError> {
    const BATCH: usize = 1024;
    let mut out = Vec::new();
    let mut next = from_seq.max(1);
    loop {
        let batch = bus.read(stream, filter, next, BATCH, Duration::ZERO).await?;
        let Some(last) = batch.last() else {
            return Ok(out);
        };
        assert!(last.seq >= next, "read went backwards: {} < {next}", last.seq);
        next = last.seq + 1;
        let at_end = batch.len() < BATCH;
        out.extend(batch);
        if at_end {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::subject_matches;

    #[test]
    fn wildcards() {
        assert!(subject_matches("a.*.c", "a.b.c"));
        assert!(!subject_matches("a.*.c", "a.b.d"));
        assert!(!subject_matches("a.*", "a.b.c"));
        assert!(subject_matches("a.>", "a.b.c"));
        assert!(!subject_matches("a.>", "a"));
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.b", "a.b.c"));
        assert!(subject_matches("", "x.y"));
        assert!(!subject_matches("a", ""));
        assert!(!subject_matches("a.b", "a"));
        assert!(subject_matches("*", "x"));
        assert!(!subject_matches("*", "x.y"));
        assert!(subject_matches("a..b", "a..b"));
    }

    /// The token-by-token reading of NATS subjects, kept as the reference.
    fn reference(pattern: &str, subject: &str) -> bool {
        if pattern.is_empty() {
            return true;
        }
        let mut subject_tokens = subject.split('.');
        for pat in pattern.split('.') {
            match (pat, subject_tokens.next()) {
                (">", Some(_)) => return true,
                ("*", Some(_)) => {}
                (p, Some(s)) if p == s => {}
                _ => return false,
            }
        }
        subject_tokens.next().is_none()
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_the_reference(pattern in "[ab*>.]{0,7}", subject in "[ab.]{0,7}") {
            proptest::prop_assert_eq!(subject_matches(&pattern, &subject), reference(&pattern, &subject));
        }
    }
}
