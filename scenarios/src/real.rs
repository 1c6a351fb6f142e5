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
    fn now_us(&self) -> i64 {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
    }

    fn thread_cpu(&self) -> Option<std::time::Duration> {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes one timespec through a valid pointer.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        (rc == 0).then(|| std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }
}

/// The OS's random bytes: the one source of entropy of a real deployment
/// (password salts), handed to the platform in its `Deps`.
pub struct OsEntropy;

impl fafnir_platform::services::Entropy for OsEntropy {
    fn fill(&self, buf: &mut [u8]) {
        // Without the OS's generator nothing secret can be made: no way on.
        getrandom::getrandom(buf).expect("the OS's random number generator failed");
    }
}

/// The shortest JWT secret `fafnir up` and `fafnir serve` accept: HS256's
/// key should be as long as its 32-byte hash.
pub const JWT_SECRET_BYTES_MIN: usize = 32;

/// The deployment's JWT secret, from `--jwt-secret` (or FAFNIR_JWT_SECRET)
/// or from the file `--jwt-secret-file` names (or FAFNIR_JWT_SECRET_FILE;
/// its trailing newline ignored): exactly one of them, at least
/// [`JWT_SECRET_BYTES_MIN`] bytes. The error says how to make and give one.
pub fn jwt_secret(given: Option<String>, file: Option<&std::path::Path>) -> Result<String, String> {
    const HOW: &str = "make one with `openssl rand -hex 32 > jwt.secret` and pass --jwt-secret-file jwt.secret \
                       (or FAFNIR_JWT_SECRET_FILE=jwt.secret; or the secret itself with --jwt-secret or \
                       FAFNIR_JWT_SECRET); every service of a deployment needs the same one";
    let secret = match (given, file) {
        (Some(_), Some(_)) => {
            return Err("the JWT secret is given twice: use --jwt-secret (FAFNIR_JWT_SECRET) or \
                        --jwt-secret-file (FAFNIR_JWT_SECRET_FILE), not both"
                .into())
        }
        (Some(secret), None) => secret,
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the JWT secret file {}: {e}", path.display()))?;
            text.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, None) => return Err(format!("no JWT secret: {HOW}")),
    };
    if secret.len() < JWT_SECRET_BYTES_MIN {
        return Err(format!(
            "the JWT secret is {} bytes; at least {JWT_SECRET_BYTES_MIN} are needed: {HOW}",
            secret.len()
        ));
    }
    Ok(secret)
}

/// A fresh random JWT secret (32 bytes, hex): for a platform that lives only
/// as long as this process (`fafnir run` starting one in-process).
pub fn random_secret() -> String {
    let mut key = [0u8; 32];
    fafnir_platform::services::Entropy::fill(&OsEntropy, &mut key);
    key.iter().map(|b| format!("{b:02x}")).collect()
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
    let deps = Deps::new(Arc::new(cfg), bus.clone(), Arc::new(kv), Arc::new(SystemClock), Arc::new(OsEntropy));
    Ok((deps, bus))
}

/// Checks that this process can listen on each `(service, address)`, so
/// that a port already in use is named before anything starts; the error
/// names the service, the address and the OS's reason.
pub fn check_can_listen(addrs: &[(String, std::net::SocketAddr)]) -> Result<(), String> {
    for (name, addr) in addrs {
        // Bound and released at once: nothing accepted, so the port is free again.
        std::net::TcpListener::bind(addr).map_err(|e| {
            format!("{name} cannot listen on {addr}: {e}\n  stop what holds the port, or pass --base-port / --host")
        })?;
    }
    Ok(())
}

/// The ports [`free_ports`] hands out: below the kernel's usual ephemeral
/// range (32768 and up), where no outgoing connection takes one.
const TEST_PORTS: std::ops::Range<u32> = 20_000..32_000;

/// `n` ports on 127.0.0.1 that were free a moment ago, none of them handed
/// out before by this process. (Ephemeral ports, bound and released, raced:
/// between the release and a service's bind, another test's bind or an
/// outgoing connection could take one, and a client met another test's
/// server, Unimplemented.) Each process starts at its own place in
/// [`TEST_PORTS`] and goes on from there, skipping ports that do not bind.
pub fn free_ports(n: usize) -> Vec<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = TEST_PORTS.end - TEST_PORTS.start;
    let start = (std::process::id() % 100) * (span / 100);
    let _ = NEXT.compare_exchange(u32::MAX, start, Ordering::Relaxed, Ordering::Relaxed);
    let mut ports = Vec::with_capacity(n);
    for _ in 0..span {
        if ports.len() == n {
            break;
        }
        let port = (TEST_PORTS.start + NEXT.fetch_add(1, Ordering::Relaxed) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
        }
    }
    assert_eq!(ports.len(), n, "{n} free ports in {TEST_PORTS:?}");
    ports
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jwt_secret_is_required_long_and_given_once() {
        let no = jwt_secret(None, None).unwrap_err();
        assert!(no.contains("--jwt-secret-file") && no.contains("FAFNIR_JWT_SECRET") && no.contains("openssl"), "{no}");
        let short = jwt_secret(Some("short".into()), None).unwrap_err();
        assert!(short.contains("5 bytes") && short.contains("at least 32"), "{short}");
        let key = "k".repeat(32);
        assert_eq!(jwt_secret(Some(key.clone()), None).unwrap(), key);

        let dir = std::env::temp_dir().join(format!("fafnir-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("jwt.secret");
        std::fs::write(&file, format!("{key}\n")).unwrap();
        assert_eq!(jwt_secret(None, Some(&file)).unwrap(), key, "the trailing newline is not part of it");
        assert!(jwt_secret(Some(key.clone()), Some(&file)).unwrap_err().contains("not both"));
        let missing = jwt_secret(None, Some(&dir.join("nope"))).unwrap_err();
        assert!(missing.contains("cannot read the JWT secret file"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();

        let (a, b) = (random_secret(), random_secret());
        assert!(a.len() == 64 && a != b && jwt_secret(Some(a), None).is_ok());
    }
}
