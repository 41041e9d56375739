//! `jobsctl dlq list | get | retry | purge`: the dead-letter queue. `dlq retry --all` redrives
//! every dead-lettered job matching the filters in one request (`POST /dlq/retry`, with
//! `--dry-run` to see how many first); `dlq purge` asks before it removes a job from the read
//! models, unless `--yes`.

use std::io::{BufRead, IsTerminal, Write};

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::api::{Api, Call};
use crate::config::ApiArgs;
use crate::jobs::{self, Fresh, Paging};
use crate::output::{self, print_raw, print_table, table, text, time};

#[derive(clap::Subcommand)]
pub enum DlqCmd {
    /// List dead-lettered jobs, most recently dead-lettered first.
    List(ListArgs),
    /// Show one dead-lettered job.
    Get(GetArgs),
    /// Requeue one dead-lettered job (ID), or every one matching the filters (--all).
    Retry(RetryArgs),
    /// Remove a dead-lettered job from every read model (its events stay in the stream).
    Purge(PurgeArgs),
}

impl DlqCmd {
    pub fn api(&self) -> &ApiArgs {
        match self {
            DlqCmd::List(a) => &a.api,
            DlqCmd::Get(a) => &a.api,
            DlqCmd::Retry(a) => &a.api,
            DlqCmd::Purge(a) => &a.api,
        }
    }
}

#[derive(clap::Args)]
pub struct ListArgs {
    /// Only jobs of this type.
    #[arg(long = "type")]
    job_type: Option<String>,
    /// Only jobs in this queue.
    #[arg(long)]
    queue: Option<String>,
    #[command(flatten)]
    paging: Paging,
    #[command(flatten)]
    fresh: Fresh,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(clap::Args)]
pub struct GetArgs {
    /// The job's id.
    id: Uuid,
    #[command(flatten)]
    fresh: Fresh,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(clap::Args)]
pub struct RetryArgs {
    /// The job to requeue.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    id: Option<Uuid>,
    /// Requeue every dead-lettered job matching the filters below (all of them without any).
    #[arg(long)]
    all: bool,
    /// With --all: only jobs of this type.
    #[arg(long = "type", requires = "all")]
    job_type: Option<String>,
    /// With --all: only jobs in this queue.
    #[arg(long, requires = "all")]
    queue: Option<String>,
    /// With --all: only jobs whose last error has this code.
    #[arg(long, requires = "all")]
    error_code: Option<String>,
    /// With --all: only jobs dead-lettered after this time (RFC 3339).
    #[arg(long, requires = "all")]
    dead_lettered_after: Option<DateTime<Utc>>,
    /// With --all: only jobs dead-lettered before this time (RFC 3339).
    #[arg(long, requires = "all")]
    dead_lettered_before: Option<DateTime<Utc>>,
    /// With --all: only say how many would be requeued, and show a sample.
    #[arg(long, requires = "all")]
    dry_run: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(clap::Args)]
pub struct PurgeArgs {
    /// The job to purge.
    id: Uuid,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    yes: bool,
    #[command(flatten)]
    api: ApiArgs,
}

pub async fn run(api: &Api, cmd: DlqCmd) -> anyhow::Result<()> {
    match cmd {
        DlqCmd::List(a) => list(api, a).await,
        DlqCmd::Get(a) => get(api, a).await,
        DlqCmd::Retry(a) if a.all => redrive(api, a).await,
        DlqCmd::Retry(a) => retry_one(api, a).await,
        DlqCmd::Purge(a) => purge(api, a).await,
    }
}

fn dlq_table(jobs: &[Value]) -> comfy_table::Table {
    let mut t = table(&[
        "id",
        "type",
        "queue",
        "attempts",
        "dead-lettered",
        "last error",
    ]);
    for j in jobs {
        t.add_row(vec![
            text(&j["id"]),
            text(&j["type"]),
            text(&j["queue"]),
            output::attempts(j),
            time(&j["dead_lettered_at"]),
            output::last_error(j),
        ]);
    }
    output::numeric(&mut t, &[3]);
    t
}

async fn list(api: &Api, a: ListArgs) -> anyhow::Result<()> {
    let call = Call::get("/jobs/v1/dlq")
        .query("type", a.job_type)
        .query("queue", a.queue);
    jobs::list_of(
        api,
        call,
        &a.paging,
        &a.fresh,
        "dead-lettered jobs",
        dlq_table,
    )
    .await
}

async fn get(api: &Api, a: GetArgs) -> anyhow::Result<()> {
    let call = Call::get(format!("/jobs/v1/dlq/{}", a.id))
        .header("x-min-event-seq", a.fresh.min_event_seq)
        .about("get", format!("dead-lettered job {}", a.id));
    let reply = api.send(&call).await?;
    if api.json() {
        print_raw(&reply.text);
    } else {
        jobs::print_job(reply.data());
    }
    Ok(())
}

async fn retry_one(api: &Api, a: RetryArgs) -> anyhow::Result<()> {
    let id = a.id.expect("clap requires an id without --all");
    let call = Call::post(format!("/jobs/v1/dlq/{id}/retry"), json!({}))
        .about("requeue", format!("job {id}"));
    let reply = api.send(&call).await?;
    jobs::print_reply(api, &reply, "requeued");
    Ok(())
}

async fn redrive(api: &Api, a: RetryArgs) -> anyhow::Result<()> {
    let mut body = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            body.insert(k.to_string(), v);
        }
    };
    put("type", a.job_type.map(Value::from));
    put("queue", a.queue.map(Value::from));
    put("error_code", a.error_code.map(Value::from));
    put(
        "dead_lettered_after",
        a.dead_lettered_after.map(|t| json!(t)),
    );
    put(
        "dead_lettered_before",
        a.dead_lettered_before.map(|t| json!(t)),
    );
    put("dry_run", a.dry_run.then_some(Value::Bool(true)));
    let call = Call::post("/jobs/v1/dlq/retry", Value::Object(body));
    let reply = api.send(&call).await?;
    if api.json() {
        print_raw(&reply.text);
        return Ok(());
    }
    let d = reply.data();
    if a.dry_run {
        println!("would requeue {} jobs", text(&d["would_requeue"]));
        let sample = d["sample"].as_array().cloned().unwrap_or_default();
        if !sample.is_empty() {
            println!("for example:");
            print_table(&dlq_table(&sample));
        }
    } else {
        let seq = reply
            .event_seq
            .filter(|s| *s > 0)
            .map(|s| format!(" (event seq {s})"))
            .unwrap_or_default();
        println!("requeued {} jobs{seq}", text(&d["requeued"]));
    }
    Ok(())
}

/// Asks on the terminal (or reads the answer from stdin); true for y/yes.
fn confirm(question: &str) -> anyhow::Result<bool> {
    let mut err = std::io::stderr();
    write!(err, "{question} [y/N] ")?;
    err.flush()?;
    let mut answer = String::new();
    let stdin = std::io::stdin();
    let n = stdin.lock().read_line(&mut answer)?;
    if n == 0 && !stdin.is_terminal() {
        writeln!(err)?;
    }
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

async fn purge(api: &Api, a: PurgeArgs) -> anyhow::Result<()> {
    let id = a.id;
    if !a.yes
        && !confirm(&format!(
            "purge job {id} from the dead-letter queue and every read model (its events stay in the stream)?"
        ))?
    {
        anyhow::bail!("job {id} was not purged (answer y, or pass --yes)");
    }
    let call =
        Call::new(Method::DELETE, format!("/jobs/v1/dlq/{id}")).about("purge", format!("job {id}"));
    let reply = api.send(&call).await?;
    if api.json() {
        print_raw(&reply.text);
    } else {
        let seq = reply
            .event_seq
            .map(|s| format!(" (event seq {s})"))
            .unwrap_or_default();
        println!("purged job {id}{seq}");
    }
    Ok(())
}
