//! The broker's state as a pure state machine: streams, their messages and
//! de-duplication state, and their durable consumers. No I/O and no clock:
//! every operation is told the simulated time `now`. This is what lives on the
//! [`super::BrokerDisk`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use fafnir_platform::bus::{
    subject_matches, AckToken, BusError, ConsumerLag, ConsumerSpec, Delivery, PubAck, Storage, StoredMsg, StreamSpec,
};
use fafnir_platform::time::Instant;

use crate::fixed_hash::FixedHashMap;
use crate::trace::Trace;

/// nats-server's duplicate window when a stream asks for none.
const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// nats-server's ack wait when a consumer asks for none.
const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
/// nats-server's max_ack_pending when a consumer asks for 0 (negative means no limit).
const DEFAULT_MAX_ACK_PENDING: i64 = 1000;

/// Recount `num_pending` from scratch (an invariant check) only up to this many messages.
const RECOUNT_MAX_MSGS: usize = 512;

/// How often a durable consumer's state is written to disk (when it changed):
/// nats-server 2.9 writes consumer state lazily, not on every ack, so a
/// kill loses what changed since the last write (see [`Store::start`]).
pub const CONSUMER_SAVE_EVERY: Duration = Duration::from_millis(500);

/// Every stream of the broker.
#[derive(Debug, Default)]
pub(super) struct Store {
    streams: BTreeMap<String, Stream>,
    /// Consumer state is saved at the ticks `origin + k * CONSUMER_SAVE_EVERY`.
    origin: Option<Instant>,
    /// Runs of the broker on this disk so far.
    incarnation: u64,
    /// A run of the broker is using the disk (it has not been seen to stop).
    running: bool,
    /// Subject -> the stream whose subjects match it, as found before (every
    /// publish would otherwise match its subject against every stream's);
    /// forgotten whenever the set of streams changes.
    routes: FixedHashMap<String, String>,
}

/// Remember at most this many subjects' streams (then start afresh).
const ROUTES_MAX: usize = 4096;

#[derive(Debug)]
struct Stream {
    spec: StreamSpec,
    /// Sequence of `msgs[0]`; `last_seq + 1` when the stream is empty.
    first_seq: u64,
    last_seq: u64,
    msgs: VecDeque<StoredMsg>,
    /// Sequence of the last stored message of each subject still in the stream.
    last_by_subject: BTreeMap<String, u64>,
    /// Message id -> (sequence it was stored at, when). Only looked up: the
    /// order of expiry is `dedupe_order`'s.
    dedupe: FixedHashMap<Arc<str>, (u64, Instant)>,
    /// The same ids in the order they were stored (so also by time), for expiry.
    dedupe_order: VecDeque<(Instant, Arc<str>)>,
    consumers: BTreeMap<String, Consumer>,
}

#[derive(Debug)]
struct Consumer {
    spec: ConsumerSpec,
    /// The next stream sequence to consider for a first delivery.
    next_seq: u64,
    /// Stored messages matching the filter at or after `next_seq` (NATS `num_pending`).
    num_pending: u64,
    /// Deliveries made so far (NATS consumer sequence).
    dseq: u64,
    /// Delivered and not yet acked, termed or given up, by stream sequence.
    outstanding: BTreeMap<u64, Outstanding>,
    /// The same deliveries by (due, stream sequence).
    by_due: BTreeSet<(Instant, u64)>,
    /// The state as last written to disk: what a kill brings back.
    saved: Saved,
    /// When the state last changed, if it changed since it was saved.
    dirty_at: Option<Instant>,
}

/// A durable consumer's state as written to disk.
#[derive(Debug, Clone)]
struct Saved {
    next_seq: u64,
    dseq: u64,
    outstanding: BTreeMap<u64, Outstanding>,
}

#[derive(Debug, Clone, Copy)]
struct Outstanding {
    /// How many times the message was delivered.
    delivered: u64,
    /// When it is redelivered unless acked (ack wait or nak delay).
    due: Instant,
}

/// What a publish did.
pub(super) struct Published {
    pub ack: PubAck,
    /// The message, when it was stored (not a duplicate).
    pub stored: Option<StoredMsg>,
}

/// An ack, nak or term.
#[derive(Debug, Clone, Copy)]
pub(super) enum Settle {
    Ack,
    Nak(Duration),
    Term,
}

fn other(text: impl Into<String>) -> BusError {
    BusError::Other(text.into())
}

impl Store {
    /// A run of the broker starts on this disk at `now`; returns its
    /// incarnation (for [`Store::stop`]). What a process start finds: file
    /// streams with their messages and de-duplication state, and their
    /// durable consumers as last saved; memory streams (and their consumers)
    /// are gone.
    pub fn start(&mut self, now: Instant) -> u64 {
        if self.running {
            // The previous run was not seen to stop (madsim's restart without a
            // kill drops its tasks later): it ends now.
            self.stop(self.incarnation, now);
        }
        self.streams.retain(|_, s| s.spec.storage == Storage::File);
        self.routes.clear();
        for stream in self.streams.values_mut() {
            let Stream { consumers, msgs, first_seq, .. } = stream;
            for c in consumers.values_mut() {
                c.restore(*first_seq, msgs);
            }
            stream.check();
        }
        self.incarnation += 1;
        self.running = true;
        self.incarnation
    }

    /// Run `incarnation` of the broker stopped at `now` (it was killed): the
    /// consumer state that a periodic write would have saved by then is on
    /// disk, the rest is lost. A stop of an older run is ignored.
    pub fn stop(&mut self, incarnation: u64, now: Instant) {
        if !self.running || incarnation != self.incarnation {
            return;
        }
        self.running = false;
        let origin = *self.origin.get_or_insert(now);
        for c in self.streams.values_mut().flat_map(|s| s.consumers.values_mut()) {
            c.save_if_due(origin, now);
        }
    }

    /// Saves every consumer's state now (a graceful stop).
    pub fn save_all(&mut self) {
        for c in self.streams.values_mut().flat_map(|s| s.consumers.values_mut()) {
            c.save();
        }
    }

    pub fn ensure_stream(&mut self, spec: &StreamSpec) -> Result<(), BusError> {
        if self.streams.contains_key(&spec.name) {
            // As the real adapter's get_or_create: an existing stream is kept as it is.
            return Ok(());
        }
        if spec.name.is_empty() || !spec.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(other(format!("invalid stream name {:?}", spec.name)));
        }
        if spec.replicas > 1 {
            // The simulated broker is one server, as nats-server without a cluster.
            return Err(other(format!(
                "stream {}: {} replicas, but this broker is one server (replicas > 1 need a cluster)",
                spec.name, spec.replicas
            )));
        }
        let mut spec = spec.clone();
        if spec.subjects.is_empty() {
            spec.subjects = vec![spec.name.clone()];
        }
        if spec.duplicate_window.is_zero() {
            spec.duplicate_window = DEFAULT_DUPLICATE_WINDOW;
        }
        for existing in self.streams.values() {
            for theirs in &existing.spec.subjects {
                if let Some(ours) = spec.subjects.iter().find(|ours| subjects_collide(ours, theirs)) {
                    return Err(other(format!(
                        "subjects overlap with an existing stream: {ours} of {} and {theirs} of {}",
                        spec.name, existing.spec.name
                    )));
                }
            }
        }
        self.routes.clear();
        self.streams.insert(
            spec.name.clone(),
            Stream {
                spec,
                first_seq: 1,
                last_seq: 0,
                msgs: VecDeque::new(),
                last_by_subject: BTreeMap::new(),
                dedupe: FixedHashMap::default(),
                dedupe_order: VecDeque::new(),
                consumers: BTreeMap::new(),
            },
        );
        Ok(())
    }

    pub fn ensure_consumer(&mut self, spec: &ConsumerSpec) -> Result<(), BusError> {
        let stream = self.stream_mut(&spec.stream)?;
        if stream.consumers.contains_key(&spec.durable) {
            return Ok(());
        }
        if spec.durable.is_empty() || spec.durable.contains(['.', '*', '>', ' ']) {
            return Err(other(format!("invalid durable name {:?}", spec.durable)));
        }
        if !spec.filter.is_empty() && !stream.spec.subjects.iter().any(|s| subject_is_subset(&spec.filter, s)) {
            return Err(other(format!(
                "consumer filter subject {} is not a valid subset of the subjects of stream {}",
                spec.filter, spec.stream
            )));
        }
        let mut spec = spec.clone();
        if spec.ack_wait.is_zero() {
            spec.ack_wait = DEFAULT_ACK_WAIT;
        }
        if spec.max_ack_pending == 0 {
            spec.max_ack_pending = DEFAULT_MAX_ACK_PENDING;
        }
        let num_pending = stream.msgs.iter().filter(|m| subject_matches(&spec.filter, &m.subject)).count() as u64;
        // Made durable at once (nats-server writes a consumer's config when it is created).
        let saved = Saved { next_seq: stream.first_seq, dseq: 0, outstanding: BTreeMap::new() };
        let consumer = Consumer {
            spec,
            next_seq: stream.first_seq,
            num_pending,
            dseq: 0,
            outstanding: BTreeMap::new(),
            by_due: BTreeSet::new(),
            saved,
            dirty_at: None,
        };
        stream.consumers.insert(consumer.spec.durable.clone(), consumer);
        Ok(())
    }

    /// Stores a message on the one stream covering `subject`, or finds it a duplicate.
    pub fn publish(
        &mut self,
        subject: &str,
        msg_id: &str,
        (payload, trace_parent): (bytes::Bytes, Option<String>),
        now: Instant,
        trace: &Trace,
    ) -> Result<Published, BusError> {
        let Some(name) = self.route(subject) else {
            return Err(BusError::NotFound(format!("no stream found for subject {subject}")));
        };
        let stream = self.streams.get_mut(&name).expect("a route names an existing stream");
        stream.expire_ids(now);
        if !msg_id.is_empty() {
            if let Some(&(seq, _)) = stream.dedupe.get(msg_id) {
                let ack = PubAck { stream: stream.spec.name.clone(), seq, duplicate: true };
                return Ok(Published { ack, stored: None });
            }
        }
        let msg = stream.store(subject, payload, trace_parent);
        if !msg_id.is_empty() {
            let id: Arc<str> = Arc::from(msg_id);
            stream.dedupe.insert(id.clone(), (msg.seq, now));
            stream.dedupe_order.push_back((now, id));
        }
        trace.record("pub", &pub_record(&stream.spec.name, &msg));
        stream.check();
        let ack = PubAck { stream: stream.spec.name.clone(), seq: msg.seq, duplicate: false };
        Ok(Published { ack, stored: Some(msg) })
    }

    /// Up to `max` deliveries for the durable consumer: due redeliveries first,
    /// then new messages, within `max_ack_pending`.
    pub fn deliver(
        &mut self,
        stream: &str,
        durable: &str,
        max: usize,
        now: Instant,
        trace: &Trace,
    ) -> Result<Vec<Delivery>, BusError> {
        let origin = *self.origin.get_or_insert(now);
        let stream = self.stream_mut(stream)?;
        let Stream { spec, consumers, msgs, first_seq, last_seq, .. } = stream;
        let consumer = consumers.get_mut(durable).ok_or_else(|| other(format!("consumer {durable} not found")))?;
        consumer.save_if_due(origin, now);
        let before = (consumer.next_seq, consumer.outstanding.len(), consumer.dseq);
        let get = |seq: u64| seq.checked_sub(*first_seq).and_then(|i| msgs.get(i as usize));
        let max = max.max(1);
        let mut out = Vec::new();

        // Redeliveries that are due, in stream order; give up those delivered max_deliver times.
        let mut due: Vec<u64> = consumer.by_due.range(..=(now, u64::MAX)).map(|&(_, seq)| seq).collect();
        due.sort_unstable();
        for seq in due {
            let o = consumer.outstanding[&seq];
            let exhausted = consumer.spec.max_deliver > 0 && o.delivered >= consumer.spec.max_deliver as u64;
            let Some(msg) = get(seq).filter(|_| !exhausted) else {
                consumer.forget(seq);
                continue;
            };
            if out.len() >= max {
                continue;
            }
            consumer.track(seq, Outstanding { delivered: o.delivered + 1, due: now + consumer.spec.ack_wait });
            out.push(consumer.delivery(&spec.name, msg.clone(), o.delivered + 1, trace));
        }

        // New messages, in stream order.
        let room = |c: &Consumer| c.spec.max_ack_pending <= 0 || (c.outstanding.len() as i64) < c.spec.max_ack_pending;
        while out.len() < max && room(consumer) {
            let from = consumer.next_seq.max(*first_seq);
            let found = (from..=*last_seq)
                .find(|&seq| get(seq).is_some_and(|m| subject_matches(&consumer.spec.filter, &m.subject)));
            let Some(seq) = found else {
                // Nothing matches up to the end: skip the non-matching messages for good.
                consumer.next_seq = *last_seq + 1;
                assert_eq!(consumer.num_pending, 0, "{}/{durable}: no match left but num_pending", spec.name);
                break;
            };
            let msg = get(seq).expect("found above").clone();
            assert!(consumer.num_pending > 0, "{}/{durable}: delivering seq {seq} with num_pending 0", spec.name);
            consumer.next_seq = seq + 1;
            consumer.num_pending -= 1;
            assert!(
                !consumer.outstanding.contains_key(&seq),
                "{}/{durable}: seq {seq} delivered for the first time twice",
                spec.name
            );
            consumer.track(seq, Outstanding { delivered: 1, due: now + consumer.spec.ack_wait });
            out.push(consumer.delivery(&spec.name, msg, 1, trace));
        }
        if (consumer.next_seq, consumer.outstanding.len(), consumer.dseq) != before {
            consumer.dirty_at = Some(now);
        }
        stream.check();
        Ok(out)
    }

    /// The earliest time an outstanding delivery of the consumer comes due.
    pub fn next_due(&self, stream: &str, durable: &str) -> Option<Instant> {
        let consumer = self.streams.get(stream)?.consumers.get(durable)?;
        consumer.by_due.first().map(|&(due, _)| due)
    }

    /// Acks, naks or terms the delivery behind `token`. Like nats-server, a
    /// token of an unknown stream, consumer or delivery is ignored.
    pub fn settle(&mut self, token: &AckToken, how: Settle, now: Instant) -> Result<(), BusError> {
        let Some((stream, durable, seq)) = parse_token(token) else {
            return Err(other(format!("not an ack token: {:?}", token.0)));
        };
        let origin = *self.origin.get_or_insert(now);
        let Some(consumer) = self.streams.get_mut(stream).and_then(|s| s.consumers.get_mut(durable)) else {
            return Ok(());
        };
        consumer.save_if_due(origin, now);
        if consumer.outstanding.contains_key(&seq) {
            consumer.dirty_at = Some(now);
        }
        match how {
            Settle::Ack | Settle::Term => consumer.forget(seq),
            Settle::Nak(delay) => {
                if let Some(&o) = consumer.outstanding.get(&seq) {
                    consumer.track(seq, Outstanding { due: now + delay, ..o });
                }
            }
        }
        Ok(())
    }

    /// Up to `max` stored messages matching `filter` with sequence >= `from_seq`.
    pub fn read(&self, stream: &str, filter: &str, from_seq: u64, max: usize) -> Result<Vec<StoredMsg>, BusError> {
        let stream = self.stream(stream)?;
        let skip = (from_seq.saturating_sub(stream.first_seq) as usize).min(stream.msgs.len());
        Ok(stream.msgs.range(skip..).filter(|m| subject_matches(filter, &m.subject)).take(max).cloned().collect())
    }

    pub fn last_on_subject(&self, stream: &str, subject: &str) -> Result<Option<StoredMsg>, BusError> {
        let stream = self.stream(stream)?;
        Ok(stream.last_by_subject.get(subject).and_then(|&seq| stream.get(seq)).cloned())
    }

    /// The sequence the next stored message of the stream will get.
    /// How far behind its stream the durable consumer is.
    pub fn consumer_lag(&self, stream: &str, durable: &str) -> Result<ConsumerLag, BusError> {
        let stream_ = self.stream(stream)?;
        let c = stream_.consumers.get(durable).ok_or_else(|| other(format!("consumer {durable} not found")))?;
        Ok(ConsumerLag { pending: c.num_pending, ack_pending: c.outstanding.len() as u64 })
    }

    pub fn next_seq(&self, stream: &str) -> Result<u64, BusError> {
        Ok(self.stream(stream)?.last_seq + 1)
    }

    fn stream(&self, name: &str) -> Result<&Stream, BusError> {
        self.streams.get(name).ok_or_else(|| other(format!("stream {name} not found")))
    }

    /// The stream that takes `subject` (streams' subjects never overlap).
    fn route(&mut self, subject: &str) -> Option<String> {
        if let Some(name) = self.routes.get(subject) {
            return Some(name.clone());
        }
        let name = self
            .streams
            .values()
            .find(|s| s.spec.subjects.iter().any(|p| subject_matches(p, subject)))?
            .spec
            .name
            .clone();
        if self.routes.len() >= ROUTES_MAX {
            self.routes.clear();
        }
        self.routes.insert(subject.to_string(), name.clone());
        Some(name)
    }

    fn stream_mut(&mut self, name: &str) -> Result<&mut Stream, BusError> {
        self.streams.get_mut(name).ok_or_else(|| other(format!("stream {name} not found")))
    }
}

impl Stream {
    fn get(&self, seq: u64) -> Option<&StoredMsg> {
        seq.checked_sub(self.first_seq).and_then(|i| self.msgs.get(i as usize))
    }

    /// Forgets the message ids older than the duplicate window.
    fn expire_ids(&mut self, now: Instant) {
        let window = self.spec.duplicate_window;
        while let Some((at, _)) = self.dedupe_order.front() {
            if *at + window > now {
                break;
            }
            let (at, id) = self.dedupe_order.pop_front().expect("front exists");
            if self.dedupe.get(&id).is_some_and(|&(_, stored_at)| stored_at == at) {
                self.dedupe.remove(&id);
            }
        }
    }

    /// Appends a message, then drops the oldest beyond `max_msgs`.
    fn store(&mut self, subject: &str, payload: bytes::Bytes, trace_parent: Option<String>) -> StoredMsg {
        let seq = self.last_seq + 1;
        let msg = StoredMsg { subject: subject.to_string(), seq, payload, trace_parent };
        self.msgs.push_back(msg.clone());
        self.last_seq = seq;
        match self.last_by_subject.get_mut(subject) {
            Some(last) => *last = seq,
            None => {
                self.last_by_subject.insert(msg.subject.clone(), seq);
            }
        }
        for c in self.consumers.values_mut() {
            if subject_matches(&c.spec.filter, subject) {
                c.num_pending += 1;
            }
        }
        while self.spec.max_msgs > 0 && self.msgs.len() as i64 > self.spec.max_msgs {
            self.drop_oldest();
        }
        msg
    }

    fn drop_oldest(&mut self) {
        let old = self.msgs.pop_front().expect("a message to drop");
        assert_eq!(old.seq, self.first_seq, "{}: messages out of sequence", self.spec.name);
        self.first_seq += 1;
        if self.last_by_subject.get(&old.subject) == Some(&old.seq) {
            self.last_by_subject.remove(&old.subject);
        }
        for c in self.consumers.values_mut() {
            if c.next_seq <= old.seq {
                if subject_matches(&c.spec.filter, &old.subject) {
                    c.num_pending -= 1;
                }
                c.next_seq = old.seq + 1;
            }
        }
    }

    /// Invariants, checked after every change.
    fn check(&self) {
        assert_eq!(self.first_seq + self.msgs.len() as u64, self.last_seq + 1, "{}: sequence gap", self.spec.name);
        assert!(
            self.spec.max_msgs <= 0 || self.msgs.len() as i64 <= self.spec.max_msgs,
            "{}: over max_msgs",
            self.spec.name
        );
        for (name, c) in &self.consumers {
            assert!(c.next_seq <= self.last_seq + 1, "{}/{name}: position past the end", self.spec.name);
            assert!(
                c.outstanding.last_key_value().is_none_or(|(&seq, _)| seq < c.next_seq),
                "{}/{name}: outstanding ahead of the position",
                self.spec.name
            );
            assert_eq!(c.outstanding.len(), c.by_due.len(), "{}/{name}: due index out of step", self.spec.name);
            assert!(
                c.spec.max_ack_pending <= 0 || c.outstanding.len() as i64 <= c.spec.max_ack_pending,
                "{}/{name}: over max_ack_pending",
                self.spec.name
            );
            // The recount is O(stream): debug builds (every test) do it, release
            // builds (benchmarks, sweeps) keep only the O(1) checks above.
            if cfg!(debug_assertions) && self.msgs.len() <= RECOUNT_MAX_MSGS {
                let skip = (c.next_seq.saturating_sub(self.first_seq) as usize).min(self.msgs.len());
                let recount = self.msgs.range(skip..).filter(|m| subject_matches(&c.spec.filter, &m.subject)).count();
                assert_eq!(c.num_pending, recount as u64, "{}/{name}: num_pending drifted", self.spec.name);
            }
        }
    }
}

impl Consumer {
    /// Saves the state if a periodic write would have by `now`: the state
    /// changed last at `dirty_at`, and a save tick came after that.
    fn save_if_due(&mut self, origin: Instant, now: Instant) {
        let tick = |t: Instant| t.saturating_duration_since(origin).as_nanos() / CONSUMER_SAVE_EVERY.as_nanos();
        if self.dirty_at.is_some_and(|changed| tick(now) > tick(changed)) {
            self.save();
        }
    }

    fn save(&mut self) {
        self.saved = Saved { next_seq: self.next_seq, dseq: self.dseq, outstanding: self.outstanding.clone() };
        self.dirty_at = None;
    }

    /// Back to the state last saved, on a stream holding `msgs` from `first_seq`.
    fn restore(&mut self, first_seq: u64, msgs: &VecDeque<StoredMsg>) {
        let Saved { next_seq, dseq, outstanding } = self.saved.clone();
        self.next_seq = next_seq.max(first_seq);
        self.dseq = dseq;
        self.by_due = outstanding.iter().map(|(&seq, o)| (o.due, seq)).collect();
        self.outstanding = outstanding;
        let skip = (self.next_seq - first_seq) as usize;
        self.num_pending =
            msgs.range(skip.min(msgs.len())..).filter(|m| subject_matches(&self.spec.filter, &m.subject)).count()
                as u64;
        self.dirty_at = None;
    }

    /// Records (or updates) an outstanding delivery.
    fn track(&mut self, seq: u64, o: Outstanding) {
        if let Some(old) = self.outstanding.insert(seq, o) {
            self.by_due.remove(&(old.due, seq));
        }
        self.by_due.insert((o.due, seq));
    }

    /// Drops an outstanding delivery (acked, termed, given up or gone).
    fn forget(&mut self, seq: u64) {
        if let Some(old) = self.outstanding.remove(&seq) {
            self.by_due.remove(&(old.due, seq));
        }
    }

    fn delivery(&mut self, stream: &str, msg: StoredMsg, delivered: u64, trace: &Trace) -> Delivery {
        self.dseq += 1;
        let token = AckToken(format!("$JS.ACK.{stream}.{}.{delivered}.{}.{}", self.spec.durable, msg.seq, self.dseq));
        trace.record("deliver", &deliver_record(stream, &self.spec.durable, msg.seq, delivered));
        Delivery { msg, delivered, pending: self.num_pending, token }
    }
}

/// (stream, durable, stream sequence) of an ack token made by [`Consumer::delivery`].
fn parse_token(token: &AckToken) -> Option<(&str, &str, u64)> {
    let mut parts = token.0.strip_prefix("$JS.ACK.")?.split('.');
    let (stream, durable, _delivered, seq) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    Some((stream, durable, seq.parse().ok()?))
}

fn pub_record(stream: &str, msg: &StoredMsg) -> Vec<u8> {
    let mut r = Vec::with_capacity(stream.len() + msg.subject.len() + msg.payload.len() + 16);
    r.extend_from_slice(stream.as_bytes());
    r.push(0);
    r.extend_from_slice(&msg.seq.to_le_bytes());
    r.extend_from_slice(msg.subject.as_bytes());
    r.push(0);
    r.extend_from_slice(&msg.payload);
    r
}

fn deliver_record(stream: &str, durable: &str, seq: u64, delivered: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(stream.len() + durable.len() + 18);
    r.extend_from_slice(stream.as_bytes());
    r.push(0);
    r.extend_from_slice(durable.as_bytes());
    r.push(0);
    r.extend_from_slice(&seq.to_le_bytes());
    r.extend_from_slice(&delivered.to_le_bytes());
    r
}

/// Whether some subject matches both patterns (nats-server refuses streams whose subjects collide).
pub(super) fn subjects_collide(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('.'), b.split('.'));
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) if x == "*" || y == "*" || x == y => {}
            _ => return false,
        }
    }
}

/// Whether every subject matching `filter` also matches `pattern`.
pub(super) fn subject_is_subset(filter: &str, pattern: &str) -> bool {
    let (mut f, mut p) = (filter.split('.'), pattern.split('.'));
    loop {
        match (f.next(), p.next()) {
            (None, None) => return true,
            (Some(_), Some(">")) => return true,
            (Some(">"), _) => return false,
            (Some("*"), Some("*")) => {}
            (Some("*"), Some(_)) => return false,
            (Some(_), Some("*")) => {}
            (Some(x), Some(y)) if x == y => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collisions() {
        assert!(subjects_collide("a.*", "a.b"));
        assert!(subjects_collide("a.>", "a.b.c"));
        assert!(subjects_collide("a.*.c", "a.b.*"));
        assert!(subjects_collide("*.>", "a.b"));
        assert!(!subjects_collide("a.>", "a"));
        assert!(!subjects_collide("a.*", "a.b.c"));
        assert!(!subjects_collide("a.b", "a.c"));
    }

    #[test]
    fn subsets() {
        assert!(subject_is_subset("a.b", "a.*"));
        assert!(subject_is_subset("a.*", "a.*"));
        assert!(subject_is_subset("a.*.c", "a.>"));
        assert!(subject_is_subset("a.>", "a.>"));
        assert!(subject_is_subset("a.b.>", "a.>"));
        assert!(!subject_is_subset("a.>", "a.*"));
        assert!(!subject_is_subset("a.*", "a.b"));
        assert!(!subject_is_subset("a", "a.>"));
        assert!(!subject_is_subset("b.c", "a.*"));
    }

    fn spec(max_msgs: i64) -> StreamSpec {
        StreamSpec {
            name: "S".into(),
            subjects: vec!["s.*".into()],
            storage: Storage::Memory,
            duplicate_window: Duration::from_secs(1),
            max_msgs,
            replicas: 1,
        }
    }

    fn consumer(filter: &str, max_deliver: i64) -> ConsumerSpec {
        ConsumerSpec {
            stream: "S".into(),
            durable: "c".into(),
            filter: filter.into(),
            ack_wait: Duration::from_secs(1),
            max_deliver,
            max_ack_pending: 3,
        }
    }

    #[madsim::test]
    async fn pending_counts_survive_dropping_the_oldest() {
        let (mut store, trace, now) = (Store::default(), Trace::new(), crate::broker::now());
        store.ensure_stream(&spec(3)).expect("stream");
        store.ensure_consumer(&consumer("s.a", -1)).expect("consumer");
        for (i, subject) in ["s.a", "s.b", "s.a", "s.a", "s.b", "s.a"].into_iter().enumerate() {
            store.publish(subject, &i.to_string(), (bytes::Bytes::new(), None), now, &trace).expect("publish");
        }
        // Kept: 4 (s.a), 5 (s.b), 6 (s.a).
        let got = store.deliver("S", "c", 10, now, &trace).expect("deliver");
        assert_eq!(got.iter().map(|d| (d.msg.seq, d.pending)).collect::<Vec<_>>(), [(4, 1), (6, 0)]);
        assert_eq!(trace.events(), 6 + 2);
    }

    #[madsim::test]
    async fn given_up_deliveries_free_their_slot() {
        let (mut store, trace, now) = (Store::default(), Trace::new(), crate::broker::now());
        store.ensure_stream(&spec(0)).expect("stream");
        store.ensure_consumer(&consumer("", 1)).expect("consumer");
        for i in 0..5 {
            store.publish("s.a", &i.to_string(), (bytes::Bytes::new(), None), now, &trace).expect("publish");
        }
        assert_eq!(store.deliver("S", "c", 10, now, &trace).expect("deliver").len(), 3, "max_ack_pending 3");
        let later = now + Duration::from_secs(2);
        let got = store.deliver("S", "c", 10, later, &trace).expect("deliver");
        assert_eq!(got.iter().map(|d| (d.msg.seq, d.delivered)).collect::<Vec<_>>(), [(4, 1), (5, 1)]);
    }

    #[madsim::test]
    async fn tokens_settle_by_sequence() {
        let (mut store, trace, now) = (Store::default(), Trace::new(), crate::broker::now());
        store.ensure_stream(&spec(0)).expect("stream");
        store.ensure_consumer(&consumer("", -1)).expect("consumer");
        store.publish("s.a", "1", (bytes::Bytes::new(), None), now, &trace).expect("publish");
        let first = store.deliver("S", "c", 1, now, &trace).expect("deliver").remove(0);
        assert_eq!(parse_token(&first.token), Some(("S", "c", 1)));
        store.settle(&first.token, Settle::Nak(Duration::from_millis(10)), now).expect("nak");
        assert!(store.deliver("S", "c", 1, now, &trace).expect("deliver").is_empty());
        let again = store.deliver("S", "c", 1, now + Duration::from_millis(10), &trace).expect("deliver");
        assert_eq!(again[0].delivered, 2);
        store.settle(&first.token, Settle::Ack, now).expect("a stale token still acks");
        assert_eq!(store.next_due("S", "c"), None);
        assert!(store.settle(&AckToken("nonsense".into()), Settle::Ack, now).is_err());
    }
}
