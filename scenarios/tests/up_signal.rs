//! `fafnir up` (the real binary, as a process, on the machine's NATS and
//! Redis) stops gracefully on a SIGTERM sent the moment its gateway first
//! answers a health check, before the rest of it is set up. `docker stop`
//! does exactly that in `ci/test-deploy`; the signal used to be caught only
//! once `up` had finished starting, so a process killed then died of it
//! (as a container's PID 1, it ignored it and was killed 10 s later).
#![cfg(not(madsim))]
// A test of processes reads the wall clock and sleeps its own thread.
#![allow(clippy::disallowed_methods)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "up-signal-test-secret-0123456789abcdef";

#[test]
fn a_sigterm_as_soon_as_the_gateway_answers_stops_it_gracefully() {
    let fafnir = env!("CARGO_BIN_EXE_fafnir");
    for attempt in 0..3 {
        let base = loop {
            let ports = fafnir_scenarios::real::free_ports(6);
            if ports.windows(2).all(|w| w[1] == w[0] + 1) {
                break ports[0];
            }
        };
        let namespace = format!("upsig{}n{attempt}", std::process::id());
        let mut up = Command::new(fafnir)
            .args(["up", "--namespace", &namespace, "--jwt-secret", SECRET, "--graphql-addr", "off"])
            .args(["--base-port", &base.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("fafnir up starts");
        let gateway = format!("127.0.0.1:{base}");
        let started = Instant::now();
        while !Command::new(fafnir).args(["health", &gateway]).output().is_ok_and(|o| o.status.success()) {
            assert!(started.elapsed() < Duration::from_secs(30), "the gateway never answered");
            assert!(up.try_wait().unwrap().is_none(), "fafnir up exited before its gateway answered");
            std::thread::sleep(Duration::from_millis(10));
        }
        let killed = Command::new("kill").args(["-TERM", &up.id().to_string()]).status().unwrap();
        assert!(killed.success());
        let stopping = Instant::now();
        let status = loop {
            if let Some(status) = up.try_wait().unwrap() {
                break status;
            }
            if stopping.elapsed() > Duration::from_secs(10) {
                let _ = up.kill();
                panic!("fafnir up did not stop within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(status.success(), "attempt {attempt}: fafnir up ended {status:?} on SIGTERM, not by stopping");
    }
}
