//! A service's gRPC server from the moment the service starts, before it has
//! rebuilt its state: the health protocol answers at once (NOT_SERVING, see
//! [`crate::services::health`]), and the service's own calls are refused with
//! UNAVAILABLE, never answered from a half-rebuilt state, until the service
//! opens them with its rebuilt state ([`Front::serve`]), when the health
//! protocol turns to SERVING.
//!
//! ```ignore
//! let mut front = Front::listen(ServiceKind::Market, addr, shutdown.clone()).await;
//! let Some((state, tasks)) = front.rebuilding(rebuild(&deps)).await? else { return Ok(()) };
//! front.serve(MarketServer::new(MarketSvc { state }), tasks).await
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use crate::services::health::Health;
use crate::services::{ServiceError, ServiceKind, Shutdown, TaskGroup};

/// A generated gRPC server, as a [`Front`] serves it (the bounds differ
/// between real tonic and madsim-tonic; every generated server meets them).
pub use imp::GrpcService;

/// A service that refuses every call with UNAVAILABLE until it is opened,
/// then hands each call to the service it was opened with. Its clones share
/// whether it is open.
pub struct Gate<S> {
    kind: ServiceKind,
    open: Arc<OnceLock<S>>,
}

impl<S> Clone for Gate<S> {
    fn clone(&self) -> Self {
        Gate { kind: self.kind, open: self.open.clone() }
    }
}

impl<S> Gate<S> {
    /// A gate that refuses every call.
    pub fn closed(kind: ServiceKind) -> Gate<S> {
        Gate { kind, open: Arc::new(OnceLock::new()) }
    }

    /// From now on every call goes to `service`.
    pub fn open(&self, service: S) {
        assert!(self.open.set(service).is_ok(), "{} opened twice", self.kind.name());
    }

    /// Whether calls go to the service.
    pub fn is_open(&self) -> bool {
        self.open.get().is_some()
    }

    fn refused(&self) -> tonic::Status {
        tonic::Status::unavailable(format!(
            "{} is starting: it is rebuilding its state from the event streams",
            self.kind.name()
        ))
    }
}

/// A service's gRPC server (its health protocol and its [`Gate`]d service,
/// the latter on the simulated multiplexed connections too when the service
/// is on an order's path: see [`crate::rpc`]), listening from
/// [`Front::listen`] on.
pub struct Front<S> {
    kind: ServiceKind,
    addr: SocketAddr,
    health: Health,
    gate: Gate<S>,
    server: Pin<Box<dyn Future<Output = Result<(), String>> + Send>>,
}

impl<S: GrpcService> Front<S> {
    /// Builds the server of `kind` on `addr`: NOT_SERVING, every call of the
    /// service refused, until [`Front::serve`]. It listens once polled: by
    /// [`Front::rebuilding`] or [`Front::serve`]. On `shutdown` it first says
    /// NOT_SERVING and ends the health protocol's Watch streams (a graceful
    /// stop waits for every open call), then stops.
    pub async fn listen(kind: ServiceKind, addr: SocketAddr, shutdown: Shutdown) -> Front<S> {
        assert_eq!(S::NAME, kind.grpc_name(), "the gRPC service of {}", kind.name());
        let health = Health::new(S::NAME).await;
        let gate = Gate::closed(kind);
        let closing = health.clone();
        let signal = {
            let shutdown = shutdown.clone();
            async move {
                shutdown.await;
                closing.close().await;
            }
        };
        let grpc = crate::services::grpc_server()
            .add_service(health.server())
            .add_service(gate.clone())
            .serve_with_shutdown(addr, signal);
        let grpc = async move { grpc.await.map_err(|e| crate::services::with_sources(&e)) };
        let server: Pin<Box<dyn Future<Output = Result<(), String>> + Send>> = if kind.on_order_path() {
            Box::pin(crate::rpc::serve_alongside(addr, gate.clone(), shutdown, grpc))
        } else {
            Box::pin(grpc)
        };
        Front { kind, addr, health, gate, server }
    }

    /// Runs `rebuild` while the server answers (NOT_SERVING, every call of
    /// the service UNAVAILABLE). None when the server stopped first: on
    /// shutdown; an error when it could not serve (its port taken).
    pub async fn rebuilding<T>(
        &mut self,
        rebuild: impl Future<Output = Result<T, ServiceError>>,
    ) -> Result<Option<T>, ServiceError> {
        let addr = self.addr;
        tokio::select! {
            biased;
            served = &mut self.server => match served {
                Ok(()) => Ok(None),
                Err(reason) => Err(ServiceError::Serve { addr: addr.to_string(), reason }),
            },
            rebuilt = rebuild => rebuilt.map(Some),
        }
    }

    /// Opens the service to calls with `service` (built on the rebuilt
    /// state), reports SERVING, and serves until shutdown or until the
    /// server or a task of `tasks` ends.
    pub async fn serve(mut self, service: S, tasks: TaskGroup) -> Result<(), ServiceError> {
        assert!(!self.gate.is_open(), "{} served twice", self.kind.name());
        // Calls are let in before SERVING is said: a client that saw SERVING is served.
        self.gate.open(service);
        self.health.set_serving().await;
        tasks.serve_until_failure(self.addr, &mut self.server).await
    }
}

impl<S> Drop for Front<S> {
    /// A server that ends for any reason (an error, a failed task, its task
    /// aborted) first says NOT_SERVING and ends the Watch streams open on
    /// it, as a process that exits would: connections it accepted can
    /// outlive it in this process, and a watcher must not be left with its
    /// last word.
    fn drop(&mut self) {
        self.health.close_soon();
    }
}

#[cfg(not(madsim))]
mod imp {
    use std::convert::Infallible;
    use std::task::{Context, Poll};

    use tonic::body::Body;
    use tonic::codegen::{http, BoxFuture, Service};
    use tonic::server::NamedService;

    use super::Gate;

    /// A generated gRPC server as tonic's router takes it.
    pub trait GrpcService:
        Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = Infallible,
            Future = BoxFuture<http::Response<Body>, Infallible>,
        > + NamedService
        + Clone
        + Send
        + Sync
        + 'static
    {
    }

    impl<T> GrpcService for T where
        T: Service<
                http::Request<Body>,
                Response = http::Response<Body>,
                Error = Infallible,
                Future = BoxFuture<http::Response<Body>, Infallible>,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static
    {
    }

    impl<S: GrpcService> NamedService for Gate<S> {
        const NAME: &'static str = S::NAME;
    }

    impl<S: GrpcService> Service<http::Request<Body>> for Gate<S> {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = BoxFuture<http::Response<Body>, Infallible>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<Body>) -> Self::Future {
            let Some(service) = self.open.get() else {
                let refused = self.refused();
                return Box::pin(async move { Ok(refused.into_http()) });
            };
            let mut service = service.clone();
            Box::pin(async move {
                futures::future::poll_fn(|cx| service.poll_ready(cx)).await?;
                service.call(request).await
            })
        }
    }
}

#[cfg(madsim)]
mod imp {
    use std::task::{Context, Poll};

    use tonic::codegen::http::uri::PathAndQuery;
    use tonic::codegen::{BoxFuture, BoxMessageStream, Service};
    use tonic::transport::NamedService;
    use tonic::{Request, Response, Status};

    use super::Gate;

    /// A generated gRPC server as madsim-tonic's router and the multiplexed
    /// server of [`crate::rpc`] take it.
    pub trait GrpcService: crate::rpc::MuxService + NamedService + Sync {}

    impl<T: crate::rpc::MuxService + NamedService + Sync> GrpcService for T {}

    impl<S: GrpcService> NamedService for Gate<S> {
        const NAME: &'static str = S::NAME;
    }

    impl<S: GrpcService> Service<(PathAndQuery, Request<BoxMessageStream>)> for Gate<S> {
        type Response = Response<BoxMessageStream>;
        type Error = Status;
        type Future = BoxFuture<Response<BoxMessageStream>, Status>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: (PathAndQuery, Request<BoxMessageStream>)) -> Self::Future {
            let Some(service) = self.open.get() else {
                let refused = self.refused();
                return Box::pin(async move { Err(refused) });
            };
            let mut service = service.clone();
            Box::pin(async move {
                futures::future::poll_fn(|cx| service.poll_ready(cx)).await?;
                service.call(request).await
            })
        }
    }
}
