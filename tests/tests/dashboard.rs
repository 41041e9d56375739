//! The operator dashboard (`/jobs/v1/ui/`) in headless Chromium against the real stack behind
//! the gateway, offline: the test makes jobs through the API (two types pending, one scheduled,
//! one completed, two dead-lettered by a worker), then `tests/browser/ui.mjs` signs in through
//! the form, checks the overview's counts, filters the list, retries one dead-lettered job
//! through the confirmation dialog and redrives the other by filter, pauses the queue
//! "reports" on the Queues page, and as the admin drains the worker; the test then checks
//! through the API that both jobs are pending, the queue paused and the worker draining. Screenshots (1280 px and
//! 390 px) are kept in `$CARGO_TARGET_DIR/test-artifacts/dashboard/`.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tests::{dev_auth_config, dev_users_file, eventually, start_dev_auth, Gateway, TestApp};
use uuid::Uuid;

/// The seed's developer (dev@eventzr.com, role member) and admin (another tenant).
const DEV_TENANT: &str = "10000000-0000-4000-8000-000000000004";
const ADMIN_TENANT: &str = "10000000-0000-4000-8000-000000000001";

/// Enqueues `body` as `token`; returns the job's id.
async fn enqueue(app: &TestApp, token: &str, body: Value) -> String {
    let res = app.enqueue_as(token, &body).await;
    assert_eq!(res.status(), 201, "enqueue: {:?}", res.text().await);
    let v: Value = res.json().await.expect("json");
    v["data"]["id"].as_str().expect("id").to_string()
}

async fn get(app: &TestApp, token: &str, path: &str, min_seq: u64) -> Value {
    let res = app
        .request(Method::GET, path, token)
        .header("x-min-event-seq", min_seq.to_string())
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 200, "GET {path}");
    res.json().await.expect("json")
}

fn ids(rows: &Value) -> BTreeSet<String> {
    rows.as_array()
        .expect("rows")
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_string())
        .collect()
}

#[tokio::test]
async fn dashboard_shows_the_counts_filters_and_retries_a_dead_letter_offline() {
    let app = TestApp::spawn().await;
    let auth = start_dev_auth(dev_auth_config(&app.keys, &dev_users_file()))
        .await
        .expect("jobs-dev-auth starts");
    let gw = Gateway::start_with_dev_login(app.command.port, app.query.port, auth.port)
        .await
        .expect("gateway");
    let dev = app
        .keys
        .token(Uuid::parse_str(DEV_TENANT).expect("uuid"), &["member"]);

    // Two types pending, one scheduled, one completed, two dead-lettered.
    let mut pdf = BTreeSet::new();
    for n in 0..3 {
        enqueue(&app, &dev, tests::email_job(n)).await;
    }
    for n in 0..2 {
        let id = enqueue(
            &app,
            &dev,
            // One in the queue "reports", which the browser pauses.
            if n == 0 {
                json!({"type": "pdf.render", "queue": "reports", "payload": {"doc": n}})
            } else {
                json!({"type": "pdf.render", "payload": {"doc": n}})
            },
        )
        .await;
        pdf.insert(id);
    }
    let later = enqueue(
        &app,
        &dev,
        json!({"type": "pdf.render", "payload": {"doc": "later"}, "delay_seconds": 3600}),
    )
    .await;
    pdf.insert(later.clone());
    let dead = enqueue(
        &app,
        &dev,
        json!({"type": "invoice.sync", "payload": {"invoice": 7}}),
    )
    .await;
    let dead2 = enqueue(
        &app,
        &dev,
        json!({"type": "invoice.sync", "payload": {"invoice": 8}}),
    )
    .await;
    let w = app.worker("w");
    let leased = w
        .lease(&json!({"types": ["email.send"], "max_jobs": 1}))
        .await;
    assert_eq!(leased.len(), 1);
    assert_eq!(w.complete(&leased[0]).await.0, 200);
    let leased = w
        .lease(&json!({"types": ["invoice.sync"], "max_jobs": 2}))
        .await;
    assert_eq!(
        ids(&json!(leased)),
        BTreeSet::from([dead.clone(), dead2.clone()])
    );
    for job in &leased {
        let (status, failed) = w.fail(job, false).await;
        assert_eq!(status, 200, "fail: {failed}");
        assert_eq!(failed["data"]["status"], "dead_lettered");
    }

    // What the page must show, once the read model has it.
    let counts = json!({"scheduled": 1, "pending": 4, "leased": 0, "completed": 1, "dead_lettered": 2, "cancelled": 0});
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let m = get(&app, &dev, "/jobs/v1/metrics", 0).await;
        let shown = counts
            .as_object()
            .expect("counts")
            .iter()
            .all(|(status, n)| &m["data"]["counts"][status] == n);
        if shown {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the read model never showed {counts}: {}",
            m["data"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The projector's lag, as the overview reads it: the checkpoint against the stream's head.
    let p = &metrics["data"]["projection"];
    let (checkpoint, head) = (
        p["checkpoint_seq"].as_i64().expect("checkpoint_seq"),
        p["stream_seq"].as_i64().expect("stream_seq"),
    );
    assert!(checkpoint > 0 && head >= checkpoint, "{p}");
    assert_eq!(p["lag_events"], head - checkpoint, "{p}");
    assert!(p["last_applied_at"].is_string(), "{p}");
    if head == checkpoint {
        assert_eq!(p["lag_ms"], 0, "{p}");
    }

    let want = json!({
        "email": "dev@eventzr.com",
        "password": "Password123!",
        "counts": counts,
        "byType": {
            "email.send": {"pending": 2, "completed": 1},
            "pdf.render": {"pending": 2, "scheduled": 1},
            "invoice.sync": {"dead_lettered": 2},
        },
        "filter": {"type": "pdf.render", "status": "scheduled"},
        "dlqId": dead,
        "queue": "reports",
        "admin": {"email": "admin@eventzr.com", "password": "Password123!", "worker": w.id()},
    });
    let shots = tests::artifacts_dir("dashboard");
    let script = tests::workspace_root().join("tests/browser/ui.mjs");
    let (base, arg) = (gw.url(), want.to_string());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .arg(base)
            .arg(&shots)
            .arg(arg)
            .output()
            .expect("node runs")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_str(stdout.lines().last().expect("a line")).expect("JSON");
    let checks = &result["checks"];

    // Offline and clean: nothing but the gateway, no console errors (CSP violations included).
    assert_eq!(result["external"], json!([]), "requests beyond the gateway");
    assert_eq!(result["errors"], json!([]), "console errors");
    assert_eq!(result["shownErrors"], json!([]), "errors the pages showed");
    let gateway = result["gateway"].as_array().expect("gateway requests");
    for (method, path, status) in [
        ("GET", "/jobs/v1/ui/", 200),
        ("GET", "/jobs/v1/ui/js/main.js", 200),
        ("GET", "/jobs/v1/ui/app.css", 200),
        ("POST", "/auth/v1/login", 200),
        ("GET", "/jobs/v1/metrics", 200),
        ("GET", "/jobs/v1/jobs", 200),
        ("GET", "/jobs/v1/dlq", 200),
        ("GET", "/jobs/v1/queues", 200),
        ("GET", "/jobs/v1/types", 200),
        ("GET", "/jobs/v1/schedules", 200),
    ] {
        assert!(
            gateway.contains(&json!({"method": method, "path": path, "status": status})),
            "{method} {path} {status} not among {gateway:?}"
        );
    }
    assert!(
        gateway.iter().all(|r| r["status"].as_u64() < Some(500)),
        "a 5xx: {gateway:?}"
    );

    // Signed in as the developer, with the token's claims shown.
    assert_eq!(checks["who"], "dev@eventzr.com");
    assert_eq!(checks["tenant"], DEV_TENANT);
    assert_eq!(checks["roles"], "member");

    // The overview shows the counts the test made, by status and by type.
    assert_eq!(checks["counts"], want["counts"]);
    assert_eq!(checks["byType"], want["byType"]);
    assert!(
        checks["projector"]
            .as_str()
            .is_some_and(|s| s.starts_with("Caught up") || s.starts_with("Behind")),
        "projector state: {}",
        checks["projector"]
    );

    // Filtering: by type, the three pdf.render jobs; with status scheduled, the delayed one.
    assert_eq!(ids(&checks["filteredByType"]), pdf);
    assert!(checks["filteredByType"]
        .as_array()
        .expect("rows")
        .iter()
        .all(|r| r["type"] == "pdf.render"));
    assert_eq!(
        checks["filteredByTypeAndStatus"],
        json!([{"id": later, "type": "pdf.render", "status": "scheduled"}])
    );

    // The job page: the worker's error and a timeline naming who did what.
    assert_eq!(checks["jobStatus"], "dead-lettered");
    assert_eq!(checks["lastError"], "E_TEST: boom");
    let timeline: Vec<&str> = checks["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .map(|e| e["event"].as_str().expect("event"))
        .collect();
    assert_eq!(timeline, ["JobEnqueued", "JobLeased", "JobDeadLettered"]);
    let leased_by = checks["timeline"][1]["text"].as_str().expect("text");
    assert!(leased_by.contains(&w.id()), "{leased_by}");

    // The DLQ: grouped by type and code; the purge dialog started on Cancel and Escape closed it
    // (focus back on its button); the retry went through the dialog and answered 200; the
    // group's bulk redrive previewed one job left and requeued it.
    assert_eq!(
        checks["dlqSummary"],
        json!([{"group": "invoice.sync/E_TEST", "n": 2}])
    );
    assert_eq!(
        checks["wouldRequeue"],
        "1 dead letter match (type = invoice.sync, error code = E_TEST)."
    );
    assert_eq!(result["redrive"]["status"], 200);
    assert_eq!(checks["redriveNotice"], "1 job requeued.");
    assert_eq!(checks["purgeDialogFocus"], "Cancel");
    assert_eq!(checks["focusAfterEscape"], format!("Purge job {dead}"));
    assert_eq!(result["retry"]["status"], 200);
    assert!(checks["dlqRowGone"].as_bool().expect("bool"));

    // Every control is labelled; nothing is wider than a 390 px screen.
    for page in [
        "signinUnlabelled",
        "overviewUnlabelled",
        "jobsUnlabelled",
        "dlqUnlabelled",
        "queuesUnlabelled",
        "adminUnlabelled",
    ] {
        assert_eq!(checks[page], json!([]), "unlabelled controls on {page}");
    }
    for (page, px) in checks["overflow390"].as_object().expect("overflow") {
        assert!(
            px.as_i64().expect("px") <= 0,
            "{page} is {px} px wider than 390"
        );
    }

    // Through the API: the retried job is pending again (attempts reset)...
    let seq = result["retry"]["seq"].as_u64().expect("x-event-seq");
    let job = get(&app, &dev, &format!("/jobs/v1/jobs/{dead}"), seq).await;
    assert_eq!(job["data"]["status"], "pending");
    assert_eq!(job["data"]["attempts"], 0);
    // ...so is the one the bulk redrive requeued, and the dead-letter queue is empty.
    let seq = result["redrive"]["seq"].as_u64().expect("x-event-seq");
    let job = get(&app, &dev, &format!("/jobs/v1/jobs/{dead2}"), seq).await;
    assert_eq!(job["data"]["status"], "pending");
    let dlq = get(&app, &dev, "/jobs/v1/dlq", seq).await;
    assert_eq!(dlq["data"], json!([]));
    // ...the queue "reports" is paused (the page said so too)...
    assert_eq!(result["pause"]["status"], 200);
    assert!(
        checks["queueState"]
            .as_str()
            .is_some_and(|s| s.starts_with("paused")),
        "queue state shown: {}",
        checks["queueState"]
    );
    assert_eq!(checks["queuesNotice"], "The queue reports is paused.");
    let seq = result["pause"]["seq"].as_u64().unwrap_or(0);
    let queues = get(&app, &dev, "/jobs/v1/queues", seq).await;
    let reports = queues["data"]
        .as_array()
        .expect("queues")
        .iter()
        .find(|q| q["name"] == "reports")
        .unwrap_or_else(|| panic!("no queue reports in {queues}"));
    assert_eq!(reports["paused"], true, "{reports}");
    // ...and the admin's drain reached the worker registry.
    assert_eq!(result["drain"]["status"], 200);
    let admin = app
        .keys
        .token(Uuid::parse_str(ADMIN_TENANT).expect("uuid"), &["admin"]);
    let path = format!(
        "/jobs/v1/admin/workers/{}",
        result["drain"]["path"]
            .as_str()
            .expect("path")
            .trim_start_matches("/jobs/v1/admin/workers/")
            .trim_end_matches("/drain")
    );
    eventually(Duration::from_secs(10), "the worker draining", || async {
        let v = get(&app, &admin, &path, 0).await;
        (v["data"]["draining"] == true).then_some(())
    })
    .await;
}
