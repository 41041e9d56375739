//! Reading the event history: `jobsctl replay` (filters, NDJSON or a table, `--follow`) and
//! `jobsctl verify` (the per-job hash chain); [`read`] is also what `jobsctl state` folds. All
//! read `JOBS_EVENTS` in stream order with an ordered consumer — batched fetches, no round trip
//! per event.

use std::collections::HashMap;
use std::io::Write;

use anyhow::{bail, Context};
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use chrono::{DateTime, Utc};
use events::platform::PlatformEnvelope;
use events::stream::{parse_job_subject, STREAM_NAME};
use events::Envelope;
use futures::StreamExt;
use serde_json::{json, Value};
use uuid::Uuid;

#[derive(clap::Args, Clone)]
pub struct Source {
    /// NATS server holding JOBS_EVENTS.
    #[arg(long, env = "JOBS_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Only this tenant's events.
    #[arg(long)]
    pub tenant: Option<Uuid>,
    /// Only this job's events (needs --tenant).
    #[arg(long, requires = "tenant")]
    pub job: Option<Uuid>,
}

#[derive(clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    source: Source,
    /// Only these event types (comma-separated), e.g. JobEnqueued,JobCompleted.
    #[arg(long = "type", value_delimiter = ',')]
    types: Vec<String>,
    /// From this stream sequence (inclusive).
    #[arg(long)]
    from_seq: Option<u64>,
    /// Up to this stream sequence (inclusive).
    #[arg(long)]
    to_seq: Option<u64>,
    /// Events at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    /// Events before this time (RFC 3339).
    #[arg(long)]
    until: Option<DateTime<Utc>>,
    /// Keep following new events after the history.
    #[arg(long)]
    follow: bool,
    /// ndjson (one event per line) or table.
    #[arg(long, default_value = "ndjson")]
    format: String,
    /// Machine output: NDJSON, one event per line (the same as --format ndjson).
    #[arg(long)]
    json: bool,
}

/// One message of the stream, decoded as far as it goes.
pub struct Item {
    pub seq: u64,
    pub subject: String,
    pub at: Option<DateTime<Utc>>,
    pub type_name: Option<String>,
    pub json: Value,
    pub event: Option<Envelope>,
}

fn subject(source: &Source) -> String {
    match (source.tenant, source.job) {
        (Some(t), Some(j)) => events::stream::job_subject(t, j),
        (Some(t), None) => format!("jobs.*.{t}.>"),
        _ => "jobs.>".to_string(),
    }
}

/// Reads the stream: every message matching `source` from `start`, in order; stops at the end
/// of the history unless `follow`. `each` returns false to stop.
pub async fn read(
    source: &Source,
    start: DeliverPolicy,
    follow: bool,
    mut each: impl FnMut(Item, u64) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let client = common::nats::connect_once(&source.nats_url)
        .await
        .with_context(|| format!("connecting to {}", source.nats_url))?;
    let js = async_nats::jetstream::new(client);
    let stream = js
        .get_stream(STREAM_NAME)
        .await
        .context("opening JOBS_EVENTS")?;
    let filter = subject(source);
    let mut consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: filter.clone(),
            deliver_policy: start,
            ..Default::default()
        })
        .await
        .context("creating a reader")?;
    let total = consumer.info().await.context("reader info")?.num_pending;
    if total == 0 && !follow {
        return Ok(());
    }
    let mut messages = consumer.messages().await.context("reading")?;
    while let Some(m) = messages.next().await {
        let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
        let info = m.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        let subject = m.subject.to_string();
        let item = if parse_job_subject(&subject).is_some() {
            match Envelope::from_json(&m.payload) {
                Ok(e) => Item {
                    seq,
                    at: Some(e.at),
                    type_name: Some(e.type_name().to_string()),
                    json: serde_json::to_value(&e)?,
                    event: Some(e),
                    subject,
                },
                Err(err) => Item {
                    seq,
                    at: None,
                    type_name: None,
                    json: json!({ "undecodable": err.to_string() }),
                    event: None,
                    subject,
                },
            }
        } else if events::schedule::parse_schedule_subject(&subject).is_some() {
            let s = events::schedule::ScheduleEnvelope::from_json(&m.payload).ok();
            Item {
                seq,
                at: s.as_ref().map(|s| s.at),
                type_name: s.as_ref().map(|s| s.event.type_name().to_string()),
                json: s
                    .as_ref()
                    .map(serde_json::to_value)
                    .transpose()?
                    .unwrap_or(json!({ "undecodable": true })),
                event: None,
                subject,
            }
        } else {
            let p = PlatformEnvelope::from_json(&m.payload).ok();
            Item {
                seq,
                at: p.as_ref().map(|p| p.at),
                type_name: p.as_ref().map(|p| p.event.type_name().to_string()),
                json: p
                    .as_ref()
                    .map(serde_json::to_value)
                    .transpose()?
                    .unwrap_or(json!({ "undecodable": true })),
                event: None,
                subject,
            }
        };
        if !each(item, total)? {
            return Ok(());
        }
        if pending == 0 && !follow {
            return Ok(());
        }
    }
    Ok(())
}

pub async fn replay(a: ReplayArgs) -> anyhow::Result<()> {
    if a.format != "ndjson" && a.format != "table" {
        bail!("--format must be ndjson or table");
    }
    if a.json && a.format == "table" {
        bail!("--json prints NDJSON: it does not go with --format table");
    }
    let start = match (a.from_seq, a.since) {
        (Some(s), _) => DeliverPolicy::ByStartSequence {
            start_sequence: s.max(1),
        },
        (None, Some(t)) => DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::from_unix_timestamp_nanos(
                t.timestamp_nanos_opt().unwrap_or(0) as i128,
            )?,
        },
        _ => DeliverPolicy::All,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} events {per_sec} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    if a.format == "table" {
        writeln!(
            out,
            "{:>10}  {:<24}  {:<20}  {:<36}  {:<36}  actor",
            "seq", "at", "type", "tenant", "job"
        )?;
    }
    let follow = a.follow;
    read(&a.source, start, follow, |item, total| {
        if bar.length().is_none() && total > 1000 && !follow {
            bar.set_length(total);
        }
        bar.inc(1);
        if a.to_seq.is_some_and(|to| item.seq > to) {
            return Ok(false);
        }
        if a.until.is_some_and(|u| item.at.is_some_and(|at| at >= u)) {
            return Ok(false);
        }
        if a.since.is_some_and(|s| item.at.is_some_and(|at| at < s)) {
            return Ok(true);
        }
        if !a.types.is_empty() && !item.type_name.as_ref().is_some_and(|t| a.types.contains(t)) {
            return Ok(true);
        }
        if a.format == "ndjson" {
            let mut v = item.json;
            if let Some(o) = v.as_object_mut() {
                o.insert("seq".into(), json!(item.seq));
                o.insert("subject".into(), json!(item.subject));
            }
            serde_json::to_writer(&mut out, &v)?;
            writeln!(out)?;
        } else {
            let j = &item.json;
            writeln!(
                out,
                "{:>10}  {:<24}  {:<20}  {:<36}  {:<36}  {}:{}",
                item.seq,
                item.at
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                    .unwrap_or_default(),
                item.type_name.clone().unwrap_or_else(|| "?".into()),
                j["tenant_id"].as_str().unwrap_or(""),
                j["job_id"].as_str().unwrap_or(""),
                j["actor"]["kind"].as_str().unwrap_or(""),
                j["actor"]["id"].as_str().unwrap_or(""),
            )?;
        }
        if follow {
            out.flush()?;
        }
        Ok(true)
    })
    .await?;
    bar.finish_and_clear();
    out.flush()?;
    Ok(())
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    source: Source,
    /// Machine output: one JSON document {"intact", "events_checked", "jobs_checked",
    /// "problems"} instead of a line per problem and a summary line.
    #[arg(long)]
    json: bool,
}

/// What can be wrong in a job's chain.
fn problem(seq: u64, job: &str, kind: &str, detail: String) -> Value {
    json!({ "seq": seq, "job_id": job, "problem": kind, "detail": detail })
}

/// Checks every job's hash chain; prints one JSON line per problem and a summary (under
/// `--json`, one document with both). Returns whether the history is intact.
pub async fn verify(a: VerifyArgs) -> anyhow::Result<bool> {
    if a.source.tenant.is_none() {
        bail!("--tenant is required (and --job narrows it to one job)");
    }
    struct Chain {
        last: Option<String>,
        last_seq: u64,
        seen: HashMap<String, u64>,
        events: u64,
    }
    let mut chains: HashMap<String, Chain> = HashMap::new();
    let mut problems: Vec<Value> = Vec::new();
    let mut checked = 0u64;
    read(&a.source, DeliverPolicy::All, false, |item, _| {
        let Some((_, job)) = parse_job_subject(&item.subject) else { return Ok(true) };
        checked += 1;
        let job = job.to_string();
        let chain = chains.entry(job.clone()).or_insert(Chain { last: None, last_seq: 0, seen: HashMap::new(), events: 0 });
        chain.events += 1;
        let Some(env) = item.event else {
            problems.push(problem(item.seq, &job, "altered", "the event does not decode as an event".into()));
            chain.last = None;
            chain.last_seq = item.seq;
            return Ok(true);
        };
        if env.job_id.to_string() != job {
            problems.push(problem(item.seq, &job, "injected", format!("the event names job {} but sits on this job's subject", env.job_id)));
        }
        if chain.events == 1 && env.type_name() != "JobEnqueued" {
            problems.push(problem(item.seq, &job, "missing", "the job's history does not start with JobEnqueued: its first events are missing".into()));
        }
        if env.schema_version >= 2 && env.prev_hash != chain.last && chain.events > 1 {
            let detail;
            let kind = match &env.prev_hash {
                None => {
                    detail = format!("an unchained event in the middle of the job's chain (after seq {})", chain.last_seq);
                    "injected"
                }
                Some(h) if chain.seen.contains_key(h) => {
                    detail = format!("it follows seq {}, not the job's latest event (seq {})", chain.seen[h], chain.last_seq);
                    "reordered"
                }
                Some(_) => {
                    detail = format!("the event it follows is not in the history: an event after seq {} was altered or deleted", chain.last_seq);
                    "missing_or_altered"
                }
            };
            problems.push(problem(item.seq, &job, kind, detail));
        } else if env.schema_version >= 2 && chain.events == 1 && env.prev_hash.is_some() {
            problems.push(problem(item.seq, &job, "missing", "the job's first event names a predecessor that is not in the history".into()));
        }
        let h = env.hash();
        chain.seen.insert(h.clone(), item.seq);
        chain.last = Some(h);
        chain.last_seq = item.seq;
        Ok(true)
    })
    .await?;
    let intact = problems.is_empty();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if a.json {
        serde_json::to_writer(
            &mut out,
            &json!({
                "intact": intact, "events_checked": checked, "jobs_checked": chains.len(),
                "problems": problems,
            }),
        )?;
        writeln!(out)?;
        return Ok(intact);
    }
    for p in &problems {
        serde_json::to_writer(&mut out, p)?;
        writeln!(out)?;
    }
    serde_json::to_writer(
        &mut out,
        &json!({ "intact": intact, "jobs": chains.len(), "events": checked, "problems": problems.len() }),
    )?;
    writeln!(out)?;
    Ok(intact)
}
