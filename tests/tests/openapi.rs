//! The OpenAPI document: served through the gateway, every route it names exists where it says,
//! and schemathesis (PyPI, pinned in deploy/versions.env) finds no server error and no answer
//! that breaks the document, on the public API through the gateway and on the worker listener.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tests::{
    dev_auth_config, dev_users_file, json as body_json, start_dev_auth, Gateway, TestApp, Tls,
};

async fn document(app: &TestApp, gw: &Gateway) -> Value {
    let res = app
        .http
        .get(format!("{}/jobs/v1/openapi.json", gw.url()))
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(
        res.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    body_json(res).await.expect("the document is JSON")
}

/// A concrete path for a templated one: every parameter a fresh UUID (no such job).
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            if seg.starts_with('{') {
                uuid::Uuid::new_v4().to_string()
            } else {
                seg.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// A body short enough for an assertion message.
fn short(v: &Value) -> String {
    v.to_string().chars().take(300).collect()
}

fn is_no_such_route(status: u16, body: &Value) -> bool {
    status == 404 && body["error"]["message"] == "no such route"
}

#[tokio::test]
async fn every_documented_route_exists_where_the_document_says() {
    let app = TestApp::spawn().await;
    let auth = start_dev_auth(dev_auth_config(&app.keys, &dev_users_file()))
        .await
        .expect("jobs-dev-auth starts");
    let gw = Gateway::start_with_dev_login(app.command.port, app.query.port, auth.port)
        .await
        .expect("gateway");
    let doc = document(&app, &gw).await;
    assert_eq!(doc["openapi"], "3.1.0");
    for code in ["UNAUTHENTICATED", "VALIDATION_FAILED", "LEASE_LOST"] {
        assert!(
            doc["components"]["schemas"]["ErrorCode"]["enum"]
                .as_array()
                .is_some_and(|codes| codes.iter().any(|c| c == code)),
            "{code} is not documented"
        );
    }
    let paths = doc["paths"].as_object().expect("paths");
    let worker = app.worker("openapi-probe");
    let mut checked = 0;
    for (path, item) in paths {
        for method in ["get", "post", "put", "patch", "delete"] {
            let Some(op) = item.get(method) else { continue };
            let url_path = concrete(path);
            checked += 1;
            if path.starts_with("/jobs/v1/worker/") {
                // Only on the mTLS listener: an empty body is a validation error there...
                let (status, body) = worker
                    .post(
                        url_path.trim_start_matches("/jobs/v1/worker"),
                        &serde_json::json!({}),
                    )
                    .await
                    .expect("worker listener answers");
                assert!(!is_no_such_route(status, &body), "{method} {path}: {body}");
                assert_eq!(status, 400, "{method} {path}: {body}");
                // ...and through the gateway there is no such route.
                let res = app
                    .http
                    .post(format!("{}{url_path}", gw.url()))
                    .json(&serde_json::json!({}))
                    .send()
                    .await
                    .expect("sent");
                let status = res.status().as_u16();
                let body = body_json(res).await.expect("json");
                assert!(is_no_such_route(status, &body), "{method} {path}: {body}");
                continue;
            }
            let res = app
                .http
                .request(
                    method.to_uppercase().parse().expect("method"),
                    format!("{}{url_path}", gw.url()),
                )
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .expect("sent");
            let status = res.status().as_u16();
            let body = body_json(res).await.unwrap_or(Value::Null);
            let body = short(&body);
            if op.get("security").is_some() {
                assert_eq!(status, 401, "{method} {path} without a token: {body}");
            } else {
                // Open routes: the document itself, and the development login (400: no body).
                assert!(
                    (status == 200 && method == "get") || status == 400,
                    "{method} {path}: {body}"
                );
            }
        }
    }
    assert!(checked >= 30, "only {checked} operations documented");
}

fn schemathesis() -> PathBuf {
    let out = Command::new(tests::workspace_root().join("deploy/install-schemathesis"))
        .output()
        .expect("deploy/install-schemathesis runs");
    assert!(
        out.status.success(),
        "installing schemathesis failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    PathBuf::from(stdout.lines().last().expect("a path").trim())
}

/// Runs schemathesis with `args`, bounded in examples per operation, asserts it passed, and
/// returns how many operations it tested.
fn run_schemathesis(bin: &PathBuf, report: &std::path::Path, args: &[String]) -> usize {
    let out = Command::new(bin)
        .arg("run")
        .args(args)
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance",
            "--max-examples",
            "15",
            "--phases",
            "examples,coverage,fuzzing",
            // One worker: hypothesis on this Python (3.11) trips over its own threads.
            "--workers",
            "1",
            "--seed",
            "1",
            "--request-timeout",
            "20",
            "--no-color",
            "--report",
            "junit",
            "--report-dir",
        ])
        .arg(report)
        // Its example database goes with the report, not into the repository.
        .current_dir(report)
        .output()
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Tested: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count of tested operations in:\n{stdout}"))
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_answer_that_breaks_the_document() {
    let bin = tokio::task::spawn_blocking(schemathesis)
        .await
        .expect("join");
    let app = TestApp::spawn().await;
    let auth = start_dev_auth(dev_auth_config(&app.keys, &dev_users_file()))
        .await
        .expect("jobs-dev-auth starts");
    let gw = Gateway::start_with_dev_login(app.command.port, app.query.port, auth.port)
        .await
        .expect("gateway");
    // Something to read: a few jobs, one of them finished.
    for n in 0..3 {
        app.enqueue(&tests::email_job(n)).await;
    }
    let admin = app.keys.token(app.tenant, &["admin", "member"]);
    let spec = format!("{}/jobs/v1/openapi.json", gw.url());
    let public = vec![
        spec.clone(),
        "--url".into(),
        gw.url(),
        "--header".into(),
        format!("Authorization: Bearer {admin}"),
        "--exclude-path-regex".into(),
        "^/jobs/v1/worker/".into(),
    ];
    let report = tests::artifacts_dir("schemathesis-public");
    let tested = tokio::task::spawn_blocking(move || run_schemathesis(&bin, &report, &public))
        .await
        .expect("join");
    assert!(tested >= 25, "only {tested} public operations tested");

    // The worker protocol on its own listener, with a client certificate.
    let bin = tokio::task::spawn_blocking(schemathesis)
        .await
        .expect("join");
    let tls = Tls::get();
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("worker.pem");
    std::fs::write(&cert, tls.worker_pem("schemathesis-worker")).expect("write cert");
    let worker = vec![
        spec,
        "--url".into(),
        format!("https://127.0.0.1:{}", app.command.worker_port),
        "--request-cert".into(),
        cert.to_str().expect("utf-8").into(),
        "--tls-verify".into(),
        tls.ca.to_str().expect("utf-8").into(),
        "--include-path-regex".into(),
        "^/jobs/v1/worker/".into(),
    ];
    let report = tests::artifacts_dir("schemathesis-worker");
    let tested = tokio::time::timeout(
        Duration::from_secs(600),
        tokio::task::spawn_blocking(move || run_schemathesis(&bin, &report, &worker)),
    )
    .await
    .expect("schemathesis finishes")
    .expect("join");
    assert_eq!(tested, 4, "the worker protocol's four operations");
}
