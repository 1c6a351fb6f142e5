//! The unary calls on an order's path: agent → gateway `SubmitOrder` and
//! `CancelOrder`, gateway → orders `Submit` and `Cancel`, orders → portfolio
//! `Reserve` and `Release`.
//!
//! For real they are plain gRPC calls on the generated clients. In simulation,
//! madsim-tonic opens a fresh simulated connection for every call (two, with
//! its handshake) and its server accepts them one after another, which was most
//! of the simulator's cost per order. There these calls travel instead on one
//! long-lived simulated connection per client and server, multiplexed by call
//! id as HTTP/2 multiplexes gRPC calls on one connection, and they are served
//! by the same generated server, so by the same handlers, as madsim-tonic's.
//! The server listens on [`mux_addr`] of the service's address, beside
//! madsim-tonic's (which keeps serving every other call and the streams).
//!
//! A call is made with [`unary!`]: `unary!(mux, client, method, "/pkg.Svc/Method", request)`.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

/// Where the simulated multiplexed server of the service at `addr` listens.
pub fn mux_addr(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip(), addr.port().wrapping_add(10_000))
}

/// Makes a unary call: with the generated gRPC `client` for real, on the
/// multiplexed connection `mux` (a [`Mux`]) in simulation.
#[macro_export]
macro_rules! unary {
    ($mux:expr, $client:expr, $method:ident, $path:literal, $request:expr) => {{
        let client = $client.clone();
        $mux.call($path, tonic::IntoRequest::into_request($request), move |request| async move {
            let mut client = client;
            client.$method(request).await
        })
        .await
    }};
}

/// Serves `service` (a generated gRPC server) on its multiplexed simulated
/// connections too, alongside `grpc`, its ordinary server, until either ends.
/// For real it is `grpc` alone.
pub async fn serve_alongside<S, E>(
    addr: SocketAddr,
    service: S,
    shutdown: crate::services::Shutdown,
    grpc: impl Future<Output = Result<(), E>>,
) -> Result<(), String>
where
    S: MuxService,
    E: std::fmt::Display,
{
    #[cfg(madsim)]
    {
        tokio::select! {
            biased;
            served = grpc => served.map_err(|e| e.to_string()),
            served = sim::serve(mux_addr(addr), service, shutdown) => served,
        }
    }
    #[cfg(not(madsim))]
    {
        let _ = (addr, service, shutdown);
        grpc.await.map_err(|e| e.to_string())
    }
}

#[cfg(madsim)]
pub use sim::set_reply_loss;
pub use sim::MuxService;

/// A client's multiplexed connection to one service (simulation only; for
/// real it holds nothing and [`unary!`] uses the gRPC client).
#[derive(Clone)]
pub struct Mux {
    #[cfg(madsim)]
    inner: sim::MuxClient,
}

impl Mux {
    /// A lazily connected client of the service at `addr` (its gRPC address),
    /// failing calls not answered within `timeout`.
    pub fn new(addr: SocketAddr, timeout: Duration) -> Mux {
        #[cfg(madsim)]
        {
            Mux { inner: sim::MuxClient::new(mux_addr(addr), timeout) }
        }
        #[cfg(not(madsim))]
        {
            let _ = (addr, timeout);
            Mux {}
        }
    }

    /// Calls `path`: `grpc` (the same call on a generated client) for real, the
    /// multiplexed connection in simulation. Use [`unary!`].
    pub async fn call<Req, Rep, Grpc, Fut>(
        &self,
        path: &'static str,
        request: tonic::Request<Req>,
        grpc: Grpc,
    ) -> Result<tonic::Response<Rep>, tonic::Status>
    where
        Req: Send + Sync + 'static,
        Rep: Send + Sync + 'static,
        Grpc: FnOnce(tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Rep>, tonic::Status>>,
    {
        #[cfg(madsim)]
        {
            // The gRPC call only tells the reply's type.
            drop(grpc);
            self.inner.unary(path, request).await
        }
        #[cfg(not(madsim))]
        {
            let _ = path;
            grpc(request).await
        }
    }
}

#[cfg(not(madsim))]
mod sim {
    /// Any service, for real (nothing is served on a multiplexed connection).
    pub trait MuxService {}
    impl<T> MuxService for T {}
}

#[cfg(madsim)]
mod sim {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use futures::StreamExt;
    use madsim::net::{Endpoint, Receiver, Sender};

    use crate::calls::{Calls, Unanswered};
    use tonic::codegen::http::uri::PathAndQuery;
    use tonic::codegen::{BoxFuture, BoxMessage, BoxMessageStream, Service};
    use tonic::{Request, Response, Status};

    thread_local! {
        /// The simulation's answer-loss switch while one is installed (see
        /// [`set_reply_loss`]), for the world running on this thread (a
        /// madsim runtime runs on one thread; a sweep runs one world after
        /// another on each of its threads, and each world installs its own).
        static REPLY_LOSS: std::cell::RefCell<Option<ReplyLossFn>> = const { std::cell::RefCell::new(None) };
    }

    type ReplyLossFn = Arc<dyn Fn() -> bool + Send + Sync>;

    /// Installs (or with `None` removes) the simulation's answer-loss switch
    /// for the multiplexed servers on this thread: asked once per answer,
    /// after the handler ran, whether the answer is lost (the `reply_lost`
    /// fault: the call took effect, the client times out). The simulation
    /// decides; the platform only asks.
    pub fn set_reply_loss(lose: Option<ReplyLossFn>) {
        REPLY_LOSS.with(|r| *r.borrow_mut() = lose);
    }

    fn reply_lost() -> bool {
        REPLY_LOSS.with(|r| r.borrow().as_ref().is_some_and(|lose| lose()))
    }

    /// A call: its id on the connection, the method's path and the request.
    type CallFrame = (u64, PathAndQuery, Request<BoxMessage>);
    /// An answer: the call's id and the reply or the status.
    type ReplyFrame = (u64, Result<Response<BoxMessage>, Status>);

    /// What the generated servers are, seen from here.
    pub trait MuxService:
        Service<
            (PathAndQuery, Request<BoxMessageStream>),
            Response = Response<BoxMessageStream>,
            Error = Status,
            Future = BoxFuture<Response<BoxMessageStream>, Status>,
        > + Clone
        + Send
        + 'static
    {
    }

    impl<T> MuxService for T where
        T: Service<
                (PathAndQuery, Request<BoxMessageStream>),
                Response = Response<BoxMessageStream>,
                Error = Status,
                Future = BoxFuture<Response<BoxMessageStream>, Status>,
            > + Clone
            + Send
            + 'static
    {
    }

    /// Serves `service` on every connection made to `addr` until `shutdown`.
    pub async fn serve<S: MuxService>(
        addr: SocketAddr,
        service: S,
        shutdown: crate::services::Shutdown,
    ) -> Result<(), String> {
        let endpoint = Endpoint::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        // The connections die with the server, as a process's do.
        let mut connections = Connections::default();
        loop {
            let accepted = tokio::select! {
                biased;
                accepted = endpoint.accept1() => accepted,
                () = shutdown.clone() => return Ok(()),
            };
            let (tx, rx, _peer) = accepted.map_err(|e| format!("accept on {addr}: {e}"))?;
            connections.0.retain(|c| !c.is_finished());
            connections.0.push(tokio::spawn(connection(Arc::new(tx), rx, service.clone())));
        }
    }

    #[derive(Default)]
    struct Connections(Vec<tokio::task::JoinHandle<()>>);

    impl Drop for Connections {
        fn drop(&mut self) {
            for c in &self.0 {
                c.abort();
            }
        }
    }

    /// Runs each call of one connection in a task of its own, as madsim-tonic does.
    async fn connection<S: MuxService>(tx: Arc<Sender>, mut rx: Receiver, service: S) {
        while let Ok(frame) = rx.recv().await {
            let (id, path, request) = *frame.downcast::<CallFrame>().expect("rpc: a frame that is not a call");
            let mut service = service.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let request = request.map(|m| futures::stream::once(futures::future::ready(Ok(m))).boxed());
                let reply = match service.call((path, request)).await {
                    Ok(response) => {
                        let (metadata, mut stream, extensions) = response.into_parts();
                        match stream.next().await {
                            Some(Ok(message)) => Ok(Response::from_parts(metadata, message, extensions)),
                            Some(Err(status)) => Err(status),
                            None => Err(Status::internal("rpc: a unary handler answered nothing")),
                        }
                    }
                    Err(status) => Err(status),
                };
                if reply_lost() {
                    // The call took effect; its answer never arrives (a simulated fault).
                    return;
                }
                // A client that went away does not get its answer.
                let _ = tx.send(Box::new((id, reply) as ReplyFrame)).await;
            });
        }
    }

    /// One connection to a service, shared by the client's clones, made on
    /// first use and made again after it broke or a call on it timed out.
    #[derive(Clone)]
    pub struct MuxClient {
        shared: Arc<Shared>,
    }

    struct Shared {
        addr: SocketAddr,
        timeout: Duration,
        conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    }

    struct Conn {
        tx: Sender,
        /// Calls waiting for their answer on this connection.
        calls: Calls<Answer>,
    }

    type Answer = Result<Response<BoxMessage>, Status>;

    impl MuxClient {
        pub fn new(addr: SocketAddr, timeout: Duration) -> MuxClient {
            let shared = Shared { addr, timeout, conn: tokio::sync::Mutex::new(None) };
            MuxClient { shared: Arc::new(shared) }
        }

        /// Calls `path` with `request`; fails as madsim-tonic does: `Unavailable`
        /// when the service cannot be reached or the connection breaks,
        /// `DeadlineExceeded` when no answer comes within the timeout.
        pub async fn unary<Req, Rep>(&self, path: &'static str, request: Request<Req>) -> Result<Response<Rep>, Status>
        where
            Req: Send + Sync + 'static,
            Rep: Send + Sync + 'static,
        {
            let timeout = self.shared.timeout;
            let deadline = crate::time::Instant::now() + timeout;
            let timed_out = || Status::deadline_exceeded(format!("request timeout: {timeout:?}"));
            let unavailable = |e: &dyn std::fmt::Display| Status::unavailable(format!("{}: {e}", self.shared.addr));
            let conn = match crate::time::timeout(timeout, self.connection()).await {
                Ok(conn) => conn.map_err(|e| unavailable(&e))?,
                Err(_) => return Err(timed_out()),
            };
            let Ok(mut call) = conn.calls.start(deadline) else {
                return Err(unavailable(&"connection lost"));
            };
            let request = request.map(|m| Box::new(m) as BoxMessage);
            let frame = Box::new((call.id(), PathAndQuery::from_static(path), request) as CallFrame);
            if let Err(e) = conn.tx.send(frame).await {
                self.discard(&conn).await;
                return Err(unavailable(&e));
            }
            let reply = match call.answer().await {
                Ok(answer) => answer?,
                Err(Unanswered::Closed) => return Err(unavailable(&"connection lost before the answer")),
                Err(Unanswered::TimedOut) => {
                    // The connection may be stuck behind a partition: start afresh next time.
                    self.discard(&conn).await;
                    return Err(timed_out());
                }
            };
            Ok(reply.map(|m| *m.downcast::<Rep>().expect("rpc: an answer of another type")))
        }

        /// The current connection, made if there is none or it broke.
        async fn connection(&self) -> std::io::Result<Arc<Conn>> {
            let mut slot = self.shared.conn.lock().await;
            if let Some(conn) = slot.as_ref() {
                if !conn.calls.is_closed() && !conn.tx.is_closed() {
                    return Ok(conn.clone());
                }
            }
            *slot = None;
            let endpoint = Endpoint::bind("0.0.0.0:0").await?;
            let (tx, rx) = endpoint.connect1(self.shared.addr).await?;
            let calls = Calls::spawn();
            tokio::spawn(read_answers(rx, calls.clone()));
            let conn = Arc::new(Conn { tx, calls });
            *slot = Some(conn.clone());
            Ok(conn)
        }

        /// Stops using `conn` for new calls.
        async fn discard(&self, conn: &Arc<Conn>) {
            let mut slot = self.shared.conn.lock().await;
            if slot.as_ref().is_some_and(|current| Arc::ptr_eq(current, conn)) {
                *slot = None;
            }
        }
    }

    /// Hands each answer to the call waiting for it, until the connection breaks.
    async fn read_answers(mut rx: Receiver, calls: Calls<Answer>) {
        // Also when this task is dropped (its node died), the connection is done.
        let _closed = calls.close_on_drop();
        while let Ok(frame) = rx.recv().await {
            let (id, answer) = *frame.downcast::<ReplyFrame>().expect("rpc: a frame that is not an answer");
            // A call that timed out is no longer waiting; its answer is dropped.
            calls.answer(id, answer);
        }
    }
}

#[cfg(all(test, madsim))]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use madsim::runtime::Handle;
    use tonic::{Code, Request, Response, Status};

    use super::Mux;
    use crate::proto::engine::engine_client::EngineClient;
    use crate::proto::engine::engine_server::{Engine, EngineServer};
    use crate::proto::engine::{BookView, GetBookRequest};

    /// Answers after `depth` milliseconds with the symbol it was asked for.
    struct Echo;

    #[tonic::async_trait]
    impl Engine for Echo {
        async fn get_book(&self, req: Request<GetBookRequest>) -> Result<Response<BookView>, Status> {
            let req = req.into_inner();
            if req.symbol.is_empty() {
                return Err(Status::invalid_argument("symbol: empty"));
            }
            crate::time::sleep(Duration::from_millis(u64::from(req.depth))).await;
            Ok(Response::new(BookView { symbol: req.symbol, ..BookView::default() }))
        }
    }

    const ADDR: &str = "10.0.0.1:50051";

    fn server(handle: &Handle) -> madsim::runtime::NodeHandle {
        handle
            .create_node()
            .name("server")
            .ip("10.0.0.1".parse().expect("ip"))
            .init(|| async {
                let addr: SocketAddr = ADDR.parse().expect("addr");
                let service = EngineServer::new(Echo);
                let shutdown = crate::services::shutdown_on(futures::future::pending());
                let grpc = tonic::transport::Server::builder()
                    .add_service(service.clone())
                    .serve_with_shutdown(addr, shutdown.clone());
                super::serve_alongside(addr, service, shutdown, grpc).await.expect("serves");
            })
            .build()
    }

    async fn get(mux: &Mux, symbol: &str, wait_ms: u32) -> Result<String, Status> {
        let request = GetBookRequest { symbol: symbol.into(), depth: wait_ms };
        let grpc = EngineClient::new(crate::services::channel(ADDR.parse().expect("addr"), Duration::from_secs(1)));
        let reply = crate::unary!(mux, grpc, get_book, "/fafnir.engine.Engine/GetBook", request)?;
        Ok(reply.into_inner().symbol)
    }

    #[madsim::test]
    async fn concurrent_calls_get_their_own_answers() {
        let handle = Handle::current();
        let _server = server(&handle);
        let client = handle.create_node().name("client").ip("10.0.0.2".parse().expect("ip")).build();
        client
            .spawn(async {
                let mux = Mux::new(ADDR.parse().expect("addr"), Duration::from_secs(1));
                // The slow call is sent first and answered last.
                let (slow, fast) = futures::join!(get(&mux, "SLOW", 50), get(&mux, "FAST", 1));
                assert_eq!((slow.expect("slow"), fast.expect("fast")), ("SLOW".to_string(), "FAST".to_string()));
                let refused = get(&mux, "", 0).await.expect_err("an empty symbol is refused");
                assert_eq!((refused.code(), refused.message()), (Code::InvalidArgument, "symbol: empty"));
            })
            .await
            .expect("client");
    }

    /// An answer the simulation's switch drops never arrives: the handler ran
    /// (the call took effect), the client times out.
    #[madsim::test]
    async fn a_lost_answer_times_out_though_the_handler_ran() {
        use std::sync::atomic::{AtomicU32, Ordering};
        use std::sync::Arc;
        let handle = Handle::current();
        let _server = server(&handle);
        let asked = Arc::new(AtomicU32::new(0));
        let seen = asked.clone();
        // Loses the first answer only.
        super::set_reply_loss(Some(Arc::new(move || seen.fetch_add(1, Ordering::Relaxed) == 0)));
        let client = handle.create_node().name("client").ip("10.0.0.2".parse().expect("ip")).build();
        client
            .spawn(async {
                let mux = Mux::new(ADDR.parse().expect("addr"), Duration::from_millis(200));
                let lost = get(&mux, "A", 1).await.expect_err("its answer is lost");
                assert_eq!(lost.code(), Code::DeadlineExceeded);
                assert_eq!(get(&mux, "B", 1).await.expect("answered"), "B");
            })
            .await
            .expect("client");
        super::set_reply_loss(None);
        assert_eq!(asked.load(Ordering::Relaxed), 2, "asked once per answer, after the handler ran");
    }

    #[madsim::test]
    async fn a_dead_server_is_unavailable_a_slow_one_times_out_and_a_restarted_one_answers() {
        let handle = Handle::current();
        let server = server(&handle);
        let client = handle.create_node().name("client").ip("10.0.0.2".parse().expect("ip")).build();
        let id = server.id();
        let h = handle.clone();
        client
            .spawn(async move {
                let mux = Mux::new(ADDR.parse().expect("addr"), Duration::from_millis(200));
                assert_eq!(get(&mux, "A", 1).await.expect("up"), "A");
                let slow = get(&mux, "B", 500).await.expect_err("slower than the timeout");
                assert_eq!(slow.code(), Code::DeadlineExceeded);
                h.kill(id);
                let down = get(&mux, "C", 1).await.expect_err("the server is dead");
                assert_eq!(down.code(), Code::Unavailable, "{down:?}");
                h.restart(id);
                crate::time::sleep(Duration::from_millis(100)).await;
                assert_eq!(get(&mux, "D", 1).await.expect("restarted"), "D");
            })
            .await
            .expect("client");
    }
}
