//! Private nats-server and redis-server processes, for tests that kill and
//! restart them: each on a free port of 127.0.0.1, NATS with its own store
//! directory, so a restart comes back on the same port with the same store
//! (JetStream's file streams survive; Redis, without persistence, comes back
//! empty) and nothing else on the machine is touched.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Finds a server binary on the PATH or where Debian puts it.
fn binary(name: &str, package: &str) -> Result<PathBuf, String> {
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
    on_path
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{name} is not installed (apt-get install {package}); ci/test installs it"))
}

/// Waits until something accepts connections on `port` (blocking, on the wall clock).
#[allow(clippy::disallowed_methods)] // outside any runtime: the wall clock itself
fn wait_for_port(port: u16, what: &str, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let tail = std::fs::read_to_string(log).unwrap_or_default();
    Err(format!("{what} did not listen on 127.0.0.1:{port} within 15 s; its log:\n{tail}"))
}

/// A scratch directory of this process, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(what: &str) -> Result<ScratchDir, String> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let dir = std::env::temp_dir().join(format!("fafnir-{what}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A private server process (nats-server or redis-server) on a port of its
/// own, which a test kills and starts again.
pub struct Server {
    what: &'static str,
    binary: PathBuf,
    args: Vec<String>,
    port: u16,
    dir: ScratchDir,
    child: Option<Child>,
    starts: u32,
}

impl Server {
    /// A nats-server with JetStream and a store of its own: a restart comes
    /// back with the file streams it had.
    pub fn nats() -> Result<Server, String> {
        let port = crate::real::free_ports(1)[0];
        let dir = ScratchDir::new("nats")?;
        let store = dir.0.join("store").display().to_string();
        let args = ["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd", &store];
        Server::start_new("nats-server", "nats-server", &args, port, dir)
    }

    /// A NATS cluster of `n` nats-servers with JetStream (named n1, n2, ...,
    /// routed to each other on loopback), each with a store of its own.
    /// Clients may connect to any of them.
    pub fn nats_cluster(n: usize) -> Result<Vec<Server>, String> {
        let ports = crate::real::free_ports(2 * n);
        let (clients, routes) = ports.split_at(n);
        let routes_arg = routes.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        let mut servers = Vec::with_capacity(n);
        for (i, (port, route)) in clients.iter().zip(routes).enumerate() {
            let dir = ScratchDir::new("nats-cluster")?;
            let store = dir.0.join("store").display().to_string();
            let (port_arg, name, cluster) =
                (port.to_string(), format!("n{}", i + 1), format!("nats://127.0.0.1:{route}"));
            let args = [
                "-a",
                "127.0.0.1",
                "-p",
                &port_arg,
                "-js",
                "-sd",
                &store,
                "-n",
                &name,
                "--cluster_name",
                "fafnir",
                "--cluster",
                &cluster,
                "--routes",
                &routes_arg,
            ];
            servers.push(Server::start_new("nats-server", "nats-server", &args, *port, dir)?);
        }
        Ok(servers)
    }

    /// A redis-server without persistence: a restart comes back empty.
    pub fn redis() -> Result<Server, String> {
        let port = crate::real::free_ports(1)[0];
        let dir = ScratchDir::new("redis")?;
        let args = ["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"];
        Server::start_new("redis-server", "redis-server", &args, port, dir)
    }

    fn start_new(
        what: &'static str,
        package: &str,
        args: &[&str],
        port: u16,
        dir: ScratchDir,
    ) -> Result<Server, String> {
        let binary = binary(what, package)?;
        let args = args.iter().map(|a| a.to_string()).collect();
        let mut s = Server { what, binary, args, port, dir, child: None, starts: 0 };
        s.start()?;
        Ok(s)
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log(&self) -> PathBuf {
        self.dir.0.join(format!("{}-{}.log", self.what, self.starts))
    }

    fn start(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "{} is running", self.what);
        self.starts += 1;
        let log = self.log();
        let out = std::fs::File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&self.binary)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        wait_for_port(self.port, self.what, &log)
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (and store).
    pub fn restart(&mut self) -> Result<(), String> {
        self.start()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
