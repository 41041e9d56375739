//! Everything a person does to a job after enqueueing it: the whole transition table through
//! the API, optimistic concurrency with If-Match, the dead-letter queue, explain, and
//! Idempotency-Key.

use std::collections::HashSet;

use reqwest::Method;
use serde_json::{json, Value};
use tests::{eventually, TestApp, Worker};
use uuid::Uuid;

const STATUSES: [&str; 6] = [
    "scheduled",
    "pending",
    "leased",
    "completed",
    "dead_lettered",
    "cancelled",
];

/// A job of a type of its own (so a lease takes exactly it), brought into `status`.
async fn job_in(app: &TestApp, w: &Worker, status: &str) -> Value {
    let t = format!("t-{}", Uuid::new_v4().simple());
    let delay = if status == "scheduled" { 3600 } else { 0 };
    let (job, _) = app
        .enqueue(&json!({"type": t, "payload": {}, "delay_seconds": delay}))
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    let leased = || async { w.lease(&json!({"types": [t]})).await.remove(0) };
    let job = match status {
        "scheduled" | "pending" => job,
        "leased" => leased().await,
        "completed" => {
            let l = leased().await;
            w.complete(&l).await.1["data"].clone()
        }
        "dead_lettered" => {
            let l = leased().await;
            w.fail(&l, false).await.1["data"].clone()
        }
        "cancelled" => post(app, &format!("/jobs/v1/jobs/{id}/cancel"), None, &[])
            .await
            .1["data"]
            .clone(),
        other => panic!("no such status {other}"),
    };
    assert_eq!(job["status"], status, "{job}");
    job
}

async fn post(
    app: &TestApp,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    send(app, Method::POST, path, body, headers).await
}

async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut req = app.request(method, path, &app.token);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// The expected outcome of each command on each status: Ok(status after) or Err(error code).
fn expected(command: &str, status: &str) -> Result<&'static str, &'static str> {
    match (command, status) {
        ("update", "scheduled") => Ok("scheduled"),
        ("update", "pending") => Ok("pending"),
        ("update", _) => Err("INVALID_STATE"),
        ("cancel", "scheduled" | "pending") => Ok("cancelled"),
        ("cancel", "leased") => Ok("leased"),
        ("cancel", _) => Err("INVALID_STATE"),
        ("retry", "completed" | "dead_lettered" | "cancelled") => Ok("pending"),
        ("retry", _) => Err("INVALID_STATE"),
        ("lease", "pending") => Ok("leased"),
        ("lease", _) => Err("NOT_LEASED"),
        ("complete", "leased") => Ok("completed"),
        ("fail", "leased") => Ok("scheduled"),
        ("heartbeat", "leased") => Ok("leased"),
        ("complete" | "fail" | "heartbeat", _) => Err("LEASE_LOST"),
        other => panic!("no rule for {other:?}"),
    }
}

#[tokio::test]
async fn every_command_on_every_status_does_what_the_table_says() {
    let app = TestApp::spawn().await;
    let w = app.worker("w1");
    let commands = [
        "update",
        "cancel",
        "retry",
        "lease",
        "complete",
        "fail",
        "heartbeat",
    ];
    for status in STATUSES {
        for command in commands {
            let job = job_in(&app, &w, status).await;
            let id = job["id"].as_str().unwrap();
            let lease_id = job["lease"]["lease_id"]
                .as_u64()
                .unwrap_or(job["last_event_seq"].as_u64().unwrap());
            let lease = json!({"lease_id": lease_id});
            let (code, body) = match command {
                "update" => {
                    send(
                        &app,
                        Method::PATCH,
                        &format!("/jobs/v1/jobs/{id}"),
                        Some(json!({"priority": 9})),
                        &[],
                    )
                    .await
                }
                "cancel" => {
                    post(
                        &app,
                        &format!("/jobs/v1/jobs/{id}/cancel"),
                        Some(json!({"reason": "table"})),
                        &[],
                    )
                    .await
                }
                "retry" => post(&app, &format!("/jobs/v1/jobs/{id}/retry"), None, &[]).await,
                "lease" => {
                    let jobs = w.lease(&json!({"types": [job["type"]]})).await;
                    match jobs.first() {
                        Some(j) => (200, json!({"data": j})),
                        None => (200, json!({"error": {"code": "NOT_LEASED"}})),
                    }
                }
                "complete" => w
                    .post(&format!("/jobs/{id}/complete"), &lease)
                    .await
                    .unwrap(),
                "fail" => w
                    .post(
                        &format!("/jobs/{id}/fail"),
                        &json!({"lease_id": lease_id, "error": {"message": "x"}}),
                    )
                    .await
                    .unwrap(),
                "heartbeat" => w
                    .post(&format!("/jobs/{id}/heartbeat"), &lease)
                    .await
                    .unwrap(),
                _ => unreachable!(),
            };
            let case = format!("{command} on a {status} job");
            match expected(command, status) {
                Ok(after) => {
                    assert!(code == 200, "{case}: {code} {body}");
                    let state = if command == "heartbeat" {
                        "leased"
                    } else {
                        body["data"]["status"].as_str().unwrap_or("")
                    };
                    assert_eq!(state, after, "{case}: {body}");
                    if command == "cancel" && status == "leased" {
                        assert_eq!(body["data"]["cancel_requested"], true, "{case}");
                    }
                }
                Err(error) => {
                    assert_eq!(body["error"]["code"], error, "{case}: {code} {body}");
                    if error == "INVALID_STATE" {
                        assert_eq!(code, 409, "{case}");
                        assert_eq!(
                            body["error"]["details"]["status"], status,
                            "{case}: the 409 names the status"
                        );
                    }
                    if error == "LEASE_LOST" {
                        assert_eq!(code, 409, "{case}");
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn if_match_guards_against_lost_updates_and_cancel_waits_for_the_worker() {
    let app = TestApp::spawn().await;
    let (job, _) = app
        .enqueue(&json!({"type": "t", "payload": {"v": 1}}))
        .await;
    let id = job["id"].as_str().unwrap();
    let (code, v) = send(
        &app,
        Method::PATCH,
        &format!("/jobs/v1/jobs/{id}"),
        Some(json!({"payload": {"v": 2}, "priority": 8})),
        &[("if-match", "\"1\"")],
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        (
            v["data"]["version"].as_u64(),
            v["data"]["priority"].as_u64()
        ),
        (Some(2), Some(8))
    );
    let (code, v) = send(
        &app,
        Method::PATCH,
        &format!("/jobs/v1/jobs/{id}"),
        Some(json!({"priority": 1})),
        &[("if-match", "\"1\"")],
    )
    .await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (412, Some("PRECONDITION_FAILED"))
    );
    let (code, _) = post(
        &app,
        &format!("/jobs/v1/jobs/{id}/cancel"),
        None,
        &[("if-match", "\"1\"")],
    )
    .await;
    assert_eq!(code, 412);
    for bad in [
        json!({}),
        json!({"priority": 11}),
        json!({"colour": 1}),
        json!({"payload": null}),
    ] {
        let (code, v) = send(
            &app,
            Method::PATCH,
            &format!("/jobs/v1/jobs/{id}"),
            Some(bad.clone()),
            &[],
        )
        .await;
        assert_eq!(
            (code, v["error"]["code"].as_str()),
            (400, Some("VALIDATION_FAILED")),
            "{bad}"
        );
    }
    let (code, _) = send(
        &app,
        Method::PATCH,
        &format!("/jobs/v1/jobs/{}", Uuid::now_v7()),
        Some(json!({"priority": 1})),
        &[],
    )
    .await;
    assert_eq!(code, 404);

    // Cancel a leased job: the worker sees it at its next heartbeat; its complete is refused.
    let w = app.worker("w1");
    let held = w.lease(&json!({"types": ["t"]})).await.remove(0);
    let (code, v) = post(
        &app,
        &format!("/jobs/v1/jobs/{id}/cancel"),
        None,
        &[("if-match", "\"3\"")],
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["data"]["cancel_requested"], true);
    let (code, hb) = w.heartbeat(&held, json!({})).await;
    assert_eq!(
        (code, hb["data"]["cancel_requested"].as_bool()),
        (200, Some(true))
    );
    let (code, v) = w.complete(&held).await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (409, Some("LEASE_LOST"))
    );
    let (code, v) = w.fail(&held, true).await;
    assert_eq!(code, 200);
    assert_eq!(
        v["data"]["status"], "cancelled",
        "the worker stopped: the job is cancelled"
    );
    let (code, v) = post(&app, &format!("/jobs/v1/jobs/{id}/retry"), None, &[]).await;
    assert_eq!(
        (
            code,
            v["data"]["status"].as_str(),
            v["data"]["attempts"].as_u64()
        ),
        (200, Some("pending"), Some(0))
    );
    assert_eq!(
        v["data"]["errors"].as_array().unwrap().len(),
        1,
        "failed attempts stay visible"
    );
    let again = w.lease(&json!({"types": ["t"], "wait_seconds": 5})).await;
    assert_eq!(again[0]["id"], job["id"], "a retried job is leasable again");
}

#[tokio::test]
async fn the_dead_letter_queue_lists_retries_redrives_and_purges() {
    let app = TestApp::spawn().await;
    let w = app.worker("w1");
    let mut dead = Vec::new();
    for (t, code) in [
        ("a", "E1"),
        ("a", "E2"),
        ("a", "E1"),
        ("b", "E1"),
        ("b", "E1"),
        ("a", "E1"),
    ] {
        let (job, _) = app.enqueue(&json!({"type": t, "payload": {}})).await;
        let held = w.lease(&json!({"types": [t]})).await.remove(0);
        assert_eq!(held["id"], job["id"]);
        let (status, v) = w.post(&format!("/jobs/{}/fail", job["id"].as_str().unwrap()), &json!({"lease_id": held["lease"]["lease_id"], "error": {"message": "no", "code": code}, "retryable": false})).await.unwrap();
        assert_eq!(status, 200);
        dead.push(v["data"].clone());
    }
    let last_seq = dead.last().unwrap()["last_event_seq"].as_u64().unwrap();
    let (code, page) = app.get("/jobs/v1/dlq?limit=4", last_seq).await;
    assert_eq!(code, 200, "{page}");
    let first: Vec<Value> = page["data"].as_array().unwrap().clone();
    assert_eq!(first.len(), 4);
    assert!(first.iter().all(|j| j["dead_lettered_at"].is_string()
        && j["last_error"]["message"] == "no"
        && j["attempts"] == 1));
    let cursor = page["page"]["next_cursor"].as_str().unwrap();
    let (_, rest) = app
        .get(&format!("/jobs/v1/dlq?limit=4&cursor={cursor}"), 0)
        .await;
    assert_eq!(rest["data"].as_array().unwrap().len(), 2);
    assert_eq!(rest["page"]["has_more"], false);
    let (_, only_b) = app.get("/jobs/v1/dlq?type=b", 0).await;
    assert_eq!(only_b["data"].as_array().unwrap().len(), 2);
    let (code, one) = app
        .get(
            &format!("/jobs/v1/dlq/{}", dead[0]["id"].as_str().unwrap()),
            0,
        )
        .await;
    assert_eq!((code, &one["data"]["id"]), (200, &dead[0]["id"]));

    // Retry one.
    let (code, v) = post(
        &app,
        &format!("/jobs/v1/dlq/{}/retry", dead[1]["id"].as_str().unwrap()),
        None,
        &[],
    )
    .await;
    assert_eq!(
        (code, v["data"]["status"].as_str()),
        (200, Some("pending")),
        "{v}"
    );
    let (code, v) = post(
        &app,
        &format!("/jobs/v1/dlq/{}/retry", dead[1]["id"].as_str().unwrap()),
        None,
        &[],
    )
    .await;
    assert_eq!(
        (code, v["error"]["details"]["status"].as_str()),
        (409, Some("pending"))
    );

    // A dry run says how many and shows a sample; then two overlapping redrives requeue each
    // job exactly once between them.
    let filter = json!({"type": "a", "error_code": "E1"});
    let mut dry = filter.clone();
    dry["dry_run"] = json!(true);
    let (code, v) = post(&app, "/jobs/v1/dlq/retry", Some(dry), &[]).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["data"]["would_requeue"], 3);
    assert_eq!(v["data"]["sample"].as_array().unwrap().len(), 3);
    let (a, b) = tokio::join!(
        post(&app, "/jobs/v1/dlq/retry", Some(filter.clone()), &[]),
        post(&app, "/jobs/v1/dlq/retry", Some(filter.clone()), &[])
    );
    assert_eq!((a.0, b.0), (200, 200));
    assert_eq!(
        a.1["data"]["requeued"].as_u64().unwrap() + b.1["data"]["requeued"].as_u64().unwrap(),
        3,
        "{a:?} {b:?}"
    );
    let (_, v) = post(&app, "/jobs/v1/dlq/retry", Some(filter), &[]).await;
    assert_eq!(
        v["data"]["requeued"], 0,
        "a retried redrive finds nothing left"
    );
    let (code, _) = post(&app, "/jobs/v1/dlq/retry", Some(json!({"ids": []})), &[]).await;
    assert_eq!(code, 400);

    // Purge: gone from every read, but its history stays in the stream.
    let purged = dead[3]["id"].as_str().unwrap();
    let (code, v) = send(
        &app,
        Method::DELETE,
        &format!("/jobs/v1/dlq/{purged}"),
        None,
        &[],
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["data"]["purged"], true);
    eventually(
        std::time::Duration::from_secs(10),
        "the purge to reach the read model",
        || async {
            let (code, _) = app.get(&format!("/jobs/v1/jobs/{purged}"), 0).await;
            (code == 404).then_some(())
        },
    )
    .await;
    for path in [
        format!("/jobs/v1/dlq/{purged}"),
        format!("/jobs/v1/jobs/{purged}/events"),
    ] {
        assert_eq!(app.get(&path, 0).await.0, 404, "{path}");
    }
    let (_, all) = app.get("/jobs/v1/jobs?limit=100", 0).await;
    assert!(all["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|j| j["id"] != purged));
    let js = async_nats::jetstream::new(async_nats::connect(app.nats.url()).await.unwrap());
    let stream = js.get_stream("JOBS_EVENTS").await.unwrap();
    let last = stream
        .get_last_raw_message_by_subject(&format!("jobs.events.{}.{purged}", app.tenant))
        .await
        .unwrap();
    let env = events::Envelope::from_json(&last.payload).unwrap();
    assert_eq!(
        env.type_name(),
        "JobPurged",
        "the stream keeps the history and records the purge"
    );
    assert_eq!(env.actor.kind, events::ActorKind::User);
    let (code, _) = send(
        &app,
        Method::DELETE,
        &format!("/jobs/v1/dlq/{}", dead[1]["id"].as_str().unwrap()),
        None,
        &[],
    )
    .await;
    assert_eq!(code, 409, "only dead-lettered jobs can be purged");
}

#[tokio::test]
async fn explain_says_why_a_job_is_not_running() {
    let app = TestApp::spawn().await;
    let (later, _) = app
        .enqueue(&json!({"type": "x", "payload": {}, "delay_seconds": 600}))
        .await;
    let (_, _) = app
        .enqueue(&json!({"type": "y", "payload": {}, "priority": 9}))
        .await;
    let (_, _) = app.enqueue(&json!({"type": "y", "payload": {}})).await;
    let (mine, seq) = app.enqueue(&json!({"type": "y", "payload": {}})).await;
    let (code, v) = app
        .get(
            &format!("/jobs/v1/jobs/{}/explain", later["id"].as_str().unwrap()),
            seq,
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["data"]["status"], "scheduled");
    assert_eq!(v["data"]["reasons"][0]["code"], "SCHEDULED");
    let (_, v) = app
        .get(
            &format!("/jobs/v1/jobs/{}/explain", mine["id"].as_str().unwrap()),
            seq,
        )
        .await;
    let codes: HashSet<&str> = v["data"]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        HashSet::from(["JOBS_AHEAD", "NO_WORKER_SEEN"]),
        "{v}"
    );
    let ahead = v["data"]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["code"] == "JOBS_AHEAD")
        .unwrap();
    assert_eq!(
        (
            ahead["details"]["jobs_ahead"].as_u64(),
            ahead["details"]["higher_priority"].as_u64()
        ),
        (Some(2), Some(1))
    );

    let w = app.worker("w1");
    let held = w.lease(&json!({"types": ["y"]})).await.remove(0);
    let seq = held["lease"]["lease_id"].as_u64().unwrap();
    let (_, v) = app
        .get(
            &format!("/jobs/v1/jobs/{}/explain", mine["id"].as_str().unwrap()),
            seq,
        )
        .await;
    let codes: Vec<&str> = v["data"]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        ["JOBS_AHEAD"],
        "a worker leased this type just now: {v}"
    );
    let (_, v) = app
        .get(
            &format!("/jobs/v1/jobs/{}/explain", held["id"].as_str().unwrap()),
            seq,
        )
        .await;
    assert_eq!(v["data"]["reasons"][0]["code"], "RUNNING");
    // At the tenant's concurrent-lease limit, that is a reason too.
    let admin = app.keys.token(app.tenant, &["admin"]);
    let res = app
        .request(
            Method::PUT,
            &format!("/jobs/v1/admin/tenants/{}/overrides", app.tenant),
            &admin,
        )
        .json(&json!({"max_concurrent_leases": 1}))
        .send()
        .await
        .unwrap();
    let seq = tests::event_seq(&res);
    let (_, v) = app
        .get(
            &format!("/jobs/v1/jobs/{}/explain", mine["id"].as_str().unwrap()),
            seq,
        )
        .await;
    let codes: Vec<&str> = v["data"]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert!(codes.contains(&"TENANT_LEASE_LIMIT"), "{v}");
    let other = app.keys.token(Uuid::new_v4(), &["member"]);
    let res = app
        .request(
            Method::GET,
            &format!("/jobs/v1/jobs/{}/explain", mine["id"].as_str().unwrap()),
            &other,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

async fn stream_count(app: &TestApp) -> u64 {
    let js = async_nats::jetstream::new(async_nats::connect(app.nats.url()).await.unwrap());
    let mut stream = js.get_stream("JOBS_EVENTS").await.unwrap();
    stream.info().await.unwrap().state.messages
}

async fn enqueue_with_key(
    app: &TestApp,
    base: &str,
    token: &str,
    key: &str,
    body: &Value,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let res = app
        .http
        .post(format!("{base}/jobs/v1/enqueue"))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    let (status, headers) = (res.status().as_u16(), res.headers().clone());
    (status, res.json().await.unwrap_or(Value::Null), headers)
}

#[tokio::test]
async fn an_idempotency_key_replays_refuses_reuse_and_survives_a_restart() {
    let mut app = TestApp::spawn().await;
    let base = app.command.url();
    let body = json!({"type": "t", "payload": {"n": 1}});
    let (s1, first, h1) = enqueue_with_key(&app, &base, &app.token, "k-1", &body).await;
    assert_eq!(s1, 201);
    assert!(h1.get("idempotent-replayed").is_none());
    let (s2, second, h2) = enqueue_with_key(&app, &base, &app.token, "k-1", &body).await;
    assert_eq!(s2, 201);
    assert_eq!(h2["idempotent-replayed"], "true");
    assert_eq!(first, second, "the stored response, byte for byte");
    assert_eq!(h1["x-event-seq"], h2["x-event-seq"]);
    assert_eq!(
        stream_count(&app).await,
        1,
        "nothing appended by the replay"
    );

    let (s3, err, _) = enqueue_with_key(
        &app,
        &base,
        &app.token,
        "k-1",
        &json!({"type": "t", "payload": {"n": 2}}),
    )
    .await;
    assert_eq!(
        (s3, err["error"]["code"].as_str()),
        (422, Some("IDEMPOTENCY_KEY_REUSED"))
    );
    let other = app.keys.token(Uuid::new_v4(), &["member"]);
    let (s4, theirs, _) = enqueue_with_key(&app, &base, &other, "k-1", &body).await;
    assert_eq!(s4, 201);
    assert_ne!(
        theirs["data"]["id"], first["data"]["id"],
        "keys of different tenants never collide"
    );
    for bad in ["", &"x".repeat(256), "tab\there"] {
        let res = app
            .http
            .post(format!("{base}/jobs/v1/enqueue"))
            .bearer_auth(&app.token)
            .header("idempotency-key", bad)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "key {bad:?}");
    }
    // Commands too: the second cancel replays instead of answering 409.
    let id = first["data"]["id"].as_str().unwrap();
    let cancel = |k: &'static str| {
        app.http
            .post(format!("{base}/jobs/v1/jobs/{id}/cancel"))
            .bearer_auth(&app.token)
            .header("idempotency-key", k)
            .send()
    };
    let (c1, c2) = (cancel("c-1").await.unwrap(), cancel("c-1").await.unwrap());
    assert_eq!((c1.status().as_u16(), c2.status().as_u16()), (200, 200));
    assert_eq!(c2.headers()["idempotent-replayed"], "true");

    // A new command-svc process remembers the key.
    let old = std::mem::replace(
        &mut app.command,
        tests::start_command(&app.nats.url(), &app.keys)
            .await
            .unwrap(),
    );
    old.stop().await;
    let (s5, again, h5) =
        enqueue_with_key(&app, &app.command.url(), &app.token, "k-1", &body).await;
    assert_eq!(
        (s5, h5["idempotent-replayed"].to_str().unwrap()),
        (201, "true")
    );
    assert_eq!(again, first);
}

#[tokio::test]
async fn the_same_key_at_two_instances_at_once_makes_one_job() {
    let app = TestApp::spawn().await;
    let second = tests::start_command(&app.nats.url(), &app.keys)
        .await
        .unwrap();
    let body = json!({"type": "t", "payload": {}});
    let (url_a, url_b) = (app.command.url(), second.url());
    for round in 0..10 {
        let key = format!("race-{round}");
        let (a, b) = tokio::join!(
            enqueue_with_key(&app, &url_a, &app.token, &key, &body),
            enqueue_with_key(&app, &url_b, &app.token, &key, &body)
        );
        let statuses = [a.0, b.0];
        assert!(statuses.contains(&201), "{statuses:?}");
        assert!(
            statuses.iter().all(|s| *s == 201 || *s == 409),
            "{statuses:?}: {} {}",
            a.1,
            b.1
        );
        if a.0 == 201 && b.0 == 201 {
            assert_eq!(a.1["data"]["id"], b.1["data"]["id"], "one job, replayed");
        }
        for v in [&a.1, &b.1] {
            if v["error"]["code"].is_string() {
                assert_eq!(v["error"]["code"], "IDEMPOTENCY_IN_PROGRESS");
            }
        }
    }
    assert_eq!(stream_count(&app).await, 10, "exactly one job per key");
}
