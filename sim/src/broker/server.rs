//! The broker node: accepts connections and serves requests on the
//! [`Store`] kept on the [`BrokerDisk`].
//!
//! Requests of one connection are handled in the order they arrive (as
//! nats-server handles a client's messages), except that a fetch or read that
//! has to wait is handed to a task of its own, so it does not hold up the
//! requests behind it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use fafnir_platform::bus::{subject_matches, AckToken, BusError, PubAck, Publish, StoredMsg};
use fafnir_platform::services::ServiceTime;
use fafnir_platform::time::{sleep_until, Instant};
use madsim::net::{Endpoint, Receiver, Sender};
use tokio::sync::{mpsc, Notify};

use super::proto::{Reply, ReplyFrame, Request, RequestFrame, Response};
use super::store::{Settle, Store};
use super::BrokerDisk;
use crate::reply_loss::ReplyLoss;
use crate::service_time::Modelled;
use crate::trace::Trace;

/// Runs the broker on the current madsim node, listening on `addr`, until the node is killed.
pub async fn serve(addr: SocketAddr, disk: BrokerDisk, trace: Trace) {
    serve_with(addr, disk, trace, ReplyLoss::never()).await;
}

/// [`serve`], dropping the replies `loss` says are lost (the `reply_lost` fault).
pub async fn serve_with(addr: SocketAddr, disk: BrokerDisk, trace: Trace, loss: ReplyLoss) {
    serve_modelled(addr, disk, trace, loss, None).await;
}

/// [`serve_with`], with the broker's modelled processing time (a
/// calibration's `[service_time.broker]`), on the cores the platform shares.
///
/// A model with a wake curve (`ServiceModel::warm`) is per message, as
/// `fafnir calibrate`'s probe measures nats-server: each published message
/// costs `broker.publish` before it is acknowledged (and can be delivered),
/// each message delivered (a fetch's or a read's answer, a tail's frame)
/// `broker.deliver` before it is sent, each ack, nak or term `broker.ack`;
/// and work after an idle gap first pays (a part of) `broker.wake`, so that
/// a busy broker's messages cost less each, as real ones do. Any other
/// model (an older calibration) costs `broker.publish` once per publish
/// request and nothing else.
pub async fn serve_modelled(
    addr: SocketAddr,
    disk: BrokerDisk,
    trace: Trace,
    loss: ReplyLoss,
    service_time: Option<Arc<Modelled>>,
) {
    // What a process start finds on its disk: file streams, and their
    // consumers as last saved (see `Store::start`).
    let incarnation = disk.lock().start(super::now());
    // Runs when the node dies (its tasks are dropped at the instant of the kill).
    let _stopped = Stopped { disk: disk.clone(), incarnation };
    let endpoint = match Endpoint::bind(addr).await {
        Ok(endpoint) => endpoint,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            // madsim's Handle::restart (unlike kill) leaves the dead incarnation's
            // sockets bound; a real process restart frees them, so free them here.
            tracing::warn!(%addr, "broker: address held by the node's previous run; releasing its sockets");
            madsim::net::NetSim::current().reset_node(madsim::plugin::node());
            Endpoint::bind(addr).await.unwrap_or_else(|e| panic!("broker: cannot listen on {addr}: {e}"))
        }
        Err(e) => panic!("broker: cannot listen on {addr}: {e}"),
    };
    tracing::debug!(%addr, "broker listening");
    let broker =
        Arc::new(Broker { disk, trace, loss, service_time, changed: Mutex::default(), tails: Mutex::default() });
    loop {
        match endpoint.accept1().await {
            Ok((tx, rx, peer)) => {
                tokio::spawn(broker.clone().connection(Arc::new(tx), rx, peer));
            }
            Err(e) => {
                tracing::warn!(%addr, error = %e, "broker: accept failed");
                return;
            }
        }
    }
}

/// At most this many messages travel in one tail frame.
const TAIL_FRAME_MAX: usize = 256;

/// Tells the disk when this run of the broker ended (a kill drops the task).
struct Stopped {
    disk: BrokerDisk,
    incarnation: u64,
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // Outside a simulation (a runtime torn down with the node in it) nothing is left to save.
        if madsim::time::TimeHandle::try_current().is_none() {
            return;
        }
        if let Ok(mut store) = self.disk.store.lock() {
            store.stop(self.incarnation, fafnir_platform::time::Instant::now());
        }
    }
}

struct Broker {
    disk: BrokerDisk,
    trace: Trace,
    /// Drops replies while the `reply_lost` fault is in force.
    loss: ReplyLoss,
    /// The modelled processing time (None: none); see [`serve_modelled`].
    service_time: Option<Arc<Modelled>>,
    /// Per stream: notified when something a waiting fetch or read may want changes.
    changed: Mutex<BTreeMap<String, Arc<Notify>>>,
    /// Open tails by id, each with the channel its connection task forwards.
    tails: Mutex<Tails>,
}

#[derive(Default)]
struct Tails {
    next_id: u64,
    open: BTreeMap<u64, TailSub>,
}

struct TailSub {
    stream: String,
    filter: String,
    tx: mpsc::UnboundedSender<StoredMsg>,
}

impl Broker {
    async fn connection(self: Arc<Self>, tx: Arc<Sender>, mut rx: Receiver, peer: SocketAddr) {
        tracing::trace!(%peer, "broker: connection");
        while let Ok(frame) = rx.recv().await {
            let (id, request) = *frame.downcast::<RequestFrame>().expect("broker: a frame that is not a bus request");
            match request {
                Request::Tail { stream, filter, from_seq } => {
                    // The connection is the tail's from now on.
                    self.tail(&tx, id, stream, filter, from_seq).await;
                    return;
                }
                Request::Fetch { stream, durable, max, wait } => {
                    let now = super::now();
                    let result = self.fetch_now(&stream, &durable, max, now);
                    match result {
                        Ok(ds) if ds.is_empty() && !wait.is_zero() => {
                            let me = self.clone();
                            let tx = tx.clone();
                            tokio::spawn(async move {
                                let reply = me.fetch_wait(&tx, &stream, &durable, max, now + wait).await;
                                me.deliver(&tx, id, reply).await;
                            });
                        }
                        result => self.deliver(&tx, id, result.map(Response::Deliveries)).await,
                    }
                }
                Request::Read { stream, filter, from_seq, max, wait } => {
                    let now = super::now();
                    let result = self.disk.lock().read(&stream, &filter, from_seq, max);
                    match result {
                        Ok(ms) if ms.is_empty() && !wait.is_zero() && max > 0 => {
                            let me = self.clone();
                            let tx = tx.clone();
                            tokio::spawn(async move {
                                let reply = me.read_wait(&tx, &stream, &filter, from_seq, max, now + wait).await;
                                me.deliver(&tx, id, reply).await;
                            });
                        }
                        result => self.deliver(&tx, id, result.map(Response::Msgs)).await,
                    }
                }
                Request::Settle { token, how } => {
                    self.cost("broker.ack", 1).await;
                    self.settle(&token, how);
                }
                Request::AckMany(tokens) => {
                    self.cost("broker.ack", tokens.len()).await;
                    tokens.iter().for_each(|token| self.settle(token, Settle::Ack));
                }
                other => {
                    // A batch is pipelined on one connection, as a NATS
                    // client's publishes are: per message, or (an older
                    // model) one unit for the batch.
                    let published = match &other {
                        Request::Publish(_) => Some(1),
                        Request::PublishBatch(msgs) => Some(msgs.len()),
                        _ => None,
                    };
                    match (&self.service_time, published) {
                        (Some(model), Some(n)) if model.per_message() => self.cost("broker.publish", n).await,
                        (Some(model), Some(_)) => model.process("broker.publish").await,
                        _ => {}
                    }
                    let reply = self.handle(other);
                    self.reply(&tx, id, reply).await;
                }
            }
        }
    }

    /// The modelled time of `n` messages of `handler` (see [`serve_modelled`]),
    /// when the broker is modelled per message.
    async fn cost(&self, handler: &'static str, n: usize) {
        if let Some(model) = self.service_time.as_ref().filter(|m| m.per_message()) {
            model.process_many(handler, "broker.wake", n).await;
        }
    }

    /// The platform's wake-up for an answer, when it has been idle (see
    /// `ServiceModel::reply_wake`): the answer is taken up that much later.
    async fn platform_wakes(&self) {
        let delay = self.service_time.as_ref().map_or(std::time::Duration::ZERO, |m| m.reply_delay());
        if !delay.is_zero() {
            fafnir_platform::time::sleep(delay).await;
        }
    }

    /// Sends a fetch's or a read's answer, after the time its messages take to deliver.
    async fn deliver(&self, tx: &Sender, id: u64, reply: Reply) {
        let n = match &reply {
            Ok(Response::Deliveries(ds)) => ds.len(),
            Ok(Response::Msgs(ms)) => ms.len(),
            _ => 0,
        };
        self.cost("broker.deliver", n).await;
        self.reply(tx, id, reply).await;
    }

    /// Sends a request's reply, unless the `reply_lost` fault drops it: the
    /// request took effect, and the client waits for an answer that never
    /// comes. The acks of a pipelined batch are lost one by one, as each
    /// publish of a batch has an ack of its own on a NATS connection.
    async fn reply(&self, tx: &Sender, id: u64, reply: Reply) {
        self.platform_wakes().await;
        let reply = match reply {
            Ok(Response::PubAcks(acks)) => {
                let kept: Vec<_> = acks.into_iter().map(|ack| (!self.loss.lose()).then_some(ack)).collect();
                let lost = kept.iter().filter(|ack| ack.is_none()).count();
                if lost == 0 {
                    Ok(Response::PubAcks(kept.into_iter().flatten().collect()))
                } else {
                    self.trace.record("reply-lost", &[&id.to_le_bytes()[..], &(lost as u64).to_le_bytes()].concat());
                    if lost == kept.len() {
                        return;
                    }
                    Ok(Response::SomePubAcks(kept))
                }
            }
            reply => {
                if self.loss.lose() {
                    self.trace.record("reply-lost", &id.to_le_bytes());
                    return;
                }
                reply
            }
        };
        send(tx, id, reply).await;
    }

    /// The requests answered at once.
    fn handle(&self, request: Request) -> Reply {
        let now = super::now();
        match request {
            Request::EnsureStream(spec) => self.disk.lock().ensure_stream(&spec).map(|()| Response::Done),
            Request::EnsureConsumer(spec) => {
                let result = self.disk.lock().ensure_consumer(&spec);
                result.map(|()| Response::Done)
            }
            Request::Publish(msg) => self.publish(msg, now).map(Response::PubAck),
            Request::PublishBatch(msgs) => {
                Ok(Response::PubAcks(msgs.into_iter().map(|m| self.publish(m, now)).collect()))
            }
            Request::LastOnSubject { stream, subject } => {
                self.disk.lock().last_on_subject(&stream, &subject).map(Response::Last)
            }
            Request::ConsumerLag { stream, durable } => {
                self.disk.lock().consumer_lag(&stream, &durable).map(Response::ConsumerLag)
            }
            Request::LastSeq(stream) => self.disk.lock().next_seq(&stream).map(|next| Response::LastSeq(next - 1)),
            Request::Fetch { .. }
            | Request::Read { .. }
            | Request::Tail { .. }
            | Request::Settle { .. }
            | Request::AckMany(_) => {
                unreachable!("handled by the connection")
            }
        }
    }

    /// Stores one message (or finds its duplicate) and tells who waits for it.
    fn publish(&self, msg: Publish, now: Instant) -> Result<PubAck, BusError> {
        let published =
            self.disk.lock().publish(&msg.subject, &msg.msg_id, (msg.payload, msg.trace_parent), now, &self.trace)?;
        if let Some(msg) = published.stored {
            self.stored(&published.ack.stream, msg);
        }
        Ok(published.ack)
    }

    /// Applies an ack, nak or term. Settles are one-way (see the client):
    /// one the store cannot apply (an unknown or stale token) is ignored,
    /// and nothing goes back, not even an error.
    fn settle(&self, token: &AckToken, how: Settle) {
        if let Err(e) = self.disk.lock().settle(token, how, super::now()) {
            tracing::debug!(token = %token.0, error = %e, "settle ignored");
            return;
        }
        // Whatever the stream, a waiting fetch may now deliver (an ack frees a
        // max_ack_pending slot, a nak moves a redelivery).
        if let Some(stream) = token.0.strip_prefix("$JS.ACK.").and_then(|t| t.split('.').next()) {
            self.notify(stream);
        }
    }

    /// A message was stored: wake the stream's waiters and feed its tails.
    fn stored(&self, stream: &str, msg: StoredMsg) {
        self.notify(stream);
        let tails = self.tails.lock().expect("tails lock");
        for sub in tails.open.values() {
            if sub.stream == stream && subject_matches(&sub.filter, &msg.subject) {
                // A closed tail is removed by its connection task.
                let _ = sub.tx.send(msg.clone());
            }
        }
    }

    fn notifier(&self, stream: &str) -> Arc<Notify> {
        self.changed.lock().expect("notify lock").entry(stream.to_string()).or_default().clone()
    }

    fn notify(&self, stream: &str) {
        if let Some(n) = self.changed.lock().expect("notify lock").get(stream) {
            n.notify_waiters();
        }
    }

    fn fetch_now(
        &self,
        stream: &str,
        durable: &str,
        max: usize,
        now: Instant,
    ) -> Result<Vec<fafnir_platform::bus::Delivery>, BusError> {
        self.disk.lock().deliver(stream, durable, max, now, &self.trace)
    }

    /// Waits until the consumer has something to deliver or `deadline` passes.
    async fn fetch_wait(&self, tx: &Sender, stream: &str, durable: &str, max: usize, deadline: Instant) -> Reply {
        let changed = self.notifier(stream);
        loop {
            let notified = changed.notified();
            let now = super::now();
            if tx.is_closed() {
                // The client is gone: deliver nothing it would never ack.
                return Ok(Response::Deliveries(Vec::new()));
            }
            let ds = self.fetch_now(stream, durable, max, now)?;
            if !ds.is_empty() || now >= deadline {
                return Ok(Response::Deliveries(ds));
            }
            let wake = self.disk.lock().next_due(stream, durable).map_or(deadline, |due| due.min(deadline));
            tokio::select! {
                biased;
                () = notified => {}
                () = sleep_until(wake) => {}
                () = tx.closed() => {}
            }
        }
    }

    /// Waits until a matching message is stored or `deadline` passes.
    async fn read_wait(
        &self,
        tx: &Sender,
        stream: &str,
        filter: &str,
        from_seq: u64,
        max: usize,
        deadline: Instant,
    ) -> Reply {
        let changed = self.notifier(stream);
        loop {
            let notified = changed.notified();
            let msgs = self.disk.lock().read(stream, filter, from_seq, max)?;
            if !msgs.is_empty() || super::now() >= deadline || tx.is_closed() {
                return Ok(Response::Msgs(msgs));
            }
            tokio::select! {
                biased;
                () = notified => {}
                () = sleep_until(deadline) => {}
                () = tx.closed() => {}
            }
        }
    }

    /// Serves a tail on this connection until the client goes away.
    async fn tail(&self, tx: &Sender, id: u64, stream: String, filter: String, from_seq: Option<u64>) {
        let (sub_tx, mut sub_rx) = mpsc::unbounded_channel();
        // Reading the backlog and registering happen under the store's lock, so no
        // publish falls between them.
        let opened = {
            let store = self.disk.lock();
            store.next_seq(&stream).and_then(|next| {
                let from = match from_seq {
                    Some(from) if from <= next => from,
                    // Past the end: the stream started over (a memory stream made
                    // again after a restart), and all it holds is new to the tail.
                    Some(_) => 1,
                    None => next,
                };
                let backlog = if from < next { store.read(&stream, &filter, from, usize::MAX)? } else { Vec::new() };
                let mut tails = self.tails.lock().expect("tails lock");
                tails.next_id += 1;
                let tail_id = tails.next_id;
                tails.open.insert(tail_id, TailSub { stream: stream.clone(), filter: filter.clone(), tx: sub_tx });
                Ok((tail_id, from, backlog))
            })
        };
        let (tail_id, from, backlog) = match opened {
            Ok(opened) => opened,
            Err(e) => return send(tx, id, Err(e)).await,
        };
        let _close = TailGuard { broker: self, id: tail_id };
        send(tx, id, Ok(Response::TailOpen { from_seq: from })).await;
        let mut backlog = backlog.into_iter().peekable();
        while backlog.peek().is_some() {
            let frame: Vec<StoredMsg> = backlog.by_ref().take(TAIL_FRAME_MAX).collect();
            self.cost("broker.deliver", frame.len()).await;
            if tx.send(Box::new((id, Ok(Response::TailMsgs(frame))) as ReplyFrame)).await.is_err() {
                return;
            }
        }
        loop {
            let first = tokio::select! {
                biased;
                () = tx.closed() => return,
                msg = sub_rx.recv() => msg.expect("the broker holds the tail's sender"),
            };
            let mut frame = vec![first];
            while frame.len() < TAIL_FRAME_MAX {
                match sub_rx.try_recv() {
                    Ok(msg) => frame.push(msg),
                    Err(_) => break,
                }
            }
            self.cost("broker.deliver", frame.len()).await;
            self.platform_wakes().await;
            if tx.send(Box::new((id, Ok(Response::TailMsgs(frame))) as ReplyFrame)).await.is_err() {
                return;
            }
        }
    }
}

struct TailGuard<'a> {
    broker: &'a Broker,
    id: u64,
}

impl Drop for TailGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut tails) = self.broker.tails.lock() {
            tails.open.remove(&self.id);
        }
    }
}

async fn send(tx: &Sender, id: u64, reply: Reply) {
    // A client that went away does not get its reply; nothing else to do.
    let _ = tx.send(Box::new((id, reply) as ReplyFrame)).await;
}

impl BrokerDisk {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().expect("broker disk lock")
    }
}
