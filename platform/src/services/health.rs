//! The gRPC health-checking protocol (`grpc.health.v1.Health`), which every
//! service answers on its own address from the moment it starts: NOT_SERVING
//! while it rebuilds its state from the streams, SERVING once it has (see
//! [`crate::services::front`]). The status is reported under two names: ""
//! (the whole server) and the service's full gRPC name, for example
//! `fafnir.gateway.Gateway` ([`crate::services::ServiceKind::grpc_name`]).
//!
//! The real build serves tonic-health's server, fed by [`Health`]. madsim-tonic
//! cannot host it, so the simulated build serves a `Health` server generated
//! from `proto/health.proto` and implemented here on the same [`Health`]: the
//! service code is the same in both worlds, and so is what a client sees
//! (Check of a name the server does not know is NOT_FOUND, in Watch too, as
//! tonic-health answers).

use std::net::SocketAddr;
use std::time::Duration;

use tonic::transport::Channel;

#[cfg(madsim)]
pub use crate::proto::health as proto;
#[cfg(not(madsim))]
pub use tonic_health::pb as proto;

pub use proto::health_check_response::ServingStatus;
use proto::health_client::HealthClient;
use proto::HealthCheckRequest;

/// What one server's `grpc.health.v1.Health` reports, for "" and for its one
/// service (by its full gRPC name): NOT_SERVING from [`Health::new`] until
/// [`Health::set_serving`]. Clones share the status.
#[derive(Clone)]
pub struct Health {
    service: &'static str,
    #[cfg(not(madsim))]
    reporter: tonic_health::server::HealthReporter,
    /// Set by the first [`Health::close`]: a closed status stays closed.
    #[cfg(not(madsim))]
    closed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The status, None once closed (Watch streams end, Check says NOT_FOUND).
    #[cfg(madsim)]
    status: std::sync::Arc<tokio::sync::watch::Sender<Option<ServingStatus>>>,
}

/// The server that answers `grpc.health.v1.Health` for a [`Health`].
#[cfg(not(madsim))]
pub type HealthServer = proto::health_server::HealthServer<tonic_health::server::HealthService>;
/// The server that answers `grpc.health.v1.Health` for a [`Health`].
#[cfg(madsim)]
pub type HealthServer = proto::health_server::HealthServer<sim::HealthService, tonic::codegen::IdentityInterceptor>;

impl Health {
    /// A status for `service` (its full gRPC name), NOT_SERVING.
    pub async fn new(service: &'static str) -> Health {
        assert!(!service.is_empty(), "a service has a name; \"\" is the whole server");
        #[cfg(not(madsim))]
        {
            // tonic-health's reporter starts with "" SERVING: say NOT_SERVING first.
            let reporter = tonic_health::server::HealthReporter::new();
            let health = Health { service, reporter, closed: Default::default() };
            health.set(tonic_health::ServingStatus::NotServing).await;
            health
        }
        #[cfg(madsim)]
        {
            // Waited on only by Watch streams, which nothing in a simulated
            // run opens (the platform and the harness ask with Check).
            #[allow(clippy::disallowed_methods)]
            let (status, _) = tokio::sync::watch::channel(Some(ServingStatus::NotServing));
            Health { service, status: std::sync::Arc::new(status) }
        }
    }

    /// The gRPC server answering for this status, to add to the service's server.
    pub fn server(&self) -> HealthServer {
        #[cfg(not(madsim))]
        {
            let service = tonic_health::server::HealthService::from_health_reporter(self.reporter.clone());
            proto::health_server::HealthServer::new(service)
        }
        #[cfg(madsim)]
        {
            proto::health_server::HealthServer::new(sim::HealthService { health: self.clone() })
        }
    }

    /// Reports SERVING: the service has rebuilt its state and answers.
    pub async fn set_serving(&self) {
        #[cfg(not(madsim))]
        self.set(tonic_health::ServingStatus::Serving).await;
        #[cfg(madsim)]
        self.status.send_modify(|s| *s = s.map(|_| ServingStatus::Serving));
    }

    /// Reports NOT_SERVING, then forgets both names: what Watch streams are
    /// open end (a graceful stop of the server waits for every open call),
    /// and Check answers NOT_FOUND until the server is gone.
    /// Closing again does nothing.
    pub async fn close(&self) {
        #[cfg(not(madsim))]
        {
            if self.closed.swap(true, std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            for name in ["", self.service] {
                self.reporter.set_service_status(name, tonic_health::ServingStatus::NotServing).await;
            }
            let mut reporter = self.reporter.clone();
            for name in ["", self.service] {
                reporter.clear_service_status(name).await;
            }
        }
        #[cfg(madsim)]
        self.close_now();
    }

    /// [`Health::close`] from where nothing can be awaited (a server being
    /// dropped): at once in simulation, in a task of its own for real.
    pub fn close_soon(&self) {
        #[cfg(not(madsim))]
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let health = self.clone();
            runtime.spawn(async move { health.close().await });
        }
        #[cfg(madsim)]
        self.close_now();
    }

    #[cfg(madsim)]
    fn close_now(&self) {
        if self.status.borrow().is_some() {
            self.status.send_replace(Some(ServingStatus::NotServing));
            self.status.send_replace(None);
        }
    }

    #[cfg(not(madsim))]
    async fn set(&self, status: tonic_health::ServingStatus) {
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        for name in ["", self.service] {
            self.reporter.set_service_status(name, status).await;
        }
    }
}

/// A client of the `grpc.health.v1.Health` service at `addr`, connecting
/// when first used; each call fails after `timeout`.
pub fn client(addr: SocketAddr, timeout: Duration) -> HealthClient<Channel> {
    HealthClient::new(crate::services::channel(addr, timeout))
}

/// Asks the server behind `client` for the status of `service` ("" for the
/// whole server).
pub async fn check(client: &mut HealthClient<Channel>, service: &str) -> Result<ServingStatus, tonic::Status> {
    let reply = client.check(HealthCheckRequest { service: service.to_string() }).await?.into_inner();
    Ok(reply.status())
}

/// The simulated build's `grpc.health.v1.Health` server, on [`Health`].
#[cfg(madsim)]
pub mod sim {
    use futures::stream::BoxStream;
    use futures::StreamExt as _;
    use tonic::{Request, Response, Status};

    use super::proto::{HealthCheckRequest, HealthCheckResponse};
    use super::{Health, ServingStatus};

    /// Answers for one [`Health`].
    pub struct HealthService {
        pub(super) health: Health,
    }

    impl HealthService {
        /// The status of `service` now; None for a name the server does not know.
        fn status_of(&self, service: &str) -> Option<ServingStatus> {
            let known = service.is_empty() || service == self.health.service;
            known.then(|| *self.health.status.borrow()).flatten()
        }
    }

    fn not_found() -> Status {
        Status::not_found("service not registered")
    }

    fn response(status: ServingStatus) -> HealthCheckResponse {
        HealthCheckResponse { status: status as i32 }
    }

    #[tonic::async_trait]
    impl super::proto::health_server::Health for HealthService {
        async fn check(&self, req: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
            let status = self.status_of(&req.get_ref().service).ok_or_else(not_found)?;
            Ok(Response::new(response(status)))
        }

        type WatchStream = BoxStream<'static, Result<HealthCheckResponse, Status>>;

        /// The status now, then each change (the latest, when several came
        /// between two reads), until the status is closed.
        async fn watch(&self, req: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
            self.status_of(&req.get_ref().service).ok_or_else(not_found)?;
            let rx = self.health.status.subscribe();
            let updates = futures::stream::unfold((rx, true), |(mut rx, first)| async move {
                if !first && rx.changed().await.is_err() {
                    return None;
                }
                let status = (*rx.borrow_and_update())?;
                Some((Ok(response(status)), (rx, false)))
            });
            Ok(Response::new(updates.boxed()))
        }
    }
}
