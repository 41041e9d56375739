//! Read-model upkeep where Postgres does none: with `autovacuum` off, the projector's upserts
//! leave the tables bloated and their statistics stale, and the planner soon reads a 300 MB
//! table to find 100 rows (seen here: each batch's `SELECT … WHERE id = ANY($1)` went from
//! 0.2 ms to 100 ms). So, when autovacuum is off (or `JOBS_PROJECTOR_MAINTENANCE=always`),
//! the projector looks at the tables it writes every `JOBS_PROJECTOR_MAINTENANCE_SECONDS`
//! and vacuums or analyzes those that changed enough, by autovacuum's own rule (a base of 50
//! rows plus a fraction of the table). Vacuuming a million-row table every minute whether it
//! needed it or not cost up to 5 s of I/O a round and showed in the query latency.

use std::time::Duration;

use sqlx::{Executor, PgPool};
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

/// What a table needs, by autovacuum's default rule: a vacuum once its dead rows pass
/// 50 + 20 % of its live rows, an analyze once its changes since the last one pass
/// 50 + 10 %.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upkeep {
    Nothing,
    Analyze,
    /// `VACUUM (ANALYZE)`.
    Vacuum,
}

pub fn upkeep(live: i64, dead: i64, modified_since_analyze: i64) -> Upkeep {
    let live = live.max(0) as f64;
    if dead as f64 > 50.0 + 0.2 * live {
        Upkeep::Vacuum
    } else if modified_since_analyze as f64 > 50.0 + 0.1 * live {
        Upkeep::Analyze
    } else {
        Upkeep::Nothing
    }
}

/// autovacuum's own throttle (`autovacuum_vacuum_cost_delay` 2 ms, and `vacuum_cost_limit`'s
/// default of 200), for the projector's VACUUM and ANALYZE.
const VACUUM_COST: &str = "SET vacuum_cost_delay = '2ms'; SET vacuum_cost_limit = 200";

/// One round: each table vacuumed or analyzed if it needs it (simple protocol: VACUUM cannot
/// be prepared inside a transaction block). Returns how many tables got either.
pub async fn round(pool: &PgPool) -> anyhow::Result<usize> {
    let mut done = 0;
    for table in TABLES {
        let counts: Option<(i64, i64, i64)> = sqlx::query_as(
            "SELECT n_live_tup, n_dead_tup, n_mod_since_analyze FROM pg_stat_user_tables \
             WHERE relname = $1 AND schemaname = current_schema()",
        )
        .bind(table)
        .fetch_optional(pool)
        .await
        .map_err(|e| anyhow::anyhow!("reading {table}'s statistics: {e}"))?;
        let Some((live, dead, modified)) = counts else {
            continue;
        };
        let sql = match upkeep(live, dead, modified) {
            Upkeep::Nothing => continue,
            Upkeep::Analyze => format!("ANALYZE {table}"),
            Upkeep::Vacuum => format!("VACUUM (ANALYZE) {table}"),
        };
        // Throttled as autovacuum throttles itself (2 ms of sleep per 200 cost units): a
        // manual VACUUM runs at full speed by default, and on a 2-core machine one of the
        // 1 M-row table took lease latency p99 to 750-850 ms while it ran; throttled, 71 ms
        // (docs/performance.md). One connection, so the setting applies to the VACUUM.
        let mut conn = pool
            .acquire()
            .await
            .map_err(|e| anyhow::anyhow!("a connection for {sql}: {e}"))?;
        conn.execute(sqlx::raw_sql(VACUUM_COST))
            .await
            .map_err(|e| anyhow::anyhow!("{VACUUM_COST}: {e}"))?;
        let result = conn.execute(sqlx::raw_sql(&sql)).await;
        // Back to the server's setting before the connection returns to the pool.
        let reset = conn
            .execute(sqlx::raw_sql(
                "RESET vacuum_cost_delay; RESET vacuum_cost_limit",
            ))
            .await;
        result.map_err(|e| anyhow::anyhow!("{sql}: {e}"))?;
        reset.map_err(|e| anyhow::anyhow!("resetting the vacuum cost: {e}"))?;
        done += 1;
    }
    Ok(done)
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
            Ok(0) => {}
            Ok(tables) => tracing::info!(
                tables,
                ms = started.elapsed().as_millis() as u64,
                "read model vacuumed or analyzed where it had changed enough"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "vacuuming the read model failed; next round will retry")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_get_upkeep_by_autovacuums_rule() {
        assert_eq!(upkeep(0, 0, 0), Upkeep::Nothing);
        assert_eq!(upkeep(1_000_000, 150_000, 90_000), Upkeep::Nothing);
        assert_eq!(upkeep(1_000_000, 150_000, 100_051), Upkeep::Analyze);
        assert_eq!(upkeep(1_000_000, 200_051, 0), Upkeep::Vacuum);
        assert_eq!(upkeep(10, 53, 0), Upkeep::Vacuum);
        assert_eq!(upkeep(10, 10, 52), Upkeep::Analyze);
    }
}
