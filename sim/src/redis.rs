//! The simulated Redis: a madsim node that holds the platform's key-value
//! data in memory, and [`SimKv`], the platform's [`Kv`] spoken to it over the
//! simulated network.
//!
//! It implements exactly the commands of the [`Kv`] trait, with the semantics
//! redis-server 7.0 gives them through the real adapter
//! (`fafnir_platform::kv::redis::RedisKv`): each command is atomic, a key
//! holds a string or a hash (the other kind of command is a `WRONGTYPE`
//! error), counters are decimal strings parsed as strictly as Redis does, and
//! error replies carry Redis's own messages, worded as the adapter words them.
//! It runs without persistence: the data lives in the task [`serve`] runs, so
//! a killed or restarted node comes back empty. The conformance suite
//! (`sim/tests/conformance/kv.rs`) holds it to the same cases as a real
//! redis-server.
//!
//! ## Wire model
//!
//! A client keeps one connection per madsim node it is used from (a madsim
//! `Endpoint::connect1` channel: reliable and ordered, like TCP; messages
//! wait out a partition and then arrive). Requests carry an id and are
//! multiplexed on it, like the real adapter's `MultiplexedConnection`; the
//! server handles a connection's requests one at a time, in order. A call
//! fails with [`KvError::Unreachable`] when the connection cannot be made
//! (node down, partitioned: refused at once), is lost (node killed: at once),
//! or no reply arrives within the client's timeout; the connection is then
//! dropped and the next call connects again. As over TCP, a call that timed
//! out may still have been applied.
//!
//! ## Deliberate differences from the real server and adapter
//!
//! - The key scan behind `keys_with_prefix` is one atomic command here; on a
//!   real server it is a SCAN loop, which may miss keys created or deleted
//!   during the scan (keys present throughout are always listed).
//! - [`SimKv`] reconnects: a call that finds its connection broken connects
//!   again before sending. `RedisKv` never does (its `MultiplexedConnection`
//!   stays broken after a Redis restart: every call then fails `Unreachable`
//!   until the process makes a new `RedisKv`).
//! - Connecting to a down or partitioned node is refused at once, where a real
//!   TCP connect to a partitioned host would wait for its connect timeout.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fafnir_platform::calls::{Calls, Unanswered};
use fafnir_platform::kv::{Kv, KvError};
use fafnir_platform::services::ServiceTime;
use madsim::net::{Endpoint, Receiver, Sender};
use madsim::task::NodeId;

use crate::trace::Trace;

/// The per-call timeout of a [`SimKv`] unless [`SimKv::with_timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// The trace kind of the writes the simulated Redis applies.
pub const TRACE_KIND: &str = "kv";

// Redis 7.0's own error replies (checked against redis-server by the conformance suite).
const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
const NOT_AN_INTEGER: &str = "ERR value is not an integer or out of range";
const HASH_NOT_AN_INTEGER: &str = "ERR hash value is not an integer";
const OVERFLOW: &str = "ERR increment or decrement would overflow";
// The real adapter sends a multi-field HSET as HMSET.
const HSET_ARITY: &str = "ERR wrong number of arguments for 'hmset' command";

// ---------------------------------------------------------------------------
// The server.

/// Runs a Redis without persistence on the current madsim node, listening on `addr`,
/// until the node is killed. All data lives in the node: a restarted node starts empty.
///
/// Every applied write (a SET, a SET NX that set, a DEL that deleted, an INCRBY,
/// HSET or HINCRBY that succeeded) is recorded into `trace` under [`TRACE_KIND`],
/// in the order the server applies them.
pub async fn serve(addr: SocketAddr, trace: Trace) {
    serve_modelled(addr, trace, None).await;
}

/// [`serve`], each command taking the modelled processing time of
/// `redis.command` first (a calibration's `[service_time.redis]`).
pub async fn serve_modelled(addr: SocketAddr, trace: Trace, service_time: Option<Arc<dyn ServiceTime>>) {
    let endpoint = bind(addr).await;
    // Created here, in the node's task, so that a crash (which drops the task) loses it.
    let store = Arc::new(Mutex::new(Store::default()));
    tracing::debug!(%addr, "simulated redis up");
    loop {
        let (tx, rx, peer) =
            endpoint.accept1().await.unwrap_or_else(|e| panic!("simulated redis at {addr} stopped accepting: {e}"));
        tracing::trace!(%addr, %peer, "kv connection");
        tokio::spawn(serve_connection(tx, rx, store.clone(), trace.clone(), service_time.clone()));
    }
}

/// Binds `addr`.
///
/// A port still taken is a world bug worth a clear message: in madsim 0.2.34
/// `Handle::restart` alone never releases the old incarnation's ports (a
/// killed node's sockets are freed only by `Handle::kill`), so crash a node
/// with `kill` and then `restart`.
async fn bind(addr: SocketAddr) -> Endpoint {
    match Endpoint::bind(addr).await {
        Ok(endpoint) => endpoint,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            panic!("simulated redis cannot bind {addr}: {e} (restart a node with Handle::kill, then Handle::restart)")
        }
        Err(e) => panic!("simulated redis cannot bind {addr}: {e}"),
    }
}

/// Applies one connection's requests in order, replying to each, until the client goes away.
async fn serve_connection(
    tx: Sender,
    mut rx: Receiver,
    store: Arc<Mutex<Store>>,
    trace: Trace,
    service_time: Option<Arc<dyn ServiceTime>>,
) {
    while let Ok(payload) = rx.recv().await {
        let Request { id, command } = *payload.downcast::<Request>().expect("a kv connection carries only kv requests");
        if let Some(model) = &service_time {
            model.process("redis.command").await;
        }
        let reply = lock(&store).apply(command, &trace);
        if tx.send(Box::new(Response { id, reply })).await.is_err() {
            return;
        }
    }
}

/// One request on the wire.
#[derive(Debug)]
struct Request {
    id: u64,
    command: Command,
}

/// One reply on the wire: a value or Redis's error message.
#[derive(Debug)]
struct Response {
    id: u64,
    reply: Result<Reply, String>,
}

/// The commands of the [`Kv`] trait.
#[derive(Debug, Clone)]
enum Command {
    Get { key: String },
    Set { key: String, value: Bytes },
    SetNx { key: String, value: Bytes },
    Del { key: String },
    IncrBy { key: String, by: i64 },
    HSet { key: String, fields: Vec<(String, Bytes)> },
    HGet { key: String, field: String },
    HGetAll { key: String },
    HIncrBy { key: String, field: String, by: i64 },
    KeysWithPrefix { prefix: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Ok,
    Bool(bool),
    Int(i64),
    Value(Option<Bytes>),
    Hash(BTreeMap<String, Bytes>),
    Keys(Vec<String>),
}

/// What a key holds.
#[derive(Debug, Clone)]
enum Value {
    Str(Bytes),
    /// Never empty: Redis deletes a hash with its last field (and no command here removes fields).
    Hash(BTreeMap<String, Bytes>),
}

/// The keyspace. Ordered, so that nothing here depends on hash order.
#[derive(Debug, Default)]
struct Store {
    keys: BTreeMap<String, Value>,
}

impl Store {
    /// Runs one command to completion: nothing else touches the store meanwhile.
    fn apply(&mut self, command: Command, trace: &Trace) -> Result<Reply, String> {
        let record = command.is_write().then(|| command.encode());
        let reply = match command {
            Command::Get { key } => self.string(&key).map(|v| Reply::Value(v.cloned())),
            Command::Set { key, value } => {
                self.keys.insert(key, Value::Str(value));
                Ok(Reply::Ok)
            }
            Command::SetNx { key, value } => Ok(Reply::Bool(self.set_nx(key, value))),
            Command::Del { key } => Ok(Reply::Bool(self.keys.remove(&key).is_some())),
            Command::IncrBy { key, by } => self.incr_by(key, by).map(Reply::Int),
            Command::HSet { key, fields } => self.hset(key, fields).map(|()| Reply::Ok),
            Command::HGet { key, field } => {
                self.hash(&key).map(|h| Reply::Value(h.and_then(|h| h.get(&field)).cloned()))
            }
            Command::HGetAll { key } => self.hash(&key).map(|h| Reply::Hash(h.cloned().unwrap_or_default())),
            Command::HIncrBy { key, field, by } => self.hincr_by(key, field, by).map(Reply::Int),
            Command::KeysWithPrefix { prefix } => Ok(Reply::Keys(self.keys_with_prefix(&prefix))),
        };
        if let (Some(record), Ok(reply)) = (record, &reply) {
            // A SET NX that found the key, a DEL that found nothing: no write was applied.
            if *reply != Reply::Bool(false) {
                trace.record(TRACE_KIND, &record);
            }
        }
        reply
    }

    /// The string at `key`; a hash there is a WRONGTYPE error.
    fn string(&self, key: &str) -> Result<Option<&Bytes>, String> {
        match self.keys.get(key) {
            None => Ok(None),
            Some(Value::Str(v)) => Ok(Some(v)),
            Some(Value::Hash(_)) => Err(WRONGTYPE.to_string()),
        }
    }

    /// The hash at `key`; a string there is a WRONGTYPE error.
    fn hash(&self, key: &str) -> Result<Option<&BTreeMap<String, Bytes>>, String> {
        match self.keys.get(key) {
            None => Ok(None),
            Some(Value::Hash(h)) => Ok(Some(h)),
            Some(Value::Str(_)) => Err(WRONGTYPE.to_string()),
        }
    }

    /// SETNX looks only at existence: a hash at `key` counts.
    fn set_nx(&mut self, key: String, value: Bytes) -> bool {
        if self.keys.contains_key(&key) {
            return false;
        }
        self.keys.insert(key, Value::Str(value));
        true
    }

    fn incr_by(&mut self, key: String, by: i64) -> Result<i64, String> {
        let old = match self.string(&key)? {
            None => 0,
            Some(v) => parse_i64(v).ok_or(NOT_AN_INTEGER)?,
        };
        let new = old.checked_add(by).ok_or(OVERFLOW)?;
        self.keys.insert(key, Value::Str(Bytes::from(new.to_string())));
        Ok(new)
    }

    fn hset(&mut self, key: String, fields: Vec<(String, Bytes)>) -> Result<(), String> {
        if fields.is_empty() {
            return Err(HSET_ARITY.to_string());
        }
        self.hash(&key)?;
        let Value::Hash(hash) = self.keys.entry(key).or_insert_with(|| Value::Hash(BTreeMap::new())) else {
            unreachable!("checked to be a hash or absent");
        };
        // In argument order: a field named twice keeps its last value, as in Redis.
        for (field, value) in fields {
            hash.insert(field, value);
        }
        assert!(!hash.is_empty(), "an HSET leaves a hash with at least one field");
        Ok(())
    }

    fn hincr_by(&mut self, key: String, field: String, by: i64) -> Result<i64, String> {
        let old = match self.hash(&key)?.and_then(|h| h.get(&field)) {
            None => 0,
            Some(v) => parse_i64(v).ok_or(HASH_NOT_AN_INTEGER)?,
        };
        let new = old.checked_add(by).ok_or(OVERFLOW)?;
        self.hset(key, vec![(field, Bytes::from(new.to_string()))])?;
        Ok(new)
    }

    /// The keys that start with `prefix`, taken literally, sorted.
    fn keys_with_prefix(&self, prefix: &str) -> Vec<String> {
        let keys: Vec<String> = self
            .keys
            .range(prefix.to_string()..)
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        debug_assert!(keys.windows(2).all(|w| w[0] < w[1]), "a BTreeMap range is sorted");
        keys
    }
}

impl Command {
    fn is_write(&self) -> bool {
        matches!(
            self,
            Command::Set { .. }
                | Command::SetNx { .. }
                | Command::Del { .. }
                | Command::IncrBy { .. }
                | Command::HSet { .. }
                | Command::HIncrBy { .. }
        )
    }

    /// An unambiguous encoding for the trace: the command name, then each
    /// argument length-prefixed.
    fn encode(&self) -> Vec<u8> {
        let by_bytes;
        let (name, args): (&str, Vec<&[u8]>) = match self {
            Command::Get { key } => ("GET", vec![key.as_bytes()]),
            Command::Set { key, value } => ("SET", vec![key.as_bytes(), value]),
            Command::SetNx { key, value } => ("SETNX", vec![key.as_bytes(), value]),
            Command::Del { key } => ("DEL", vec![key.as_bytes()]),
            Command::IncrBy { key, by } => {
                by_bytes = by.to_le_bytes();
                ("INCRBY", vec![key.as_bytes(), &by_bytes])
            }
            Command::HSet { key, fields } => {
                let mut args = vec![key.as_bytes()];
                for (field, value) in fields {
                    args.push(field.as_bytes());
                    args.push(value);
                }
                ("HSET", args)
            }
            Command::HGet { key, field } => ("HGET", vec![key.as_bytes(), field.as_bytes()]),
            Command::HGetAll { key } => ("HGETALL", vec![key.as_bytes()]),
            Command::HIncrBy { key, field, by } => {
                by_bytes = by.to_le_bytes();
                ("HINCRBY", vec![key.as_bytes(), field.as_bytes(), &by_bytes])
            }
            Command::KeysWithPrefix { prefix } => ("SCAN", vec![prefix.as_bytes()]),
        };
        let mut out = Vec::from(name.as_bytes());
        for arg in args {
            out.extend_from_slice(&(arg.len() as u64).to_le_bytes());
            out.extend_from_slice(arg);
        }
        out
    }
}

/// Redis's `string2ll`: an optional `-`, then digits without a leading zero
/// (or just `0`), nothing else, within i64 and at most 21 bytes. Stricter than
/// `str::parse` (which takes `+1`, `01` and `-0`).
fn parse_i64(bytes: &[u8]) -> Option<i64> {
    if bytes.is_empty() || bytes.len() > 21 {
        return None;
    }
    if bytes == b"0" {
        return Some(0);
    }
    let (negative, digits) = match bytes.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, bytes),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    let mut magnitude: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        magnitude = magnitude.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    if negative {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Poisoned only if a task panicked holding it, and then the simulation is already failing.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------
// The client.

/// The platform's Kv, spoken to a simulated Redis over the simulated network.
///
/// Clones share their connections. A connection belongs to the madsim node
/// that made it (packets leave from that node's address, and its faults apply
/// to them), so the node a call runs on must have an IP address.
#[derive(Clone)]
pub struct SimKv {
    addr: SocketAddr,
    timeout: Duration,
    connections: Arc<tokio::sync::Mutex<BTreeMap<NodeId, Arc<Connection>>>>,
}

impl SimKv {
    /// A client of the Redis at `addr` (connects lazily, reconnects after failures).
    pub fn new(addr: SocketAddr) -> SimKv {
        SimKv { addr, timeout: DEFAULT_TIMEOUT, connections: Arc::default() }
    }

    /// Per-call timeout (default 2 s of simulated time).
    pub fn with_timeout(self, timeout: Duration) -> SimKv {
        assert!(!timeout.is_zero(), "a zero kv timeout fails every call");
        SimKv { timeout, ..self }
    }

    fn unreachable(&self, reason: impl Into<String>) -> KvError {
        KvError::Unreachable { addr: self.addr.to_string(), reason: reason.into() }
    }

    /// Sends `command` and waits for its reply, all within the timeout.
    async fn call(&self, command: Command) -> Result<Reply, KvError> {
        let deadline = fafnir_platform::time::Instant::now() + self.timeout;
        let timed_out = || self.unreachable(format!("no reply within {:?}", self.timeout));
        let connection = match fafnir_platform::time::timeout(self.timeout, self.connection()).await {
            Ok(connection) => connection?,
            Err(_elapsed) => return Err(timed_out()),
        };
        let Ok(mut call) = connection.calls.start(deadline) else {
            return Err(self.unreachable("connection lost"));
        };
        if let Err(e) = connection.tx.send(Box::new(Request { id: call.id(), command })).await {
            connection.close();
            return Err(self.unreachable(format!("connection lost: {e}")));
        }
        match call.answer().await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(message)) => Err(KvError::Other(format!("{} at {}", adapter_message(&message), self.addr))),
            Err(Unanswered::Closed) => Err(self.unreachable("connection lost")),
            Err(Unanswered::TimedOut) => {
                // The connection may be stuck behind a partition: start afresh next time.
                connection.close();
                Err(timed_out())
            }
        }
    }

    /// This node's open connection, or a new one.
    async fn connection(&self) -> Result<Arc<Connection>, KvError> {
        let node = madsim::plugin::node();
        let mut connections = self.connections.lock().await;
        if let Some(connection) = connections.get(&node) {
            if connection.is_open() {
                return Ok(connection.clone());
            }
            connections.remove(&node);
        }
        let connection = Connection::open(self.addr).await.map_err(|e| self.unreachable(e.to_string()))?;
        connections.insert(node, connection.clone());
        Ok(connection)
    }
}

impl std::fmt::Debug for SimKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimKv").field("addr", &self.addr).field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

/// What a caller gets back: the reply, or Redis's error reply.
type Answer = Result<Reply, String>;

/// One multiplexed connection to the server.
struct Connection {
    tx: Sender,
    /// Callers waiting for a reply.
    calls: Calls<Answer>,
}

impl Connection {
    async fn open(addr: SocketAddr) -> std::io::Result<Arc<Connection>> {
        let endpoint = Endpoint::bind("0.0.0.0:0").await?;
        // The sender and receiver keep the endpoint's port bound.
        let (tx, rx) = endpoint.connect1(addr).await?;
        let calls = Calls::spawn();
        tokio::spawn(read_replies(rx, calls.clone()));
        Ok(Arc::new(Connection { tx, calls }))
    }

    fn is_open(&self) -> bool {
        !self.calls.is_closed() && !self.tx.is_closed()
    }

    /// Fails the calls waiting on it; the next call connects again.
    fn close(&self) {
        self.calls.close();
    }
}

/// Hands each reply to its caller until the connection ends; then closes it.
async fn read_replies(mut rx: Receiver, calls: Calls<Answer>) {
    // Also runs when the node is killed and this task dropped.
    let _close = calls.close_on_drop();
    while let Ok(payload) = rx.recv().await {
        let Response { id, reply } = *payload.downcast::<Response>().expect("a kv connection carries only kv replies");
        // No one waiting: that caller timed out and left.
        calls.answer(id, reply);
    }
}

/// A Redis error reply as the real adapter words it (through the `redis`
/// crate): `ERR x` becomes `ResponseError: x`, `WRONGTYPE x` becomes
/// `"WRONGTYPE": x`.
fn adapter_message(reply: &str) -> String {
    match reply.split_once(' ') {
        Some(("ERR", rest)) => format!("ResponseError: {rest}"),
        Some((code, rest)) => format!("{code:?}: {rest}"),
        None => reply.to_string(),
    }
}

fn unexpected(command: &str, reply: Reply) -> ! {
    panic!("simulated redis answered {command} with {reply:?}")
}

#[async_trait]
impl Kv for SimKv {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, KvError> {
        match self.call(Command::Get { key: key.to_string() }).await? {
            Reply::Value(v) => Ok(v),
            other => unexpected("GET", other),
        }
    }

    async fn set(&self, key: &str, value: Bytes) -> Result<(), KvError> {
        match self.call(Command::Set { key: key.to_string(), value }).await? {
            Reply::Ok => Ok(()),
            other => unexpected("SET", other),
        }
    }

    async fn set_nx(&self, key: &str, value: Bytes) -> Result<bool, KvError> {
        match self.call(Command::SetNx { key: key.to_string(), value }).await? {
            Reply::Bool(set) => Ok(set),
            other => unexpected("SETNX", other),
        }
    }

    async fn del(&self, key: &str) -> Result<bool, KvError> {
        match self.call(Command::Del { key: key.to_string() }).await? {
            Reply::Bool(existed) => Ok(existed),
            other => unexpected("DEL", other),
        }
    }

    async fn incr_by(&self, key: &str, by: i64) -> Result<i64, KvError> {
        match self.call(Command::IncrBy { key: key.to_string(), by }).await? {
            Reply::Int(n) => Ok(n),
            other => unexpected("INCRBY", other),
        }
    }

    async fn hset(&self, key: &str, fields: &[(&str, Bytes)]) -> Result<(), KvError> {
        let fields = fields.iter().map(|(f, v)| (f.to_string(), v.clone())).collect();
        match self.call(Command::HSet { key: key.to_string(), fields }).await? {
            Reply::Ok => Ok(()),
            other => unexpected("HSET", other),
        }
    }

    async fn hget(&self, key: &str, field: &str) -> Result<Option<Bytes>, KvError> {
        match self.call(Command::HGet { key: key.to_string(), field: field.to_string() }).await? {
            Reply::Value(v) => Ok(v),
            other => unexpected("HGET", other),
        }
    }

    async fn hgetall(&self, key: &str) -> Result<BTreeMap<String, Bytes>, KvError> {
        match self.call(Command::HGetAll { key: key.to_string() }).await? {
            Reply::Hash(h) => Ok(h),
            other => unexpected("HGETALL", other),
        }
    }

    async fn hincr_by(&self, key: &str, field: &str, by: i64) -> Result<i64, KvError> {
        match self.call(Command::HIncrBy { key: key.to_string(), field: field.to_string(), by }).await? {
            Reply::Int(n) => Ok(n),
            other => unexpected("HINCRBY", other),
        }
    }

    async fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>, KvError> {
        match self.call(Command::KeysWithPrefix { prefix: prefix.to_string() }).await? {
            Reply::Keys(keys) => Ok(keys),
            other => unexpected("SCAN", other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_integers_as_redis_does() {
        for (text, want) in [
            ("0", Some(0)),
            ("7", Some(7)),
            ("-7", Some(-7)),
            ("9223372036854775807", Some(i64::MAX)),
            ("-9223372036854775808", Some(i64::MIN)),
            ("9223372036854775808", None),
            ("-9223372036854775809", None),
            ("", None),
            ("-", None),
            ("-0", None),
            ("01", None),
            ("+1", None),
            (" 1", None),
            ("1 ", None),
            ("1.5", None),
            ("abc", None),
            ("00000000000000000000001", None),
        ] {
            assert_eq!(parse_i64(text.as_bytes()), want, "{text:?}");
        }
        assert_eq!(parse_i64(b"\xff1"), None);
    }

    #[test]
    fn words_errors_as_the_real_adapter_does() {
        // As printed by RedisKv against redis-server 7.0.
        assert_eq!(
            adapter_message(WRONGTYPE),
            "\"WRONGTYPE\": Operation against a key holding the wrong kind of value"
        );
        assert_eq!(adapter_message(NOT_AN_INTEGER), "ResponseError: value is not an integer or out of range");
        assert_eq!(adapter_message(HSET_ARITY), "ResponseError: wrong number of arguments for 'hmset' command");
    }

    #[test]
    fn writes_are_traced_and_reads_are_not() {
        let trace = Trace::new();
        let mut store = Store::default();
        let key = || "k".to_string();
        store.apply(Command::Set { key: key(), value: Bytes::from_static(b"1") }, &trace).unwrap();
        assert_eq!(trace.events(), 1);
        store.apply(Command::Get { key: key() }, &trace).unwrap();
        store.apply(Command::SetNx { key: key(), value: Bytes::new() }, &trace).unwrap();
        store.apply(Command::Del { key: "missing".into() }, &trace).unwrap();
        store.apply(Command::HGet { key: key(), field: "f".into() }, &trace).unwrap_err();
        store.apply(Command::IncrBy { key: key(), by: i64::MAX }, &trace).unwrap_err();
        assert_eq!(trace.events(), 1, "reads, no-ops and errors are not writes");
        store.apply(Command::IncrBy { key: key(), by: 1 }, &trace).unwrap();
        store.apply(Command::Del { key: key() }, &trace).unwrap();
        assert_eq!(trace.events(), 3);
    }
}
