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
