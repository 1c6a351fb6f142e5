//! Runs the kv conformance cases (`fafnir_sim::conformance::kv`): under
//! `cargo sim test` against the simulated Redis (one madsim world per test: a
//! Redis node and a client node), under `cargo test` against redis-server
//! (the shared one at 127.0.0.1:6379, each test under its own key prefix, and
//! for the crash case a private one this test starts and kills).

/// The number of independent clients a `concurrent_*` case gets.
const CLIENTS: usize = 5;

/// One `#[madsim::test]` / `#[tokio::test]` per case taking `(kv, prefix)`.
macro_rules! for_each_case {
    ($runner:ident) => {
        $runner!(
            get_set_and_overwrite,
            binary_and_empty_values,
            set_nx_only_when_absent,
            del_says_whether_the_key_existed,
            incr_by_counts_from_zero,
            incr_by_rejects_non_integers,
            hset_hget_and_hgetall,
            hincr_by_counts_from_zero,
            wrong_type_is_an_error,
            keys_with_prefix_is_literal_and_sorted,
        );
    };
}

/// One test per case taking `(clients, prefix)`.
macro_rules! for_each_concurrent_case {
    ($runner:ident) => {
        $runner!(
            concurrent_increments_sum_exactly,
            concurrent_set_nx_has_one_winner,
            concurrent_hsets_are_never_seen_mixed
        );
    };
}

#[cfg(madsim)]
mod sim {
    use std::net::SocketAddr;
    use std::time::Duration;

    use async_trait::async_trait;
    use bytes::Bytes;
    use fafnir_platform::kv::{Kv, KvError};
    use fafnir_sim::conformance::kv::{self as cases, KvControl};
    use fafnir_sim::redis::{self, SimKv};
    use fafnir_sim::trace::Trace;
    use madsim::runtime::{Handle, NodeHandle};
    use madsim::task::NodeId;

    const REDIS_ADDR: &str = "10.0.0.2:6379";
    const CLIENT_IP: &str = "10.0.0.1";
    const PREFIX: &str = "conformance:kv:";

    /// A Redis node and a client node.
    struct World {
        redis: NodeHandle,
        client: NodeHandle,
        addr: SocketAddr,
        trace: Trace,
    }

    fn world() -> World {
        let handle = Handle::current();
        // madsim's default latency (1-10 ms of its clock), in modelled time.
        let ms = |n| fafnir_platform::time::to_runtime(Duration::from_millis(n));
        madsim::net::NetSim::current().update_config(|c| c.send_latency = ms(1)..ms(10));
        let addr: SocketAddr = REDIS_ADDR.parse().expect("redis address");
        let trace = Trace::new();
        let server_trace = trace.clone();
        let redis = handle
            .create_node()
            .name("redis")
            .ip(addr.ip())
            .init(move || redis::serve(addr, server_trace.clone()))
            .build();
        let client = handle.create_node().name("client").ip(CLIENT_IP.parse().expect("client ip")).build();
        World { redis, client, addr, trace }
    }

    /// Simulated (modelled) time since the start of the run.
    fn now() -> Duration {
        fafnir_platform::time::from_runtime(madsim::time::TimeHandle::current().elapsed())
    }

    /// Waits until the Redis answers (its node's init runs when the simulation gets to it).
    async fn until_up(kv: &SimKv) {
        for _ in 0..100 {
            if kv.get(&format!("{PREFIX}ping")).await.is_ok() {
                return;
            }
            fafnir_platform::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the simulated redis did not answer within 1 s");
    }

    /// Crash = kill the Redis node and start it again (its init runs `serve`
    /// again, empty). `restart` alone would keep the old incarnation's port
    /// bound (madsim 0.2.34 frees a node's sockets only in `kill`).
    struct Restart {
        redis: NodeId,
        probe: SimKv,
    }

    #[async_trait]
    impl KvControl for Restart {
        async fn crash_and_restart(&self) {
            let handle = Handle::current();
            handle.kill(self.redis);
            handle.restart(self.redis);
            until_up(&self.probe).await;
        }
    }

    macro_rules! sim_cases {
        ($($case:ident),* $(,)?) => {$(
            #[madsim::test]
            async fn $case() {
                let world = world();
                let addr = world.addr;
                world.client.spawn(async move {
                    let kv = SimKv::new(addr);
                    until_up(&kv).await;
                    cases::$case(&kv, PREFIX).await;
                }).await.expect("the case ran");
                assert!(world.trace.events() > 0, "the server traced the case's writes");
            }
        )*};
    }
    for_each_case!(sim_cases);

    macro_rules! sim_concurrent_cases {
        ($($case:ident),* $(,)?) => {$(
            #[madsim::test]
            async fn $case() {
                let world = world();
                let addr = world.addr;
                world.client.spawn(async move {
                    // Separate clients, separate connections (whose messages the network delays independently).
                    let clients: Vec<SimKv> = (0..super::CLIENTS).map(|_| SimKv::new(addr)).collect();
                    for kv in &clients {
                        until_up(kv).await;
                    }
                    let clients: Vec<&dyn Kv> = clients.iter().map(|kv| kv as &dyn Kv).collect();
                    cases::$case(&clients, PREFIX).await;
                }).await.expect("the case ran");
                assert!(world.trace.events() > 0, "the server traced the case's writes");
            }
        )*};
    }
    for_each_concurrent_case!(sim_concurrent_cases);

    #[madsim::test]
    async fn a_crash_loses_all_data() {
        let world = world();
        let (addr, redis) = (world.addr, world.redis.id());
        world
            .client
            .spawn(async move {
                let kv = SimKv::new(addr);
                until_up(&kv).await;
                cases::a_crash_loses_all_data(&kv, PREFIX, &Restart { redis, probe: SimKv::new(addr) }).await;
            })
            .await
            .expect("the case ran");
    }

    #[track_caller]
    fn assert_unreachable<T: std::fmt::Debug>(result: Result<T, KvError>, what: &str) {
        assert!(
            matches!(&result, Err(KvError::Unreachable { addr, .. }) if addr == REDIS_ADDR),
            "{what}: want Unreachable, got {result:?}"
        );
    }

    #[madsim::test]
    async fn a_killed_redis_is_unreachable_within_the_timeout() {
        let world = world();
        let (addr, redis) = (world.addr, world.redis.id());
        world
            .client
            .spawn(async move {
                let timeout = Duration::from_millis(500);
                let kv = SimKv::new(addr).with_timeout(timeout);
                until_up(&kv).await;
                let key = format!("{PREFIX}k");
                kv.set(&key, Bytes::from_static(b"v")).await.unwrap();

                // A call in flight when the node dies learns it at once: its connection drops.
                let in_flight = tokio::spawn({
                    let (kv, key) = (kv.clone(), key.clone());
                    async move { kv.get(&key).await }
                });
                fafnir_platform::time::sleep(Duration::from_micros(200)).await; // sent, not yet answered (latency >= 1 ms)
                let start = now();
                Handle::current().kill(redis);
                assert_unreachable(in_flight.await.expect("the call ran"), "a call in flight");
                assert!(now() - start < timeout, "noticed the lost connection, not the timeout: {:?}", now() - start);

                // Calls to a dead node fail too, within the timeout, one after another.
                for _ in 0..3 {
                    let start = now();
                    assert_unreachable(kv.incr_by(&key, 1).await, "a call to a dead node");
                    assert!(now() - start <= timeout, "took {:?}", now() - start);
                }

                // Back, empty; the same client reconnects.
                Handle::current().restart(redis);
                until_up(&kv).await;
                assert_eq!(kv.get(&key).await.unwrap(), None, "a restarted redis is empty");
            })
            .await
            .expect("the test ran");
    }

    #[madsim::test]
    async fn a_partitioned_redis_is_unreachable_within_the_timeout() {
        let world = world();
        let (addr, redis) = (world.addr, world.redis.id());
        world
            .client
            .spawn(async move {
                let timeout = Duration::from_millis(300);
                let kv = SimKv::new(addr).with_timeout(timeout);
                until_up(&kv).await;
                let key = format!("{PREFIX}k");
                kv.set(&key, Bytes::from_static(b"v")).await.unwrap();

                let net = madsim::net::NetSim::current();
                net.clog_node(redis);
                // On the open connection the request waits out the partition: the timeout ends the call.
                let start = now();
                assert_unreachable(kv.get(&key).await, "a call into a partition");
                let took = now() - start;
                assert!(took >= timeout && took < timeout + Duration::from_millis(1), "took {took:?}");
                // A new connection is refused at once.
                let start = now();
                assert_unreachable(kv.get(&key).await, "a new connection into a partition");
                assert!(now() - start < timeout, "took {:?}", now() - start);

                net.unclog_node(redis);
                assert_eq!(
                    kv.get(&key).await.unwrap(),
                    Some(Bytes::from_static(b"v")),
                    "the first call after the partition heals"
                );
            })
            .await
            .expect("the test ran");
    }

    /// Runs three clients (each its own node and connection) incrementing one
    /// counter concurrently; returns the trace hash and event count.
    fn traced_run(seed: u64) -> (u64, u64) {
        let runtime = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
        runtime.block_on(async {
            let world = world();
            let handle = Handle::current();
            let mut clients = vec![world.client.clone()];
            for i in 3..5 {
                clients.push(handle.create_node().ip(format!("10.0.0.{i}").parse().unwrap()).build());
            }
            let runs = clients.iter().enumerate().map(|(c, node)| {
                let addr = world.addr;
                node.spawn(async move {
                    let kv = SimKv::new(addr);
                    until_up(&kv).await;
                    for i in 0..10 {
                        kv.hincr_by(&format!("{PREFIX}h"), "f", (c * 100 + i) as i64).await.unwrap();
                    }
                })
            });
            for run in futures::future::join_all(runs).await {
                run.expect("client ran");
            }
            (world.trace.hash(), world.trace.events())
        })
    }

    #[test]
    fn the_same_seed_gives_the_same_trace() {
        let (hash, events) = traced_run(7);
        assert_eq!(events, 30, "one event per applied write");
        assert_eq!(traced_run(7), (hash, events), "same seed, same trace");
        assert_ne!(traced_run(8).0, hash, "another seed interleaves the clients differently");
    }
}

#[cfg(not(madsim))]
mod real {
    use std::panic::AssertUnwindSafe;
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::sync::{Mutex, MutexGuard};
    use std::time::Duration;

    use async_trait::async_trait;
    use bytes::Bytes;
    use fafnir_platform::kv::redis::RedisKv;
    use fafnir_platform::kv::{wipe_prefix, Kv, KvError};
    use fafnir_sim::conformance::kv::{self as cases, KvControl};
    use futures::FutureExt;

    /// The shared redis-server (`ci/test` starts it).
    const REDIS: &str = "127.0.0.1:6379";

    async fn connect(addr: &str) -> RedisKv {
        RedisKv::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("the kv conformance tests need redis-server at {addr} (ci/test starts it): {e}"))
    }

    /// A key prefix no other test uses: the process id and a counter (every
    /// test wipes its keys, so a recycled process id finds none).
    fn unique_prefix(test: &str) -> String {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("conformance:kv:{}:{n}:{test}:", std::process::id())
    }

    macro_rules! real_cases {
        ($($case:ident),* $(,)?) => {$(
            #[tokio::test]
            async fn $case() {
                let kv = connect(REDIS).await;
                let prefix = unique_prefix(stringify!($case));
                let outcome = AssertUnwindSafe(cases::$case(&kv, &prefix)).catch_unwind().await;
                // Clean up whether or not the case passed.
                let wiped = wipe_prefix(&kv, &prefix).await;
                if let Err(panic) = outcome {
                    std::panic::resume_unwind(panic);
                }
                assert!(wiped.expect("delete the case's keys") > 0, "the case wrote under its prefix");
                assert_eq!(kv.keys_with_prefix(&prefix).await.unwrap(), Vec::<String>::new(), "nothing left behind");
            }
        )*};
    }
    for_each_case!(real_cases);

    macro_rules! real_concurrent_cases {
        ($($case:ident),* $(,)?) => {$(
            #[tokio::test]
            async fn $case() {
                let mut clients = Vec::new();
                for _ in 0..super::CLIENTS {
                    clients.push(connect(REDIS).await);
                }
                let prefix = unique_prefix(stringify!($case));
                let refs: Vec<&dyn Kv> = clients.iter().map(|kv| kv as &dyn Kv).collect();
                let outcome = AssertUnwindSafe(cases::$case(&refs, &prefix)).catch_unwind().await;
                let wiped = wipe_prefix(&clients[0], &prefix).await;
                if let Err(panic) = outcome {
                    std::panic::resume_unwind(panic);
                }
                assert!(wiped.expect("delete the case's keys") > 0, "the case wrote under its prefix");
            }
        )*};
    }
    for_each_concurrent_case!(real_concurrent_cases);

    /// A redis-server of this test's own, on a free loopback port, killed when dropped.
    struct PrivateRedis {
        port: u16,
        dir: PathBuf,
        child: Mutex<Child>,
    }

    impl PrivateRedis {
        fn start() -> PrivateRedis {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free loopback port")
                .port();
            // Its own empty directory, so that no dump.rdb lying around is loaded at start.
            let dir = std::env::temp_dir().join(format!("fafnir-kv-conformance-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("redis-server directory");
            let child = Mutex::new(spawn_redis(port, &dir));
            PrivateRedis { port, dir, child }
        }

        fn addr(&self) -> String {
            format!("127.0.0.1:{}", self.port)
        }

        fn child(&self) -> MutexGuard<'_, Child> {
            self.child.lock().unwrap_or_else(|p| p.into_inner())
        }

        /// SIGKILL: no shutdown, no save.
        fn kill(&self) {
            let mut child = self.child();
            let _ = child.kill();
            let _ = child.wait();
        }

        fn crash_and_start(&self) {
            self.kill();
            *self.child() = spawn_redis(self.port, &self.dir);
        }

        /// A connection, once the server accepts one.
        async fn connect(&self) -> RedisKv {
            for _ in 0..200 {
                if let Ok(kv) = RedisKv::connect(&self.addr()).await {
                    return kv;
                }
                fafnir_platform::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("the private redis-server at {} did not accept a connection within 5 s", self.addr());
        }
    }

    impl Drop for PrivateRedis {
        fn drop(&mut self) {
            self.kill();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn spawn_redis(port: u16, dir: &std::path::Path) -> Child {
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start redis-server on 127.0.0.1:{port} (is it installed?): {e}"))
    }

    struct Crash<'a> {
        server: &'a PrivateRedis,
        kv: &'a RedisKv,
    }

    #[async_trait]
    impl KvControl for Crash<'_> {
        async fn crash_and_restart(&self) {
            self.server.crash_and_start();
            // The same client reconnects by itself: the first calls may fail while it does.
            for _ in 0..200 {
                if self.kv.get("probe-after-restart").await.is_ok() {
                    return;
                }
                fafnir_platform::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("the RedisKv did not reconnect to {} within 5 s", self.server.addr());
        }
    }

    #[tokio::test]
    async fn a_crash_loses_all_data() {
        let server = PrivateRedis::start();
        let kv = server.connect().await;
        let prefix = unique_prefix("a_crash_loses_all_data");
        cases::a_crash_loses_all_data(&kv, &prefix, &Crash { server: &server, kv: &kv }).await;
    }

    #[tokio::test]
    async fn a_killed_redis_is_unreachable_within_the_timeout() {
        let server = PrivateRedis::start();
        let kv = server.connect().await;
        let key = unique_prefix("killed") + "k";
        kv.set(&key, Bytes::from_static(b"v")).await.unwrap();
        server.kill();
        for _ in 0..3 {
            let result = fafnir_platform::time::timeout(Duration::from_secs(5), kv.get(&key))
                .await
                .expect("a call to a dead server returns");
            assert!(matches!(result, Err(KvError::Unreachable { .. })), "want Unreachable, got {result:?}");
        }
    }
}
