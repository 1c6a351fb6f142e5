//! Coordinators of work spread over `fafnir worker`s through the queue
//! ([`crate::queue`]): `fafnir chaos --nats` publishes a sweep as batches of
//! seeds, waits for every result and prints the table a local sweep prints.
//!
//! A sweep is known by its run id: a coordinator given `--run-id` of a sweep
//! that already ran (or still runs) reads the results already stored,
//! submits the batches that have none and are not queued (those that could
//! not run before run again), and waits for the rest.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt as _;
use serde::Serialize;

use crate::queue::{Job, JobOutcome, JobResult, Queue, SeedBatch, Work};
use crate::sweep::SeedOutcome;

/// A sweep to spread over workers.
pub struct Sweep {
    /// The scenario file, as the user named it.
    pub file: PathBuf,
    pub seeds: std::ops::Range<u64>,
    pub duration: Option<Duration>,
    pub out: PathBuf,
    pub nats: String,
    pub namespace: String,
    /// Seeds per job.
    pub batch: u64,
    /// Resume this sweep (default: a new one).
    pub run_id: Option<String>,
}

/// Which worker ran which job, when and for how long (sweep.json).
#[derive(Clone, Debug, Serialize)]
pub struct JobRecord {
    pub job: u32,
    pub seeds: std::ops::Range<u64>,
    pub worker: String,
    pub attempt: i64,
    pub started_unix_ms: u64,
    pub elapsed_ms: u64,
    /// Why it could not run (the queue gave up on it).
    pub error: Option<String>,
}

/// sweep.json: what a distributed sweep ran where.
#[derive(Serialize)]
struct SweepJson<'a> {
    run_id: &'a str,
    scenario: String,
    seeds: std::ops::Range<u64>,
    batch: u64,
    nats: &'a str,
    namespace: &'a str,
    wall_ms: u64,
    jobs: &'a [JobRecord],
    workers: BTreeMap<String, WorkerTotals>,
}

#[derive(Default, Serialize)]
struct WorkerTotals {
    jobs: u64,
    seeds: u64,
    busy_ms: u64,
}

/// The files a batch carries: the scenario and the calibration file it
/// names (relative to where the coordinator runs, as it is read there).
fn batch_files(file: &Path) -> Result<BTreeMap<String, String>, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut files = BTreeMap::from([(crate::queue::SCENARIO_FILE.to_string(), text.clone())]);
    let doc: toml::Table = toml::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    if let Some(cal) = doc.get("calibration").and_then(|c| c.as_str()) {
        if Path::new(cal).is_absolute() || cal.contains("..") {
            return Err(format!(
                "{}: calibration {cal:?}: a distributed sweep sends the calibration file with the scenario; name it \
                 by a path relative to where fafnir runs, without '..'",
                file.display()
            ));
        }
        let text = std::fs::read_to_string(cal).map_err(|e| format!("calibration {cal:?}: {e}"))?;
        files.insert(cal.to_string(), text);
    }
    Ok(files)
}

/// Runs a sweep over the workers; returns the exit code a local sweep
/// would (0 every seed passed, 4 some failed), or 1 when jobs could not be
/// run (their seeds are named).
pub async fn sweep(s: Sweep, scenario_name: &str, nemesis: bool) -> Result<u8, String> {
    let files = batch_files(&s.file)?;
    let queue = Queue::connect(&s.nats, &s.namespace).await?;
    let run_id = match &s.run_id {
        Some(id) => {
            crate::queue::check_run_id(id)?;
            id.clone()
        }
        None => crate::queue::new_run_id(scenario_name),
    };
    let batch = s.batch.max(1);
    let mut jobs = Vec::new();
    let mut start = s.seeds.start;
    while start < s.seeds.end {
        let end = (start + batch).min(s.seeds.end);
        jobs.push(start..end);
        start = end;
    }
    let total = s.seeds.end - s.seeds.start;
    println!(
        "fafnir chaos: scenario {scenario_name:?}, seeds {}..{} ({total} runs, in {} jobs of up to {batch} seeds over \
         the workers of namespace {} at {}), nemesis {}",
        s.seeds.start,
        s.seeds.end,
        jobs.len(),
        s.namespace,
        s.nats,
        if nemesis { "on" } else { "off (only the scenario's own faults)" }
    );
    println!("sweep {run_id} (a coordinator started again with --run-id {run_id} picks up its results)");
    let t0 = fafnir_platform::time::Instant::now();
    let mut results = Box::pin(queue.results(&run_id).await?);
    let mut state = State::new(&s, &run_id, jobs.len());

    // Results already stored (a coordinator started again): taken before
    // any job is submitted, so that only the jobs without one are.
    // A job that could not run then runs again now.
    let stored = queue.stored_results(&run_id).await?;
    for _ in 0..stored {
        match results.next().await {
            Some(Ok(r)) if matches!(r.outcome, JobOutcome::Failed { .. }) => {}
            Some(Ok(r)) => state.take(&queue, r, &jobs).await?,
            Some(Err(e)) => eprintln!("fafnir chaos: {e}"),
            None => break,
        }
    }
    let queued = queue.queued_jobs(&run_id).await?;
    if s.run_id.is_some() {
        println!("picked up {} finished jobs of {}; {} still queued", state.finished.len(), jobs.len(), queued.len());
    }
    let todo: Vec<Job> = jobs
        .iter()
        .enumerate()
        .filter(|(i, _)| !state.finished.contains(&(*i as u32)) && !queued.contains(&(*i as u32)))
        .map(|(i, seeds)| Job {
            run_id: run_id.clone(),
            job: i as u32,
            jobs: jobs.len() as u32,
            work: Work::Seeds(SeedBatch {
                file: s.file.display().to_string(),
                files: files.clone(),
                seeds: seeds.clone(),
                duration_ms: s.duration.map(|d| d.as_millis() as u64),
            }),
        })
        .collect();
    // A job the queue gives up on comes back as a failed result too: the
    // workers store one when JetStream announces it.
    queue.submit(&todo).await?;

    let mut report = fafnir_platform::time::interval(Duration::from_secs(10));
    report.tick().await;
    while state.finished.len() < jobs.len() {
        tokio::select! {
            biased;
            r = results.next() => match r {
                Some(Ok(r)) => state.take(&queue, r, &jobs).await?,
                Some(Err(e)) => eprintln!("fafnir chaos: {e}"),
                None => return Err("the results stream ended".into()),
            },
            _ = report.tick() => {
                eprintln!(
                    "chaos: {}/{total} seeds done, {}/{} jobs, {} workers so far, {:.0} s",
                    state.seeds_done, state.finished.len(), jobs.len(), state.workers().len(),
                    t0.elapsed().as_secs_f64()
                );
            }
        }
    }
    let wall_ms = t0.elapsed().as_millis() as u64;
    state.finish(&s, &run_id, scenario_name, wall_ms)
}

/// What the coordinator has learnt so far.
struct State<'a> {
    s: &'a Sweep,
    run_id: &'a str,
    jobs: usize,
    finished: BTreeSet<u32>,
    runs: Vec<SeedOutcome>,
    records: Vec<JobRecord>,
    seeds_done: u64,
}

impl<'a> State<'a> {
    fn new(s: &'a Sweep, run_id: &'a str, jobs: usize) -> State<'a> {
        State { s, run_id, jobs, finished: BTreeSet::new(), runs: Vec::new(), records: Vec::new(), seeds_done: 0 }
    }

    fn workers(&self) -> BTreeSet<&str> {
        self.records.iter().map(|r| r.worker.as_str()).collect()
    }

    /// Takes one result (a second result of a job, from a job that ran
    /// twice, is the same and is ignored).
    async fn take(&mut self, queue: &Queue, r: JobResult, jobs: &[std::ops::Range<u64>]) -> Result<(), String> {
        let Some(seeds) = jobs.get(r.job as usize) else {
            return Err(format!("a result of job {} of a sweep of {} jobs: not this sweep's", r.job, jobs.len()));
        };
        if matches!(r.outcome, JobOutcome::Loaded(_) | JobOutcome::Load(_)) {
            return Err(format!("a load share's result among sweep {}'s", self.run_id));
        }
        if !self.finished.insert(r.job) {
            return Ok(());
        }
        let mut record = JobRecord {
            job: r.job,
            seeds: seeds.clone(),
            worker: r.worker.clone(),
            attempt: r.attempt,
            started_unix_ms: r.started_unix_ms,
            elapsed_ms: r.elapsed_ms,
            error: None,
        };
        match r.outcome {
            JobOutcome::Seeds(done) => {
                let total = self.s.seeds.end - self.s.seeds.start;
                for d in done {
                    self.seeds_done += 1;
                    if let Some(f) = &d.outcome.failure {
                        let dir = self.s.out.join(format!("seed-{}", d.outcome.seed));
                        let shown = match fetch_dir(queue, &dir, &d.files).await {
                            Ok(()) => dir.display().to_string(),
                            Err(e) => format!("(not saved: {e})"),
                        };
                        let rerun = crate::sweep::rerun_command(&self.s.file, d.outcome.seed, self.s.duration);
                        let line =
                            crate::sweep::failure_lines(self.seeds_done, total, d.outcome.seed, f, &rerun, &shown);
                        println!("{line}");
                    }
                    self.runs.push(d.outcome);
                }
            }
            JobOutcome::Loaded(_) | JobOutcome::Load(_) => {}
            JobOutcome::Failed { error, attempts } => {
                println!(
                    "job {} (seeds {}..{}) could not be run ({attempts} attempts, last on {}): {error}",
                    r.job, seeds.start, seeds.end, r.worker
                );
                record.error = Some(error);
            }
        }
        self.records.push(record);
        Ok(())
    }

    fn finish(mut self, s: &Sweep, run_id: &str, scenario: &str, wall_ms: u64) -> Result<u8, String> {
        self.runs.sort_by_key(|r| r.seed);
        self.records.sort_by_key(|r| r.job);
        let mut workers: BTreeMap<String, WorkerTotals> = BTreeMap::new();
        for r in self.records.iter().filter(|r| r.error.is_none()) {
            let w = workers.entry(r.worker.clone()).or_default();
            w.jobs += 1;
            w.seeds += r.seeds.end - r.seeds.start;
            w.busy_ms += r.elapsed_ms;
        }
        std::fs::create_dir_all(&s.out).map_err(|e| format!("{}: {e}", s.out.display()))?;
        let json = SweepJson {
            run_id,
            scenario: scenario.to_string(),
            seeds: s.seeds.clone(),
            batch: s.batch,
            nats: &s.nats,
            namespace: &s.namespace,
            wall_ms,
            jobs: &self.records,
            workers,
        };
        let text = serde_json::to_string_pretty(&json).expect("sweep.json serializes");
        std::fs::write(s.out.join("sweep.json"), text + "\n").map_err(|e| format!("sweep.json: {e}"))?;
        std::fs::write(s.out.join("outcomes.jsonl"), crate::sweep::outcomes_jsonl(&self.runs))
            .map_err(|e| format!("outcomes.jsonl: {e}"))?;
        println!("\nworkers ({} jobs in {:.1} s):", self.jobs, wall_ms as f64 / 1e3);
        for (name, w) in &json.workers {
            println!("  {name:<32} {:>4} jobs {:>6} seeds {:>8.1} s busy", w.jobs, w.seeds, w.busy_ms as f64 / 1e3);
        }
        let (table, failures) = crate::sweep::table(&self.runs, &s.out);
        println!("{table}");
        let unrun: Vec<&JobRecord> = self.records.iter().filter(|r| r.error.is_some()).collect();
        if !unrun.is_empty() {
            let seeds: u64 = unrun.iter().map(|r| r.seeds.end - r.seeds.start).sum();
            println!(
                "chaos: {} jobs ({seeds} seeds) could not be run; see {} (rerun the sweep with --run-id {} once \
                 the cause is fixed)",
                unrun.len(),
                s.out.join("sweep.json").display(),
                self.run_id
            );
            return Ok(1);
        }
        Ok(if failures == 0 { 0 } else { 4 })
    }
}

/// Writes a failing seed's run directory from the object store.
async fn fetch_dir(queue: &Queue, dir: &Path, files: &BTreeMap<String, String>) -> Result<(), String> {
    for (rel, name) in files {
        if Path::new(rel).is_absolute() || rel.contains("..") {
            return Err(format!("a result names a file outside its run directory: {rel:?}"));
        }
        let data = queue.get_file(name).await?;
        let at = dir.join(rel);
        if let Some(parent) = at.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&at, data).map_err(|e| format!("{}: {e}", at.display()))?;
    }
    Ok(())
}

/// A real run's load spread over workers (`fafnir run --gateway ... --workers N`).
pub struct LoadRun<'a> {
    pub scn: &'a crate::scenario::Scenario,
    /// The scenario's text, with the command line's overrides applied (the
    /// workers parse it).
    pub scenario_text: String,
    pub seed: u64,
    /// The platform (its gateway and namespace are required).
    pub target: crate::real_run::Target,
    pub shares: u32,
    /// The workers' namespace (their --namespace).
    pub queue: String,
    pub meta: crate::run::RunMeta,
    /// A capacity step: `scn` is `scenario_text` scaled so (the workers scale it alike).
    pub capacity: Option<crate::split_load::CapacityStep>,
}

/// Which worker ran which share of a load run (workers.json).
#[derive(Clone, Debug, Serialize)]
pub struct ShareRecord {
    pub share: u32,
    pub worker: String,
    pub started_unix_ms: u64,
    pub elapsed_ms: u64,
    pub figures: Option<crate::split_load::ShareFigures>,
}

/// How long, at least, the coordinator gives the workers to set their agents
/// up before the load starts (more with more agents a share).
const BARRIER_LEAD: Duration = Duration::from_secs(3);
const BARRIER_PER_AGENT: Duration = Duration::from_millis(150);
/// How long past a share's expected end it may stay silent.
const SHARE_SLACK: Duration = Duration::from_secs(60);

/// Runs a load over `shares` workers: one barrier, one liveness phase on the
/// platform, one check of every fill, histograms merged exactly.
pub async fn load_run(r: LoadRun<'_>) -> Result<(crate::run::RunResult, Vec<ShareRecord>), String> {
    use crate::queue::JobOutcome as O;
    use crate::split_load;
    if r.shares == 0 {
        return Err("--workers must be at least 1".into());
    }
    let run_id = split_load::new_run_id();
    split_load::preflight(r.scn, r.seed, &run_id, &r.target).await?;
    let queue = Queue::connect(&r.target.nats, &r.queue).await?;
    let agents = crate::run::agent_plan(r.scn, r.seed).len() as u32;
    let per_share = agents.div_ceil(r.shares);
    let lead = BARRIER_LEAD + BARRIER_PER_AGENT * per_share;
    let start_at = crate::queue::unix_ms() + lead.as_millis() as u64;
    let gateway = r.target.gateway.ok_or("a run over workers drives a running platform: give --gateway")?;
    let jobs: Vec<Job> = (0..r.shares)
        .map(|share| Job {
            run_id: run_id.clone(),
            job: share,
            jobs: r.shares,
            work: Work::Load(split_load::LoadJob {
                run_id: run_id.clone(),
                scenario_text: r.scenario_text.clone(),
                seed: r.seed,
                gateway: gateway.to_string(),
                share,
                shares: r.shares,
                start_at_unix_ms: start_at,
                capacity: r.capacity,
            }),
        })
        .collect();
    println!(
        "  run {run_id}: {agents} agents over {} workers of namespace {} at {} (up to {per_share} each); the load \
         starts in {:.1} s",
        r.shares,
        r.queue,
        r.target.nats,
        lead.as_secs_f64()
    );
    let mut results = Box::pin(queue.results(&run_id).await?);
    queue.submit(&jobs).await?;
    let mut records: BTreeMap<u32, ShareRecord> = BTreeMap::new();
    let end_by = fafnir_platform::time::Instant::now() + lead + r.scn.duration + SHARE_SLACK;
    // The load: every share says when its own is over.
    let failed = loop {
        if records.values().filter(|s| s.figures.is_some()).count() == r.shares as usize {
            break None;
        }
        let left = end_by.saturating_duration_since(fafnir_platform::time::Instant::now());
        let next = fafnir_platform::time::timeout(left, results.next()).await;
        let Ok(next) = next else {
            let heard = records.len();
            break Some(format!(
                "{heard} of {} shares reported the end of their load in time: are {} worker job slots free on \
                 namespace {}? (fafnir worker --nats {} --namespace {})",
                r.shares, r.shares, r.queue, r.target.nats, r.queue
            ));
        };
        let res = next.ok_or("the results stream ended")??;
        match res.outcome {
            O::Loaded(figures) => {
                println!(
                    "  share {} on {}: {} agents set up in {} ms, {} orders submitted",
                    res.job, res.worker, figures.agents, figures.setup_ms, figures.submitted
                );
                records.insert(
                    res.job,
                    ShareRecord {
                        share: res.job,
                        worker: res.worker,
                        started_unix_ms: res.started_unix_ms,
                        elapsed_ms: 0,
                        figures: Some(figures),
                    },
                );
            }
            O::Failed { error, .. } => break Some(format!("share {} on {}: {error}", res.job, res.worker)),
            _ => {}
        }
    };
    if let Some(why) = failed {
        let _ = queue.cancel(&run_id).await;
        let _ = queue.settled(&run_id).await;
        return Err(why);
    }
    // One liveness phase on the platform, then every share's result.
    let quiesced = split_load::quiesce(r.scn, &r.target).await;
    let mut shares = Vec::new();
    let mut word = fafnir_platform::time::interval(Duration::from_secs(1));
    let deadline = fafnir_platform::time::Instant::now() + SHARE_SLACK;
    while shares.len() < r.shares as usize {
        let res = tokio::select! {
            biased;
            next = results.next() => next.ok_or("the results stream ended")??,
            _ = word.tick() => {
                if fafnir_platform::time::Instant::now() > deadline {
                    return Err(format!("{} of {} shares sent their results", shares.len(), r.shares));
                }
                // Said again each second: a share subscribed late still hears it.
                queue.settled(&run_id).await?;
                continue;
            }
        };
        match res.outcome {
            O::Load(result) => {
                if let Some(rec) = records.get_mut(&res.job) {
                    rec.elapsed_ms = res.elapsed_ms.max(crate::queue::unix_ms().saturating_sub(rec.started_unix_ms));
                }
                if !shares.iter().any(|s: &split_load::ShareResult| s.figures.share == result.figures.share) {
                    shares.push(*result);
                }
            }
            O::Failed { error, .. } => return Err(format!("share {} on {}: {error}", res.job, res.worker)),
            _ => {}
        }
    }
    let merged = split_load::merge(shares)?;
    let result = split_load::finish(r.scn, r.seed, r.target, merged, quiesced, r.meta).await?;
    Ok((result, records.into_values().collect()))
}
