//! jobsctl: the Jobs Service's command line for people.
//!
//! Managing jobs over the HTTP API (`login`, `enqueue`, `list`, `get`, `events`, `explain`,
//! `cancel`, `retry`, `update`, `dlq`, `metrics`, `quota`); `token` signs a development token
//! with the key `deploy/up` generated; `worker` is a reference worker; `replay`, `verify`,
//! `state` and `check` read the event stream. Every command takes `--json`: machine-readable
//! output on stdout (one JSON document, or NDJSON when there are several), text for people
//! otherwise; the exit status is the same either way.
//!
//! Exit status: 0 done, 1 an error (the API's, a usage error, unreachable), 2 a violation found
//! by `verify` or `check`.

mod api;
mod config;
mod dlq;
mod enqueue;
mod history;
mod jobs;
mod login;
mod output;
mod state;
mod token;
mod usage;
mod worker;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "jobsctl", version, about = "Command line for the Jobs Service")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    #[command(flatten)]
    Api(ApiCmd),
    /// Print a signed bearer token (RS256 for an RSA key, ES256 for an EC P-256 key).
    Token(token::TokenArgs),
    /// Run jobs: lease over mTLS, run a command per job, complete or fail by its exit status.
    Worker(worker::WorkerArgs),
    /// Print events from JOBS_EVENTS (NDJSON or a table), filtered; --follow tails new ones.
    Replay(history::ReplayArgs),
    /// Check the hash chains of a tenant's (or one job's) events; exit 0 intact, 2 tampered.
    Verify(history::VerifyArgs),
    /// A tenant's queues as they were at an instant (counts by status and type, who held what).
    State(state::StateArgs),
    /// Check the service's invariants on the stream (and the read model); exit 2 on a violation.
    Check(CheckArgs),
}

/// The commands that talk to the HTTP API (through the gateway).
#[derive(Subcommand)]
enum ApiCmd {
    /// Sign in (POST /auth/v1/login) and keep the URL and tokens in the config file.
    Login(login::LoginArgs),
    /// Enqueue one job from flags, or every line of an NDJSON file in batches (--file).
    Enqueue(enqueue::EnqueueArgs),
    /// List jobs, newest first, filtered; --all follows every page.
    List(jobs::ListArgs),
    /// Show one job.
    Get(jobs::JobArgs),
    /// A job's history, oldest first.
    Events(jobs::EventsArgs),
    /// Why a job is not running (yet).
    Explain(jobs::JobArgs),
    /// Cancel a job (a running one: its worker is told at its next heartbeat).
    Cancel(jobs::CancelArgs),
    /// Run a dead-lettered, cancelled or completed job again.
    Retry(jobs::RetryArgs),
    /// Change a waiting job: priority, run time, payload, attempts, queue.
    Update(jobs::UpdateArgs),
    /// The dead-letter queue: list, get, retry (one, or --all matching filters), purge.
    Dlq {
        #[command(subcommand)]
        cmd: dlq::DlqCmd,
    },
    /// The tenant's jobs by status and type, throughput and latency.
    Metrics(usage::MetricsArgs),
    /// The tenant's plan limits and how much of them is in use.
    Quota(usage::QuotaArgs),
}

impl ApiCmd {
    fn args(&self) -> &config::ApiArgs {
        match self {
            ApiCmd::Login(a) => &a.api,
            ApiCmd::Enqueue(a) => &a.api,
            ApiCmd::List(a) => &a.api,
            ApiCmd::Get(a) | ApiCmd::Explain(a) => &a.api,
            ApiCmd::Events(a) => &a.api,
            ApiCmd::Cancel(a) => &a.api,
            ApiCmd::Retry(a) => &a.api,
            ApiCmd::Update(a) => &a.api,
            ApiCmd::Dlq { cmd } => cmd.api(),
            ApiCmd::Metrics(a) => &a.api,
            ApiCmd::Quota(a) => &a.api,
        }
    }

    /// Runs with the settings its options, the environment and the config file give.
    async fn run(self) -> anyhow::Result<()> {
        let api = api::Api::new(config::settings(self.args())?)?;
        match self {
            ApiCmd::Login(a) => login::run(&api, a).await,
            ApiCmd::Enqueue(a) => enqueue::run(&api, a).await,
            ApiCmd::List(a) => jobs::list(&api, a).await,
            ApiCmd::Get(a) => jobs::get(&api, a).await,
            ApiCmd::Events(a) => jobs::events(&api, a).await,
            ApiCmd::Explain(a) => jobs::explain(&api, a).await,
            ApiCmd::Cancel(a) => jobs::cancel(&api, a).await,
            ApiCmd::Retry(a) => jobs::retry(&api, a).await,
            ApiCmd::Update(a) => jobs::update(&api, a).await,
            ApiCmd::Dlq { cmd } => dlq::run(&api, cmd).await,
            ApiCmd::Metrics(a) => usage::metrics(&api, a).await,
            ApiCmd::Quota(a) => usage::quota(&api, a).await,
        }
    }
}

#[derive(clap::Args)]
struct CheckArgs {
    /// NATS server holding JOBS_EVENTS.
    #[arg(long, env = "JOBS_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// The read model to compare with the stream (omit to check the stream alone).
    #[arg(long, env = "JOBS_DATABASE_URL")]
    database_url: Option<String>,
    /// Machine output: one JSON document {"ok", "events_checked", "jobs_checked", "violations"}.
    #[arg(long)]
    json: bool,
}

/// Checks the invariants and prints the violations (a line each, or one JSON document); exits
/// 2 when there is one.
async fn check(a: CheckArgs) -> anyhow::Result<()> {
    let r = jobsctl::check::check(&a.nats_url, a.database_url.as_deref(), &[]).await?;
    if a.json {
        output::print_ndjson(&serde_json::json!({
            "ok": r.ok(),
            "events_checked": r.events,
            "jobs_checked": r.jobs,
            "violations": r.violations,
        }));
    } else {
        for p in &r.problems {
            println!("{p}");
        }
        println!(
            "{} events, {} jobs, {} problems",
            r.events,
            r.jobs,
            r.problems.len()
        );
    }
    if !r.ok() {
        std::process::exit(2);
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with 0; a usage error is an error like any other: 1.
            let _ = e.print();
            std::process::exit(if e.use_stderr() { 1 } else { 0 });
        }
    };
    let result = match cli.command {
        Cmd::Token(a) => token::run(a),
        Cmd::Worker(a) => worker::run(a).await,
        Cmd::Replay(a) => history::replay(a).await,
        Cmd::State(a) => state::state(a).await,
        Cmd::Check(a) => check(a).await,
        Cmd::Verify(a) => match history::verify(a).await {
            Ok(true) => Ok(()),
            Ok(false) => std::process::exit(2),
            Err(e) => Err(e),
        },
        Cmd::Api(cmd) => cmd.run().await,
    };
    if let Err(e) = result {
        // Under --json an answer of the API goes to stdout as it came, the words to stderr.
        if let Some(api::Failure::Api(a)) = e.downcast_ref::<api::Failure>() {
            if a.json_out && !a.body.trim().is_empty() {
                output::print_raw(&a.body);
            }
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
