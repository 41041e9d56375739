//! Auditors: `jobsctl replay` returns exactly the matching events in stream order and follows
//! new ones; `jobsctl verify` passes an intact history and finds and locates an altered, a
//! deleted, a swapped and an injected event.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tests::procs::{bin_path, projector_rebuild};
use tests::{all_events, email_job, TestApp};
use uuid::Uuid;

fn jobsctl(args: &[&str]) -> (i32, Vec<Value>) {
    let out = Command::new(bin_path("jobsctl"))
        .args(args)
        .output()
        .unwrap();
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (out.status.code().unwrap_or(-1), lines)
}

/// A job with the history enqueued → leased → heartbeat → completed.
async fn worked_job(app: &TestApp, t: &str) -> Value {
    let (job, _) = app.enqueue(&json!({"type": t, "payload": {"n": 1}})).await;
    let w = app.worker("auditor-test");
    let held = w.lease(&json!({"types": [t]})).await.remove(0);
    assert_eq!(held["id"], job["id"]);
    assert_eq!(
        w.heartbeat(&held, json!({"progress": {"p": 1}})).await.0,
        200
    );
    assert_eq!(w.complete(&held).await.0, 200);
    job
}

#[tokio::test]
async fn replay_returns_exactly_the_matching_events_and_follows_new_ones() {
    let app = TestApp::spawn().await;
    let other = app.keys.token(Uuid::new_v4(), &["member"]);
    let job = worked_job(&app, "r1").await;
    for i in 0..3 {
        app.enqueue(&email_job(i)).await;
        assert_eq!(app.enqueue_as(&other, &email_job(i)).await.status(), 201);
    }
    let all = all_events(&app.nats.url()).await;
    let url = app.nats.url();
    let tenant = app.tenant.to_string();
    let seqs = |lines: &[Value]| {
        lines
            .iter()
            .map(|l| l["seq"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    let want = |f: &dyn Fn(&events::Recorded) -> bool| {
        all.iter()
            .filter(|r| f(r))
            .map(|r| r.seq)
            .collect::<Vec<_>>()
    };

    let (code, lines) = jobsctl(&["replay", "--nats-url", &url, "--tenant", &tenant]);
    assert_eq!(code, 0);
    assert_eq!(
        seqs(&lines),
        want(&|r| r.envelope.tenant_id == app.tenant),
        "the tenant's events, in stream order"
    );
    assert!(lines.iter().all(|l| l["tenant_id"] == tenant));

    let (_, lines) = jobsctl(&[
        "replay",
        "--nats-url",
        &url,
        "--tenant",
        &tenant,
        "--job",
        job["id"].as_str().unwrap(),
    ]);
    let types: Vec<&str> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["JobEnqueued", "JobLeased", "JobHeartbeat", "JobCompleted"]
    );

    let (_, lines) = jobsctl(&[
        "replay",
        "--nats-url",
        &url,
        "--type",
        "JobEnqueued,JobCompleted",
    ]);
    assert_eq!(
        seqs(&lines),
        want(&|r| matches!(r.envelope.type_name(), "JobEnqueued" | "JobCompleted"))
    );

    let (from, to) = (all[2].seq, all[6].seq);
    let (_, lines) = jobsctl(&[
        "replay",
        "--nats-url",
        &url,
        "--from-seq",
        &from.to_string(),
        "--to-seq",
        &to.to_string(),
    ]);
    assert_eq!(seqs(&lines), want(&|r| r.seq >= from && r.seq <= to));

    let (since, until) = (all[3].envelope.at, all[8].envelope.at);
    let (_, lines) = jobsctl(&[
        "replay",
        "--nats-url",
        &url,
        "--since",
        &since.to_rfc3339(),
        "--until",
        &until.to_rfc3339(),
    ]);
    assert_eq!(
        seqs(&lines),
        want(&|r| r.envelope.at >= since && r.envelope.at < until)
    );

    let table = Command::new(bin_path("jobsctl"))
        .args(["replay", "--nats-url", &url, "--format", "table"])
        .output()
        .unwrap();
    assert!(table.status.success());
    let text = String::from_utf8(table.stdout).unwrap();
    assert_eq!(
        text.lines().count(),
        all.len() + 1,
        "a header and a row per event"
    );

    // --follow sees an event appended after it started.
    let mut child = Command::new(bin_path("jobsctl"))
        .args([
            "replay",
            "--nats-url",
            &url,
            "--tenant",
            &tenant,
            "--follow",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                return;
            }
        }
    });
    let existing = want(&|r| r.envelope.tenant_id == app.tenant).len();
    for _ in 0..existing {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the history first");
    }
    let (new_job, seq) = app.enqueue(&email_job(99)).await;
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the new event");
    assert_eq!(
        (line["seq"].as_u64(), &line["job_id"]),
        (Some(seq), &new_job["id"])
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn verify_passes_an_intact_history_and_locates_each_kind_of_tampering() {
    let app = TestApp::spawn().await;
    let url = app.nats.url();
    let tenant = app.tenant.to_string();
    let jobs: Vec<Value> = futures::future::join_all((0..5).map(|i| {
        let app = &app;
        async move { worked_job(app, &format!("v{i}")).await }
    }))
    .await;
    let (code, lines) = jobsctl(&["verify", "--nats-url", &url, "--tenant", &tenant]);
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(lines.last().unwrap()["intact"], true);
    assert_eq!(lines.last().unwrap()["jobs"], 5);

    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    let stream = js.get_stream("JOBS_EVENTS").await.unwrap();
    let history = |id: &Value| {
        let id: Uuid = id.as_str().unwrap().parse().unwrap();
        let url = url.clone();
        async move {
            all_events(&url)
                .await
                .into_iter()
                .filter(|r| r.envelope.job_id == id)
                .map(|r| r.seq)
                .collect::<Vec<u64>>()
        }
    };
    let subject = |id: &Value| format!("jobs.events.{tenant}.{}", id.as_str().unwrap());
    let publish = |subject: String, payload: Vec<u8>| {
        let js = js.clone();
        async move {
            js.publish(subject, payload.into())
                .await
                .unwrap()
                .await
                .unwrap()
                .sequence
        }
    };

    // 1. Altered: the lease event rewritten (a byte of its payload changed).
    let h = history(&jobs[0]["id"]).await;
    let raw = stream.get_raw_message(h[1]).await.unwrap();
    let altered = String::from_utf8(raw.payload.to_vec())
        .unwrap()
        .replace("auditor-test", "auditor-tesT");
    stream.delete_message(h[1]).await.unwrap();
    let altered_seq = publish(subject(&jobs[0]["id"]), altered.into_bytes()).await;
    // 2. Deleted: the heartbeat removed.
    let h1 = history(&jobs[1]["id"]).await;
    stream.delete_message(h1[2]).await.unwrap();
    // 3. Swapped: heartbeat and completion in the other order.
    let h2 = history(&jobs[2]["id"]).await;
    let (hb, done) = (
        stream.get_raw_message(h2[2]).await.unwrap(),
        stream.get_raw_message(h2[3]).await.unwrap(),
    );
    stream.delete_message(h2[2]).await.unwrap();
    stream.delete_message(h2[3]).await.unwrap();
    let swapped_done = publish(subject(&jobs[2]["id"]), done.payload.to_vec()).await;
    let swapped_hb = publish(subject(&jobs[2]["id"]), hb.payload.to_vec()).await;
    // 4. Injected: a forged completion written straight to the stream.
    let h3 = history(&jobs[3]["id"]).await;
    let mut forged: Value =
        serde_json::from_slice(&stream.get_raw_message(h3[3]).await.unwrap().payload).unwrap();
    forged["event_id"] = json!(Uuid::now_v7());
    forged["prev_hash"] = json!("0".repeat(64));
    let forged_seq = publish(
        subject(&jobs[3]["id"]),
        serde_json::to_vec(&forged).unwrap(),
    )
    .await;

    let (code, lines) = jobsctl(&["verify", "--nats-url", &url, "--tenant", &tenant]);
    assert_eq!(code, 2, "tampering is an exit code: {lines:?}");
    let summary = lines.last().unwrap();
    assert_eq!(summary["intact"], false);
    let problems = &lines[..lines.len() - 1];
    let at = |job: &Value| -> Vec<(u64, String)> {
        problems
            .iter()
            .filter(|p| p["job_id"] == *job)
            .map(|p| {
                (
                    p["seq"].as_u64().unwrap(),
                    p["problem"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let a = at(&jobs[0]["id"]);
    assert!(
        a.contains(&(h[2], "missing_or_altered".into())),
        "the altered event breaks the link to it: {a:?}"
    );
    assert!(
        a.iter().any(|(s, _)| *s == altered_seq),
        "the rewritten copy is flagged: {a:?}"
    );
    let d = at(&jobs[1]["id"]);
    assert_eq!(
        d,
        vec![(h1[3], "missing_or_altered".to_string())],
        "the deletion is located at the next event"
    );
    let s = at(&jobs[2]["id"]);
    assert!(
        s.iter().any(|(q, _)| *q == swapped_done) && s.iter().any(|(q, _)| *q == swapped_hb),
        "both swapped events: {s:?}"
    );
    let f = at(&jobs[3]["id"]);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].0, forged_seq, "the forged event is located");
    assert!(at(&jobs[4]["id"]).is_empty(), "the untouched job is intact");
    let (code, _) = jobsctl(&[
        "verify",
        "--nats-url",
        &url,
        "--tenant",
        &tenant,
        "--job",
        jobs[4]["id"].as_str().unwrap(),
    ]);
    assert_eq!(code, 0);
}

#[tokio::test]
async fn state_at_an_instant_shows_the_queues_as_they_were() {
    let app = TestApp::spawn().await;
    for i in 0..3 {
        app.enqueue(&email_job(i)).await;
    }
    let w = app.worker("then");
    let held = w.lease(&json!({"types": ["email.send"]})).await.remove(0);
    let leased_seq = held["lease"]["lease_id"].as_u64().unwrap();
    let all = all_events(&app.nats.url()).await;
    let instant = all
        .iter()
        .find(|r| r.seq == leased_seq)
        .unwrap()
        .envelope
        .at;
    // Afterwards, things move on.
    assert_eq!(w.complete(&held).await.0, 200);
    app.enqueue(&json!({"type": "later", "payload": {}})).await;

    let out = Command::new(bin_path("jobsctl"))
        .args([
            "state",
            "--nats-url",
            &app.nats.url(),
            "--tenant",
            &app.tenant.to_string(),
            "--at",
            &instant.to_rfc3339(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["counts"]["pending"], 2);
    assert_eq!(s["counts"]["leased"], 1);
    assert_eq!(s["counts"]["completed"], 0);
    assert_eq!(
        s["by_type"].as_array().unwrap().len(),
        1,
        "the later type did not exist yet"
    );
    assert_eq!(s["leased"][0]["job_id"], held["id"]);
    assert_eq!(s["leased"][0]["worker_id"], w.id());
}

const READ_MODEL: [(&str, &str); 10] = [
    ("jobs", "id"),
    ("job_events", "seq"),
    ("projector_checkpoint", "id"),
    ("job_type_activity", "type"),
    ("tenant_overrides", "tenant_id"),
    ("workers", "worker_id"),
    ("tenant_type_counts", "tenant_id, type, status"),
    ("tenant_throughput", "tenant_id, second"),
    ("tenant_latency", "tenant_id, second, kind, le_ms"),
    ("projection_quarantine", "seq"),
];

async fn dump(pool: &sqlx::PgPool) -> Vec<(String, Vec<Value>)> {
    let mut out = Vec::new();
    for (table, key) in READ_MODEL {
        let rows: Vec<Value> =
            sqlx::query_scalar(&format!("SELECT to_jsonb(t) FROM {table} t ORDER BY {key}"))
                .fetch_all(pool)
                .await
                .unwrap();
        out.push((table.to_string(), rows));
    }
    out
}

/// Every index of the read model's schema: table, name and definition.
async fn indexes(pool: &sqlx::PgPool) -> Vec<(String, String, String)> {
    let found: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT tablename::text, indexname::text, indexdef FROM pg_indexes
          WHERE schemaname = 'public' ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(
        found
            .iter()
            .any(|(_, name, _)| name == "jobs_by_tenant_status_created"),
        "the migrations' indexes are there: {found:?}"
    );
    found
}

/// The read model's columns with a statistics target of their own: (table, column, target).
async fn statistics_targets(pool: &sqlx::PgPool) -> Vec<(String, String, i32)> {
    let found: Vec<(String, String, i32)> = sqlx::query_as(
        "SELECT c.relname::text, a.attname::text, a.attstattarget::int
           FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attnum > 0
            AND a.attstattarget >= 0 ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    // One most-common tenant only, so a tenant newer than the statistics is not estimated
    // at 1 row (migrations/0008_tenant_statistics.sql, docs/performance.md).
    assert!(
        found.contains(&("jobs".into(), "tenant_id".into(), 1)),
        "jobs.tenant_id keeps one most-common value: {found:?}"
    );
    found
}

/// The read model's tables with storage parameters of their own: (table, parameters).
async fn table_options(pool: &sqlx::PgPool) -> Vec<(String, Vec<String>)> {
    let found: Vec<(String, Vec<String>)> = sqlx::query_as(
        "SELECT c.relname::text, c.reloptions::text[]
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.reloptions IS NOT NULL
          ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    // A queue table is vacuumed at 2 % dead rows, not 20 %, indexes always cleaned
    // (migrations/0010_jobs_vacuum_rule.sql).
    assert!(
        found.contains(&(
            "jobs".into(),
            vec![
                "autovacuum_vacuum_scale_factor=0.02".into(),
                "vacuum_index_cleanup=on".into()
            ]
        )),
        "jobs keeps its vacuum rule: {found:?}"
    );
    found
}

#[tokio::test]
async fn a_rebuild_swaps_in_identical_tables_while_queries_keep_answering() {
    let app = TestApp::spawn().await;
    let admin = app.keys.token(app.tenant, &["admin"]);
    let jobs: Vec<Value> = (0..60).map(email_job).collect();
    let res = app
        .request(reqwest::Method::POST, "/jobs/v1/enqueue/batch", &app.token)
        .json(&json!({ "jobs": jobs }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let w = app.worker("rebuilder");
    let leased = w
        .lease(&json!({"types": ["email.send"], "max_jobs": 30}))
        .await;
    for (i, j) in leased.iter().enumerate() {
        let status = if i % 3 == 0 {
            w.fail(j, false).await.0
        } else {
            w.complete(j).await.0
        };
        assert_eq!(status, 200);
    }
    // A purge too: the rebuild writes the history on a connection of its own, and must
    // still delete the purged job's history after writing it.
    let purged = leased[0]["id"].as_str().unwrap().to_string();
    let res = app
        .request(
            reqwest::Method::DELETE,
            &format!("/jobs/v1/dlq/{purged}"),
            &admin,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let res = app
        .request(
            reqwest::Method::PUT,
            &format!("/jobs/v1/admin/tenants/{}/overrides", app.tenant),
            &admin,
        )
        .json(&json!({"max_active_jobs": 500}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let last = all_events(&app.nats.url())
        .await
        .last()
        .unwrap()
        .seq
        .max(tests::event_seq(&res));
    let (_, probe) = app.get("/jobs/v1/jobs?limit=1", last).await;
    let some_id = probe["data"][0]["id"].as_str().unwrap().to_string();
    let pool = app.pool().await;
    let purged_history: i64 =
        sqlx::query_scalar("SELECT count(*) FROM job_events WHERE job_id = $1::uuid")
            .bind(&purged)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        purged_history, 0,
        "the live projector dropped the purged job's history"
    );
    let before = dump(&pool).await;
    let indexes_before = indexes(&pool).await;
    let targets_before = statistics_targets(&pool).await;
    let options_before = table_options(&pool).await;
    assert_eq!(before[0].1.len(), 59, "60 jobs, one purged");

    // Queries keep coming while the rebuild runs and swaps.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammer = {
        let (http, base, token, stop, id) = (
            app.http.clone(),
            app.query.url(),
            app.token.clone(),
            stop.clone(),
            some_id.clone(),
        );
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for path in [
                    "/jobs/v1/jobs?limit=5".to_string(),
                    format!("/jobs/v1/jobs/{id}"),
                    "/jobs/v1/metrics".to_string(),
                ] {
                    match http
                        .get(format!("{base}{path}"))
                        .bearer_auth(&token)
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 200 => ok += 1,
                        Ok(r) => failed.push(format!(
                            "{path}: {} {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        )),
                        Err(e) => failed.push(format!("{path}: {e}")),
                    }
                }
            }
            (ok, failed)
        })
    };
    // Rebuild without blocking this runtime, so the queries go on meanwhile.
    let report = projector_rebuild(&app.nats.url(), &app.db.url, &[]).await;
    assert!(
        report.contains("events/s"),
        "the rate is reported: {report}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = hammer.await.unwrap();
    assert!(ok > 0);
    assert!(
        failed.is_empty(),
        "query-svc answered every request during the rebuild: {failed:?}"
    );

    let after = dump(&pool).await;
    for ((table, a), (_, b)) in before.iter().zip(&after) {
        assert_eq!(a, b, "{table} differs after the rebuild");
    }
    // The replay drops the new tables' secondary indexes and builds them again before the
    // swap: every one is back, the same.
    assert_eq!(
        indexes(&pool).await,
        indexes_before,
        "indexes after the rebuild"
    );
    assert_eq!(
        statistics_targets(&pool).await,
        targets_before,
        "statistics targets after the rebuild"
    );
    assert_eq!(
        table_options(&pool).await,
        options_before,
        "storage parameters after the rebuild"
    );
    let schemas: Vec<String> = sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'rebuild_%' OR nspname LIKE 'retired_%'")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(schemas.is_empty(), "the old tables are gone: {schemas:?}");

    // Again with batches of 7 events and the smallest job cache (4 batches' worth): jobs
    // leased long after their enqueue are read back from the new tables, and the tables
    // still come out the same.
    let report = projector_rebuild(
        &app.nats.url(),
        &app.db.url,
        &[
            ("JOBS_REBUILD_BATCH", "7"),
            ("JOBS_REBUILD_CACHE_JOBS", "1"),
        ],
    )
    .await;
    // The report's own line (the log may print around it).
    let read_back: u64 = report
        .lines()
        .find(|l| l.starts_with("rebuilt the read model:"))
        .and_then(|l| l.trim().strip_suffix(" jobs read back"))
        .and_then(|r| r.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the report says how many jobs were read back: {report}"));
    assert!(read_back > 0, "{report}");
    let again = dump(&pool).await;
    for ((table, a), (_, b)) in before.iter().zip(&again) {
        assert_eq!(a, b, "{table} differs after the rebuild with a small cache");
    }

    // The live projector carries on in the new tables.
    let (job, seq) = app.enqueue(&email_job(1000)).await;
    let (status, got) = app
        .get(
            &format!("/jobs/v1/jobs/{}", job["id"].as_str().unwrap()),
            seq,
        )
        .await;
    assert_eq!(status, 200, "{got}");
}
