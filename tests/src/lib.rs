//! The test harness: real processes, nothing mocked.
//!
//! Each test gets its own `nats-server` (free port, temp store dir, killed on drop), its own
//! Postgres database (created from `JOBS_TEST_DATABASE_URL`, dropped after), fresh signing
//! keys, and the three services — in-process on port 0 ([`TestApp::spawn`]) or as the built
//! binaries ([`Bin`]) where a test must kill one. [`Gateway`] runs the real nginx config;
//! [`start_dev_auth`] adds the development login behind it.

pub mod keys;
pub mod procs;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use common::config::{AuthArgs, LogArgs, NatsArgs};
use common::telemetry::LogFormat;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub use keys::{Keys, Tls};
pub use procs::{Bin, Gateway, NatsCluster, NatsServer, PrivatePostgres, TestDb};

/// Polls `f` until it returns `Some`, failing after `timeout`. For eventual consistency only.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn auth_args(keys: &Keys) -> AuthArgs {
    AuthArgs {
        jwt_public_key: Some(keys.rsa_public.clone()),
        jwks_file: None,
        jwt_issuer: None,
        jwt_audience: None,
    }
}

/// Three replicas when `url` names a cluster's nodes, else one.
fn replicas_for(url: &str) -> usize {
    if url.contains(',') {
        3
    } else {
        1
    }
}

fn nats_args(url: &str) -> NatsArgs {
    NatsArgs {
        nats_url: url.to_string(),
        nats_connect_wait_seconds: 10,
        stream_replicas: replicas_for(url),
        nats_ca: None,
    }
}

fn log_args() -> LogArgs {
    LogArgs {
        log_format: LogFormat::Pretty,
        otlp_endpoint: None,
        service_name: None,
    }
}

pub fn command_config(nats_url: &str, keys: &Keys) -> command_svc::Config {
    let tls = Tls::get();
    command_svc::Config {
        command_addr: local(0),
        worker_addr: local(0),
        worker_tls_cert: Some(tls.server_cert.clone()),
        worker_tls_key: Some(tls.server_key.clone()),
        worker_client_ca: Some(tls.ca.clone()),
        max_payload_bytes: 256 * 1024,
        max_batch_body_bytes: 16 * 1024 * 1024,
        // On in every in-process command-svc of the suite: its default is off (measured,
        // docs/performance.md), and this way every test also runs the batched path.
        group_commit: true,
        atomic_leases: false,
        snapshot_dir: None,
        snapshot_seconds: 300,
        // No payload kept in memory for any waiting job: every job the suite leases or
        // changes has its payload read back from the stream (the default keeps 16 MiB).
        payload_memory_bytes: 0,
        nats: nats_args(nats_url),
        auth: auth_args(keys),
        plans: common::config::PlanArgs { plans_file: None },
        log: log_args(),
    }
}

pub fn query_config(nats_url: &str, db_url: &str, keys: &Keys) -> query_svc::Config {
    query_svc::Config {
        query_addr: local(0),
        database_url: db_url.to_string(),
        cursor_secret: None,
        db_pool: 8,
        nats: nats_args(nats_url),
        auth: auth_args(keys),
        plans: common::config::PlanArgs { plans_file: None },
        log: log_args(),
    }
}

pub fn projector_config(nats_url: &str, db_url: &str) -> projector::Config {
    projector::Config {
        projector_addr: local(0),
        database_url: db_url.to_string(),
        batch_size: 500,
        // The default, as deploy/up runs it.
        linger_ms: 10,
        rebuild_batch: 5000,
        rebuild_cache_jobs: 50_000,
        // Tests that want it ask for it (see faults.rs); rounds would only slow the others.
        maintenance: projector::maintenance::Mode::Never,
        maintenance_seconds: 60,
        command: None,
        nats: nats_args(nats_url),
        log: log_args(),
    }
}

/// A service running in this process; stopped (gracefully) on drop or by `stop`.
pub struct Running {
    pub port: u16,
    /// The mTLS worker listener's port (command-svc only; else 0).
    pub worker_port: u16,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Running {
    /// A service running elsewhere (a [`Bin`]): its ports, for the helpers that take a
    /// `Running`; `stop` and drop do nothing to it.
    pub fn external(port: u16, worker_port: u16) -> Self {
        Self {
            port,
            worker_port,
            stop: None,
            task: None,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

macro_rules! run_app {
    ($app:expr) => {{
        let app = $app;
        let port = app.port();
        let worker_port = worker_port_of(&app);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move {
            let _ = rx.await;
        }));
        Running {
            port,
            worker_port,
            stop: Some(tx),
            task: Some(task),
        }
    }};
}

trait WorkerPort {
    fn worker_port_of(&self) -> u16 {
        0
    }
}
impl WorkerPort for query_svc::Application {}
impl WorkerPort for projector::Application {}
impl WorkerPort for dev_auth::Application {}
impl WorkerPort for command_svc::Application {
    fn worker_port_of(&self) -> u16 {
        self.worker_port()
    }
}
fn worker_port_of(app: &impl WorkerPort) -> u16 {
    app.worker_port_of()
}

pub async fn start_command(nats_url: &str, keys: &Keys) -> anyhow::Result<Running> {
    start_command_with(command_config(nats_url, keys)).await
}

/// command-svc in-process with a configuration of the test's own (see [`command_config`]).
pub async fn start_command_with(config: command_svc::Config) -> anyhow::Result<Running> {
    Ok(run_app!(command_svc::Application::build(config).await?))
}

pub async fn start_query(nats_url: &str, db_url: &str, keys: &Keys) -> anyhow::Result<Running> {
    Ok(run_app!(
        query_svc::Application::build(query_config(nats_url, db_url, keys)).await?
    ))
}

pub async fn start_projector(nats_url: &str, db_url: &str) -> anyhow::Result<Running> {
    start_projector_with(projector_config(nats_url, db_url)).await
}

/// The projector in-process with `config` (start from [`projector_config`]).
pub async fn start_projector_with(config: projector::Config) -> anyhow::Result<Running> {
    Ok(run_app!(projector::Application::build(config).await?))
}

/// The projector in-process doing the read model's upkeep itself every second, whatever the
/// server's autovacuum (the suite's others do none): for a [`TestApp::spawn_with`]`(false)`.
pub async fn start_projector_doing_upkeep(nats_url: &str, db_url: &str) -> anyhow::Result<Running> {
    let mut config = projector_config(nats_url, db_url);
    config.maintenance = projector::maintenance::Mode::Always;
    config.maintenance_seconds = 1;
    start_projector_with(config).await
}

/// The committed development users (`deploy/dev-users.toml`: the seed page's two).
pub fn dev_users_file() -> std::path::PathBuf {
    workspace_root().join("deploy/dev-users.toml")
}

/// jobs-dev-auth signing with the test's RSA key (what the services verify), for `users`.
pub fn dev_auth_config(keys: &Keys, users: &std::path::Path) -> dev_auth::Config {
    dev_auth::Config {
        listen: local(0),
        users: users.to_path_buf(),
        key: keys.rsa_private.clone(),
        access_ttl_seconds: 3600,
        refresh_ttl_seconds: 86_400,
        issuer: None,
        audience: None,
        log: log_args(),
    }
}

/// The development login in-process (route `/auth/v1/` to it with
/// [`Gateway::start_with_dev_login`]).
pub async fn start_dev_auth(config: dev_auth::Config) -> anyhow::Result<Running> {
    Ok(run_app!(dev_auth::Application::build(config).await?))
}

/// The whole stack for one test.
pub struct TestApp {
    pub nats: NatsServer,
    pub db: TestDb,
    pub keys: Keys,
    pub command: Running,
    pub query: Running,
    pub projector: Option<Running>,
    pub http: reqwest::Client,
    /// A tenant with a member token, for tests that need just one.
    pub tenant: Uuid,
    pub token: String,
}

impl TestApp {
    /// NATS, a database, keys, and the three services in-process.
    pub async fn spawn() -> Self {
        Self::spawn_with(true).await
    }

    /// As `spawn`, but without the projector when `projector` is false (a test runs its own).
    pub async fn spawn_with(projector: bool) -> Self {
        let nats = NatsServer::start().await.expect("nats-server starts");
        let db = TestDb::create().await.expect("test database");
        let keys = Keys::get();
        let projector = if projector {
            Some(
                start_projector(&nats.url(), &db.url)
                    .await
                    .expect("projector starts"),
            )
        } else {
            None
        };
        let command = start_command(&nats.url(), &keys)
            .await
            .expect("command-svc starts");
        if projector.is_none() {
            // query-svc checks the schema is there; create it as the projector would.
            let pool = sqlx::PgPool::connect(&db.url).await.expect("db");
            common::db::MIGRATOR.run(&pool).await.expect("migrate");
        }
        let query = start_query(&nats.url(), &db.url, &keys)
            .await
            .expect("query-svc starts");
        let tenant = Uuid::new_v4();
        let token = keys.token(tenant, &["member"]);
        Self {
            nats,
            db,
            keys: keys.clone(),
            command,
            query,
            projector,
            http: reqwest::Client::new(),
            tenant,
            token,
        }
    }

    pub fn request(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        let base = if method == Method::GET || method == Method::HEAD {
            self.query.url()
        } else {
            self.command.url()
        };
        self.http
            .request(method, format!("{base}{path}"))
            .bearer_auth(token)
    }

    /// Enqueues `body` as `token`'s tenant; returns the response.
    pub async fn enqueue_as(&self, token: &str, body: &Value) -> Response {
        self.request(Method::POST, "/jobs/v1/enqueue", token)
            .json(body)
            .send()
            .await
            .expect("enqueue sent")
    }

    /// Enqueues and asserts 201; returns (job, x-event-seq).
    pub async fn enqueue(&self, body: &Value) -> (Value, u64) {
        let res = self.enqueue_as(&self.token, body).await;
        assert_eq!(res.status(), 201, "enqueue failed: {:?}", res.text().await);
        let seq = event_seq(&res);
        let body: Value = res.json().await.expect("json");
        (body["data"].clone(), seq)
    }

    /// Enqueues `jobs` in one `POST /enqueue/batch` and asserts 201; returns (the created
    /// jobs, x-event-seq of the last).
    pub async fn enqueue_batch(&self, jobs: &[Value]) -> (Vec<Value>, u64) {
        let res = self
            .request(Method::POST, "/jobs/v1/enqueue/batch", &self.token)
            .json(&serde_json::json!({ "jobs": jobs }))
            .send()
            .await
            .expect("batch enqueue sent");
        assert_eq!(
            res.status(),
            201,
            "batch enqueue failed: {:?}",
            res.text().await
        );
        let seq = event_seq(&res);
        let body: Value = res.json().await.expect("json");
        let created = body["data"]["jobs"].as_array().cloned().unwrap_or_default();
        (created, seq)
    }

    /// GET `path` as the default tenant, waiting for the read model to reach `min_seq`.
    pub async fn get(&self, path: &str, min_seq: u64) -> (u16, Value) {
        let res = self
            .request(Method::GET, path, &self.token)
            .header("x-min-event-seq", min_seq.to_string())
            .send()
            .await
            .expect("get sent");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// A worker client with a certificate for `name` from the trusted CA.
    pub fn worker(&self, name: &str) -> Worker {
        Worker::new(self.command.worker_port, &Tls::get().worker_pem(name), name)
    }

    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.db.url)
            .await
            .expect("connect to the test db")
    }
}

/// The environment of a command-svc binary on `app`'s NATS, with `extra` settings.
pub fn command_env(
    app: &TestApp,
    port: u16,
    worker_port: u16,
    extra: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    let tls = Tls::get();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let mut env = vec![
        ("JOBS_NATS_URL", app.nats.url()),
        ("JOBS_JWT_PUBLIC_KEY", path(&app.keys.rsa_public)),
        ("JOBS_COMMAND_ADDR", format!("127.0.0.1:{port}")),
        ("JOBS_WORKER_ADDR", format!("127.0.0.1:{worker_port}")),
        ("JOBS_WORKER_TLS_CERT", path(&tls.server_cert)),
        ("JOBS_WORKER_TLS_KEY", path(&tls.server_key)),
        ("JOBS_WORKER_CLIENT_CA", path(&tls.ca)),
    ];
    env.extend_from_slice(extra);
    env
}

/// The `x-event-seq` header of a command response.
pub fn event_seq(res: &Response) -> u64 {
    res.headers()
        .get("x-event-seq")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("x-event-seq header")
}

/// A sample job body of the seed's kind.
pub fn email_job(n: usize) -> Value {
    serde_json::json!({"type": "email.send", "payload": {"to": format!("user{n}@example.com"), "template": "welcome"}, "priority": 5})
}

/// Reads the project's workspace root (for deploy/ templates).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// Waits until a service answers its `/readyz` (command-svc: caught up with the stream).
pub async fn wait_ready(instance: &Running) {
    let url = format!("{}/readyz", instance.url());
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(20), "the instance to be ready", || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let r = http.get(url).send().await.ok()?;
            r.status().is_success().then_some(())
        }
    })
    .await;
}

/// A directory for a test's artifacts (screenshots, reports), kept after the run:
/// `$CARGO_TARGET_DIR/test-artifacts/<name>` (or `target/` in the workspace).
pub fn artifacts_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("test-artifacts")
        .join(name);
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

/// Reads a JSON response body, with context on failure.
pub async fn json(res: Response) -> anyhow::Result<Value> {
    let text = res.text().await?;
    serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))
}

/// A worker speaking the worker protocol over mTLS.
#[derive(Clone)]
pub struct Worker {
    pub http: reqwest::Client,
    pub base: String,
    pub name: String,
}

impl Worker {
    /// A client presenting `identity_pem` (certificate and key) to the listener on `port`.
    pub fn new(port: u16, identity_pem: &str, name: &str) -> Self {
        let tls = Tls::get();
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(
                reqwest::Certificate::from_pem(tls.ca_pem.as_bytes()).expect("ca"),
            )
            .identity(reqwest::Identity::from_pem(identity_pem.as_bytes()).expect("identity"))
            .build()
            .expect("client");
        Self {
            http,
            base: format!("https://127.0.0.1:{port}"),
            name: name.to_string(),
        }
    }

    pub fn id(&self) -> String {
        format!("spiffe://jobs.test/worker/{}", self.name)
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Result<(u16, Value)> {
        let res = self
            .http
            .post(format!("{}/jobs/v1/worker{path}", self.base))
            .json(body)
            .send()
            .await?;
        let status = res.status().as_u16();
        Ok((status, res.json().await.unwrap_or(Value::Null)))
    }

    /// Leases; returns the jobs (asserting 200).
    pub async fn lease(&self, body: &Value) -> Vec<Value> {
        let (status, v) = self.post("/lease", body).await.expect("lease sent");
        assert_eq!(status, 200, "lease: {v}");
        v["data"]["jobs"].as_array().cloned().unwrap_or_default()
    }

    pub async fn complete(&self, job: &Value) -> (u16, Value) {
        let path = format!("/jobs/{}/complete", job["id"].as_str().expect("id"));
        self.post(
            &path,
            &serde_json::json!({"lease_id": job["lease"]["lease_id"], "result": {"ok": true}}),
        )
        .await
        .expect("sent")
    }

    pub async fn fail(&self, job: &Value, retryable: bool) -> (u16, Value) {
        let path = format!("/jobs/{}/fail", job["id"].as_str().expect("id"));
        let body = serde_json::json!({"lease_id": job["lease"]["lease_id"], "error": {"message": "boom", "code": "E_TEST"}, "retryable": retryable, "retry_after_seconds": 0});
        self.post(&path, &body).await.expect("sent")
    }

    pub async fn heartbeat(&self, job: &Value, body: Value) -> (u16, Value) {
        let path = format!("/jobs/{}/heartbeat", job["id"].as_str().expect("id"));
        let mut b = body;
        b["lease_id"] = job["lease"]["lease_id"].clone();
        self.post(&path, &b).await.expect("sent")
    }
}

/// Every job event in the stream at `nats_url`, in order.
pub async fn all_events(nats_url: &str) -> Vec<events::Recorded> {
    use futures::StreamExt;
    let js = async_nats::jetstream::new(common::nats::connect_once(nats_url).await.expect("nats"));
    // A cluster that just lost a node may need a moment to answer: retry to a deadline.
    let mut consumer = eventually(
        Duration::from_secs(30),
        "a reader on JOBS_EVENTS",
        || async {
            let stream = js.get_stream("JOBS_EVENTS").await.ok()?;
            stream
                .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                    filter_subject: "jobs.events.>".into(),
                    ..Default::default()
                })
                .await
                .ok()
        },
    )
    .await;
    let mut out = Vec::new();
    if consumer.info().await.expect("info").num_pending == 0 {
        return out;
    }
    let mut messages = consumer.messages().await.expect("messages");
    while let Some(m) = messages.next().await {
        let m = m.expect("message");
        let info = m.info().expect("info");
        out.push(events::Recorded {
            seq: info.stream_sequence,
            envelope: events::Envelope::from_json(&m.payload).expect("an event"),
        });
        if info.pending == 0 {
            break;
        }
    }
    out
}

/// `{base}/metrics`, parsed (see [`parse_prometheus`]).
pub async fn scrape(http: &reqwest::Client, base: &str) -> std::collections::HashMap<String, f64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics sent")
        .text()
        .await
        .expect("metrics read");
    parse_prometheus(&text)
}

/// `{base}/metrics`, scraped until `ready` holds for it (within `timeout`, or the test fails
/// naming `what`).
pub async fn scrape_until(
    http: &reqwest::Client,
    base: &str,
    timeout: Duration,
    what: &str,
    ready: impl Fn(&std::collections::HashMap<String, f64>) -> bool,
) -> std::collections::HashMap<String, f64> {
    eventually(timeout, what, || async {
        let m = scrape(http, base).await;
        ready(&m).then_some(m)
    })
    .await
}

/// Prometheus text parsed into (series with labels, value); panics on a malformed line.
pub fn parse_prometheus(text: &str) -> std::collections::HashMap<String, f64> {
    let mut out = std::collections::HashMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start();
            assert!(
                rest.starts_with("HELP ") || rest.starts_with("TYPE "),
                "bad comment line: {line}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line: {line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "bad labels in {line}");
        }
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        out.insert(series.to_string(), v);
    }
    out
}

/// The invariant checker's verdict on this test's stream and read model (after the projector
/// caught up), with the jobs the test was told were enqueued; panics listing any violation.
pub async fn assert_invariants(nats_url: &str, db_url: &str, acknowledged: &[Uuid]) {
    let pool = sqlx::PgPool::connect(db_url).await.expect("db");
    let last = all_events(nats_url).await.last().map_or(0, |r| r.seq);
    // Platform events do not count for a job-subject read; wait for the checkpoint to pass it.
    eventually(
        Duration::from_secs(30),
        "the projector to catch up",
        || async {
            let seq: i64 = sqlx::query_scalar("SELECT last_seq FROM projector_checkpoint")
                .fetch_one(&pool)
                .await
                .ok()?;
            (seq as u64 >= last).then_some(())
        },
    )
    .await;
    let report = jobsctl::check::check(nats_url, Some(db_url), acknowledged)
        .await
        .expect("the checker runs");
    assert!(
        report.ok(),
        "invariants violated:\n{}",
        report.problems.join("\n")
    );
    assert!(report.jobs >= acknowledged.len());
}

/// What one producer saw: the jobs acknowledged to it, and how many answers of each status.
type ProducerTally = (Vec<Uuid>, std::collections::BTreeMap<u16, u32>);

/// A mixed load for fault tests: `producers` connections enqueueing as fast as they are
/// answered (recording every status and each acknowledged job), and a worker leasing and
/// completing. Every request must be answered (no hang).
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    producers: Vec<JoinHandle<ProducerTally>>,
    worker: JoinHandle<()>,
}

impl Load {
    pub fn start(command_url: &str, token: &str, worker: Worker, producers: usize) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .expect("client");
        let producers = (0..producers)
            .map(|p| {
                let (http, url, token, stop) = (
                    http.clone(),
                    command_url.to_string(),
                    token.to_string(),
                    stop.clone(),
                );
                tokio::spawn(async move {
                    let (mut acked, mut statuses) =
                        (Vec::new(), std::collections::BTreeMap::<u16, u32>::new());
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let res = http
                            .post(format!("{url}/jobs/v1/enqueue"))
                            .bearer_auth(&token)
                            .json(&email_job(p * 100_000 + i))
                            .send()
                            .await;
                        let res = res.expect("every request is answered (no hang)");
                        *statuses.entry(res.status().as_u16()).or_default() += 1;
                        if res.status() == 201 {
                            let v: Value = res.json().await.expect("json");
                            acked.push(
                                v["data"]["id"]
                                    .as_str()
                                    .expect("id")
                                    .parse::<Uuid>()
                                    .expect("uuid"),
                            );
                        } else {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                    (acked, statuses)
                })
            })
            .collect();
        let worker = {
            let stop = stop.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let body = serde_json::json!({"types": ["email.send"], "max_jobs": 10, "wait_seconds": 1});
                    let Ok((200, v)) = worker.post("/lease", &body).await else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    for j in v["data"]["jobs"].as_array().cloned().unwrap_or_default() {
                        let _ = worker.complete(&j).await;
                    }
                }
            })
        };
        Self {
            stop,
            producers,
            worker,
        }
    }

    /// Stops the load; asserts every answer was a 201 or a 503 (never a 500); returns the
    /// acknowledged jobs.
    pub async fn finish(self) -> Vec<Uuid> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut acknowledged = Vec::new();
        for p in self.producers {
            let (acked, statuses) = p.await.expect("producer");
            assert!(
                statuses.keys().all(|s| *s == 201 || *s == 503),
                "only 201 or 503: {statuses:?}"
            );
            acknowledged.extend(acked);
        }
        self.worker.await.expect("worker");
        acknowledged
    }
}
