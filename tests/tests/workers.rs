//! The worker protocol over mTLS and the write model behind it: ordering, fairness, expiry,
//! long-polling, failures and dead-lettering, exactly-once under concurrency and across a
//! kill -9 of command-svc.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use tests::{all_events, email_job, event_seq, eventually, Bin, TestApp, Tls, Worker};
use uuid::Uuid;

async fn enqueue_batch(app: &TestApp, token: &str, jobs: Vec<Value>) -> (Vec<Value>, u64) {
    let res = app
        .request(Method::POST, "/jobs/v1/enqueue/batch", token)
        .json(&json!({ "jobs": jobs }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let seq = event_seq(&res);
    let body: Value = res.json().await.unwrap();
    (body["data"]["jobs"].as_array().unwrap().clone(), seq)
}

/// Folds the stream per job with `apply` (which refuses a second lease while one is held, and
/// a completion of anything but the current lease) and checks: at most one completion per job,
/// leases of one job never overlap in time. Returns the final state per job.
fn check_history(recs: &[events::Recorded]) -> HashMap<Uuid, events::Job> {
    let mut jobs: HashMap<Uuid, events::Job> = HashMap::new();
    let mut completions: HashMap<Uuid, usize> = HashMap::new();
    let mut lease_end: HashMap<Uuid, chrono::DateTime<chrono::Utc>> = HashMap::new();
    for r in recs {
        let id = r.envelope.job_id;
        let next = events::apply(jobs.get(&id), r).unwrap_or_else(|e| panic!("seq {}: {e}", r.seq));
        match &r.envelope.event {
            events::JobEvent::Completed { .. } => *completions.entry(id).or_default() += 1,
            events::JobEvent::Leased { .. } => {
                if let Some(end) = lease_end.get(&id) {
                    assert!(
                        r.envelope.at >= *end,
                        "job {id}: a lease began before the previous one ended"
                    );
                }
            }
            _ => {}
        }
        if jobs.get(&id).is_some_and(|j| j.lease.is_some()) && next.lease.is_none() {
            lease_end.insert(id, r.envelope.at);
        }
        jobs.insert(id, next);
    }
    assert!(
        completions.values().all(|n| *n == 1),
        "a job completed twice"
    );
    jobs
}

#[tokio::test]
async fn the_worker_listener_requires_a_certificate_from_the_ca() {
    let app = TestApp::spawn().await;
    let tls = Tls::get();
    let url = format!(
        "https://127.0.0.1:{}/jobs/v1/worker/lease",
        app.command.worker_port
    );
    let body = json!({"types": ["email.send"]});

    let anonymous = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(tls.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    assert!(
        anonymous.post(&url).json(&body).send().await.is_err(),
        "no certificate"
    );
    for (what, pem) in [
        ("another CA", tls.foreign_worker_pem("w")),
        ("expired", tls.expired_worker_pem("w")),
    ] {
        let w = Worker::new(app.command.worker_port, &pem, "w");
        assert!(
            w.post("/lease", &body).await.is_err(),
            "{what}: the handshake must fail"
        );
    }
    let good = app.worker("w1");
    let (status, v) = good.post("/lease", &body).await.unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["jobs"], json!([]));

    // Worker routes exist only on the worker listener.
    let res = app
        .request(Method::POST, "/jobs/v1/worker/lease", &app.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    // And bad input there is a 400 like everywhere.
    for bad in [
        json!({"types": []}),
        json!({"types": ["a"], "max_jobs": 0}),
        json!({"types": ["a"], "lease_seconds": 1}),
        json!({"types": ["a"], "colour": 1}),
    ] {
        let (status, v) = good.post("/lease", &bad).await.unwrap();
        assert_eq!(status, 400, "{bad}: {v}");
        assert_eq!(v["error"]["code"], "VALIDATION_FAILED");
    }
}

#[tokio::test]
async fn leases_follow_priority_then_fifo_and_wait_for_run_at() {
    let app = TestApp::spawn().await;
    let w = app.worker("w1");
    let (low, _) = app
        .enqueue(&json!({"type": "t", "payload": {}, "priority": 1}))
        .await;
    let (a, _) = app
        .enqueue(&json!({"type": "t", "payload": {}, "priority": 7}))
        .await;
    let (b, _) = app
        .enqueue(&json!({"type": "t", "payload": {}, "priority": 7}))
        .await;
    let (later, _) = app
        .enqueue(&json!({"type": "t", "payload": {}, "priority": 10, "delay_seconds": 2}))
        .await;
    assert_eq!(later["status"], "scheduled");
    let mut order = Vec::new();
    for _ in 0..3 {
        let jobs = w.lease(&json!({"types": ["t"]})).await;
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0]["status"], "leased");
        assert_eq!(jobs[0]["lease"]["worker_id"], w.id());
        assert_eq!(jobs[0]["attempts"], 1);
        order.push(jobs[0]["id"].clone());
    }
    assert_eq!(
        order,
        vec![a["id"].clone(), b["id"].clone(), low["id"].clone()]
    );
    let jobs = w.lease(&json!({"types": ["t"], "wait_seconds": 10})).await;
    let leased_at = chrono::Utc::now();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["id"], later["id"]);
    let run_at: chrono::DateTime<chrono::Utc> = later["run_at"].as_str().unwrap().parse().unwrap();
    assert!(
        leased_at >= run_at,
        "a scheduled job is not leased before its run_at"
    );
}

#[tokio::test]
async fn a_tenant_with_five_jobs_is_not_starved_by_one_with_a_thousand() {
    let app = TestApp::spawn().await;
    let token_b = app.keys.token(Uuid::new_v4(), &["member"]);
    for _ in 0..2 {
        enqueue_batch(&app, &app.token, (0..500).map(email_job).collect()).await;
    }
    let (bs, _) = enqueue_batch(&app, &token_b, (0..5).map(email_job).collect()).await;
    let w = app.worker("w1");
    let mut first20 = Vec::new();
    for _ in 0..20 {
        let jobs = w
            .lease(&json!({"types": ["email.send"], "max_jobs": 1}))
            .await;
        first20.push(jobs[0]["id"].clone());
    }
    for b in &bs {
        assert!(
            first20.contains(&b["id"]),
            "tenant B's job {} not among the first 20 leases",
            b["id"]
        );
    }
}

#[tokio::test]
async fn an_expired_lease_is_lost_and_the_job_leased_again() {
    let app = TestApp::spawn().await;
    let (w1, w2) = (app.worker("w1"), app.worker("w2"));
    let (job, _) = app
        .enqueue(
            &json!({"type": "t", "payload": {}, "backoff": {"base_seconds": 1, "max_seconds": 1}}),
        )
        .await;
    let held = w1
        .lease(&json!({"types": ["t"], "lease_seconds": 5}))
        .await
        .remove(0);
    assert_eq!(held["id"], job["id"]);
    let started = Instant::now();
    let again = w2.lease(&json!({"types": ["t"], "wait_seconds": 15})).await;
    assert_eq!(again.len(), 1, "the job came back after its lease ran out");
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "not before the lease expired"
    );
    let again = &again[0];
    assert_eq!(again["attempts"], 2);
    assert_eq!(again["errors"][0]["code"], "LEASE_EXPIRED");
    assert!(
        again["lease"]["lease_id"].as_u64() > held["lease"]["lease_id"].as_u64(),
        "lease ids grow"
    );

    let before = all_events(&app.nats.url()).await.len();
    let (status, v) = w1.complete(&held).await;
    assert_eq!(status, 409);
    assert_eq!(v["error"]["code"], "LEASE_LOST");
    let (status, _) = w1.heartbeat(&held, json!({})).await;
    assert_eq!(status, 409);
    assert_eq!(
        all_events(&app.nats.url()).await.len(),
        before,
        "a lost lease appends nothing"
    );
    let (status, done) = w2.complete(again).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["data"]["status"], "completed");
    let id: Uuid = job["id"].as_str().unwrap().parse().unwrap();
    tests::assert_invariants(&app.nats.url(), &app.db.url, &[id]).await;
}

#[tokio::test]
async fn a_long_poll_returns_as_soon_as_a_matching_job_is_enqueued() {
    let app = TestApp::spawn().await;
    let w = app.worker("w1");
    let poll = tokio::spawn(async move {
        let jobs = w.lease(&json!({"types": ["t"], "wait_seconds": 10})).await;
        (jobs, Instant::now())
    });
    // Let the poll reach the server and start waiting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.enqueue(&json!({"type": "other", "payload": {}})).await;
    let (job, _) = app.enqueue(&json!({"type": "t", "payload": {}})).await;
    let acked = Instant::now();
    let (jobs, returned) = poll.await.unwrap();
    assert_eq!(jobs[0]["id"], job["id"]);
    let delay = returned.saturating_duration_since(acked);
    assert!(
        delay < Duration::from_millis(100),
        "the long-poll returned {delay:?} after the enqueue"
    );
}

#[tokio::test]
async fn heartbeats_extend_failures_retry_and_exhausted_jobs_dead_letter() {
    let app = TestApp::spawn().await;
    let w = app.worker("w1");
    let (job, _) = app
        .enqueue(&json!({"type": "t", "payload": {}, "max_attempts": 2}))
        .await;
    let held = w
        .lease(&json!({"types": ["t"], "lease_seconds": 10}))
        .await
        .remove(0);
    let (status, hb) = w
        .heartbeat(
            &held,
            json!({"progress": {"pct": 50}, "extend_seconds": 60}),
        )
        .await;
    assert_eq!(status, 200, "{hb}");
    assert_eq!(hb["data"]["cancel_requested"], false);
    let extended: chrono::DateTime<chrono::Utc> =
        hb["data"]["expires_at"].as_str().unwrap().parse().unwrap();
    assert!(extended > chrono::Utc::now() + chrono::Duration::seconds(50));

    let (status, failed) = w.fail(&held, true).await;
    assert_eq!(status, 200, "{failed}");
    assert_eq!(failed["data"]["status"], "scheduled");
    assert_eq!(failed["data"]["errors"][0]["message"], "boom");
    assert_eq!(failed["data"]["errors"][0]["worker_id"], w.id());
    let (status, v) = w.fail(&held, true).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("LEASE_LOST"))
    );

    let held = w
        .lease(&json!({"types": ["t"], "wait_seconds": 5}))
        .await
        .remove(0);
    assert_eq!(held["attempts"], 2);
    let (status, dead) = w.fail(&held, true).await;
    assert_eq!(status, 200);
    assert_eq!(
        dead["data"]["status"], "dead_lettered",
        "attempts exhausted"
    );
    let seq = held["lease"]["lease_id"].as_u64().unwrap() + 1;
    let (status, got) = app
        .get(
            &format!("/jobs/v1/jobs/{}", job["id"].as_str().unwrap()),
            seq,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(got["data"]["status"], "dead_lettered");
    assert_eq!(got["data"]["errors"].as_array().unwrap().len(), 2);
    let (_, history) = app
        .get(
            &format!("/jobs/v1/jobs/{}/events", job["id"].as_str().unwrap()),
            seq,
        )
        .await;
    let types: Vec<&str> = history["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "JobEnqueued",
            "JobLeased",
            "JobHeartbeat",
            "JobFailed",
            "JobLeased",
            "JobDeadLettered"
        ]
    );
    assert_eq!(history["data"][2]["data"]["progress"], json!({"pct": 50}));

    let (job, _) = app
        .enqueue(&json!({"type": "t", "payload": {}, "max_attempts": 5}))
        .await;
    let held = w.lease(&json!({"types": ["t"]})).await.remove(0);
    assert_eq!(held["id"], job["id"]);
    let (status, dead) = w.fail(&held, false).await;
    assert_eq!(
        (status, dead["data"]["status"].as_str()),
        (200, Some("dead_lettered")),
        "not retryable"
    );
}

#[tokio::test]
async fn three_instances_and_nine_workers_complete_every_job_exactly_once() {
    let app = TestApp::spawn().await;
    // A lease of several jobs is appended three ways, racing each other for the same jobs:
    // the suite's instance hands its single appends to group commit; the second sends them
    // together as single appends (the default); the third as one atomic batch.
    let single = command_svc::Config {
        group_commit: false,
        ..tests::command_config(&app.nats.url(), &app.keys)
    };
    assert!(!single.atomic_leases);
    let second = tests::start_command_with(single.clone()).await.unwrap();
    let third = tests::start_command_with(command_svc::Config {
        atomic_leases: true,
        ..single
    })
    .await
    .unwrap();
    let total = 5000;
    let mut acknowledged = Vec::new();
    for chunk in 0..total / 500 {
        let jobs = (0..500)
            .map(|i| json!({"type": "t", "payload": {"n": chunk * 500 + i}, "max_attempts": 3, "backoff": {"base_seconds": 1, "max_seconds": 1}}))
            .collect();
        let (created, _) = enqueue_batch(&app, &app.token, jobs).await;
        acknowledged.extend(
            created
                .iter()
                .map(|j| j["id"].as_str().unwrap().parse::<Uuid>().unwrap()),
        );
    }
    let workers: Vec<_> = (0..9)
        .map(|i| {
            let port = [
                app.command.worker_port,
                second.worker_port,
                third.worker_port,
            ][i % 3];
            let w = Worker::new(
                port,
                &Tls::get().worker_pem(&format!("w{i}")),
                &format!("w{i}"),
            );
            tokio::spawn(async move {
                let mut idle = 0;
                let mut done = 0;
                while idle < 3 {
                    let jobs = w
                        .lease(&json!({"types": ["t"], "max_jobs": 10, "wait_seconds": 2}))
                        .await;
                    if jobs.is_empty() {
                        idle += 1;
                        continue;
                    }
                    idle = 0;
                    for j in jobs {
                        // About one attempt in ten fails and is retried.
                        let fails = j["id"]
                            .as_str()
                            .unwrap()
                            .bytes()
                            .map(|b| b as u32)
                            .sum::<u32>()
                            % 10
                            == 0
                            && j["attempts"] == 1;
                        let (status, v) = if fails {
                            w.fail(&j, true).await
                        } else {
                            w.complete(&j).await
                        };
                        assert_eq!(status, 200, "{v}");
                        done += 1;
                    }
                }
                done
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let recs = all_events(&app.nats.url()).await;
    let jobs = check_history(&recs);
    assert_eq!(jobs.len(), total);
    let unfinished: Vec<_> = jobs
        .values()
        .filter(|j| {
            j.status != events::Status::Completed && j.status != events::Status::DeadLettered
        })
        .collect();
    assert!(
        unfinished.is_empty(),
        "{} jobs never finished",
        unfinished.len()
    );
    let retried = jobs
        .values()
        .filter(|j| !j.extras().errors.is_empty())
        .count();
    assert!(retried > 0, "some jobs failed and were retried");
    let leased_by = recs
        .iter()
        .filter(|r| matches!(r.envelope.event, events::JobEvent::Leased { .. }))
        .map(|r| r.envelope.actor.id.clone())
        .collect::<std::collections::HashSet<_>>();
    assert_eq!(leased_by.len(), 9, "all nine workers leased");
    // Every way was taken: on each instance some lease call held several jobs (their
    // `JobLeased` events share the worker and the call's time).
    let mut per_call: HashMap<(String, chrono::DateTime<chrono::Utc>), usize> = HashMap::new();
    for r in &recs {
        if let events::JobEvent::Leased { worker_id, .. } = &r.envelope.event {
            *per_call
                .entry((worker_id.clone(), r.envelope.at))
                .or_default() += 1;
        }
    }
    for instance in 0..3 {
        let most = per_call
            .iter()
            .filter(|((w, _), _)| {
                let i: usize = w
                    .trim_start_matches(|c: char| !c.is_ascii_digit())
                    .parse()
                    .unwrap_or_else(|_| panic!("worker id {w}"));
                i % 3 == instance
            })
            .map(|(_, n)| *n)
            .max()
            .unwrap();
        assert!(
            most > 1,
            "instance {instance} leased at most one job per call"
        );
    }
    tests::assert_invariants(&app.nats.url(), &app.db.url, &acknowledged).await;
    drop((second, third));
}

#[tokio::test]
async fn killing_command_svc_mid_cycle_loses_and_repeats_nothing() {
    let app = TestApp::spawn().await;
    let tls = Tls::get();
    let (port, worker_port) = (tests::procs::free_port(), tests::procs::free_port());
    let env = tests::command_env(&app, port, worker_port, &[]);
    let mut svc = Bin::spawn("command-svc", &env).unwrap();
    let http = reqwest::Client::new();
    let ready = |http: reqwest::Client| async move {
        eventually(Duration::from_secs(20), "command-svc ready", || async {
            let r = http
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        })
        .await
    };
    ready(http.clone()).await;
    let jobs: Vec<Value> = (0..200).map(|i| json!({"type": "t", "payload": {"n": i}, "backoff": {"base_seconds": 1, "max_seconds": 1}})).collect();
    let res = http
        .post(format!("http://127.0.0.1:{port}/jobs/v1/enqueue/batch"))
        .bearer_auth(&app.token)
        .json(&json!({"jobs": jobs}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);

    let completed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let all_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|i| {
            let w = Worker::new(worker_port, &tls.worker_pem(&format!("k{i}")), &format!("k{i}"));
            let (completed, all_done) = (completed.clone(), all_done.clone());
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(60);
                while !all_done.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                    // The service may be down: connection errors and 503s are expected here.
                    let Ok((200, v)) = w.post("/lease", &json!({"types": ["t"], "max_jobs": 5, "lease_seconds": 5, "wait_seconds": 1})).await else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    for j in v["data"]["jobs"].as_array().cloned().unwrap_or_default() {
                        if let Ok((200, _)) = w.post(&format!("/jobs/{}/complete", j["id"].as_str().unwrap()), &json!({"lease_id": j["lease"]["lease_id"]})).await {
                            completed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    eventually(Duration::from_secs(30), "some completions", || async {
        (completed.load(std::sync::atomic::Ordering::Relaxed) >= 50).then_some(())
    })
    .await;
    svc.kill9();
    let at_kill = completed.load(std::sync::atomic::Ordering::Relaxed);
    let _svc = Bin::spawn("command-svc", &env).unwrap();
    ready(http.clone()).await;
    // Done when the stream says every job completed (a completion whose answer was lost in
    // the kill still counts there).
    let url = app.nats.url();
    eventually(
        Duration::from_secs(60),
        "all 200 jobs completed",
        || async {
            let n = all_events(&url)
                .await
                .iter()
                .filter(|r| r.envelope.type_name() == "JobCompleted")
                .count();
            (n >= 200).then_some(())
        },
    )
    .await;
    all_done.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert!(at_kill < 200, "killed mid-cycle");
    let recs = all_events(&app.nats.url()).await;
    let jobs = check_history(&recs);
    assert_eq!(jobs.len(), 200);
    assert!(
        jobs.values().all(|j| j.status == events::Status::Completed),
        "every job completed"
    );
    let ids: Vec<Uuid> = jobs.keys().copied().collect();
    tests::assert_invariants(&app.nats.url(), &app.db.url, &ids).await;
}

#[tokio::test]
async fn the_reference_worker_runs_a_command_per_job() {
    let app = TestApp::spawn().await;
    let tls = Tls::get();
    let dir = tempfile::tempdir().unwrap();
    let pem = tls.worker_pem("ref");
    let split = pem.find("-----BEGIN PRIVATE KEY-----").unwrap();
    let (cert, key) = (dir.path().join("w.pem"), dir.path().join("w-key.pem"));
    std::fs::write(&cert, &pem[..split]).unwrap();
    std::fs::write(&key, &pem[split..]).unwrap();
    let (ok, _) = app
        .enqueue(&json!({"type": "sh", "payload": {"word": "hello"}}))
        .await;
    let (bad, _) = app
        .enqueue(&json!({"type": "sh", "payload": {"word": "fail"}, "max_attempts": 5}))
        .await;
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let script = r#"read -r line; case "$line" in *fail*) echo "it failed" >&2; exit 100;; esac; echo "{\"echo\": $line}""#;
    let _worker = Bin::spawn_with_args(
        "jobsctl",
        &[
            "worker",
            "--url",
            &format!("https://127.0.0.1:{}", app.command.worker_port),
            "--cert",
            &path(&cert),
            "--key",
            &path(&key),
            "--ca",
            &path(&tls.ca),
            "--types",
            "sh",
            "--exec",
            script,
            "--concurrency",
            "2",
        ],
        &[],
    )
    .unwrap();
    let done = eventually(
        Duration::from_secs(20),
        "the reference worker to finish both jobs",
        || async {
            let (_, a) = app
                .get(&format!("/jobs/v1/jobs/{}", ok["id"].as_str().unwrap()), 0)
                .await;
            let (_, b) = app
                .get(&format!("/jobs/v1/jobs/{}", bad["id"].as_str().unwrap()), 0)
                .await;
            (a["data"]["status"] == "completed" && b["data"]["status"] == "dead_lettered")
                .then_some((a, b))
        },
    )
    .await;
    assert_eq!(done.0["data"]["result"], json!({"echo": {"word": "hello"}}));
    let err = &done.1["data"]["last_error"];
    assert_eq!(err["code"], "EXIT_100");
    assert_eq!(err["message"], "it failed");
    assert_eq!(done.1["data"]["attempts"], 1, "exit 100 is not retried");
}
