//! Running the platform for real: connecting a deployment to nats-server and
//! redis-server, and finding free local ports.

use std::sync::Arc;

use fafnir_platform::bus::nats::NatsBus;
use fafnir_platform::config::PlatformConfig;
use fafnir_platform::kv::redis::RedisKv;
use fafnir_platform::services::Deps;

/// The system clock: the one wall-clock read of a real deployment.
pub struct SystemClock;

impl fafnir_platform::clock::Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
    }
}

/// Connects to NATS and Redis; the error names the address and how to start the server.
pub async fn connect(cfg: PlatformConfig) -> Result<(Deps, Arc<NatsBus>), String> {
    cfg.validate().map_err(|e| format!("invalid configuration: {e}"))?;
    let bus = NatsBus::connect(&cfg.nats_addr).await.map_err(|e| {
        format!(
            "cannot reach NATS (JetStream) at {}: {e}\n  start it with: nats-server -a 127.0.0.1 -p 4222 -js \
             (apt-get install nats-server), or pass --nats HOST:PORT",
            cfg.nats_addr
        )
    })?;
    let kv = RedisKv::connect(&cfg.redis_addr).await.map_err(|e| {
        format!(
            "cannot reach Redis at {}: {e}\n  start it with: redis-server --port 6379 --save '' --appendonly no \
             (apt-get install redis-server), or pass --redis HOST:PORT",
            cfg.redis_addr
        )
    })?;
    let bus = Arc::new(bus);
    let deps = Deps::new(Arc::new(cfg), bus.clone(), Arc::new(kv), Arc::new(SystemClock));
    Ok((deps, bus))
}

/// `n` ports on 127.0.0.1 that were free a moment ago.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port")).collect();
    listeners.iter().map(|l| l.local_addr().expect("local addr").port()).collect()
}
