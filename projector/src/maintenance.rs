//! Read-model upkeep where Postgres does none: with `autovacuum` off, the projector's upserts
//! leave the tables bloated and their statistics stale, and the planner soon reads a 300 MB
//! table to find 100 rows (seen here: each batch's `SELECT … WHERE id = ANY($1)` went from
//! 0.2 ms to 100 ms). So, when autovacuum is off (or `JOBS_PROJECTOR_MAINTENANCE=always`),
//! the projector looks at the tables it writes every `JOBS_PROJECTOR_MAINTENANCE_SECONDS`
//! and vacuums or analyzes those that changed enough, by autovacuum's own rules (a base plus a
//! fraction of the table, for dead rows, for rows inserted since the last vacuum, and for
//! changes since the last analyze), with a table's own settings over the defaults as
//! autovacuum takes them (`jobs` is vacuumed at 2 % dead rows, its indexes always cleaned:
//! migration 0010). Vacuuming a million-row table every minute whether it needed it or not
//! cost up to 5 s of I/O a round and showed in the query latency.
//!
//! The insert rule matters after a bulk load: the first vacuum of a page sets its hint and
//! visibility bits, which dirties it. Without the rule, a million seeded rows were first
//! vacuumed when enough of the table's other rows had died, and that round wrote the whole
//! 1 GB table out again, for 54 s, under whatever ran then (docs/performance.md).

use std::time::Duration;

use prometheus::{Counter, IntCounter, IntCounterVec, IntGauge, Opts};
use sqlx::{Executor, PgPool};
use tokio_util::sync::CancellationToken;

/// What the upkeep shows on `/metrics`: whether it runs here at all, whether a round is
/// running now, how many rounds have finished and what they did. A bulk load is followed by
/// its vacuum (insert rule), which writes the loaded pages once more; an operator (or the
/// bench, before it measures) sees when that is over.
#[derive(Clone)]
pub struct UpkeepMetrics {
    enabled: IntGauge,
    running: IntGauge,
    rounds: IntCounter,
    seconds: Counter,
    done: IntCounterVec,
    deferred: IntCounter,
}

impl UpkeepMetrics {
    pub fn new(m: &common::metrics::Metrics) -> Self {
        let s = Self {
            enabled: IntGauge::new(
                "jobs_projector_upkeep_enabled",
                "1 if the projector vacuums and analyzes the read model itself (autovacuum off, or JOBS_PROJECTOR_MAINTENANCE=always).",
            )
            .expect("valid"),
            running: IntGauge::new(
                "jobs_projector_upkeep_running",
                "1 while an upkeep round (VACUUM/ANALYZE of the read model) runs.",
            )
            .expect("valid"),
            rounds: IntCounter::new(
                "jobs_projector_upkeep_rounds_total",
                "Upkeep rounds finished, whether or not a table needed anything.",
            )
            .expect("valid"),
            seconds: Counter::new(
                "jobs_projector_upkeep_seconds_total",
                "Time spent in upkeep rounds.",
            )
            .expect("valid"),
            done: IntCounterVec::new(
                Opts::new(
                    "jobs_projector_upkeep_tables_total",
                    "Upkeep actions done, by table and action (vacuum, analyze); a VACUUM (ANALYZE) counts as both.",
                ),
                &["table", "action"],
            )
            .expect("valid"),
            deferred: IntCounter::new(
                "jobs_projector_upkeep_deferred_total",
                "Upkeep rounds that stopped before a table because a rebuild of the read model was running (its tables are about to be retired).",
            )
            .expect("valid"),
        };
        m.register(&s.enabled);
        m.register(&s.running);
        m.register(&s.rounds);
        m.register(&s.seconds);
        m.register(&s.done);
        m.register(&s.deferred);
        s
    }
}

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

/// A table's counts, from `pg_stat_user_tables`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub live: i64,
    pub dead: i64,
    /// Rows inserted since the last vacuum.
    pub inserted: i64,
    /// Rows inserted, updated or deleted since the last analyze.
    pub modified: i64,
}

/// When a table is due for a vacuum or an analyze: autovacuum's settings, each a base plus a
/// fraction of the table's live rows. The defaults are the server's; a table's own storage
/// parameters (`ALTER TABLE ... SET (autovacuum_vacuum_scale_factor = ...)`) override them
/// here as they do for autovacuum.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    /// Dead rows (`autovacuum_vacuum_threshold`, `_scale_factor`).
    pub vacuum: (f64, f64),
    /// Rows inserted since the last vacuum (`autovacuum_vacuum_insert_threshold`,
    /// `_scale_factor`; Postgres 13 on).
    pub insert: (f64, f64),
    /// Rows changed since the last analyze (`autovacuum_analyze_threshold`, `_scale_factor`).
    pub analyze: (f64, f64),
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            vacuum: (50.0, 0.2),
            insert: (1_000.0, 0.2),
            analyze: (50.0, 0.1),
        }
    }
}

impl Rules {
    /// The defaults with a table's storage parameters (`pg_class.reloptions`, `name=value`
    /// each) over them; parameters that are not about these rules are ignored.
    pub fn with_options(options: &[String]) -> Self {
        let mut rules = Self::default();
        for option in options {
            let Some((name, value)) = option.split_once('=') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let slot = match name {
                "autovacuum_vacuum_threshold" => &mut rules.vacuum.0,
                "autovacuum_vacuum_scale_factor" => &mut rules.vacuum.1,
                "autovacuum_vacuum_insert_threshold" => &mut rules.insert.0,
                "autovacuum_vacuum_insert_scale_factor" => &mut rules.insert.1,
                "autovacuum_analyze_threshold" => &mut rules.analyze.0,
                "autovacuum_analyze_scale_factor" => &mut rules.analyze.1,
                _ => continue,
            };
            *slot = value;
        }
        rules
    }
}

/// What a table needs by `rules`, each on its own: a vacuum once its dead rows pass their
/// base plus fraction of its live rows (50 + 20 % by default), or once the rows inserted since
/// the last vacuum pass theirs (1,000 + 20 %); an analyze once its changes since the last one
/// pass theirs (50 + 10 %). (Until 2026-12-07 every vacuum also analyzed: on a 1 M-row table
/// that is seconds of throttled random reads for nothing.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upkeep {
    Nothing,
    Analyze,
    Vacuum,
    /// `VACUUM (ANALYZE)`: both are due.
    VacuumAnalyze,
}

pub fn upkeep(c: Counts, rules: &Rules) -> Upkeep {
    let live = c.live.max(0) as f64;
    let past = |n: i64, (base, fraction): (f64, f64)| n as f64 > base + fraction * live;
    let vacuum = past(c.dead, rules.vacuum) || past(c.inserted, rules.insert);
    let analyze = past(c.modified, rules.analyze);
    match (vacuum, analyze) {
        (true, true) => Upkeep::VacuumAnalyze,
        (true, false) => Upkeep::Vacuum,
        (false, true) => Upkeep::Analyze,
        (false, false) => Upkeep::Nothing,
    }
}

/// A table's live, dead, inserted-since-vacuum and changed-since-analyze rows, and its storage
/// parameters.
type StatsRow = (i64, i64, i64, i64, Option<Vec<String>>);

/// autovacuum's own throttle (`autovacuum_vacuum_cost_delay` 2 ms, and `vacuum_cost_limit`'s
/// default of 200), for the projector's VACUUM and ANALYZE.
const VACUUM_COST: &str = "SET vacuum_cost_delay = '2ms'; SET vacuum_cost_limit = 200";

/// A statement running in Postgres does not notice that its client went away until it sends
/// something back, and a VACUUM sends nothing until it ends: after the projector was killed
/// (or stopped by `deploy/down`) its VACUUM went on, and a `DROP DATABASE` waited for it. With
/// this the server polls the upkeep's socket every second while a statement runs and ends the
/// statement once the socket is closed (Postgres 14 on; on an older server the upkeep runs
/// without it).
const CLIENT_CHECK: &str = "SET client_connection_check_interval = '1s'";

/// What [`round`] sets on its connection, back to the server's settings before the connection
/// returns to the pool.
const RESET: &str =
    "RESET vacuum_cost_delay; RESET vacuum_cost_limit; RESET client_connection_check_interval";

/// One round: each table vacuumed or analyzed if it needs it, on one connection of its own
/// (simple protocol: VACUUM cannot be prepared inside a transaction block), until `stop`.
/// Returns how many tables got either.
///
/// When `stop` fires mid-round the statement running is cancelled in the server
/// (`pg_cancel_backend` of the round's own backend) and no other table is started: the
/// projector stops at once instead of waiting out a VACUUM of a million-row table, and leaves
/// nothing running behind it.
pub async fn round(
    pool: &PgPool,
    metrics: &UpkeepMetrics,
    stop: &CancellationToken,
) -> anyhow::Result<usize> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| anyhow::anyhow!("a connection for the upkeep: {e}"))?;
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| anyhow::anyhow!("the upkeep connection's backend: {e}"))?;
    conn.execute(sqlx::raw_sql(VACUUM_COST))
        .await
        .map_err(|e| anyhow::anyhow!("{VACUUM_COST}: {e}"))?;
    if let Err(e) = conn.execute(sqlx::raw_sql(CLIENT_CHECK)).await {
        tracing::debug!(error = %e, "the server has no client_connection_check_interval");
    }
    let done = {
        let work = tables(&mut conn, metrics, stop);
        tokio::pin!(work);
        tokio::select! {
            done = &mut work => Some(done),
            _ = stop.cancelled() => {
                cancel(pool, backend).await;
                // The cancelled statement ends with an error, and no other table starts.
                tokio::time::timeout(STOP_WAIT, work).await.ok()
            }
        }
    };
    let Some(done) = done else {
        // Still busy: the connection is closed rather than returned with a statement in it
        // (the server ends the statement once it sees the socket closed).
        conn.close_on_drop();
        anyhow::bail!("the upkeep's statement had not ended {STOP_WAIT:?} after the stop");
    };
    // Back to the server's settings before the connection returns to the pool.
    let reset = conn.execute(sqlx::raw_sql(RESET)).await;
    let done = done?;
    reset.map_err(|e| anyhow::anyhow!("resetting the upkeep's settings: {e}"))?;
    Ok(done)
}

/// How long a stop waits for the round's cancelled statement to end.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// Cancels the statement `backend` runs (`pg_cancel_backend`), from another connection.
async fn cancel(pool: &PgPool, backend: i32) {
    let cancel = sqlx::query("SELECT pg_cancel_backend($1)")
        .bind(backend)
        .execute(pool);
    match tokio::time::timeout(STOP_WAIT, cancel).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cancelling the upkeep's statement at stop failed")
        }
        Err(_) => tracing::warn!("no connection to cancel the upkeep's statement at stop"),
    }
}

/// The round's tables on `conn`, each as [`upkeep`] says, none started once `stop` fired.
async fn tables(
    conn: &mut sqlx::PgConnection,
    metrics: &UpkeepMetrics,
    stop: &CancellationToken,
) -> anyhow::Result<usize> {
    let mut done = 0;
    for table in TABLES {
        if stop.is_cancelled() {
            break;
        }
        if rebuild_running(conn).await? {
            metrics.deferred.inc();
            tracing::info!(
                table,
                "upkeep deferred: a rebuild of the read model is running"
            );
            break;
        }
        let counts: Option<StatsRow> = sqlx::query_as(
            "SELECT s.n_live_tup, s.n_dead_tup, s.n_ins_since_vacuum, s.n_mod_since_analyze, \
                    c.reloptions::text[] \
             FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid \
             WHERE s.relname = $1 AND s.schemaname = current_schema()",
        )
        .bind(table)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| anyhow::anyhow!("reading {table}'s statistics: {e}"))?;
        let Some((live, dead, inserted, modified, options)) = counts else {
            continue;
        };
        let counts = Counts {
            live,
            dead,
            inserted,
            modified,
        };
        let rules = Rules::with_options(options.as_deref().unwrap_or_default());
        let (sql, actions): (_, &[&str]) = match upkeep(counts, &rules) {
            Upkeep::Nothing => continue,
            Upkeep::Analyze => (format!("ANALYZE {table}"), &["analyze"]),
            Upkeep::Vacuum => (format!("VACUUM {table}"), &["vacuum"]),
            Upkeep::VacuumAnalyze => (format!("VACUUM (ANALYZE) {table}"), &["vacuum", "analyze"]),
        };
        // Throttled as autovacuum throttles itself (2 ms of sleep per 200 cost units, set by
        // `round` on this connection): a manual VACUUM runs at full speed by default, and on a
        // 2-core machine one of the 1 M-row table took lease latency p99 to 750-850 ms while
        // it ran; throttled, 71 ms (docs/performance.md).
        conn.execute(sqlx::raw_sql(&sql))
            .await
            .map_err(|e| anyhow::anyhow!("{sql}: {e}"))?;
        for action in actions {
            metrics.done.with_label_values(&[table, action]).inc();
        }
        done += 1;
    }
    Ok(done)
}

/// Whether a rebuild holds [`crate::rebuild::REBUILD_LOCK`]: the exclusive lock is refused
/// while any rebuild holds it shared (taken for this statement only, and released with it).
async fn rebuild_running(conn: &mut sqlx::PgConnection) -> anyhow::Result<bool> {
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(crate::rebuild::REBUILD_LOCK)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| anyhow::anyhow!("looking for a running rebuild: {e}"))?;
    Ok(!free)
}

/// Runs rounds every `every` until `stop`, if `mode` says the projector should.
pub async fn run(
    pool: PgPool,
    mode: Mode,
    every: Duration,
    metrics: UpkeepMetrics,
    stop: CancellationToken,
) {
    let wanted = match mode {
        Mode::Always => true,
        Mode::Never => false,
        Mode::Auto => !autovacuum_on(&pool).await,
    };
    metrics.enabled.set(i64::from(wanted));
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
        metrics.running.set(1);
        let outcome = round(&pool, &metrics, &stop).await;
        metrics.running.set(0);
        metrics.rounds.inc();
        metrics.seconds.inc_by(started.elapsed().as_secs_f64());
        match outcome {
            Ok(0) => {}
            Ok(tables) => tracing::info!(
                tables,
                ms = started.elapsed().as_millis() as u64,
                "read model vacuumed or analyzed where it had changed enough"
            ),
            Err(e) if stop.is_cancelled() => {
                tracing::info!(error = %e, "upkeep round cut short by the stop")
            }
            Err(e) => {
                tracing::warn!(error = %e, "vacuuming the read model failed; next round will retry")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(live: i64, dead: i64, inserted: i64, modified: i64) -> Upkeep {
        by(&Rules::default(), live, dead, inserted, modified)
    }

    fn by(rules: &Rules, live: i64, dead: i64, inserted: i64, modified: i64) -> Upkeep {
        upkeep(
            Counts {
                live,
                dead,
                inserted,
                modified,
            },
            rules,
        )
    }

    #[test]
    fn tables_get_upkeep_by_autovacuums_rules() {
        assert_eq!(of(0, 0, 0, 0), Upkeep::Nothing);
        assert_eq!(of(1_000_000, 150_000, 0, 90_000), Upkeep::Nothing);
        assert_eq!(of(1_000_000, 150_000, 0, 100_051), Upkeep::Analyze);
        assert_eq!(of(1_000_000, 200_051, 0, 0), Upkeep::Vacuum);
        assert_eq!(of(1_000_000, 200_051, 0, 100_051), Upkeep::VacuumAnalyze);
        assert_eq!(of(10, 53, 0, 0), Upkeep::Vacuum);
        assert_eq!(of(10, 53, 0, 52), Upkeep::VacuumAnalyze);
        assert_eq!(of(10, 10, 0, 52), Upkeep::Analyze);
    }

    #[test]
    fn a_bulk_load_is_vacuumed_by_the_insert_rule() {
        // 200,000 rows inserted into a table of 1,000,000 (the first 800,000 vacuumed): not
        // yet past 1,000 + 20 %; a few more are.
        assert_eq!(of(1_000_000, 0, 200_000, 0), Upkeep::Nothing);
        assert_eq!(of(1_000_000, 0, 201_001, 0), Upkeep::Vacuum);
        // A fresh table: the base of 1,000 rows first (its analyze is due well before).
        assert_eq!(of(900, 0, 900, 900), Upkeep::Analyze);
        assert_eq!(of(1_300, 0, 1_300, 1_300), Upkeep::VacuumAnalyze);
        assert_eq!(of(1_300, 0, 1_300, 0), Upkeep::Vacuum);
        // An insert-only table gets its analyze rule as before.
        assert_eq!(of(10_000, 0, 500, 1_051), Upkeep::Analyze);
    }

    #[test]
    fn a_tables_own_settings_override_the_defaults() {
        // The `jobs` table's (migration 0010): dead rows past 50 + 2 %.
        let jobs = Rules::with_options(&["autovacuum_vacuum_scale_factor=0.02".to_string()]);
        assert_eq!(
            jobs,
            Rules {
                vacuum: (50.0, 0.02),
                ..Rules::default()
            }
        );
        // 150,000 dead rows in 1,000,000: due under the table's rule, not the default one.
        assert_eq!(of(1_000_000, 150_000, 0, 0), Upkeep::Nothing);
        assert_eq!(by(&jobs, 1_000_000, 150_000, 0, 0), Upkeep::Vacuum);
        assert_eq!(by(&jobs, 1_000_000, 20_050, 0, 0), Upkeep::Nothing);
        assert_eq!(by(&jobs, 1_000_000, 20_051, 0, 0), Upkeep::Vacuum);
        // Every setting is read; other parameters and unreadable values are passed over.
        let all = Rules::with_options(
            &[
                "fillfactor=90",
                "autovacuum_vacuum_threshold=10",
                "autovacuum_vacuum_insert_threshold=20",
                "autovacuum_vacuum_insert_scale_factor=0.5",
                "autovacuum_analyze_threshold=30",
                "autovacuum_analyze_scale_factor=x",
                "autovacuum_enabled",
            ]
            .map(String::from),
        );
        assert_eq!(
            all,
            Rules {
                vacuum: (10.0, 0.2),
                insert: (20.0, 0.5),
                analyze: (30.0, 0.1),
            }
        );
    }
}
