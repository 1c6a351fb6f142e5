//! The key-value store: the subset of Redis commands the platform uses.
//!
//! Redis holds only derived, rebuildable state (quotes, candles, stream
//! positions): every service can rebuild what it keeps here by replaying its
//! JetStream streams, so losing Redis loses no fact. Each command is atomic on
//! its own, as in Redis. The real adapter ([`redis::RedisKv`]) compiles only
//! outside simulation; the simulated Redis lives in `sim/`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::Bytes;

#[cfg(not(madsim))]
pub mod redis;

/// Why a kv call failed. Conditions of the world, not bugs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("redis unreachable at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("redis error: {0}")]
    Other(String),
}

/// The Redis commands the platform uses (named after them).
#[async_trait]
pub trait Kv: Send + Sync + 'static {
    /// GET
    async fn get(&self, key: &str) -> Result<Option<Bytes>, KvError>;
    /// SET
    async fn set(&self, key: &str, value: Bytes) -> Result<(), KvError>;
    /// SET NX: true when the key was absent and is now set.
    async fn set_nx(&self, key: &str, value: Bytes) -> Result<bool, KvError>;
    /// DEL: true when the key existed.
    async fn del(&self, key: &str) -> Result<bool, KvError>;
    /// INCRBY: the new value. A missing key counts as 0.
    async fn incr_by(&self, key: &str, by: i64) -> Result<i64, KvError>;
    /// HSET with one or more fields, atomically.
    async fn hset(&self, key: &str, fields: &[(&str, Bytes)]) -> Result<(), KvError>;
    /// HGET
    async fn hget(&self, key: &str, field: &str) -> Result<Option<Bytes>, KvError>;
    /// HGETALL, ordered by field.
    async fn hgetall(&self, key: &str) -> Result<BTreeMap<String, Bytes>, KvError>;
    /// HINCRBY: the new value. A missing field counts as 0.
    async fn hincr_by(&self, key: &str, field: &str, by: i64) -> Result<i64, KvError>;
    /// The keys starting with `prefix` (SCAN MATCH), sorted.
    async fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>, KvError>;
}

/// Deletes every key starting with `prefix`; returns how many there were.
/// (What a test does to make one deployment's Redis lose its data.)
pub async fn wipe_prefix(kv: &dyn Kv, prefix: &str) -> Result<usize, KvError> {
    let keys = kv.keys_with_prefix(prefix).await?;
    for key in &keys {
        kv.del(key).await?;
    }
    Ok(keys.len())
}
