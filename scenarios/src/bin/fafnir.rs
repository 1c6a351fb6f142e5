//! `fafnir`: run the trading platform and (in later subcommands) measure it.
//!
//! `fafnir up` starts every service in this process against a real
//! nats-server and redis-server; `fafnir serve <service>` runs one of them.

use std::net::IpAddr;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use fafnir_platform::config::PlantedCost;

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
    ///
    /// In the simulated build (the default `cargo fafnir`) the whole platform
    /// is a deterministic madsim world. Every run that starts leaves its run
    /// directory (summary.json, histograms, metrics.jsonl — every metric
    /// sampled each second —, replay.toml in simulation, the report) and
    /// prints its replay command, whatever its outcome. With
    /// RUST_LOG set (for example RUST_LOG=info) the services' own logs go to
    /// stderr, stamped with simulated time in simulation.
    #[command(after_long_help = fafnir_scenarios::run::EXIT_CODES)]
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
        /// A calibration file (`fafnir calibrate`) in place of the scenario's
        /// network and service times (simulation; ignored for real).
        #[arg(long)]
        calibration: Option<std::path::PathBuf>,
        #[command(flatten)]
        real: RealTarget,
    },
    /// Measure this machine for the simulation: run the scenario against an
    /// in-process real platform that meters the CPU time of every handler's
    /// work, measure one message's latency through the gRPC stack over
    /// loopback, and write a calibration file (calibration/<scenario>.toml)
    /// that a scenario names with `calibration = "..."` (or `fafnir run
    /// --calibration FILE`) in place of hand-written [service_time] and
    /// [network] numbers. Real build only (`cargo fafnir-real calibrate ...`).
    Calibrate {
        /// The scenario file whose load is measured.
        file: std::path::PathBuf,
        /// Where to write the calibration (default: calibration/<scenario>.toml).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Root seed (default: the scenario's `seed`).
        #[arg(long)]
        seed: Option<u64>,
        /// Load-phase length (default: the scenario's `duration_ms`).
        #[arg(long, value_parser = parse_duration)]
        duration: Option<std::time::Duration>,
        /// How the simulated broker is modelled: `latency` (a publish's
        /// latency less the network's legs, per publish request) or
        /// `per-message` (nats-server's CPU per message published,
        /// delivered and acknowledged, and its wake-up after an idle gap, as
        /// the broker probe measures them; needs nats-server on this
        /// machine). The probe runs, and its figures are recorded, either way.
        #[arg(long, value_enum, default_value_t = fafnir_scenarios::scenario::BrokerModel::Latency)]
        broker_model: fafnir_scenarios::scenario::BrokerModel,
        /// How market data's fan-out is modelled: `folded` (not a unit of
        /// its own: the load generator's CPU for it counts in its requests',
        /// the gateway's in the platform's overhead) or `priced`
        /// (`gateway.market_data` per batch sent to a subscriber,
        /// `loadgen.market_data` per batch a subscription reads, at their CPU
        /// as measured at the calibrated load: right for a calm run, too dear
        /// for many subscribers under load, where the real connections'
        /// cost per update falls; see the README's fidelity section).
        #[arg(long, value_enum, default_value_t = fafnir_scenarios::scenario::FanOutModel::Folded)]
        fan_out: fafnir_scenarios::scenario::FanOutModel,
        /// Write `core_sharing = "fair"`: the simulated cores time-shared
        /// among every call in progress (as the operating system shares the
        /// real ones among threads) instead of queued first come, first
        /// served. Measured here: the order path's p99 under load nearer
        /// real, market data's p99 at a calm load further (the README's
        /// fidelity section).
        #[arg(long)]
        time_shared_cores: bool,
        /// Measure the broker alone (the probe, a few seconds; no run) and
        /// model it per message in the calibration file at --out (default
        /// calibration/<scenario>.toml), keeping all else that file holds.
        #[arg(long)]
        broker_only: bool,
        /// Measure at this many orders a second instead of at the scenario's
        /// own load: its noise traders scaled to the rate, one market-data
        /// subscription for the load generator, as `fafnir capacity` runs a
        /// step. A unit of work costs less CPU on a busy platform than on a
        /// calm one (threads awake, work batched): to predict a loaded
        /// platform, calibrate near its load (for example at half the knee).
        /// The file is then calibration/<scenario>-<rate>.toml by default.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        rate: Option<u64>,
        #[command(flatten)]
        real: RealTarget,
    },
    /// How well the simulation predicts the real platform: run the scenario
    /// with the same seed for real (in-process) and in simulation (the
    /// simulated build's binary, --sim-bin), print per stage p50 / p90 / p99
    /// of both and their ratio (simulated / real), draw both spectra on one
    /// plot, and write fidelity.json. With --knee-rates, also measure the
    /// capacity knee of both (`fafnir capacity` at those rates). Real build
    /// only (`cargo fafnir-real fidelity ...`; build the simulated binary
    /// first: `cargo sim build --release -p fafnir-scenarios --bin fafnir`).
    Fidelity {
        /// The scenario file.
        file: std::path::PathBuf,
        /// A calibration file for the simulated side (default: the scenario's own, if it names one).
        #[arg(long)]
        calibration: Option<std::path::PathBuf>,
        /// Root seed (default: the scenario's `seed`).
        #[arg(long)]
        seed: Option<u64>,
        /// Load-phase length (default: the scenario's `duration_ms`).
        #[arg(long, value_parser = parse_duration)]
        duration: Option<std::time::Duration>,
        /// The directory of both runs and the report (default: runs/fidelity-<scenario>).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// The simulated build's fafnir (default: target/sim/release/fafnir beside this binary's target dir).
        #[arg(long)]
        sim_bin: Option<std::path::PathBuf>,
        /// Also measure the capacity knee of both worlds at these offered rates (orders/s).
        #[arg(long, value_parser = parse_rates)]
        knee_rates: Option<Rates>,
        /// Each capacity step's load, with --knee-rates.
        #[arg(long, value_parser = parse_duration, default_value = "5s")]
        step: std::time::Duration,
        /// Run the real side this many times, back to back, with the same
        /// seed (real/, real-2/, ...): the table then also gives each stage's
        /// lowest and highest real p50 and p99 (the machine against itself)
        /// and whether the simulated ones lie within that spread widened by
        /// 25 %. Ratios stay against the first real run.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
        repeat: u32,
        #[command(flatten)]
        real: RealTarget,
    },
    /// Measure capacity: drive the platform open loop at each offered order
    /// rate in turn (each step its own run: a fresh world in simulation, a
    /// fresh in-process platform for real; with --gateway, one rate on a
    /// platform no run has traded on, which is all the checker can verify), and name
    /// the knee, the highest rate whose p99 submit->ack is within the
    /// scenario's submit_to_ack.p99 SLO with under 0.1 % of requests failed
    /// or timed out and every check passing.
    ///
    /// The scenario's noise traders carry the rate (their count is scaled so
    /// that count x rate_per_s is the step's rate); its other populations stay
    /// as the file has them. Per step it prints offered and achieved orders/s,
    /// submit->ack percentiles, the share of errors, how late the load
    /// generator sent, the share of the machine's CPU it and the in-process
    /// platform used (real), and the verdict; with a knee, one more step at
    /// twice it checks that the overload is refused rather than queued. It
    /// writes each step's run directory (step-<rate>/, overload-<rate>/),
    /// capacity.json (the knee as knee_orders_per_s) and index.html with the
    /// latency-against-throughput plot. Exit 0 when every
    /// step ran (missing the SLO at high rates is what it measures), 4, 6 or 7
    /// when a step's fills were wrong, it did not settle, or it crashed (the
    /// worst); 1 when a step could not run; 2 for a bad command line or file.
    /// With RUST_LOG set the services' own logs go to stderr.
    Capacity {
        /// The scenario file (scenarios/capacity.toml is made for it).
        file: std::path::PathBuf,
        /// Offered order rates, orders per second, ascending.
        #[arg(long, default_value = fafnir_scenarios::capacity::DEFAULT_RATES, value_parser = parse_rates)]
        rates: Rates,
        /// How long each step's load lasts (then its liveness phase and check).
        #[arg(long, value_parser = parse_duration, default_value = "10s")]
        step: std::time::Duration,
        /// Root seed (default: the scenario's `seed`).
        #[arg(long)]
        seed: Option<u64>,
        /// The capacity directory (default: runs/capacity-<scenario>).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Skip the overload step: by default, when there is a knee, one more
        /// step offers twice it (overload-<rate>/), which holds when every
        /// check passes, the accepted orders' p99 submit->ack is within 50 ms
        /// and the excess is refused at the gateway with RESOURCE_EXHAUSTED.
        #[arg(long)]
        no_overload: bool,
        /// A calibration file (`fafnir calibrate`) in place of the scenario's
        /// network and service times (simulation; ignored for real).
        #[arg(long)]
        calibration: Option<std::path::PathBuf>,
        #[command(flatten)]
        real: RealTarget,
    },
    /// Start every service (gateway, auth, market, orders, engine shards,
    /// portfolio) in this process, each on its own port, against real NATS and Redis.
    ///
    /// Each service answers the gRPC health protocol (grpc.health.v1.Health)
    /// on its port from the start: NOT_SERVING while it rebuilds its state
    /// from the streams, SERVING after. "fafnir is up and ready" is printed
    /// once every service says SERVING.
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
        /// Orders placed first, away from the crossing price, that rest in
        /// the books for the whole run (half a symbol): the book depth the
        /// crossing orders are matched at.
        #[arg(long, default_value_t = 0)]
        resting: u64,
        /// Test-only: plant a CPU cost (`book-scan`: the engine lists its
        /// whole book after every input), for ci/cpu-cost to show it catches one.
        #[arg(long, hide = true, value_parser = parse_planted_cost)]
        plant_cost: Option<PlantedCost>,
    },
    /// Draw a run directory's plots and index.html again, or compare two runs.
    /// (`fafnir run` writes the report itself.)
    Report {
        #[command(subcommand)]
        command: ReportCommand,
    },
    /// Guard latency percentiles: rerun the baseline scenario+seed pairs of
    /// ci/baselines.toml in simulation and compare. Simulated build only
    /// (`cargo fafnir ci check`).
    Ci {
        #[command(subcommand)]
        command: CiCommand,
    },
    /// Sweep a scenario over many seeds in simulation (each seed its own
    /// world and, if the scenario has a [nemesis], its own random faults).
    /// Prints one line per failing seed with its rerun command and saves the
    /// failure's run directory with replay.toml (its faults inline, no
    /// nemesis); ends with a table. Exit 0 when every seed passed, 4 when
    /// some failed. Runs in the simulated build (`cargo fafnir chaos ...`).
    ///
    /// With --nats the sweep is spread over `fafnir worker`s instead: the real
    /// build (`cargo fafnir-real chaos ... --nats URL`) publishes it as jobs
    /// of --batch seeds to the namespace's JetStream work queue, waits for
    /// every result and prints the same lines and table; it also writes
    /// outcomes.jsonl (every seed's outcome and trace hash) and sweep.json
    /// (which worker ran which seeds, when, for how long) into --out. Exit 1
    /// when jobs could not be run (the queue gave up on them).
    Chaos {
        /// The scenario file.
        file: std::path::PathBuf,
        /// Seeds to run, A..B (B excluded) or A..=B.
        #[arg(long, value_parser = parse_seeds, default_value = "1..101")]
        seeds: std::ops::Range<u64>,
        /// Runs at a time (each on its own thread).
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        /// Load-phase length of every run (default: the scenario's).
        #[arg(long, value_parser = parse_duration)]
        duration: Option<std::time::Duration>,
        /// Where failing seeds' run directories go (default: runs/chaos-<scenario>).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Only the I-th of N interleaved parts of --seeds (seed s when
        /// (s - A) % N == I), for a sweep split without a queue (each pod of
        /// a Kubernetes Indexed Job runs its part).
        #[arg(long, value_parser = parse_shard)]
        shard: Option<fafnir_scenarios::sweep::Shard>,
        /// Also write every seed's outcome (failure, coverage, p99, trace
        /// hash) to this file, one JSON line per seed in seed order.
        #[arg(long)]
        outcomes: Option<std::path::PathBuf>,
        /// The scenario's path as rerun commands name it (a worker runs a
        /// copy of the coordinator's file).
        #[arg(long, hide = true)]
        as_file: Option<std::path::PathBuf>,
        #[command(flatten)]
        spread: SpreadArgs,
    },
    /// Take jobs from the JetStream work queue and run them: batches of a
    /// sweep's seeds (`fafnir chaos --nats`), run by the simulated build's
    /// binary. Start any number, on any number of machines, against the same
    /// NATS and namespace; they share one durable consumer. A worker that
    /// dies loses nothing: its job goes to another worker when the ack wait
    /// ends. A job whose run fails is retried with a growing delay and
    /// reported as failed after 4 attempts. Stops on SIGTERM or Ctrl-C,
    /// giving its running jobs back. Real build only.
    Worker {
        /// NATS server with JetStream.
        #[arg(long, env = "FAFNIR_NATS", default_value = "127.0.0.1:4222")]
        nats: String,
        /// The queue's namespace (its streams are <NS>_JOBS and <NS>_RESULTS).
        #[arg(long, env = "FAFNIR_NAMESPACE", default_value = "fafnir")]
        namespace: String,
        /// Jobs at a time (each runs one child process: about one core).
        #[arg(long, env = "FAFNIR_WORKER_JOBS", default_value_t = 1)]
        jobs: usize,
        /// The simulated build's binary (default: fafnir-sim beside this
        /// binary, else target/sim/release/fafnir).
        #[arg(long, env = "FAFNIR_SIM_BIN")]
        sim_bin: Option<std::path::PathBuf>,
        /// How long a job may go unanswered before it goes to another worker
        /// (a running job reports progress every third of it).
        #[arg(long, value_parser = parse_duration, default_value = "30s")]
        ack_wait: std::time::Duration,
        /// The name its results carry (default: <host>/<pid>).
        #[arg(long, env = "FAFNIR_WORKER_NAME")]
        name: Option<String>,
    },
    /// Shrink a failing run while it keeps failing the same way: fewer faults
    /// (delta debugging over the schedule), a shorter load, fewer agents and
    /// symbols. Writes minimal.toml into the run directory. Simulated build only.
    Shrink {
        /// A failing run's directory (holds replay.toml), or a scenario file
        /// with its faults inline.
        run: std::path::PathBuf,
        /// The seed (default: the replay file's `seed`).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Ask a service whether it is serving (the gRPC health protocol):
    /// exit 0 when it answers SERVING, 1 otherwise (NOT_SERVING while it
    /// rebuilds its state, or no answer within --timeout). A container's
    /// health check. Real build only.
    Health {
        /// The service's gRPC address, HOST:PORT (default: the gateway on
        /// this host); or an http:// URL (the GraphQL API's
        /// http://HOST:8080/healthz), healthy when it answers 200.
        #[arg(default_value = "127.0.0.1:50051")]
        addr: String,
        /// The service name asked about ("" is the whole server).
        #[arg(long, default_value = "")]
        service: String,
        /// How long to wait for the answer.
        #[arg(long, value_parser = parse_duration, default_value = "2s")]
        timeout: std::time::Duration,
    },
    /// Run one service alone.
    Serve {
        /// gateway, auth, market, orders, engine, portfolio, or graphql (the
        /// GraphQL API, a client of the gateway)
        service: String,
        /// For the engine: which shard of symbols to run (0-based).
        #[arg(long, default_value_t = 0)]
        shard: usize,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand)]
enum ReportCommand {
    /// Render the plots (PNG and SVG) and index.html of a run directory.
    Render {
        /// The run directory (holds summary.json, timeline.json, *.hdr).
        dir: std::path::PathBuf,
    },
    /// Print the percentiles of two runs side by side with the change in
    /// percent (B against A), and draw both spectra on one plot.
    Compare {
        /// The first (reference) run directory.
        a: std::path::PathBuf,
        /// The second run directory.
        b: std::path::PathBuf,
        /// Where to write compare_spectrum.png/.svg (default: B's directory).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand)]
enum CiCommand {
    /// Rerun every baseline run; print a table; exit 1 when a tracked
    /// percentile regressed beyond its tolerance or a run's fill checker failed.
    Check {
        /// The baselines file.
        #[arg(long, default_value = "ci/baselines.toml")]
        baselines: std::path::PathBuf,
    },
    /// Replay the seeds that once found bugs (ci/regressions.toml); exit 1
    /// when any of them fails again.
    Replay {
        /// The regression seeds file.
        #[arg(long, default_value = "ci/regressions.toml")]
        regressions: std::path::PathBuf,
    },
    /// Rerun every baseline run and write its percentiles into the baselines
    /// file (on purpose: after a change that is meant to move them).
    Bless {
        /// The baselines file.
        #[arg(long, default_value = "ci/baselines.toml")]
        baselines: std::path::PathBuf,
    },
}

/// Spreading a sweep over workers (`fafnir chaos --nats`).
#[derive(Args, Clone)]
struct SpreadArgs {
    /// Spread the sweep over the workers on this NATS server (real build).
    #[arg(long)]
    nats: Option<String>,
    /// The queue's namespace (as the workers' --namespace).
    #[arg(long, env = "FAFNIR_NAMESPACE", default_value = "fafnir")]
    namespace: String,
    /// Seeds per job (a chaos.toml seed takes some 80 ms of a core: 20 make
    /// a job of a couple of seconds, whose start-up costs little).
    #[arg(long, default_value_t = 20)]
    batch: u64,
    /// Pick up a sweep that ran before (its id is printed when it starts):
    /// the results it has are read, only the jobs without one run again.
    #[arg(long)]
    run_id: Option<String>,
}

fn parse_shard(text: &str) -> Result<fafnir_scenarios::sweep::Shard, String> {
    fafnir_scenarios::sweep::Shard::parse(text)
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
    /// Address the services listen on (0.0.0.0 in a container).
    #[arg(long, env = "FAFNIR_HOST", default_value = "127.0.0.1")]
    host: IpAddr,
    /// Ports from here: gateway, auth, market, orders, portfolio, then each engine shard.
    #[arg(long, env = "FAFNIR_BASE_PORT", default_value_t = 50051)]
    base_port: u16,
    /// Engine shards: the instruments are dealt over them in turn (ACME to
    /// shard 0, GLOBX to shard 1, ...). Every service of a deployment must
    /// be given the same number.
    #[arg(long, env = "FAFNIR_ENGINE_SHARDS", default_value_t = 1)]
    engine_shards: usize,
    /// How services dial each other: `local` (at --host and their ports, as
    /// `fafnir up` runs them) or `by-name` (each at the host named after it,
    /// auth, market, orders, portfolio, on its port: a Compose stack's
    /// containers, a Kubernetes namespace's Services).
    #[arg(long, env = "FAFNIR_PEERS", default_value = "local", value_parser = parse_peers)]
    peers: fafnir_platform::config::Peers,
    /// Copies JetStream keeps of each stream this deployment creates: 1 on
    /// one nats-server, 3 on a NATS cluster of three (Kubernetes).
    #[arg(long, env = "FAFNIR_STREAM_REPLICAS", default_value_t = 1)]
    stream_replicas: usize,
    /// HMAC key of the JWTs: required, at least 32 bytes, the same for every
    /// service of a deployment (make one with `openssl rand -hex 32`). Prefer
    /// --jwt-secret-file: a command line is visible to every user of the machine.
    #[arg(long, env = "FAFNIR_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// A file holding the JWT secret (a trailing newline is ignored).
    #[arg(long, env = "FAFNIR_JWT_SECRET_FILE")]
    jwt_secret_file: Option<std::path::PathBuf>,
    /// Orders the gateway takes and has not answered yet, at most: beyond
    /// it a submit is refused at once with RESOURCE_EXHAUSTED (overloaded),
    /// rather than queued (default: 64).
    #[arg(long, env = "FAFNIR_MAX_ORDERS_IN_FLIGHT")]
    max_orders_in_flight: Option<usize>,
    /// Where to serve Prometheus metrics (GET /metrics): HOST:PORT, or
    /// "off". Default: the service's port + 1000 (`fafnir up`: --base-port
    /// + 1000, all services on one endpoint), on --host.
    #[arg(long, env = "FAFNIR_METRICS_ADDR")]
    metrics_addr: Option<String>,
    /// Where the GraphQL API listens (HTTP, and WebSocket subscriptions):
    /// HOST:PORT, or "off". Default: --host, port 8080. `fafnir up` serves
    /// it with the rest; `fafnir serve graphql` alone (it dials the gateway
    /// as --peers says).
    #[arg(long, env = "FAFNIR_GRAPHQL_ADDR")]
    graphql_addr: Option<String>,
    /// Log format. Every hop of an order logs its trace_id at debug
    /// (RUST_LOG=fafnir_platform=debug).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Export the platform's spans (every RPC, the engine's matches, the
    /// portfolio's settlements, each joined to its order's trace) to this
    /// OTLP/HTTP collector, e.g. http://127.0.0.1:4318. Needs a fafnir built
    /// with `--features otlp`; off by default.
    #[arg(long, env = "FAFNIR_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// `HOST:PORT` or `http://HOST:PORT`; a host name (a Compose service, a
/// Kubernetes Service) is resolved once, here, to its first address.
fn parse_gateway(text: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let bare = text.trim_start_matches("http://").trim_end_matches('/');
    if let Ok(addr) = bare.parse() {
        return Ok(addr);
    }
    if bare.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err()) {
        return Err(format!("{text:?} is not HOST:PORT (or http://HOST:PORT)"));
    }
    let mut addrs = bare.to_socket_addrs().map_err(|e| format!("{text:?}: cannot resolve its host: {e}"))?;
    addrs.next().ok_or_else(|| format!("{text:?}: its host has no address"))
}

fn parse_peers(text: &str) -> Result<fafnir_platform::config::Peers, String> {
    fafnir_platform::config::Peers::parse(text).ok_or_else(|| format!("{text:?}: expected local or by-name"))
}

fn parse_seeds(text: &str) -> Result<std::ops::Range<u64>, String> {
    let bad = || format!("{text:?} is not a seed range A..B or A..=B (e.g. 1..201)");
    let (a, b, inclusive) = match text.split_once("..=") {
        Some((a, b)) => (a, b, true),
        None => text.split_once("..").map(|(a, b)| (a, b, false)).ok_or_else(bad)?,
    };
    let a: u64 = a.trim().parse().map_err(|_| bad())?;
    let b: u64 = b.trim().parse().map_err(|_| bad())?;
    let end = if inclusive { b + 1 } else { b };
    if end <= a {
        return Err(format!("{text:?} holds no seed"));
    }
    Ok(a..end)
}

/// `--rates`: ascending orders per second.
#[derive(Clone, Debug)]
struct Rates(Vec<u64>);

fn parse_rates(text: &str) -> Result<Rates, String> {
    fafnir_scenarios::capacity::parse_rates(text).map(Rates)
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

/// `bench-sim --plant-cost` (test-only, for ci/cpu-cost).
fn parse_planted_cost(text: &str) -> Result<PlantedCost, String> {
    match text {
        "book-scan" => Ok(PlantedCost::BookScanPerOrder),
        _ => Err(format!("unknown planted cost {text:?}: the one there is is book-scan")),
    }
}

/// Loads the scenario and applies the command line's overrides.
fn load(
    file: &std::path::Path,
    seed: Option<u64>,
    duration: Option<std::time::Duration>,
) -> Result<(fafnir_scenarios::scenario::Scenario, String, String), RunError> {
    fafnir_scenarios::run::load(file, seed, duration).map_err(RunError::Usage)
}

/// Where a real run's platform is (`run` and `capacity`; ignored by the
/// simulated build).
#[derive(Args)]
#[cfg_attr(madsim, allow(dead_code))]
struct RealTarget {
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
    /// Real build only: serve the load generator's metrics (and the
    /// in-process platform's) on HOST:PORT (GET /metrics) while it runs.
    /// In simulation every run writes them to metrics.jsonl instead.
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Real build only, with --gateway and --namespace: split the agents
    /// over N `fafnir worker`s (on --nats, namespace --queue) instead of
    /// driving them from this process. Every share sets its agents up, all
    /// start at one barrier time, and this process merges their histograms
    /// exactly, runs the liveness phase and the checker once, and writes the
    /// run directory with workers.json (which worker ran which share).
    #[arg(long)]
    workers: Option<u32>,
    /// The workers' namespace (their --namespace).
    #[arg(long, default_value = "fafnir")]
    queue: String,
}

/// Why `fafnir` failed, and so its exit code.
enum RunError {
    /// Bad command line or scenario file (exit 2).
    Usage(String),
    /// The run could not be carried out (exit 1).
    Failed(String),
}

fn init_logs(format: LogFormat) {
    init_logs_exporting(format, None).expect("logs without export cannot fail");
}

/// What exports the spans (OTLP), kept until the process ends.
#[cfg(all(feature = "otlp", not(madsim)))]
type SpanExport = Option<fafnir_scenarios::otlp::Exporter>;
#[cfg(not(all(feature = "otlp", not(madsim))))]
type SpanExport = Option<std::convert::Infallible>;

/// The logs on stderr, and, with `otlp` = (endpoint, service name), the
/// spans exported over OTLP.
fn init_logs_exporting(format: LogFormat, otlp: Option<(&str, &str)>) -> Result<SpanExport, String> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.with_filter(filter).boxed(),
        LogFormat::Json => fmt.json().with_filter(filter).boxed(),
    };
    let registry = tracing_subscriber::registry().with(fmt);
    #[cfg(all(feature = "otlp", not(madsim)))]
    if let Some((endpoint, service)) = otlp {
        let (layer, exporter) = fafnir_scenarios::otlp::layer(endpoint, service)?;
        registry.with(layer).init();
        return Ok(Some(exporter));
    }
    if let Some((endpoint, _)) = otlp {
        return Err(format!(
            "--otlp-endpoint {endpoint}: this fafnir was built without OTLP export; build it with --features otlp"
        ));
    }
    registry.init();
    Ok(None)
}

#[cfg(not(madsim))]
mod real_main {
    use super::*;
    use fafnir_platform::config::{PlatformConfig, ServiceAddrs};
    use fafnir_platform::services::{launch, shutdown_on, ServiceKind};
    use std::time::Duration;

    /// Where every service is and how they find each other: all of the
    /// configuration but the JWT secret.
    fn addressing(c: &Common) -> Result<PlatformConfig, String> {
        let mut cfg = PlatformConfig::local_default();
        cfg.nats_addr = c.nats.clone();
        cfg.redis_addr = c.redis.clone();
        cfg.namespace = c.namespace.clone();
        cfg.engine_shards = fafnir_platform::config::deal_shards(&cfg.instruments, c.engine_shards)
            .map_err(|e| format!("--engine-shards: {e}"))?;
        let last_port = usize::from(c.base_port) + 4 + c.engine_shards;
        if last_port > usize::from(u16::MAX) {
            return Err(format!("--base-port {}: the last service's port would be {last_port}", c.base_port));
        }
        cfg.addrs = ServiceAddrs::local(c.host, c.base_port, cfg.engine_shards.len());
        cfg.peers = c.peers.clone();
        cfg.stream_replicas = c.stream_replicas;
        Ok(cfg)
    }

    fn config(c: &Common) -> Result<PlatformConfig, String> {
        let mut cfg = addressing(c)?;
        cfg.jwt_secret = fafnir_scenarios::real::jwt_secret(c.jwt_secret.clone(), c.jwt_secret_file.as_deref())?;
        if let Some(n) = c.max_orders_in_flight {
            cfg.max_orders_in_flight = n;
        }
        Ok(cfg)
    }

    /// Every service of the deployment with its address.
    fn listen_addrs(cfg: &PlatformConfig) -> Vec<(String, std::net::SocketAddr)> {
        let a = &cfg.addrs;
        let mut all = vec![
            ("gateway".to_string(), a.gateway),
            ("auth".to_string(), a.auth),
            ("market".to_string(), a.market),
            ("orders".to_string(), a.orders),
            ("portfolio".to_string(), a.portfolio),
        ];
        all.extend(a.engines.iter().enumerate().map(|(i, e)| (format!("engine-{i}"), *e)));
        all
    }

    /// An address option's value: HOST:PORT, "off" (None), or `default` when not given.
    fn listen_option(
        flag: &str,
        given: Option<&str>,
        default: impl FnOnce() -> Result<std::net::SocketAddr, String>,
    ) -> Result<Option<std::net::SocketAddr>, String> {
        match given {
            Some("off") => Ok(None),
            Some(text) => text
                .parse()
                .map(Some)
                .map_err(|_| format!("{flag} {text:?}: expected HOST:PORT with an IP address host, or off")),
            None => default().map(Some),
        }
    }

    /// Where --metrics-addr says to serve metrics (None: off); `port` + 1000 by default.
    fn metrics_addr(c: &Common, port: u16) -> Result<Option<std::net::SocketAddr>, String> {
        listen_option("--metrics-addr", c.metrics_addr.as_deref(), || {
            Ok(std::net::SocketAddr::new(c.host, port.checked_add(1000).ok_or("--base-port too high")?))
        })
    }

    /// Serves the process's metrics at `addr`, the lag of `durables` read at each scrape.
    async fn serve_metrics(
        addr: Option<std::net::SocketAddr>,
        deps: &fafnir_platform::services::Deps,
        durables: &[&str],
    ) -> Result<(), String> {
        let handle = fafnir_scenarios::observe::install_global();
        let Some(addr) = addr else { return Ok(()) };
        let mut refresh = fafnir_scenarios::observe::Refresh::of(deps.bus.clone(), &deps.cfg.names());
        refresh.consumers.retain(|(_, d)| durables.contains(&d.as_str()));
        fafnir_scenarios::observe::serve(addr, handle, Some(refresh)).await?;
        println!("  metrics   http://{addr}/metrics");
        Ok(())
    }

    pub async fn up(c: Common) -> Result<(), String> {
        // Caught from here on: a stop sent while the services start is kept.
        let stop = futures::FutureExt::shared(Box::pin(stop_signal()));
        let metrics = metrics_addr(&c, c.base_port)?;
        let (deps, _) = fafnir_scenarios::real::connect(config(&c)?).await?;
        fafnir_scenarios::real::check_can_listen(&listen_addrs(&deps.cfg))?;
        let graphql_at = graphql_addr(&c)?;
        if let Some(addr) = graphql_at {
            std::net::TcpListener::bind(addr)
                .map_err(|e| format!("graphql cannot listen on {addr}: {e} (--graphql-addr HOST:PORT, or off)"))?;
        }
        let mut services = launch::spawn_all(&deps);
        launch::wait_until_serving_or_stopped(&deps, &mut services, Duration::from_secs(30)).await?;
        let a = &deps.cfg.addrs;
        println!(
            "fafnir is up and ready (namespace {:?}; NATS {}, Redis {})",
            deps.cfg.namespace, deps.cfg.nats_addr, deps.cfg.redis_addr
        );
        println!(
            "  all {} services have rebuilt their state and say SERVING (grpc.health.v1.Health on each address)",
            services.len()
        );
        println!("  gateway   {}   <- the public API", a.gateway);
        println!("  auth {}  market {}  orders {}  portfolio {}", a.auth, a.market, a.orders, a.portfolio);
        for (i, e) in a.engines.iter().enumerate() {
            println!("  engine-{i}  {e}  symbols {:?}", deps.cfg.engine_shards[i]);
        }
        serve_metrics(metrics, &deps, &fafnir_platform::services::DURABLES).await?;
        // Aborted when dropped: on every way out of `up`.
        let mut graphql = fafnir_platform::services::TaskGroup::default();
        if let Some(addr) = graphql_at {
            let limits = fafnir_platform::services::graphql::Limits::DEFAULT;
            let served = fafnir_platform::services::graphql::serve(
                addr,
                deps.cfg.dial("gateway"),
                limits,
                shutdown_on(stop.clone()),
            );
            graphql.spawn(async move {
                if let Err(e) = served.await {
                    eprintln!("fafnir: {e}");
                }
            });
            println!("  graphql   http://{addr}/graphql  (WebSocket subscriptions on the same path)");
        }
        println!("Ctrl-C (or SIGTERM) stops it.");
        tokio::pin!(stop);
        loop {
            tokio::select! {
                biased;
                () = &mut stop => break,
                _ = fafnir_platform::time::sleep(Duration::from_millis(200)) => {}
            }
            if let Some(name) = services.iter().find(|(_, h)| h.is_finished()).map(|(n, _)| n.clone()) {
                let h = services.remove(&name).expect("found above");
                let outcome = h.join().await;
                for (_, h) in services {
                    h.stop(Duration::from_secs(2)).await;
                }
                let why = match outcome {
                    Ok(()) => "it ended by itself".to_string(),
                    Err(e) => e.to_string(),
                };
                return Err(format!("{name} stopped: {why}"));
            }
        }
        for (_, h) in services {
            h.stop(Duration::from_secs(5)).await;
        }
        drop(graphql);
        Ok(())
    }

    /// Where `fafnir up` and `fafnir serve graphql` serve the GraphQL API (None: off).
    fn graphql_addr(c: &Common) -> Result<Option<std::net::SocketAddr>, String> {
        listen_option("--graphql-addr", c.graphql_addr.as_deref(), || Ok(std::net::SocketAddr::new(c.host, 8080)))
    }

    /// The GraphQL API alone: a client of the gateway (its address from
    /// --base-port and --peers), needing neither NATS, Redis nor the secret.
    async fn serve_graphql(c: Common) -> Result<(), String> {
        let cfg = addressing(&c)?;
        let addr = graphql_addr(&c)?.ok_or("--graphql-addr off: `serve graphql` has nothing to serve")?;
        let gateway = cfg.dial("gateway");
        println!("graphql   http://{addr}/graphql  (queries, mutations; WebSocket subscriptions) -> gateway {gateway}");
        let shutdown = shutdown_on(stop_signal());
        let limits = fafnir_platform::services::graphql::Limits::DEFAULT;
        fafnir_platform::services::graphql::serve(addr, gateway, limits, shutdown).await
    }

    pub async fn serve(service: &str, shard: usize, c: Common) -> Result<(), String> {
        if service == "graphql" {
            return serve_graphql(c).await;
        }
        let kind = ServiceKind::parse(service).ok_or_else(|| {
            format!(
                "unknown service {service:?}: expected one of gateway, auth, market, orders, engine, portfolio, graphql"
            )
        })?;
        let cfg = config(&c)?;
        let name = if kind == ServiceKind::Engine { format!("engine-{shard}") } else { service.to_string() };
        let Some(addr) = listen_addrs(&cfg).into_iter().find(|(n, _)| *n == name) else {
            return Err(format!("engine shard {shard} does not exist: there are {}", cfg.engine_shards.len()));
        };
        let metrics = metrics_addr(&c, addr.1.port())?;
        let (deps, _) = fafnir_scenarios::real::connect(cfg).await?;
        fafnir_scenarios::real::check_can_listen(&[addr])?;
        let durables: &[&str] = match kind {
            ServiceKind::Orders => &[fafnir_platform::services::orders::DURABLE],
            ServiceKind::Portfolio => &[fafnir_platform::services::portfolio::DURABLE],
            _ => &[],
        };
        serve_metrics(metrics, &deps, durables).await?;
        let shutdown = shutdown_on(stop_signal());
        launch::serve(kind, shard, deps, shutdown).await.map_err(|e| e.to_string())
    }

    /// Ctrl-C, or SIGTERM (what `docker stop` and Kubernetes send to stop a
    /// container): a graceful stop. A process that is a container's PID 1
    /// has no default action for SIGTERM, so without this it would be killed
    /// only when the grace period ran out.
    ///
    /// Both signals are caught from this call on, not from the future's
    /// first poll: `fafnir up` calls it before it starts its services, so a
    /// SIGTERM sent as soon as the gateway answers (before the rest is set
    /// up) is not lost. (It was: `docker stop` right after the health check
    /// found the container PID 1 with no handler yet, and killed it after 10 s.)
    /// Call it within a tokio runtime.
    pub(super) fn stop_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
        use tokio::signal::unix::{signal, SignalKind};
        let (interrupt, term) = (signal(SignalKind::interrupt()).ok(), signal(SignalKind::terminate()).ok());
        async move {
            let next = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                biased;
                _ = next(interrupt) => {}
                _ = next(term) => {}
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Run { file, seed, duration, out, calibration, real } = cli.command {
        if std::env::var_os("RUST_LOG").is_some() {
            // The services' own logs, on stderr (simulated time in simulation).
            init_logs(LogFormat::Text);
        }
        return exit_of(run_scenario(&file, seed, duration, out, calibration.as_deref(), real));
    }
    let cli = match cli.command {
        Command::Report { command } => return report_command(command),
        Command::Ci { command } => return ci_command(command),
        Command::Chaos { file, seeds, jobs, duration, out, shard, outcomes, as_file, spread } => {
            let sweep = SweepArgs { seeds, jobs, duration, out, shard, outcomes, as_file, spread };
            return chaos_command(&file, sweep);
        }
        Command::Worker { nats, namespace, jobs, sim_bin, ack_wait, name } => {
            return worker_command(nats, namespace, jobs, sim_bin, ack_wait, name);
        }
        Command::Shrink { run, seed } => return shrink_command(&run, seed),
        Command::Health { addr, service, timeout } => return health_command(&addr, &service, timeout),
        Command::Calibrate {
            file,
            out,
            seed,
            duration,
            broker_model,
            fan_out,
            time_shared_cores,
            broker_only,
            rate,
            real,
        } => {
            let models = if broker_only { None } else { Some((broker_model, fan_out, time_shared_cores)) };
            return exit_of(calibrate_command(&file, out, seed, duration, models, rate, real));
        }
        Command::Fidelity { file, calibration, seed, duration, out, sim_bin, knee_rates, step, repeat, real } => {
            let knee_rates = knee_rates.map(|r| r.0);
            let args = FidelityArgs { calibration, seed, duration, out, sim_bin, knee_rates, step, repeat };
            return exit_of(fidelity_command(&file, args, real));
        }
        Command::Capacity { file, rates, step, seed, out, no_overload, calibration, real } => {
            if std::env::var_os("RUST_LOG").is_some() {
                // The services' own logs, on stderr, as for `run`.
                init_logs(LogFormat::Text);
            }
            let options = CapacityOptions { step, seed, out, overload: !no_overload, calibration };
            return capacity_command(&file, &rates.0, options, real);
        }
        command => Cli { command },
    };
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
    calibration: Option<&std::path::Path>,
    real: RealTarget,
) -> Result<u8, RunError> {
    if real.workers.is_some() {
        return Err(RunError::Usage(
            "--workers spreads a real run's load over workers: use the real build, `cargo fafnir-real run ...`".into(),
        ));
    }
    let (scn, config_hash, rerun) =
        fafnir_scenarios::run::load_calibrated(file, seed, duration, calibration).map_err(RunError::Usage)?;
    let out = out.unwrap_or_else(|| std::path::PathBuf::from(format!("runs/{}-{}", scn.name, scn.seed)));
    println!("fafnir run: scenario {:?}, seed {}, simulation", scn.name, scn.seed);
    print_config(&scn, &config_hash);
    if let Some((options, drawn)) = fafnir_scenarios::sim_run::nemesis_draw(&scn, scn.seed) {
        for line in options.describe().lines() {
            println!("  {line}");
        }
        println!("  nemesis drew {} faults (saved in summary.json and replay.toml)", drawn.faults.len());
    }
    let bar = progress_bar();
    let result = fafnir_scenarios::sim_run::run_with_progress(&scn, scn.seed, config_hash, rerun.clone(), bar.clone());
    if bar.is_some() {
        eprintln!();
    }
    let r = match result {
        Ok(r) => r,
        Err(e) => return Err(RunError::Failed(format!("{e}\n  replay: {rerun}"))),
    };
    // The run directory is written whatever the outcome; failing to write it
    // is an error of its own, said after the run's result.
    let written = fafnir_scenarios::run::write_run_dir(&out, &r);
    if written.is_ok() {
        write_replay(file, &out, scn.seed, &r.summary.faults);
        render(&out);
    }
    report(&r.summary, &out);
    written.map_err(|e| RunError::Failed(format!("the run directory {} was not written: {e}", out.display())))?;
    Ok(r.summary.outcome.exit_code())
}

#[cfg(not(madsim))]
fn run_scenario(
    file: &std::path::Path,
    seed: Option<u64>,
    duration: Option<std::time::Duration>,
    out: Option<std::path::PathBuf>,
    // The real platform's service times are its own.
    _calibration: Option<&std::path::Path>,
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
    if let Some(addr) = real.metrics_addr {
        let handle = fafnir_scenarios::observe::install_global();
        rt.block_on(fafnir_scenarios::observe::serve(addr, handle, None)).map_err(RunError::Failed)?;
        println!("metrics: http://{addr}/metrics");
    }
    let (result, shares) = match real.workers {
        Some(workers) => {
            let text = scenario_text_for_workers(file, duration).map_err(RunError::Usage)?;
            let spread = spread_load(&scn, text, target, (workers, real.queue), None, config_hash, rerun.clone());
            match rt.block_on(spread) {
                Ok((r, shares)) => (Ok(r), Some(shares)),
                Err(e) => (Err(e), None),
            }
        }
        None => {
            let bar = progress_bar();
            let run = fafnir_scenarios::real_run::run(&scn, scn.seed, target, config_hash, rerun.clone(), bar.clone());
            let result = rt.block_on(run);
            if bar.is_some() {
                eprintln!();
            }
            (result, None)
        }
    };
    let r = result.map_err(|e| RunError::Failed(format!("{e}\n  replay: {rerun}")))?;
    let written = fafnir_scenarios::run::write_run_dir(&out, &r).and_then(|()| write_shares(&out, shares.as_deref()));
    if written.is_ok() {
        render(&out);
    }
    report(&r.summary, &out);
    written.map_err(|e| RunError::Failed(format!("the run directory {} was not written: {e}", out.display())))?;
    Ok(r.summary.outcome.exit_code())
}

/// The scenario's text as workers get it: the file with the command line's
/// --duration written into it (the seed travels beside it).
#[cfg(not(madsim))]
fn scenario_text_for_workers(file: &std::path::Path, duration: Option<std::time::Duration>) -> Result<String, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let Some(d) = duration else { return Ok(text) };
    let mut doc: toml::Table = toml::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    doc.insert("duration_ms".into(), toml::Value::Integer(d.as_millis() as i64));
    toml::to_string(&doc).map_err(|e| e.to_string())
}

/// A real run's load over workers (`--workers N`).
#[cfg(not(madsim))]
async fn spread_load(
    scn: &fafnir_scenarios::scenario::Scenario,
    scenario_text: String,
    target: fafnir_scenarios::real_run::Target,
    (workers, queue): (u32, String),
    capacity: Option<fafnir_scenarios::split_load::CapacityStep>,
    config_hash: String,
    rerun: String,
) -> Result<(fafnir_scenarios::run::RunResult, Vec<fafnir_scenarios::distributed::ShareRecord>), String> {
    if target.gateway.is_none() || target.namespace.is_none() {
        return Err("--workers drives a running platform that the workers reach: give --gateway and --namespace".into());
    }
    let meta = fafnir_scenarios::run::RunMeta {
        mode: format!(
            "real (namespace {}), load over {workers} workers",
            target.namespace.as_deref().unwrap_or_default()
        ),
        seed: scn.seed,
        config_hash,
        trace_hash: "-".into(),
        rerun,
        agents: fafnir_scenarios::run::agent_plan(scn, scn.seed).len() as u64,
        nemesis: None,
    };
    let run = fafnir_scenarios::distributed::LoadRun {
        scn,
        scenario_text,
        seed: scn.seed,
        target,
        shares: workers,
        queue,
        meta,
        capacity,
    };
    fafnir_scenarios::distributed::load_run(run).await
}

/// `workers.json`: which worker ran which share of a load over workers.
#[cfg(not(madsim))]
fn write_shares<T: serde::Serialize>(out: &std::path::Path, shares: Option<&[T]>) -> Result<(), String> {
    let Some(shares) = shares else { return Ok(()) };
    let text = serde_json::to_string_pretty(shares).expect("shares serialize");
    std::fs::write(out.join("workers.json"), text + "\n").map_err(|e| format!("workers.json: {e}"))
}

/// Writes `replay.toml`: the scenario with every fault it played inline and
/// no nemesis, so the run replays (and shrinks) without the nemesis.
#[cfg(madsim)]
fn write_replay(file: &std::path::Path, out: &std::path::Path, seed: u64, faults: &[fafnir_sim::faults::Fault]) {
    let written = std::fs::read_to_string(file)
        .map_err(|e| e.to_string())
        .and_then(|text| fafnir_scenarios::chaos::replay_toml(&text, seed, faults))
        .and_then(|replay| std::fs::write(out.join("replay.toml"), replay).map_err(|e| e.to_string()));
    if let Err(e) = written {
        eprintln!("fafnir: replay.toml not written: {e}");
    }
}

/// Draws the run directory's plots and page; a failure to draw is reported
/// but does not change the run's outcome (the data files are written).
fn render(out: &std::path::Path) {
    if let Err(e) = fafnir_reports::render_run(out) {
        eprintln!("fafnir: the report could not be drawn: {e}");
    }
}

/// A progress bar on stderr when it is a terminal and not in CI; otherwise
/// none (the run's output stays line-oriented).
fn progress_bar() -> Option<fafnir_scenarios::progress::ProgressFn> {
    use std::io::{IsTerminal as _, Write as _};
    if !std::io::stderr().is_terminal() || std::env::var_os("CI").is_some() {
        return None;
    }
    Some(std::sync::Arc::new(|p: &fafnir_scenarios::progress::Progress| {
        let mut err = std::io::stderr().lock();
        // Back to the line's start and clear it: the bar redraws in place.
        let _ = write!(err, "\r\x1b[2K{}", fafnir_scenarios::progress::bar_line(p));
        let _ = err.flush();
    }))
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
        "  orders: {} submitted, {} accepted, {} rejected, {} failed, {} timed out; {} fills reported",
        c.submitted, c.accepted, c.rejected, c.failed, c.timed_out, c.fills_reported
    );
    println!(
        "  cancels: {} sent, {} acknowledged, {} refused, {} failed, {} timed out",
        c.cancels, c.cancels_acked, c.cancels_rejected, c.cancels_failed, c.cancels_timed_out
    );
    let lg = &s.load_generator;
    let cpu = match lg.cpu {
        Some(c) => match c.platform_pct {
            Some(p) => {
                format!("; it used {} % of the machine's CPU, the in-process platform {p} %", c.load_generator_pct)
            }
            None => format!("; it used {} % of the machine's CPU", c.load_generator_pct),
        },
        None => String::new(),
    };
    println!(
        "  load generator: sent p50 {:.3} ms, p99 {:.3} ms behind the intended times{cpu}",
        lg.send_lag_p50_ns as f64 / 1e6,
        lg.send_lag_p99_ns as f64 / 1e6
    );
    let mark = if s.error_budget.passed { "ok  " } else { "FAIL" };
    println!("  errors {mark} {} (submits and cancels)", s.error_budget.describe());
    for (what, kind) in &s.errors {
        println!("      {what}: {} (first: {:?})", kind.count, kind.first.join("; "));
    }
    let h = &s.hostile;
    if !h.is_empty() {
        println!(
            "  hostile requests: {} sent, {} refused, {} unanswered, {} neither (see check hostile_refused)",
            h.sent.values().sum::<u64>(),
            h.refused,
            h.unanswered,
            h.violations_total
        );
    }
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
        let mark = match (&s.stopped, slo.passed) {
            // Judged on what was measured before the run stopped: not a verdict.
            (Some(_), _) => "--  ",
            (None, true) => "ok  ",
            (None, false) => "FAIL",
        };
        println!("  SLO {mark} {} (measured {:.3} ms)", slo.slo.text, slo.value_ns as f64 / 1e6);
    }
    for check in &s.checker.checks {
        let mark = if check.passed { "ok  " } else { "FAIL" };
        println!("  check {mark} {} ({} violations)", check.name, check.violations);
        for v in &check.first {
            println!("      {v}");
        }
    }
    if !s.faults.is_empty() {
        println!("  faults covered: {}", s.coverage.describe());
    }
    if let Some(why) = &s.stopped {
        println!("  the run stopped before the checker ran: {why}");
    }
    println!("  trace hash {}; run directory {}", s.trace_hash, out.display());
    println!("  outcome: {:?} (exit {})", s.outcome, s.outcome.exit_code());
    if s.outcome != fafnir_scenarios::run::Outcome::Success {
        println!("  replay: {}", s.rerun);
    }
}

/// Sends the spans still held before the process ends.
#[cfg(not(madsim))]
fn finish_export(export: SpanExport) {
    #[cfg(feature = "otlp")]
    if let Some(exporter) = export {
        exporter.shutdown();
    }
    #[cfg(not(feature = "otlp"))]
    let _ = export;
}

#[cfg(not(madsim))]
fn run(cli: Cli) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    match cli.command {
        Command::Up(c) => {
            let otlp = c.otlp_endpoint.clone();
            let export = init_logs_exporting(c.log_format, otlp.as_deref().map(|e| (e, "fafnir")))?;
            let up = rt.block_on(real_main::up(c));
            drop(rt);
            finish_export(export);
            up
        }
        Command::Serve { service, shard, common } => {
            let otlp = common.otlp_endpoint.clone();
            let name = format!("fafnir-{service}");
            let export = init_logs_exporting(common.log_format, otlp.as_deref().map(|e| (e, name.as_str())))?;
            let served = rt.block_on(real_main::serve(&service, shard, common));
            drop(rt);
            finish_export(export);
            served
        }
        Command::Run { .. }
        | Command::Report { .. }
        | Command::Ci { .. }
        | Command::Chaos { .. }
        | Command::Worker { .. }
        | Command::Capacity { .. }
        | Command::Calibrate { .. }
        | Command::Fidelity { .. }
        | Command::Health { .. }
        | Command::Shrink { .. } => unreachable!("handled in main"),
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

        Command::Run { .. }
        | Command::Report { .. }
        | Command::Ci { .. }
        | Command::Chaos { .. }
        | Command::Worker { .. }
        | Command::Capacity { .. }
        | Command::Calibrate { .. }
        | Command::Fidelity { .. }
        | Command::Health { .. }
        | Command::Shrink { .. } => unreachable!("handled in main"),
        Command::BenchSim { orders, clients, seed, no_service_time, resting, plant_cost } => {
            let spec = fafnir_scenarios::simbench::BenchSpec {
                seed,
                orders,
                clients,
                service_time: !no_service_time,
                resting,
                planted_cost: plant_cost,
            };
            let rest = if resting > 0 { format!(" after {resting} resting ones") } else { String::new() };
            let planted = if plant_cost.is_some() { " (planted cost: book-scan)" } else { "" };
            println!("bench-sim: seed {seed}, {orders} orders{rest} from {clients} client nodes{planted}");
            let r = fafnir_scenarios::simbench::run(&spec);
            let all = r.orders + r.resting;
            let placed = if r.resting > 0 { format!(" (and {} resting)", r.resting) } else { String::new() };
            println!(
                "{} orders{placed} in {:.2} s wall, {:.3} s simulated: {:.0} orders per wall second, \
                 {:.2} simulated s per wall s; {} network messages ({:.1} per order, {:.0} per wall s); \
                 trace hash {:016x}",
                r.orders,
                r.wall.as_secs_f64(),
                r.simulated.as_secs_f64(),
                all as f64 / r.wall.as_secs_f64(),
                r.simulated_per_wall_second(),
                r.messages,
                r.messages as f64 / all as f64,
                r.messages as f64 / r.wall.as_secs_f64(),
                r.trace_hash
            );
            println!("{} orders rest in the books at the end", r.book_orders);
            Ok(())
        }
    }
}

/// `fafnir health`: 0 when the service answers SERVING, 1 when it answers
/// anything else or nothing, 2 in the simulated build.
fn health_command(addr: &str, service: &str, timeout: std::time::Duration) -> ExitCode {
    #[cfg(madsim)]
    {
        let _ = (addr, service, timeout);
        eprintln!("fafnir: `health` asks a real service: use the real build, `cargo fafnir-real health`");
        ExitCode::from(2)
    }
    #[cfg(not(madsim))]
    {
        use fafnir_platform::services::health::{self, ServingStatus};
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
        if addr.starts_with("http://") && addr.trim_start_matches("http://").contains('/') {
            return match rt.block_on(http_health(addr, timeout)) {
                Ok(body) => {
                    println!("{addr}: {}", body.trim());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("fafnir: {addr}: {e}");
                    ExitCode::from(1)
                }
            };
        }
        let addr = match parse_gateway(addr) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("fafnir: {e}");
                return ExitCode::from(2);
            }
        };
        let answer = rt.block_on(async {
            let mut client = health::client(addr, timeout);
            match fafnir_platform::time::timeout(timeout, health::check(&mut client, service)).await {
                Ok(answer) => answer.map_err(|e| e.message().to_string()),
                Err(_) => Err(format!("no answer within {timeout:?}")),
            }
        });
        match answer {
            Ok(ServingStatus::Serving) => {
                println!("{addr}: SERVING");
                ExitCode::SUCCESS
            }
            Ok(status) => {
                eprintln!("fafnir: {addr}: {}", status.as_str_name());
                ExitCode::from(1)
            }
            Err(e) => {
                eprintln!("fafnir: {addr}: no answer: {e}");
                ExitCode::from(1)
            }
        }
    }
}

/// GET `url`: Ok(its body) when it answers 200 within `timeout`.
#[cfg(not(madsim))]
async fn http_health(url: &str, timeout: std::time::Duration) -> Result<String, String> {
    use http_body_util::BodyExt as _;
    let uri: hyper::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let answer = fafnir_platform::time::timeout(timeout, async {
        let response = client.get(uri).await.map_err(|e| format!("no answer: {e}"))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| format!("reading the answer: {e}"))?.to_bytes();
        Ok::<_, String>((status, String::from_utf8_lossy(&body).into_owned()))
    })
    .await
    .map_err(|_| format!("no answer within {timeout:?}"))??;
    match answer {
        (status, body) if status == hyper::StatusCode::OK => Ok(body),
        (status, body) => Err(format!("{status}: {}", body.trim())),
    }
}

/// `fafnir capacity`: one run a rate, then the table, capacity.json and the page.
/// `fafnir capacity`'s options past the scenario, the rates and the real target.
struct CapacityOptions {
    step: std::time::Duration,
    seed: Option<u64>,
    out: Option<std::path::PathBuf>,
    overload: bool,
    calibration: Option<std::path::PathBuf>,
}

fn capacity_command(file: &std::path::Path, rates: &[u64], options: CapacityOptions, real: RealTarget) -> ExitCode {
    use fafnir_scenarios::capacity::{self, Capacity, Step};
    let CapacityOptions { step, seed, out, overload, calibration } = options;
    // The real platform's service times are its own.
    let calibration = if cfg!(madsim) { calibration.as_deref() } else { None };
    let loaded = fafnir_scenarios::run::load_calibrated(file, seed, None, calibration);
    let (scn, config_hash) = match loaded.and_then(|(scn, hash, _)| capacity::check(&scn).map(|()| (scn, hash))) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("fafnir: {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let slo = capacity::knee_slo(&scn).expect("checked").clone();
    let suffix = if cfg!(madsim) { "" } else { "-real" };
    let out = out.unwrap_or_else(|| std::path::PathBuf::from(format!("runs/capacity-{}{suffix}", scn.name)));
    let step_runner = match StepRunner::new(real, file) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fafnir: {e}");
            return ExitCode::from(2);
        }
    };
    let one_platform = step_runner.one_platform();
    if one_platform && rates.len() > 1 {
        eprintln!(
            "fafnir: with --gateway every step would trade on the same platform, and the checker verifies only a \
             platform a run is the first to trade on: give one rate (--rates N) a fresh platform, or leave out \
             --gateway for a fresh in-process platform a step"
        );
        return ExitCode::from(2);
    }
    println!(
        "fafnir capacity: scenario {:?}, seed {}, {}; rates {rates:?} orders/s, {} ms a step; knee at {}",
        scn.name,
        scn.seed,
        step_runner.mode(),
        step.as_millis(),
        slo.text
    );
    let mut calibration = capacity::Calibration::default();
    // One step: run at `rate` (calibrated, rerun once when far off), write
    // its run directory `name`, print its line.
    let mut measure = |rate: u64, name: String| -> Result<Step, ExitCode> {
        let rerun = format!(
            "cargo {} capacity {} --rates {rate} --step {}ms --seed {}",
            if cfg!(madsim) { "fafnir" } else { "fafnir-real" },
            file.display(),
            step.as_millis(),
            scn.seed
        );
        let mut first_try = true;
        let r = loop {
            let scaled = match capacity::scaled(&scn, calibration.decisions_for(rate), step) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("fafnir: {}: {e}", file.display());
                    return Err(ExitCode::from(2));
                }
            };
            metrics::gauge!(fafnir_scenarios::observe::loadgen::TARGET_RATE).set(rate as f64);
            let decisions = calibration.decisions_for(rate);
            let r = match step_runner.run(&scaled, (decisions, step), config_hash.clone(), rerun.clone()) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("fafnir: the step at {rate} orders/s could not run: {e}\n  replay: {rerun}");
                    return Err(ExitCode::from(1));
                }
            };
            let offered = r.summary.counts.submitted * 1_000 / step.as_millis().max(1) as u64;
            // One platform (--gateway): no second run on it, the step stands as run.
            if calibration.learn(&scaled, offered, rate) && first_try && !one_platform {
                println!("  {rate:>6}/s: offered {offered}/s; the noise traders scaled by what that taught, once more");
                first_try = false;
                continue;
            }
            break r;
        };
        let dir = out.join(&name);
        if let Err(e) = fafnir_scenarios::run::write_run_dir(&dir, &r) {
            eprintln!("fafnir: {}: {e}", dir.display());
            return Err(ExitCode::from(1));
        }
        render(&dir);
        let s = Step::of(rate, &r, &slo, name);
        let ack = s.stages.get("submit_to_ack").cloned().unwrap_or_default();
        println!(
            "  {rate:>6}/s: {} agents, offered {}/s, achieved {}/s, submit->ack p50 {:.3} ms p99 {:.3} ms, \
             errors {}, {:?}{}",
            s.agents,
            s.offered_per_s,
            s.achieved_per_s,
            ack.p50_ns as f64 / 1e6,
            ack.p99_ns as f64 / 1e6,
            fafnir_scenarios::scenario::percent(s.error_ppm),
            s.outcome,
            s.why_not.as_ref().map(|w| format!(" ({w})")).unwrap_or_default()
        );
        Ok(s)
    };
    let mut steps = Vec::new();
    for &rate in rates {
        match measure(rate, format!("step-{rate}")) {
            Ok(s) => steps.push(s),
            Err(code) => return code,
        }
    }
    let overload = match capacity::knee(&steps).filter(|_| overload && !one_platform) {
        Some(knee) => match measure(2 * knee, format!("overload-{}", 2 * knee)) {
            Ok(s) => Some(capacity::Overload::of(s)),
            Err(code) => return code,
        },
        None => None,
    };
    let mut cap = Capacity::new(&scn, &slo, step_runner.mode(), step, steps);
    cap.overload = overload;
    println!();
    print!("{}", cap.table());
    let json = serde_json::to_string_pretty(&cap).expect("capacity serializes");
    if let Err(e) = std::fs::write(out.join("capacity.json"), json + "\n") {
        eprintln!("fafnir: {}: {e}", out.join("capacity.json").display());
        return ExitCode::from(1);
    }
    match fafnir_reports::render_capacity(&out) {
        Ok(r) => println!("capacity directory {}; report {}", out.display(), r.index.display()),
        Err(e) => eprintln!("fafnir: the capacity report could not be drawn: {e}"),
    }
    ExitCode::from(cap.exit_code())
}

/// Runs capacity steps: in the simulation, each a fresh world.
#[cfg(madsim)]
struct StepRunner;

#[cfg(madsim)]
impl StepRunner {
    fn new(real: RealTarget, _file: &std::path::Path) -> Result<StepRunner, String> {
        if real.gateway.is_some() || real.namespace.is_some() || real.workers.is_some() {
            return Err(
                "--gateway, --namespace and --workers drive a real platform: use the real build, `cargo fafnir-real \
                 capacity`"
                    .into(),
            );
        }
        Ok(StepRunner)
    }

    fn one_platform(&self) -> bool {
        false
    }

    fn mode(&self) -> String {
        "simulation".into()
    }

    fn run(
        &self,
        scn: &fafnir_scenarios::scenario::Scenario,
        _scaled: (u64, std::time::Duration),
        config_hash: String,
        rerun: String,
    ) -> Result<fafnir_scenarios::run::RunResult, String> {
        fafnir_scenarios::sim_run::run(scn, scn.seed, config_hash, rerun)
    }
}

/// Runs capacity steps against real NATS and Redis: a fresh in-process
/// platform each step, or the running one at the gateway.
#[cfg(not(madsim))]
struct StepRunner {
    real: RealTarget,
    rt: tokio::runtime::Runtime,
    /// With --workers: the scenario's text, which the workers scale as each step does.
    text: Option<String>,
}

#[cfg(not(madsim))]
impl StepRunner {
    fn new(real: RealTarget, file: &std::path::Path) -> Result<StepRunner, String> {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
        let text = match real.workers {
            Some(_) => Some(scenario_text_for_workers(file, None)?),
            None => None,
        };
        if let Some(addr) = real.metrics_addr {
            let handle = fafnir_scenarios::observe::install_global();
            rt.block_on(fafnir_scenarios::observe::serve(addr, handle, None))?;
            println!("metrics: http://{addr}/metrics");
        }
        Ok(StepRunner { real, rt, text })
    }

    /// Whether every step would trade on one platform (--gateway): the
    /// checker verifies only a platform a run is the first to trade on.
    fn one_platform(&self) -> bool {
        self.real.gateway.is_some()
    }

    fn mode(&self) -> String {
        let over = self.real.workers.map(|n| format!(", the load over {n} workers")).unwrap_or_default();
        match self.real.gateway {
            Some(g) => format!("real, the platform at {g}{over}"),
            None => "real, an in-process platform".into(),
        }
    }

    fn run(
        &self,
        scn: &fafnir_scenarios::scenario::Scenario,
        (decisions_per_s, step): (u64, std::time::Duration),
        config_hash: String,
        rerun: String,
    ) -> Result<fafnir_scenarios::run::RunResult, String> {
        let target = fafnir_scenarios::real_run::Target {
            gateway: self.real.gateway,
            nats: self.real.nats.clone(),
            redis: self.real.redis.clone(),
            namespace: self.real.namespace.clone(),
        };
        if let (Some(workers), Some(text)) = (self.real.workers, &self.text) {
            let capacity =
                fafnir_scenarios::split_load::CapacityStep { decisions_per_s, step_ms: step.as_millis() as u64 };
            let queue = self.real.queue.clone();
            let spread = spread_load(scn, text.clone(), target, (workers, queue), Some(capacity), config_hash, rerun);
            return self.rt.block_on(spread).map(|(r, _)| r);
        }
        self.rt.block_on(fafnir_scenarios::real_run::run(scn, scn.seed, target, config_hash, rerun, None))
    }
}

fn report_command(command: ReportCommand) -> ExitCode {
    let result = match command {
        ReportCommand::Render { dir } => fafnir_reports::render_run(&dir).map(|r| {
            println!("report: {}", dir.join("index.html").display());
            let _ = r;
        }),
        ReportCommand::Compare { a, b, out } => {
            let out = out.unwrap_or_else(|| b.clone());
            fafnir_reports::compare(&a, &b, &out).map(|table| {
                print!("{table}");
                println!("spectra of both: {}", out.join("compare_spectrum.png").display());
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fafnir: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(not(madsim))]
fn ci_command(_: CiCommand) -> ExitCode {
    eprintln!("fafnir: `ci` runs the baselines in simulation: use the simulated build, `cargo fafnir ci check`");
    ExitCode::from(2)
}

#[cfg(madsim)]
fn ci_command(command: CiCommand) -> ExitCode {
    use fafnir_scenarios::baselines::{self, Baselines};
    let (path, bless) = match command {
        CiCommand::Check { baselines } => (baselines, false),
        CiCommand::Bless { baselines } => (baselines, true),
        CiCommand::Replay { regressions } => return ci_replay(&regressions),
    };
    let parsed = std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|text| Baselines::parse(&text))
        .map_err(|e| format!("{}: {e}", path.display()));
    let b = match parsed {
        Ok(b) => b,
        Err(e) => {
            eprintln!("fafnir: {e}");
            return ExitCode::from(2);
        }
    };
    let root = repo_root(&path);
    let verb = if bless { "bless" } else { "check" };
    println!("fafnir ci {verb}: {} runs from {}", b.runs.len(), path.display());
    let measured = baselines::run_all(&b, root, |run, s| {
        println!(
            "  {:<28} {} orders, checker {}, trace {}",
            run.label(),
            s.counts.submitted,
            if s.checker.passed { "ok" } else { "FAILED" },
            s.trace_hash
        );
    });
    let measured = match measured {
        Ok(m) => m,
        Err(e) => {
            eprintln!("fafnir: {e}");
            return ExitCode::from(1);
        }
    };
    if bless {
        let blessed = b.blessed(&measured);
        if let Err(e) = std::fs::write(&path, blessed.to_toml()) {
            eprintln!("fafnir: write {}: {e}", path.display());
            return ExitCode::from(1);
        }
        let tracked: usize = blessed.runs.iter().map(|r| r.percentiles.len()).sum();
        println!("blessed {tracked} percentiles into {}", path.display());
        let failed: Vec<String> = measured.iter().filter(|s| !s.checker.passed).map(|s| s.scenario.clone()).collect();
        if !failed.is_empty() {
            eprintln!("fafnir: the fill checker failed in {}: blessed, but fix that", failed.join(", "));
            return ExitCode::from(1);
        }
        return ExitCode::SUCCESS;
    }
    let c = baselines::check(&b, &measured);
    print!("{}", c.table());
    for n in &c.notes {
        println!("  note: {n}");
    }
    if c.passed() {
        println!("ci check: passed ({} percentiles within tolerance)", c.rows.len());
        ExitCode::SUCCESS
    } else {
        for f in &c.failures {
            println!("  FAIL {f}");
        }
        println!("ci check: FAILED ({} problems); if the change is intended: cargo fafnir ci bless", c.failures.len());
        ExitCode::from(1)
    }
}

/// `fafnir chaos`'s options beside the scenario file.
struct SweepArgs {
    seeds: std::ops::Range<u64>,
    jobs: usize,
    duration: Option<std::time::Duration>,
    out: Option<std::path::PathBuf>,
    shard: Option<fafnir_scenarios::sweep::Shard>,
    outcomes: Option<std::path::PathBuf>,
    as_file: Option<std::path::PathBuf>,
    spread: SpreadArgs,
}

/// `fafnir chaos --nats`: the coordinator of a sweep spread over workers.
#[cfg(not(madsim))]
fn chaos_command(file: &std::path::Path, a: SweepArgs) -> ExitCode {
    let Some(nats) = a.spread.nats.clone() else {
        eprintln!(
            "fafnir: `chaos` sweeps seeds of the simulation: use the simulated build, `cargo fafnir chaos ...`, or \
             spread the sweep over workers with --nats URL"
        );
        return ExitCode::from(2);
    };
    if a.jobs != 2 {
        eprintln!("fafnir chaos: --jobs is ignored with --nats: each worker runs its own --jobs at a time");
    }
    if a.shard.is_some() || a.outcomes.is_some() || a.as_file.is_some() {
        eprintln!(
            "fafnir: --shard and --outcomes are the simulated build's (a distributed sweep writes outcomes.jsonl)"
        );
        return ExitCode::from(2);
    }
    let (scn, _, _) = match load(file, None, a.duration) {
        Ok(l) => l,
        Err(RunError::Usage(e) | RunError::Failed(e)) => {
            eprintln!("fafnir: {e}");
            return ExitCode::from(2);
        }
    };
    let out = a.out.unwrap_or_else(|| std::path::PathBuf::from(format!("runs/chaos-{}", scn.name)));
    let sweep = fafnir_scenarios::distributed::Sweep {
        file: file.to_path_buf(),
        seeds: a.seeds,
        duration: a.duration,
        out,
        nats,
        namespace: a.spread.namespace,
        batch: a.spread.batch,
        run_id: a.spread.run_id,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fafnir: a tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let ran = rt.block_on(async {
        tokio::select! {
            biased;
            r = fafnir_scenarios::distributed::sweep(sweep, &scn.name, scn.nemesis.is_some()) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    match ran {
        Some(Ok(code)) => ExitCode::from(code),
        Some(Err(e)) => {
            eprintln!("fafnir: {e}");
            ExitCode::from(1)
        }
        None => {
            eprintln!("fafnir chaos: interrupted; the workers go on with the jobs, --run-id picks up their results");
            ExitCode::from(130)
        }
    }
}

#[cfg(madsim)]
fn worker_command(
    _: String,
    _: String,
    _: usize,
    _: Option<std::path::PathBuf>,
    _: std::time::Duration,
    _: Option<String>,
) -> ExitCode {
    eprintln!("fafnir: `worker` takes jobs from NATS: use the real build, `cargo fafnir-real worker ...`");
    ExitCode::from(2)
}

/// `fafnir worker`: runs jobs until SIGTERM or Ctrl-C.
#[cfg(not(madsim))]
fn worker_command(
    nats: String,
    namespace: String,
    jobs: usize,
    sim_bin: Option<std::path::PathBuf>,
    ack_wait: std::time::Duration,
    name: Option<String>,
) -> ExitCode {
    let sim_bin = match sim_bin.map(Ok).unwrap_or_else(fafnir_scenarios::worker::default_sim_bin) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("fafnir: {e}");
            return ExitCode::from(2);
        }
    };
    if jobs == 0 {
        eprintln!("fafnir: --jobs must be at least 1");
        return ExitCode::from(2);
    }
    let opts = fafnir_scenarios::worker::Options {
        nats,
        namespace,
        jobs,
        sim_bin,
        ack_wait,
        name: name.unwrap_or_else(fafnir_scenarios::worker::default_name),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fafnir: a tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(async { fafnir_scenarios::worker::run(opts, real_main::stop_signal()).await }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fafnir: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(not(madsim))]
fn shrink_command(_: &std::path::Path, _: Option<u64>) -> ExitCode {
    eprintln!("fafnir: `shrink` reruns the simulation: use the simulated build, `cargo fafnir shrink ...`");
    ExitCode::from(2)
}

#[cfg(madsim)]
fn chaos_command(file: &std::path::Path, a: SweepArgs) -> ExitCode {
    use fafnir_scenarios::chaos;
    if a.spread.nats.is_some() {
        eprintln!(
            "fafnir: a sweep spread over workers is coordinated by the real build (it speaks NATS): \
             `cargo fafnir-real chaos ... --nats URL`"
        );
        return ExitCode::from(2);
    }
    let SweepArgs { seeds, jobs, duration, out, shard, outcomes, as_file, .. } = a;
    let (scn, _, _) = match load(file, None, duration) {
        Ok(l) => l,
        Err(RunError::Usage(e) | RunError::Failed(e)) => {
            eprintln!("fafnir: {e}");
            return ExitCode::from(2);
        }
    };
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let out = out.unwrap_or_else(|| std::path::PathBuf::from(format!("runs/chaos-{}", scn.name)));
    let list: Vec<u64> = match shard {
        Some(shard) => shard.seeds(seeds.clone()),
        None => seeds.clone().collect(),
    };
    let total = list.len() as u64;
    let part = shard.map(|s| format!(", shard {}/{}", s.index, s.of)).unwrap_or_default();
    println!(
        "fafnir chaos: scenario {:?}, seeds {}..{}{part} ({total} runs, {jobs} at a time), nemesis {}",
        scn.name,
        seeds.start,
        seeds.end,
        if scn.nemesis.is_some() { "on" } else { "off (only the scenario's own faults)" }
    );
    let shown = as_file.as_deref().unwrap_or(file);
    let rerun_of = |seed: u64| fafnir_scenarios::sweep::rerun_command(shown, seed, duration);
    let done = std::sync::atomic::AtomicU64::new(0);
    let save = |r: &chaos::SeedRun| -> Result<std::path::PathBuf, String> {
        let dir = out.join(format!("seed-{}", r.seed));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if let Some(result) = &r.result {
            fafnir_scenarios::run::write_run_dir(&dir, result)?;
            render(&dir);
        }
        let replay = chaos::replay_toml(&text, r.seed, &r.faults)?;
        std::fs::write(dir.join("replay.toml"), replay).map_err(|e| e.to_string())?;
        let failure = serde_json::to_string_pretty(&r.failure).expect("failure serializes");
        std::fs::write(dir.join("failure.json"), failure + "\n").map_err(|e| e.to_string())?;
        Ok(dir)
    };
    let each = |r: &chaos::SeedRun| {
        let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let Some(f) = &r.failure else { return };
        let dir = match save(r) {
            Ok(dir) => dir.display().to_string(),
            Err(e) => format!("(not saved: {e})"),
        };
        println!("{}", fafnir_scenarios::sweep::failure_lines(n, total, r.seed, f, &rerun_of(r.seed), &dir));
    };
    let runs = chaos::sweep(&scn, &list, jobs, &rerun_of, &each);
    if let Some(path) = &outcomes {
        if let Err(e) = std::fs::write(path, fafnir_scenarios::sweep::outcomes_jsonl(&runs)) {
            eprintln!("fafnir: {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    let (table, failures) = fafnir_scenarios::sweep::table(&runs, &out);
    println!("{table}");
    ExitCode::from(if failures == 0 { 0 } else { 4 })
}

#[cfg(madsim)]
fn shrink_command(run: &std::path::Path, seed: Option<u64>) -> ExitCode {
    let (file, dir) = if run.is_dir() {
        (run.join("replay.toml"), run.to_path_buf())
    } else {
        (run.to_path_buf(), run.parent().unwrap_or(std::path::Path::new(".")).to_path_buf())
    };
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("fafnir: {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let seed = match seed.or_else(|| fafnir_scenarios::scenario::Scenario::parse(&text).ok().map(|s| s.seed)) {
        Some(s) => s,
        None => {
            eprintln!("fafnir: {}: not a valid scenario file", file.display());
            return ExitCode::from(2);
        }
    };
    println!("fafnir shrink: {} at seed {seed}", file.display());
    let mut log = |line: &str| println!("  {line}");
    match fafnir_scenarios::chaos::shrink(&text, seed, None, &mut log) {
        Ok(s) => {
            let path = dir.join("minimal.toml");
            if let Err(e) = std::fs::write(&path, &s.text) {
                eprintln!("fafnir: write {}: {e}", path.display());
                return ExitCode::from(1);
            }
            println!("shrunk: {s}");
            println!("still fails: {} ({})", s.failure.kind, s.failure.detail);
            println!("minimal scenario: {}; rerun: cargo fafnir run {} --seed {seed}", path.display(), path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fafnir: {e}");
            ExitCode::from(1)
        }
    }
}

/// The repository root of a file in ci/: scenario paths in ci/ files are relative to it.
#[cfg(madsim)]
fn repo_root(ci_file: &std::path::Path) -> &std::path::Path {
    ci_file
        .parent()
        .and_then(|ci| ci.parent())
        .filter(|r| !r.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
}

#[cfg(madsim)]
fn ci_replay(path: &std::path::Path) -> ExitCode {
    use fafnir_scenarios::regressions::Regressions;
    let parsed = std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|text| Regressions::parse(&text))
        .map_err(|e| format!("{}: {e}", path.display()));
    let r = match parsed {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fafnir: {e}");
            return ExitCode::from(2);
        }
    };
    let root = repo_root(path);
    println!("fafnir ci replay: {} regression seeds from {}", r.seeds.len(), path.display());
    let mut failed = 0;
    for s in &r.seeds {
        let duration = s.duration_ms.map(std::time::Duration::from_millis);
        let (scn, _, rerun) = match fafnir_scenarios::run::load(&root.join(&s.scenario), Some(s.seed), duration) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("fafnir: {e}");
                return ExitCode::from(2);
            }
        };
        let run = fafnir_scenarios::chaos::run_seed(&scn, s.seed, &rerun);
        match &run.failure {
            None => println!("  ok    {} seed {}: {}", s.scenario, s.seed, s.bug),
            Some(f) => {
                failed += 1;
                println!("  FAIL  {} seed {}: {} ({}); was: {}", s.scenario, s.seed, f.kind, f.detail, s.bug);
                println!("        rerun: {rerun}");
            }
        }
    }
    if failed == 0 {
        println!("ci replay: all {} regression seeds pass", r.seeds.len());
        ExitCode::SUCCESS
    } else {
        println!("ci replay: {failed} regression seeds fail again");
        ExitCode::from(1)
    }
}

fn exit_of(r: Result<u8, RunError>) -> ExitCode {
    match r {
        Ok(code) => ExitCode::from(code),
        Err(RunError::Usage(e)) => {
            eprintln!("fafnir: {e}");
            ExitCode::from(2)
        }
        Err(RunError::Failed(e)) => {
            eprintln!("fafnir: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(madsim)]
fn calibrate_command(
    _: &std::path::Path,
    _: Option<std::path::PathBuf>,
    _: Option<u64>,
    _: Option<std::time::Duration>,
    _: Option<(fafnir_scenarios::scenario::BrokerModel, fafnir_scenarios::scenario::FanOutModel, bool)>,
    _: Option<u64>,
    _: RealTarget,
) -> Result<u8, RunError> {
    Err(RunError::Usage(
        "calibrate measures the real platform: use the real build, `cargo fafnir-real calibrate ...`".into(),
    ))
}

/// `fafnir calibrate`: measure, print, write the calibration file.
#[cfg(not(madsim))]
fn calibrate_command(
    file: &std::path::Path,
    out: Option<std::path::PathBuf>,
    seed: Option<u64>,
    duration: Option<std::time::Duration>,
    models: Option<(fafnir_scenarios::scenario::BrokerModel, fafnir_scenarios::scenario::FanOutModel, bool)>,
    rate: Option<u64>,
    real: RealTarget,
) -> Result<u8, RunError> {
    if real.gateway.is_some() {
        return Err(RunError::Usage("calibrate meters the CPU of an in-process platform: leave out --gateway".into()));
    }
    let (scn, _, _) = load(file, seed, duration)?;
    let name = rate.map_or_else(|| scn.name.clone(), |rate| format!("{}-{rate}", scn.name));
    let out = out.unwrap_or_else(|| std::path::PathBuf::from(format!("calibration/{name}.toml")));
    let Some((broker_model, fan_out, time_shared_cores)) = models else {
        return calibrate_broker_only(&out, &real.nats);
    };
    if rate.is_some() {
        fafnir_scenarios::capacity::check(&scn).map_err(|e| RunError::Usage(format!("--rate: {e}")))?;
    }
    println!("fafnir calibrate: scenario {name:?}, seed {}, for real on an in-process platform", scn.seed);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::Failed(e.to_string()))?;
    let calibrate = |scn: &fafnir_scenarios::scenario::Scenario| {
        let (nats, redis) = (real.nats.clone(), real.redis.clone());
        rt.block_on(fafnir_scenarios::calibrate::calibrate(scn, scn.seed, nats, redis, broker_model, fan_out))
            .map_err(RunError::Failed)
    };
    let mut m = match rate {
        None => calibrate(&scn)?,
        Some(rate) => {
            // As `fafnir capacity` runs a step: the noise traders scaled to
            // the rate, once more if what a decision sends was not as assumed.
            let mut learnt = fafnir_scenarios::capacity::Calibration::default();
            let mut first_try = true;
            loop {
                let mut scaled = fafnir_scenarios::capacity::scaled(&scn, learnt.decisions_for(rate), scn.duration)
                    .map_err(|e| RunError::Usage(format!("--rate: {e}")))?;
                scaled.name = name.clone();
                let m = calibrate(&scaled)?;
                let offered = m.run.summary.counts.submitted * 1_000 / scn.duration.as_millis().max(1) as u64;
                if learnt.learn(&scaled, offered, rate) && first_try {
                    println!("  offered {offered} orders/s for {rate}: the noise traders scaled by what that taught, once more");
                    first_try = false;
                    continue;
                }
                println!("  measured at {offered} orders/s");
                break m;
            }
        }
    };
    if time_shared_cores {
        m.calibration.core_sharing = Some(fafnir_sim::service_time::CoreSharing::Fair);
    }
    print!("{}", fafnir_scenarios::calibrate::table(&m));
    if !m.run.summary.checker.passed {
        return Err(RunError::Failed(format!(
            "the measured run failed its checks ({:?}): a calibration of a broken run is not written",
            m.run.summary.outcome
        )));
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| RunError::Failed(format!("{}: {e}", dir.display())))?;
    }
    std::fs::write(&out, fafnir_scenarios::calibrate::to_toml(&m.calibration))
        .map_err(|e| RunError::Failed(format!("{}: {e}", out.display())))?;
    println!("calibration written: {} (name it from a scenario: calibration = \"{}\")", out.display(), out.display());
    Ok(0)
}

/// `fafnir calibrate --broker-only`: the broker probe, into the calibration at `out`.
#[cfg(not(madsim))]
fn calibrate_broker_only(out: &std::path::Path, nats: &str) -> Result<u8, RunError> {
    use fafnir_scenarios::scenario::Calibration;
    let path = out.to_str().ok_or_else(|| RunError::Usage(format!("{}: not a UTF-8 path", out.display())))?;
    let mut calibration = Calibration::load(path).map_err(RunError::Usage)?;
    println!("fafnir calibrate: the broker alone (nats-server at {nats}), into {}", out.display());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::Failed(e.to_string()))?;
    let probed = rt.block_on(fafnir_scenarios::broker_probe::probe(nats)).map_err(RunError::Failed)?;
    let Some(b) = probed else {
        return Err(RunError::Failed(format!(
            "no process of this machine listens on {nats}'s port: nats-server's CPU per message cannot be measured"
        )));
    };
    print!("{}", fafnir_scenarios::calibrate::broker_table(&b));
    fafnir_scenarios::calibrate::with_broker(&mut calibration, &b);
    std::fs::write(out, fafnir_scenarios::calibrate::to_toml(&calibration))
        .map_err(|e| RunError::Failed(format!("{}: {e}", out.display())))?;
    println!("calibration written: {} (its broker modelled per message; all else kept)", out.display());
    Ok(0)
}

/// The options of `fafnir fidelity` past the scenario and the real target.
#[cfg_attr(madsim, allow(dead_code))]
struct FidelityArgs {
    calibration: Option<std::path::PathBuf>,
    seed: Option<u64>,
    duration: Option<std::time::Duration>,
    out: Option<std::path::PathBuf>,
    sim_bin: Option<std::path::PathBuf>,
    knee_rates: Option<Vec<u64>>,
    step: std::time::Duration,
    repeat: u32,
}

#[cfg(madsim)]
fn fidelity_command(_: &std::path::Path, _: FidelityArgs, _: RealTarget) -> Result<u8, RunError> {
    Err(RunError::Usage(
        "fidelity runs both worlds from the real build: `cargo fafnir-real fidelity ...` (with the simulated binary \
         built: cargo sim build --release -p fafnir-scenarios --bin fafnir)"
            .into(),
    ))
}

/// `fafnir fidelity`: the scenario in both worlds, compared stage by stage.
#[cfg(not(madsim))]
fn fidelity_command(file: &std::path::Path, a: FidelityArgs, real: RealTarget) -> Result<u8, RunError> {
    use fafnir_scenarios::fidelity;
    if real.gateway.is_some() {
        return Err(RunError::Usage("fidelity runs its own in-process platform: leave out --gateway".into()));
    }
    let (scn, config_hash, _) = load(file, a.seed, a.duration)?;
    let sim_bin = match a.sim_bin {
        Some(p) => p,
        None => fidelity::default_sim_bin().map_err(RunError::Usage)?,
    };
    let out = a.out.unwrap_or_else(|| std::path::PathBuf::from(format!("runs/fidelity-{}", scn.name)));
    let calibration = a.calibration.clone().or_else(|| scn.calibration.clone().map(Into::into));
    println!(
        "fafnir fidelity: scenario {:?}, seed {}, {} ms of load; simulation {}",
        scn.name,
        scn.seed,
        scn.duration.as_millis(),
        calibration
            .as_ref()
            .map_or("with the scenario's own service times".to_string(), |c| format!("calibrated by {}", c.display()))
    );
    let (real_dir, sim_dir) = (out.join("real"), out.join("sim"));
    // The simulated side first: a missing or stale binary fails fast.
    let mut args: Vec<String> = vec!["run".into(), file.display().to_string(), "--seed".into(), scn.seed.to_string()];
    args.extend([
        "--duration".into(),
        format!("{}ms", scn.duration.as_millis()),
        "--out".into(),
        sim_dir.display().to_string(),
    ]);
    if let Some(c) = &a.calibration {
        args.extend(["--calibration".into(), c.display().to_string()]);
    }
    println!("  simulated run: {} {}", sim_bin.display(), args.join(" "));
    fidelity::run_quietly(&sim_bin, &args).map_err(RunError::Failed)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::Failed(e.to_string()))?;
    // The first real run is real/, the others real-2/, real-3/, ...
    let real_dirs: Vec<std::path::PathBuf> =
        (1..=a.repeat).map(|i| if i == 1 { real_dir.clone() } else { out.join(format!("real-{i}")) }).collect();
    for (i, dir) in real_dirs.iter().enumerate() {
        println!("  real run {} of {} (in-process platform) ...", i + 1, a.repeat);
        let target = fafnir_scenarios::real_run::Target {
            gateway: None,
            nats: real.nats.clone(),
            redis: real.redis.clone(),
            namespace: None,
        };
        let r = rt
            .block_on(fafnir_scenarios::real_run::run(&scn, scn.seed, target, config_hash.clone(), "-".into(), None))
            .map_err(RunError::Failed)?;
        fafnir_scenarios::run::write_run_dir(dir, &r)
            .map_err(|e| RunError::Failed(format!("{}: {e}", dir.display())))?;
    }
    let knees = match &a.knee_rates {
        None => None,
        Some(rates) => {
            let k = fidelity::knees(file, &sim_bin, rates, a.step, scn.seed, a.calibration.as_deref(), &out)
                .map_err(RunError::Failed)?;
            Some(k)
        }
    };
    let mut report = fidelity::compare(&sim_dir, &real_dir, knees, calibration.map(|c| c.display().to_string()))
        .map_err(RunError::Failed)?;
    report.real_spread = fidelity::spread(&report.stages, &real_dirs).map_err(RunError::Failed)?;
    print!("{}", report.table());
    std::fs::write(out.join("fidelity.json"), serde_json::to_string_pretty(&report).expect("serializes"))
        .map_err(|e| RunError::Failed(format!("{}: {e}", out.display())))?;
    match fafnir_reports::compare(&sim_dir, &real_dir, &out) {
        Ok(_) => println!("  both spectra: {}", out.join("compare_spectrum.png").display()),
        Err(e) => eprintln!("fafnir: the overlay plot was not drawn: {e}"),
    }
    println!("  fidelity.json, sim/ and real/ in {}", out.display());
    Ok(0)
}
