//! `jobsctl` as people use it: the built binary against the whole stack behind the real nginx
//! gateway. Enqueueing one job and an NDJSON file (a bad line is reported and not sent), the
//! job commands and the dead-letter queue in `--json` mode, a readable table, where the URL and
//! the token come from (flag over variable over config file), and errors in plain words.
//!
//! `login` against the development login behind the gateway: the session it keeps in the config
//! file (mode 0600) serves the other commands, a refused token is renewed once with the stored
//! refresh token (which rotates), and a used refresh token or a wrong password says to log in.
//!
//! Reads are eventually consistent: a read right after a command polls to a deadline.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};
use tests::procs::{bin_path, free_port};
use tests::{
    dev_auth_config, dev_users_file, eventually, start_dev_auth, Gateway, Running, TestApp,
};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

/// What one run of jobsctl did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(&self) -> bool {
        self.code == 0
    }

    /// stdout as one JSON document.
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {self:?}"))
    }

    /// stdout as NDJSON.
    fn ndjson(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

/// jobsctl with an environment of its own: only PATH, a config file path in a temporary
/// folder (so no one's real config is read), and what the test adds.
struct Ctl {
    env: Vec<(String, String)>,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Ctl {
    /// No URL and no token: only the config file (absent until a test writes it).
    fn bare() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("jobs/config.toml");
        Self {
            env: vec![("JOBS_CONFIG".into(), config.to_str().unwrap().to_string())],
            config,
            _dir: dir,
        }
    }

    /// The gateway and a token in JOBS_URL and JOBS_TOKEN.
    fn new(url: &str, token: &str) -> Self {
        let mut c = Self::bare();
        c.env.push(("JOBS_URL".into(), url.into()));
        c.env.push(("JOBS_TOKEN".into(), token.into()));
        c
    }

    async fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, &[], None).await
    }

    async fn run_with(&self, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Run {
        let mut cmd = tokio::process::Command::new(bin_path("jobsctl"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(env.iter().copied())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("jobsctl starts");
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(input.as_bytes()).await.unwrap();
            drop(pipe);
        }
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("jobsctl {args:?} did not finish in 60 s"))
            .unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs until it succeeds (the read model catching up), to a deadline.
    async fn eventually_ok(&self, args: &[&str], what: &str) -> Run {
        eventually(WAIT, what, || async {
            let r = self.run(args).await;
            r.ok().then_some(r)
        })
        .await
    }

    fn write_config(&self, text: &str) {
        std::fs::create_dir_all(self.config.parent().unwrap()).unwrap();
        std::fs::write(&self.config, text).unwrap();
    }

    /// The session the config file holds (all three keys, asserted present).
    fn session(&self) -> Session {
        let text = std::fs::read_to_string(&self.config)
            .unwrap_or_else(|e| panic!("reading {}: {e}", self.config.display()));
        // `key = "value"` lines as TOML writes them; URLs and tokens need no escapes.
        let get = |key: &str| {
            text.lines()
                .find_map(|l| {
                    let value = l.strip_prefix(key)?.trim_start().strip_prefix('=')?.trim();
                    value.strip_prefix('"')?.strip_suffix('"')
                })
                .unwrap_or_else(|| panic!("no {key} in the config file: {text}"))
                .to_string()
        };
        Session {
            url: get("url"),
            token: get("token"),
            refresh_token: get("refresh_token"),
        }
    }

    fn write_session(&self, s: &Session) {
        self.write_config(&format!(
            "url = \"{}\"\ntoken = \"{}\"\nrefresh_token = \"{}\"\n",
            s.url, s.token, s.refresh_token
        ));
    }

    /// The config file's permission bits.
    fn config_mode(&self) -> u32 {
        std::fs::metadata(&self.config)
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    }

    /// `jobsctl login` as the seed's developer, asserted to succeed; the session it saved.
    async fn login(&self, gw: &Gateway) -> Session {
        let r = self
            .run(&[
                "login",
                "--url",
                &gw.url(),
                "--email",
                DEV.0,
                "--password",
                DEV.1,
            ])
            .await;
        assert!(r.ok(), "{r:?}");
        self.session()
    }
}

/// What `jobsctl login` keeps in the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Session {
    url: String,
    token: String,
    refresh_token: String,
}

async fn stack() -> (TestApp, Gateway) {
    let app = TestApp::spawn().await;
    let gw = Gateway::start(app.command.port, app.query.port)
        .await
        .expect("gateway");
    (app, gw)
}

/// As `stack`, plus jobs-dev-auth with the committed users and the gateway routing
/// `/auth/v1/` to it.
async fn stack_with_dev_login() -> (TestApp, Running, Gateway) {
    let app = TestApp::spawn().await;
    let auth = start_dev_auth(dev_auth_config(&app.keys, &dev_users_file()))
        .await
        .expect("jobs-dev-auth starts");
    let gw = Gateway::start_with_dev_login(app.command.port, app.query.port, auth.port)
        .await
        .expect("gateway");
    (app, auth, gw)
}

/// The seed's developer in `deploy/dev-users.toml`: e-mail and password, sub, tenant.
const DEV: (&str, &str) = ("dev@eventzr.com", "Password123!");
const DEV_SUB: &str = "20000000-0000-4000-8000-000000000004";
const DEV_TENANT: &str = "10000000-0000-4000-8000-000000000004";

/// An access token's claims, verified (signature and expiry) as the services verify them.
fn claims(app: &TestApp, token: &str) -> Value {
    let pem = std::fs::read(&app.keys.rsa_public).expect("public key");
    let key = DecodingKey::from_rsa_pem(&pem).expect("rsa public key");
    jsonwebtoken::decode::<Value>(token, &key, &Validation::new(Algorithm::RS256))
        .unwrap_or_else(|e| panic!("{token:?} is not a valid RS256 token: {e}"))
        .claims
}

/// The ids of `type`'s jobs that `list --json --all` shows.
async fn listed(ctl: &Ctl, job_type: &str) -> Vec<Value> {
    let r = ctl
        .run(&[
            "list", "--type", job_type, "--all", "--limit", "100", "--json",
        ])
        .await;
    assert!(r.ok(), "{r:?}");
    r.ndjson()
}

#[tokio::test]
async fn enqueue_takes_one_job_from_flags_and_a_file_of_many_reporting_bad_lines() {
    let (app, gw) = stack().await;
    let ctl = Ctl::new(&gw.url(), &app.token);

    let one = ctl
        .run(&[
            "enqueue",
            "--type",
            "email.send",
            "--payload",
            r#"{"to": "user@example.com", "template": "welcome"}"#,
            "--priority",
            "7",
            "--max-attempts",
            "4",
            "--queue",
            "mail",
            "--idempotency-key",
            "cli-one",
            "--json",
        ])
        .await;
    assert!(one.ok(), "{one:?}");
    let job = &one.json()["data"];
    assert_eq!(job["type"], "email.send");
    assert_eq!(
        job["payload"],
        json!({"to": "user@example.com", "template": "welcome"})
    );
    assert_eq!(
        (
            &job["priority"],
            &job["max_attempts"],
            &job["queue"],
            &job["status"]
        ),
        (&json!(7), &json!(4), &json!("mail"), &json!("pending"))
    );

    // 250 lines, the 100th broken: 249 jobs in three batches, the line reported and not sent.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.ndjson");
    let mut lines: Vec<String> = (1..=250)
        .map(|n| json!({"type": "bulk.import", "payload": {"n": n}}).to_string())
        .collect();
    lines[99] = r#"{"type": "bulk.import", "payload": "#.to_string();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let bulk = ctl
        .run(&["enqueue", "--file", path.to_str().unwrap()])
        .await;
    assert_eq!(bulk.code, 1, "a line failed: {bulk:?}");
    assert!(
        bulk.stdout.contains("line 100: not JSON"),
        "names the line: {bulk:?}"
    );
    assert!(
        bulk.stdout.contains("249 of 250 jobs enqueued, 1 failed"),
        "{bulk:?}"
    );
    assert_eq!(
        bulk.stdout
            .lines()
            .filter(|l| l.starts_with("line"))
            .count(),
        1,
        "only the bad line is reported: {bulk:?}"
    );
    assert!(bulk.stderr.contains("error: 1 of 250 lines"), "{bulk:?}");

    let jobs = eventually(WAIT, "249 imported jobs listed", || async {
        let jobs = listed(&ctl, "bulk.import").await;
        (jobs.len() >= 249).then_some(jobs)
    })
    .await;
    let mut ns: Vec<i64> = jobs
        .iter()
        .map(|j| j["payload"]["n"].as_i64().unwrap())
        .collect();
    ns.sort();
    let want: Vec<i64> = (1..=250).filter(|n| *n != 100).collect();
    assert_eq!(ns, want, "every good line once, the bad one not at all");

    // From stdin with --json: one record per line, in order, the invalid one not sent.
    let input = [
        json!({"type": "stdin.job", "payload": {"k": 1}}).to_string(),
        json!({"type": "stdin.job", "payload": {"k": 2}, "priority": 11}).to_string(),
        String::new(),
        json!({"type": "stdin.job", "payload": {"k": 3}, "colour": "red"}).to_string(),
        json!({"type": "stdin.job", "payload": {"k": 4}}).to_string(),
    ]
    .join("\n");
    let r = ctl
        .run_with(
            &["enqueue", "--file", "-", "--batch-size", "1", "--json"],
            &[],
            Some(&input),
        )
        .await;
    assert_eq!(r.code, 1, "{r:?}");
    let records = r.ndjson();
    let lines: Vec<i64> = records
        .iter()
        .map(|r| r["line"].as_i64().unwrap())
        .collect();
    assert_eq!(
        lines,
        vec![1, 2, 4, 5],
        "blank lines are skipped: {records:?}"
    );
    assert_eq!(records[0]["data"]["payload"], json!({"k": 1}));
    assert_eq!(records[0]["error"], Value::Null);
    assert_eq!(records[1]["error"]["code"], "VALIDATION_FAILED");
    assert_eq!(
        records[1]["error"]["details"]["fields"][0]["field"],
        "priority"
    );
    assert_eq!(records[1]["sent"], false);
    assert_eq!(records[2]["error"]["code"], "VALIDATION_FAILED");
    assert!(
        records[2]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("colour"),
        "{records:?}"
    );
    assert_eq!(records[3]["data"]["type"], "stdin.job");
}

#[tokio::test]
async fn the_job_commands_and_the_dead_letter_queue_round_trip_in_json() {
    let (app, gw) = stack().await;
    let ctl = Ctl::new(&gw.url(), &app.token);
    let enqueue = |t: &'static str| {
        let ctl = &ctl;
        async move {
            let r = ctl
                .run(&[
                    "enqueue",
                    "--type",
                    t,
                    "--payload",
                    "{\"x\": 1}",
                    "--max-attempts",
                    "1",
                    "--json",
                ])
                .await;
            assert!(r.ok(), "{r:?}");
            r.json()["data"]["id"].as_str().unwrap().to_string()
        }
    };

    // get, update, cancel, events, retry.
    let id = enqueue("cli.round").await;
    let got = ctl
        .eventually_ok(&["get", &id, "--json"], "the job readable")
        .await
        .json();
    assert_eq!(got["data"]["id"], id.as_str());
    assert_eq!(got["data"]["status"], "pending");
    assert_eq!(got["meta"]["tenant_id"], app.tenant.to_string());

    let updated = ctl
        .run(&[
            "update",
            &id,
            "--priority",
            "9",
            "--if-version",
            "1",
            "--json",
        ])
        .await;
    assert!(updated.ok(), "{updated:?}");
    assert_eq!(updated.json()["data"]["priority"], 9);
    let stale = ctl
        .run(&["update", &id, "--priority", "8", "--if-version", "1"])
        .await;
    assert_eq!(stale.code, 1);
    assert_eq!(
        stale.stderr.trim(),
        format!("error: job {id} changed meanwhile: its version is now 2 (PRECONDITION_FAILED)")
    );

    let cancelled = ctl
        .run(&["cancel", &id, "--reason", "not needed", "--json"])
        .await;
    assert!(cancelled.ok(), "{cancelled:?}");
    assert_eq!(cancelled.json()["data"]["status"], "cancelled");
    let again = ctl.run(&["cancel", &id]).await;
    assert_eq!(again.code, 1);
    assert_eq!(
        again.stderr.trim(),
        format!("error: cannot cancel job {id}: it is cancelled (INVALID_STATE)")
    );

    let history = eventually(WAIT, "three events of the job", || async {
        let r = ctl.run(&["events", &id, "--json"]).await;
        let v = r.json();
        (v["data"].as_array().map_or(0, Vec::len) >= 3).then_some(v)
    })
    .await;
    let types: Vec<&str> = history["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, vec!["JobEnqueued", "JobUpdated", "JobCancelled"]);
    assert_eq!(history["data"][2]["data"]["reason"], "not needed");
    assert_eq!(history["page"]["has_more"], false);

    let retried = ctl.run(&["retry", &id, "--json"]).await;
    assert!(retried.ok(), "{retried:?}");
    assert_eq!(retried.json()["data"]["status"], "pending");
    assert_eq!(retried.json()["data"]["attempts"], 0);

    // The dead-letter queue: two jobs fail for good.
    let w = app.worker("cli-test");
    let dead = |t: &'static str| {
        let w = w.clone();
        async move {
            let held = w.lease(&json!({"types": [t], "max_jobs": 10})).await;
            assert!(!held.is_empty(), "leased {t}");
            for j in &held {
                let (status, v) = w.fail(j, false).await;
                assert_eq!(
                    (status, v["data"]["status"].as_str()),
                    (200, Some("dead_lettered"))
                );
            }
        }
    };
    let (a, b) = (enqueue("cli.dlq").await, enqueue("cli.dlq").await);
    dead("cli.dlq").await;
    let listed = eventually(WAIT, "both jobs in the dead-letter queue", || async {
        let r = ctl
            .run(&["dlq", "list", "--type", "cli.dlq", "--json"])
            .await;
        let v = r.json();
        (v["data"].as_array().map_or(0, Vec::len) == 2).then_some(v)
    })
    .await;
    let mut ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut want = vec![a.as_str(), b.as_str()];
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(listed["data"][0]["last_error"]["code"], "E_TEST");

    let one = ctl.run(&["dlq", "retry", &a, "--json"]).await;
    assert!(one.ok(), "{one:?}");
    assert_eq!(one.json()["data"]["status"], "pending");
    dead("cli.dlq").await;

    let dry = ctl
        .run(&[
            "dlq",
            "retry",
            "--all",
            "--type",
            "cli.dlq",
            "--dry-run",
            "--json",
        ])
        .await;
    assert!(dry.ok(), "{dry:?}");
    assert_eq!(dry.json()["data"]["would_requeue"], 2);
    let all = ctl
        .run(&["dlq", "retry", "--all", "--type", "cli.dlq", "--json"])
        .await;
    assert!(all.ok(), "{all:?}");
    assert_eq!(all.json()["data"]["requeued"], 2);
    dead("cli.dlq").await;

    // Purge asks first; "n" keeps the job.
    let kept = ctl.run_with(&["dlq", "purge", &a], &[], Some("n\n")).await;
    assert_eq!(kept.code, 1, "{kept:?}");
    assert!(kept.stderr.contains("not purged"), "{kept:?}");
    let purged = ctl.run(&["dlq", "purge", &a, "--yes", "--json"]).await;
    assert!(purged.ok(), "{purged:?}");
    assert_eq!(purged.json()["data"], json!({"id": a, "purged": true}));
    let gone = eventually(WAIT, "the purged job gone", || async {
        let r = ctl.run(&["get", &a]).await;
        (r.code == 1).then_some(r)
    })
    .await;
    assert_eq!(
        gone.stderr.trim(),
        format!("error: job {a} not found (NOT_FOUND)")
    );
}

#[tokio::test]
async fn tables_for_people_show_the_jobs() {
    let (app, gw) = stack().await;
    let ctl = Ctl::new(&gw.url(), &app.token);
    let r = ctl
        .run(&[
            "enqueue",
            "--type",
            "report.build",
            "--payload",
            "{\"month\": 12}",
        ])
        .await;
    assert!(r.ok(), "{r:?}");
    let id = r
        .stdout
        .split_whitespace()
        .nth(2)
        .unwrap()
        .trim_end_matches(':')
        .to_string();
    Uuid::parse_str(&id).unwrap_or_else(|_| panic!("enqueue names the job: {r:?}"));
    assert!(
        r.stdout
            .contains("report.build on queue default, priority 5, pending"),
        "{r:?}"
    );

    let table = eventually(WAIT, "the job in the table", || async {
        let r = ctl.run(&["list"]).await;
        (r.ok() && r.stdout.contains(&id)).then_some(r)
    })
    .await;
    let header = table.stdout.lines().next().unwrap();
    for column in ["ID", "TYPE", "QUEUE", "STATUS", "CREATED"] {
        assert!(header.contains(column), "{header}");
    }
    let row = table.stdout.lines().find(|l| l.contains(&id)).unwrap();
    assert!(
        row.contains("report.build") && row.contains("pending"),
        "{row}"
    );

    let shown = ctl.run(&["get", &id]).await;
    assert!(shown.ok(), "{shown:?}");
    assert!(shown.stdout.contains("id:") && shown.stdout.contains(&id));
    assert!(shown.stdout.contains("{\"month\":12}"), "{shown:?}");

    let quota = ctl.run(&["quota"]).await;
    assert!(
        quota.ok() && quota.stdout.contains("plan: enterprise"),
        "{quota:?}"
    );
    eventually(WAIT, "the job's type in the metrics", || async {
        let r = ctl.run(&["metrics"]).await;
        (r.ok() && r.stdout.contains("report.build")).then_some(())
    })
    .await;
    let explain = ctl.run(&["explain", &id]).await;
    assert!(
        explain.ok() && explain.stdout.contains(&format!("job {id} is pending")),
        "{explain:?}"
    );
}

#[tokio::test]
async fn the_url_and_token_come_from_a_flag_over_a_variable_over_the_config_file() {
    let (app, gw) = stack().await;
    let down = format!("http://127.0.0.1:{}", free_port());
    let ctl = Ctl::bare();

    // Nothing anywhere: the default URL, and no token.
    let none = ctl.run(&["quota", "--url", &gw.url()]).await;
    assert_eq!(none.code, 1);
    assert!(
        none.stderr.contains("no token was sent (UNAUTHENTICATED)")
            && none.stderr.contains("jobsctl login"),
        "{none:?}"
    );

    // The file alone.
    ctl.write_config(&format!(
        "url = \"{}\"\ntoken = \"{}\"\n",
        gw.url(),
        app.token
    ));
    let file = ctl.run(&["quota", "--json"]).await;
    assert!(file.ok(), "{file:?}");
    assert_eq!(file.json()["meta"]["tenant_id"], app.tenant.to_string());

    // A variable beats the file...
    let env = ctl.run_with(&["quota"], &[("JOBS_URL", &down)], None).await;
    assert_eq!(env.code, 1);
    assert_eq!(
        env.stderr.trim(),
        format!("error: cannot reach the Jobs Service at {down}: is it running? (deploy/up)")
    );
    let bad_token = ctl
        .run_with(&["quota"], &[("JOBS_TOKEN", "not-a-token")], None)
        .await;
    assert_eq!(bad_token.code, 1);
    assert!(
        bad_token.stderr.contains("the service refused the token")
            && bad_token.stderr.contains("(UNAUTHENTICATED)"),
        "{bad_token:?}"
    );

    // ...and a flag beats the variable.
    let flag = ctl
        .run_with(
            &["quota", "--json", "--url", &gw.url(), "--token", &app.token],
            &[("JOBS_URL", &down), ("JOBS_TOKEN", "not-a-token")],
            None,
        )
        .await;
    assert!(flag.ok(), "{flag:?}");
    let other = Uuid::new_v4();
    let other_token = app.keys.token(other, &["member"]);
    let flag_token = ctl
        .run_with(
            &["quota", "--json", "--token", &other_token],
            &[("JOBS_TOKEN", "not-a-token")],
            None,
        )
        .await;
    assert!(flag_token.ok(), "{flag_token:?}");
    assert_eq!(flag_token.json()["meta"]["tenant_id"], other.to_string());
}

#[tokio::test]
async fn errors_are_one_line_in_plain_words() {
    let (app, gw) = stack().await;
    let ctl = Ctl::new(&gw.url(), &app.token);

    let unknown = Uuid::now_v7();
    let r = ctl.run(&["get", &unknown.to_string()]).await;
    assert_eq!(r.code, 1);
    assert_eq!(r.stdout, "");
    assert_eq!(
        r.stderr,
        format!("error: job {unknown} not found (NOT_FOUND)\n")
    );

    // Under --json the API's error document goes to stdout as it came.
    let r = ctl.run(&["get", &unknown.to_string(), "--json"]).await;
    assert_eq!(r.code, 1);
    assert_eq!(r.json()["error"]["code"], "NOT_FOUND");
    assert_eq!(r.json()["data"], Value::Null);

    let r = ctl
        .run(&["enqueue", "--type", "bad type", "--priority", "11"])
        .await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.starts_with("error: the request is invalid: ")
            && r.stderr.contains("priority")
            && r.stderr.trim_end().ends_with("(VALIDATION_FAILED)"),
        "{r:?}"
    );

    let down = format!("http://127.0.0.1:{}", free_port());
    let r = ctl.run(&["list", "--url", &down]).await;
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        format!("error: cannot reach the Jobs Service at {down}: is it running? (deploy/up)\n")
    );

    // A usage error is exit status 1 too; 2 stays for violations found by verify and check.
    let r = ctl.run(&["get", "not-a-uuid"]).await;
    assert_eq!(r.code, 1, "{r:?}");
}

#[tokio::test]
async fn login_keeps_the_session_in_a_private_config_file_that_the_other_commands_use() {
    let (app, _auth, gw) = stack_with_dev_login().await;
    let ctl = Ctl::bare();

    let r = ctl
        .run(&[
            "login",
            "--url",
            &gw.url(),
            "--email",
            DEV.0,
            "--password",
            DEV.1,
        ])
        .await;
    assert!(r.ok(), "{r:?}");
    assert_eq!(
        r.stdout,
        format!(
            "logged in to {} as {}; tokens saved in {}; the token expires in 3600 s\n",
            gw.url(),
            DEV.0,
            ctl.config.display()
        )
    );
    assert_eq!(r.stderr, "");
    assert_eq!(ctl.config_mode(), 0o600, "the file holds secrets");
    let folder = std::fs::metadata(ctl.config.parent().unwrap()).unwrap();
    assert_eq!(
        folder.permissions().mode() & 0o777,
        0o700,
        "and so does its folder"
    );
    let session = ctl.session();
    assert_eq!(session.url, gw.url());
    let c = claims(&app, &session.token);
    assert_eq!(
        (&c["sub"], &c["tenantId"]),
        (&json!(DEV_SUB), &json!(DEV_TENANT))
    );
    assert!(
        session.refresh_token.starts_with("devrt_"),
        "the login's refresh token: {session:?}"
    );

    // No --url, no --token, no variables: the stored session.
    let enqueued = ctl
        .run(&[
            "enqueue",
            "--type",
            "email.send",
            "--payload",
            r#"{"to":"user@example.com","template":"welcome"}"#,
            "--json",
        ])
        .await;
    assert!(enqueued.ok(), "{enqueued:?}");
    let job = enqueued.json()["data"].clone();
    assert_eq!(job["tenant_id"], DEV_TENANT, "the dev user's tenant: {job}");
    assert_eq!(job["type"], "email.send");
    assert_eq!(
        job["payload"],
        json!({"to": "user@example.com", "template": "welcome"})
    );
    let id = job["id"].as_str().expect("the job's id").to_string();

    let list = eventually(WAIT, "the job in `list --json`", || async {
        let r = ctl.run(&["list", "--json"]).await;
        assert!(r.ok(), "{r:?}");
        let v = r.json();
        let jobs = v["data"].as_array().cloned().unwrap_or_default();
        jobs.iter().any(|j| j["id"] == id.as_str()).then_some(v)
    })
    .await;
    assert_eq!(list["meta"]["tenant_id"], DEV_TENANT);
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["data"][0]["payload"], job["payload"]);
    assert_eq!(ctl.session(), session, "a good token is not renewed");
}

#[tokio::test]
async fn a_refused_token_is_renewed_with_the_stored_refresh_token_and_a_used_one_means_log_in() {
    let (app, _auth, gw) = stack_with_dev_login().await;
    let ctl = Ctl::bare();
    let first = ctl.login(&gw).await;

    // The stored access token expired an hour ago; its refresh token is still good.
    let now = chrono::Utc::now().timestamp();
    let expired = app.keys.sign(&json!({
        "sub": DEV_SUB, "tenantId": DEV_TENANT, "email": DEV.0, "roles": ["member"],
        "planTier": "professional", "iat": now - 7200, "exp": now - 3600,
    }));
    ctl.write_session(&Session {
        token: expired.clone(),
        ..first.clone()
    });

    // A token given on the command line is not the stored one: no renewal, nothing saved.
    let given = ctl.run(&["list", "--json", "--token", &expired]).await;
    assert_eq!(given.code, 1, "{given:?}");
    assert_eq!(given.json()["error"]["code"], "UNAUTHENTICATED");
    assert!(
        given
            .stderr
            .starts_with("error: the service refused the token")
            && !given.stderr.contains("renewed"),
        "{given:?}"
    );
    assert_eq!(ctl.session().token, expired);

    // The stored one: renewed once, the call sent again, the new pair saved (refresh rotated).
    let r = ctl.run(&["list", "--json"]).await;
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.stderr, "");
    assert_eq!(r.json()["meta"]["tenant_id"], DEV_TENANT);
    let renewed = ctl.session();
    assert_eq!(renewed.url, first.url);
    assert_ne!(renewed.token, expired);
    assert_eq!(claims(&app, &renewed.token)["tenantId"], DEV_TENANT);
    assert_ne!(renewed.refresh_token, first.refresh_token, "rotated");
    assert!(renewed.refresh_token.starts_with("devrt_"), "{renewed:?}");
    assert_eq!(ctl.config_mode(), 0o600, "still private after the renewal");

    // The renewed session serves as it is.
    let again = ctl.run(&["list", "--json"]).await;
    assert!(again.ok(), "{again:?}");
    assert_eq!(ctl.session(), renewed);

    // The first refresh token again, beside a bad access token: used already, so refused.
    let stale = Session {
        token: "not-a-token".into(),
        refresh_token: first.refresh_token.clone(),
        ..renewed.clone()
    };
    ctl.write_session(&stale);
    let refused = ctl.run(&["list", "--json"]).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert_eq!(refused.json()["error"]["code"], "UNAUTHENTICATED");
    let words = refused.stderr.trim_end();
    assert_eq!(words.lines().count(), 1, "one line: {refused:?}");
    assert!(
        words.starts_with("error: the service refused the token")
            && words.contains("the stored session could not be renewed")
            && words.contains("(UNAUTHENTICATED)")
            && words.contains("run `jobsctl login`"),
        "says to log in again: {refused:?}"
    );
    assert_eq!(ctl.session(), stale, "nothing saved from a refused renewal");

    // Logging in again is the way out.
    let fresh = ctl.login(&gw).await;
    assert_ne!(fresh.refresh_token, renewed.refresh_token);
    let back = ctl.run(&["list", "--json"]).await;
    assert!(back.ok(), "{back:?}");
    assert_eq!(ctl.session(), fresh);
}

#[tokio::test]
async fn a_wrong_password_is_refused_in_plain_words_and_writes_no_config() {
    let (app, _auth, gw) = stack_with_dev_login().await;
    let ctl = Ctl::bare();
    let refused = "error: the e-mail or the password is wrong (UNAUTHENTICATED)\n";

    let r = ctl
        .run(&[
            "login",
            "--url",
            &gw.url(),
            "--email",
            DEV.0,
            "--password",
            "password123!",
        ])
        .await;
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!((r.stdout.as_str(), r.stderr.as_str()), ("", refused));
    assert!(!ctl.config.exists(), "no config file written");

    // An unknown user, the password on stdin: the same words.
    let r = ctl
        .run_with(
            &["login", "--url", &gw.url(), "--email", "nobody@eventzr.com"],
            &[],
            Some("Password123!\n"),
        )
        .await;
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!((r.stdout.as_str(), r.stderr.as_str()), ("", refused));
    assert!(!ctl.config.exists(), "no config file written");

    // A session already stored is kept as it was.
    let kept = format!("url = \"{}\"\ntoken = \"kept\"\n", gw.url());
    ctl.write_config(&kept);
    let r = ctl
        .run(&["login", "--email", DEV.0, "--password", "wrong"])
        .await;
    assert_eq!((r.code, r.stderr.as_str()), (1, refused), "{r:?}");
    assert_eq!(std::fs::read_to_string(&ctl.config).unwrap(), kept);

    // A gateway without the dev login says so.
    let plain = Gateway::start(app.command.port, app.query.port)
        .await
        .expect("gateway");
    std::fs::remove_file(&ctl.config).unwrap();
    let r = ctl
        .run(&[
            "login",
            "--url",
            &plain.url(),
            "--email",
            DEV.0,
            "--password",
            DEV.1,
        ])
        .await;
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(
        r.stderr,
        format!(
            "error: {} has no login endpoint (POST /auth/v1/login): is the dev login service \
             running behind the gateway? Or pass --token\n",
            plain.url()
        )
    );
    assert!(!ctl.config.exists(), "no config file written");
}
