//! `bench`: measures a running Jobs Service (deploy/up's, or one it is pointed at) against the
//! physical limit of its own NATS server, in one run, and prints a table for people and, last,
//! one JSON line for machines. It starts nothing itself.
//!
//! Phases: raw pipelined JetStream publishes (the reference), HTTP enqueue at a concurrency,
//! batch enqueue, the full cycle (enqueue while mTLS workers lease and complete), then query
//! latency on whatever the read model holds. Every throughput is also given as a ratio of
//! `raw_publish_per_s`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde_json::{json, Value};
use uuid::Uuid;

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
    /// Before measuring, fill the read model with this many jobs (batches of 500).
    #[arg(long, default_value_t = 0)]
    seed: u64,
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

async fn raw_publish(nats: &str, seconds: f64) -> anyhow::Result<f64> {
    let client = common::nats::connect_once(nats)
        .await
        .context("connecting to NATS")?;
    let js = async_nats::jetstream::new(client);
    // One reference stream (one benchmark at a time), made afresh.
    let name = "BENCH_RAW".to_string();
    let prefix = format!("bench.raw.{}", Uuid::new_v4().simple());
    let _ = js.delete_stream(&name).await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.clone(),
        subjects: vec!["bench.raw.>".to_string()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .context("creating the reference stream")?;
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
    let _ = js.delete_stream(&name).await;
    Ok(rate)
}

/// Atomic batches of `size` 256-byte messages (expected-sequence 0, unique subjects), `inflight`
/// batches at a time, to a file-storage stream on the same server: what one store write
/// carrying many events reaches here (the ceiling of group commit and of batch enqueue).
/// Returns messages per second.
async fn raw_batch_publish(nats: &str, seconds: f64, size: usize) -> anyhow::Result<f64> {
    use jetstream_extra::batch_publish::BatchPublishExt;
    let client = common::nats::connect_once(nats)
        .await
        .context("connecting to NATS")?;
    let js = async_nats::jetstream::new(client);
    let name = "BENCH_RAW_BATCH".to_string();
    let prefix = format!("bench.batch.{}", Uuid::new_v4().simple());
    let _ = js.delete_stream(&name).await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.clone(),
        subjects: vec!["bench.batch.>".to_string()],
        storage: async_nats::jetstream::stream::StorageType::File,
        allow_atomic_publish: true,
        ..Default::default()
    })
    .await
    .context("creating the batch reference stream")?;
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
    let _ = js.delete_stream(&name).await;
    Ok(rate)
}

/// Atomic batches the batch reference keeps in flight.
const RAW_BATCHES_IN_FLIGHT: usize = 8;

fn bytes_256() -> bytes::Bytes {
    bytes::Bytes::from(vec![b'x'; 256])
}

struct Ctx {
    http: reqwest::Client,
    args: Args,
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
    let t = Instant::now();
    let res = c
        .http
        .post(format!("{}/jobs/v1/enqueue", c.args.gateway))
        .bearer_auth(&c.token)
        .json(&payload(job_type))
        .send()
        .await?;
    if res.status() != 201 {
        bail!("enqueue answered {}", res.status());
    }
    lat.add(t.elapsed());
    Ok(1)
}

async fn enqueue_batch(c: &Ctx, n: usize) -> anyhow::Result<u64> {
    let jobs: Vec<Value> = (0..n).map(|_| payload(LOAD_TYPE)).collect();
    let res = c
        .http
        .post(format!("{}/jobs/v1/enqueue/batch", c.args.gateway))
        .bearer_auth(&c.token)
        .json(&json!({ "jobs": jobs }))
        .send()
        .await?;
    if res.status() != 201 {
        bail!("batch enqueue answered {}", res.status());
    }
    Ok(n as u64)
}

fn worker_client(a: &Args) -> anyhow::Result<reqwest::Client> {
    let mut id = std::fs::read(&a.cert).with_context(|| format!("reading {}", a.cert))?;
    id.extend(std::fs::read(&a.key).with_context(|| format!("reading {}", a.key))?);
    let ca = std::fs::read(&a.ca).with_context(|| format!("reading {}", a.ca))?;
    Ok(reqwest::Client::builder()
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
    let tenant = Uuid::new_v4();
    let admin = token(&args.jwt_key, tenant, &["admin", "member"])?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    // The benchmark's tenant gets limits out of the way: we measure the service, not the plan.
    let res = http
        .put(format!("{}/jobs/v1/admin/tenants/{tenant}/overrides", args.gateway))
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
        args: args.clone(),
        token: admin,
    });
    let s = args.seconds;

    if args.seed > 0 {
        eprintln!("bench: seeding {} jobs", args.seed);
        let left = Arc::new(AtomicU64::new(args.seed.div_ceil(500)));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (c, left) = (ctx.clone(), left.clone());
                tokio::spawn(async move {
                    while left
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                        .is_ok()
                    {
                        if let Err(e) = enqueue_batch(&c, 500).await {
                            eprintln!("bench: seed: {e:#}");
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }

    eprintln!("bench: raw JetStream publishes");
    let raw = raw_publish(&args.nats_url, s).await?;
    eprintln!("bench: raw JetStream atomic batches of 100");
    let raw_batch = raw_batch_publish(&args.nats_url, s, 100).await?;

    eprintln!("bench: enqueue, {} connections", args.concurrency);
    let lat = Arc::new(Lat::default());
    let (_, n, t) = {
        let (c, lat) = (ctx.clone(), lat.clone());
        drive(args.concurrency, s, move || {
            let (c, lat) = (c.clone(), lat.clone());
            async move { enqueue_one(&c, &lat, LOAD_TYPE).await }
        })
        .await
    };
    let enqueue = n as f64 / t;

    eprintln!("bench: batch enqueue, batches of 100");
    let (_, n, t) = {
        let c = ctx.clone();
        drive(8, s, move || {
            let c = c.clone();
            async move { enqueue_batch(&c, 100).await }
        })
        .await
    };
    let batch = n as f64 / t;

    // Drain what the enqueue phases (and earlier runs) left, for at most 120 s: the cycle's
    // jobs have a type of their own, so whatever is left does not queue ahead of them.
    eprintln!(
        "bench: draining, then the cycle with {} workers",
        args.workers
    );
    let wc = worker_client(&args)?;
    let drain_until = Instant::now() + Duration::from_secs(120);
    loop {
        let r = wc
            .post(format!("{}/jobs/v1/worker/lease", args.worker_url))
            .json(&json!({"types": [LOAD_TYPE, CYCLE_TYPE], "max_jobs": 100}))
            .send()
            .await?;
        let v: Value = r.json().await?;
        let jobs = v["data"]["jobs"].as_array().cloned().unwrap_or_default();
        if jobs.is_empty() || Instant::now() > drain_until {
            break;
        }
        let futs: FuturesUnordered<_> = jobs
            .iter()
            .map(|j| {
                wc.post(format!(
                    "{}/jobs/v1/worker/jobs/{}/complete",
                    args.worker_url,
                    j["id"].as_str().unwrap_or_default()
                ))
                .json(&json!({"lease_id": j["lease"]["lease_id"]}))
                .send()
            })
            .collect();
        futs.for_each(|_| async {}).await;
    }

    let lease_lat = Arc::new(Lat::default());
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..args.workers)
        .map(|_| {
            let (wc, url, stop, completed, lease_lat) = (
                wc.clone(),
                args.worker_url.clone(),
                stop.clone(),
                completed.clone(),
                lease_lat.clone(),
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
                    let Ok(v) = r.json::<Value>().await else {
                        continue;
                    };
                    let now = chrono::Utc::now();
                    let jobs = v["data"]["jobs"].as_array().cloned().unwrap_or_default();
                    for j in &jobs {
                        if let Some(created) = j["created_at"]
                            .as_str()
                            .and_then(|c| c.parse::<chrono::DateTime<chrono::Utc>>().ok())
                        {
                            lease_lat.add((now - created).to_std().unwrap_or_default());
                        }
                    }
                    // A worker runs the jobs it holds at once (no-op jobs), completing each.
                    let done = futures::future::join_all(jobs.iter().map(|j| {
                        wc.post(format!(
                            "{url}/jobs/v1/worker/jobs/{}/complete",
                            j["id"].as_str().unwrap_or_default()
                        ))
                        .json(&json!({"lease_id": j["lease"]["lease_id"]}))
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
    let sampler = {
        let (c, stop, lag) = (ctx.clone(), stop.clone(), lag.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(res) = c
                    .http
                    .post(format!("{}/jobs/v1/enqueue", c.args.gateway))
                    .bearer_auth(&c.token)
                    .json(&payload(CYCLE_TYPE))
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
                        c.args.gateway,
                        v["data"]["id"].as_str().unwrap_or_default()
                    ))
                    .bearer_auth(&c.token)
                    .header("x-min-event-seq", seq)
                    .send()
                    .await;
                if got.is_ok_and(|r| r.status() == 200) {
                    lag.add(t.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let warm = s * 0.2;
    let producer_lat = Arc::new(Lat::default());
    let measure = {
        let completed = completed.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(warm)).await;
            let (c0, t0) = (completed.load(Ordering::Relaxed), Instant::now());
            tokio::time::sleep(Duration::from_secs_f64(s * 0.8)).await;
            (completed.load(Ordering::Relaxed) - c0) as f64 / t0.elapsed().as_secs_f64()
        })
    };
    {
        let (c, lat) = (ctx.clone(), producer_lat.clone());
        drive(args.concurrency / 4 + 1, s, move || {
            let (c, lat) = (c.clone(), lat.clone());
            async move { enqueue_one(&c, &lat, CYCLE_TYPE).await }
        })
        .await;
    }
    let cycle = measure.await?;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let _ = sampler.await;

    eprintln!("bench: queries");
    let list_lat = Arc::new(Lat::default());
    let get_lat = Arc::new(Lat::default());
    let probe: Value = http
        .get(format!("{}/jobs/v1/jobs?limit=1", args.gateway))
        .bearer_auth(&ctx.token)
        .send()
        .await?
        .json()
        .await?;
    let some_id = probe["data"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    {
        let (c, list_lat, get_lat, id) = (
            ctx.clone(),
            list_lat.clone(),
            get_lat.clone(),
            some_id.clone(),
        );
        drive(8, s / 2.0, move || {
            let (c, list_lat, get_lat, id) =
                (c.clone(), list_lat.clone(), get_lat.clone(), id.clone());
            async move {
                let t = Instant::now();
                c.http
                    .get(format!(
                        "{}/jobs/v1/jobs?limit=20&status=completed",
                        c.args.gateway
                    ))
                    .bearer_auth(&c.token)
                    .send()
                    .await?
                    .bytes()
                    .await?;
                list_lat.add(t.elapsed());
                let t = Instant::now();
                c.http
                    .get(format!("{}/jobs/v1/jobs/{id}", c.args.gateway))
                    .bearer_auth(&c.token)
                    .send()
                    .await?
                    .bytes()
                    .await?;
                get_lat.add(t.elapsed());
                Ok(2)
            }
        })
        .await;
    }
    let quota: Value = http
        .get(format!("{}/jobs/v1/quota", args.gateway))
        .bearer_auth(&ctx.token)
        .send()
        .await?
        .json()
        .await?;
    let r = |x: f64| (x * 100.0).round() / 100.0;
    let figures = json!({
        "raw_publish_per_s": r(raw),
        "raw_batch_publish_per_s": r(raw_batch),
        "enqueue_per_s": r(enqueue),
        "enqueue_p50_ms": lat.pct_ms(0.5),
        "enqueue_p99_ms": lat.pct_ms(0.99),
        "batch_enqueue_jobs_per_s": r(batch),
        "cycle_jobs_per_s": r(cycle),
        "lease_latency_p50_ms": lease_lat.pct_ms(0.5),
        "lease_latency_p99_ms": lease_lat.pct_ms(0.99),
        "projection_lag_p99_ms": lag.pct_ms(0.99),
        "list_p99_ms": list_lat.pct_ms(0.99),
        "get_p99_ms": get_lat.pct_ms(0.99),
        "read_model_jobs_of_tenant": quota["data"]["usage"]["active_jobs"],
        "ratios": {
            "enqueue_to_raw": r(enqueue / raw * 100.0) / 100.0,
            "batch_to_raw": r(batch / raw * 100.0) / 100.0,
            "cycle_to_raw": r(cycle / raw * 100.0) / 100.0,
        },
        "settings": {"seconds_per_phase": s, "concurrency": args.concurrency, "workers": args.workers, "seeded": args.seed},
    });
    println!("{:<28} {:>14}", "figure", "value");
    for (k, v) in figures.as_object().expect("an object") {
        if !v.is_object() {
            println!("{k:<28} {:>14}", v.to_string());
        }
    }
    for (k, v) in figures["ratios"].as_object().expect("an object") {
        println!("{k:<28} {:>14}", v.to_string());
    }
    println!("{figures}");
    Ok(())
}
