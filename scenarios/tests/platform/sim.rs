//! The flows in the deterministic simulation: every service, the JetStream
//! broker and Redis are madsim nodes; the flow runs on a client node. A kill is
//! a node kill, a start is a node restart (which runs the service's recovery),
//! and losing Redis's data is restarting the Redis node.

use std::sync::Arc;
use std::time::Duration;

use fafnir_platform::bus::EventBus;
use fafnir_platform::config::PlatformConfig;
use fafnir_platform::kv::Kv;
use fafnir_sim::world::{World, WorldSpec};

use crate::{flows, Platform};

struct SimPlatform {
    world: Arc<World>,
}

fn service_instances(world: &World) -> Vec<String> {
    world.nodes.keys().filter(|n| *n != "broker" && *n != "redis").cloned().collect()
}

#[async_trait::async_trait]
impl Platform for SimPlatform {
    fn cfg(&self) -> &PlatformConfig {
        &self.world.cfg
    }

    fn bus(&self) -> Arc<dyn EventBus> {
        Arc::new(self.world.bus())
    }

    async fn kill(&self, instance: &str) {
        self.world.kill(instance);
    }

    async fn start(&self, instance: &str) {
        self.world.restart(instance);
    }

    fn start_after(&self, instance: &str, delay: Duration) {
        let (world, name) = (self.world.clone(), instance.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            world.restart(&name);
        });
    }

    async fn restart_all_with_empty_redis(&self) {
        let kv = self.world.kv();
        let prefix = self.world.cfg.names().key_prefix();
        assert!(!kv.keys_with_prefix(&prefix).await.unwrap().is_empty(), "the market kept state in Redis");
        let services = service_instances(&self.world);
        for s in &services {
            self.world.kill(s);
        }
        self.world.restart("redis");
        assert!(kv.keys_with_prefix(&prefix).await.unwrap().is_empty(), "a restarted Redis is empty");
        for s in &services {
            self.world.restart(s);
        }
        self.world.wait_serving(Duration::from_secs(30)).await;
    }
}

/// Builds the standard world for the current seed, waits until it serves and
/// runs `flow` on a client node.
async fn run<F, Fut>(spec: impl FnOnce(WorldSpec) -> WorldSpec, flow: F)
where
    F: FnOnce(Arc<SimPlatform>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let seed = madsim::runtime::Handle::current().seed();
    let world = Arc::new(World::build(spec(WorldSpec::standard(seed))));
    let client = world.client_node("test");
    let p = Arc::new(SimPlatform { world: world.clone() });
    client
        .spawn(async move {
            p.world.wait_serving(Duration::from_secs(30)).await;
            flow(p).await;
        })
        .await
        .expect("the flow ran to its end");
}

macro_rules! sim_flows {
    ($($flow:ident),* $(,)?) => {$(
        #[madsim::test]
        async fn $flow() {
            run(|s| s, |p| async move { flows::$flow(p.as_ref()).await }).await;
        }
    )*};
}

sim_flows!(
    end_to_end_crossing_limits_and_a_market_order,
    ioc_and_fok_partial_and_no_fill,
    a_retried_submit_is_booked_once,
    restarts_and_a_redis_wipe_change_nothing,
    bad_input_changes_nothing_and_says_why,
    market_data_streams_candles_and_roles,
);

#[madsim::test]
async fn the_rate_limit_is_per_user() {
    let spec = |mut s: WorldSpec| {
        s.cfg.rate_limit = fafnir_platform::config::RateLimit { per_second: 1, burst: 5 };
        s
    };
    run(spec, |p| async move { flows::the_rate_limit_is_per_user(p.as_ref()).await }).await;
}
