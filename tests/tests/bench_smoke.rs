//! The benchmark runs against a real stack for a moment and reports every figure. It asserts no
//! timing: figures are for people, not for pass/fail.

use tests::procs::bin_path;
use tests::{Gateway, TestApp, Tls};

#[tokio::test]
async fn the_benchmark_runs_and_reports_every_figure() {
    let app = TestApp::spawn().await;
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
    let out = tokio::process::Command::new(bin_path("bench"))
        .args([
            "--gateway",
            &gw.url(),
            "--nats-url",
            &app.nats.url(),
            "--worker-url",
            &format!("https://127.0.0.1:{}", app.command.worker_port),
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
    let figures: serde_json::Value = serde_json::from_str(last).unwrap();
    for key in [
        "raw_publish_per_s",
        "enqueue_per_s",
        "enqueue_p50_ms",
        "enqueue_p99_ms",
        "batch_enqueue_jobs_per_s",
        "cycle_jobs_per_s",
        "lease_latency_p50_ms",
        "lease_latency_p99_ms",
        "projection_lag_p99_ms",
        "list_p99_ms",
        "get_p99_ms",
    ] {
        assert!(figures[key].is_number(), "{key} missing from {figures}");
    }
    assert!(figures["raw_publish_per_s"].as_f64().unwrap() > 0.0);
    assert!(figures["ratios"]["enqueue_to_raw"].is_number());
}
