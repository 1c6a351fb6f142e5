//! `fafnir`: run the trading platform and (in later subcommands) measure it.
//!
//! `fafnir up` starts every service in this process against a real
//! nats-server and redis-server; `fafnir serve <service>` runs one of them.

use std::net::IpAddr;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "fafnir",
    version,
    about = "A trading backend built to be measured: how fast is it, and is every fill right?"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario: drive the platform with its market agents, measure the
    /// latency of every stage, check every fill, write the run directory.
    /// In the simulated build (the default `cargo fafnir`) the whole platform
    /// is a deterministic madsim world. Exit codes: 0 success, 1 error or
    /// crash, 2 bad command line or scenario file, 3 an SLO violated,
    /// 4 the fill checker found a violation.
    Run {
        /// The scenario file (TOML; see scenarios/SCENARIOS.md).
        file: std::path::PathBuf,
        /// Root seed (default: the scenario's `seed`).
        #[arg(long)]
        seed: Option<u64>,
        /// Load-phase length, e.g. 30s or 500ms (default: the scenario's `duration_ms`).
        #[arg(long, value_parser = parse_duration)]
        duration: Option<std::time::Duration>,
        /// The run directory (default: runs/<scenario>-<seed>).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Real build only: drive a running platform at this gateway
        /// (http://host:port or host:port) instead of starting one in this process.
        #[arg(long, value_parser = parse_gateway)]
        gateway: Option<std::net::SocketAddr>,
        /// Real build only: NATS of the platform (the checker reads its streams).
        #[arg(long, env = "FAFNIR_NATS", default_value = "127.0.0.1:4222")]
        nats: String,
        /// Real build only: Redis of the platform.
        #[arg(long, env = "FAFNIR_REDIS", default_value = "127.0.0.1:6379")]
        redis: String,
        /// Real build only, with --gateway: the running platform's namespace.
        #[arg(long, env = "FAFNIR_NAMESPACE")]
        namespace: Option<String>,
    },
    /// Start every service (gateway, auth, market, orders, engine shards,
    /// portfolio) in this process, each on its own port, against real NATS and Redis.
    Up(Common),
    /// Push a fixed number of orders through the whole simulated platform and
    /// report orders and simulated seconds per wall-clock second. Simulated
    /// build only: `cargo sim run --release -p fafnir-scenarios --bin fafnir -- bench-sim`.
    BenchSim {
        /// Orders in all.
        #[arg(long, default_value_t = 20_000)]
        orders: u64,
        /// Client nodes submitting them (each waits for its order's ack).
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Root seed of the world.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Run every handler in zero simulated time (no service-time model).
        #[arg(long)]
        no_service_time: bool,
    },
    /// Run one service alone.
    Serve {
        /// gateway, auth, market, orders, engine or portfolio
        service: String,
        /// For the engine: which shard of symbols to run (0-based).
        #[arg(long, default_value_t = 0)]
        shard: usize,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// NATS server with JetStream.
    #[arg(long, env = "FAFNIR_NATS", default_value = "127.0.0.1:4222")]
    nats: String,
    /// Redis server.
    #[arg(long, env = "FAFNIR_REDIS", default_value = "127.0.0.1:6379")]
    redis: String,
    /// Prefix of this deployment's streams, subjects and Redis keys.
    #[arg(long, env = "FAFNIR_NAMESPACE", default_value = "fafnir")]
    namespace: String,
    /// Address the services listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Ports from here: gateway, auth, market, orders, portfolio, then each engine shard.
    #[arg(long, default_value_t = 50051)]
    base_port: u16,
    /// HMAC key of the JWTs (every service of a deployment must share it).
    #[arg(long, env = "FAFNIR_JWT_SECRET")]
    jwt_secret: Option<String>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn parse_gateway(text: &str) -> Result<std::net::SocketAddr, String> {
    let bare = text.trim_start_matches("http://").trim_end_matches('/');
    bare.parse().map_err(|_| format!("{text:?} is not http://HOST:PORT with an IP address host"))
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or("a duration needs a unit: ms or s (e.g. 30s)")?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("{n:?} is not a whole number"))?;
    match unit {
        "ms" => Ok(std::time::Duration::from_millis(n)),
        "s" => Ok(std::time::Duration::from_secs(n)),
        "m" => Ok(std::time::Duration::from_secs(n * 60)),
        u => Err(format!("unknown unit {u:?}: use ms, s or m")),
    }
}

/// Loads the scenario and applies the command line's overrides.
fn load(
    file: &std::path::Path,
    seed: Option<u64>,
    duration: Option<std::time::Duration>,
) -> Result<(fafnir_scenarios::scenario::Scenario, String, String), RunError> {
    let text = std::fs::read_to_string(file).map_err(|e| RunError::Usage(format!("{}: {e}", file.display())))?;
    let mut scn = fafnir_scenarios::scenario::Scenario::parse(&text)
        .map_err(|e| RunError::Usage(format!("{}: {e}", file.display())))?;
    if let Some(seed) = seed {
        scn.seed = seed;
    }
    if let Some(d) = duration {
        scn.duration = d;
    }
    let config_hash = fafnir_scenarios::run::hash_hex(format!("{text}\n{:?}", scn.duration).as_bytes());
    let rerun = fafnir_scenarios::run::rerun_command(
        &file.display().to_string(),
        scn.seed,
        duration.map(|d| d.as_millis() as u64),
    );
    Ok((scn, config_hash, rerun))
}

/// Where a real run's platform is (ignored by the simulated build).
#[cfg_attr(madsim, allow(dead_code))]
struct RealTarget {
    gateway: Option<std::net::SocketAddr>,
    nats: String,
    redis: String,
    namespace: Option<String>,
}

/// Why `fafnir` failed, and so its exit code.
enum RunError {
    /// Bad command line or scenario file (exit 2).
    Usage(String),
    /// The run could not be carried out (exit 1).
    Failed(String),
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[cfg(not(madsim))]
mod real_main {
    use super::*;
    use fafnir_platform::config::{PlatformConfig, ServiceAddrs};
    use fafnir_platform::services::{launch, shutdown_on, ServiceKind};
    use std::time::Duration;

    fn config(c: &Common) -> PlatformConfig {
        let mut cfg = PlatformConfig::local_default();
        cfg.nats_addr = c.nats.clone();
        cfg.redis_addr = c.redis.clone();
        cfg.namespace = c.namespace.clone();
        cfg.addrs = ServiceAddrs::local(c.host, c.base_port, cfg.engine_shards.len());
        if let Some(secret) = &c.jwt_secret {
            cfg.jwt_secret = secret.clone();
        }
        cfg
    }

    pub async fn up(c: Common) -> Result<(), String> {
        let (deps, _) = fafnir_scenarios::real::connect(config(&c)).await?;
        let mut services = launch::spawn_all(&deps);
        launch::wait_until_serving(&deps, Duration::from_secs(30)).await?;
        let a = &deps.cfg.addrs;
        println!(
            "fafnir is up (namespace {:?}; NATS {}, Redis {})",
            deps.cfg.namespace, deps.cfg.nats_addr, deps.cfg.redis_addr
        );
        println!("  gateway   {}   <- the public API", a.gateway);
        println!("  auth {}  market {}  orders {}  portfolio {}", a.auth, a.market, a.orders, a.portfolio);
        for (i, e) in a.engines.iter().enumerate() {
            println!("  engine-{i}  {e}  symbols {:?}", deps.cfg.engine_shards[i]);
        }
        println!("Ctrl-C stops it.");
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            if let Some(name) = services.iter().find(|(_, h)| h.is_finished()).map(|(n, _)| n.clone()) {
                let h = services.remove(&name).expect("found above");
                let outcome = h.join().await;
                for (_, h) in services {
                    h.stop(Duration::from_secs(2)).await;
                }
                return Err(format!("{name} stopped: {outcome:?}"));
            }
        }
        for (_, h) in services {
            h.stop(Duration::from_secs(5)).await;
        }
        Ok(())
    }

    pub async fn serve(service: &str, shard: usize, c: Common) -> Result<(), String> {
        let kind = ServiceKind::parse(service).ok_or_else(|| {
            format!("unknown service {service:?}: expected one of gateway, auth, market, orders, engine, portfolio")
        })?;
        let (deps, _) = fafnir_scenarios::real::connect(config(&c)).await?;
        let shutdown = shutdown_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
        launch::serve(kind, shard, deps, shutdown).await.map_err(|e| e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Run { file, seed, duration, out, gateway, nats, redis, namespace } = cli.command {
        let real = RealTarget { gateway, nats, redis, namespace };
        return match run_scenario(&file, seed, duration, out, real) {
            Ok(code) => ExitCode::from(code),
            Err(RunError::Usage(e)) => {
                eprintln!("fafnir: {e}");
                ExitCode::from(2)
            }
            Err(RunError::Failed(e)) => {
                eprintln!("fafnir: {e}");
                ExitCode::from(1)
            }
        };
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fafnir: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(madsim)]
fn run_scenario(
    file: &std::path::Path,
    seed: Option<u64>,
    duration: Option<std::time::Duration>,
    out: Option<std::path::PathBuf>,
    _real: RealTarget,
) -> Result<u8, RunError> {
    let (scn, config_hash, rerun) = load(file, seed, duration)?;
    let out = out.unwrap_or_else(|| std::path::PathBuf::from(format!("runs/{}-{}", scn.name, scn.seed)));
    println!("fafnir run: scenario {:?}, seed {}, simulation", scn.name, scn.seed);
    print_config(&scn, &config_hash);
    let result = fafnir_scenarios::sim_run::run(&scn, scn.seed, config_hash, rerun.clone());
    let r = match result {
        Ok(r) => r,
        Err(e) => return Err(RunError::Failed(format!("{e}\n  replay: {rerun}"))),
    };
    fafnir_scenarios::run::write_run_dir(&out, &r.summary, &r.recorder).map_err(RunError::Failed)?;
    report(&r.summary, &out);
    Ok(r.summary.outcome.exit_code())
}

#[cfg(not(madsim))]
fn run_scenario(
    file: &std::path::Path,
    seed: Option<u64>,
    duration: Option<std::time::Duration>,
    out: Option<std::path::PathBuf>,
    real: RealTarget,
) -> Result<u8, RunError> {
    let (scn, config_hash, rerun) = load(file, seed, duration)?;
    let rerun = rerun.replace("cargo fafnir run", "cargo fafnir-real run");
    let out = out.unwrap_or_else(|| std::path::PathBuf::from(format!("runs/{}-{}-real", scn.name, scn.seed)));
    let where_ = real.gateway.map_or("an in-process platform".to_string(), |g| format!("the platform at {g}"));
    println!("fafnir run: scenario {:?}, seed {}, for real against {where_}", scn.name, scn.seed);
    print_config(&scn, &config_hash);
    let target = fafnir_scenarios::real_run::Target {
        gateway: real.gateway,
        nats: real.nats,
        redis: real.redis,
        namespace: real.namespace,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::Failed(e.to_string()))?;
    let result = rt.block_on(fafnir_scenarios::real_run::run(&scn, scn.seed, target, config_hash, rerun.clone()));
    let r = result.map_err(|e| RunError::Failed(format!("{e}\n  replay: {rerun}")))?;
    fafnir_scenarios::run::write_run_dir(&out, &r.summary, &r.recorder).map_err(RunError::Failed)?;
    report(&r.summary, &out);
    Ok(r.summary.outcome.exit_code())
}

/// Prints the effective configuration, indented.
fn print_config(scn: &fafnir_scenarios::scenario::Scenario, config_hash: &str) {
    println!("  config hash {config_hash}");
    for line in scn.effective().lines() {
        println!("  {line}");
    }
}

/// Prints a run's result, line-oriented.
fn report(s: &fafnir_scenarios::run::Summary, out: &std::path::Path) {
    let c = &s.counts;
    println!(
        "  orders: {} submitted, {} accepted, {} rejected, {} failed, {} timed out; {} cancels; {} fills reported",
        c.submitted, c.accepted, c.rejected, c.failed, c.timed_out, c.cancels, c.fills_reported
    );
    println!("  {:<22} {:>8} {:>10} {:>10} {:>10} {:>10}", "stage (ms)", "count", "p50", "p99", "p99.9", "max");
    for (stage, q) in &s.stages {
        let ms = |ns: u64| ns as f64 / 1e6;
        println!(
            "  {stage:<22} {:>8} {:>10.3} {:>10.3} {:>10.3} {:>10.3}",
            q.count,
            ms(q.p50_ns),
            ms(q.p99_ns),
            ms(q.p999_ns),
            ms(q.max_ns)
        );
    }
    for slo in &s.slos {
        let mark = if slo.passed { "ok  " } else { "FAIL" };
        println!("  SLO {mark} {} (measured {:.3} ms)", slo.slo.text, slo.value_ns as f64 / 1e6);
    }
    for check in &s.checker.checks {
        let mark = if check.passed { "ok  " } else { "FAIL" };
        println!("  check {mark} {} ({} violations)", check.name, check.violations);
        for v in &check.first {
            println!("      {v}");
        }
    }
    println!("  trace hash {}; run directory {}", s.trace_hash, out.display());
    println!("  outcome: {:?} (exit {})", s.outcome, s.outcome.exit_code());
    if s.outcome != fafnir_scenarios::run::Outcome::Success {
        println!("  replay: {}", s.rerun);
    }
}

#[cfg(not(madsim))]
fn run(cli: Cli) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    match cli.command {
        Command::Up(c) => {
            init_logs(c.log_format);
            rt.block_on(real_main::up(c))
        }
        Command::Serve { service, shard, common } => {
            init_logs(common.log_format);
            rt.block_on(real_main::serve(&service, shard, common))
        }
        Command::Run { .. } => unreachable!("handled in main"),
        Command::BenchSim { .. } => {
            Err("bench-sim runs the simulation: cargo sim run --release -p fafnir-scenarios --bin fafnir -- bench-sim"
                .into())
        }
    }
}

#[cfg(madsim)]
fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Up(c) | Command::Serve { common: c, .. } => {
            init_logs(c.log_format);
            Err("`up` and `serve` run against real NATS and Redis: use the real build, `cargo fafnir-real up`".into())
        }
        Command::Run { .. } => unreachable!("handled in main"),
        Command::BenchSim { orders, clients, seed, no_service_time } => {
            println!("bench-sim: seed {seed}, {orders} orders from {clients} client nodes");
            let r = fafnir_scenarios::simbench::run(seed, orders, clients, !no_service_time);
            println!(
                "{} orders in {:.2} s wall, {:.3} s simulated: {:.0} orders per wall second, \
                 {:.2} simulated s per wall s; {} network messages ({:.0} per wall s); trace hash {:016x}",
                r.orders,
                r.wall.as_secs_f64(),
                r.simulated.as_secs_f64(),
                r.orders_per_wall_second(),
                r.simulated_per_wall_second(),
                r.messages,
                r.messages as f64 / r.wall.as_secs_f64(),
                r.trace_hash
            );
            Ok(())
        }
    }
}
