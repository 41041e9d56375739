//! Payloads out of memory (`JOBS_PAYLOAD_MEMORY_BYTES`): command-svc keeps only the newest
//! waiting jobs' payloads in memory and reads the others back from the stream. Every answer
//! that carries a job must still carry its payload, before and after a restart from the
//! snapshot. (Every in-process command-svc of the suite runs with no payload memory at all,
//! `tests::command_config`, so every other test goes through the read-back too.)

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};
use tests::TestApp;

fn body(n: usize) -> Value {
    json!({"n": n, "text": format!("payload {n} ").repeat(8)})
}

async fn post(app: &TestApp, instance: &tests::Running, path: &str, req: &Value) -> (u16, Value) {
    let res = app
        .http
        .post(format!("{}/jobs/v1{path}", instance.url()))
        .bearer_auth(&app.token)
        .json(req)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

/// The payload each leased job carries, by id, checked against what was enqueued.
fn check(jobs: &[Value], sent: &HashMap<String, Value>) -> usize {
    for job in jobs {
        let id = job["id"].as_str().unwrap();
        assert_eq!(job["payload"], sent[id], "job {id}'s payload");
    }
    jobs.len()
}

#[tokio::test]
async fn payloads_out_of_memory_come_back_in_every_answer_and_across_a_restart() {
    let app = TestApp::spawn_with(false).await;
    let dir = tempfile::tempdir().unwrap();
    // Room for about 5 of the 40 payloads (each about 130 bytes, counted with 40 more).
    let config = || command_svc::Config {
        snapshot_dir: Some(dir.path().to_path_buf()),
        payload_memory_bytes: 5 * 170,
        ..tests::command_config(&app.nats.url(), &app.keys)
    };
    let first = tests::start_command_with(config()).await.unwrap();
    tests::wait_ready(&first).await;
    // A job that expires while its payload is out of memory: discarding it reads nothing.
    let (status, res) = post(
        &app,
        &first,
        "/enqueue",
        &json!({"type": "pl.expiring", "payload": body(99), "ttl_seconds": 1}),
    )
    .await;
    assert_eq!(status, 201, "{res}");
    let expiring: uuid::Uuid = res["data"]["id"].as_str().unwrap().parse().unwrap();
    let mut sent = HashMap::new();
    let mut order = Vec::new();
    for n in 0..40 {
        let (status, res) = post(
            &app,
            &first,
            "/enqueue",
            &json!({"type": "pl", "payload": body(n)}),
        )
        .await;
        assert_eq!(status, 201, "{res}");
        let id = res["data"]["id"].as_str().unwrap().to_string();
        sent.insert(id.clone(), body(n));
        order.push(id);
    }
    let metrics = tests::scrape(&app.http, &first.url()).await;
    let kept = metrics["jobs_payload_memory_bytes"];
    assert!(kept > 0.0 && kept <= 850.0, "{kept} bytes of payloads kept");
    assert_eq!(metrics["jobs_payload_reads_total"], 0.0);
    tests::eventually(Duration::from_secs(20), "the job's expiry", || async {
        tests::all_events(&app.nats.url())
            .await
            .iter()
            .any(|r| r.envelope.job_id == expiring && r.envelope.event.type_name() == "JobExpired")
            .then_some(())
    })
    .await;
    let metrics = tests::scrape(&app.http, &first.url()).await;
    assert_eq!(metrics["jobs_payload_reads_total"], 0.0);

    // Commands that answer with the job: an update of another field, and a cancel, of the
    // two oldest jobs (both out of memory).
    let res = app
        .http
        .patch(format!("{}/jobs/v1/jobs/{}", first.url(), order[0]))
        .bearer_auth(&app.token)
        .json(&json!({"priority": 9}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let updated: Value = res.json().await.unwrap();
    assert_eq!(updated["data"]["payload"], sent[&order[0]]);
    let (status, cancelled) = post(
        &app,
        &first,
        &format!("/jobs/{}/cancel", order[1]),
        &json!({}),
    )
    .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["data"]["payload"], sent[&order[1]]);
    sent.remove(&order[1]);

    // A lease of ten: every payload as it was sent, read back at once.
    let worker = tests::Worker::new(first.worker_port, &tests::Tls::get().worker_pem("pl"), "pl");
    let leased = worker
        .lease(&json!({"types": ["pl"], "max_jobs": 10}))
        .await;
    assert_eq!(check(&leased, &sent), 10);
    let reads = tests::scrape(&app.http, &first.url()).await["jobs_payload_reads_total"];
    assert!(reads >= 10.0, "{reads} payloads read back");
    // A leased job keeps what was read: its completion answers with it, without a read.
    let (status, done) = worker.complete(&leased[0]).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["data"]["payload"], leased[0]["payload"]);
    let after = tests::scrape(&app.http, &first.url()).await["jobs_payload_reads_total"];
    assert_eq!(after, reads);
    for job in &leased {
        sent.remove(job["id"].as_str().unwrap());
    }

    // Restarted from its snapshot: the rest, payloads and all.
    first.stop().await;
    let second = tests::start_command_with(config()).await.unwrap();
    tests::wait_ready(&second).await;
    let restored = tests::scrape(&app.http, &second.url()).await["jobs_snapshot_restored_position"];
    assert!(restored > 0.0, "it started from the snapshot");
    let worker = tests::Worker::new(
        second.worker_port,
        &tests::Tls::get().worker_pem("pl"),
        "pl",
    );
    let rest = worker
        .lease(&json!({"types": ["pl"], "max_jobs": 100}))
        .await;
    assert_eq!(check(&rest, &sent), sent.len());
    assert_eq!(rest.len(), 29);
    second.stop().await;
}
