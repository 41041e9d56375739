//! `jobsctl enqueue`: one job from flags, or many from an NDJSON file (one enqueue request per
//! line, `-` for stdin) sent through `POST /jobs/v1/enqueue/batch`.
//!
//! Every line gets an outcome, reported with its line number: a line that is not JSON or not a
//! valid request (checked with the service's own validator) is never sent. A batch is all or
//! none, so when the service still refuses one for its content, the lines it names fail and the
//! rest are sent again; a refusal that names no line (a payload over the tenant's limit) splits
//! the batch in halves until it does. Each batch carries an Idempotency-Key, so sending one
//! again after a rate limit, an unavailable service or a lost answer cannot enqueue it twice.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use crate::api::{Api, Call};
use crate::config::ApiArgs;
use crate::jobs::parse_json;
use crate::output::{print_raw, text, time};

mod batch;

/// The most jobs the service takes in one batch.
pub const MAX_BATCH: u16 = 500;

/// One job from flags.
#[derive(clap::Args, Debug)]
#[group(skip)]
pub struct OneJob {
    /// The job's type, e.g. email.send.
    #[arg(
        long = "type",
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    job_type: Option<String>,
    /// The payload (JSON) [default: {}].
    #[arg(long, value_parser = parse_json, conflicts_with = "file")]
    payload: Option<Value>,
    /// 0–10, higher runs first [service default: 5].
    #[arg(long, conflicts_with = "file")]
    priority: Option<i64>,
    /// The queue [service default: default].
    #[arg(long, conflicts_with = "file")]
    queue: Option<String>,
    /// Run at this time (RFC 3339), not before.
    #[arg(long, conflicts_with_all = ["delay_seconds", "file"])]
    run_at: Option<DateTime<Utc>>,
    /// Run this many seconds from now, not before.
    #[arg(long, conflicts_with = "file")]
    delay_seconds: Option<i64>,
    /// Attempts before the job is dead-lettered (1–100) [service default: 3].
    #[arg(long, conflicts_with = "file")]
    max_attempts: Option<i64>,
    /// Seconds an attempt may take [service default: 300].
    #[arg(long, conflicts_with = "file")]
    timeout_seconds: Option<i64>,
    /// Backoff after a failed attempt: the first wait, in seconds (doubling each time).
    #[arg(long, conflicts_with = "file")]
    backoff_base_seconds: Option<i64>,
    /// Backoff after a failed attempt: the longest wait, in seconds.
    #[arg(long, conflicts_with = "file")]
    backoff_max_seconds: Option<i64>,
    /// Metadata kept with the job (a JSON object).
    #[arg(long, value_parser = parse_json, conflicts_with = "file")]
    metadata: Option<Value>,
}

#[derive(clap::Args, Debug)]
pub struct EnqueueArgs {
    #[command(flatten)]
    one: OneJob,
    /// Enqueue every line of this NDJSON file (one enqueue request per line; - for stdin).
    #[arg(long, short = 'f')]
    file: Option<PathBuf>,
    /// Jobs per batch request with --file (1–500).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=MAX_BATCH as i64), requires = "file")]
    batch_size: u16,
    /// Idempotency-Key: the same request with the same key within 24 h enqueues once (with
    /// --file, batch N is sent with KEY:N).
    #[arg(long)]
    idempotency_key: Option<String>,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub async fn run(api: &Api, a: EnqueueArgs) -> anyhow::Result<()> {
    match &a.file {
        Some(path) => batch::file(api, path, a.batch_size as usize, a.idempotency_key).await,
        None => one(api, a.one, a.idempotency_key).await,
    }
}

fn body(j: OneJob) -> Value {
    let mut b = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            b.insert(k.to_string(), v);
        }
    };
    put("type", j.job_type.map(Value::from));
    put("payload", Some(j.payload.unwrap_or_else(|| json!({}))));
    put("priority", j.priority.map(Value::from));
    put("queue", j.queue.map(Value::from));
    put("run_at", j.run_at.map(|t| json!(t)));
    put("delay_seconds", j.delay_seconds.map(Value::from));
    put("max_attempts", j.max_attempts.map(Value::from));
    put("timeout_seconds", j.timeout_seconds.map(Value::from));
    if j.backoff_base_seconds.is_some() || j.backoff_max_seconds.is_some() {
        put(
            "backoff",
            Some(
                json!({"base_seconds": j.backoff_base_seconds, "max_seconds": j.backoff_max_seconds}),
            ),
        );
    }
    put("metadata", j.metadata);
    Value::Object(b)
}

async fn one(api: &Api, j: OneJob, key: Option<String>) -> anyhow::Result<()> {
    let call = Call::post("/jobs/v1/enqueue", body(j)).header("idempotency-key", key);
    let reply = api.send(&call).await?;
    if api.json() {
        print_raw(&reply.text);
        return Ok(());
    }
    let job = reply.data();
    let when = if job["status"] == "scheduled" {
        format!(", runs at {}", time(&job["run_at"]))
    } else {
        String::new()
    };
    let seq = reply
        .event_seq
        .map(|s| format!(" (event seq {s})"))
        .unwrap_or_default();
    println!(
        "enqueued job {}: {} on queue {}, priority {}, {}{when}{seq}",
        text(&job["id"]),
        text(&job["type"]),
        text(&job["queue"]),
        text(&job["priority"]),
        text(&job["status"]),
    );
    Ok(())
}
