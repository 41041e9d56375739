//! `--json` on the commands that do not talk to the HTTP API — `token`, `replay`, `verify`,
//! `state`, `check`, `worker`: machine-readable output on stdout with the documented shape, the
//! same exit status as without it, and the text for people unchanged without it.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tests::procs::bin_path;
use tests::{all_events, eventually, TestApp, Tls};
use uuid::Uuid;

/// What one run of jobsctl did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Stdout as exactly one JSON document on one line.
    fn document(&self) -> Value {
        let lines: Vec<&str> = self.stdout.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {}", self.stdout);
        serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }

    /// Stdout as NDJSON.
    fn ndjson(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

/// jobsctl with nothing from this environment but PATH; for commands that only talk to
/// nats-server (a separate process), so blocking here holds up nothing.
fn jobsctl(args: &[&str]) -> Run {
    let out = Command::new(bin_path("jobsctl"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(args)
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn keys_of(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort();
    k
}

#[test]
fn token_json_names_the_token_the_tenant_the_roles_and_the_expiry() {
    let keys = tests::Keys::get();
    let tenant = Uuid::new_v4();
    let key = keys.rsa_private.to_str().unwrap();
    let args = [
        "token",
        "--tenant",
        &tenant.to_string(),
        "--roles",
        "admin,member",
        "--ttl-seconds",
        "600",
        "--key",
        key,
    ];
    let before = chrono::Utc::now().timestamp();
    let run = jobsctl(&[&args[..], &["--json"][..]].concat());
    assert_eq!(run.code, 0, "{}", run.stderr);
    let doc = run.document();
    assert_eq!(keys_of(&doc), ["expires_at", "roles", "tenantId", "token"]);
    assert_eq!(doc["tenantId"], tenant.to_string());
    assert_eq!(doc["roles"], json!(["admin", "member"]));
    let verifier = common::auth::JwtVerifier::from_pem_file(&keys.rsa_public, None, None).unwrap();
    let claims = verifier.verify(doc["token"].as_str().unwrap()).unwrap();
    assert_eq!(claims.tenant_id, tenant);
    let expires = chrono::DateTime::parse_from_rfc3339(doc["expires_at"].as_str().unwrap())
        .unwrap()
        .timestamp();
    assert!(
        (before + 600..=chrono::Utc::now().timestamp() + 600).contains(&expires),
        "expires_at is the token's exp: {doc}"
    );

    // Without --json: the bare token, on one line.
    let run = jobsctl(&args);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 1);
    assert!(verifier.verify(run.stdout.trim()).is_ok());
}

/// A job with the history enqueued → leased → heartbeat → completed.
async fn worked_job(app: &TestApp, t: &str) -> Value {
    let (job, _) = app.enqueue(&json!({"type": t, "payload": {"n": 1}})).await;
    let w = app.worker("json-test");
    let held = w.lease(&json!({"types": [t]})).await.remove(0);
    assert_eq!(held["id"], job["id"]);
    assert_eq!(
        w.heartbeat(&held, json!({"progress": {"p": 1}})).await.0,
        200
    );
    assert_eq!(w.complete(&held).await.0, 200);
    job
}

#[tokio::test]
async fn the_history_commands_print_one_json_document_or_ndjson_with_the_same_exit_status() {
    let app = TestApp::spawn().await;
    let (url, tenant) = (app.nats.url(), app.tenant.to_string());
    let jobs = [worked_job(&app, "j0").await, worked_job(&app, "j1").await];
    let all = all_events(&url).await;

    // replay: --json is --format ndjson; with --format table it is a usage error.
    let plain = jobsctl(&["replay", "--nats-url", &url, "--tenant", &tenant]);
    let json_run = jobsctl(&["replay", "--nats-url", &url, "--tenant", &tenant, "--json"]);
    assert_eq!((plain.code, json_run.code), (0, 0), "{}", json_run.stderr);
    assert_eq!(json_run.stdout, plain.stdout, "the same NDJSON");
    let lines = json_run.ndjson();
    assert_eq!(
        lines
            .iter()
            .map(|l| l["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        all.iter().map(|r| r.seq).collect::<Vec<_>>()
    );
    let both = jobsctl(&["replay", "--nats-url", &url, "--json", "--format", "table"]);
    assert_eq!(both.code, 1, "a usage error");
    assert!(both.stdout.is_empty(), "{}", both.stdout);
    assert!(
        both.stderr.starts_with("error: ") && both.stderr.contains("--format table"),
        "{}",
        both.stderr
    );

    // verify: one document; without --json, a line per problem and the summary as before.
    let run = jobsctl(&["verify", "--nats-url", &url, "--tenant", &tenant, "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let doc = run.document();
    assert_eq!(
        keys_of(&doc),
        ["events_checked", "intact", "jobs_checked", "problems"]
    );
    assert_eq!(
        (
            &doc["intact"],
            &doc["events_checked"],
            &doc["jobs_checked"],
            &doc["problems"]
        ),
        (&json!(true), &json!(all.len()), &json!(2), &json!([]))
    );
    let run = jobsctl(&["verify", "--nats-url", &url, "--tenant", &tenant]);
    assert_eq!(run.code, 0);
    assert_eq!(
        run.document(),
        json!({"intact": true, "jobs": 2, "events": all.len(), "problems": 0})
    );

    // state: the document it prints indented, on one line.
    let at = all.last().unwrap().envelope.at.to_rfc3339();
    let state = [
        "state",
        "--nats-url",
        &url,
        "--tenant",
        &tenant,
        "--at",
        &at,
    ];
    let run = jobsctl(&[&state[..], &["--json"][..]].concat());
    assert_eq!(run.code, 0, "{}", run.stderr);
    let doc = run.document();
    let pretty = jobsctl(&state);
    assert!(pretty.stdout.lines().count() > 1, "indented for people");
    assert_eq!(
        doc,
        serde_json::from_str::<Value>(&pretty.stdout).unwrap(),
        "the same document"
    );
    assert_eq!(doc["tenant_id"], tenant);
    assert_eq!(doc["events_folded"], all.len());
    assert_eq!(doc["last_seq"], all.last().unwrap().seq);
    assert_eq!(doc["counts"]["completed"], 2);
    assert_eq!(doc["leased"], json!([]));

    // check: ok, nothing violated.
    let run = jobsctl(&["check", "--nats-url", &url, "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let doc = run.document();
    assert_eq!(
        keys_of(&doc),
        ["events_checked", "jobs_checked", "ok", "violations"]
    );
    assert_eq!(
        (
            &doc["ok"],
            &doc["events_checked"],
            &doc["jobs_checked"],
            &doc["violations"]
        ),
        (&json!(true), &json!(all.len()), &json!(2), &json!([]))
    );

    // A job's first event copied under another job's subject: both commands see it.
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    let stream = js.get_stream("JOBS_EVENTS").await.unwrap();
    let first = all
        .iter()
        .find(|r| r.envelope.job_id.to_string() == jobs[0]["id"].as_str().unwrap())
        .unwrap();
    let raw = stream.get_raw_message(first.seq).await.unwrap().payload;
    let ghost = Uuid::now_v7();
    let forged = js
        .publish(format!("jobs.events.{tenant}.{ghost}"), raw)
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;

    let run = jobsctl(&["verify", "--nats-url", &url, "--tenant", &tenant, "--json"]);
    assert_eq!(run.code, 2, "tampering is still exit 2: {}", run.stderr);
    let doc = run.document();
    assert_eq!(doc["intact"], false);
    assert_eq!(doc["events_checked"], all.len() + 1);
    assert_eq!(doc["jobs_checked"], 3);
    let problems = doc["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{doc}");
    assert_eq!(
        keys_of(&problems[0]),
        ["detail", "job_id", "problem", "seq"]
    );
    assert_eq!(
        (
            &problems[0]["seq"],
            &problems[0]["job_id"],
            &problems[0]["problem"]
        ),
        (&json!(forged), &json!(ghost), &json!("injected"))
    );
    let plain = jobsctl(&["verify", "--nats-url", &url, "--tenant", &tenant]);
    assert_eq!(plain.code, 2);
    let lines = plain.ndjson();
    assert_eq!(
        lines[0], problems[0],
        "the same problem as a line of its own"
    );
    assert_eq!(lines[1]["intact"], false);

    let run = jobsctl(&["check", "--nats-url", &url, "--json"]);
    assert_eq!(run.code, 2, "a violation is still exit 2: {}", run.stderr);
    let doc = run.document();
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["events_checked"], all.len() + 1);
    let violations = doc["violations"].as_array().unwrap();
    let wrong = violations
        .iter()
        .find(|v| v["problem"] == "wrong_subject")
        .unwrap_or_else(|| panic!("the event on another job's subject: {doc}"));
    assert_eq!(keys_of(wrong), ["detail", "job_id", "problem", "seq"]);
    assert_eq!(
        (&wrong["seq"], &wrong["job_id"]),
        (&json!(forged), &jobs[0]["id"])
    );
    let plain = jobsctl(&["check", "--nats-url", &url]);
    assert_eq!(plain.code, 2);
    let details: Vec<&str> = violations
        .iter()
        .map(|v| v["detail"].as_str().unwrap())
        .collect();
    let lines: Vec<&str> = plain.stdout.lines().collect();
    assert_eq!(
        lines[..lines.len() - 1],
        details[..],
        "a line per violation for people, as its detail"
    );
    assert_eq!(
        lines[lines.len() - 1],
        format!(
            "{} events, 2 jobs, {} problems",
            all.len() + 1,
            violations.len()
        )
    );
}

/// `jobsctl worker` against the app's worker listener with a certificate of its own.
struct RefWorker {
    args: Vec<String>,
    _dir: tempfile::TempDir,
}

impl RefWorker {
    fn new(app: &TestApp) -> Self {
        let tls = Tls::get();
        let dir = tempfile::tempdir().unwrap();
        let pem = tls.worker_pem("json-ref");
        let split = pem.find("-----BEGIN PRIVATE KEY-----").unwrap();
        let (cert, key) = (dir.path().join("w.pem"), dir.path().join("w-key.pem"));
        std::fs::write(&cert, &pem[..split]).unwrap();
        std::fs::write(&key, &pem[split..]).unwrap();
        let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
        let args = vec![
            "worker".to_string(),
            "--url".into(),
            format!("https://127.0.0.1:{}", app.command.worker_port),
            "--cert".into(),
            path(&cert),
            "--key".into(),
            path(&key),
            "--ca".into(),
            path(&tls.ca),
            "--lease-seconds".into(),
            "5".into(),
        ];
        Self { args, _dir: dir }
    }

    /// Starts it with these arguments too; the services run in this process, so it is waited
    /// for without blocking them.
    fn spawn(&self, more: &[&str]) -> tokio::process::Child {
        tokio::process::Command::new(bin_path("jobsctl"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .args(&self.args)
            .args(more)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }
}

async fn finished(child: tokio::process::Child) -> Run {
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the worker stops after --max-jobs")
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

#[tokio::test]
async fn the_worker_logs_a_json_line_per_job_with_its_outcome() {
    let app = TestApp::spawn().await;
    let job = |word: &str| {
        json!({"type": "sh", "payload": {"word": word}, "max_attempts": 3,
        "backoff": {"base_seconds": 3600, "max_seconds": 3600}})
    };
    let mut ids = HashMap::new();
    for word in ["ok", "fatal", "retry", "wait"] {
        let (j, _) = app.enqueue(&job(word)).await;
        ids.insert(j["id"].as_str().unwrap().to_string(), word);
    }
    let script = r#"read -r line; case "$line" in *fatal*) exit 100;; *retry*) exit 1;; *wait*) exec sleep 60;; esac; echo ok"#;
    let worker = RefWorker::new(&app);
    let child = worker.spawn(&[
        "--types",
        "sh",
        "--exec",
        script,
        "--concurrency",
        "4",
        "--max-jobs",
        "4",
        "--json",
    ]);
    // The waiting job is cancelled while its command runs.
    let wait = ids.iter().find(|(_, w)| **w == "wait").unwrap().0.clone();
    eventually(
        Duration::from_secs(20),
        "the worker to lease the waiting job",
        || async {
            let (_, j) = app.get(&format!("/jobs/v1/jobs/{wait}"), 0).await;
            (j["data"]["status"] == "leased").then_some(())
        },
    )
    .await;
    let res = app
        .request(
            Method::POST,
            &format!("/jobs/v1/jobs/{wait}/cancel"),
            &app.token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let run = finished(child).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines = run.ndjson();
    assert_eq!(lines.len(), 4, "a line per job: {}", run.stdout);
    let mut seen = HashMap::new();
    for l in &lines {
        assert_eq!(
            keys_of(l),
            [
                "at",
                "duration_ms",
                "exit_code",
                "job_id",
                "outcome",
                "type"
            ]
        );
        assert_eq!(l["type"], "sh");
        assert!(l["duration_ms"].is_u64(), "{l}");
        assert!(
            chrono::DateTime::parse_from_rfc3339(l["at"].as_str().unwrap()).is_ok(),
            "{l}"
        );
        let word = ids[l["job_id"].as_str().unwrap()];
        seen.insert(word, (l["outcome"].clone(), l["exit_code"].clone()));
    }
    assert_eq!(seen["ok"], (json!("completed"), json!(0)));
    assert_eq!(seen["fatal"], (json!("dead_lettered"), json!(100)));
    assert_eq!(seen["retry"], (json!("failed"), json!(1)));
    assert_eq!(
        seen["wait"],
        (json!("cancelled"), Value::Null),
        "killed: no exit code"
    );
    assert!(
        !run.stderr.contains(" -> "),
        "no lines for people under --json: {}",
        run.stderr
    );

    // Without --json: nothing on stdout, the line for people on stderr as before.
    let (j, _) = app.enqueue(&json!({"type": "people", "payload": {}})).await;
    let id = j["id"].as_str().unwrap();
    let run =
        finished(worker.spawn(&["--types", "people", "--exec", "cat", "--max-jobs", "1"])).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(
        run.stderr.contains(&format!(
            "jobsctl worker: job {id}: complete -> \"completed\""
        )),
        "{}",
        run.stderr
    );
}
