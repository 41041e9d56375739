//! projector configuration: environment variables only (see `--help`).

use std::net::SocketAddr;

use common::config::{LogArgs, NatsArgs};

/// projector: builds the Postgres read model from the JOBS_EVENTS stream.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "projector", version, about)]
pub struct Config {
    /// Address of the HTTP listener (/healthz, /readyz, /metrics).
    #[arg(long, env = "JOBS_PROJECTOR_ADDR", default_value = "127.0.0.1:8082")]
    pub projector_addr: SocketAddr,
    /// Postgres URL of the read model.
    #[arg(
        long,
        env = "JOBS_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/jobs"
    )]
    pub database_url: String,
    /// Most events applied in one transaction.
    #[arg(long, env = "JOBS_PROJECTOR_BATCH", default_value_t = 500)]
    pub batch_size: usize,
    /// Milliseconds a batch waits, after its first event, for more (up to the batch size)
    /// before it is applied; 0 applies whatever has arrived at once. Fewer, larger
    /// transactions cost Postgres less per event; each event waits at most this long more.
    #[arg(long, env = "JOBS_PROJECTOR_LINGER_MS", default_value_t = 10)]
    pub linger_ms: u64,
    /// `rebuild`: events per transaction of the replay.
    #[arg(long, env = "JOBS_REBUILD_BATCH", default_value_t = 5000)]
    pub rebuild_batch: usize,
    /// `rebuild`: jobs a generation of the replay's job cache holds (at least 4 batches'
    /// worth is used); a job out of the cache is read back from the new tables.
    #[arg(long, env = "JOBS_REBUILD_CACHE_JOBS", default_value_t = 50_000)]
    pub rebuild_cache_jobs: usize,
    /// Vacuum and analyze the read model from the projector: `auto` (when the server's
    /// autovacuum is off), `always`, or `never`.
    #[arg(
        long,
        env = "JOBS_PROJECTOR_MAINTENANCE",
        value_enum,
        default_value = "auto"
    )]
    pub maintenance: crate::maintenance::Mode,
    /// Seconds between two maintenance rounds.
    #[arg(long, env = "JOBS_PROJECTOR_MAINTENANCE_SECONDS", default_value_t = 60)]
    pub maintenance_seconds: u64,
    #[command(subcommand)]
    pub command: Option<Subcommand>,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Subcommand {
    /// Rebuild the read model from the stream into fresh tables and swap them in while
    /// everything keeps running; prints the rate.
    Rebuild,
}
