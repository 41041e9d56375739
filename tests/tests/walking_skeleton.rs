//! The walking skeleton end to end: enqueue → JetStream → projector → Postgres → query, through
//! the gateway and directly, with the contract's envelope, codes and headers.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tests::{email_job, event_seq, json as body_json, Gateway, TestApp};

#[tokio::test]
async fn a_job_round_trips_through_the_services_and_the_gateway() {
    let app = TestApp::spawn().await;
    let gw = Gateway::start(app.command.port, app.query.port)
        .await
        .expect("gateway");
    let seed = json!({"type": "email.send", "payload": {"to": "user@example.com", "template": "welcome"}, "priority": 5});

    for base in [gw.url(), app.command.url()] {
        let res = app
            .http
            .post(format!("{base}/jobs/v1/enqueue"))
            .bearer_auth(&app.token)
            .header("x-request-id", "rt-1")
            .json(&seed)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        assert_eq!(res.headers()["x-request-id"], "rt-1");
        let seq = event_seq(&res);
        let location = res.headers()["location"].to_str().unwrap().to_string();
        let created = body_json(res).await.unwrap();
        assert_eq!(created["error"], Value::Null);
        assert_eq!(created["meta"]["request_id"], "rt-1");
        assert_eq!(created["meta"]["tenant_id"], app.tenant.to_string());
        assert_eq!(created["meta"]["trace_id"].as_str().unwrap().len(), 32);
        let job = &created["data"];
        let id = job["id"].as_str().unwrap();
        assert_eq!(location, format!("/jobs/v1/jobs/{id}"));
        assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
        assert_eq!(
            (job["status"].as_str(), job["priority"].as_i64()),
            (Some("pending"), Some(5))
        );
        assert_eq!(
            (job["queue"].as_str(), job["max_attempts"].as_i64()),
            (Some("default"), Some(3))
        );
        assert_eq!(
            (job["version"].as_i64(), job["attempts"].as_i64()),
            (Some(1), Some(0))
        );
        assert_eq!(job["payload"], seed["payload"]);

        for read_base in [gw.url(), app.query.url()] {
            let res = app
                .http
                .get(format!("{read_base}/jobs/v1/jobs/{id}"))
                .bearer_auth(&app.token)
                .header("x-min-event-seq", seq.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            let projected: u64 = res.headers()["x-projection-seq"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(projected >= seq, "read-your-writes: {projected} < {seq}");
            assert_eq!(res.headers()["etag"], "\"1\"");
            let got = body_json(res).await.unwrap();
            assert_eq!(
                &got["data"], job,
                "the read model shows exactly what the command answered"
            );

            let list = app
                .http
                .get(format!(
                    "{read_base}/jobs/v1/jobs?type=email.send&limit=100"
                ))
                .bearer_auth(&app.token)
                .send()
                .await
                .unwrap();
            let list = body_json(list).await.unwrap();
            assert!(list["data"]
                .as_array()
                .unwrap()
                .iter()
                .any(|j| j["id"] == job["id"]));
            assert_eq!(list["page"]["limit"], 100);

            let events = app
                .http
                .get(format!("{read_base}/jobs/v1/jobs/{id}/events"))
                .bearer_auth(&app.token)
                .send()
                .await
                .unwrap();
            let events = body_json(events).await.unwrap();
            let events = events["data"].as_array().unwrap();
            assert_eq!(events.len(), 1);
            assert_eq!(events[0]["type"], "JobEnqueued");
            assert_eq!(events[0]["seq"].as_u64(), Some(seq));
            assert_eq!(events[0]["actor"]["kind"], "user");
            assert_eq!(events[0]["data"]["payload"], seed["payload"]);
        }
    }
}

#[tokio::test]
async fn a_batch_is_all_or_none() {
    let app = TestApp::spawn().await;
    let jobs: Vec<Value> = (0..10).map(email_job).collect();
    let res = app
        .request(Method::POST, "/jobs/v1/enqueue/batch", &app.token)
        .json(&json!({ "jobs": jobs }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let last = event_seq(&res);
    let body = body_json(res).await.unwrap();
    let created = body["data"]["jobs"].as_array().unwrap();
    assert_eq!(created.len(), 10);
    let seqs: Vec<u64> = created
        .iter()
        .map(|j| j["last_event_seq"].as_u64().unwrap())
        .collect();
    assert_eq!(*seqs.last().unwrap(), last);
    for j in created {
        let (status, got) = app
            .get(
                &format!("/jobs/v1/jobs/{}", j["id"].as_str().unwrap()),
                last,
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(&got["data"], j);
    }

    // One bad job: nothing is appended, and the error names it.
    let mut bad: Vec<Value> = (0..5).map(email_job).collect();
    bad[3]["priority"] = json!(42);
    let res = app
        .request(Method::POST, "/jobs/v1/enqueue/batch", &app.token)
        .json(&json!({ "jobs": bad }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let err = body_json(res).await.unwrap();
    assert_eq!(err["error"]["code"], "VALIDATION_FAILED");
    assert_eq!(
        err["error"]["details"]["fields"][0]["field"],
        "jobs[3].priority"
    );
    let js = async_nats::jetstream::new(async_nats::connect(app.nats.url()).await.unwrap());
    let mut stream = js.get_stream("JOBS_EVENTS").await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        10,
        "the refused batch appended nothing"
    );

    for n in [0usize, 501] {
        let jobs: Vec<Value> = (0..n).map(email_job).collect();
        let res = app
            .request(Method::POST, "/jobs/v1/enqueue/batch", &app.token)
            .json(&json!({ "jobs": jobs }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "a batch of {n}");
    }
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_in_the_envelope() {
    let app = TestApp::spawn().await;
    let post = |body: String, ct: &'static str| {
        app.request(Method::POST, "/jobs/v1/enqueue", &app.token)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let cases: Vec<(String, &str, u16, &str, &str)> = vec![
        (
            "{\"type\": \"x\", \"payload\": {}".into(),
            "application/json",
            400,
            "VALIDATION_FAILED",
            "body",
        ),
        (
            json!({"type": "x", "payload": {}, "colour": "red"}).to_string(),
            "application/json",
            400,
            "VALIDATION_FAILED",
            "",
        ),
        (
            json!({"type": "x", "payload": {}, "priority": "high"}).to_string(),
            "application/json",
            400,
            "VALIDATION_FAILED",
            "priority",
        ),
        (
            json!({"type": "bad type!", "payload": {}}).to_string(),
            "application/json",
            400,
            "VALIDATION_FAILED",
            "type",
        ),
        (
            json!({"payload": {}}).to_string(),
            "application/json",
            400,
            "VALIDATION_FAILED",
            "body",
        ),
        (
            json!({"type": "x", "payload": {}, "max_attempts": 101}).to_string(),
            "application/json",
            400,
            "VALIDATION_FAILED",
            "max_attempts",
        ),
        (
            json!({"type": "x", "payload": {}, "run_at": "tomorrow"}).to_string(),
            "application/json",
            400,
            "VALIDATION_FAILED",
            "run_at",
        ),
        (
            json!({"type": "x", "payload": {}}).to_string(),
            "text/plain",
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            "",
        ),
        (
            json!({"type": "x", "payload": {"blob": "a".repeat(300 * 1024)}}).to_string(),
            "application/json",
            413,
            "PAYLOAD_TOO_LARGE",
            "",
        ),
        (
            json!({"type": "x", "payload": {"blob": "a".repeat(2 * 1024 * 1024)}}).to_string(),
            "application/json",
            413,
            "PAYLOAD_TOO_LARGE",
            "",
        ),
    ];
    for (body, ct, status, code, field) in cases {
        let res = post(body.clone(), ct).await.unwrap();
        assert_eq!(
            res.status().as_u16(),
            status,
            "{}",
            &body[..body.len().min(80)]
        );
        let err = body_json(res).await.unwrap();
        assert_eq!(err["data"], Value::Null);
        assert_eq!(err["error"]["code"], code);
        assert!(err["meta"]["request_id"]
            .as_str()
            .is_some_and(|r| !r.is_empty()));
        if !field.is_empty() {
            let fields = err["error"]["details"]["fields"].as_array().unwrap();
            assert!(
                fields.iter().any(|f| f["field"] == field),
                "{field} in {fields:?}"
            );
        }
    }
    // A scheduled job: run_at in the future.
    let (job, _) = app
        .enqueue(&json!({"type": "report.build", "payload": {}, "delay_seconds": 3600}))
        .await;
    assert_eq!(job["status"], "scheduled");
    // Unknown routes and query parameters answer in the envelope too.
    let res = app
        .request(Method::GET, "/jobs/v1/nope", &app.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(body_json(res).await.unwrap()["error"]["code"], "NOT_FOUND");
    for q in [
        "status=sleeping",
        "limit=0",
        "limit=101",
        "order=sideways",
        "colour=red",
        "priority=11",
    ] {
        let res = app
            .request(Method::GET, &format!("/jobs/v1/jobs?{q}"), &app.token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{q}");
        assert_eq!(
            body_json(res).await.unwrap()["error"]["code"],
            "VALIDATION_FAILED"
        );
    }
}

#[tokio::test]
async fn pagination_sees_every_job_once_while_jobs_keep_arriving() {
    let app = TestApp::spawn().await;
    let mut existing = HashSet::new();
    let mut last_seq = 0;
    for chunk in 0..5 {
        let jobs: Vec<Value> = (0..50).map(|i| email_job(chunk * 50 + i)).collect();
        let (created, seq) = app.enqueue_batch(&jobs).await;
        last_seq = seq;
        for j in created {
            existing.insert(j["id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(existing.len(), 250);

    let stop = tokio_util_stop();
    let writer = {
        let (http, url, token, stop) = (
            app.http.clone(),
            app.command.url(),
            app.token.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut n = 0;
            // A steady trickle of new jobs, slower than the pager reads them.
            let mut tick = tokio::time::interval(Duration::from_millis(3));
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                let res = http
                    .post(format!("{url}/jobs/v1/enqueue"))
                    .bearer_auth(&token)
                    .json(&email_job(10_000 + n))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 201);
                n += 1;
            }
            n
        })
    };

    // Unfiltered, and in one status (every job here is pending): the status list states its
    // position over the status index's columns, the plain list over (created_at, id).
    for (order, filter) in [
        ("desc", ""),
        ("asc", ""),
        ("desc", "&status=pending"),
        ("asc", "&status=pending"),
    ] {
        let mut seen = HashSet::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut path = format!("/jobs/v1/jobs?limit=20&order={order}{filter}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let (status, page) = app.get(&path, last_seq).await;
            assert_eq!(status, 200, "{page}");
            pages += 1;
            for j in page["data"].as_array().unwrap() {
                assert!(
                    seen.insert(j["id"].as_str().unwrap().to_string()),
                    "a job was listed twice"
                );
            }
            assert_eq!(page["page"]["limit"], 20);
            if page["page"]["has_more"] == json!(false) {
                assert_eq!(page["page"]["next_cursor"], Value::Null);
                break;
            }
            cursor = Some(page["page"]["next_cursor"].as_str().unwrap().to_string());
            if order == "desc" {
                assert!(
                    pages <= 25,
                    "desc pagination does not chase jobs newer than its first page"
                );
            }
            assert!(pages < 1000, "pagination does not end");
            if pages == 3 && order == "desc" && filter.is_empty() {
                // A tampered cursor and a cursor used with other filters are refused.
                let c = cursor.clone().unwrap();
                let mut t = c.clone().into_bytes();
                t[5] = if t[5] == b'A' { b'B' } else { b'A' };
                let tampered = String::from_utf8(t).unwrap();
                for bad in [
                    format!("/jobs/v1/jobs?limit=20&order=desc&cursor={tampered}"),
                    format!("/jobs/v1/jobs?limit=20&order=desc&status=pending&cursor={c}"),
                    "/jobs/v1/jobs?cursor=not-a-cursor".to_string(),
                ] {
                    let (status, err) = app.get(&bad, 0).await;
                    assert_eq!(status, 400, "{bad}");
                    assert_eq!(err["error"]["code"], "VALIDATION_FAILED");
                }
            }
        }
        let missing: Vec<_> = existing.difference(&seen).collect();
        assert!(
            missing.is_empty(),
            "{order}{filter}: {} pre-existing jobs never listed",
            missing.len()
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.await.unwrap();
    assert!(written > 0, "the writer ran while we paginated");
}

fn tokio_util_stop() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false))
}

#[tokio::test]
async fn a_tenant_never_sees_another_tenants_job() {
    let app = TestApp::spawn().await;
    let (job, seq) = app.enqueue(&email_job(1)).await;
    let id = job["id"].as_str().unwrap();
    let other = app.keys.token(uuid::Uuid::new_v4(), &["admin"]);
    let missing = uuid::Uuid::now_v7();
    for path in [
        format!("/jobs/v1/jobs/{id}"),
        format!("/jobs/v1/jobs/{id}/events"),
    ] {
        let res = app
            .request(Method::GET, &path, &other)
            .header("x-min-event-seq", seq.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "{path}");
        let theirs = body_json(res).await.unwrap();
        let res = app
            .request(Method::GET, &path.replace(id, &missing.to_string()), &other)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404);
        let absent = body_json(res).await.unwrap();
        assert_eq!(
            theirs["error"], absent["error"],
            "another tenant's job looks exactly like no job"
        );
    }
    let res = app
        .request(Method::GET, "/jobs/v1/jobs?limit=100", &other)
        .send()
        .await
        .unwrap();
    assert_eq!(body_json(res).await.unwrap()["data"], json!([]));
    // The owner still sees it.
    let (status, _) = app.get(&format!("/jobs/v1/jobs/{id}"), seq).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn health_readiness_and_metrics_need_no_token() {
    let app = TestApp::spawn().await;
    let projector = app.projector.as_ref().unwrap();
    for base in [app.command.url(), app.query.url(), projector.url()] {
        for path in ["/healthz", "/readyz"] {
            let res = app.http.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(res.status(), 200, "{base}{path}: {:?}", res.text().await);
        }
        let res = app
            .http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let text = res.text().await.unwrap();
        assert!(text.contains("# TYPE"), "{base}/metrics is Prometheus text");
    }
    app.enqueue(&email_job(1)).await;
    let text = app
        .http
        .get(format!("{}/metrics", app.command.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("jobs_events_appended_total{type=\"JobEnqueued\"} 1"),
        "{text}"
    );
    assert!(text.contains("route=\"/jobs/v1/enqueue\""));
    let text = eventually_metric(&app, &projector.url(), "jobs_projector_checkpoint 1").await;
    assert!(text.contains("jobs_projector_events_applied_total 1"));
}

async fn eventually_metric(app: &TestApp, base: &str, needle: &str) -> String {
    tests::eventually(Duration::from_secs(10), needle, || async {
        let t = app
            .http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        t.contains(needle).then_some(t)
    })
    .await
}

/// Whether process `pid` still runs (a zombie, exited and not yet reaped, does not).
fn running(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command name's closing parenthesis.
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
    })
}

#[tokio::test]
async fn a_stopped_gateway_leaves_no_nginx_worker_behind() {
    let (command, query) = (tests::procs::free_port(), tests::procs::free_port());
    let gw = Gateway::start(command, query).await.expect("gateway");
    let master = gw.pid().expect("the master runs").to_string();
    let children = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
        .expect("the master's children");
    let workers: Vec<&str> = children.split_whitespace().collect();
    assert!(!workers.is_empty(), "nginx started no worker");
    assert!(workers.iter().all(|w| running(w)));
    drop(gw);
    // The drop waits for the master, which stops its workers before it exits.
    let left: Vec<&&str> = workers.iter().filter(|w| running(w)).collect();
    assert!(left.is_empty(), "nginx workers left running: {left:?}");
}

/// The projector's `jobs_projector_batch_size` histogram once it counts `events` events:
/// (batches, events in them).
async fn batches_of(app: &TestApp, projector: &tests::Running, events: f64) -> (f64, f64) {
    let count =
        |m: &std::collections::HashMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);
    let m = tests::scrape_until(
        &app.http,
        &projector.url(),
        Duration::from_secs(20),
        "the events applied",
        |m| count(m, "jobs_projector_batch_size_sum") >= events,
    )
    .await;
    (
        count(&m, "jobs_projector_batch_size_count"),
        count(&m, "jobs_projector_batch_size_sum"),
    )
}

#[tokio::test]
async fn the_projector_gathers_the_events_of_its_linger_in_one_transaction() {
    let app = TestApp::spawn_with(false).await;
    let mut config = tests::projector_config(&app.nats.url(), &app.db.url);
    config.linger_ms = 3_000;
    let projector = tests::start_projector_with(config).await.unwrap();
    // Three enqueues one after the other, each answered before the next is sent: without the
    // linger each would be a batch of its own.
    let started = std::time::Instant::now();
    let mut seqs = Vec::new();
    for i in 0..3 {
        seqs.push(app.enqueue(&email_job(i)).await.1);
    }
    assert_eq!(seqs, [1, 2, 3], "the stream held nothing before them");
    assert!(
        started.elapsed() < Duration::from_millis(2_000),
        "the premise: all three appended well within the 3 s linger ({:?})",
        started.elapsed()
    );
    assert_eq!(
        batches_of(&app, &projector, 3.0).await,
        (1.0, 3.0),
        "one batch of three"
    );
    let (_, got) = app.get("/jobs/v1/jobs?limit=10", 3).await;
    assert_eq!(got["data"].as_array().map(Vec::len), Some(3));
}

#[tokio::test]
async fn a_full_batch_is_applied_without_waiting_out_the_linger() {
    let app = TestApp::spawn_with(false).await;
    let mut config = tests::projector_config(&app.nats.url(), &app.db.url);
    config.batch_size = 3;
    config.linger_ms = 600_000;
    let projector = tests::start_projector_with(config).await.unwrap();
    let mut last = 0;
    for i in 0..3 {
        last = app.enqueue(&email_job(i)).await.1;
    }
    // Visible long before the ten minutes of linger: the batch was full.
    let (_, got) = app.get("/jobs/v1/jobs?limit=10", last).await;
    assert_eq!(got["data"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        batches_of(&app, &projector, 3.0).await,
        (1.0, 3.0),
        "one full batch of three"
    );
}
