//! `bench`: measures a running Jobs Service (deploy/up's, or one it is pointed at) against the
//! physical limit of its own NATS server, in one run, and prints a table for people and, last,
//! one JSON line for machines. It starts nothing itself.
//!
//! Phases, per stack: optionally seeding pending jobs (command-svc's RSS per pending job, query
//! latency at 10,000 and at the full count), raw pipelined JetStream publishes and raw atomic
//! batches (the references), HTTP enqueue at a concurrency, batch enqueue, lease latency at a
//! paced 100 jobs/s, the full cycle (enqueue while mTLS workers lease and complete), query
//! latency, and optionally command-svc's restart-to-ready and the projector's rebuild rate.
//! Every throughput is also given as a ratio of `raw_publish_per_s` of the same stack.
//!
//! Several stacks (`--stack deploy/.run/stack.env --stack deploy/.run-1/stack.env`, as
//! `deploy/up [--instance N] [--sync default]` writes them) are measured one after the other in
//! one run: that is how both durability settings of the stream are reported side by side.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde_json::{json, Value};
use uuid::Uuid;

// The services' allocator: the load generator shares the machine's two cores with them, and
// its own CPU per job is reported beside theirs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Clone)]
#[command(name = "bench", about = "Benchmark a running Jobs Service")]
struct Args {
    /// The gateway (or a command-svc/query-svc pair behind one URL).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    gateway: String,
    /// The NATS server the service uses (for the raw reference).
    #[arg(long, env = "JOBS_NATS_URL", default_value = "nats://127.0.0.1:4333")]
    nats_url: String,
    /// command-svc's worker listener.
    #[arg(long, default_value = "https://127.0.0.1:8443")]
    worker_url: String,
    /// Worker client certificate, key and the CA of the server certificate.
    #[arg(long, default_value = "deploy/.dev/worker.pem")]
    cert: String,
    #[arg(long, default_value = "deploy/.dev/worker-key.pem")]
    key: String,
    #[arg(long, default_value = "deploy/.dev/ca.pem")]
    ca: String,
    /// Private key that signs the benchmark's tokens.
    #[arg(long, default_value = "deploy/.dev/jwt-private.pem")]
    jwt_key: String,
    /// Seconds per phase.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// HTTP connections for the enqueue phase.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Workers in the cycle phase (each leases up to 10 jobs at a time).
    #[arg(long, default_value_t = 16)]
    workers: usize,
    /// Before measuring, enqueue this many jobs that stay pending (batches of 500): command-svc's
    /// RSS per pending job, and query latency at 10,000 and at this many jobs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// NATS monitoring endpoint, to report the server's sync setting.
    #[arg(long, default_value = "http://127.0.0.1:8333")]
    nats_monitor: String,
    /// A stack to measure, as `deploy/up` describes it in `deploy/.run[-N]/stack.env`; repeat for
    /// several (each gets every phase). Without it, the flags above describe the one stack.
    #[arg(long)]
    stack: Vec<String>,
    /// Restart command-svc (the stack's RESTART_COMMAND) after seeding and time it to ready.
    #[arg(long)]
    restart: bool,
    /// Rebuild the read model (the stack's REBUILD_COMMAND) at the end and report events/s.
    #[arg(long)]
    rebuild: bool,
    /// For profiling: run only the paced cycle at this many jobs/s (after `--seed`'s jobs, when
    /// asked, and draining) and print its lease latency percentiles, nothing else.
    #[arg(long)]
    paced_only: Option<f64>,
    /// For profiling: run only the query phase, as this tenant (one an earlier `--seed` run
    /// filled: its id is the tenant_id of the read model's jobs), and print its percentiles.
    #[arg(long)]
    queries_only: Option<Uuid>,
}

/// One stack under test.
#[derive(Clone, Default)]
struct Stack {
    gateway: String,
    worker_url: String,
    nats_url: String,
    nats_monitor: String,
    command_pid_file: Option<String>,
    command_ready: Option<String>,
    projector_metrics: Option<String>,
    restart_command: Option<String>,
    rebuild_command: Option<String>,
}

impl Stack {
    fn from_args(a: &Args) -> Self {
        Self {
            gateway: a.gateway.clone(),
            worker_url: a.worker_url.clone(),
            nats_url: a.nats_url.clone(),
            nats_monitor: a.nats_monitor.clone(),
            ..Default::default()
        }
    }

    /// Reads `KEY=value` lines as `deploy/up` writes them.
    fn from_file(path: &str) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        let mut s = Self::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.to_string();
            match k {
                "GATEWAY" => s.gateway = v,
                "WORKER_URL" => s.worker_url = v,
                "NATS_URL" => s.nats_url = v,
                "NATS_MONITOR" => s.nats_monitor = v,
                "COMMAND_PID_FILE" => s.command_pid_file = Some(v),
                "COMMAND_READY" => s.command_ready = Some(v),
                "PROJECTOR_METRICS" => s.projector_metrics = Some(v),
                "RESTART_COMMAND" => s.restart_command = Some(v),
                "REBUILD_COMMAND" => s.rebuild_command = Some(v),
                _ => {}
            }
        }
        if s.gateway.is_empty() || s.worker_url.is_empty() || s.nats_url.is_empty() {
            bail!("{path} lacks GATEWAY, WORKER_URL or NATS_URL");
        }
        Ok(s)
    }

    /// The server's sync setting as its monitoring endpoint reports it: "always" (fsync before
    /// every acknowledgement), "default" (the server's default interval) or "unknown".
    async fn sync(&self, http: &reqwest::Client) -> String {
        let varz: Option<Value> = async {
            http.get(format!("{}/varz", self.nats_monitor))
                .timeout(Duration::from_secs(3))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()
        }
        .await;
        match varz.as_ref().map(|v| &v["jetstream"]["config"]) {
            Some(c) if c["sync_always"] == json!(true) => "always".into(),
            Some(c) if c.is_object() => "default".into(),
            _ => "unknown".into(),
        }
    }

    /// The projector's upkeep metrics (`jobs_projector_upkeep_*`).
    async fn upkeep(&self, http: &reqwest::Client) -> Option<Upkeep> {
        let text = metrics_text(http, self.projector_metrics.as_ref()?).await?;
        Some(Upkeep {
            enabled: sample(&text, "jobs_projector_upkeep_enabled")? == 1.0,
            running: sample(&text, "jobs_projector_upkeep_running")? == 1.0,
            rounds: sample(&text, "jobs_projector_upkeep_rounds_total")? as u64,
            // The series appears with the table's first vacuum.
            jobs_vacuums: sample(
                &text,
                r#"jobs_projector_upkeep_tables_total{action="vacuum",table="jobs"}"#,
            )
            .unwrap_or(0.0) as u64,
            actions: sum_of(&text, "jobs_projector_upkeep_tables_total") as u64,
        })
    }

    /// Waits until the projector's upkeep has finished a round that started after now, if
    /// it does upkeep at all: the vacuum that follows a bulk load (the seed) then lies
    /// behind the phases that measure. Returns the seconds waited (None: no upkeep here, or
    /// a projector without these metrics).
    async fn settle_upkeep(&self, http: &reqwest::Client) -> Option<f64> {
        let start = Instant::now();
        let first = self.upkeep(http).await.filter(|u| u.enabled)?;
        // A round running now may have looked at the tables before the seed's last rows.
        let wanted = first.rounds + if first.running { 2 } else { 1 };
        eprintln!("bench: waiting for the read model's upkeep after the seed");
        while start.elapsed() < Duration::from_secs(600) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if self.upkeep(http).await.is_some_and(|u| u.rounds >= wanted) {
                return Some(start.elapsed().as_secs_f64());
            }
        }
        eprintln!("bench: the upkeep did not finish a round within 600 s; measuring anyway");
        Some(start.elapsed().as_secs_f64())
    }

    /// command-svc's `jobs_write_model_refused_events_total` (its `/metrics` beside the
    /// `/readyz` of COMMAND_READY): events its write model could not fold, which only a bug
    /// (or a corrupt stream) makes. None: no COMMAND_READY, or no answer.
    async fn command_refused_events(&self, http: &reqwest::Client) -> Option<f64> {
        let url = self.command_ready.as_ref()?.strip_suffix("/readyz")?;
        let text = metrics_text(http, &format!("{url}/metrics")).await?;
        sample(&text, "jobs_write_model_refused_events_total")
    }

    /// command-svc's resident set, from /proc (the stack runs on this machine).
    fn command_rss(&self) -> Option<u64> {
        let pid = std::fs::read_to_string(self.command_pid_file.as_ref()?).ok()?;
        let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).ok()?;
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()?;
        Some(kb * 1024)
    }
}

fn token(key: &str, tenant: Uuid, roles: &[&str]) -> anyhow::Result<String> {
    let pem = std::fs::read(key).with_context(|| format!("reading {key}"))?;
    let k = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).context("an RSA private key")?;
    let now = chrono::Utc::now().timestamp();
    let claims = json!({"sub": "bench", "tenantId": tenant, "roles": roles, "planTier": "enterprise", "iat": now, "exp": now + 7200});
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &k,
    )?)
}

/// A service's Prometheus text (None: no answer within 3 s).
async fn metrics_text(http: &reqwest::Client, url: &str) -> Option<String> {
    http.get(url)
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// The value of an unlabelled series in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (series, v) = l.rsplit_once(' ')?;
        (series == name).then(|| v.parse().ok()).flatten()
    })
}

/// The sum of every series of the metric `name` (each set of labels).
fn sum_of(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            let labels = series.strip_prefix(name)?;
            (labels.is_empty() || labels.starts_with('{')).then(|| v.parse::<f64>().ok())?
        })
        .sum()
}

/// The projector's upkeep, as its `/metrics` shows it.
struct Upkeep {
    enabled: bool,
    running: bool,
    rounds: u64,
    /// VACUUMs of `jobs` finished.
    jobs_vacuums: u64,
    /// VACUUMs and ANALYZEs of any table finished.
    actions: u64,
}

impl Upkeep {
    /// Whether the upkeep worked on a table at any time between `before` and `after`: a
    /// round running at either end, or a table vacuumed or analyzed in between (a round that
    /// found nothing to do does not count). 1 or 0, for the figures.
    fn during(before: &Option<Self>, after: &Option<Self>) -> Option<u8> {
        let (b, a) = (before.as_ref()?, after.as_ref()?);
        Some(u8::from(b.running || a.running || a.actions > b.actions))
    }
}

/// Latencies in microseconds.
#[derive(Default)]
struct Lat(Mutex<Vec<u64>>);

impl Lat {
    fn add(&self, d: Duration) {
        self.0.lock().expect("lock").push(d.as_micros() as u64);
    }
    fn pct_ms(&self, p: f64) -> Option<f64> {
        let mut v = self.0.lock().expect("lock").clone();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        Some(v[i] as f64 / 1000.0)
    }
}

/// The type of the jobs the enqueue, batch and seed phases make: never leased by the cycle's
/// workers, so the cycle's jobs do not queue behind them.
const LOAD_TYPE: &str = "bench.load";
/// The type of the jobs the cycle phase makes and its workers lease.
const CYCLE_TYPE: &str = "email.send";

fn payload(job_type: &str) -> Value {
    // The seed's example job, about 256 bytes on the wire.
    json!({"type": job_type, "payload": {"to": "user@example.com", "template": "welcome", "pad": "x".repeat(120)}, "priority": 5})
}

/// `payload(job_type)` as a request body, serialized once for each of the bench's two job
/// types: every enqueue of a run sends the same bytes, with no lock between the senders.
fn enqueue_body(job_type: &str) -> bytes::Bytes {
    use std::sync::LazyLock;
    fn serialized(job_type: &str) -> bytes::Bytes {
        bytes::Bytes::from(serde_json::to_vec(&payload(job_type)).expect("json"))
    }
    static LOAD: LazyLock<bytes::Bytes> = LazyLock::new(|| serialized(LOAD_TYPE));
    static CYCLE: LazyLock<bytes::Bytes> = LazyLock::new(|| serialized(CYCLE_TYPE));
    match job_type {
        LOAD_TYPE => LOAD.clone(),
        CYCLE_TYPE => CYCLE.clone(),
        other => serialized(other),
    }
}

/// What a worker reads of a lease answer: each job's id, creation time and lease id (the rest
/// of the job is skipped, not built).
#[derive(serde::Deserialize)]
struct LeaseAnswer {
    data: LeasedJobs,
}

#[derive(serde::Deserialize)]
struct LeasedJobs {
    jobs: Vec<LeasedJob>,
}

#[derive(serde::Deserialize)]
struct LeasedJob {
    id: Uuid,
    created_at: chrono::DateTime<chrono::Utc>,
    lease: LeaseOf,
}

#[derive(serde::Deserialize)]
struct LeaseOf {
    lease_id: u64,
}

/// A reference stream of the bench's own (`name`, subjects `bench.<root>.>`, file storage),
/// made afresh on the stack's NATS server: one benchmark at a time. Returns the context and a
/// subject prefix unique to this run.
async fn reference_stream(
    nats: &str,
    name: &str,
    root: &str,
    atomic: bool,
) -> anyhow::Result<(async_nats::jetstream::Context, String)> {
    let client = common::nats::connect_once(nats)
        .await
        .context("connecting to NATS")?;
    let js = async_nats::jetstream::new(client);
    let _ = js.delete_stream(name).await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.to_string(),
        subjects: vec![format!("bench.{root}.>")],
        storage: async_nats::jetstream::stream::StorageType::File,
        allow_atomic_publish: atomic,
        ..Default::default()
    })
    .await
    .with_context(|| format!("creating the reference stream {name}"))?;
    Ok((js, format!("bench.{root}.{}", Uuid::new_v4().simple())))
}

async fn raw_publish(nats: &str, seconds: f64) -> anyhow::Result<f64> {
    let name = "BENCH_RAW";
    let (js, prefix) = reference_stream(nats, name, "raw", false).await?;
    let body = bytes_256();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let mut inflight = FuturesUnordered::new();
    let mut done = 0u64;
    while Instant::now() < deadline {
        while inflight.len() < 1024 {
            let publish = async_nats::jetstream::message::PublishMessage::build()
                .payload(body.clone())
                .expected_last_subject_sequence(0);
            let ack = js
                .send_publish(format!("{prefix}.{}", Uuid::new_v4().simple()), publish)
                .await?;
            inflight.push(async move { ack.await });
        }
        if let Some(r) = inflight.next().await {
            r?;
            done += 1;
        }
    }
    while let Some(r) = inflight.next().await {
        r?;
        done += 1;
    }
    let rate = done as f64 / start.elapsed().as_secs_f64();
    let _ = js.delete_stream(name).await;
    Ok(rate)
}

/// Atomic batches of `size` 256-byte messages (expected-sequence 0, unique subjects), `inflight`
/// batches at a time, to a file-storage stream on the same server: what one store write
/// carrying many events reaches here (the ceiling of group commit and of batch enqueue).
/// Returns messages per second.
async fn raw_batch_publish(nats: &str, seconds: f64, size: usize) -> anyhow::Result<f64> {
    use jetstream_extra::batch_publish::BatchPublishExt;
    let name = "BENCH_RAW_BATCH";
    let (js, prefix) = reference_stream(nats, name, "batch", true).await?;
    let body = bytes_256();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let one_batch = || {
        let (js, body, prefix) = (js.clone(), body.clone(), prefix.clone());
        async move {
            let message = || {
                async_nats::jetstream::message::PublishMessage::build()
                    .payload(body.clone())
                    .expected_last_subject_sequence(0)
                    .outbound_message(format!("{prefix}.{}", Uuid::new_v4().simple()))
            };
            let mut batch = js.batch_publish().ack_first(false).build();
            for _ in 1..size {
                batch.add_message(message()).await?;
            }
            batch.commit_message(message()).await?;
            anyhow::Ok(size as u64)
        }
    };
    let mut inflight = FuturesUnordered::new();
    let mut done = 0u64;
    while Instant::now() < deadline {
        while inflight.len() < RAW_BATCHES_IN_FLIGHT {
            inflight.push(one_batch());
        }
        if let Some(r) = inflight.next().await {
            done += r?;
        }
    }
    while let Some(r) = inflight.next().await {
        done += r?;
    }
    let rate = done as f64 / start.elapsed().as_secs_f64();
    let _ = js.delete_stream(name).await;
    Ok(rate)
}

/// Atomic batches the batch reference keeps in flight.
const RAW_BATCHES_IN_FLIGHT: usize = 8;

fn bytes_256() -> bytes::Bytes {
    bytes::Bytes::from(vec![b'x'; 256])
}

struct Ctx {
    http: reqwest::Client,
    gateway: String,
    token: String,
}

/// Runs `concurrency` loops of `op` for `seconds`; returns (operations, items, seconds).
async fn drive<F, Fut>(concurrency: usize, seconds: f64, op: F) -> (u64, u64, f64)
where
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = anyhow::Result<u64>> + Send,
{
    let ops = Arc::new(AtomicU64::new(0));
    let items = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (op, ops, items) = (op.clone(), ops.clone(), items.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    match op().await {
                        Ok(n) => {
                            ops.fetch_add(1, Ordering::Relaxed);
                            items.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(e) => eprintln!("bench: {e:#}"),
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    (
        ops.load(Ordering::Relaxed),
        items.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
    )
}

async fn enqueue_one(c: &Ctx, lat: &Lat, job_type: &str) -> anyhow::Result<u64> {
    enqueue_answered(c, lat, job_type).await.map(|_| 1)
}

/// Enqueues one job of `job_type`, its latency into `lat`; returns the 201 answer and when it
/// came.
async fn enqueue_answered(
    c: &Ctx,
    lat: &Lat,
    job_type: &str,
) -> anyhow::Result<(reqwest::Response, Instant)> {
    let t = Instant::now();
    let res = c
        .http
        .post(format!("{}/jobs/v1/enqueue", c.gateway))
        .bearer_auth(&c.token)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(enqueue_body(job_type))
        .send()
        .await?;
    let acked = Instant::now();
    if res.status() != 201 {
        bail!("enqueue answered {}", res.status());
    }
    lat.add(acked - t);
    Ok((res, acked))
}

/// When each cycle job was acknowledged to its producer and when it reached a worker.
#[derive(Default)]
struct Handoff {
    acked: Mutex<std::collections::HashMap<Uuid, Instant>>,
    handed: Mutex<std::collections::HashMap<Uuid, Instant>>,
}

impl Handoff {
    /// Acknowledged to in a worker's hands, for the jobs acknowledged from `from` on. A worker
    /// can hold a job before its producer has read the answer: that counts as 0.
    fn latencies(&self, from: Instant) -> Lat {
        let lat = Lat::default();
        let handed = self.handed.lock().expect("lock");
        for (id, acked) in self.acked.lock().expect("lock").iter() {
            if *acked < from {
                continue;
            }
            if let Some(h) = handed.get(id) {
                lat.add(h.saturating_duration_since(*acked));
            }
        }
        lat
    }
}

/// Enqueues one cycle job and notes when it was acknowledged (its id from `Location`).
async fn enqueue_handed(c: &Ctx, lat: &Lat, handoff: &Handoff) -> anyhow::Result<u64> {
    let (res, acked) = enqueue_answered(c, lat, CYCLE_TYPE).await?;
    let id: Uuid = res
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .and_then(|l| l.rsplit('/').next())
        .and_then(|i| i.parse().ok())
        .context("an enqueue answer without a job Location")?;
    handoff.acked.lock().expect("lock").insert(id, acked);
    Ok(1)
}

/// Enqueues `n` jobs of `job_type` in one batch; returns how many and the last event sequence.
async fn enqueue_batch(c: &Ctx, n: usize, job_type: &str) -> anyhow::Result<(u64, u64)> {
    let jobs: Vec<Value> = (0..n).map(|_| payload(job_type)).collect();
    let res = c
        .http
        .post(format!("{}/jobs/v1/enqueue/batch", c.gateway))
        .bearer_auth(&c.token)
        .json(&json!({ "jobs": jobs }))
        .send()
        .await?;
    if res.status() != 201 {
        bail!("batch enqueue answered {}", res.status());
    }
    let seq = res
        .headers()
        .get("x-event-seq")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok((n as u64, seq))
}

fn worker_client(a: &Args) -> anyhow::Result<reqwest::Client> {
    let mut id = std::fs::read(&a.cert).with_context(|| format!("reading {}", a.cert))?;
    id.extend(std::fs::read(&a.key).with_context(|| format!("reading {}", a.key))?);
    let ca = std::fs::read(&a.ca).with_context(|| format!("reading {}", a.ca))?;
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .use_rustls_tls()
        .identity(reqwest::Identity::from_pem(&id)?)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .build()?)
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Args::parse()).await {
        eprintln!("bench: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let stacks: Vec<Stack> = if args.stack.is_empty() {
        vec![Stack::from_args(&args)]
    } else {
        args.stack
            .iter()
            .map(|p| Stack::from_file(p))
            .collect::<anyhow::Result<_>>()?
    };
    // A request that stalls becomes an error the bench prints, not a run that never ends.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut runs: Vec<(String, Value)> = Vec::new();
    for stack in &stacks {
        let sync = stack.sync(&http).await;
        eprintln!("bench: stack {} (sync {sync})", stack.gateway);
        let figures = measure(&args, stack, &http).await?;
        let mut label = format!("sync_{sync}");
        if runs.iter().any(|(l, _)| *l == label) {
            label = format!("{label}_{}", runs.len() + 1);
        }
        runs.push((label, figures));
    }
    // The table: a row per figure, a column per stack.
    let mut keys: Vec<String> = Vec::new();
    for (_, f) in &runs {
        for (k, v) in f.as_object().expect("an object") {
            if !v.is_object() && !keys.contains(k) {
                keys.push(k.clone());
            }
        }
        for group in ["ratios", "cpu_us_per_enqueue", "cpu_us_per_cycle_job"] {
            for k in f[group].as_object().into_iter().flat_map(|o| o.keys()) {
                let k = format!("{group}.{k}");
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
    }
    print!("{:<40}", "figure");
    for (label, _) in &runs {
        print!(" {label:>16}");
    }
    println!();
    for k in &keys {
        print!("{k:<40}");
        for (_, f) in &runs {
            let v = match k.split_once('.') {
                Some((group, key)) => &f[group][key],
                None => &f[k.as_str()],
            };
            print!(" {:>16}", v.to_string());
        }
        println!();
    }
    let mut out = serde_json::Map::new();
    for (label, f) in runs {
        out.insert(label, f);
    }
    out.insert(
        "settings".into(),
        json!({"seconds_per_phase": args.seconds, "concurrency": args.concurrency, "workers": args.workers, "seeded": args.seed}),
    );
    println!("{}", Value::Object(out));
    Ok(())
}

/// The processes whose CPU time the bench accounts for, by command name (all on this machine:
/// with two stacks up, the idle one adds next to nothing).
const ACCOUNTED: [&str; 7] = [
    "nats-server",
    "command-svc",
    "projector",
    "query-svc",
    "postgres",
    "nginx",
    "bench",
];

/// CPU seconds (user + system) so far of every accounted process, summed by name, from /proc.
fn cpu_seconds() -> std::collections::BTreeMap<&'static str, f64> {
    let tick = 100.0; // USER_HZ on Linux
    let mut out: std::collections::BTreeMap<&'static str, f64> =
        ACCOUNTED.iter().map(|n| (*n, 0.0)).collect();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ... utime stime: fields 14 and 15, counted after the ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let Some(name) = ACCOUNTED.iter().find(|n| comm == **n) else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        *out.get_mut(name).expect("accounted") += (ticks(11) + ticks(12)) / tick;
    }
    out
}

/// CPU microseconds per item of each accounted process between two `cpu_seconds` readings.
fn cpu_us_per(before: &std::collections::BTreeMap<&'static str, f64>, items: u64) -> Value {
    let after = cpu_seconds();
    let mut m = serde_json::Map::new();
    let mut total = 0.0;
    for (name, t) in &after {
        let used = (t - before.get(name).copied().unwrap_or(0.0)).max(0.0);
        total += used;
        m.insert(
            (*name).to_string(),
            json!(r3(used * 1e6 / items.max(1) as f64)),
        );
    }
    m.insert("total".into(), json!(r3(total * 1e6 / items.max(1) as f64)));
    Value::Object(m)
}

/// Rounds to three decimals.
fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Every phase against one stack; its figures.
async fn measure(args: &Args, stack: &Stack, http: &reqwest::Client) -> anyhow::Result<Value> {
    if let Some(tenant) = args.queries_only {
        let ctx = Arc::new(Ctx {
            http: http.clone(),
            gateway: stack.gateway.clone(),
            token: token(&args.jwt_key, tenant, &["admin", "member"])?,
        });
        let (list, get) = queries(&ctx, args.seconds).await?;
        return Ok(json!({"list_p99_ms": list, "get_p99_ms": get}));
    }
    let tenant = Uuid::new_v4();
    let admin = token(&args.jwt_key, tenant, &["admin", "member"])?;
    // The benchmark's tenant gets limits out of the way: we measure the service, not the plan.
    let res = http
        .put(format!("{}/jobs/v1/admin/tenants/{tenant}/overrides", stack.gateway))
        .bearer_auth(&admin)
        .json(&json!({"enqueue_per_second": 1_000_000_000u64, "max_active_jobs": 1_000_000_000u64, "max_concurrent_leases": 1_000_000_000u64}))
        .send()
        .await
        .context("reaching the gateway")?;
    if !res.status().is_success() {
        bail!(
            "setting the benchmark tenant's overrides answered {}",
            res.status()
        );
    }
    let ctx = Arc::new(Ctx {
        http: http.clone(),
        gateway: stack.gateway.clone(),
        token: admin,
    });
    let s = args.seconds;
    let mut f = serde_json::Map::new();
    if args.seed > 0 {
        let rss_before = stack.command_rss();
        let first = args.seed.min(10_000);
        eprintln!("bench: seeding {first} pending jobs");
        seed(&ctx, first).await?;
        let (list, get) = queries(&ctx, s / 2.0).await?;
        f.insert("list_p99_ms_at_10k".into(), json!(list));
        f.insert("get_p99_ms_at_10k".into(), json!(get));
        f.insert("seeded_jobs_at_first_queries".into(), json!(first));
        if args.seed > first {
            eprintln!("bench: seeding {} more pending jobs", args.seed - first);
            seed(&ctx, args.seed - first).await?;
        }
        if let (Some(before), Some(after)) = (rss_before, stack.command_rss()) {
            f.insert(
                "rss_bytes_per_pending_job".into(),
                json!(r3(after.saturating_sub(before) as f64 / args.seed as f64)),
            );
            f.insert("command_rss_bytes".into(), json!(after));
        }
        let waited = stack.settle_upkeep(http).await;
        f.insert("seed_upkeep_wait_s".into(), json!(waited.map(r3)));
        // At the seed's full size in the state of the 10 k figures (right after a seed): with
        // the figures after the load phases (`list_p99_ms`), flatness and what a burst of
        // finished jobs costs a list show apart.
        let (list, get) = queries(&ctx, s / 2.0).await?;
        f.insert("list_p99_ms_after_seed".into(), json!(list));
        f.insert("get_p99_ms_after_seed".into(), json!(get));
        if args.restart {
            let timed = restart(stack, http).await?;
            f.insert(
                "restart_to_ready_s".into(),
                json!(timed.map(|(_, ready)| r3(ready))),
            );
            f.insert(
                "restart_stop_s".into(),
                json!(timed.map(|(stop, _)| r3(stop))),
            );
            // The restarted process holds the same jobs, placed from its snapshot.
            if timed.is_some() {
                f.insert(
                    "command_rss_bytes_after_restart".into(),
                    json!(stack.command_rss()),
                );
            }
        }
    }

    if let Some(rate) = args.paced_only {
        let wc = worker_client(args)?;
        drain(&wc, &stack.worker_url).await?;
        eprintln!("bench: lease latency at {rate} jobs/s, only");
        let (paced, upkeep) = paced_cycle(&ctx, &wc, stack, args, http, rate).await?;
        if let Some(during) = upkeep {
            f.insert("upkeep_during_phase".into(), json!(during));
        }
        for (name, p) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)] {
            f.insert(
                format!("lease_latency_{name}_ms"),
                json!(paced.lease.pct_ms(p)),
            );
            f.insert(
                format!("lease_latency_{name}_ms_from_created"),
                json!(paced.lease_from_created.pct_ms(p)),
            );
        }
        f.insert(
            "projection_lag_p99_ms".into(),
            json!(paced.lag.pct_ms(0.99)),
        );
        return Ok(Value::Object(f));
    }

    // Whether the dead rows of the load phases were vacuumed before the queries (the list
    // after a burst walks their index entries until then; docs/performance.md).
    let upkeep_before_load = stack.upkeep(http).await.filter(|u| u.enabled);

    eprintln!("bench: raw JetStream publishes");
    let raw = raw_publish(&stack.nats_url, s).await?;
    eprintln!("bench: raw JetStream atomic batches of 100");
    let raw_batch = raw_batch_publish(&stack.nats_url, s, 100).await?;

    eprintln!("bench: enqueue, {} connections", args.concurrency);
    let lat = Arc::new(Lat::default());
    let cpu = cpu_seconds();
    let (_, n, t) = {
        let (c, lat) = (ctx.clone(), lat.clone());
        drive(args.concurrency, s, move || {
            let (c, lat) = (c.clone(), lat.clone());
            async move { enqueue_one(&c, &lat, LOAD_TYPE).await }
        })
        .await
    };
    let enqueue = n as f64 / t;
    let cpu_enqueue = cpu_us_per(&cpu, n);

    eprintln!("bench: batch enqueue, batches of 100");
    let (_, n, t) = {
        let c = ctx.clone();
        drive(8, s, move || {
            let c = c.clone();
            async move { enqueue_batch(&c, 100, LOAD_TYPE).await.map(|(n, _)| n) }
        })
        .await
    };
    let batch = n as f64 / t;

    let wc = worker_client(args)?;
    drain(&wc, &stack.worker_url).await?;

    eprintln!("bench: lease latency at 100 jobs/s");
    let (paced, upkeep) = paced_cycle(&ctx, &wc, stack, args, http, 100.0).await?;
    if let Some(during) = upkeep {
        f.insert("upkeep_during_100_per_s".into(), json!(during));
    }
    eprintln!("bench: the cycle with {} workers", args.workers);
    let cpu = cpu_seconds();
    let full = cycle(&ctx, &wc, stack, args, None).await?;
    let cpu_cycle = cpu_us_per(&cpu, full.completed);
    let half_rate = (full.rate / 2.0).max(1.0);
    eprintln!("bench: lease latency at half the cycle rate ({half_rate:.0} jobs/s)");
    let (half, upkeep) = paced_cycle(&ctx, &wc, stack, args, http, half_rate).await?;
    if let Some(during) = upkeep {
        f.insert("upkeep_during_half_cycle_rate".into(), json!(during));
    }

    // Queries on a read model that has caught up with the cycle, not racing its tail.
    seed(&ctx, 1).await?;
    if let (Some(before), Some(now)) = (&upkeep_before_load, stack.upkeep(http).await) {
        f.insert(
            "jobs_vacuums_before_queries".into(),
            json!(now.jobs_vacuums.saturating_sub(before.jobs_vacuums)),
        );
        f.insert(
            "upkeep_running_at_queries".into(),
            json!(u8::from(now.running)),
        );
    }
    eprintln!("bench: queries");
    let (list, get) = queries(&ctx, s / 2.0).await?;
    let quota: Value = http
        .get(format!("{}/jobs/v1/quota", stack.gateway))
        .bearer_auth(&ctx.token)
        .send()
        .await?
        .json()
        .await?;

    // A failed rebuild costs its figure, not the run's table.
    let rebuild = if args.rebuild {
        rebuild_rate(stack).await.unwrap_or_else(|e| {
            eprintln!("bench: no rebuild figure: {e:#}");
            None
        })
    } else {
        None
    };

    let r = |x: f64| (x * 100.0).round() / 100.0;
    let ratio = |x: f64| r3(x / raw);
    f.insert("raw_publish_per_s".into(), json!(r(raw)));
    f.insert("raw_batch_publish_per_s".into(), json!(r(raw_batch)));
    f.insert("enqueue_per_s".into(), json!(r(enqueue)));
    f.insert("enqueue_p50_ms".into(), json!(lat.pct_ms(0.5)));
    f.insert("enqueue_p99_ms".into(), json!(lat.pct_ms(0.99)));
    f.insert("batch_enqueue_jobs_per_s".into(), json!(r(batch)));
    f.insert("cycle_jobs_per_s".into(), json!(r(full.rate)));
    f.insert("lease_latency_p50_ms".into(), json!(full.lease.pct_ms(0.5)));
    f.insert(
        "lease_latency_p99_ms".into(),
        json!(full.lease.pct_ms(0.99)),
    );
    f.insert(
        "lease_latency_p50_ms_at_100_per_s".into(),
        json!(paced.lease.pct_ms(0.5)),
    );
    f.insert(
        "lease_latency_p99_ms_at_100_per_s".into(),
        json!(paced.lease.pct_ms(0.99)),
    );
    f.insert(
        "lease_latency_p99_ms_at_100_per_s_from_created".into(),
        json!(paced.lease_from_created.pct_ms(0.99)),
    );
    f.insert(
        "lease_latency_p50_ms_at_half_cycle_rate".into(),
        json!(half.lease.pct_ms(0.5)),
    );
    f.insert(
        "lease_latency_p99_ms_at_half_cycle_rate".into(),
        json!(half.lease.pct_ms(0.99)),
    );
    f.insert(
        "lease_latency_p99_ms_at_half_cycle_rate_from_created".into(),
        json!(half.lease_from_created.pct_ms(0.99)),
    );
    f.insert("projection_lag_p99_ms".into(), json!(full.lag.pct_ms(0.99)));
    f.insert(
        "projection_lag_unanswered".into(),
        json!(full.lag_unanswered),
    );
    f.insert("list_p99_ms".into(), json!(list));
    f.insert("get_p99_ms".into(), json!(get));
    f.insert(
        "read_model_jobs_of_tenant".into(),
        quota["data"]["usage"]["active_jobs"].clone(),
    );
    f.insert("cpu_us_per_enqueue".into(), cpu_enqueue);
    f.insert("cpu_us_per_cycle_job".into(), cpu_cycle);
    if let Some(rate) = rebuild {
        f.insert("rebuild_events_per_s".into(), json!(r(rate)));
    }
    // Not a speed: a check that the run's load found no write-model bug (since its start; a
    // restart with --restart counts from then).
    f.insert(
        "command_refused_events".into(),
        json!(stack.command_refused_events(http).await),
    );
    f.insert(
        "ratios".into(),
        json!({
            "raw_batch_to_raw": ratio(raw_batch),
            "enqueue_to_raw": ratio(enqueue),
            "batch_to_raw": ratio(batch),
            "cycle_to_raw": ratio(full.rate),
        }),
    );
    Ok(Value::Object(f))
}

/// The type of the jobs `--seed` makes: nobody leases them, so they stay pending.
const SEED_TYPE: &str = "bench.seed";

/// Enqueues `n` pending jobs in batches of 500 over 8 connections, then waits until the read
/// model shows the last of them (and so everything appended before).
async fn seed(ctx: &Arc<Ctx>, n: u64) -> anyhow::Result<()> {
    let per_batch = n.min(500) as usize;
    let left = Arc::new(AtomicU64::new(n.div_ceil(500)));
    let last_seq = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (c, left, last_seq) = (ctx.clone(), left.clone(), last_seq.clone());
            tokio::spawn(async move {
                while left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                {
                    match enqueue_batch(&c, per_batch, SEED_TYPE).await {
                        Ok((_, seq)) => {
                            last_seq.fetch_max(seq, Ordering::Relaxed);
                        }
                        Err(e) => eprintln!("bench: seed: {e:#}"),
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let enqueued = start.elapsed().as_secs_f64();
    // Read-your-writes on any read waits for the projector to reach the last batch.
    let seq = last_seq.load(Ordering::Relaxed);
    loop {
        let res = ctx
            .http
            .get(format!("{}/jobs/v1/jobs?limit=1", ctx.gateway))
            .bearer_auth(&ctx.token)
            .header("x-min-event-seq", seq.to_string())
            .send()
            .await?;
        if res.status().is_success() {
            break;
        }
        if start.elapsed() > Duration::from_secs(3600) {
            bail!("the read model did not reach sequence {seq} within an hour");
        }
    }
    eprintln!(
        "bench: seeded {n} jobs: enqueued in {enqueued:.1} s, projected in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Leases and completes whatever earlier phases (and runs) left of the load and cycle types,
/// for at most 120 s, so the measured cycle starts from an empty queue.
async fn drain(wc: &reqwest::Client, worker_url: &str) -> anyhow::Result<()> {
    eprintln!("bench: draining");
    let drain_until = Instant::now() + Duration::from_secs(120);
    loop {
        let r = wc
            .post(format!("{worker_url}/jobs/v1/worker/lease"))
            .json(&json!({"types": [LOAD_TYPE, CYCLE_TYPE], "max_jobs": 100}))
            .send()
            .await?;
        let v: Value = r.json().await?;
        let jobs = v["data"]["jobs"].as_array().cloned().unwrap_or_default();
        if jobs.is_empty() || Instant::now() > drain_until {
            return Ok(());
        }
        let futs: FuturesUnordered<_> = jobs
            .iter()
            .map(|j| {
                wc.post(format!(
                    "{worker_url}/jobs/v1/worker/jobs/{}/complete",
                    j["id"].as_str().unwrap_or_default()
                ))
                .json(&json!({"lease_id": j["lease"]["lease_id"]}))
                .send()
            })
            .collect();
        futs.for_each(|_| async {}).await;
    }
}

struct Cycle {
    /// Completions per second at steady state (after 20 % warm-up).
    rate: f64,
    /// Jobs completed in the whole phase (warm-up included).
    completed: u64,
    /// Enqueue acknowledged to the job in a worker's hands, after the warm-up.
    lease: Arc<Lat>,
    /// The job's `created_at` (before its append) to the job in a worker's hands, after the
    /// warm-up: the stricter figure, which also counts the enqueue's own append.
    lease_from_created: Arc<Lat>,
    /// Enqueue acknowledged to readable through query-svc.
    lag: Arc<Lat>,
    /// Lag samples whose read did not answer 200 (query-svc waits at most 5 s for
    /// `x-min-event-seq`): a lag beyond that, or an error.
    lag_unanswered: u64,
}

/// Workers lease and complete while producers enqueue: as fast as they can (`per_s` None), or
/// one producer at a steady `per_s`.
/// The cycle paced at `rate` jobs/s, and whether the projector's upkeep worked on a table
/// beside it ([`Upkeep::during`]; None without projector metrics): the latency phases the
/// upkeep overlaps are the ones whose tail moves (docs/performance.md).
async fn paced_cycle(
    ctx: &Arc<Ctx>,
    wc: &reqwest::Client,
    stack: &Stack,
    args: &Args,
    http: &reqwest::Client,
    rate: f64,
) -> anyhow::Result<(Cycle, Option<u8>)> {
    let before = stack.upkeep(http).await;
    let phase = cycle(ctx, wc, stack, args, Some(rate)).await?;
    Ok((phase, Upkeep::during(&before, &stack.upkeep(http).await)))
}

async fn cycle(
    ctx: &Arc<Ctx>,
    wc: &reqwest::Client,
    stack: &Stack,
    args: &Args,
    per_s: Option<f64>,
) -> anyhow::Result<Cycle> {
    let s = args.seconds;
    // Latencies count from the end of the warm-up, like the rate: the first requests also open
    // the workers' TLS connections.
    let warm_from = Instant::now() + Duration::from_secs_f64(s * 0.2);
    let from_created = Arc::new(Lat::default());
    let handoff = Arc::new(Handoff::default());
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..args.workers)
        .map(|_| {
            let (wc, url, stop, completed, from_created, handoff) = (
                wc.clone(),
                stack.worker_url.clone(),
                stop.clone(),
                completed.clone(),
                from_created.clone(),
                handoff.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(r) = wc
                        .post(format!("{url}/jobs/v1/worker/lease"))
                        .json(&json!({"types": [CYCLE_TYPE], "max_jobs": 10, "wait_seconds": 1}))
                        .send()
                        .await
                    else {
                        continue;
                    };
                    let Ok(body) = r.bytes().await else {
                        continue;
                    };
                    let Ok(answer) = serde_json::from_slice::<LeaseAnswer>(&body) else {
                        continue;
                    };
                    let (now, in_hand) = (chrono::Utc::now(), Instant::now());
                    let jobs = answer.data.jobs;
                    {
                        let mut handed = handoff.handed.lock().expect("lock");
                        for j in &jobs {
                            handed.insert(j.id, in_hand);
                        }
                    }
                    if in_hand >= warm_from {
                        for j in &jobs {
                            from_created.add((now - j.created_at).to_std().unwrap_or_default());
                        }
                    }
                    // A worker runs the jobs it holds at once (no-op jobs), completing each.
                    let done = futures::future::join_all(jobs.iter().map(|j| {
                        wc.post(format!("{url}/jobs/v1/worker/jobs/{}/complete", j.id))
                            .header(reqwest::header::CONTENT_TYPE, "application/json")
                            .body(format!(r#"{{"lease_id":{}}}"#, j.lease.lease_id))
                            .send()
                    }))
                    .await;
                    let ok = done
                        .into_iter()
                        .filter(|r| r.as_ref().is_ok_and(|r| r.status() == 200))
                        .count();
                    completed.fetch_add(ok as u64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Projection lag: enqueue, then read it back asking for read-your-writes.
    let lag = Arc::new(Lat::default());
    let unanswered = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (c, stop, lag, unanswered) =
            (ctx.clone(), stop.clone(), lag.clone(), unanswered.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(res) = c
                    .http
                    .post(format!("{}/jobs/v1/enqueue", c.gateway))
                    .bearer_auth(&c.token)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(enqueue_body(CYCLE_TYPE))
                    .send()
                    .await
                else {
                    continue;
                };
                let seq = res
                    .headers()
                    .get("x-event-seq")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("0")
                    .to_string();
                let Ok(v) = res.json::<Value>().await else {
                    continue;
                };
                let t = Instant::now();
                let got = c
                    .http
                    .get(format!(
                        "{}/jobs/v1/jobs/{}",
                        c.gateway,
                        v["data"]["id"].as_str().unwrap_or_default()
                    ))
                    .bearer_auth(&c.token)
                    .header("x-min-event-seq", seq)
                    .send()
                    .await;
                if got.is_ok_and(|r| r.status() == 200) {
                    lag.add(t.elapsed());
                } else {
                    unanswered.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let warm = s * 0.2;
    let measure = {
        let completed = completed.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(warm)).await;
            let (c0, t0) = (completed.load(Ordering::Relaxed), Instant::now());
            tokio::time::sleep(Duration::from_secs_f64(s * 0.8)).await;
            (completed.load(Ordering::Relaxed) - c0) as f64 / t0.elapsed().as_secs_f64()
        })
    };
    let producer_lat = Arc::new(Lat::default());
    match per_s {
        None => {
            let (c, lat, h) = (ctx.clone(), producer_lat.clone(), handoff.clone());
            drive(args.concurrency / 4 + 1, s, move || {
                let (c, lat, h) = (c.clone(), lat.clone(), h.clone());
                async move { enqueue_handed(&c, &lat, &h).await }
            })
            .await;
        }
        Some(rate) => {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let deadline = Instant::now() + Duration::from_secs_f64(s);
            let mut sent = FuturesUnordered::new();
            while Instant::now() < deadline {
                tick.tick().await;
                let (c, lat, h) = (ctx.clone(), producer_lat.clone(), handoff.clone());
                sent.push(tokio::spawn(
                    async move { enqueue_handed(&c, &lat, &h).await },
                ));
            }
            while let Some(r) = sent.next().await {
                if let Ok(Err(e)) = r {
                    eprintln!("bench: {e:#}");
                }
            }
        }
    }
    let rate = measure.await?;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let _ = sampler.await;
    Ok(Cycle {
        rate,
        completed: completed.load(Ordering::Relaxed),
        lease: Arc::new(handoff.latencies(warm_from)),
        lease_from_created: from_created,
        lag,
        lag_unanswered: unanswered.load(Ordering::Relaxed),
    })
}

/// p99 of list and get latency (ms) over `seconds` at 8 connections; the p50 and maximum of
/// each go to stderr, to tell a slow tail from a slow service.
async fn queries(ctx: &Arc<Ctx>, seconds: f64) -> anyhow::Result<(Option<f64>, Option<f64>)> {
    let list_lat = Arc::new(Lat::default());
    let get_lat = Arc::new(Lat::default());
    let probe: Value = ctx
        .http
        .get(format!("{}/jobs/v1/jobs?limit=1", ctx.gateway))
        .bearer_auth(&ctx.token)
        .send()
        .await?
        .json()
        .await?;
    let some_id = probe["data"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (c, list, get, id) = (ctx.clone(), list_lat.clone(), get_lat.clone(), some_id);
    drive(8, seconds, move || {
        let (c, list, get, id) = (c.clone(), list.clone(), get.clone(), id.clone());
        async move {
            let t = Instant::now();
            c.http
                .get(format!(
                    "{}/jobs/v1/jobs?limit=20&status=pending",
                    c.gateway
                ))
                .bearer_auth(&c.token)
                .send()
                .await?
                .bytes()
                .await?;
            list.add(t.elapsed());
            let t = Instant::now();
            c.http
                .get(format!("{}/jobs/v1/jobs/{id}", c.gateway))
                .bearer_auth(&c.token)
                .send()
                .await?
                .bytes()
                .await?;
            get.add(t.elapsed());
            Ok(2)
        }
    })
    .await;
    for (name, lat) in [("list", &list_lat), ("get", &get_lat)] {
        // Counted in a statement of its own: `pct_ms` takes the same lock.
        let requests = lat.0.lock().expect("lock").len();
        eprintln!(
            "bench: {name}: {requests} requests, p50 {:?} ms, p99 {:?} ms, max {:?} ms",
            lat.pct_ms(0.5),
            lat.pct_ms(0.99),
            lat.pct_ms(1.0)
        );
    }
    Ok((list_lat.pct_ms(0.99), get_lat.pct_ms(0.99)))
}

/// Restarts command-svc with the stack's RESTART_COMMAND. Returns how long the command took
/// (the old process's graceful stop, which writes its snapshot, and the new one's start), and
/// the time from its return to `/readyz` answering 200. None when the stack does not say how.
async fn restart(stack: &Stack, http: &reqwest::Client) -> anyhow::Result<Option<(f64, f64)>> {
    let (Some(cmd), Some(ready)) = (&stack.restart_command, &stack.command_ready) else {
        eprintln!("bench: --restart: the stack has no RESTART_COMMAND/COMMAND_READY");
        return Ok(None);
    };
    eprintln!("bench: restarting command-svc");
    let stopping = Instant::now();
    let status = tokio::process::Command::new("sh")
        .args(["-c", cmd])
        .status()
        .await
        .context("running the restart command")?;
    if !status.success() {
        bail!("the restart command failed: {status}");
    }
    let stopped = stopping.elapsed().as_secs_f64();
    let start = Instant::now();
    loop {
        let ok = http
            .get(ready)
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            return Ok(Some((stopped, start.elapsed().as_secs_f64())));
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!("command-svc was not ready 600 s after its restart");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the stack's REBUILD_COMMAND (`projector rebuild`) and reads its events/s up to the
/// swap (the old tables' drop after it waits for whoever holds them) from the line it prints.
/// None when the stack does not say how.
async fn rebuild_rate(stack: &Stack) -> anyhow::Result<Option<f64>> {
    let Some(cmd) = &stack.rebuild_command else {
        eprintln!("bench: --rebuild: the stack has no REBUILD_COMMAND");
        return Ok(None);
    };
    eprintln!("bench: projector rebuild");
    let out = tokio::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .await
        .context("running the rebuild command")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "the rebuild failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // "rebuilt the read model: N events in S s (R events/s) up to the swap, checkpoint C, ..."
    let number_before = |marker: &str| -> Option<f64> {
        let before = &text[..text.find(marker)?];
        before.split_whitespace().last()?.parse().ok()
    };
    match (number_before(" events in"), number_before(" s (")) {
        (Some(events), Some(secs)) if secs > 0.0 => Ok(Some(events / secs)),
        _ => bail!("could not read the rebuild's report: {text}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_is_the_unlabelled_series_of_that_name() {
        let text = "# HELP jobs_x Things.\n# TYPE jobs_x counter\n\
                    jobs_x_total{table=\"jobs\"} 7\njobs_x_total 3\njobs_x_running 1\n";
        assert_eq!(sample(text, "jobs_x_total"), Some(3.0));
        assert_eq!(sample(text, "jobs_x_running"), Some(1.0));
        assert_eq!(sample(text, "jobs_x"), None);
        assert_eq!(sample("jobs_x_total oops\n", "jobs_x_total"), None);
    }

    #[test]
    fn a_sum_is_every_series_of_that_name_and_no_other() {
        let text = "# TYPE jobs_t_total counter\n\
                    jobs_t_total{table=\"jobs\",action=\"vacuum\"} 2\n\
                    jobs_t_total{table=\"job_events\",action=\"analyze\"} 5\n\
                    jobs_t_total_other 100\njobs_t 1000\n";
        assert_eq!(sum_of(text, "jobs_t_total"), 7.0);
        assert_eq!(sum_of("jobs_t_total 4\n", "jobs_t_total"), 4.0);
        assert_eq!(sum_of("", "jobs_t_total"), 0.0);
    }

    #[test]
    fn upkeep_during_a_phase_is_a_round_at_either_end_or_a_table_done_in_it() {
        let at = |running: bool, rounds: u64, actions: u64| {
            Some(Upkeep {
                enabled: true,
                running,
                rounds,
                jobs_vacuums: 0,
                actions,
            })
        };
        // Rounds that found nothing to do do not count.
        assert_eq!(Upkeep::during(&at(false, 1, 4), &at(false, 3, 4)), Some(0));
        assert_eq!(Upkeep::during(&at(true, 1, 4), &at(false, 1, 4)), Some(1));
        assert_eq!(Upkeep::during(&at(false, 1, 4), &at(true, 1, 4)), Some(1));
        assert_eq!(Upkeep::during(&at(false, 1, 4), &at(false, 2, 5)), Some(1));
        // No projector metrics at either end: no figure.
        assert_eq!(Upkeep::during(&None, &at(false, 1, 4)), None);
        assert_eq!(Upkeep::during(&at(false, 1, 4), &None), None);
    }
}
