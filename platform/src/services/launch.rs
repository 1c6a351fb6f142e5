//! Starting services: one, or a whole deployment in one process. What
//! `fafnir up`, `fafnir serve`, the tests and the simulator call.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::services::health::{self, ServingStatus};
use crate::services::{
    auth, engine, gateway, market, orders, portfolio, shutdown_on, Deps, ServiceError, ServiceKind, Shutdown,
};

impl ServiceKind {
    pub const ALL: [ServiceKind; 6] = [
        ServiceKind::Portfolio,
        ServiceKind::Auth,
        ServiceKind::Market,
        ServiceKind::Engine,
        ServiceKind::Orders,
        ServiceKind::Gateway,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ServiceKind::Gateway => "gateway",
            ServiceKind::Auth => "auth",
            ServiceKind::Market => "market",
            ServiceKind::Orders => "orders",
            ServiceKind::Engine => "engine",
            ServiceKind::Portfolio => "portfolio",
        }
    }

    /// The full name of the service's gRPC service, under which its health
    /// protocol reports it (see [`crate::services::health`]).
    pub const fn grpc_name(self) -> &'static str {
        match self {
            ServiceKind::Gateway => "fafnir.gateway.Gateway",
            ServiceKind::Auth => "fafnir.auth.Auth",
            ServiceKind::Market => "fafnir.market.Market",
            ServiceKind::Orders => "fafnir.orders.Orders",
            ServiceKind::Engine => "fafnir.engine.Engine",
            ServiceKind::Portfolio => "fafnir.portfolio.Portfolio",
        }
    }

    /// Whether the service takes the unary calls on an order's path
    /// ([`crate::rpc`]: multiplexed in simulation).
    pub fn on_order_path(self) -> bool {
        matches!(self, ServiceKind::Gateway | ServiceKind::Orders | ServiceKind::Portfolio)
    }

    pub fn parse(name: &str) -> Option<ServiceKind> {
        ServiceKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Runs one service (engine: one shard) until `shutdown`.
pub async fn serve(kind: ServiceKind, shard: usize, deps: Deps, shutdown: Shutdown) -> Result<(), ServiceError> {
    deps.cfg.validate().map_err(ServiceError::Config)?;
    match kind {
        ServiceKind::Gateway => gateway::serve(deps, shutdown).await,
        ServiceKind::Auth => auth::serve(deps, shutdown).await,
        ServiceKind::Market => market::serve(deps, shutdown).await,
        ServiceKind::Orders => orders::serve(deps, shutdown).await,
        ServiceKind::Engine => engine::serve(deps, shard, shutdown).await,
        ServiceKind::Portfolio => portfolio::serve(deps, shutdown).await,
    }
}

/// A service running as a task of this process.
pub struct ServiceHandle {
    pub kind: ServiceKind,
    pub shard: usize,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServiceError>>,
}

impl ServiceHandle {
    /// The name of the instance, for example `engine-0`.
    pub fn name(&self) -> String {
        instance_name(self.kind, self.shard)
    }

    /// Asks the service to stop and waits up to `grace` before killing it.
    pub async fn stop(mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if crate::time::timeout(grace, &mut self.task).await.is_err() {
            self.task.abort();
        }
    }

    /// Kills the service at once, as a crash would.
    pub fn kill(self) {
        self.task.abort();
    }

    /// Whether the service has stopped (for example on an error).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits for the service to end and returns how it ended.
    pub async fn join(self) -> Result<(), ServiceError> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(ServiceError::Serve { addr: String::new(), reason: format!("service task ended: {e}") }),
        }
    }
}

fn instance_name(kind: ServiceKind, shard: usize) -> String {
    match kind {
        ServiceKind::Engine => format!("engine-{shard}"),
        _ => kind.name().to_string(),
    }
}

/// Starts one service as a task.
pub fn spawn(kind: ServiceKind, shard: usize, deps: Deps) -> ServiceHandle {
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = shutdown_on(async move {
        let _ = stopped.await;
    });
    let task = tokio::spawn(serve(kind, shard, deps, shutdown));
    ServiceHandle { kind, shard, stop: Some(stop), task }
}

/// Every service of the deployment (every engine shard), keyed by instance name.
pub fn spawn_all(deps: &Deps) -> BTreeMap<String, ServiceHandle> {
    let mut all = BTreeMap::new();
    for kind in ServiceKind::ALL {
        let shards = if kind == ServiceKind::Engine { deps.cfg.engine_shards.len() } else { 1 };
        for shard in 0..shards {
            let h = spawn(kind, shard, deps.clone());
            all.insert(h.name(), h);
        }
    }
    all
}

/// As [`wait_until_serving`], but ends as soon as one of `services` (what
/// [`spawn_all`] started) stops, with its own error — a port already in use,
/// a configuration refused — rather than waiting out `timeout` to say only
/// that it is not serving. The stopped service is removed from `services`.
pub async fn wait_until_serving_or_stopped(
    deps: &Deps,
    services: &mut BTreeMap<String, ServiceHandle>,
    timeout: Duration,
) -> Result<(), String> {
    let stopped = async {
        loop {
            if let Some(name) = services.iter().find(|(_, h)| h.is_finished()).map(|(n, _)| n.clone()) {
                return name;
            }
            crate::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let name = tokio::select! {
        biased;
        name = stopped => name,
        serving = wait_until_serving(deps, timeout) => return serving,
    };
    let handle = services.remove(&name).expect("found above");
    Err(match handle.join().await {
        Ok(()) => format!("{name} stopped before it served"),
        Err(e) => format!("{name} stopped before it served: {e}"),
    })
}

/// How often [`wait_until_serving`] asks a service that is not serving yet.
const SERVING_CHECK_EVERY: Duration = Duration::from_millis(20);

/// How long one health check may take (a service cut off does not answer).
const SERVING_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// One service instance of a deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// For example `engine-0`.
    pub name: String,
    pub kind: ServiceKind,
    /// The engine shard (0 for the other services).
    pub shard: usize,
    pub addr: SocketAddr,
}

/// Every service instance of the deployment (every engine shard), in the
/// order [`wait_until_serving`] waits for them.
pub fn instances(cfg: &crate::config::PlatformConfig) -> Vec<Instance> {
    let a = &cfg.addrs;
    let one = |kind: ServiceKind, addr| Instance { name: kind.name().to_string(), kind, shard: 0, addr };
    let mut all = vec![
        one(ServiceKind::Gateway, a.gateway),
        one(ServiceKind::Auth, a.auth),
        one(ServiceKind::Market, a.market),
        one(ServiceKind::Orders, a.orders),
        one(ServiceKind::Portfolio, a.portfolio),
    ];
    all.extend(a.engines.iter().enumerate().map(|(shard, &addr)| Instance {
        name: instance_name(ServiceKind::Engine, shard),
        kind: ServiceKind::Engine,
        shard,
        addr,
    }));
    all
}

/// Waits until every service of the deployment says SERVING in the gRPC
/// health protocol (see [`crate::services::health`]): until each has rebuilt
/// its state from the streams and answers, not merely listens.
pub async fn wait_until_serving(deps: &Deps, timeout: Duration) -> Result<(), String> {
    let deadline = crate::time::Instant::now() + timeout;
    for Instance { name, kind, addr, .. } in instances(&deps.cfg) {
        let mut client = health::client(addr, SERVING_CHECK_TIMEOUT);
        loop {
            let seen = match health::check(&mut client, kind.grpc_name()).await {
                Ok(ServingStatus::Serving) => break,
                Ok(status) => format!("it says {}", status.as_str_name()),
                Err(e) => format!("{:?}: {}", e.code(), e.message()),
            };
            if crate::time::Instant::now() >= deadline {
                return Err(format!("{name} is not serving on {addr} after {timeout:?} ({seen})"));
            }
            crate::time::sleep(SERVING_CHECK_EVERY).await;
        }
    }
    Ok(())
}
