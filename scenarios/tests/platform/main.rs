//! The platform end to end, one test binary for both worlds: each flow in
//! `flows.rs` is written once against [`Platform`] and runs against the real
//! nats-server and redis-server under `cargo test` (`real.rs`) and in the
//! deterministic simulation under `cargo sim test` (`sim.rs`), where it must
//! end with exactly the same balances, holdings and order statuses.

use std::sync::Arc;
use std::time::Duration;

use fafnir_platform::bus::EventBus;
use fafnir_platform::config::PlatformConfig;

mod flows;
mod graphql;
mod health;
mod hostile;
#[cfg(not(madsim))]
mod real;
#[cfg(not(madsim))]
mod real_health;
#[cfg(not(madsim))]
mod security;
#[cfg(madsim)]
mod sim;

/// A running deployment the flows can drive, kill and restart.
#[async_trait::async_trait]
pub trait Platform: Send + Sync {
    fn cfg(&self) -> &PlatformConfig;
    fn gateway(&self) -> std::net::SocketAddr {
        self.cfg().addrs.gateway
    }
    /// An event-bus client usable from the flow's own task.
    fn bus(&self) -> Arc<dyn EventBus>;
    /// Kills a service instance (`portfolio`, `engine-0`, ...) as a crash would.
    async fn kill(&self, instance: &str);
    /// Starts a killed instance again.
    async fn start(&self, instance: &str);
    /// Starts a killed instance with its rebuild held: it cannot get past
    /// reading its streams (for real its event-bus calls wait; in simulation
    /// it is cut off from the broker, gives up and starts again) until
    /// [`Platform::release`].
    async fn start_held(&self, instance: &str);
    /// Lets the rebuild of an instance started with [`Platform::start_held`] go on.
    async fn release(&self, instance: &str);
    /// Starts a killed instance after `delay`, without waiting for it.
    fn start_after(&self, instance: &str, delay: Duration);
    /// Stops every service, loses all of Redis's data, starts every service
    /// again and waits until they serve.
    async fn restart_all_with_empty_redis(&self);
    /// Stops every service at once (a crash of the whole platform), starts
    /// them all again and waits until they serve.
    async fn restart_all(&self);
    /// Kills the JetStream broker and starts it again on the same store.
    async fn restart_broker(&self);
    /// Kills Redis and starts it again, empty.
    async fn restart_redis(&self);
}
