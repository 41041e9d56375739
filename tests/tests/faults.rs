//! Faults with real processes: the event store going away, the projector killed mid-stream,
//! the read model dropped and rebuilt from the stream.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tests::{email_job, eventually, Bin, TestApp};

#[tokio::test]
async fn enqueue_answers_503_quickly_while_nats_is_down_and_recovers_by_itself() {
    let mut app = TestApp::spawn().await;
    app.enqueue(&email_job(0)).await;
    app.nats.kill();
    let started = Instant::now();
    let res = app.enqueue_as(&app.token, &email_job(1)).await;
    assert_eq!(res.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "503 took {:?}",
        started.elapsed()
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "SERVICE_UNAVAILABLE");
    let ready = app
        .http
        .get(format!("{}/readyz", app.command.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        503,
        "readyz tells the truth while NATS is down"
    );

    app.nats.restart().await.unwrap();
    let (job, seq) = eventually(
        Duration::from_secs(20),
        "command-svc to reconnect",
        || async {
            let res = app.enqueue_as(&app.token, &email_job(2)).await;
            if res.status() != 201 {
                return None;
            }
            let seq = tests::event_seq(&res);
            let body: Value = res.json().await.ok()?;
            Some((body["data"].clone(), seq))
        },
    )
    .await;
    let (status, got) = app
        .get(
            &format!("/jobs/v1/jobs/{}", job["id"].as_str().unwrap()),
            seq,
        )
        .await;
    assert_eq!(status, 200, "the projector reconnected too: {got}");
    assert_eq!(got["data"], job);
}

fn projector_env(app: &TestApp) -> Vec<(&'static str, String)> {
    vec![
        ("JOBS_NATS_URL", app.nats.url()),
        ("JOBS_DATABASE_URL", app.db.url.clone()),
        ("JOBS_PROJECTOR_ADDR", "127.0.0.1:0".into()),
        ("JOBS_PROJECTOR_BATCH", "50".into()),
    ]
}

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn a_projector_killed_mid_stream_loses_and_duplicates_nothing() {
    let app = TestApp::spawn_with(false).await;
    let pool = app.pool().await;
    let mut projector = Bin::spawn("projector", &projector_env(&app)).unwrap();

    // Five writers, 100 jobs each: the first 50 of each before the kill, the rest after it
    // (so the kill is mid-stream however fast the projector is).
    let write = |w: usize, range: std::ops::Range<usize>| {
        let (http, url, token) = (app.http.clone(), app.command.url(), app.token.clone());
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in range {
                let res = http
                    .post(format!("{url}/jobs/v1/enqueue"))
                    .bearer_auth(&token)
                    .json(&email_job(w * 100 + i))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 201);
                let body: Value = res.json().await.unwrap();
                ids.push(body["data"]["id"].as_str().unwrap().to_string());
            }
            ids
        })
    };
    let first: Vec<_> = (0..5).map(|w| write(w, 0..50)).collect();

    // Kill it once it has applied some of the jobs, while more are still arriving.
    eventually(
        Duration::from_secs(30),
        "the projector to apply some jobs",
        || async { (count(&pool, "SELECT count(*) FROM jobs").await >= 50).then_some(()) },
    )
    .await;
    let second: Vec<_> = (0..5).map(|w| write(w, 50..100)).collect();
    projector.kill9();
    let at_kill = count(&pool, "SELECT count(*) FROM jobs").await;

    let mut ids = Vec::new();
    for w in first.into_iter().chain(second) {
        ids.extend(w.await.unwrap());
    }
    assert_eq!(ids.len(), 500);
    let _projector = Bin::spawn("projector", &projector_env(&app)).unwrap();
    eventually(
        Duration::from_secs(30),
        "all 500 jobs projected",
        || async { (count(&pool, "SELECT count(*) FROM jobs").await == 500).then_some(()) },
    )
    .await;
    assert!(
        at_kill < 500,
        "the kill happened mid-stream ({at_kill} applied)"
    );
    let stored: Vec<String> = sqlx::query_scalar("SELECT id::text FROM jobs ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(stored, expected, "every acknowledged job is present, once");
    assert_eq!(
        count(&pool, "SELECT count(*) FROM job_events").await,
        500,
        "no event applied twice"
    );
    assert_eq!(count(&pool, "SELECT max(version) FROM jobs").await, 1);
    assert_eq!(
        count(&pool, "SELECT last_seq FROM projector_checkpoint").await,
        500
    );
    let acknowledged: Vec<uuid::Uuid> = ids.iter().map(|i| i.parse().unwrap()).collect();
    tests::assert_invariants(&app.nats.url(), &app.db.url, &acknowledged).await;
}

#[tokio::test]
async fn dropping_the_read_model_and_replaying_the_stream_gives_identical_rows() {
    let mut app = TestApp::spawn().await;
    let mut last = 0;
    for chunk in 0..3 {
        let jobs: Vec<Value> = (0..40).map(|i| email_job(chunk * 40 + i)).collect();
        last = app.enqueue_batch(&jobs).await.1;
    }
    app.enqueue(&json!({"type": "report.build", "payload": {"n": 1}, "delay_seconds": 600, "metadata": {"k": "v"}})).await;
    last += 1;
    let pool = app.pool().await;
    eventually(Duration::from_secs(20), "projection", || async {
        (count(&pool, "SELECT last_seq FROM projector_checkpoint").await as u64 >= last)
            .then_some(())
    })
    .await;
    let snapshot = |pool: sqlx::PgPool| async move {
        let jobs: Vec<(String, Value)> = sqlx::query_as("SELECT id::text, to_jsonb(j) - 'doc' || jsonb_build_object('doc', doc) FROM jobs j ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
        let events: Vec<(i64, Value)> =
            sqlx::query_as("SELECT seq, to_jsonb(e) FROM job_events e ORDER BY seq")
                .fetch_all(&pool)
                .await
                .unwrap();
        (jobs, events)
    };
    let before = snapshot(pool.clone()).await;
    assert_eq!(before.0.len(), 121);

    app.projector.take().unwrap().stop().await;
    sqlx::query("DROP SCHEMA public CASCADE")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("CREATE SCHEMA public")
        .execute(&pool)
        .await
        .unwrap();
    app.projector = Some(
        tests::start_projector(&app.nats.url(), &app.db.url)
            .await
            .unwrap(),
    );
    eventually(Duration::from_secs(20), "the replay", || async {
        let seq: Option<i64> = sqlx::query_scalar("SELECT last_seq FROM projector_checkpoint")
            .fetch_optional(&pool)
            .await
            .ok()?;
        (seq? as u64 >= last).then_some(())
    })
    .await;
    let after = snapshot(pool.clone()).await;
    assert_eq!(
        before, after,
        "the rebuilt read model is identical, row for row"
    );
}

#[tokio::test]
async fn an_event_postgres_refuses_is_quarantined_and_the_projection_goes_on() {
    let app = TestApp::spawn().await;
    // The API refuses what Postgres cannot store...
    for bad in [
        json!({"type": "t", "payload": {"a": "nul\u{0}here"}}),
        json!({"type": "t", "payload": {}, "run_at": "-10000-01-01T00:00:00Z"}),
    ] {
        let res = app.enqueue_as(&app.token, &bad).await;
        assert_eq!(res.status(), 400, "{bad}");
    }
    // ...but a writer that bypasses it (an older version, a bug) must not stop the projector.
    // A `run_at` before 4713 BC: a `DateTime` holds it, a `timestamptz` does not. (A payload
    // with a NUL character was the example while documents were `jsonb`; `json` stores it.)
    let js = async_nats::jetstream::new(async_nats::connect(app.nats.url()).await.unwrap());
    let job_id = uuid::Uuid::now_v7();
    let before_postgres = chrono::NaiveDate::from_ymd_opt(-10000, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    let poison = json!({
        "event_id": uuid::Uuid::now_v7(), "type": "JobEnqueued", "schema_version": 1,
        "tenant_id": app.tenant, "job_id": job_id, "at": chrono::Utc::now(),
        "actor": {"kind": "system", "id": "test"},
        "data": {"type": "t", "queue": "default", "priority": 5, "payload": {"a": 1},
                 "run_at": before_postgres, "max_attempts": 3, "timeout_seconds": 300,
                 "backoff": {"base_seconds": 5, "max_seconds": 3600}, "metadata": {}}
    });
    let ack = js
        .publish(
            format!("jobs.events.{}.{job_id}", app.tenant),
            serde_json::to_vec(&poison).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let (after, seq) = app.enqueue(&email_job(1)).await;
    assert!(seq > ack.sequence);
    let (status, got) = app
        .get(
            &format!("/jobs/v1/jobs/{}", after["id"].as_str().unwrap()),
            seq,
        )
        .await;
    assert_eq!(
        status, 200,
        "the projection went past the poison event: {got}"
    );
    let pool = app.pool().await;
    let quarantined: Vec<i64> = sqlx::query_scalar("SELECT seq FROM projection_quarantine")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(quarantined, vec![ack.sequence as i64]);
    assert_eq!(app.get(&format!("/jobs/v1/jobs/{job_id}"), 0).await.0, 404);
}

#[tokio::test]
async fn nats_paused_beyond_the_timeout_answers_503_then_recovers_and_loses_nothing() {
    let app = TestApp::spawn().await;
    let (first, _) = app.enqueue(&email_job(0)).await;
    app.nats.pause();
    let started = Instant::now();
    let res = app.enqueue_as(&app.token, &email_job(1)).await;
    let took = started.elapsed();
    assert_eq!(
        res.status(),
        503,
        "a stalled event store is a 503, never a 500 or a hang"
    );
    assert!(took < Duration::from_secs(6), "answered in {took:?}");
    let ready = app
        .http
        .get(format!("{}/readyz", app.command.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        503,
        "readyz tells the truth while NATS is stopped"
    );
    app.nats.resume();
    let (second, _) = eventually(Duration::from_secs(20), "enqueue to work again", || async {
        let res = app.enqueue_as(&app.token, &email_job(2)).await;
        if res.status() != 201 {
            return None;
        }
        let seq = tests::event_seq(&res);
        let v: Value = res.json().await.ok()?;
        Some((v["data"].clone(), seq))
    })
    .await;
    let ids: Vec<uuid::Uuid> = [&first, &second]
        .iter()
        .map(|j| j["id"].as_str().unwrap().parse().unwrap())
        .collect();
    tests::assert_invariants(&app.nats.url(), &app.db.url, &ids).await;
}

#[tokio::test]
async fn kill_9_of_nats_under_enqueue_and_lease_load_loses_no_acknowledged_job() {
    let mut app = TestApp::spawn().await;
    let load = tests::Load::start(&app.command.url(), &app.token, app.worker("under-fire"), 4);
    tokio::time::sleep(Duration::from_millis(800)).await;
    app.nats.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    app.nats.restart().await.unwrap();
    // Load goes on until the service has recovered and taken more work.
    let before = app.http.clone();
    eventually(
        Duration::from_secs(30),
        "enqueues to succeed again",
        || async {
            let res = before
                .post(format!("{}/jobs/v1/enqueue", app.command.url()))
                .bearer_auth(&app.token)
                .json(&email_job(1))
                .send()
                .await
                .ok()?;
            (res.status() == 201).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acknowledged = load.finish().await;
    assert!(acknowledged.len() > 10);
    tests::assert_invariants(&app.nats.url(), &app.db.url, &acknowledged).await;
}

#[tokio::test]
async fn the_invariant_checker_notices_what_it_is_meant_to() {
    let app = TestApp::spawn().await;
    let (job, _) = app.enqueue(&email_job(1)).await;
    let id: uuid::Uuid = job["id"].as_str().unwrap().parse().unwrap();
    let clean = jobsctl::check::check(&app.nats.url(), None, &[id])
        .await
        .unwrap();
    assert!(clean.ok(), "{:?}", clean.problems);
    // A job the caller was told about but the stream never got.
    let ghost = uuid::Uuid::now_v7();
    let r = jobsctl::check::check(&app.nats.url(), None, &[id, ghost])
        .await
        .unwrap();
    assert!(
        r.problems
            .iter()
            .any(|p| p.contains(&ghost.to_string()) && p.contains("acknowledged")),
        "{:?}",
        r.problems
    );
    // An event filed under another tenant's subject, and a completion without a lease.
    let js = async_nats::jetstream::new(async_nats::connect(app.nats.url()).await.unwrap());
    let stream = js.get_stream("JOBS_EVENTS").await.unwrap();
    let first = stream
        .get_last_raw_message_by_subject(&format!("jobs.events.{}.{id}", app.tenant))
        .await
        .unwrap();
    let elsewhere = format!("jobs.events.{}.{id}", uuid::Uuid::new_v4());
    js.publish(elsewhere, first.payload.clone())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut forged: Value = serde_json::from_slice(&first.payload).unwrap();
    forged["event_id"] = json!(uuid::Uuid::now_v7());
    forged["type"] = json!("JobCompleted");
    forged["data"] = json!({"lease_id": 1, "result": null});
    js.publish(
        format!("jobs.events.{}.{id}", app.tenant),
        serde_json::to_vec(&forged).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let r = jobsctl::check::check(&app.nats.url(), None, &[id])
        .await
        .unwrap();
    assert!(
        r.problems.iter().any(|p| p.contains("on subject")),
        "{:?}",
        r.problems
    );
    assert!(
        r.problems.iter().any(|p| p.contains("does not fold")),
        "{:?}",
        r.problems
    );
}

#[tokio::test]
async fn losing_postgres_makes_readyz_say_so_and_everything_recovers_when_it_returns() {
    let nats = tests::NatsServer::start().await.unwrap();
    let pg = tests::procs::PrivatePostgres::start().unwrap();
    let admin = sqlx::PgPool::connect(&pg.url("postgres")).await.unwrap();
    sqlx::query("CREATE DATABASE jobs")
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let db = pg.url("jobs");
    let keys = tests::Keys::get();
    let _projector = tests::start_projector(&nats.url(), &db).await.unwrap();
    let command = tests::start_command(&nats.url(), &keys).await.unwrap();
    let query = tests::start_query(&nats.url(), &db, &keys).await.unwrap();
    let tenant = uuid::Uuid::new_v4();
    let token = keys.token(tenant, &["member"]);
    let http = reqwest::Client::new();
    let enqueue = || async {
        let res = http
            .post(format!("{}/jobs/v1/enqueue", command.url()))
            .bearer_auth(&token)
            .json(&email_job(1))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201, "enqueue does not need Postgres");
        let seq = tests::event_seq(&res);
        let v: Value = res.json().await.unwrap();
        (v["data"]["id"].as_str().unwrap().to_string(), seq)
    };
    let get = |id: String, seq: u64| {
        let (http, url, token) = (http.clone(), query.url(), token.clone());
        async move {
            let res = http
                .get(format!("{url}/jobs/v1/jobs/{id}"))
                .bearer_auth(&token)
                .header("x-min-event-seq", seq.to_string())
                .send()
                .await
                .unwrap();
            res.status().as_u16()
        }
    };
    let (first, seq) = enqueue().await;
    assert_eq!(get(first.clone(), seq).await, 200);

    pg.down().unwrap();
    for url in [query.url(), _projector.url()] {
        eventually(
            Duration::from_secs(15),
            "readyz to report the database",
            || async {
                let r = http.get(format!("{url}/readyz")).send().await.ok()?;
                (r.status() == 503).then_some(())
            },
        )
        .await;
    }
    let status = get(first.clone(), 0).await;
    assert_eq!(
        status, 503,
        "a read without its database is a 503, never a 500"
    );
    let (second, seq2) = enqueue().await;

    pg.up().unwrap();
    for url in [query.url(), _projector.url()] {
        eventually(Duration::from_secs(30), "readyz to recover", || async {
            let r = http.get(format!("{url}/readyz")).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
    }
    let status = eventually(
        Duration::from_secs(30),
        "the projector to catch up",
        || async {
            let s = get(second.clone(), seq2).await;
            (s == 200).then_some(s)
        },
    )
    .await;
    assert_eq!(status, 200);
    let ids: Vec<uuid::Uuid> = [first, second].iter().map(|i| i.parse().unwrap()).collect();
    tests::assert_invariants(&nats.url(), &db, &ids).await;
}

#[tokio::test]
async fn losing_a_node_of_a_three_node_cluster_under_load_loses_no_acknowledged_job() {
    let mut cluster = tests::NatsCluster::start().await.unwrap();
    let db = tests::TestDb::create().await.unwrap();
    let keys = tests::Keys::get();
    let url = cluster.url();
    let _projector = tests::start_projector(&url, &db.url).await.unwrap();
    let command = tests::start_command(&url, &keys).await.unwrap();
    let token = keys.token(uuid::Uuid::new_v4(), &["member"]);
    let js = async_nats::jetstream::new(
        async_nats::connect(url.split(',').collect::<Vec<_>>())
            .await
            .unwrap(),
    );
    let replicas = js
        .get_stream("JOBS_EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .num_replicas;
    assert_eq!(replicas, 3);

    let worker = tests::Worker::new(
        command.worker_port,
        &tests::Tls::get().worker_pem("cluster"),
        "cluster",
    );
    let load = tests::Load::start(&command.url(), &token, worker, 4);
    let http = reqwest::Client::new();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    cluster.kill(0);
    // Service continues on the other two nodes.
    eventually(
        Duration::from_secs(30),
        "enqueues to succeed with a node down",
        || async {
            let res = http
                .post(format!("{}/jobs/v1/enqueue", command.url()))
                .bearer_auth(&token)
                .json(&email_job(1))
                .send()
                .await
                .ok()?;
            (res.status() == 201).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let acknowledged = load.finish().await;
    assert!(acknowledged.len() > 10);
    // Checked on the two surviving nodes.
    tests::assert_invariants(&url, &db.url, &acknowledged).await;
}

/// A bulk load of 1,300 jobs (13 batches): 1,300 new rows in `jobs` and `job_events`, past the
/// insert rule's 1,000 + 20 %, so both are due for a vacuum although nothing in them died.
/// Returns the last batch's event sequence.
async fn bulk_load(app: &TestApp) -> u64 {
    let mut last = 0;
    for chunk in 0..13 {
        let jobs: Vec<Value> = (0..100).map(|i| email_job(chunk * 100 + i)).collect();
        last = app.enqueue_batch(&jobs).await.1;
    }
    last
}

#[tokio::test]
async fn the_projector_vacuums_and_analyzes_the_read_model_where_postgres_does_not() {
    // Postgres here runs with autovacuum off (as this machine's does): the projector keeps
    // its tables' statistics fresh itself, or the planner soon scans bloated tables.
    let app = TestApp::spawn_with(false).await;
    let projector = tests::start_projector_doing_upkeep(&app.nats.url(), &app.db.url)
        .await
        .expect("projector");
    let mut last = bulk_load(&app).await;
    // Then 80 cancelled: changes to `jobs` and more rows in the insert-only `job_events`.
    for i in 0..80 {
        let (job, _) = app.enqueue(&email_job(2_000 + i)).await;
        let id = job["id"].as_str().unwrap().to_string();
        let res = app
            .http
            .post(format!("{}/jobs/v1/jobs/{id}/cancel", app.command.url()))
            .bearer_auth(&app.token)
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        last = tests::event_seq(&res);
    }
    let pool = app.pool().await;
    let (_, got) = app
        .get("/jobs/v1/jobs?status=cancelled&limit=100", last)
        .await;
    assert_eq!(got["data"].as_array().map(Vec::len), Some(80));
    for table in ["jobs", "job_events"] {
        eventually(Duration::from_secs(30), "a maintenance round", || {
            let pool = pool.clone();
            async move {
                // Every row a vacuum has seen: none inserted since, so the rule is behind
                // us (the rule itself is `maintenance::upkeep`'s unit test).
                let (vacuumed, analyzed, inserted): (
                    Option<chrono::DateTime<chrono::Utc>>,
                    Option<chrono::DateTime<chrono::Utc>>,
                    i64,
                ) = sqlx::query_as(
                    "SELECT last_vacuum, last_analyze, n_ins_since_vacuum \
                     FROM pg_stat_user_tables WHERE relname = $1",
                )
                .bind(table)
                .fetch_one(&pool)
                .await
                .ok()?;
                (vacuumed.is_some() && analyzed.is_some() && inserted < 1_000).then_some(())
            }
        })
        .await;
    }
    // And `/metrics` says so: upkeep on, both tables vacuumed, rounds counted. (A table's
    // vacuum is counted just after Postgres records it, and a round once all its tables are
    // done, so this waits for both counts.)
    let m = upkeep_metrics(&app, &projector, "the upkeep's metrics", |m| {
        let vacuumed = ["jobs", "job_events"].iter().all(|table| {
            let vacuums =
                format!(r#"jobs_projector_upkeep_tables_total{{action="vacuum",table="{table}"}}"#);
            m.get(&vacuums).is_some_and(|n| *n >= 1.0)
        });
        vacuumed
            && m.get("jobs_projector_upkeep_rounds_total")
                .is_some_and(|n| *n >= 1.0)
    })
    .await;
    assert_eq!(m["jobs_projector_upkeep_enabled"], 1.0);
    assert!(m["jobs_projector_upkeep_seconds_total"] > 0.0);
}

/// Shared advisory locks on `projector::rebuild::REBUILD_LOCK` in this database, as a rebuild
/// takes it: (granted, waiting). (The upkeep's look takes it exclusively for a moment.)
async fn rebuild_locks(pool: &sqlx::PgPool) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE granted AND mode = 'ShareLock'), \
                count(*) FILTER (WHERE NOT granted AND mode = 'ShareLock') \
         FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
         WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND d.datname = current_database() \
           AND ((l.classid::bigint << 32) | l.objid::bigint) = $1",
    )
    .bind(projector::rebuild::REBUILD_LOCK)
    .fetch_one(pool)
    .await
    .expect("pg_locks")
}

/// The upkeep's metrics once `ready` holds for them.
async fn upkeep_metrics(
    app: &TestApp,
    projector: &tests::Running,
    what: &str,
    ready: impl Fn(&std::collections::HashMap<String, f64>) -> bool,
) -> std::collections::HashMap<String, f64> {
    tests::scrape_until(
        &app.http,
        &projector.url(),
        Duration::from_secs(30),
        what,
        ready,
    )
    .await
}

#[tokio::test]
async fn the_upkeep_waits_while_a_rebuild_runs_and_a_rebuild_says_it_runs() {
    let app = TestApp::spawn_with(false).await;
    let projector = tests::start_projector_doing_upkeep(&app.nats.url(), &app.db.url)
        .await
        .expect("projector");
    let pool = app.pool().await;
    let lock = projector::rebuild::REBUILD_LOCK;
    let deferred = |m: &std::collections::HashMap<String, f64>| {
        m.get("jobs_projector_upkeep_deferred_total")
            .copied()
            .unwrap_or(0.0)
    };

    // A rebuild running, as `projector rebuild` marks itself: the lock held shared.
    let mut rebuilding = pool.acquire().await.expect("a connection").detach();
    sqlx::query("SELECT pg_advisory_lock_shared($1)")
        .bind(lock)
        .execute(&mut rebuilding)
        .await
        .expect("the lock");
    let last = bulk_load(&app).await;
    app.get("/jobs/v1/jobs?limit=1", last).await;
    // Two more rounds with the load in the tables: each deferred, nothing vacuumed.
    let now = deferred(&upkeep_metrics(&app, &projector, "the upkeep's metrics", |_| true).await);
    let m = upkeep_metrics(&app, &projector, "two deferred rounds", |m| {
        deferred(m) >= now + 2.0
    })
    .await;
    assert!(
        !m.keys()
            .any(|k| k.starts_with("jobs_projector_upkeep_tables_total") && m[k] > 0.0),
        "no table vacuumed or analyzed while the rebuild ran: {m:?}"
    );
    let (vacuumed, inserted): (Option<chrono::DateTime<chrono::Utc>>, i64) = sqlx::query_as(
        "SELECT last_vacuum, n_ins_since_vacuum FROM pg_stat_user_tables WHERE relname = 'jobs'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        vacuumed.is_none() && inserted >= 1_300,
        "{vacuumed:?} {inserted}"
    );

    // The rebuild over: the next round does the work it deferred.
    sqlx::query("SELECT pg_advisory_unlock_shared($1)")
        .bind(lock)
        .execute(&mut rebuilding)
        .await
        .expect("unlock");
    let vacuums = r#"jobs_projector_upkeep_tables_total{action="vacuum",table="jobs"}"#;
    upkeep_metrics(&app, &projector, "the deferred vacuum", |m| {
        m.get(vacuums).is_some_and(|n| *n >= 1.0)
    })
    .await;

    // And `projector rebuild` takes that lock before anything else: held exclusively here,
    // the rebuild waits for it; once free, the rebuild runs, and it leaves no lock behind.
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(lock)
        .execute(&mut rebuilding)
        .await
        .expect("the lock");
    let rebuild = tokio::spawn(tests::procs::projector_rebuild_owned(
        app.nats.url(),
        app.db.url.clone(),
    ));
    eventually(
        Duration::from_secs(30),
        "the rebuild waiting for its lock",
        || {
            let pool = pool.clone();
            async move { (rebuild_locks(&pool).await.1 == 1).then_some(()) }
        },
    )
    .await;
    let schemas: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'rebuild_%'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(schemas, 0, "the rebuild began before it held its lock");
    sqlx::Connection::close(rebuilding).await.expect("closing");
    let report = tokio::time::timeout(Duration::from_secs(120), rebuild)
        .await
        .expect("the rebuild ends")
        .expect("the rebuild task");
    assert!(report.contains("events"), "{report}");
    // Released when its connection closed (the server ends that backend a moment after).
    eventually(
        Duration::from_secs(10),
        "the rebuild's lock released",
        || {
            let pool = pool.clone();
            async move { (rebuild_locks(&pool).await == (0, 0)).then_some(()) }
        },
    )
    .await;
}

/// The backend of a `VACUUM` or an `ANALYZE` of `jobs` in this test's database, if one runs
/// waiting on a lock.
async fn upkeep_waiting(pool: &sqlx::PgPool) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity \
         WHERE datname = current_database() AND query ~ '^(VACUUM|ANALYZE).* jobs$' \
           AND wait_event_type = 'Lock'",
    )
    .fetch_optional(pool)
    .await
    .unwrap()
}

async fn backend_alive(pool: &sqlx::PgPool, pid: i32) -> bool {
    sqlx::query_scalar("SELECT count(*) > 0 FROM pg_stat_activity WHERE pid = $1")
        .bind(pid)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_upkeep_vacuum_ends_with_the_projector_whether_stopped_or_killed() {
    // A VACUUM sends nothing to its client until it ends, so Postgres went on with one after
    // the projector that started it had gone, and a DROP DATABASE waited for it. Here the
    // projector's VACUUM (or ANALYZE) of `jobs` waits on a lock this test holds (as long as
    // one of a big table would run), and the projector is stopped, then killed.
    let app = TestApp::spawn_with(false).await;
    let pool = app.pool().await;
    // 1,300 new rows: past the insert rule's 1,000 + 20 %, so `jobs` is due for a vacuum.
    for chunk in 0..13 {
        let jobs: Vec<Value> = (0..100).map(|i| email_job(chunk * 100 + i)).collect();
        app.enqueue_batch(&jobs).await;
    }
    // Inserts take no lock that conflicts with this one; a VACUUM or an ANALYZE does.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE jobs IN SHARE UPDATE EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let mut env = projector_env(&app);
    env.push(("JOBS_PROJECTOR_MAINTENANCE", "always".into()));
    env.push(("JOBS_PROJECTOR_MAINTENANCE_SECONDS", "1".into()));
    for killed in [false, true] {
        let mut projector = Bin::spawn("projector", &env).unwrap();
        let backend = eventually(
            Duration::from_secs(30),
            "the projector's VACUUM or ANALYZE of jobs waiting on the test's lock",
            || upkeep_waiting(&pool),
        )
        .await;
        if killed {
            projector.kill9();
        } else {
            // Stopped gracefully: at once, not once the statement would have ended.
            let status = projector.terminate(Duration::from_secs(10));
            assert!(
                status.is_some_and(|s| s.success()),
                "the projector stopped cleanly within 10 s while its upkeep waited: {status:?}\n{}",
                projector.log_text()
            );
        }
        eventually(
            Duration::from_secs(15),
            "the upkeep statement's backend to end with the projector",
            || async { (!backend_alive(&pool, backend).await).then_some(()) },
        )
        .await;
    }
    blocker.rollback().await.unwrap();
    // Nothing was lost on the way: a projector started again has every job in the read model.
    let _projector = Bin::spawn("projector", &projector_env(&app)).unwrap();
    eventually(
        Duration::from_secs(30),
        "all 1,300 jobs projected",
        || async { (count(&pool, "SELECT count(*) FROM jobs").await == 1_300).then_some(()) },
    )
    .await;
}

/// command-svc's `jobs_snapshot_restored_position` (0: it replayed the whole stream).
async fn restored_position(http: &reqwest::Client, instance: &tests::Running) -> f64 {
    tests::scrape(http, &instance.url()).await["jobs_snapshot_restored_position"]
}

async fn enqueue_at(app: &TestApp, instance: &tests::Running, body: &Value) -> String {
    let res = app
        .http
        .post(format!("{}/jobs/v1/enqueue", instance.url()))
        .bearer_auth(&app.token)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    body["data"]["id"].as_str().unwrap().to_string()
}

fn snap_worker(instance: &tests::Running) -> tests::Worker {
    tests::Worker::new(
        instance.worker_port,
        &tests::Tls::get().worker_pem("snap"),
        "snap",
    )
}

fn ids(jobs: &[Value]) -> std::collections::BTreeSet<String> {
    jobs.iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_restart_from_the_snapshot_holds_what_it_held_plus_what_came_while_it_was_down() {
    let app = TestApp::spawn_with(false).await;
    let dir = tempfile::tempdir().unwrap();
    let config = || command_svc::Config {
        snapshot_dir: Some(dir.path().to_path_buf()),
        ..tests::command_config(&app.nats.url(), &app.keys)
    };
    let first = tests::start_command_with(config()).await.unwrap();
    tests::wait_ready(&first).await;
    assert_eq!(restored_position(&app.http, &first).await, 0.0);
    let mut pending = std::collections::BTreeSet::new();
    for n in 0..30 {
        pending
            .insert(enqueue_at(&app, &first, &json!({"type": "snap", "payload": {"n": n}})).await);
    }
    let worker = snap_worker(&first);
    let leased = worker
        .lease(&json!({"types": ["snap"], "max_jobs": 5}))
        .await;
    assert_eq!(leased.len(), 5);
    for job in &leased[..2] {
        assert_eq!(worker.complete(job).await.0, 200);
    }
    for id in ids(&leased) {
        pending.remove(&id);
    }
    first.stop().await;
    let snapshot = dir.path().join(command_svc::snapshot::FILE_NAME);
    assert!(snapshot.exists(), "a graceful stop writes the snapshot");

    // While it is down, another instance appends: new jobs, and one leased job completes.
    let other_worker = app.worker("snap");
    for n in 30..40 {
        pending.insert(
            enqueue_at(
                &app,
                &app.command,
                &json!({"type": "snap", "payload": {"n": n}}),
            )
            .await,
        );
    }
    assert_eq!(other_worker.complete(&leased[2]).await.0, 200);

    let second = tests::start_command_with(config()).await.unwrap();
    tests::wait_ready(&second).await;
    let position = restored_position(&app.http, &second).await;
    assert!(position > 0.0, "it started from the snapshot");
    let worker = snap_worker(&second);
    // Exactly the jobs still pending: none lost, none finished or leased twice.
    let again = worker
        .lease(&json!({"types": ["snap"], "max_jobs": 100}))
        .await;
    assert_eq!(ids(&again), pending);
    // The leases it held before are still held, the one completed while it was down is gone.
    for job in &leased[3..] {
        let (status, body) = worker.heartbeat(job, json!({})).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = worker.heartbeat(&leased[2], json!({})).await;
    assert_eq!(status, 409, "{body}");

    // A torn snapshot is not used: the whole stream is replayed, to the same state.
    second.stop().await;
    let whole = std::fs::read(&snapshot).unwrap();
    std::fs::write(&snapshot, &whole[..whole.len() / 2]).unwrap();
    let third = tests::start_command_with(config()).await.unwrap();
    tests::wait_ready(&third).await;
    assert_eq!(restored_position(&app.http, &third).await, 0.0);
    let worker = snap_worker(&third);
    assert!(worker
        .lease(&json!({"types": ["snap"], "max_jobs": 100}))
        .await
        .is_empty());
    for job in again.iter().chain(&leased[3..]) {
        let (status, body) = worker.heartbeat(job, json!({})).await;
        assert_eq!(status, 200, "{body}");
    }
    third.stop().await;
}

/// The stream's last sequence now.
async fn stream_last(app: &TestApp) -> u64 {
    let js = async_nats::jetstream::new(common::nats::connect_once(&app.nats.url()).await.unwrap());
    let mut stream = js.get_stream("JOBS_EVENTS").await.unwrap();
    stream.info().await.unwrap().state.last_sequence
}

#[tokio::test]
async fn kill_9_after_a_periodic_snapshot_restarts_from_it_and_loses_nothing_after_it() {
    let app = TestApp::spawn_with(false).await;
    let dir = tempfile::tempdir().unwrap();
    let (port, worker_port) = (tests::procs::free_port(), tests::procs::free_port());
    let env = tests::command_env(
        &app,
        port,
        worker_port,
        &[
            (
                "JOBS_SNAPSHOT_DIR",
                dir.path().to_str().unwrap().to_string(),
            ),
            ("JOBS_SNAPSHOT_SECONDS", "1".to_string()),
        ],
    );
    let base = format!("http://127.0.0.1:{port}");
    let instance = tests::Running::external(port, worker_port);
    let mut svc = Bin::spawn("command-svc", &env).unwrap();
    tests::wait_ready(&instance).await;
    let jobs: Vec<Value> = (0..100)
        .map(|n| json!({"type": "p", "payload": {"n": n}}))
        .collect();
    let res = app
        .http
        .post(format!("{base}/jobs/v1/enqueue/batch"))
        .bearer_auth(&app.token)
        .json(&json!({"jobs": jobs}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    let mut pending: std::collections::BTreeSet<String> = body["data"]["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(pending.len(), 100);
    let worker = snap_worker(&instance);
    let leased = worker.lease(&json!({"types": ["p"], "max_jobs": 10})).await;
    assert_eq!(leased.len(), 10);
    for job in &leased[..5] {
        assert_eq!(worker.complete(job).await.0, 200);
    }
    // A periodic snapshot that covers all of that.
    let covered = stream_last(&app).await;
    eventually(Duration::from_secs(20), "a periodic snapshot", || async {
        let written = tests::scrape(&app.http, &base).await["jobs_snapshot_written_position"];
        (written >= covered as f64).then_some(())
    })
    .await;

    // After it: more jobs, more completions, more leases; then the process is killed.
    for n in 0..20 {
        pending.insert(
            enqueue_at(
                &app,
                &instance,
                &json!({"type": "p", "payload": {"late": n}}),
            )
            .await,
        );
    }
    for job in &leased[5..8] {
        assert_eq!(worker.complete(job).await.0, 200);
    }
    let late_leased = worker.lease(&json!({"types": ["p"], "max_jobs": 4})).await;
    assert_eq!(late_leased.len(), 4);
    for id in ids(&leased).iter().chain(&ids(&late_leased)) {
        pending.remove(id);
    }
    svc.kill9();

    let _svc = Bin::spawn("command-svc", &env).unwrap();
    tests::wait_ready(&instance).await;
    let restored = tests::scrape(&app.http, &base).await["jobs_snapshot_restored_position"];
    assert!(
        restored >= covered as f64,
        "it started from the periodic snapshot ({restored})"
    );
    let worker = snap_worker(&instance);
    let mut rest = worker
        .lease(&json!({"types": ["p"], "max_jobs": 100}))
        .await;
    rest.extend(
        worker
            .lease(&json!({"types": ["p"], "max_jobs": 100}))
            .await,
    );
    assert_eq!(rest.len(), pending.len(), "each job once");
    assert_eq!(
        ids(&rest),
        pending,
        "every pending job, none leased or finished"
    );
    for job in leased[8..].iter().chain(&late_leased) {
        let (status, body) = worker.heartbeat(job, json!({})).await;
        assert_eq!(status, 200, "a lease from before the kill is held: {body}");
    }
    for job in &leased[..8] {
        let (status, body) = worker.heartbeat(job, json!({})).await;
        assert_eq!(status, 409, "a completed job stays completed: {body}");
    }
}

#[tokio::test]
async fn a_write_model_whose_copy_of_a_job_is_wrong_takes_the_job_from_its_history() {
    // Two instances on one stream. Instance A's copy of a job is made wrong by hand (a later
    // sequence and another hash than the stream's: what the late-enqueue race of 2026-12-07
    // once left). Instance B cancels the job; A's follower cannot fold that event onto its
    // copy, counts it, and takes the job's state from the stream instead of keeping a ghost.
    let app = TestApp::spawn().await;
    let a = command_svc::Application::build(tests::command_config(&app.nats.url(), &app.keys))
        .await
        .expect("instance A");
    let (engine, a_url) = (a.engine(), format!("http://127.0.0.1:{}", a.port()));
    let a_task = tokio::spawn(a.run_until_stopped(std::future::pending()));

    let (job, _) = app.enqueue(&email_job(1)).await;
    let id: uuid::Uuid = job["id"].as_str().unwrap().parse().unwrap();
    // Another job's event after it, so that A's wrong sequence lies before the cancel's.
    let (_, later) = app.enqueue(&email_job(2)).await;
    assert!(engine.wait_for(later).await, "A follows B's enqueues");
    let mut wrong = engine.model().job(&id).cloned().expect("A holds the job");
    wrong.last_event_seq = later;
    wrong.last_event_hash = Some(events::EventHash([0; 32]));
    engine.absorb(wrong);
    assert!(engine
        .model()
        .job(&id)
        .is_some_and(|j| j.last_event_seq == later));

    let res = app
        .http
        .post(format!("{}/jobs/v1/jobs/{id}/cancel", app.command.url()))
        .bearer_auth(&app.token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let cancelled = tests::event_seq(&res);
    assert!(engine.wait_for(cancelled).await, "A follows B's cancel");

    let m = tests::scrape(&app.http, &a_url).await;
    assert_eq!(m["jobs_write_model_refused_events_total"], 1.0);
    // Cancelled in the stream, so finished in A: no longer held, and seen as done.
    assert!(
        engine.model().job(&id).is_none(),
        "A still holds its wrong copy: {:?}",
        engine
            .model()
            .job(&id)
            .map(|j| (j.status, j.last_event_seq))
    );
    assert!(engine.model().reflects(&id, cancelled));
    a_task.abort();
}
