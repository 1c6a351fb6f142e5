//! [`SimBus`]: the platform's [`EventBus`] spoken to the simulated broker.
//!
//! One connection per client (shared by its clones), made on first use and
//! made again after it broke or a call on it timed out; requests are tagged
//! with an id and may be in flight together, as on one NATS connection. Each
//! tail has a connection of its own.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fafnir_platform::bus::{
    AckToken, BusError, ConsumerLag, ConsumerSpec, Delivery, EventBus, PubAck, Publish, StoredMsg, StreamSpec, Tail,
};
use fafnir_platform::calls::{Calls, Unanswered};
use fafnir_platform::time::{sleep, timeout};
use madsim::net::{Endpoint, Receiver, Sender};

use super::proto::{Reply, ReplyFrame, Request, RequestFrame, Response};
use super::store::Settle;

/// The default per-call timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Between attempts of a tail to reopen itself after its connection broke.
const TAIL_RETRY_MIN: Duration = Duration::from_millis(50);
const TAIL_RETRY_MAX: Duration = Duration::from_secs(1);

/// The platform's EventBus, spoken to a simulated broker over the simulated network.
#[derive(Clone)]
pub struct SimBus {
    shared: Arc<Shared>,
    timeout: Duration,
}

struct Shared {
    broker: SocketAddr,
    /// The current connection; `None` before the first call and after one broke.
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
}

struct Conn {
    tx: Sender,
    /// Calls waiting for their reply on this connection.
    calls: Calls<Reply>,
}

impl SimBus {
    /// A client of the broker at `broker` (connects lazily, reconnects after failures).
    pub fn new(broker: SocketAddr) -> SimBus {
        let shared = Shared { broker, conn: tokio::sync::Mutex::new(None) };
        SimBus { shared: Arc::new(shared), timeout: DEFAULT_TIMEOUT }
    }

    /// Per-call timeout (default 2 s of simulated time; a long-poll fetch/read/tail waits
    /// its own `wait` plus this).
    pub fn with_timeout(self, timeout: Duration) -> SimBus {
        SimBus { timeout, ..self }
    }

    fn unreachable(&self, reason: impl std::fmt::Display) -> BusError {
        BusError::Unreachable { addr: self.shared.broker.to_string(), reason: reason.to_string() }
    }

    /// Sends `request` and waits for its reply, at most the timeout plus `wait`.
    async fn call(&self, what: &str, request: Request, wait: Duration) -> Reply {
        let budget = self.timeout + wait;
        let deadline = super::now() + budget;
        let timed_out = || BusError::Timeout(format!("{what} at {}: no reply within {budget:?}", self.shared.broker));
        let conn = match timeout(budget, self.connection()).await {
            Ok(conn) => conn?,
            Err(_) => return Err(timed_out()),
        };
        let Ok(mut call) = conn.calls.start(deadline) else {
            return Err(self.unreachable("connection lost"));
        };
        if let Err(e) = conn.tx.send(Box::new((call.id(), request) as RequestFrame)).await {
            self.discard(&conn).await;
            return Err(self.unreachable(e));
        }
        match call.answer().await {
            Ok(reply) => reply.map_err(|e| self.context(what, e)),
            Err(Unanswered::Closed) => Err(self.unreachable(format!("{what}: connection lost before the reply"))),
            Err(Unanswered::TimedOut) => {
                // The broker may still act on the request (a publish may be stored):
                // the caller sees an error, and a retry must rely on the message id.
                // A fresh connection tells at once whether the broker can be reached.
                self.discard(&conn).await;
                Err(timed_out())
            }
        }
    }

    fn context(&self, what: &str, e: BusError) -> BusError {
        match e {
            BusError::Other(text) => BusError::Other(format!("{what} at {}: {text}", self.shared.broker)),
            e => e,
        }
    }

    /// The current connection, made if there is none or it broke.
    async fn connection(&self) -> Result<Arc<Conn>, BusError> {
        let mut slot = self.shared.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            if !conn.calls.is_closed() && !conn.tx.is_closed() {
                return Ok(conn.clone());
            }
        }
        *slot = None;
        let (tx, rx) = open(self.shared.broker).await.map_err(|e| self.unreachable(e))?;
        let calls = Calls::spawn();
        tokio::spawn(read_replies(rx, calls.clone()));
        let conn = Arc::new(Conn { tx, calls });
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Stops using `conn` for new calls (calls in flight on it still get their replies).
    async fn discard(&self, conn: &Arc<Conn>) {
        let mut slot = self.shared.conn.lock().await;
        if slot.as_ref().is_some_and(|current| Arc::ptr_eq(current, conn)) {
            *slot = None;
        }
    }
}

/// Opens a connection to the broker.
async fn open(broker: SocketAddr) -> std::io::Result<(Sender, Receiver)> {
    let endpoint = Endpoint::bind("0.0.0.0:0").await?;
    endpoint.connect1(broker).await
}

/// Hands each reply to the call waiting for it, until the connection breaks.
async fn read_replies(mut rx: Receiver, calls: Calls<Reply>) {
    // Also when this task is dropped (its node was killed), the connection is done.
    let _closed = calls.close_on_drop();
    while let Ok(frame) = rx.recv().await {
        let (id, reply) = *frame.downcast::<ReplyFrame>().expect("bus client: a frame that is not a reply");
        // A call that timed out is no longer waiting; its reply is dropped.
        calls.answer(id, reply);
    }
}

fn unexpected(what: &str, response: Response) -> ! {
    panic!("bus client: {what} got the reply of another request: {response:?}")
}

#[async_trait]
impl EventBus for SimBus {
    async fn ensure_stream(&self, spec: &StreamSpec) -> Result<(), BusError> {
        match self.call("create stream", Request::EnsureStream(spec.clone()), Duration::ZERO).await? {
            Response::Done => Ok(()),
            r => unexpected("ensure_stream", r),
        }
    }

    async fn ensure_consumer(&self, spec: &ConsumerSpec) -> Result<(), BusError> {
        match self.call("create consumer", Request::EnsureConsumer(spec.clone()), Duration::ZERO).await? {
            Response::Done => Ok(()),
            r => unexpected("ensure_consumer", r),
        }
    }

    async fn publish(&self, subject: &str, msg_id: &str, payload: Bytes) -> Result<PubAck, BusError> {
        let msg = Publish { subject: subject.to_string(), msg_id: msg_id.to_string(), payload, trace_parent: None };
        self.publish_traced(msg).await
    }

    async fn publish_traced(&self, msg: Publish) -> Result<PubAck, BusError> {
        match self.call("publish", Request::Publish(msg), Duration::ZERO).await? {
            Response::PubAck(ack) => Ok(ack),
            r => unexpected("publish", r),
        }
    }

    async fn publish_batch(&self, msgs: Vec<Publish>) -> Vec<Result<PubAck, BusError>> {
        let n = msgs.len();
        if n == 0 {
            return Vec::new();
        }
        let deadline = super::now() + self.timeout;
        match self.call("publish", Request::PublishBatch(msgs), Duration::ZERO).await {
            Ok(Response::PubAcks(acks)) => {
                assert_eq!(acks.len(), n, "bus client: a batch publish answered for {} of {n}", acks.len());
                acks
            }
            Ok(Response::SomePubAcks(acks)) => {
                // Some acks never came (the `reply_lost` fault): those publishes
                // time out, as a real client's ack futures would, after the others.
                assert_eq!(acks.len(), n, "bus client: a batch publish answered for {} of {n}", acks.len());
                fafnir_platform::time::sleep_until(deadline).await;
                let lost = || {
                    let budget = self.timeout;
                    BusError::Timeout(format!("publish at {}: no ack within {budget:?}", self.shared.broker))
                };
                acks.into_iter().map(|ack| ack.unwrap_or_else(|| Err(lost()))).collect()
            }
            Ok(r) => unexpected("publish_batch", r),
            // The whole batch failed (or timed out, stored in part or not at all).
            Err(e) => vec![Err(e); n],
        }
    }

    async fn fetch(&self, stream: &str, durable: &str, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let request = Request::Fetch { stream: stream.to_string(), durable: durable.to_string(), max, wait };
        match self.call("fetch", request, wait).await? {
            Response::Deliveries(ds) => Ok(ds),
            r => unexpected("fetch", r),
        }
    }

    async fn ack(&self, token: &AckToken) -> Result<(), BusError> {
        self.settle(token, Settle::Ack).await
    }

    async fn ack_many(&self, tokens: &[AckToken]) -> Result<(), BusError> {
        match tokens {
            [] => Ok(()),
            [token] => self.ack(token).await,
            _ => self.send_one_way("ack", Request::AckMany(tokens.to_vec())).await,
        }
    }

    async fn nak(&self, token: &AckToken, delay: Duration) -> Result<(), BusError> {
        self.settle(token, Settle::Nak(delay)).await
    }

    async fn term(&self, token: &AckToken) -> Result<(), BusError> {
        self.settle(token, Settle::Term).await
    }

    async fn read(
        &self,
        stream: &str,
        filter: &str,
        from_seq: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<StoredMsg>, BusError> {
        let request = Request::Read { stream: stream.to_string(), filter: filter.to_string(), from_seq, max, wait };
        match self.call("read", request, wait).await? {
            Response::Msgs(msgs) => Ok(msgs),
            r => unexpected("read", r),
        }
    }

    async fn last_on_subject(&self, stream: &str, subject: &str) -> Result<Option<StoredMsg>, BusError> {
        let request = Request::LastOnSubject { stream: stream.to_string(), subject: subject.to_string() };
        match self.call("last message", request, Duration::ZERO).await? {
            Response::Last(msg) => Ok(msg),
            r => unexpected("last_on_subject", r),
        }
    }

    async fn consumer_lag(&self, stream: &str, durable: &str) -> Result<ConsumerLag, BusError> {
        let request = Request::ConsumerLag { stream: stream.to_string(), durable: durable.to_string() };
        match self.call("consumer info", request, Duration::ZERO).await? {
            Response::ConsumerLag(lag) => Ok(lag),
            r => unexpected("consumer_lag", r),
        }
    }

    async fn last_seq(&self, stream: &str) -> Result<u64, BusError> {
        match self.call("stream info", Request::LastSeq(stream.to_string()), Duration::ZERO).await? {
            Response::LastSeq(seq) => Ok(seq),
            r => unexpected("last_seq", r),
        }
    }

    async fn tail(&self, stream: &str, filter: &str) -> Result<Box<dyn Tail>, BusError> {
        let mut tail = SimTail {
            bus: self.clone(),
            stream: stream.to_string(),
            filter: filter.to_string(),
            next_seq: None,
            conn: None,
            received: VecDeque::new(),
        };
        tail.open().await?;
        Ok(Box::new(tail))
    }
}

impl SimBus {
    /// Acks, naks and terms are one-way, as NATS's are (a publish to the
    /// delivery's reply subject): done once sent on the connection, which
    /// also carries the next fetch, so the broker sees them in that order.
    /// The broker ignores a settle it cannot apply (an unknown or stale token).
    async fn settle(&self, token: &AckToken, how: Settle) -> Result<(), BusError> {
        self.send_one_way("ack", Request::Settle { token: token.clone(), how }).await
    }

    /// Sends a request the broker answers with nothing.
    async fn send_one_way(&self, what: &str, request: Request) -> Result<(), BusError> {
        let conn = match timeout(self.timeout, self.connection()).await {
            Ok(conn) => conn?,
            Err(_) => return Err(BusError::Timeout(format!("{what} at {}: no connection", self.shared.broker))),
        };
        if let Err(e) = conn.tx.send(Box::new((0u64, request) as RequestFrame)).await {
            self.discard(&conn).await;
            return Err(self.unreachable(e));
        }
        Ok(())
    }
}

/// A tail on a connection of its own. When the connection breaks (the broker
/// restarted), it reopens itself from the sequence after the last message it
/// returned, so it stays gap-free as long as the stream survives, as
/// async-nats' ordered consumer does.
struct SimTail {
    bus: SimBus,
    stream: String,
    filter: String,
    /// The sequence to reopen from; `None` until the first open.
    next_seq: Option<u64>,
    conn: Option<(Sender, Receiver)>,
    /// Received in a frame, not yet returned.
    received: VecDeque<StoredMsg>,
}

impl SimTail {
    /// Opens (or reopens) the tail's connection, within the bus's timeout.
    async fn open(&mut self) -> Result<(), BusError> {
        let bus = &self.bus;
        let what = format!("tail {}", self.stream);
        let request =
            Request::Tail { stream: self.stream.clone(), filter: self.filter.clone(), from_seq: self.next_seq };
        let opening = async {
            let (tx, mut rx) = open(bus.shared.broker).await.map_err(|e| bus.unreachable(e))?;
            tx.send(Box::new((0u64, request) as RequestFrame)).await.map_err(|e| bus.unreachable(e))?;
            let frame = rx.recv().await.map_err(|e| bus.unreachable(e))?;
            let (_, reply) = *frame.downcast::<ReplyFrame>().expect("bus client: a frame that is not a reply");
            match reply.map_err(|e| bus.context(&what, e))? {
                Response::TailOpen { from_seq } => Ok((tx, rx, from_seq)),
                r => unexpected("tail", r),
            }
        };
        let (tx, rx, from_seq) = timeout(bus.timeout, opening).await.map_err(|_| {
            BusError::Timeout(format!("{what} at {}: no reply within {:?}", bus.shared.broker, bus.timeout))
        })??;
        self.next_seq = Some(from_seq);
        self.conn = Some((tx, rx));
        Ok(())
    }
}

impl SimTail {
    /// Hands out the oldest message received and not yet returned.
    fn pop_received(&mut self) -> Option<StoredMsg> {
        let msg = self.received.pop_front()?;
        let expected = self.next_seq.expect("an open tail knows where it is");
        if msg.seq < expected {
            // A memory stream recreated after a broker restart numbers from 1
            // again (as JetStream's does): follow the new numbering.
            tracing::info!(stream = %self.stream, seq = msg.seq, expected, "stream restarted its sequence");
        }
        self.next_seq = Some(msg.seq + 1);
        Some(msg)
    }
}

#[async_trait]
impl Tail for SimTail {
    fn try_next(&mut self) -> Option<StoredMsg> {
        self.pop_received()
    }

    async fn next(&mut self) -> Result<StoredMsg, BusError> {
        let mut backoff = TAIL_RETRY_MIN;
        loop {
            if let Some(msg) = self.pop_received() {
                return Ok(msg);
            }
            if let Some((_, rx)) = self.conn.as_mut() {
                match rx.recv().await {
                    Ok(frame) => {
                        let (_, reply) =
                            *frame.downcast::<ReplyFrame>().expect("bus client: a frame that is not a reply");
                        match reply? {
                            Response::TailMsgs(msgs) => self.received.extend(msgs),
                            r => unexpected("tail", r),
                        }
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!(stream = %self.stream, error = %e, "tail connection lost; reopening");
                        self.conn = None;
                    }
                }
            }
            match self.open().await {
                Ok(()) => backoff = TAIL_RETRY_MIN,
                // The stream is gone (a memory stream after a broker restart): the tail ends.
                Err(e @ BusError::Other(_)) => return Err(e),
                Err(e) => {
                    tracing::debug!(stream = %self.stream, error = %e, "tail: reopening failed");
                    sleep(backoff).await;
                    backoff = (backoff * 2).min(TAIL_RETRY_MAX);
                }
            }
        }
    }
}
