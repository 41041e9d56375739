//! What operators and tenants see: Prometheus metrics that move by exactly what was done, and
//! the tenant metrics API against ground truth computed from the stream.

use std::collections::HashMap;

use reqwest::Method;
use serde_json::{json, Value};
use tests::{all_events, email_job, TestApp};

async fn scrape(app: &TestApp, base: &str) -> HashMap<String, f64> {
    tests::scrape(&app.http, base).await
}

#[tokio::test]
async fn prometheus_counters_move_by_exactly_what_was_done() {
    let app = TestApp::spawn().await;
    let base = app.command.url();
    let before = scrape(&app, &base).await;
    let k = 7;
    for i in 0..k {
        app.enqueue(&email_job(i)).await;
    }
    let res = app
        .enqueue_as(&app.token, &json!({"type": "bad type", "payload": {}}))
        .await;
    assert_eq!(res.status(), 400);
    let after = scrape(&app, &base).await;
    let delta = |series: &str| {
        after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0)
    };
    assert_eq!(
        delta(r#"jobs_events_appended_total{type="JobEnqueued"}"#),
        k as f64
    );
    assert_eq!(
        delta(r#"jobs_http_requests_total{method="POST",route="/jobs/v1/enqueue",status="201"}"#),
        k as f64
    );
    assert_eq!(
        delta(r#"jobs_http_requests_total{method="POST",route="/jobs/v1/enqueue",status="400"}"#),
        1.0
    );
    assert_eq!(delta(r#"jobs_append_duration_seconds_count"#), k as f64);
    assert!(
        after.keys().all(|s| !s.contains(&app.tenant.to_string())),
        "no tenant ids as label values"
    );
    let projector = app.projector.as_ref().unwrap().url();
    let p = scrape(&app, &projector).await;
    assert!(p.contains_key("jobs_projector_lag_events"));
    assert!(
        p.keys()
            .any(|k| k.starts_with("jobs_db_pool_connections{state=\"in_use\"}")),
        "DB pool use is exported"
    );
}

/// The bucket a latency falls in (the same bounds the projector uses).
fn bucket(ms: i64) -> i64 {
    projector::rollups::bucket(ms)
}

fn nearest_rank(mut v: Vec<i64>, p: f64) -> Option<i64> {
    if v.is_empty() {
        return None;
    }
    v.sort();
    let rank = ((p * v.len() as f64).ceil() as usize).max(1);
    Some(v[rank - 1])
}

#[tokio::test]
async fn tenant_metrics_equal_the_figures_computed_from_the_stream() {
    let app = TestApp::spawn().await;
    let w = app.worker("w1");
    let mut enqueued = Vec::new();
    for i in 0..30 {
        let t = if i % 3 == 0 { "b" } else { "a" };
        let (job, _) = app
            .enqueue(&json!({"type": t, "payload": {"i": i}, "max_attempts": 2}))
            .await;
        enqueued.push(job["id"].clone());
    }
    app.enqueue(&json!({"type": "a", "payload": {}, "delay_seconds": 600}))
        .await;
    let leased = w.lease(&json!({"types": ["a", "b"], "max_jobs": 20})).await;
    assert_eq!(leased.len(), 20);
    for (i, j) in leased.iter().enumerate() {
        let (status, v) = match i % 5 {
            0..=2 => w.complete(j).await,
            3 => w.fail(j, true).await,
            _ => w.fail(j, false).await,
        };
        assert_eq!(status, 200, "{v}");
    }
    let never_leased: Vec<&Value> = enqueued
        .iter()
        .filter(|id| leased.iter().all(|l| l["id"] != **id))
        .collect();
    for id in never_leased.iter().take(2) {
        let path = format!("/jobs/v1/jobs/{}/cancel", id.as_str().unwrap());
        let res = app
            .request(Method::POST, &path, &app.token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }

    // Ground truth, from the events this tenant caused.
    let recs: Vec<events::Recorded> = all_events(&app.nats.url())
        .await
        .into_iter()
        .filter(|r| r.envelope.tenant_id == app.tenant)
        .collect();
    let last_seq = recs.last().unwrap().seq;
    let (status, m) = app.get("/jobs/v1/metrics?window=3600", last_seq).await;
    assert_eq!(status, 200, "{m}");
    let now = chrono::Utc::now();
    let mut jobs: HashMap<uuid::Uuid, events::Job> = HashMap::new();
    let (mut waits, mut runs) = (Vec::new(), Vec::new());
    let mut tp = [0i64; 4];
    for r in &recs {
        let before = jobs.get(&r.envelope.job_id).cloned();
        let after = events::apply(before.as_ref(), r).unwrap();
        match &r.envelope.event {
            events::JobEvent::Enqueued { .. } => tp[0] += 1,
            events::JobEvent::Completed { .. } => {
                tp[1] += 1;
                runs.push(
                    (r.envelope.at - before.as_ref().unwrap().lease.as_ref().unwrap().leased_at)
                        .num_milliseconds(),
                );
            }
            events::JobEvent::Failed { .. } | events::JobEvent::LeaseExpired { .. } => tp[2] += 1,
            events::JobEvent::DeadLettered { .. } => {
                tp[3] += 1;
                tp[2] += 1;
            }
            events::JobEvent::Leased { .. } => waits.push(
                (r.envelope.at - before.as_ref().unwrap().run_at)
                    .num_milliseconds()
                    .max(0),
            ),
            _ => {}
        }
        jobs.insert(r.envelope.job_id, after);
    }
    let mut counts: HashMap<&str, i64> = HashMap::new();
    let mut by_type: HashMap<(String, &str), i64> = HashMap::new();
    for j in jobs.values() {
        let s = j.status_at(now).as_str();
        *counts.entry(s).or_default() += 1;
        *by_type.entry((j.job_type.to_string(), s)).or_default() += 1;
    }
    let d = &m["data"];
    for s in events::Status::ALL {
        assert_eq!(
            d["counts"][s.as_str()].as_i64().unwrap(),
            counts.get(s.as_str()).copied().unwrap_or(0),
            "counts.{}",
            s.as_str()
        );
    }
    for t in d["by_type"].as_array().unwrap() {
        for s in events::Status::ALL {
            let want = by_type
                .get(&(t["type"].as_str().unwrap().to_string(), s.as_str()))
                .copied()
                .unwrap_or(0);
            assert_eq!(
                t["counts"][s.as_str()].as_i64().unwrap(),
                want,
                "{} {}",
                t["type"],
                s.as_str()
            );
        }
    }
    let th = &d["throughput"];
    assert_eq!(th["window_seconds"], 3600);
    assert_eq!(
        [
            th["enqueued"].as_i64().unwrap(),
            th["completed"].as_i64().unwrap(),
            th["failed"].as_i64().unwrap(),
            th["dead_lettered"].as_i64().unwrap()
        ],
        tp
    );
    assert_eq!(tp, [31, 12, 8, 4], "the workload did what it says");
    for (name, values) in [("wait", &waits), ("run", &runs)] {
        for (p, key) in [(0.50, "p50"), (0.95, "p95"), (0.99, "p99")] {
            let truth = nearest_rank(values.clone(), p).unwrap();
            let got = d["latency_ms"][format!("{name}_{key}")].as_i64().unwrap();
            let buckets = projector::rollups::BUCKETS_MS;
            let i = buckets.iter().position(|b| *b == bucket(truth)).unwrap();
            let near: Vec<i64> = buckets[i.saturating_sub(1)..(i + 2).min(buckets.len())].to_vec();
            assert!(
                got >= truth && near.contains(&got),
                "{name}_{key}: {got} is not within one bucket of {truth}"
            );
        }
    }
    for bad in ["window=61", "window=abc", "colour=1"] {
        assert_eq!(
            app.get(&format!("/jobs/v1/metrics?{bad}"), 0).await.0,
            400,
            "{bad}"
        );
    }
    let other = app.keys.token(uuid::Uuid::new_v4(), &["viewer"]);
    let res = app
        .request(Method::GET, "/jobs/v1/metrics", &other)
        .send()
        .await
        .unwrap();
    let v: Value = res.json().await.unwrap();
    assert_eq!(
        v["data"]["counts"]["pending"], 0,
        "another tenant sees only its own"
    );
}
