//! The event bus on a real nats-server with JetStream, through async-nats.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream, AckKind};
use async_trait::async_trait;
use bytes::Bytes;
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::{watch, Mutex};

use super::{
    AckToken, BusError, ConsumerLag, ConsumerSpec, Delivery, EventBus, PubAck, Publish, Storage, StoredMsg, StreamSpec,
    Tail,
};

type MessageStream = Pin<Box<dyn Stream<Item = Result<jetstream::Message, BusError>> + Send>>;

/// A connection to nats-server, shared by every service of a process.
pub struct NatsBus {
    addr: String,
    client: async_nats::Client,
    js: jetstream::Context,
    /// Long-lived pull streams of durable consumers, keyed by (stream,
    /// durable), with the connection generation they were made on.
    durables: Mutex<BTreeMap<(String, String), (u64, MessageStream)>>,
    /// Open readers of the followers (reads that wait), keyed by (stream,
    /// filter): one ordered consumer each, kept between reads while the
    /// follower goes on where it left off, instead of one made and deleted
    /// per read (which cost nats-server most of its CPU under load).
    readers: std::sync::Mutex<BTreeMap<(String, String), Reader>>,
    /// Counts the times the connection was re-established after it was lost
    /// (a nats-server restart). Tails and pull streams made before are
    /// remade: async-nats's own recovery of them waits for missed heartbeats,
    /// which left execution reports stalled for about 16 s after a restart.
    reconnects: watch::Receiver<u64>,
}

/// How long one attempt of an idempotent request waits for its answer...
const IDEMPOTENT_ATTEMPT: Duration = Duration::from_millis(2500);
/// ...and how many attempts it makes: as long in all as one request's timeout.
const IDEMPOTENT_ATTEMPTS: u32 = 4;

/// Between attempts to reconnect to a nats-server that went away: short,
/// since the platform stalls meanwhile (async-nats's default backs off to
/// seconds, so a server back after a few seconds was found seconds late).
fn reconnect_delay(attempts: usize) -> Duration {
    Duration::from_millis((50 * attempts as u64).min(500))
}

impl NatsBus {
    /// Connects to nats-server at `addr` (for example `127.0.0.1:4222`).
    pub async fn connect(addr: &str) -> Result<NatsBus, BusError> {
        // The real bus only: its waiters' wake order cannot reach a simulated run.
        #[allow(clippy::disallowed_methods)]
        let (generation, reconnects) = watch::channel(0u64);
        let generation = Arc::new(generation);
        let lost = Arc::new(AtomicBool::new(false));
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(3))
            .request_timeout(Some(Duration::from_secs(10)))
            .reconnect_delay_callback(reconnect_delay)
            .event_callback(move |event| {
                let (generation, lost) = (generation.clone(), lost.clone());
                async move {
                    match event {
                        async_nats::Event::Disconnected => lost.store(true, Ordering::SeqCst),
                        async_nats::Event::Connected if lost.swap(false, Ordering::SeqCst) => {
                            generation.send_modify(|g| *g += 1);
                        }
                        _ => {}
                    }
                }
            })
            .connect(addr)
            .await
            .map_err(|e| BusError::Unreachable { addr: addr.to_string(), reason: e.to_string() })?;
        let js = jetstream::new(client.clone());
        Ok(NatsBus {
            addr: addr.to_string(),
            client,
            js,
            durables: Mutex::new(BTreeMap::new()),
            readers: std::sync::Mutex::new(BTreeMap::new()),
            reconnects,
        })
    }

    fn generation(&self) -> u64 {
        *self.reconnects.borrow()
    }

    /// `call`, or Unreachable as soon as the connection is made again while it waits.
    async fn unless_reconnected<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<T, BusError>>,
    ) -> Result<T, BusError> {
        let mut reconnects = self.reconnects.clone();
        reconnects.mark_unchanged();
        let reconnected = async {
            if reconnects.changed().await.is_err() {
                futures::future::pending::<()>().await;
            }
        };
        tokio::select! {
            biased;
            result = call => result,
            () = reconnected => Err(BusError::Unreachable {
                addr: self.addr.clone(),
                reason: format!("{what}: the connection was lost and made again while waiting"),
            }),
        }
    }

    /// An idempotent request (creating or finding a stream or a consumer,
    /// reading what is stored), tried again when it goes unanswered: each
    /// attempt waits [`IDEMPOTENT_ATTEMPT`], [`IDEMPOTENT_ATTEMPTS`] in all.
    /// A NATS cluster leaves a request unanswered now and then, while a
    /// stream's replicas are being placed or a leader elected (seen with
    /// nats-server 2.9: of several services creating the same replicated
    /// streams at once, some heard nothing for the whole request timeout and
    /// stopped), and the same request made again is answered at once.
    async fn idempotent<T, F, Fut>(&self, what: &str, call: F) -> Result<T, BusError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, BusError>>,
    {
        let mut attempt = 1;
        loop {
            let result = match crate::time::timeout(IDEMPOTENT_ATTEMPT, self.unless_reconnected(what, call())).await {
                Ok(result) => result,
                Err(_) => {
                    Err(BusError::Timeout(format!("{what} at {}: no answer within {IDEMPOTENT_ATTEMPT:?}", self.addr)))
                }
            };
            match result {
                Err(BusError::Timeout(_)) if attempt < IDEMPOTENT_ATTEMPTS => attempt += 1,
                other => return other,
            }
        }
    }

    /// Deletes every stream whose name starts with `prefix` (test clean-up).
    pub async fn delete_streams_with_prefix(&self, prefix: &str) -> Result<usize, BusError> {
        let names: Vec<String> = self.js.stream_names().filter_map(|n| async move { n.ok() }).collect().await;
        let mut deleted = 0;
        for name in names.iter().filter(|n| n.starts_with(prefix)) {
            self.js.delete_stream(name).await.map_err(|e| self.err("delete stream", e))?;
            deleted += 1;
        }
        Ok(deleted)
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> BusError {
        let text = e.to_string();
        if text.contains("timed out") {
            BusError::Timeout(format!("{what} at {}: {text}", self.addr))
        } else {
            BusError::Other(format!("{what} at {}: {text}", self.addr))
        }
    }

    /// A failed publish, classified by what it says about the message: a
    /// missing stream or no JetStream to answer (nothing stored), a refusal
    /// the server answered with (nothing stored), or no answer at all (a
    /// timeout or a connection lost with the publish in flight: it may have
    /// been stored). Callers that must not lose or double a fact retry the
    /// last kind under the same message id.
    fn publish_err(&self, what: &str, e: jetstream::context::PublishError) -> BusError {
        use jetstream::context::PublishErrorKind as Kind;
        let text = format!("{what} at {}: {e}", self.addr);
        match e.kind() {
            Kind::StreamNotFound => BusError::NotFound(text),
            Kind::TimedOut => BusError::Timeout(text),
            Kind::BrokenPipe => BusError::Unreachable { addr: self.addr.clone(), reason: format!("{what}: {e}") },
            _ => BusError::Other(text),
        }
    }

    async fn stream(&self, name: &str) -> Result<jetstream::stream::Stream<()>, BusError> {
        self.js.get_stream_no_info(name).await.map_err(|e| self.err("get stream", e))
    }

    async fn settle(&self, token: &AckToken, kind: AckKind) -> Result<(), BusError> {
        let payload: Bytes = kind.into();
        self.client.publish(token.0.clone(), payload).await.map_err(|e| self.err("ack", e))
    }

    async fn durable_stream(&self, stream: &str, durable: &str) -> Result<MessageStream, BusError> {
        let consumer: consumer::PullConsumer =
            self.stream(stream).await?.get_consumer(durable).await.map_err(|e| self.err("get consumer", e))?;
        let messages = consumer.messages().await.map_err(|e| self.err("pull", e))?;
        let addr = self.addr.clone();
        Ok(Box::pin(messages.map(move |m| m.map_err(|e| BusError::Other(format!("pull at {addr}: {e}"))))))
    }
}

/// A follower's open reader: an ordered consumer's messages, the sequence
/// the next read must start at, and the connection generation it was made on.
struct Reader {
    messages: MessageStream,
    next_seq: u64,
    generation: u64,
}

fn stored(msg: &jetstream::Message) -> Result<(StoredMsg, u64, u64), BusError> {
    let info = msg.info().map_err(|e| BusError::Other(format!("message info: {e}")))?;
    let stored = StoredMsg {
        subject: msg.subject.to_string(),
        seq: info.stream_sequence,
        payload: msg.payload.clone(),
        trace_parent: trace_parent(msg.headers.as_ref()),
    };
    Ok((stored, info.delivered.max(1) as u64, info.pending))
}

/// The header a message's trace context travels in (W3C trace context).
const TRACEPARENT: &str = "traceparent";

fn trace_parent(headers: Option<&async_nats::HeaderMap>) -> Option<String> {
    headers?.get(TRACEPARENT).map(|v| v.as_str().to_string())
}

/// A publish of `payload` with its message id and, if any, its trace context.
fn publish_message(payload: Bytes, msg_id: &str, trace: Option<&str>) -> jetstream::message::PublishMessage {
    let mut publish = jetstream::message::PublishMessage::build().payload(payload).message_id(msg_id);
    if let Some(trace) = trace {
        publish = publish.header(TRACEPARENT, trace);
    }
    publish
}

impl NatsBus {
    async fn consumer_lag_now(&self, stream: &str, durable: &str) -> Result<ConsumerLag, BusError> {
        let mut consumer: consumer::PullConsumer =
            self.stream(stream).await?.get_consumer(durable).await.map_err(|e| self.err("get consumer", e))?;
        let info = consumer.info().await.map_err(|e| self.err("consumer info", e))?;
        Ok(ConsumerLag { pending: info.num_pending, ack_pending: info.num_ack_pending as u64 })
    }

    async fn last_seq_now(&self, stream: &str) -> Result<u64, BusError> {
        let mut handle = self.js.get_stream(stream).await.map_err(|e| self.err("get stream", e))?;
        let info = handle.info().await.map_err(|e| self.err("stream info", e))?;
        Ok(info.state.last_sequence)
    }

    async fn ensure_stream_now(&self, spec: &StreamSpec) -> Result<(), BusError> {
        let config = stream::Config {
            name: spec.name.clone(),
            subjects: spec.subjects.clone(),
            storage: match spec.storage {
                Storage::File => stream::StorageType::File,
                Storage::Memory => stream::StorageType::Memory,
            },
            duplicate_window: spec.duplicate_window,
            max_messages: if spec.max_msgs > 0 { spec.max_msgs } else { -1 },
            // Direct gets are answered by any replica, a follower that has not
            // caught up among them (stale, or on a stream just created no
            // answer at all: seen with nats-server 2.9 as reads timing out at
            // start-up). With one replica it is the leader; with more, reads
            // go through the stream's leader (STREAM.MSG.GET).
            allow_direct: spec.replicas <= 1,
            num_replicas: spec.replicas,
            ..Default::default()
        };
        self.js.get_or_create_stream(config).await.map_err(|e| self.err("create stream", e))?;
        Ok(())
    }

    async fn ensure_consumer_now(&self, spec: &ConsumerSpec) -> Result<(), BusError> {
        let config = consumer::pull::Config {
            durable_name: Some(spec.durable.clone()),
            filter_subject: spec.filter.clone(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: spec.ack_wait,
            max_deliver: spec.max_deliver,
            max_ack_pending: spec.max_ack_pending,
            ..Default::default()
        };
        self.stream(&spec.stream)
            .await?
            .get_or_create_consumer(&spec.durable, config)
            .await
            .map_err(|e| self.err("create consumer", e))?;
        Ok(())
    }

    async fn publish_now(
        &self,
        subject: &str,
        msg_id: &str,
        payload: Bytes,
        trace: Option<&str>,
    ) -> Result<PubAck, BusError> {
        let publish = publish_message(payload, msg_id, trace);
        let ack = self
            .js
            .send_publish(subject.to_string(), publish)
            .await
            .map_err(|e| self.publish_err("publish", e))?
            .await
            .map_err(|e| self.publish_err("publish ack", e))?;
        Ok(PubAck { stream: ack.stream, seq: ack.sequence, duplicate: ack.duplicate })
    }

    async fn publish_batch_now(&self, msgs: Vec<Publish>) -> Vec<Result<PubAck, BusError>> {
        // Every publish is sent before any ack is awaited: one connection keeps
        // them in order, and the server stores them in that order.
        let mut sent = Vec::with_capacity(msgs.len());
        for m in msgs {
            let publish = publish_message(m.payload, &m.msg_id, m.trace_parent.as_deref());
            sent.push(self.js.send_publish(m.subject, publish).await.map_err(|e| self.publish_err("publish", e)));
        }
        let mut out = Vec::with_capacity(sent.len());
        for s in sent {
            out.push(match s {
                Ok(ack) => ack
                    .await
                    .map(|ack| PubAck { stream: ack.stream, seq: ack.sequence, duplicate: ack.duplicate })
                    .map_err(|e| self.publish_err("publish ack", e)),
                Err(e) => Err(e),
            });
        }
        out
    }

    async fn fetch_now(
        &self,
        stream: &str,
        durable: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BusError> {
        let key = (stream.to_string(), durable.to_string());
        let mut durables = self.durables.lock().await;
        let generation = self.generation();
        if durables.get(&key).is_none_or(|(made_on, _)| *made_on != generation) {
            let messages = self.durable_stream(stream, durable).await?;
            durables.insert(key.clone(), (generation, messages));
        }
        let (_, messages) = durables.get_mut(&key).expect("inserted above");
        let mut out = Vec::new();
        let first = match crate::time::timeout(wait, messages.next()).await {
            Err(_elapsed) => return Ok(out),
            Ok(first) => first,
        };
        let mut next = first;
        loop {
            match next {
                Some(Ok(msg)) => {
                    let (msg_stored, delivered, pending) = stored(&msg)?;
                    let reply = msg.reply.as_ref().map(|r| r.to_string()).unwrap_or_default();
                    out.push(Delivery { msg: msg_stored, delivered, pending, token: AckToken(reply) });
                }
                Some(Err(e)) => {
                    // A broken pull stream is rebuilt on the next fetch.
                    durables.remove(&key);
                    return if out.is_empty() { Err(e) } else { Ok(out) };
                }
                None => {
                    durables.remove(&key);
                    return Ok(out);
                }
            }
            if out.len() >= max {
                return Ok(out);
            }
            match messages.next().now_or_never() {
                Some(item) => next = item,
                None => return Ok(out),
            }
        }
    }

    async fn ack_now(&self, token: &AckToken) -> Result<(), BusError> {
        self.settle(token, AckKind::Ack).await
    }

    async fn ack_many_now(&self, tokens: &[AckToken]) -> Result<(), BusError> {
        // Each ack is a publish to its delivery's reply subject; the client
        // buffers them and flushes them together.
        for token in tokens {
            self.settle(token, AckKind::Ack).await?;
        }
        Ok(())
    }

    async fn nak_now(&self, token: &AckToken, delay: Duration) -> Result<(), BusError> {
        self.settle(token, AckKind::Nak(Some(delay))).await
    }

    async fn term_now(&self, token: &AckToken) -> Result<(), BusError> {
        self.settle(token, AckKind::Term).await
    }

    /// A read that waits: the follower's reader for (stream, filter) if it
    /// is where this read starts, else a new one from `from_seq`. The reader
    /// is kept for the next read unless it broke.
    async fn read_following(
        &self,
        stream: &str,
        filter: &str,
        from_seq: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<StoredMsg>, BusError> {
        let key = (stream.to_string(), filter.to_string());
        let generation = self.generation();
        // Taken out while in use: two reads of the same key at once each get their own.
        let kept = self.readers.lock().expect("readers lock").remove(&key);
        let mut reader = match kept.filter(|r| r.next_seq == from_seq.max(1) && r.generation == generation) {
            Some(r) => r,
            None => self.open_reader(stream, filter, from_seq.max(1), generation).await?,
        };
        let mut out = Vec::new();
        // Nothing within `wait`: no message, and the reader is kept.
        let mut next = crate::time::timeout(wait, reader.messages.next()).await.ok();
        let mut broken = None;
        while let Some(item) = next.take() {
            match item {
                Some(Ok(msg)) => out.push(stored(&msg)?.0),
                Some(Err(e)) => broken = Some(e),
                None => broken = Some(self.err("read", "the reader ended")),
            }
            if broken.is_some() || out.len() >= max {
                break;
            }
            next = reader.messages.next().now_or_never();
        }
        if let Some(e) = broken {
            // Not kept: the next read opens a new reader where it starts.
            return if out.is_empty() { Err(e) } else { Ok(out) };
        }
        reader.next_seq = out.last().map_or(reader.next_seq, |m| m.seq + 1);
        self.readers.lock().expect("readers lock").insert(key, reader);
        Ok(out)
    }

    async fn open_reader(
        &self,
        stream: &str,
        filter: &str,
        from_seq: u64,
        generation: u64,
    ) -> Result<Reader, BusError> {
        let config = consumer::pull::OrderedConfig {
            filter_subject: filter.to_string(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: from_seq },
            ..Default::default()
        };
        let consumer =
            self.stream(stream).await?.create_consumer(config).await.map_err(|e| self.err("create reader", e))?;
        let messages = consumer.messages().await.map_err(|e| self.err("read", e))?;
        let addr = self.addr.clone();
        let messages: MessageStream =
            Box::pin(messages.map(move |m| m.map_err(|e| BusError::Other(format!("read at {addr}: {e}")))));
        Ok(Reader { messages, next_seq: from_seq, generation })
    }

    async fn read_now(
        &self,
        stream: &str,
        filter: &str,
        from_seq: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<StoredMsg>, BusError> {
        if !wait.is_zero() {
            return self.read_following(stream, filter, from_seq, max, wait).await;
        }
        let handle = self.stream(stream).await?;
        let config = consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: from_seq.max(1) },
            ack_policy: consumer::AckPolicy::None,
            filter_subject: filter.to_string(),
            inactive_threshold: Duration::from_secs(30),
            memory_storage: true,
            ..Default::default()
        };
        let consumer: consumer::PullConsumer =
            handle.create_consumer(config).await.map_err(|e| self.err("create reader", e))?;
        let pending = consumer.cached_info().num_pending as usize;
        let name = consumer.cached_info().name.clone();
        let (want, expires) = match pending {
            0 if wait.is_zero() => (0, wait),
            0 => (1, wait),
            n => (n.min(max), Duration::from_secs(10)),
        };
        let mut out = Vec::with_capacity(want);
        if want > 0 {
            let mut batch = consumer
                .batch()
                .max_messages(want)
                .expires(expires.max(Duration::from_millis(10)))
                .messages()
                .await
                .map_err(|e| self.err("read", e))?;
            while let Some(msg) = batch.next().await {
                let msg = msg.map_err(|e| self.err("read", e))?;
                out.push(stored(&msg)?.0);
                if out.len() >= want {
                    break;
                }
            }
        }
        // Best effort: an abandoned reader also expires after its inactive threshold.
        let _ = handle.delete_consumer(&name).await;
        Ok(out)
    }

    async fn last_on_subject_now(&self, stream: &str, subject: &str) -> Result<Option<StoredMsg>, BusError> {
        let handle = self.stream(stream).await?;
        match handle.get_last_raw_message_by_subject(subject).await {
            Ok(msg) => {
                let trace_parent = trace_parent(Some(&msg.headers));
                Ok(Some(StoredMsg {
                    subject: msg.subject.to_string(),
                    seq: msg.sequence,
                    payload: msg.payload,
                    trace_parent,
                }))
            }
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(self.err("last message", e)),
        }
    }
}

/// Every call gives up when the connection is made again while it waits: a
/// request or pull in flight when nats-server went away is answered by no
/// one (async-nats waits out its request timeout, seconds), so the caller
/// hears at once and tries again on the new connection. A publish so cut
/// short may have been stored: it is reported as no answer (Unreachable).
#[async_trait]
impl EventBus for NatsBus {
    async fn ensure_stream(&self, spec: &StreamSpec) -> Result<(), BusError> {
        self.idempotent("ensure_stream", || self.ensure_stream_now(spec)).await
    }

    async fn ensure_consumer(&self, spec: &ConsumerSpec) -> Result<(), BusError> {
        self.idempotent("ensure_consumer", || self.ensure_consumer_now(spec)).await
    }

    async fn publish(&self, subject: &str, msg_id: &str, payload: Bytes) -> Result<PubAck, BusError> {
        self.unless_reconnected("publish", self.publish_now(subject, msg_id, payload, None)).await
    }

    async fn publish_traced(&self, msg: Publish) -> Result<PubAck, BusError> {
        let publish = self.publish_now(&msg.subject, &msg.msg_id, msg.payload.clone(), msg.trace_parent.as_deref());
        self.unless_reconnected("publish", publish).await
    }

    async fn publish_batch(&self, msgs: Vec<Publish>) -> Vec<Result<PubAck, BusError>> {
        let n = msgs.len();
        match self.unless_reconnected("publish", async { Ok(self.publish_batch_now(msgs).await) }).await {
            Ok(results) => results,
            Err(e) => vec![Err(e); n],
        }
    }

    async fn fetch(&self, stream: &str, durable: &str, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        self.unless_reconnected("fetch", self.fetch_now(stream, durable, max, wait)).await
    }

    async fn ack(&self, token: &AckToken) -> Result<(), BusError> {
        self.unless_reconnected("ack", self.ack_now(token)).await
    }

    async fn ack_many(&self, tokens: &[AckToken]) -> Result<(), BusError> {
        self.unless_reconnected("ack_many", self.ack_many_now(tokens)).await
    }

    async fn nak(&self, token: &AckToken, delay: Duration) -> Result<(), BusError> {
        self.unless_reconnected("nak", self.nak_now(token, delay)).await
    }

    async fn term(&self, token: &AckToken) -> Result<(), BusError> {
        self.unless_reconnected("term", self.term_now(token)).await
    }

    async fn read(
        &self,
        stream: &str,
        filter: &str,
        from_seq: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<StoredMsg>, BusError> {
        self.unless_reconnected("read", self.read_now(stream, filter, from_seq, max, wait)).await
    }

    async fn last_on_subject(&self, stream: &str, subject: &str) -> Result<Option<StoredMsg>, BusError> {
        self.idempotent("last_on_subject", || self.last_on_subject_now(stream, subject)).await
    }

    async fn consumer_lag(&self, stream: &str, durable: &str) -> Result<ConsumerLag, BusError> {
        self.idempotent("consumer_lag", || self.consumer_lag_now(stream, durable)).await
    }

    async fn last_seq(&self, stream: &str) -> Result<u64, BusError> {
        self.idempotent("last_seq", || self.last_seq_now(stream)).await
    }

    async fn tail(&self, stream: &str, filter: &str) -> Result<Box<dyn Tail>, BusError> {
        let config = consumer::pull::OrderedConfig {
            filter_subject: filter.to_string(),
            deliver_policy: consumer::DeliverPolicy::New,
            ..Default::default()
        };
        let consumer =
            self.stream(stream).await?.create_consumer(config).await.map_err(|e| self.err("create tail", e))?;
        let messages = consumer.messages().await.map_err(|e| self.err("tail", e))?;
        let mut reconnects = self.reconnects.clone();
        reconnects.mark_unchanged();
        Ok(Box::new(NatsTail { messages: Box::pin(messages), addr: self.addr.clone(), failed: None, reconnects }))
    }
}

struct NatsTail {
    messages: Pin<Box<consumer::pull::Ordered>>,
    addr: String,
    /// An error met by `try_next`, for the next `next`.
    failed: Option<BusError>,
    /// Changes when the connection is re-established: the tail then fails,
    /// and its owner opens a new one and reads back what it missed.
    reconnects: watch::Receiver<u64>,
}

impl NatsTail {
    fn reconnected(&self) -> BusError {
        BusError::Unreachable {
            addr: self.addr.clone(),
            reason: "reconnected to the broker; the tail must reopen".into(),
        }
    }
}

impl NatsTail {
    fn outcome(&self, item: Option<Result<jetstream::Message, impl std::fmt::Display>>) -> Result<StoredMsg, BusError> {
        match item {
            Some(Ok(msg)) => Ok(stored(&msg)?.0),
            Some(Err(e)) => Err(BusError::Other(format!("tail at {}: {e}", self.addr))),
            None => Err(BusError::Other(format!("tail at {} ended", self.addr))),
        }
    }
}

#[async_trait]
impl Tail for NatsTail {
    async fn next(&mut self) -> Result<StoredMsg, BusError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let reconnected = async {
            if self.reconnects.changed().await.is_err() {
                // The bus is gone: nothing will reconnect.
                futures::future::pending::<()>().await;
            }
        };
        tokio::select! {
            biased;
            () = reconnected => Err(self.reconnected()),
            item = self.messages.next() => self.outcome(item),
        }
    }

    fn try_next(&mut self) -> Option<StoredMsg> {
        if self.failed.is_some() {
            return None;
        }
        if self.reconnects.has_changed().unwrap_or(false) {
            self.failed = Some(self.reconnected());
            return None;
        }
        let item = self.messages.next().now_or_never()?;
        match self.outcome(item) {
            Ok(msg) => Some(msg),
            Err(e) => {
                self.failed = Some(e);
                None
            }
        }
    }
}
