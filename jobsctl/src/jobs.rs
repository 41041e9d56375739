//! `jobsctl list | get | events | explain | cancel | retry | update`: one job, or a page (or all
//! pages) of them, through the gateway. Reads are eventually consistent: `--min-event-seq N`
//! (the `event seq` a command printed) makes a read wait until the read model has caught up.

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::api::{Api, Call, Failure, Reply};
use crate::config::ApiArgs;
use crate::output::{self, fields, print_raw, print_table, table, text, time};

/// Reads: how fresh the answer must be.
#[derive(clap::Args, Clone, Debug)]
pub struct Fresh {
    /// Wait (up to 5 s) until the read model has applied this event sequence, e.g. the
    /// `event seq` a command printed.
    #[arg(long, value_name = "SEQ")]
    pub min_event_seq: Option<u64>,
}

/// Lists: which page.
#[derive(clap::Args, Clone, Debug)]
pub struct Paging {
    /// Page size (1–100; the service's default is 20).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Start at this page (`page.next_cursor` of the previous one).
    #[arg(long)]
    pub cursor: Option<String>,
    /// Follow `next_cursor` to the last page (NDJSON, one item per line, under --json).
    #[arg(long)]
    pub all: bool,
}

#[derive(clap::Args)]
pub struct ListArgs {
    /// Only jobs in this status: scheduled, pending, leased, completed, dead_lettered, cancelled.
    #[arg(long)]
    status: Option<String>,
    /// Only jobs of this type.
    #[arg(long = "type")]
    job_type: Option<String>,
    /// Only jobs in this queue.
    #[arg(long)]
    queue: Option<String>,
    /// Only jobs of this priority (0–10).
    #[arg(long)]
    priority: Option<u8>,
    /// Only jobs created after this time (RFC 3339).
    #[arg(long)]
    created_after: Option<DateTime<Utc>>,
    /// Only jobs created before this time (RFC 3339).
    #[arg(long)]
    created_before: Option<DateTime<Utc>>,
    /// Oldest first instead of newest first.
    #[arg(long)]
    asc: bool,
    #[command(flatten)]
    paging: Paging,
    #[command(flatten)]
    fresh: Fresh,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(clap::Args)]
pub struct JobArgs {
    /// The job's id.
    id: Uuid,
    #[command(flatten)]
    fresh: Fresh,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(clap::Args)]
pub struct EventsArgs {
    /// The job's id.
    id: Uuid,
    #[command(flatten)]
    paging: Paging,
    #[command(flatten)]
    fresh: Fresh,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(clap::Args)]
pub struct CancelArgs {
    /// The job's id.
    id: Uuid,
    /// Why (kept in the job's history).
    #[arg(long)]
    reason: Option<String>,
    /// Only if the job is still at this version (its ETag); else 412.
    #[arg(long, value_name = "VERSION")]
    if_version: Option<u64>,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(clap::Args)]
pub struct RetryArgs {
    /// The job's id (dead-lettered, cancelled or completed).
    id: Uuid,
    /// Only if the job is still at this version (its ETag); else 412.
    #[arg(long, value_name = "VERSION")]
    if_version: Option<u64>,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(clap::Args)]
pub struct UpdateArgs {
    /// The job's id (scheduled or pending).
    id: Uuid,
    /// New priority, 0–10 (higher runs first).
    #[arg(long)]
    priority: Option<i64>,
    /// New time to run at (RFC 3339).
    #[arg(long)]
    run_at: Option<DateTime<Utc>>,
    /// New payload (JSON).
    #[arg(long, value_parser = parse_json)]
    payload: Option<Value>,
    /// New most attempts (1–100).
    #[arg(long)]
    max_attempts: Option<i64>,
    /// New queue.
    #[arg(long)]
    queue: Option<String>,
    /// Only if the job is still at this version (its ETag); else 412.
    #[arg(long, value_name = "VERSION")]
    if_version: Option<u64>,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// A `--payload`/`--metadata` value.
pub fn parse_json(s: &str) -> Result<Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not JSON: {e}"))
}

fn job_path(id: Uuid) -> String {
    format!("/jobs/v1/jobs/{id}")
}

fn if_match(v: Option<u64>) -> Option<String> {
    v.map(|v| format!("\"{v}\""))
}

/// Fetches one page, or every page with `--all`, handing each to `page`.
pub async fn pages(
    api: &Api,
    call: Call,
    paging: &Paging,
    fresh: &Fresh,
    mut page: impl FnMut(&Reply),
) -> Result<(), Failure> {
    let mut cursor = paging.cursor.clone();
    // Later pages need not wait again: the first one did.
    let mut min_seq = fresh.min_event_seq;
    loop {
        let c = call
            .clone()
            .query("limit", paging.limit)
            .query("cursor", cursor.take())
            .header("x-min-event-seq", min_seq.take());
        let reply = api.send(&c).await?;
        page(&reply);
        let p = &reply.body["page"];
        match p["next_cursor"].as_str() {
            Some(next) if paging.all && p["has_more"] == json!(true) => {
                cursor = Some(next.to_string())
            }
            _ => return Ok(()),
        }
    }
}

/// A list command: the API's JSON (one page), NDJSON items (`--all`), or a table.
pub async fn list_of(
    api: &Api,
    call: Call,
    paging: &Paging,
    fresh: &Fresh,
    noun: &str,
    render: fn(&[Value]) -> comfy_table::Table,
) -> anyhow::Result<()> {
    let mut items = Vec::new();
    let mut last_page = Value::Null;
    pages(api, call, paging, fresh, |reply| {
        let data = reply.data().as_array().cloned().unwrap_or_default();
        if api.json() {
            if paging.all {
                data.iter().for_each(output::print_ndjson);
            } else {
                print_raw(&reply.text);
            }
        } else {
            items.extend(data);
            last_page = reply.body["page"].clone();
        }
    })
    .await?;
    if !api.json() {
        if !items.is_empty() {
            print_table(&render(&items));
        }
        output::more(items.len(), &last_page, noun);
    }
    Ok(())
}

fn jobs_table(jobs: &[Value]) -> comfy_table::Table {
    let mut t = table(&[
        "id", "type", "queue", "status", "pri", "attempts", "run at", "created",
    ]);
    for j in jobs {
        t.add_row(vec![
            text(&j["id"]),
            text(&j["type"]),
            text(&j["queue"]),
            status(j),
            text(&j["priority"]),
            output::attempts(j),
            time(&j["run_at"]),
            time(&j["created_at"]),
        ]);
    }
    output::numeric(&mut t, &[4, 5]);
    t
}

/// The status, with a requested cancel noted.
fn status(job: &Value) -> String {
    let s = text(&job["status"]);
    if job["cancel_requested"] == json!(true) && s == "leased" {
        return format!("{s} (cancel requested)");
    }
    s
}

pub async fn list(api: &Api, a: ListArgs) -> anyhow::Result<()> {
    let call = Call::get("/jobs/v1/jobs")
        .query("status", a.status)
        .query("type", a.job_type)
        .query("queue", a.queue)
        .query("priority", a.priority)
        .query("created_after", a.created_after.map(|t| t.to_rfc3339()))
        .query("created_before", a.created_before.map(|t| t.to_rfc3339()))
        .query("order", a.asc.then_some("asc"));
    list_of(api, call, &a.paging, &a.fresh, "jobs", jobs_table).await
}

/// The job as a table of fields.
pub fn print_job(job: &Value) {
    let mut rows = vec![
        ("id", text(&job["id"])),
        ("type", text(&job["type"])),
        ("queue", text(&job["queue"])),
        ("status", status(job)),
        ("priority", text(&job["priority"])),
        ("attempts", output::attempts(job)),
        ("run at", time(&job["run_at"])),
        ("timeout", format!("{} s", text(&job["timeout_seconds"]))),
        ("created", time(&job["created_at"])),
        ("updated", time(&job["updated_at"])),
    ];
    let lease = &job["lease"];
    if !lease.is_null() {
        rows.push((
            "lease",
            format!(
                "{} until {}",
                text(&lease["worker_id"]),
                time(&lease["expires_at"])
            ),
        ));
    }
    if !job["dead_lettered_at"].is_null() {
        rows.push(("dead-lettered", time(&job["dead_lettered_at"])));
    }
    if !job["last_error"].is_null() {
        rows.push(("last error", output::last_error(job)));
    }
    // The payload always; the others when there is something to see.
    for key in ["progress", "result", "payload", "metadata"] {
        let v = &job[key];
        let empty = v.is_null() || v == &json!({});
        if key == "payload" || !empty {
            rows.push((key, output::short_json(v, 400)));
        }
    }
    rows.push(("version", text(&job["version"])));
    print_table(&fields(&rows));
}

/// What a command did to a job, in one line.
fn print_outcome(reply: &Reply, what: &str) {
    let job = reply.data();
    let seq = reply
        .event_seq
        .map(|s| format!(", event seq {s}"))
        .unwrap_or_default();
    println!(
        "{what} job {}: now {} (version {}{seq})",
        text(&job["id"]),
        status(job),
        text(&job["version"]),
    );
}

/// Prints a command's answer: its JSON, or `what` happened.
pub fn print_reply(api: &Api, reply: &Reply, what: &str) {
    if api.json() {
        print_raw(&reply.text);
    } else {
        print_outcome(reply, what);
    }
}

pub async fn get(api: &Api, a: JobArgs) -> anyhow::Result<()> {
    let call = Call::get(job_path(a.id))
        .header("x-min-event-seq", a.fresh.min_event_seq)
        .about("get", format!("job {}", a.id));
    let reply = api.send(&call).await?;
    if api.json() {
        print_raw(&reply.text);
    } else {
        print_job(reply.data());
    }
    Ok(())
}

fn events_table(events: &[Value]) -> comfy_table::Table {
    let mut t = table(&["seq", "at", "type", "actor", "data"]);
    for e in events {
        t.add_row(vec![
            text(&e["seq"]),
            time(&e["at"]),
            text(&e["type"]),
            format!("{}:{}", text(&e["actor"]["kind"]), text(&e["actor"]["id"])),
            output::short_json(&e["data"], 80),
        ]);
    }
    output::numeric(&mut t, &[0]);
    t
}

pub async fn events(api: &Api, a: EventsArgs) -> anyhow::Result<()> {
    let call =
        Call::get(format!("{}/events", job_path(a.id))).about("read", format!("job {}", a.id));
    list_of(api, call, &a.paging, &a.fresh, "events", events_table).await
}

pub async fn explain(api: &Api, a: JobArgs) -> anyhow::Result<()> {
    let call = Call::get(format!("{}/explain", job_path(a.id)))
        .header("x-min-event-seq", a.fresh.min_event_seq)
        .about("explain", format!("job {}", a.id));
    let reply = api.send(&call).await?;
    if api.json() {
        print_raw(&reply.text);
        return Ok(());
    }
    let d = reply.data();
    println!("job {} is {}", a.id, text(&d["status"]));
    let reasons = d["reasons"].as_array().cloned().unwrap_or_default();
    if reasons.is_empty() {
        println!("nothing holds it back");
        return Ok(());
    }
    let mut t = table(&["reason", "why"]);
    for r in &reasons {
        t.add_row(vec![text(&r["code"]), text(&r["message"])]);
    }
    print_table(&t);
    Ok(())
}

pub async fn cancel(api: &Api, a: CancelArgs) -> anyhow::Result<()> {
    let body = match a.reason {
        Some(r) => json!({ "reason": r }),
        None => json!({}),
    };
    let call = Call::post(format!("{}/cancel", job_path(a.id)), body)
        .header("if-match", if_match(a.if_version))
        .about("cancel", format!("job {}", a.id));
    let reply = api.send(&call).await?;
    print_reply(api, &reply, "cancelled");
    Ok(())
}

pub async fn retry(api: &Api, a: RetryArgs) -> anyhow::Result<()> {
    let call = Call::post(format!("{}/retry", job_path(a.id)), json!({}))
        .header("if-match", if_match(a.if_version))
        .about("retry", format!("job {}", a.id));
    let reply = api.send(&call).await?;
    print_reply(api, &reply, "retried");
    Ok(())
}

pub async fn update(api: &Api, a: UpdateArgs) -> anyhow::Result<()> {
    let mut body = Map::new();
    if let Some(p) = a.priority {
        body.insert("priority".into(), json!(p));
    }
    if let Some(t) = a.run_at {
        body.insert("run_at".into(), json!(t));
    }
    if let Some(p) = a.payload {
        body.insert("payload".into(), p);
    }
    if let Some(m) = a.max_attempts {
        body.insert("max_attempts".into(), json!(m));
    }
    if let Some(q) = a.queue {
        body.insert("queue".into(), json!(q));
    }
    if body.is_empty() {
        anyhow::bail!(
            "nothing to change: pass any of --priority, --run-at, --payload, --max-attempts, --queue"
        );
    }
    let call = Call::new(Method::PATCH, job_path(a.id))
        .body(Value::Object(body))
        .header("if-match", if_match(a.if_version))
        .about("update", format!("job {}", a.id));
    let reply = api.send(&call).await?;
    print_reply(api, &reply, "updated");
    Ok(())
}
