//! `fafnir worker`: takes jobs from a namespace's work queue ([`crate::queue`]),
//! runs them, publishes their results. Any number of workers, on any number
//! of machines, share the queue's one durable consumer.
//!
//! A batch of seeds runs in the simulated build's binary (`--sim-bin`, a
//! child process that dies with the worker): the seeds' runs are the same
//! deterministic worlds a local `chaos --jobs` runs, so they give the same
//! outcomes and trace hashes. While a job runs the worker tells the queue
//! so every third of the ack wait; a worker that dies stops telling it, and
//! the job goes to another worker when the ack wait ends. A job whose run
//! fails (the child crashed, the binary is missing; not a failing seed,
//! which is a finding) is given back with a growing delay, and reported as
//! failed at its [`MAX_DELIVER`]th attempt instead of being retried forever.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::queue::{Job, JobOutcome, JobResult, Queue, SeedBatch, SeedDone, Taken, Work, MAX_DELIVER};

/// How a worker runs.
#[derive(Clone, Debug)]
pub struct Options {
    pub nats: String,
    pub namespace: String,
    /// Jobs at a time (each one child process, one core).
    pub jobs: usize,
    pub sim_bin: PathBuf,
    pub ack_wait: Duration,
    /// How it signs its results.
    pub name: String,
}

/// The delay before a failed job is delivered again, by attempt, in 30ths
/// of the ack wait (1 s, 5 s and 15 s with the default 30 s).
const RETRY_AFTER: [u32; 3] = [1, 5, 15];

/// Runs jobs until `stop` resolves; a job running then is given back to the
/// queue at once (and its child killed).
pub async fn run(mut opts: Options, stop: impl std::future::Future<Output = ()>) -> Result<(), String> {
    // Its jobs run in directories of their own: a relative path would not be found there.
    if let Ok(path) = std::fs::canonicalize(&opts.sim_bin) {
        opts.sim_bin = path;
    }
    if !opts.sim_bin.is_file() {
        return Err(format!(
            "the simulated build's binary is not at {}: build it with `cargo sim build --release -p fafnir-scenarios \
             --bin fafnir` and name it with --sim-bin (or FAFNIR_SIM_BIN)",
            opts.sim_bin.display()
        ));
    }
    let queue = Queue::connect(&opts.nats, &opts.namespace).await?;
    let consumer = queue.consumer(opts.ack_wait).await?;
    println!(
        "fafnir worker {}: taking jobs from {}_JOBS at {}, {} at a time (sim binary {}, ack wait {:?})",
        opts.name,
        opts.namespace,
        opts.nats,
        opts.jobs,
        opts.sim_bin.display(),
        opts.ack_wait
    );
    // A worker is a real process only: its stop signal never runs in a simulated world.
    #[allow(clippy::disallowed_methods)]
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut slots = Vec::new();
    slots.push(tokio::spawn(report_given_up(queue.clone(), opts.name.clone(), rx.clone())));
    for slot in 0..opts.jobs.max(1) {
        let (queue, consumer, opts, rx) = (queue.clone(), consumer.clone(), opts.clone(), rx.clone());
        slots.push(tokio::spawn(async move { take_jobs(slot, &queue, &consumer, &opts, rx).await }));
    }
    stop.await;
    println!("fafnir worker {}: stopping (a running job goes back to the queue)", opts.name);
    let _ = tx.send(true);
    for s in slots {
        let _ = s.await;
    }
    Ok(())
}

/// Turns each job the queue gives up on (delivered [`MAX_DELIVER`] times,
/// every worker that took it died) into a stored failed result, so that a
/// coordinator sees it whenever it reads the results; every worker does
/// this, and the results stream keeps one of each (same message id).
async fn report_given_up(queue: Queue, name: String, mut stop: tokio::sync::watch::Receiver<bool>) {
    use futures::StreamExt as _;
    let Ok(given_up) = queue.given_up().await else { return };
    let mut given_up = Box::pin(given_up);
    loop {
        let seq = tokio::select! {
            biased;
            _ = stop.changed() => return,
            seq = given_up.next() => match seq {
                Some(seq) => seq,
                None => return,
            },
        };
        let Some(job) = queue.job_at(seq).await else { continue };
        let error = format!(
            "delivered {MAX_DELIVER} times and never finished: each worker that took it died or stopped answering"
        );
        let result = JobResult {
            run_id: job.run_id.clone(),
            job: job.job,
            worker: name.clone(),
            attempt: MAX_DELIVER,
            started_unix_ms: crate::queue::unix_ms(),
            elapsed_ms: 0,
            outcome: JobOutcome::Failed { error, attempts: MAX_DELIVER },
        };
        if queue.publish_result(&result).await.is_ok() {
            queue.drop_job(seq).await;
        }
    }
}

async fn take_jobs(
    slot: usize,
    queue: &Queue,
    consumer: &async_nats::jetstream::consumer::PullConsumer,
    opts: &Options,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        let taken = tokio::select! {
            biased;
            _ = stop.changed() => return,
            t = queue.take(consumer, Duration::from_secs(5)) => t,
        };
        let taken = match taken {
            Ok(Some(t)) => t,
            Ok(None) => continue,
            Err(e) => {
                eprintln!("fafnir worker {}: {e}; trying again in 1 s", opts.name);
                fafnir_platform::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let job = match &taken.job {
            Ok(job) => job.clone(),
            Err(e) => {
                eprintln!("fafnir worker {}: {e}: rejected", opts.name);
                let _ = taken.reject().await;
                continue;
            }
        };
        let started = crate::queue::unix_ms();
        let t0 = fafnir_platform::time::Instant::now();
        let what = describe(&job);
        println!("fafnir worker {}: job {}/{} ({what}), attempt {}", opts.name, job.run_id, job.job, taken.attempt);
        let done = tokio::select! {
            biased;
            _ = stop.changed() => {
                // Killed with the select's other branch (the child with it).
                let _ = taken.retry_after(Duration::ZERO).await;
                return;
            }
            d = run_job(slot, queue, &taken, &job, opts) => d,
        };
        let elapsed_ms = t0.elapsed().as_millis() as u64;
        let outcome = match done {
            Ok(outcome) => outcome,
            Err(e) if taken.attempt < MAX_DELIVER => {
                let delay = opts.ack_wait / 30 * RETRY_AFTER[(taken.attempt as usize - 1).min(RETRY_AFTER.len() - 1)];
                eprintln!(
                    "fafnir worker {}: job {}/{} failed (attempt {} of {MAX_DELIVER}): {e}; given back, again in {delay:?}",
                    opts.name, job.run_id, job.job, taken.attempt
                );
                let _ = taken.retry_after(delay).await;
                continue;
            }
            Err(e) => {
                eprintln!(
                    "fafnir worker {}: job {}/{} failed {MAX_DELIVER} times, reported and not retried: {e}",
                    opts.name, job.run_id, job.job
                );
                JobOutcome::Failed { error: e, attempts: taken.attempt }
            }
        };
        let result = JobResult {
            run_id: job.run_id.clone(),
            job: job.job,
            worker: opts.name.clone(),
            attempt: taken.attempt,
            started_unix_ms: started,
            elapsed_ms,
            outcome,
        };
        let failed = matches!(result.outcome, JobOutcome::Failed { .. });
        match queue.publish_result(&result).await {
            Ok(()) => {
                let _ = taken.done().await;
                if !failed {
                    println!(
                        "fafnir worker {}: job {}/{} done in {:.1} s",
                        opts.name,
                        job.run_id,
                        job.job,
                        elapsed_ms as f64 / 1e3
                    );
                }
            }
            // Not acknowledged: the job runs again (elsewhere, after the ack wait).
            Err(e) => eprintln!("fafnir worker {}: {e}; the job will run again", opts.name),
        }
    }
}

fn describe(job: &Job) -> String {
    match &job.work {
        Work::Seeds(b) => format!("{} seeds {}..{}", b.file, b.seeds.start, b.seeds.end),
        Work::Load(l) => format!("load share {} of {} against {}", l.share, l.shares, l.gateway),
    }
}

/// Runs a job, telling the queue it is in progress meanwhile.
async fn run_job(slot: usize, queue: &Queue, taken: &Taken, job: &Job, opts: &Options) -> Result<JobOutcome, String> {
    let work = async {
        match &job.work {
            Work::Seeds(batch) => run_seeds(slot, queue, taken.seq, job, batch, opts).await.map(JobOutcome::Seeds),
            // A share's barrier passes once: it is never retried.
            Work::Load(load) => Ok(match run_load(queue, taken, job, load, opts).await {
                Ok(result) => JobOutcome::Load(Box::new(result)),
                Err(error) => JobOutcome::Failed { error, attempts: taken.attempt },
            }),
        }
    };
    let beat = async {
        let mut every = fafnir_platform::time::interval((opts.ack_wait / 3).max(Duration::from_millis(100)));
        every.tick().await;
        loop {
            every.tick().await;
            if let Err(e) = taken.in_progress().await {
                eprintln!("fafnir worker {}: {e}", opts.name);
            }
        }
    };
    tokio::select! {
        biased;
        r = work => r,
        _ = beat => unreachable!("the heartbeat never ends"),
    }
}

/// How long a load share's agents listen for the word that the platform
/// has settled, beyond its quiesce time.
const SETTLE_WAIT_SLACK: Duration = Duration::from_secs(120);

/// Runs a share of a real run's load: sets up its agents, meets the
/// barrier, drives them, says so, and listens until the coordinator says
/// the platform has settled.
async fn run_load(
    queue: &Queue,
    taken: &Taken,
    job: &Job,
    load: &crate::split_load::LoadJob,
    opts: &Options,
) -> Result<crate::split_load::ShareResult, String> {
    use futures::StreamExt as _;
    let scn = crate::scenario::Scenario::parse(&load.scenario_text).map_err(|e| format!("the scenario: {e}"))?;
    let mut settled = queue.await_settled(&job.run_id).await?;
    let started = crate::queue::unix_ms();
    let loaded = crate::split_load::run_share(load).await?;
    let said = JobResult {
        run_id: job.run_id.clone(),
        job: job.job,
        worker: opts.name.clone(),
        attempt: taken.attempt,
        started_unix_ms: started,
        elapsed_ms: crate::queue::unix_ms().saturating_sub(started),
        outcome: JobOutcome::Loaded(loaded.figures().clone()),
    };
    queue.publish_result(&said).await?;
    let wait = scn.quiesce + SETTLE_WAIT_SLACK;
    match fafnir_platform::time::timeout(wait, settled.next()).await {
        Ok(Some(_)) => Ok(loaded.result()),
        Ok(None) => Err("the coordinator's word was lost (the subscription ended)".into()),
        Err(_) => Err(format!("no word from the coordinator within {wait:?} of the load's end")),
    }
}

/// Kills a child process when dropped before it ended (the worker's job
/// was cancelled); a thread of its own waits for it meanwhile.
struct KillOnDrop {
    pid: libc::pid_t,
    ended: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if !self.ended.load(std::sync::atomic::Ordering::SeqCst) {
            // SAFETY: kill(2) on the child's pid. The pid is free for reuse only
            // once the waiting thread has reaped the child, in the instant
            // before that thread sets `ended`.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
            }
        }
    }
}

/// Waits for `child` to end without polling (a job's end is seen at once).
async fn wait_for(mut child: std::process::Child) -> Result<std::process::ExitStatus, String> {
    let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _kill = KillOnDrop { pid: child.id() as libc::pid_t, ended: ended.clone() };
    let waiter = tokio::task::spawn_blocking(move || {
        let status = child.wait();
        ended.store(true, std::sync::atomic::Ordering::SeqCst);
        status
    });
    waiter.await.map_err(|e| format!("waiting for the run: {e}"))?.map_err(|e| format!("waiting for the run: {e}"))
}

async fn run_seeds(
    slot: usize,
    queue: &Queue,
    seq: u64,
    job: &Job,
    batch: &SeedBatch,
    opts: &Options,
) -> Result<Vec<SeedDone>, String> {
    let dir = std::env::temp_dir().join(format!("fafnir-worker-{}-{slot}-{seq}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _cleanup = RemoveOnDrop(dir.clone());
    for (path, text) in &batch.files {
        let rel = Path::new(path);
        if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(format!("the job names a file outside its directory: {path:?}"));
        }
        let at = dir.join(rel);
        if let Some(parent) = at.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&at, text).map_err(|e| format!("{}: {e}", at.display()))?;
    }
    let mut args: Vec<String> = vec![
        "chaos".into(),
        crate::queue::SCENARIO_FILE.into(),
        "--seeds".into(),
        format!("{}..{}", batch.seeds.start, batch.seeds.end),
        "--jobs".into(),
        "1".into(),
        "--out".into(),
        "out".into(),
        "--outcomes".into(),
        "outcomes.jsonl".into(),
        "--as-file".into(),
        batch.file.clone(),
    ];
    if let Some(ms) = batch.duration_ms {
        args.extend(["--duration".into(), format!("{ms}ms")]);
    }
    let log = std::fs::File::create(dir.join("log")).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut cmd = Command::new(&opts.sim_bin);
    cmd.args(&args)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    die_with_parent(&mut cmd);
    let child = cmd.spawn().map_err(|e| format!("{}: {e}", opts.sim_bin.display()))?;
    let status = wait_for(child).await?;
    // 0: every seed passed; 4: some failed (findings). Anything else: the run itself failed.
    if !matches!(status.code(), Some(0 | 4)) {
        let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(8).collect();
        let said = match tail.is_empty() {
            true => "(it printed nothing)".to_string(),
            false => tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
        };
        return Err(format!("{} {} ended with {status}: {said}", opts.sim_bin.display(), args.join(" ")));
    }
    let text = std::fs::read_to_string(dir.join("outcomes.jsonl")).map_err(|e| format!("outcomes.jsonl: {e}"))?;
    let outcomes = crate::sweep::parse_outcomes(&text)?;
    let want: Vec<u64> = batch.seeds.clone().collect();
    let got: Vec<u64> = outcomes.iter().map(|o| o.seed).collect();
    if got != want {
        return Err(format!("the run reported seeds {got:?}, not {want:?}"));
    }
    let mut done = Vec::with_capacity(outcomes.len());
    for outcome in outcomes {
        let mut files = std::collections::BTreeMap::new();
        if outcome.failure.is_some() {
            let seed_dir = dir.join("out").join(format!("seed-{}", outcome.seed));
            for (rel, path) in files_under(&seed_dir) {
                let data = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                let name = format!("runs/{}/seed-{}/{rel}", job.run_id, outcome.seed);
                queue.put_file(&name, &data).await?;
                files.insert(rel, name);
            }
        }
        done.push(SeedDone { outcome, files });
    }
    Ok(done)
}

/// Every file under `dir`, by its path relative to it (sorted).
fn files_under(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                todo.push(path);
            } else if let Ok(rel) = path.strip_prefix(dir) {
                out.push((rel.to_string_lossy().into_owned(), path));
            }
        }
    }
    out.sort();
    out
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The child gets SIGKILL when the worker dies, however it dies: a killed
/// worker leaves no orphan running its job.
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// This worker's default name: `<host>/<pid>`.
pub fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}/{}", std::process::id())
}

/// The simulated build's binary a worker runs seeds with by default:
/// `fafnir-sim` beside this binary (the worker image), else the workspace's
/// `target/sim/release/fafnir`.
pub fn default_sim_bin() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("where this binary is: {e}"))?;
    if let Some(beside) = exe.parent().map(|d| d.join("fafnir-sim")).filter(|p| p.is_file()) {
        return Ok(beside);
    }
    crate::fidelity::default_sim_bin()
}
