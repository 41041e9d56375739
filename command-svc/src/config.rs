//! command-svc configuration: environment variables only (see `--help`).

use std::net::SocketAddr;

use common::config::{AuthArgs, LogArgs, NatsArgs};

/// command-svc: enqueue and manage jobs (the write side of the Jobs Service).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "command-svc", version, about)]
pub struct Config {
    /// Address of the public HTTP listener.
    #[arg(long, env = "JOBS_COMMAND_ADDR", default_value = "127.0.0.1:8080")]
    pub command_addr: SocketAddr,
    /// Largest job payload accepted, in bytes (serialized JSON); larger answers 413.
    #[arg(long, env = "JOBS_MAX_PAYLOAD_BYTES", default_value_t = 256 * 1024)]
    pub max_payload_bytes: usize,
    /// Largest request body of a batch enqueue, in bytes; larger answers 413.
    #[arg(long, env = "JOBS_MAX_BATCH_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_batch_body_bytes: usize,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub log: LogArgs,
}
