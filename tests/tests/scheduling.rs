//! Scheduling controls: pausing and resuming a tenant's queue or job type. Paused work is not
//! leased (from the next lease on), shows in `explain` and `GET /jobs/v1/queues|types`, other
//! queues and tenants are served meanwhile, and resuming serves it again — also to a worker
//! already long-polling.

use reqwest::Method;
use serde_json::{json, Value};
use tests::{event_seq, TestApp};

async fn post(app: &TestApp, path: &str) -> (Value, u64) {
    let res = app
        .request(Method::POST, path, &app.token)
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status().as_u16(), 200, "{path}");
    let seq = res
        .headers()
        .get("x-event-seq")
        .map(|_| event_seq(&res))
        .unwrap_or(0);
    (
        res.json::<Value>().await.expect("json")["data"].clone(),
        seq,
    )
}

fn ids(jobs: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = jobs
        .iter()
        .map(|j| j["id"].as_str().expect("id").to_string())
        .collect();
    ids.sort();
    ids
}

fn entry<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["data"]
        .as_array()
        .expect("a list")
        .iter()
        .find(|q| q["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed in {list}"))
}

#[tokio::test]
async fn a_paused_queue_is_not_leased_until_resumed_and_other_queues_are_served() {
    let app = TestApp::spawn().await;
    let job = |queue: &str| json!({"type": "email.send", "queue": queue, "payload": {"q": queue}});
    let (held, _) = app.enqueue(&job("emails")).await;
    let (other, _) = app.enqueue(&job("reports")).await;
    // Another tenant's queue of the same name is not paused by this tenant.
    let stranger = app.keys.token(uuid::Uuid::new_v4(), &["member"]);
    let res = app.enqueue_as(&stranger, &job("emails")).await;
    assert_eq!(res.status().as_u16(), 201);
    let strangers: Value = res.json().await.expect("json");

    let (state, pause_seq) = post(&app, "/jobs/v1/queues/emails/pause").await;
    assert_eq!(
        state,
        json!({"name": "emails", "kind": "queue", "paused": true})
    );
    assert!(pause_seq > 0, "a pause is an event");
    // Pausing again changes nothing and appends nothing.
    let (again, seq) = post(&app, "/jobs/v1/queues/emails/pause").await;
    assert_eq!(again["paused"], true);
    assert_eq!(seq, 0, "no second event");

    let worker = app.worker("pause-worker");
    let leased = worker
        .lease(&json!({"types": ["email.send"], "max_jobs": 10}))
        .await;
    assert_eq!(
        ids(&leased),
        ids(&[other.clone(), strangers["data"].clone()]),
        "only the open queues' jobs are leased"
    );
    let none = worker
        .lease(&json!({"types": ["email.send"], "max_jobs": 10}))
        .await;
    assert!(none.is_empty(), "the paused job stays put: {none:?}");

    // explain and the queues list say why.
    let id = held["id"].as_str().expect("id");
    let (status, explain) = app
        .get(&format!("/jobs/v1/jobs/{id}/explain"), pause_seq)
        .await;
    assert_eq!(status, 200);
    let reasons = explain["data"]["reasons"].as_array().expect("reasons");
    let paused = reasons
        .iter()
        .find(|r| r["code"] == "QUEUE_PAUSED")
        .unwrap_or_else(|| panic!("no QUEUE_PAUSED in {explain}"));
    assert_eq!(paused["details"]["name"], "emails");
    let (_, queues) = app.get("/jobs/v1/queues", pause_seq).await;
    let emails = entry(&queues, "emails");
    assert_eq!(emails["paused"], true);
    assert_eq!(emails["depth"]["pending"], 1);
    assert!(emails["paused_by"]["id"].is_string());
    let reports = entry(&queues, "reports");
    assert_eq!(reports["paused"], false);

    // A worker already waiting gets the job as soon as the queue is resumed.
    let waiting = tokio::spawn(async move {
        worker
            .lease(&json!({"types": ["email.send"], "max_jobs": 10, "wait_seconds": 20}))
            .await
    });
    let (state, resume_seq) = post(&app, "/jobs/v1/queues/emails/resume").await;
    assert_eq!(state["paused"], false);
    let leased = tokio::time::timeout(std::time::Duration::from_secs(15), waiting)
        .await
        .expect("the long poll returns before its wait is over")
        .expect("join");
    assert_eq!(ids(&leased), ids(&[held]));
    let (_, queues) = app.get("/jobs/v1/queues", resume_seq).await;
    assert_eq!(entry(&queues, "emails")["paused"], false);
}

#[tokio::test]
async fn a_paused_job_type_is_not_leased_in_any_queue_until_resumed() {
    let app = TestApp::spawn().await;
    let (sms, _) = app
        .enqueue(&json!({"type": "sms.send", "queue": "a", "payload": {}}))
        .await;
    let (sms_b, _) = app
        .enqueue(&json!({"type": "sms.send", "queue": "b", "payload": {}}))
        .await;
    let (mail, _) = app
        .enqueue(&json!({"type": "email.send", "queue": "a", "payload": {}}))
        .await;
    let (state, pause_seq) = post(&app, "/jobs/v1/types/sms.send/pause").await;
    assert_eq!(
        state,
        json!({"name": "sms.send", "kind": "type", "paused": true})
    );

    let worker = app.worker("type-pause-worker");
    let leased = worker
        .lease(&json!({"types": ["sms.send", "email.send"], "max_jobs": 10}))
        .await;
    assert_eq!(ids(&leased), ids(&[mail]), "only the open type is leased");

    let id = sms["id"].as_str().expect("id");
    let (_, explain) = app
        .get(&format!("/jobs/v1/jobs/{id}/explain"), pause_seq)
        .await;
    assert!(
        explain["data"]["reasons"]
            .as_array()
            .expect("reasons")
            .iter()
            .any(|r| r["code"] == "JOB_TYPE_PAUSED"),
        "{explain}"
    );
    let (_, types) = app.get("/jobs/v1/types", pause_seq).await;
    let entry = entry(&types, "sms.send");
    assert_eq!(entry["paused"], true);
    assert_eq!(entry["depth"]["pending"], 2);

    post(&app, "/jobs/v1/types/sms.send/resume").await;
    let leased = worker
        .lease(&json!({"types": ["sms.send"], "max_jobs": 10}))
        .await;
    assert_eq!(ids(&leased), ids(&[sms, sms_b]));
}

#[tokio::test]
async fn a_pause_holds_on_every_instance_and_across_restarts() {
    let app = TestApp::spawn().await;
    let (job, _) = app
        .enqueue(&json!({"type": "email.send", "queue": "held", "payload": {}}))
        .await;
    post(&app, "/jobs/v1/queues/held/pause").await;
    // A second instance, started after the pause, learns it from the stream.
    // Ready once it has caught up with the stream (pause included).
    let second = ready_instance(&app).await;
    let pem = tests::Tls::get().worker_pem("second-instance-worker");
    let worker = tests::Worker::new(second.worker_port, &pem, "second-instance-worker");
    let none = worker
        .lease(&json!({"types": ["email.send"], "max_jobs": 10, "wait_seconds": 1}))
        .await;
    assert!(
        none.is_empty(),
        "the new instance leased paused work: {none:?}"
    );
    // Resumed through the first instance: the second one's waiting worker gets the job.
    let waiting = tokio::spawn(async move {
        worker
            .lease(&json!({"types": ["email.send"], "max_jobs": 10, "wait_seconds": 20}))
            .await
    });
    post(&app, "/jobs/v1/queues/held/resume").await;
    let leased = tokio::time::timeout(std::time::Duration::from_secs(15), waiting)
        .await
        .expect("the long poll returns before its wait is over")
        .expect("join");
    assert_eq!(ids(&leased), ids(&[job]));
    second.stop().await;
}

#[tokio::test]
async fn pause_names_are_checked_and_pausing_needs_a_role() {
    let app = TestApp::spawn().await;
    let res = app
        .request(Method::POST, "/jobs/v1/queues/bad%20name/pause", &app.token)
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status().as_u16(), 400);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["error"]["details"]["fields"][0]["field"], "queue");
    let nobody = app.keys.token(app.tenant, &["guest"]);
    let res = app
        .request(Method::POST, "/jobs/v1/types/x/pause", &nobody)
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status().as_u16(), 403);
}

#[tokio::test]
async fn a_job_not_started_by_its_expiry_is_discarded_not_dead_lettered() {
    let app = TestApp::spawn().await;
    let (doomed, _) = app
        .enqueue(&json!({"type": "report.build", "payload": {}, "ttl_seconds": 1}))
        .await;
    assert!(doomed["expires_at"].is_string(), "{doomed}");
    let (kept, _) = app
        .enqueue(&json!({"type": "report.build", "payload": {}}))
        .await;
    let id = doomed["id"].as_str().expect("id").to_string();
    // command-svc's timer discards it at its expiry; the read model shows it.
    let job = tests::eventually(
        std::time::Duration::from_secs(15),
        "the job expires",
        || {
            let (app, id) = (&app, id.clone());
            async move {
                let (_, body) = app.get(&format!("/jobs/v1/jobs/{id}"), 0).await;
                (body["data"]["status"] == "expired").then_some(body["data"].clone())
            }
        },
    )
    .await;
    assert_eq!(job["attempts"], 0);
    let (_, history) = app.get(&format!("/jobs/v1/jobs/{id}/events"), 0).await;
    let last = history["data"]
        .as_array()
        .and_then(|e| e.last())
        .cloned()
        .expect("events");
    assert_eq!(last["type"], "JobExpired");
    assert_eq!(last["actor"]["kind"], "system");
    assert_eq!(last["data"]["expires_at"], doomed["expires_at"]);

    // Not in the dead-letter queue; counted in the metrics; never leased.
    let (_, dlq) = app.get("/jobs/v1/dlq", 0).await;
    assert_eq!(dlq["data"], json!([]));
    let (_, metrics) = app.get("/jobs/v1/metrics", 0).await;
    assert_eq!(metrics["data"]["counts"]["expired"], 1);
    let leased = app
        .worker("expiry-worker")
        .lease(&json!({"types": ["report.build"], "max_jobs": 10}))
        .await;
    assert_eq!(ids(&leased), ids(&[kept]));

    // A person can still run it: retry puts it back, without the expiry.
    let res = app
        .request(
            Method::POST,
            &format!("/jobs/v1/jobs/{id}/retry"),
            &app.token,
        )
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status().as_u16(), 200);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["data"]["status"], "pending");
    assert!(body["data"].get("expires_at").is_none(), "{body}");
}

#[tokio::test]
async fn a_job_started_before_its_expiry_runs_to_the_end() {
    let app = TestApp::spawn().await;
    let expires_at = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let (job, _) = app
        .enqueue(&json!({"type": "t", "payload": {}, "expires_at": expires_at}))
        .await;
    let worker = app.worker("early-worker");
    let leased = worker
        .lease(&json!({"types": ["t"], "lease_seconds": 30}))
        .await;
    assert_eq!(ids(&leased), ids(&[job]));
    // Let the expiry pass while the job runs (the point is wall-clock time).
    let left = (expires_at - chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(left + std::time::Duration::from_millis(500)).await;
    let (status, done) = worker.complete(&leased[0]).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["data"]["status"], "completed");
}

#[tokio::test]
async fn expiry_fields_are_checked() {
    let app = TestApp::spawn().await;
    for (body, field) in [
        (
            json!({"type": "t", "payload": {}, "ttl_seconds": 5, "expires_at": "2999-01-01T00:00:00Z"}),
            "ttl_seconds",
        ),
        (
            json!({"type": "t", "payload": {}, "ttl_seconds": 0}),
            "ttl_seconds",
        ),
        (
            json!({"type": "t", "payload": {}, "delay_seconds": 60, "ttl_seconds": 30}),
            "ttl_seconds",
        ),
        (
            json!({"type": "t", "payload": {}, "expires_at": "2001-01-01T00:00:00Z"}),
            "expires_at",
        ),
    ] {
        let res = app.enqueue_as(&app.token, &body).await;
        assert_eq!(res.status().as_u16(), 400, "{body}");
        let err: Value = res.json().await.expect("json");
        let fields: Vec<&str> = err["error"]["details"]["fields"]
            .as_array()
            .expect("fields")
            .iter()
            .filter_map(|f| f["field"].as_str())
            .collect();
        assert!(fields.contains(&field), "{body} → {err}");
    }
}

/// Enqueues `body` as the default tenant; returns (status, job with `deduplicated`).
async fn enqueue_unique(app: &TestApp, command_url: &str, body: &Value) -> (u16, Value) {
    let res = app
        .http
        .post(format!("{command_url}/jobs/v1/enqueue"))
        .bearer_auth(&app.token)
        .json(body)
        .send()
        .await
        .expect("sent");
    let status = res.status().as_u16();
    (
        status,
        res.json::<Value>().await.expect("json")["data"].clone(),
    )
}

#[tokio::test]
async fn a_unique_key_answers_the_holder_until_it_completes_or_dead_letters() {
    let app = TestApp::spawn().await;
    let url = app.command.url();
    let body =
        |key: &str| json!({"type": "report.build", "payload": {"k": key}, "unique": {"key": key}});
    let (status, first) = enqueue_unique(&app, &url, &body("report:42")).await;
    assert_eq!(status, 201);
    assert_eq!(first["deduplicated"], false);
    assert_eq!(first["unique"]["key"], "report:42");
    let (status, again) = enqueue_unique(&app, &url, &body("report:42")).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["deduplicated"], true);
    assert_eq!(again["id"], first["id"]);
    // Another key, and the same key in another tenant, are other jobs.
    let (status, other) = enqueue_unique(&app, &url, &body("report:43")).await;
    assert_eq!(status, 201);
    assert_ne!(other["id"], first["id"]);
    let stranger = app.keys.token(uuid::Uuid::new_v4(), &["member"]);
    let res = app.enqueue_as(&stranger, &body("report:42")).await;
    assert_eq!(res.status().as_u16(), 201);

    // Leased still holds the key; completed releases it.
    let worker = app.worker("unique-worker");
    let leased = worker
        .lease(&json!({"types": ["report.build"], "max_jobs": 1}))
        .await;
    assert_eq!(leased[0]["id"], first["id"]);
    let (_, held) = enqueue_unique(&app, &url, &body("report:42")).await;
    assert_eq!(held["id"], first["id"], "a leased holder still holds");
    let (status, _) = worker.complete(&leased[0]).await;
    assert_eq!(status, 200);
    let (status, second) = enqueue_unique(&app, &url, &body("report:42")).await;
    assert_eq!(status, 201, "completion released the key: {second}");
    assert_ne!(second["id"], first["id"]);

    // Dead-lettering releases it too.
    let leased = worker
        .lease(&json!({"types": ["report.build"], "max_jobs": 10}))
        .await;
    let mine = leased
        .iter()
        .find(|j| j["id"] == second["id"])
        .expect("the second holder is leased");
    let (status, dead) = worker.fail(mine, false).await;
    assert_eq!(status, 200);
    assert_eq!(dead["data"]["status"], "dead_lettered");
    let (status, third) = enqueue_unique(&app, &url, &body("report:42")).await;
    assert_eq!(status, 201, "dead-lettering released the key: {third}");
    assert_ne!(third["id"], second["id"]);
}

#[tokio::test]
async fn a_unique_ttl_and_custom_states_hold_the_key_as_asked() {
    let app = TestApp::spawn().await;
    let url = app.command.url();
    // Held while pending or completed, for a minute whatever happens.
    let body = json!({"type": "digest", "payload": {}, "unique": {"key": "digest:today", "states": ["pending", "leased", "completed"], "ttl_seconds": 60}});
    let (status, first) = enqueue_unique(&app, &url, &body).await;
    assert_eq!(status, 201);
    let worker = app.worker("ttl-worker");
    let leased = worker.lease(&json!({"types": ["digest"]})).await;
    worker.complete(&leased[0]).await;
    let (status, again) = enqueue_unique(&app, &url, &body).await;
    assert_eq!(status, 200, "completed is one of the states: {again}");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["status"], "completed");
}

#[tokio::test]
async fn concurrent_unique_enqueues_on_two_instances_create_one_job() {
    let app = TestApp::spawn().await;
    let second = tests::start_command(&app.nats.url(), &app.keys)
        .await
        .expect("second command-svc starts");
    let urls = [app.command.url(), second.url()];
    let body = json!({"type": "sync", "payload": {}, "unique": {"key": "sync:customer-7"}});
    let answers = futures::future::join_all((0..20).map(|i| {
        let url = urls[i % 2].clone();
        let (app, body) = (&app, body.clone());
        async move { enqueue_unique(app, &url, &body).await }
    }))
    .await;
    let created: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 201)
        .map(|(_, j)| j)
        .collect();
    assert_eq!(created.len(), 1, "{answers:?}");
    for (status, job) in &answers {
        assert!(*status == 201 || *status == 200, "{status} {job}");
        assert_eq!(job["id"], created[0]["id"]);
    }
    second.stop().await;
}

#[tokio::test]
async fn unique_fields_are_checked_and_not_taken_in_a_batch() {
    let app = TestApp::spawn().await;
    for (body, field) in [
        (
            json!({"type": "t", "payload": {}, "unique": {"key": ""}}),
            "unique.key",
        ),
        (
            json!({"type": "t", "payload": {}, "unique": {"key": "k", "states": []}}),
            "unique.states",
        ),
        (
            json!({"type": "t", "payload": {}, "unique": {"key": "k", "ttl_seconds": 0}}),
            "unique.ttl_seconds",
        ),
        (
            json!({"type": "t", "payload": {}, "limits": {"concurrency_key": "", "max_concurrent": 1}}),
            "limits.concurrency_key",
        ),
        (
            json!({"type": "t", "payload": {}, "limits": {"concurrency_key": "k", "max_concurrent": 0}}),
            "limits.max_concurrent",
        ),
        (
            json!({"type": "t", "payload": {}, "limits": {"concurrency_key": "k"}}),
            "limits",
        ),
    ] {
        let res = app.enqueue_as(&app.token, &body).await;
        assert_eq!(res.status().as_u16(), 400, "{body}");
        let err: Value = res.json().await.expect("json");
        assert_eq!(
            err["error"]["details"]["fields"][0]["field"], field,
            "{err}"
        );
    }
    let res = app
        .request(Method::POST, "/jobs/v1/enqueue/batch", &app.token)
        .json(&json!({"jobs": [{"type": "t", "payload": {}, "unique": {"key": "k"}}]}))
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status().as_u16(), 400);
    let err: Value = res.json().await.expect("json");
    assert_eq!(
        err["error"]["details"]["fields"][0]["field"],
        "jobs[0].unique"
    );
}

/// The most jobs of each concurrency key ever leased at once, replaying the stream in order.
fn max_concurrent_by_key(
    events: &[events::Recorded],
    key_of: &std::collections::HashMap<uuid::Uuid, String>,
) -> std::collections::HashMap<String, u32> {
    use events::JobEvent as E;
    let mut now: std::collections::HashMap<String, u32> = Default::default();
    let mut max: std::collections::HashMap<String, u32> = Default::default();
    for rec in events {
        let Some(key) = key_of.get(&rec.envelope.job_id) else {
            continue;
        };
        let n = now.entry(key.clone()).or_default();
        match &rec.envelope.event {
            E::Leased { .. } => *n += 1,
            E::Completed { .. }
            | E::Failed { .. }
            | E::LeaseExpired { .. }
            | E::DeadLettered {
                lease_id: Some(_), ..
            } => *n -= 1,
            _ => {}
        }
        let m = max.entry(key.clone()).or_default();
        *m = (*m).max(*n);
    }
    max
}

#[tokio::test]
async fn a_concurrency_key_caps_its_leases_across_instances_and_other_keys_are_served() {
    let app = TestApp::spawn().await;
    let second = ready_instance(&app).await;
    // 24 jobs of one busy customer (at most 2 at once), 6 of another (at most 3), 6 unkeyed.
    let mut key_of = std::collections::HashMap::new();
    let mut jobs = Vec::new();
    for (key, max, n) in [("customer-42", 2, 24), ("customer-7", 3, 6)] {
        for i in 0..n {
            jobs.push((Some(key), json!({"type": "sync", "payload": {"i": i}, "limits": {"concurrency_key": key, "max_concurrent": max}})));
        }
    }
    for i in 0..6 {
        jobs.push((None, json!({"type": "sync", "payload": {"free": i}})));
    }
    let total = jobs.len();
    for (key, body) in jobs {
        let (job, _) = app.enqueue(&body).await;
        if let Some(k) = key {
            assert_eq!(job["limits"]["concurrency_key"], k);
            key_of.insert(
                job["id"]
                    .as_str()
                    .expect("id")
                    .parse::<uuid::Uuid>()
                    .expect("uuid"),
                k.to_string(),
            );
        }
    }
    // 16 workers, half on each instance, each holding one job for a moment.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let ports = [app.command.worker_port, second.worker_port];
    let workers = (0..16).map(|w| {
        let pem = tests::Tls::get().worker_pem(&format!("cw-{w}"));
        let worker = tests::Worker::new(ports[w % 2], &pem, &format!("cw-{w}"));
        let done = done.clone();
        tokio::spawn(async move {
            while done.load(std::sync::atomic::Ordering::SeqCst) < total {
                let jobs = worker
                    .lease(&json!({"types": ["sync"], "max_jobs": 1, "wait_seconds": 1}))
                    .await;
                for job in jobs {
                    // The work itself: long enough for leases to overlap.
                    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
                    let (status, body) = worker.complete(&job).await;
                    assert_eq!(status, 200, "{body}");
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        })
    });
    let workers: Vec<_> = workers.collect();
    tokio::time::timeout(
        std::time::Duration::from_secs(120),
        futures::future::join_all(workers),
    )
    .await
    .expect("every job runs")
    .into_iter()
    .for_each(|r| r.expect("worker"));

    let events = tests::all_events(&app.nats.url()).await;
    let max = max_concurrent_by_key(&events, &key_of);
    assert!(max["customer-42"] <= 2, "{max:?}");
    assert!(max["customer-7"] <= 3, "{max:?}");
    assert_eq!(
        max["customer-42"], 2,
        "the limit is reached, not undershot: {max:?}"
    );
    // No head-of-line blocking: the other customer's jobs all ran before the busy one's last.
    let leased_at = |key: &str| -> Vec<u64> {
        events
            .iter()
            .filter(|r| matches!(r.envelope.event, events::JobEvent::Leased { .. }))
            .filter(|r| key_of.get(&r.envelope.job_id).is_some_and(|k| k == key))
            .map(|r| r.seq)
            .collect()
    };
    let busy_last = leased_at("customer-42").into_iter().max().expect("leased");
    let other_last = leased_at("customer-7").into_iter().max().expect("leased");
    assert!(
        other_last < busy_last,
        "customer-7 waited behind customer-42"
    );
    tests::assert_invariants(&app.nats.url(), &app.db.url, &[]).await;
    second.stop().await;
}

/// A second command-svc on the same stream, caught up (ready).
async fn ready_instance(app: &TestApp) -> tests::Running {
    let second = tests::start_command(&app.nats.url(), &app.keys)
        .await
        .expect("second command-svc starts");
    tests::wait_ready(&second).await;
    second
}

#[tokio::test]
async fn a_job_waits_for_its_dependencies_on_every_instance_and_runs_when_they_complete() {
    let app = TestApp::spawn().await;
    let (a, _) = app
        .enqueue(&json!({"type": "step", "payload": {"n": 1}}))
        .await;
    let (b, _) = app
        .enqueue(&json!({"type": "step", "payload": {"n": 2}}))
        .await;
    let (c, seq) = app
        .enqueue(&json!({"type": "final", "payload": {}, "depends_on": [a["id"], b["id"]]}))
        .await;
    assert_eq!(c["depends_on"].as_array().map(Vec::len), Some(2), "{c}");
    let worker = app.worker("dep-worker");
    let none = worker.lease(&json!({"types": ["final"]})).await;
    assert!(none.is_empty(), "ran before its dependencies: {none:?}");
    let id = c["id"].as_str().expect("id");
    let (_, explain) = app.get(&format!("/jobs/v1/jobs/{id}/explain"), seq).await;
    let reason = explain["data"]["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .find(|r| r["code"] == "DEPENDENCIES_PENDING")
        .cloned()
        .unwrap_or_else(|| panic!("{explain}"));
    assert_eq!(
        reason["details"]["waiting_for"].as_array().map(Vec::len),
        Some(2)
    );

    // One done: still waiting, also on an instance started now (it replays the stream).
    let first = worker.lease(&json!({"types": ["step"]})).await;
    assert_eq!(first[0]["id"], a["id"]);
    worker.complete(&first[0]).await;
    let second = ready_instance(&app).await;
    let pem = tests::Tls::get().worker_pem("dep-worker-2");
    let other = tests::Worker::new(second.worker_port, &pem, "dep-worker-2");
    let none = other.lease(&json!({"types": ["final"]})).await;
    assert!(none.is_empty(), "ran with one dependency left: {none:?}");

    // Both done: the dependent runs, here as there.
    let next = worker.lease(&json!({"types": ["step"]})).await;
    assert_eq!(next[0]["id"], b["id"]);
    let waiting = tokio::spawn(async move {
        other
            .lease(&json!({"types": ["final"], "wait_seconds": 15}))
            .await
    });
    worker.complete(&next[0]).await;
    let leased = tokio::time::timeout(std::time::Duration::from_secs(20), waiting)
        .await
        .expect("leased in time")
        .expect("join");
    assert_eq!(ids(&leased), ids(&[c]));
    second.stop().await;
}

#[tokio::test]
async fn a_failed_dependency_cancels_the_job_or_lets_it_run_as_asked() {
    let app = TestApp::spawn().await;
    let (dep, _) = app.enqueue(&json!({"type": "risky", "payload": {}})).await;
    let (cancelled, _) = app
        .enqueue(&json!({"type": "after", "payload": {}, "depends_on": [dep["id"]]}))
        .await;
    let (anyway, _) = app
        .enqueue(&json!({"type": "after", "payload": {}, "depends_on": [dep["id"]], "on_dependency_failure": "run_anyway"}))
        .await;
    let worker = app.worker("failing-dep-worker");
    let leased = worker.lease(&json!({"types": ["risky"]})).await;
    let (status, dead) = worker.fail(&leased[0], false).await;
    assert_eq!(status, 200);
    assert_eq!(dead["data"]["status"], "dead_lettered");

    // run_anyway: leased; cancel: cancelled by the service, saying why.
    let runs = worker
        .lease(&json!({"types": ["after"], "max_jobs": 10, "wait_seconds": 10}))
        .await;
    assert_eq!(ids(&runs), ids(&[anyway]));
    let id = cancelled["id"].as_str().expect("id").to_string();
    let job = tests::eventually(
        std::time::Duration::from_secs(15),
        "the dependent is cancelled",
        || {
            let (app, id) = (&app, id.clone());
            async move {
                let (_, body) = app.get(&format!("/jobs/v1/jobs/{id}"), 0).await;
                (body["data"]["status"] == "cancelled").then_some(body["data"].clone())
            }
        },
    )
    .await;
    assert_eq!(job["attempts"], 0);
    let (_, history) = app.get(&format!("/jobs/v1/jobs/{id}/events"), 0).await;
    let last = history["data"]
        .as_array()
        .and_then(|e| e.last())
        .cloned()
        .expect("events");
    assert_eq!(last["type"], "JobCancelled");
    assert_eq!(last["actor"]["kind"], "system");
    assert!(
        last["data"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("dead_lettered")),
        "{last}"
    );
}

#[tokio::test]
async fn dependencies_are_checked_at_enqueue() {
    let app = TestApp::spawn().await;
    let worker = app.worker("dep-check-worker");
    // A dependency that already completed is nothing to wait for.
    let (done, _) = app.enqueue(&json!({"type": "pre", "payload": {}})).await;
    let leased = worker.lease(&json!({"types": ["pre"]})).await;
    worker.complete(&leased[0]).await;
    let (free, _) = app
        .enqueue(&json!({"type": "post", "payload": {}, "depends_on": [done["id"]]}))
        .await;
    assert!(free.get("depends_on").is_none(), "{free}");
    let runs = worker.lease(&json!({"types": ["post"]})).await;
    assert_eq!(ids(&runs), ids(&[free]));
    // One that already failed can never be met under `cancel`.
    let (dead, _) = app.enqueue(&json!({"type": "pre", "payload": {}})).await;
    let leased = worker.lease(&json!({"types": ["pre"]})).await;
    worker.fail(&leased[0], false).await;
    let stranger = app
        .enqueue_as(
            &app.keys.token(uuid::Uuid::new_v4(), &["member"]),
            &json!({"type": "x", "payload": {}}),
        )
        .await;
    let strangers: Value = stranger.json().await.expect("json");
    for (body, needle) in [
        (
            json!({"type": "post", "payload": {}, "depends_on": [dead["id"]]}),
            "already ended dead_lettered",
        ),
        (
            json!({"type": "post", "payload": {}, "depends_on": [uuid::Uuid::new_v4()]}),
            "no such job",
        ),
        (
            json!({"type": "post", "payload": {}, "depends_on": [strangers["data"]["id"]]}),
            "no such job",
        ),
        (
            json!({"type": "post", "payload": {}, "on_dependency_failure": "cancel"}),
            "only with depends_on",
        ),
    ] {
        let res = app.enqueue_as(&app.token, &body).await;
        assert_eq!(res.status().as_u16(), 400, "{body}");
        let err: Value = res.json().await.expect("json");
        assert!(err.to_string().contains(needle), "{body} → {err}");
    }
}

#[tokio::test]
async fn a_rate_per_key_spaces_its_leases_and_other_jobs_are_served_at_once() {
    let app = TestApp::spawn().await;
    let mut keyed = std::collections::HashSet::new();
    for i in 0..6 {
        let (job, _) = app
            .enqueue(&json!({"type": "call", "payload": {"i": i}, "limits": {"concurrency_key": "partner-api", "max_per_second": 2}}))
            .await;
        assert_eq!(job["limits"]["max_per_second"], 2);
        keyed.insert(
            job["id"]
                .as_str()
                .expect("id")
                .parse::<uuid::Uuid>()
                .expect("uuid"),
        );
    }
    let (free, _) = app.enqueue(&json!({"type": "call", "payload": {}})).await;
    let worker = app.worker("rate-worker");
    let first = worker
        .lease(&json!({"types": ["call"], "max_jobs": 10}))
        .await;
    assert_eq!(first.len(), 3, "two of the key and the free one: {first:?}");
    assert!(first.iter().any(|j| j["id"] == free["id"]));
    // The rest come as the window slides, to a worker that keeps asking (long polls).
    let mut got = first.len();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while got < 7 && tokio::time::Instant::now() < deadline {
        got += worker
            .lease(&json!({"types": ["call"], "max_jobs": 10, "wait_seconds": 5}))
            .await
            .len();
    }
    assert_eq!(got, 7, "every job leased");
    // From the stream: never more than 2 leases of the key within one second.
    let starts: Vec<chrono::DateTime<chrono::Utc>> = tests::all_events(&app.nats.url())
        .await
        .into_iter()
        .filter(|r| matches!(r.envelope.event, events::JobEvent::Leased { .. }))
        .filter(|r| keyed.contains(&r.envelope.job_id))
        .map(|r| r.envelope.at)
        .collect();
    assert_eq!(starts.len(), 6);
    for (i, t) in starts.iter().enumerate() {
        let in_window = starts[i..]
            .iter()
            .filter(|u| **u < *t + chrono::Duration::seconds(1))
            .count();
        assert!(
            in_window <= 2,
            "{in_window} leases within a second from {t}: {starts:?}"
        );
    }
}

/// How many leases wait in the instance at `url` (its `jobs_leases_waiting` gauge).
async fn leases_waiting(app: &TestApp, url: &str) -> i64 {
    let metrics = tests::scrape(&app.http, url).await;
    *metrics
        .get("jobs_leases_waiting")
        .expect("the jobs_leases_waiting gauge") as i64
}

/// A long-polling worker gets a job its tenant's limit (or its concurrency key) held back as
/// soon as a lease of that tenant ends, not when its own wait runs out.
#[tokio::test]
async fn a_waiting_lease_gets_a_job_held_back_by_a_limit_as_soon_as_the_limit_frees() {
    let app = TestApp::spawn().await;
    let admin = app.keys.token(app.tenant, &["admin"]);
    let lease_limit = |n: u64| {
        app.request(
            Method::PUT,
            &format!("/jobs/v1/admin/tenants/{}/overrides", app.tenant),
            &admin,
        )
        .json(&json!({ "max_concurrent_leases": n }))
        .send()
    };
    assert_eq!(lease_limit(1).await.unwrap().status(), 200);
    // Two unkeyed jobs held back by the tenant's limit, then two sharing a key of one.
    let cases = [
        json!({"type": "held", "payload": {}}),
        json!({"type": "keyed", "payload": {}, "limits": {"concurrency_key": "k", "max_concurrent": 1}}),
    ];
    for (round, body) in cases.iter().enumerate() {
        if round == 1 {
            assert_eq!(lease_limit(100).await.unwrap().status(), 200);
        }
        let job_type = body["type"].as_str().unwrap().to_string();
        let (first, _) = app.enqueue(body).await;
        let (second, _) = app.enqueue(body).await;
        let holder = app.worker(&format!("holder-{round}"));
        let held = holder
            .lease(&json!({"types": [job_type], "max_jobs": 1, "wait_seconds": 5}))
            .await;
        assert_eq!(held.len(), 1, "{job_type}: the first job is leased");
        assert_eq!(held[0]["id"], first["id"]);
        // The other worker finds the second job held back and waits (20 s at most).
        let waiter = app.worker(&format!("waiter-{round}"));
        let started = std::time::Instant::now();
        let waiting = tokio::spawn({
            let job_type = job_type.clone();
            async move {
                waiter
                    .lease(&json!({"types": [job_type], "max_jobs": 1, "wait_seconds": 20}))
                    .await
            }
        });
        let base = app.command.url();
        while leases_waiting(&app, &base).await < 1 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let (status, body) = holder.complete(&held[0]).await;
        assert_eq!(status, 200, "{body}");
        let got = waiting.await.unwrap();
        assert_eq!(
            got.len(),
            1,
            "{job_type}: the waiting lease got the job once the limit freed"
        );
        assert_eq!(got[0]["id"], second["id"]);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{job_type}: before its wait ran out"
        );
    }
}
