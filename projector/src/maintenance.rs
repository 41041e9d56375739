//! Read-model upkeep where Postgres does none: with `autovacuum` off, the projector's upserts
//! leave the tables bloated and their statistics stale, and the planner soon reads a 300 MB
//! table to find 100 rows (seen here: each batch's `SELECT … WHERE id = ANY($1)` went from
//! 0.2 ms to 100 ms). So, when autovacuum is off (or `JOBS_PROJECTOR_MAINTENANCE=always`),
//! the projector vacuums and analyzes the tables it writes, every
//! `JOBS_PROJECTOR_MAINTENANCE_SECONDS`.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// The tables the projector writes most, in the order they are vacuumed.
const TABLES: [&str; 6] = [
    "jobs",
    "job_events",
    "tenant_type_counts",
    "tenant_throughput",
    "tenant_latency",
    "projector_checkpoint",
];

/// When the projector does the upkeep itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Only when the server's `autovacuum` is off.
    Auto,
    Always,
    Never,
}

/// Whether this server vacuums by itself.
async fn autovacuum_on(pool: &PgPool) -> bool {
    sqlx::query_scalar::<_, String>("SHOW autovacuum")
        .fetch_one(pool)
        .await
        .map(|v| v == "on")
        .unwrap_or(true)
}

/// One round: `VACUUM (ANALYZE)` of each table (simple protocol: VACUUM cannot be prepared
/// inside a transaction block).
pub async fn round(pool: &PgPool) -> anyhow::Result<()> {
    for table in TABLES {
        sqlx::raw_sql(&format!("VACUUM (ANALYZE) {table}"))
            .execute(pool)
            .await
            .map_err(|e| anyhow::anyhow!("vacuuming {table}: {e}"))?;
    }
    Ok(())
}

/// Runs rounds every `every` until `stop`, if `mode` says the projector should.
pub async fn run(pool: PgPool, mode: Mode, every: Duration, stop: CancellationToken) {
    let wanted = match mode {
        Mode::Always => true,
        Mode::Never => false,
        Mode::Auto => !autovacuum_on(&pool).await,
    };
    if !wanted {
        return;
    }
    tracing::warn!(
        every_seconds = every.as_secs(),
        "the projector vacuums and analyzes the read model itself (autovacuum is off or maintenance=always)"
    );
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        let started = std::time::Instant::now();
        match round(&pool).await {
            Ok(()) => tracing::info!(
                ms = started.elapsed().as_millis() as u64,
                "read model vacuumed"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "vacuuming the read model failed; next round will retry")
            }
        }
    }
}
