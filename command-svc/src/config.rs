//! command-svc configuration: environment variables only (see `--help`).

use std::net::SocketAddr;
use std::path::PathBuf;

use common::config::{AuthArgs, LogArgs, NatsArgs, PlanArgs};

/// command-svc: enqueue and manage jobs (the write side of the Jobs Service).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "command-svc", version, about)]
pub struct Config {
    /// Address of the public HTTP listener.
    #[arg(long, env = "JOBS_COMMAND_ADDR", default_value = "127.0.0.1:8080")]
    pub command_addr: SocketAddr,
    /// Address of the worker listener (HTTPS, client certificates required).
    #[arg(long, env = "JOBS_WORKER_ADDR", default_value = "127.0.0.1:8443")]
    pub worker_addr: SocketAddr,
    /// PEM certificate chain the worker listener presents.
    #[arg(long, env = "JOBS_WORKER_TLS_CERT")]
    pub worker_tls_cert: Option<PathBuf>,
    /// PEM private key of that certificate.
    #[arg(long, env = "JOBS_WORKER_TLS_KEY")]
    pub worker_tls_key: Option<PathBuf>,
    /// PEM CA certificate(s) that worker client certificates must chain to.
    #[arg(long, env = "JOBS_WORKER_CLIENT_CA")]
    pub worker_client_ca: Option<PathBuf>,
    /// Largest job payload accepted, in bytes (serialized JSON); larger answers 413.
    #[arg(long, env = "JOBS_MAX_PAYLOAD_BYTES", default_value_t = 256 * 1024)]
    pub max_payload_bytes: usize,
    /// Largest request body of a batch enqueue, in bytes; larger answers 413.
    #[arg(long, env = "JOBS_MAX_BATCH_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_batch_body_bytes: usize,
    /// Group commit: single-event appends that meet while others are being written go out
    /// together as one atomic batch, one store write for many. Off by default: on this
    /// project's 2-core machine the atomic batches cost NATS more CPU than the fsyncs they
    /// save (docs/performance.md); turn it on where fsync, not CPU, is the bound (slow disks).
    #[arg(long, env = "JOBS_GROUP_COMMIT", default_value_t = false, action = clap::ArgAction::Set)]
    pub group_commit: bool,
    /// A lease of several jobs appends their `JobLeased` events as one atomic batch (`true`)
    /// instead of as single appends sent together (`false`, the default). NATS stages every
    /// atomic batch in a file store of its own (files written with `O_SYNC`, directories
    /// fsynced): measured on this project's machine, the single appends cost the server less
    /// CPU with either sync setting, and the cycle ran 5-30 % faster (docs/performance.md).
    /// An atomic batch saves fsyncs only where the server syncs every write and fsync is slow.
    #[arg(long, env = "JOBS_ATOMIC_LEASES", default_value_t = false, action = clap::ArgAction::Set)]
    pub atomic_leases: bool,
    /// Directory of the write model's snapshot: written at graceful shutdown, read at start so
    /// that only the events after it are replayed (a restart with a million pending jobs in
    /// seconds, not a replay of the whole stream). A cache: one that does not fit the stream
    /// is ignored. Unset: no snapshot, every start replays the whole stream. One directory per
    /// instance.
    #[arg(long, env = "JOBS_SNAPSHOT_DIR")]
    pub snapshot_dir: Option<PathBuf>,
    /// With `JOBS_SNAPSHOT_DIR`: seconds between two snapshots while the instance runs (when
    /// the stream moved), so that a start after a crash replays at most about this long's
    /// events. 0: only at shutdown. A snapshot copies the jobs a chunk at a time, never
    /// holding the model for long; with a million jobs it takes a few seconds of CPU.
    #[arg(long, env = "JOBS_SNAPSHOT_SECONDS", default_value_t = 300)]
    pub snapshot_seconds: u64,
    /// Bytes of waiting jobs' payloads kept in memory (the ones stored last). Older waiting
    /// jobs keep only the stream sequence of the event that holds their payload, and a lease
    /// (or any command that answers with the job) reads it back: one direct get per such job,
    /// all of a lease's at once. Only a job that waited behind more than this many bytes of
    /// payloads pays it. `max`: every payload stays in memory.
    #[arg(long, env = "JOBS_PAYLOAD_MEMORY_BYTES", default_value = "16777216", value_parser = parse_budget)]
    pub payload_memory_bytes: usize,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub plans: PlanArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// A byte count, or `max` for no bound.
fn parse_budget(s: &str) -> Result<usize, String> {
    if s.eq_ignore_ascii_case("max") {
        return Ok(usize::MAX);
    }
    s.parse()
        .map_err(|_| format!("{s:?} is neither a number of bytes nor \"max\""))
}
