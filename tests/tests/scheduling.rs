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
    let second = tests::start_command(&app.nats.url(), &app.keys)
        .await
        .expect("second command-svc starts");
    // Ready once it has caught up with the stream (pause included).
    let url = format!("{}/readyz", second.url());
    tests::eventually(
        std::time::Duration::from_secs(20),
        "second instance ready",
        || {
            let (http, url) = (app.http.clone(), url.clone());
            async move {
                let r = http.get(url).send().await.ok()?;
                r.status().is_success().then_some(())
            }
        },
    )
    .await;
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
