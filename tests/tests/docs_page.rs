//! The API reference page (`/jobs/v1/docs`): Scalar's bundle, installed from the npm registry,
//! renders the served document in headless Chromium with no network beyond the gateway, and a
//! request sent from it reaches the gateway. The screenshot is kept in
//! `$CARGO_TARGET_DIR/test-artifacts/docs-page/`.

use std::process::Command;

use serde_json::{json, Value};
use tests::{dev_auth_config, dev_users_file, start_dev_auth, Gateway, TestApp};

#[tokio::test]
async fn docs_page_renders_offline_and_try_it_reaches_the_gateway() {
    let app = TestApp::spawn().await;
    let auth = start_dev_auth(dev_auth_config(&app.keys, &dev_users_file()))
        .await
        .expect("jobs-dev-auth starts");
    let gw = Gateway::start_with_dev_login(app.command.port, app.query.port, auth.port)
        .await
        .expect("gateway");
    let shots = tests::artifacts_dir("docs-page");
    let script = tests::workspace_root().join("tests/browser/docs.mjs");
    let base = gw.url();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .arg(base)
            .arg(&shots)
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
    assert_eq!(result["external"], json!([]), "requests beyond the gateway");
    let gateway = result["gateway"].as_array().expect("gateway requests");
    for (method, path, status) in [
        ("GET", "/jobs/v1/docs", 200),
        ("GET", "/jobs/v1/docs/scalar.js", 200),
        ("GET", "/jobs/v1/openapi.json", 200),
        ("POST", "/auth/v1/login", 200),
        ("POST", "/jobs/v1/enqueue", 201),
    ] {
        assert!(
            gateway.contains(&json!({"method": method, "path": path, "status": status})),
            "{method} {path} {status} not among {gateway:?}"
        );
    }
    // The job the page enqueued is the seed's, in the dev user's tenant.
    let enqueue = &result["enqueue"];
    assert_eq!(enqueue["type"], "email.send");
    let res = app
        .http
        .get(format!(
            "{}/jobs/v1/jobs/{}",
            gw.url(),
            enqueue["id"].as_str().expect("id")
        ))
        .bearer_auth(enqueue["token"].as_str().expect("token"))
        .header("x-min-event-seq", enqueue["seq"].as_u64().expect("seq"))
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status().as_u16(), 200);
    let job: Value = res.json().await.expect("json");
    assert_eq!(
        job["data"]["tenant_id"],
        "10000000-0000-4000-8000-000000000004"
    );
    assert_eq!(job["data"]["payload"]["template"], "welcome");
}
