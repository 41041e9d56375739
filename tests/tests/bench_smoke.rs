//! The benchmark runs against a real stack for a moment and reports every figure. It asserts no
//! timing: figures are for people, not for pass/fail.

use tests::procs::bin_path;
use tests::{Gateway, TestApp, Tls};

#[tokio::test]
async fn the_benchmark_runs_and_reports_every_figure() {
    // Its own projector, doing the read model's upkeep every second, so the bench's wait for
    // the upkeep after the seed runs for real.
    let app = TestApp::spawn_with(false).await;
    let projector = tests::start_projector_doing_upkeep(&app.nats.url(), &app.db.url)
        .await
        .expect("projector");
    let gw = Gateway::start(app.command.port, app.query.port)
        .await
        .unwrap();
    let tls = Tls::get();
    let dir = tempfile::tempdir().unwrap();
    let pem = tls.worker_pem("bench");
    let split = pem.find("-----BEGIN PRIVATE KEY-----").unwrap();
    let (cert, key) = (dir.path().join("w.pem"), dir.path().join("w-key.pem"));
    std::fs::write(&cert, &pem[..split]).unwrap();
    std::fs::write(&key, &pem[split..]).unwrap();
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    // The stack as deploy/up describes one; the rebuild is the real `projector rebuild`.
    let stack = dir.path().join("stack.env");
    std::fs::write(
        &stack,
        format!(
            "GATEWAY={}\nWORKER_URL=https://127.0.0.1:{}\nNATS_URL={}\nNATS_MONITOR=http://127.0.0.1:1\n\
             PROJECTOR_METRICS={}/metrics\n\
             COMMAND_READY={}/readyz\n\
             REBUILD_COMMAND=env JOBS_NATS_URL={} JOBS_DATABASE_URL={} {} rebuild\n",
            gw.url(),
            app.command.worker_port,
            app.nats.url(),
            projector.url(),
            app.command.url(),
            app.nats.url(),
            app.db.url,
            bin_path("projector").display()
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(bin_path("bench"))
        .args([
            "--stack",
            &s(&stack),
            "--cert",
            &s(&cert),
            "--key",
            &s(&key),
            "--ca",
            &s(&tls.ca),
            "--jwt-key",
            &s(&app.keys.rsa_private),
            "--seconds",
            "1",
            "--concurrency",
            "8",
            "--workers",
            "2",
            "--seed",
            "500",
            "--rebuild",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last = stdout.lines().last().unwrap();
    let all: serde_json::Value = serde_json::from_str(last).unwrap();
    // One stack, whose sync setting the bench could not read (no monitoring port here).
    let figures = &all["sync_unknown"];
    assert!(figures.is_object(), "{all}");
    assert_eq!(all["settings"]["seeded"], 500);
    for key in [
        "raw_publish_per_s",
        "raw_batch_publish_per_s",
        "enqueue_per_s",
        "enqueue_p50_ms",
        "enqueue_p99_ms",
        "batch_enqueue_jobs_per_s",
        "cycle_jobs_per_s",
        "lease_latency_p50_ms",
        "lease_latency_p99_ms",
        "lease_latency_p99_ms_at_100_per_s",
        "lease_latency_p99_ms_at_half_cycle_rate",
        "projection_lag_p99_ms",
        "projection_lag_unanswered",
        "list_p99_ms",
        "get_p99_ms",
        "list_p99_ms_at_10k",
        "get_p99_ms_at_10k",
        "list_p99_ms_after_seed",
        "get_p99_ms_after_seed",
        "jobs_vacuums_before_queries",
        "upkeep_running_at_queries",
        "upkeep_during_100_per_s",
        "upkeep_during_half_cycle_rate",
        "rebuild_events_per_s",
        "seed_upkeep_wait_s",
    ] {
        assert!(figures[key].is_number(), "{key} missing from {figures}");
    }
    assert!(figures["raw_publish_per_s"].as_f64().unwrap() > 0.0);
    for ratio in [
        "enqueue_to_raw",
        "batch_to_raw",
        "cycle_to_raw",
        "raw_batch_to_raw",
    ] {
        assert!(figures["ratios"][ratio].is_number(), "{ratio} missing");
    }
    // CPU per item of each process on the machine, for "what bounds us".
    for phase in ["cpu_us_per_enqueue", "cpu_us_per_cycle_job"] {
        assert!(
            figures[phase]["total"].as_f64().unwrap() > 0.0,
            "{phase}: {figures}"
        );
        assert!(figures[phase]["bench"].is_number(), "{phase}: {figures}");
    }
    // command-svc's write model folded every event of the run (a refusal is a bug).
    assert_eq!(figures["command_refused_events"], 0.0, "{figures}");
    // The seeded jobs stay pending and are the tenant's: the queries ran over them.
    assert!(figures["read_model_jobs_of_tenant"].as_u64().unwrap() >= 500);
    // The table names the stack's column.
    assert!(stdout.lines().next().unwrap().contains("sync_unknown"));
}
