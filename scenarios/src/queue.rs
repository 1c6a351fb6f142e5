//! The work queue of distributed sweeps and runs, on NATS JetStream: what a
//! coordinator (`fafnir chaos --nats`, `fafnir run --workers`) and any number
//! of `fafnir worker`s share under one namespace `NS`:
//!
//! - `NS_JOBS`, a work-queue stream (`fafnir.NS.jobs.<run id>`): each job is
//!   stored until a worker acknowledges it. Every worker pulls through one
//!   shared durable consumer, `workers`: a job goes to one worker at a time;
//!   one not acknowledged within the ack wait (its worker died) goes to
//!   another; a job is delivered at most [`MAX_DELIVER`] times. Each job has
//!   a subject of its own (`...<run id>.<job>`), so a coordinator that
//!   restarts sees which of its jobs are still queued and submits only the
//!   others.
//! - `NS_RESULTS`, a stream of results (`fafnir.NS.results.<run id>`), kept
//!   for [`KEEP`]: a restarted coordinator reads every result its run already
//!   has.
//! - `NS_FILES`, an object store for what does not fit a message: large
//!   results and failing seeds' run directories.
//!
//! Only the real build has a NATS client; the simulated build's binary is
//! what a worker runs a sweep's seeds with.

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

/// How many times a job is delivered before the queue gives up on it.
pub const MAX_DELIVER: i64 = 4;
/// How long results and files are kept.
pub const KEEP: Duration = Duration::from_secs(7 * 24 * 3600);
/// The default ack wait: how long a worker may go silent on a job (it
/// reports progress every third of it while it runs one) before the job is
/// handed to another worker.
pub const ACK_WAIT: Duration = Duration::from_secs(30);
/// The durable consumer every worker pulls through.
pub const CONSUMER: &str = "workers";
/// Results larger than this go to the object store, the message names them.
const INLINE_MAX: usize = 256 * 1024;
/// The header that names a result's object.
const BLOB_HEADER: &str = "Fafnir-Object";

/// A job: one piece of a run (`run_id`), `job` of `jobs`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    pub run_id: String,
    pub job: u32,
    pub jobs: u32,
    pub work: Work,
}

/// What a job asks a worker to do.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Work {
    /// Run these seeds of a scenario in simulation.
    Seeds(SeedBatch),
    /// Drive a share of a real run's agents against its gateway.
    Load(crate::split_load::LoadJob),
}

/// Seeds of a sweep, with the scenario inline.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SeedBatch {
    /// The scenario file's path as the coordinator named it (for commands it prints).
    pub file: String,
    /// The files the run reads, by path relative to where it runs: the
    /// scenario (`scenario.toml`) and the calibration file it names, if any.
    pub files: std::collections::BTreeMap<String, String>,
    pub seeds: std::ops::Range<u64>,
    /// The load-phase length of every run, if the sweep overrides it.
    pub duration_ms: Option<u64>,
}

/// The scenario's path among a batch's files.
pub const SCENARIO_FILE: &str = "scenario.toml";

/// What a worker reports of one job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobResult {
    pub run_id: String,
    pub job: u32,
    /// The worker that ran it (`host/pid`, or its `--name`).
    pub worker: String,
    /// Which delivery of the job this was (1 for the first).
    pub attempt: i64,
    /// When it started, ms since the Unix epoch, and how long it took.
    pub started_unix_ms: u64,
    pub elapsed_ms: u64,
    pub outcome: JobOutcome,
}

/// How a job ended.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobOutcome {
    /// Every seed of the batch ran (whether or not it found a failure).
    Seeds(Vec<SeedDone>),
    /// A load share's load is over; its agents listen until the coordinator
    /// says the platform has settled ([`Queue::settled`]).
    Loaded(crate::split_load::ShareFigures),
    /// A load share's measurements and its agents' views.
    Load(Box<crate::split_load::ShareResult>),
    /// The job could not be run, `attempts` times: it is not retried again.
    Failed { error: String, attempts: i64 },
}

/// One seed of a batch, and where its run directory's files are (failing
/// seeds only) in the object store.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SeedDone {
    pub outcome: crate::sweep::SeedOutcome,
    /// Object names of the failing seed's run directory, by file name.
    pub files: std::collections::BTreeMap<String, String>,
}

/// A namespace's queue, results and files.
#[derive(Clone)]
pub struct Queue {
    pub url: String,
    pub namespace: String,
    client: async_nats::Client,
    js: jetstream::Context,
}

/// A job taken from the queue: its message (to acknowledge) and its content.
pub struct Taken {
    msg: jetstream::Message,
    pub attempt: i64,
    pub seq: u64,
    pub job: Result<Job, String>,
}

impl Queue {
    /// Connects and makes sure the namespace's streams and object store exist.
    pub async fn connect(url: &str, namespace: &str) -> Result<Queue, String> {
        check_namespace(namespace)?;
        let client = async_nats::ConnectOptions::new()
            .name(format!("fafnir {}", std::process::id()))
            .connect(url)
            .await
            .map_err(|e| format!("NATS at {url}: {e}"))?;
        let js = jetstream::new(client.clone());
        let q = Queue { url: url.to_string(), namespace: namespace.to_string(), client, js };
        q.ensure().await?;
        Ok(q)
    }

    fn jobs_stream(&self) -> String {
        format!("{}_JOBS", self.namespace)
    }

    fn results_stream(&self) -> String {
        format!("{}_RESULTS", self.namespace)
    }

    fn files_bucket(&self) -> String {
        format!("{}_FILES", self.namespace)
    }

    fn job_subject(&self, run_id: &str, job: u32) -> String {
        format!("fafnir.{}.jobs.{run_id}.{job}", self.namespace)
    }

    fn jobs_subjects(&self, run_id: &str) -> String {
        format!("fafnir.{}.jobs.{run_id}.*", self.namespace)
    }

    fn results_subject(&self, run_id: &str) -> String {
        format!("fafnir.{}.results.{run_id}", self.namespace)
    }

    fn control_subject(&self, run_id: &str) -> String {
        format!("fafnir.{}.control.{run_id}", self.namespace)
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> String {
        format!("{what} (NATS at {}, namespace {}): {e}", self.url, self.namespace)
    }

    async fn ensure(&self) -> Result<(), String> {
        let jobs = stream::Config {
            name: self.jobs_stream(),
            subjects: vec![format!("fafnir.{}.jobs.>", self.namespace)],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        self.js.get_or_create_stream(jobs).await.map_err(|e| self.err("the jobs stream", e))?;
        let results = stream::Config {
            name: self.results_stream(),
            subjects: vec![format!("fafnir.{}.results.>", self.namespace)],
            storage: stream::StorageType::File,
            max_age: KEEP,
            ..Default::default()
        };
        self.js.get_or_create_stream(results).await.map_err(|e| self.err("the results stream", e))?;
        if self.js.get_object_store(self.files_bucket()).await.is_err() {
            let files = jetstream::object_store::Config {
                bucket: self.files_bucket(),
                max_age: KEEP,
                storage: stream::StorageType::File,
                ..Default::default()
            };
            self.js.create_object_store(files).await.map_err(|e| self.err("the files store", e))?;
        }
        Ok(())
    }

    /// The workers' consumer, with `ack_wait` (updated if it had another).
    pub async fn consumer(&self, ack_wait: Duration) -> Result<consumer::PullConsumer, String> {
        let config = consumer::pull::Config {
            durable_name: Some(CONSUMER.into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait,
            max_deliver: MAX_DELIVER,
            ..Default::default()
        };
        let stream = self.js.get_stream(self.jobs_stream()).await.map_err(|e| self.err("the jobs stream", e))?;
        let mut c: consumer::PullConsumer =
            stream.get_or_create_consumer(CONSUMER, config.clone()).await.map_err(|e| self.err("the consumer", e))?;
        let info = c.info().await.map_err(|e| self.err("the consumer", e))?;
        if info.config.ack_wait != ack_wait {
            c = stream.create_consumer(config).await.map_err(|e| self.err("update the consumer", e))?;
        }
        Ok(c)
    }

    /// Submits `jobs`.
    pub async fn submit(&self, jobs: &[Job]) -> Result<(), String> {
        let mut acks = Vec::with_capacity(jobs.len());
        for job in jobs {
            let payload = serde_json::to_vec(job).expect("a job serializes");
            let msg = jetstream::message::PublishMessage::build().payload(payload.into()).message_id(format!(
                "{}/{}/{}",
                job.run_id,
                job.job,
                unix_ms()
            ));
            acks.push(
                self.js
                    .send_publish(self.job_subject(&job.run_id, job.job), msg)
                    .await
                    .map_err(|e| self.err("submit a job", e))?,
            );
        }
        for ack in acks {
            ack.await.map_err(|e| self.err("submit a job", e))?;
        }
        Ok(())
    }

    /// Takes the next job, waiting up to `wait` for one.
    pub async fn take(&self, c: &consumer::PullConsumer, wait: Duration) -> Result<Option<Taken>, String> {
        // A pull request that waits for a job up to `wait` (a fetch asks
        // for what is there now).
        let mut batch =
            c.batch().max_messages(1).expires(wait).messages().await.map_err(|e| self.err("take a job", e))?;
        let Some(msg) = batch.next().await else { return Ok(None) };
        let msg = msg.map_err(|e| self.err("take a job", e))?;
        let info = msg.info().map_err(|e| self.err("a job's delivery", e))?;
        let (attempt, seq) = (info.delivered.max(1), info.stream_sequence);
        let job = serde_json::from_slice(&msg.payload).map_err(|e| format!("job #{seq} is not a fafnir job: {e}"));
        Ok(Some(Taken { msg, attempt, seq, job }))
    }

    /// Publishes a job's result (through the object store if it is large).
    pub async fn publish_result(&self, r: &JobResult) -> Result<(), String> {
        let body = serde_json::to_vec(r).expect("a result serializes");
        let subject = self.results_subject(&r.run_id);
        let step = if matches!(r.outcome, JobOutcome::Loaded(_)) { "/loaded" } else { "" };
        let msg_id = format!("{}/{}/{}{step}", r.run_id, r.job, r.attempt);
        let msg = if body.len() > INLINE_MAX {
            let name = format!("results/{msg_id}.json");
            self.put_file(&name, &body).await?;
            jetstream::message::PublishMessage::build().header(BLOB_HEADER, name.as_str()).message_id(msg_id)
        } else {
            jetstream::message::PublishMessage::build().payload(body.into()).message_id(msg_id)
        };
        self.js
            .send_publish(subject, msg)
            .await
            .map_err(|e| self.err("publish a result", e))?
            .await
            .map_err(|e| self.err("publish a result", e))?;
        Ok(())
    }

    /// Every result of `run_id`, those already stored first, then each as
    /// it comes.
    pub async fn results(
        &self,
        run_id: &str,
    ) -> Result<impl futures::Stream<Item = Result<JobResult, String>> + 'static, String> {
        let stream = self.js.get_stream(self.results_stream()).await.map_err(|e| self.err("the results stream", e))?;
        let c = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: self.results_subject(run_id),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| self.err("read results", e))?;
        let messages = c.messages().await.map_err(|e| self.err("read results", e))?;
        let (q, run_id) = (self.clone(), run_id.to_string());
        Ok(messages.then(move |m| {
            let (q, run_id) = (q.clone(), run_id.clone());
            async move {
                let m = m.map_err(|e| q.err("read results", e))?;
                let blob = m.headers.as_ref().and_then(|h| h.get(BLOB_HEADER)).map(|v| v.as_str().to_string());
                let body = match blob {
                    Some(name) => Bytes::from(q.get_file(&name).await?),
                    None => m.payload.clone(),
                };
                serde_json::from_slice(&body).map_err(|e| format!("a result of {run_id} is not a fafnir result: {e}"))
            }
        }))
    }

    /// The jobs of `run_id` still in the queue (waiting, or taken and not
    /// yet acknowledged).
    pub async fn queued_jobs(&self, run_id: &str) -> Result<BTreeSet<u32>, String> {
        let stream = self.js.get_stream(self.jobs_stream()).await.map_err(|e| self.err("the jobs stream", e))?;
        let mut subjects =
            stream.info_with_subjects(self.jobs_subjects(run_id)).await.map_err(|e| self.err("list jobs", e))?;
        let mut queued = BTreeSet::new();
        while let Some(s) = subjects.next().await {
            let (subject, _) = s.map_err(|e| self.err("list jobs", e))?;
            if let Some(job) = subject.rsplit('.').next().and_then(|j| j.parse().ok()) {
                queued.insert(job);
            }
        }
        Ok(queued)
    }

    /// How many results of `run_id` are stored.
    pub async fn stored_results(&self, run_id: &str) -> Result<usize, String> {
        let stream = self.js.get_stream(self.results_stream()).await.map_err(|e| self.err("the results stream", e))?;
        let subject = self.results_subject(run_id);
        let mut counts = stream.info_with_subjects(&subject).await.map_err(|e| self.err("count results", e))?;
        let mut n = 0;
        while let Some(c) = counts.next().await {
            let (s, count) = c.map_err(|e| self.err("count results", e))?;
            if s == subject {
                n += count;
            }
        }
        Ok(n)
    }

    /// Stores `data` under `name`.
    pub async fn put_file(&self, name: &str, data: &[u8]) -> Result<(), String> {
        let store = self.js.get_object_store(self.files_bucket()).await.map_err(|e| self.err("the files store", e))?;
        let mut reader = data;
        store.put(name, &mut reader).await.map_err(|e| self.err(&format!("store {name}"), e))?;
        Ok(())
    }

    /// Reads the file stored under `name`.
    pub async fn get_file(&self, name: &str) -> Result<Vec<u8>, String> {
        use tokio::io::AsyncReadExt as _;
        let store = self.js.get_object_store(self.files_bucket()).await.map_err(|e| self.err("the files store", e))?;
        let mut object = store.get(name).await.map_err(|e| self.err(&format!("read {name}"), e))?;
        let mut data = Vec::new();
        object.read_to_end(&mut data).await.map_err(|e| self.err(&format!("read {name}"), e))?;
        Ok(data)
    }

    /// Subscribes to the word that run `run_id`'s platform has settled (a
    /// load share's agents listen until it comes).
    pub async fn await_settled(&self, run_id: &str) -> Result<async_nats::Subscriber, String> {
        self.client.subscribe(self.control_subject(run_id)).await.map_err(|e| self.err("subscribe", e))
    }

    /// Says that run `run_id`'s platform has settled (or will not): its
    /// load shares stop listening and send their results.
    pub async fn settled(&self, run_id: &str) -> Result<(), String> {
        self.client
            .publish(self.control_subject(run_id), Bytes::from_static(b"settled"))
            .await
            .map_err(|e| self.err("publish", e))?;
        self.client.flush().await.map_err(|e| self.err("flush", e))
    }

    /// Removes run `run_id`'s jobs that no worker has taken.
    pub async fn cancel(&self, run_id: &str) -> Result<(), String> {
        let stream = self.js.get_stream(self.jobs_stream()).await.map_err(|e| self.err("the jobs stream", e))?;
        stream.purge().filter(self.jobs_subjects(run_id)).await.map_err(|e| self.err("cancel jobs", e))?;
        Ok(())
    }

    /// The job stored at `seq` of the jobs stream, if it is still there.
    pub async fn job_at(&self, seq: u64) -> Option<Job> {
        let stream = self.js.get_stream(self.jobs_stream()).await.ok()?;
        let msg = stream.get_raw_message(seq).await.ok()?;
        serde_json::from_slice(&msg.payload).ok()
    }

    /// The stream sequences of the jobs the queue gave up on (delivered
    /// [`MAX_DELIVER`] times, never finished: each worker that took it died
    /// or hung), as JetStream announces them.
    pub async fn given_up(&self) -> Result<impl futures::Stream<Item = u64>, String> {
        let subject = format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{CONSUMER}", self.jobs_stream());
        let sub = self.client.subscribe(subject).await.map_err(|e| self.err("subscribe to advisories", e))?;
        Ok(sub.filter_map(|m| async move {
            serde_json::from_slice::<serde_json::Value>(&m.payload).ok()?.get("stream_seq")?.as_u64()
        }))
    }

    /// Removes a job the queue gave up on (so that it is not counted again).
    pub async fn drop_job(&self, seq: u64) {
        if let Ok(stream) = self.js.get_stream(self.jobs_stream()).await {
            let _ = stream.delete_message(seq).await;
        }
    }
}

impl Taken {
    /// Reports that the job is still running (restarts its ack wait).
    pub async fn in_progress(&self) -> Result<(), String> {
        self.msg.ack_with(jetstream::AckKind::Progress).await.map_err(|e| format!("report progress: {e}"))
    }

    /// The job is done (its result is published): remove it from the queue.
    pub async fn done(&self) -> Result<(), String> {
        self.msg.double_ack().await.map_err(|e| format!("acknowledge a job: {e}"))
    }

    /// The job failed this time: deliver it again after `delay`.
    pub async fn retry_after(&self, delay: Duration) -> Result<(), String> {
        self.msg.ack_with(jetstream::AckKind::Nak(Some(delay))).await.map_err(|e| format!("give a job back: {e}"))
    }

    /// The job is not a job (malformed): never deliver it again.
    pub async fn reject(&self) -> Result<(), String> {
        self.msg.ack_with(jetstream::AckKind::Term).await.map_err(|e| format!("reject a job: {e}"))
    }
}

/// A namespace names streams, subjects and a bucket: letters, digits, `-` and `_`.
pub fn check_namespace(ns: &str) -> Result<(), String> {
    if ns.is_empty() || ns.len() > 64 || !ns.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(format!(
            "namespace {ns:?}: use 1 to 64 letters, digits, '-' and '_' (it names the queue's streams and subjects)"
        ));
    }
    Ok(())
}

/// A fresh run id: the scenario's name (its subject-safe part), the time and
/// this process (unique per coordinator).
pub fn new_run_id(name: &str) -> String {
    let safe: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).take(32).collect();
    format!("{safe}-{}-{}", unix_ms(), std::process::id())
}

/// Checks a run id given on the command line (it is part of subjects and message ids).
pub fn check_run_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 100 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(format!("run id {id:?}: use letters, digits, '-' and '_'"));
    }
    Ok(())
}

/// Milliseconds since the Unix epoch (the wall clock: distributed runs
/// meet at wall-clock barriers, and reports say when a job ran).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
