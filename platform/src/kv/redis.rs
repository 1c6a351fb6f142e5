//! The kv store on a real redis-server, through the `redis` crate.

use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::Bytes;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;

use super::{Kv, KvError};

/// A multiplexed connection to redis-server, shared by the services of a
/// process, that reconnects by itself after the server restarts.
#[derive(Clone)]
pub struct RedisKv {
    addr: String,
    conn: ConnectionManager,
}

impl RedisKv {
    /// Connects to redis-server at `addr` (for example `127.0.0.1:6379`).
    pub async fn connect(addr: &str) -> Result<RedisKv, KvError> {
        let unreachable = |e: redis::RedisError| KvError::Unreachable { addr: addr.to_string(), reason: e.to_string() };
        let client = redis::Client::open(format!("redis://{addr}/")).map_err(unreachable)?;
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1))
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        let conn = ConnectionManager::new_with_config(client, config).await.map_err(unreachable)?;
        let mut kv = RedisKv { addr: addr.to_string(), conn };
        // Fail now, naming the address, rather than on the first command.
        let _: String = redis::cmd("PING").query_async(&mut kv.conn).await.map_err(unreachable)?;
        Ok(kv)
    }

    fn err(&self, e: redis::RedisError) -> KvError {
        if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
            KvError::Unreachable { addr: self.addr.clone(), reason: e.to_string() }
        } else {
            KvError::Other(format!("{} at {}", e, self.addr))
        }
    }
}

#[async_trait]
impl Kv for RedisKv {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, KvError> {
        let v: Option<Vec<u8>> = self.conn.clone().get(key).await.map_err(|e| self.err(e))?;
        Ok(v.map(Bytes::from))
    }

    async fn set(&self, key: &str, value: Bytes) -> Result<(), KvError> {
        let () = self.conn.clone().set(key, value.as_ref()).await.map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn set_nx(&self, key: &str, value: Bytes) -> Result<bool, KvError> {
        self.conn.clone().set_nx(key, value.as_ref()).await.map_err(|e| self.err(e))
    }

    async fn del(&self, key: &str) -> Result<bool, KvError> {
        let n: i64 = self.conn.clone().del(key).await.map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    async fn incr_by(&self, key: &str, by: i64) -> Result<i64, KvError> {
        self.conn.clone().incr(key, by).await.map_err(|e| self.err(e))
    }

    async fn hset(&self, key: &str, fields: &[(&str, Bytes)]) -> Result<(), KvError> {
        let items: Vec<(&str, &[u8])> = fields.iter().map(|(f, v)| (*f, v.as_ref())).collect();
        let _: i64 = self.conn.clone().hset_multiple(key, &items).await.map_err(|e| self.err(e)).map(|()| 0)?;
        Ok(())
    }

    async fn hget(&self, key: &str, field: &str) -> Result<Option<Bytes>, KvError> {
        let v: Option<Vec<u8>> = self.conn.clone().hget(key, field).await.map_err(|e| self.err(e))?;
        Ok(v.map(Bytes::from))
    }

    async fn hgetall(&self, key: &str) -> Result<BTreeMap<String, Bytes>, KvError> {
        let v: Vec<(String, Vec<u8>)> = self.conn.clone().hgetall(key).await.map_err(|e| self.err(e))?;
        Ok(v.into_iter().map(|(k, v)| (k, Bytes::from(v))).collect())
    }

    async fn hincr_by(&self, key: &str, field: &str, by: i64) -> Result<i64, KvError> {
        self.conn.clone().hincr(key, field, by).await.map_err(|e| self.err(e))
    }

    async fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>, KvError> {
        let pattern = format!("{}*", escape_glob(prefix));
        let mut cursor: u64 = 0;
        let mut keys = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(|e| self.err(e))?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }
}

fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
