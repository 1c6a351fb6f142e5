//! [`SimBus`]: the platform's [`EventBus`] spoken to the simulated broker.
//!
//! One connection per client (shared by its clones), made on first use and
//! made again after it broke or a call on it timed out; requests are tagged
//! with an id and may be in flight together, as on one NATS connection. Each
//! tail has a connection of its own.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fafnir_platform::bus::{AckToken, BusError, ConsumerSpec, Delivery, EventBus, PubAck, StoredMsg, StreamSpec, Tail};
use madsim::net::{Endpoint, Receiver, Sender};
use madsim::time::{sleep, timeout};
use tokio::sync::oneshot;

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
    next_id: AtomicU64,
    /// The current connection; `None` before the first call and after one broke.
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
}

struct Conn {
    tx: Sender,
    replies: Arc<Mutex<Replies>>,
}

/// Calls waiting for their reply on one connection.
#[derive(Default)]
struct Replies {
    waiting: BTreeMap<u64, oneshot::Sender<Reply>>,
    /// The connection broke: nothing more will arrive.
    closed: bool,
}

impl SimBus {
    /// A client of the broker at `broker` (connects lazily, reconnects after failures).
    pub fn new(broker: SocketAddr) -> SimBus {
        let shared = Shared { broker, next_id: AtomicU64::new(1), conn: tokio::sync::Mutex::new(None) };
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
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply_rx) = oneshot::channel();
        {
            let mut replies = conn.replies.lock().expect("replies lock");
            if replies.closed {
                return Err(self.unreachable("connection lost"));
            }
            replies.waiting.insert(id, reply_tx);
        }
        let _forget = Forget { replies: &conn.replies, id };
        if let Err(e) = conn.tx.send(Box::new((id, request) as RequestFrame)).await {
            self.discard(&conn).await;
            return Err(self.unreachable(e));
        }
        match timeout(deadline.saturating_duration_since(super::now()), reply_rx).await {
            Ok(Ok(reply)) => reply.map_err(|e| self.context(what, e)),
            Ok(Err(_closed)) => Err(self.unreachable(format!("{what}: connection lost before the reply"))),
            Err(_) => {
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
            if !conn.replies.lock().expect("replies lock").closed && !conn.tx.is_closed() {
                return Ok(conn.clone());
            }
        }
        *slot = None;
        let (tx, rx) = open(self.shared.broker).await.map_err(|e| self.unreachable(e))?;
        let replies = Arc::new(Mutex::new(Replies::default()));
        tokio::spawn(read_replies(rx, replies.clone()));
        let conn = Arc::new(Conn { tx, replies });
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
async fn read_replies(mut rx: Receiver, replies: Arc<Mutex<Replies>>) {
    // Also when this task is dropped (its node was killed), the connection is done.
    let _closed = Closed(&replies);
    while let Ok(frame) = rx.recv().await {
        let (id, reply) = *frame.downcast::<ReplyFrame>().expect("bus client: a frame that is not a reply");
        // A call that timed out is no longer waiting; its reply is dropped.
        if let Some(waiting) = replies.lock().expect("replies lock").waiting.remove(&id) {
            let _ = waiting.send(reply);
        }
    }
}

/// Marks a connection broken when its reader ends.
struct Closed<'a>(&'a Mutex<Replies>);

impl Drop for Closed<'_> {
    fn drop(&mut self) {
        if let Ok(mut replies) = self.0.lock() {
            replies.closed = true;
            // Dropping the senders fails the calls still waiting.
            replies.waiting.clear();
        }
    }
}

/// Removes a call from its connection's waiting list however the call ends.
struct Forget<'a> {
    replies: &'a Mutex<Replies>,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if let Ok(mut replies) = self.replies.lock() {
            replies.waiting.remove(&self.id);
        }
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
        let request = Request::Publish { subject: subject.to_string(), msg_id: msg_id.to_string(), payload };
        match self.call("publish", request, Duration::ZERO).await? {
            Response::PubAck(ack) => Ok(ack),
            r => unexpected("publish", r),
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

    async fn tail(&self, stream: &str, filter: &str) -> Result<Box<dyn Tail>, BusError> {
        let mut tail = SimTail {
            bus: self.clone(),
            stream: stream.to_string(),
            filter: filter.to_string(),
            next_seq: None,
            conn: None,
        };
        tail.open().await?;
        Ok(Box::new(tail))
    }
}

impl SimBus {
    async fn settle(&self, token: &AckToken, how: Settle) -> Result<(), BusError> {
        match self.call("ack", Request::Settle { token: token.clone(), how }, Duration::ZERO).await? {
            Response::Done => Ok(()),
            r => unexpected("settle", r),
        }
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

#[async_trait]
impl Tail for SimTail {
    async fn next(&mut self) -> Result<StoredMsg, BusError> {
        let mut backoff = TAIL_RETRY_MIN;
        loop {
            if let Some((_, rx)) = self.conn.as_mut() {
                match rx.recv().await {
                    Ok(frame) => {
                        let (_, reply) =
                            *frame.downcast::<ReplyFrame>().expect("bus client: a frame that is not a reply");
                        match reply? {
                            Response::TailMsg(msg) => {
                                let expected = self.next_seq.expect("an open tail knows where it is");
                                if msg.seq < expected {
                                    // A memory stream recreated after a broker restart numbers from 1
                                    // again (as JetStream's does): follow the new numbering.
                                    tracing::info!(stream = %self.stream, seq = msg.seq, expected, "stream restarted its sequence");
                                }
                                self.next_seq = Some(msg.seq + 1);
                                return Ok(msg);
                            }
                            r => unexpected("tail", r),
                        }
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
