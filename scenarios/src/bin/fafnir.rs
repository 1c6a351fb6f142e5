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
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fafnir: {e}");
            ExitCode::from(2)
        }
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
            Err("`up` and `serve` run against real NATS and Redis; build without `cargo sim`".into())
        }
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
