//! query-svc configuration: environment variables only (see `--help`).

use std::net::SocketAddr;

use common::config::{AuthArgs, LogArgs, NatsArgs, PlanArgs};

/// query-svc: list and read jobs (the read side of the Jobs Service).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "query-svc", version, about)]
pub struct Config {
    /// Address of the public HTTP listener.
    #[arg(long, env = "JOBS_QUERY_ADDR", default_value = "127.0.0.1:8081")]
    pub query_addr: SocketAddr,
    /// Postgres URL of the read model.
    #[arg(
        long,
        env = "JOBS_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/jobs"
    )]
    pub database_url: String,
    /// Secret that signs pagination cursors; every query-svc instance must share it.
    /// Defaults to one derived from the token verification key.
    #[arg(long, env = "JOBS_CURSOR_SECRET", hide_env_values = true)]
    pub cursor_secret: Option<String>,
    /// Postgres connections in the pool.
    #[arg(long, env = "JOBS_QUERY_DB_POOL", default_value_t = 16)]
    pub db_pool: u32,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub plans: PlanArgs,
    #[command(flatten)]
    pub log: LogArgs,
}
