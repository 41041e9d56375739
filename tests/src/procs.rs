//! Real processes for tests: nats-server, a per-test Postgres database, the built service
//! binaries, and the nginx gateway. Each is stopped (and its files removed) on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use tempfile::TempDir;

/// A free TCP port on loopback (released just before use).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// SIGTERM to `child`, then up to `within` for it to exit: its exit status, or `None` if it was
/// still running then (it is killed with SIGKILL).
fn terminate(mut child: Child, within: Duration) -> Option<std::process::ExitStatus> {
    signal(&child, "TERM");
    let deadline = std::time::Instant::now() + within;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status();
}

pub fn nats_server_bin() -> PathBuf {
    std::env::var_os("JOBS_TEST_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join(".venv/bin/nats-server"))
}

/// A nats-server 2.12+ with JetStream, on its own port and store directory.
pub struct NatsServer {
    pub port: u16,
    pub store: TempDir,
    child: Option<Child>,
    name: String,
    conf: Option<PathBuf>,
    /// Credentials the harness connects with when the server requires them.
    pub admin: Option<(String, String)>,
    ca: Option<PathBuf>,
}

impl NatsServer {
    pub async fn start() -> anyhow::Result<Self> {
        let mut s = Self {
            port: free_port(),
            store: tempfile::Builder::new().prefix("jobs-nats-").tempdir()?,
            child: None,
            name: String::new(),
            conf: None,
            admin: None,
            ca: None,
        };
        s.spawn().await?;
        Ok(s)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The URL with a user's credentials.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("nats://{user}:{password}@127.0.0.1:{}", self.port)
    }

    /// A server that also reads `extra` config (e.g. an authorization block); the harness
    /// connects as `admin` (password `admin-test-password`), which `extra` must define.
    pub async fn start_with(extra: &str) -> anyhow::Result<Self> {
        Self::start_configured(extra, None).await
    }

    /// As `start_with`, for a server that requires TLS: the harness verifies it with `ca`.
    pub async fn start_with_tls(extra: &str, ca: &Path) -> anyhow::Result<Self> {
        Self::start_configured(extra, Some(ca)).await
    }

    async fn start_configured(extra: &str, ca: Option<&Path>) -> anyhow::Result<Self> {
        let mut s = Self {
            port: free_port(),
            store: tempfile::Builder::new().prefix("jobs-nats-").tempdir()?,
            child: None,
            name: String::new(),
            conf: None,
            admin: Some(("admin".into(), "admin-test-password".into())),
            ca: ca.map(Path::to_path_buf),
        };
        let conf = s.store.path().join("extra.conf");
        std::fs::write(&conf, extra)?;
        s.conf = Some(conf);
        s.spawn().await?;
        Ok(s)
    }

    /// Starts the server and waits until *it* answers: a free port can be taken by another
    /// test's server between choosing it and binding it, so the server is recognised by a name
    /// of its own, and a start that lost the port is retried on a new one (first start only: a
    /// restart keeps its port).
    async fn spawn(&mut self) -> anyhow::Result<()> {
        let bin = nats_server_bin();
        let first_start = self.child.is_none() && self.name.is_empty();
        for _ in 0..5 {
            if self.name.is_empty() {
                self.name = format!("test-{}", uuid::Uuid::new_v4().simple());
            }
            let mut cmd = Command::new(&bin);
            if let Some(conf) = &self.conf {
                cmd.arg("-c").arg(conf);
            }
            let child = cmd
                .args([
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-n",
                    &self.name,
                    "-js",
                    "-sd",
                ])
                .arg(self.store.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {} (run deploy/install-nats)", bin.display()))?;
            self.child = Some(child);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let url = match &self.admin {
                    Some((u, p)) => self.url_as(u, p),
                    None => self.url(),
                };
                let client = match &self.ca {
                    Some(ca) => {
                        common::nats::credentials(&url, async_nats::ConnectOptions::new())
                            .add_root_certificates(ca.clone())
                            .require_tls(true)
                            .connect(common::nats::servers(&url))
                            .await
                    }
                    None => common::nats::connect_once(&url).await,
                };
                if let Ok(c) = client {
                    if c.server_info().server_name == self.name
                        && async_nats::jetstream::new(c).query_account().await.is_ok()
                    {
                        return Ok(());
                    }
                }
                let exited = self
                    .child
                    .as_mut()
                    .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
                if exited || tokio::time::Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            self.kill();
            if !first_start {
                bail!("nats-server did not come back on port {}", self.port);
            }
            self.port = free_port();
        }
        bail!("nats-server did not become ready")
    }

    /// kill -9: the server dies without a chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and store.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn().await
    }

    /// SIGSTOP, returning once the kernel reports the process stopped (the signal is
    /// delivered asynchronously; a busy machine can take a moment).
    pub fn pause(&self) {
        if let Some(c) = &self.child {
            signal(c, "STOP");
            let status = format!("/proc/{}/status", c.id());
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                let stopped = std::fs::read_to_string(&status)
                    .map(|s| {
                        s.lines()
                            .any(|l| l.starts_with("State:") && l.contains("stopped"))
                    })
                    .unwrap_or(true);
                if stopped {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    pub fn resume(&self) {
        if let Some(c) = &self.child {
            signal(c, "CONT");
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}

/// A database of its own on the test Postgres, dropped afterwards.
pub struct TestDb {
    pub name: String,
    pub url: String,
    admin_url: String,
}

fn replace_db(url: &str, name: &str) -> String {
    match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => format!("{url}/{name}"),
    }
}

impl TestDb {
    pub async fn create() -> anyhow::Result<Self> {
        let admin_url = std::env::var("JOBS_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
        let name = format!("jobs_test_{}", uuid::Uuid::new_v4().simple());
        let pool = sqlx::PgPool::connect(&admin_url)
            .await
            .context("JOBS_TEST_DATABASE_URL")?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&pool)
            .await?;
        pool.close().await;
        Ok(Self {
            url: replace_db(&admin_url, &name),
            name,
            admin_url,
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let pool = sqlx::PgPool::connect(&admin).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&pool)
                    .await?;
                Ok::<_, anyhow::Error>(())
            })
        })
        .join();
    }
}

/// The directory of the built binaries (next to this test executable's `deps/`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe
        .parent()
        .expect("deps")
        .parent()
        .expect("profile dir")
        .to_path_buf();
    dir
}

pub fn bin_path(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// One of the built service binaries, running as a child process.
pub struct Bin {
    child: Option<Child>,
    pub log: PathBuf,
    _dir: TempDir,
}

impl Bin {
    /// Starts `name` with exactly `envs` (plus PATH), logging to a temp file.
    pub fn spawn(name: &str, envs: &[(&str, String)]) -> anyhow::Result<Self> {
        Self::spawn_with_args(name, &[], envs)
    }

    /// As `spawn`, with command-line arguments.
    pub fn spawn_with_args(
        name: &str,
        args: &[&str],
        envs: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("jobs-bin-").tempdir()?;
        let log = dir.path().join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(bin_path(name))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        Ok(Self {
            child: Some(child),
            log,
            _dir: dir,
        })
    }

    /// SIGTERM (a graceful stop), then up to `within` for the process to exit: its exit status,
    /// or `None` if it was still running then (it is killed).
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        terminate(self.child.take()?, within)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Bin {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The nginx gateway from `deploy/nginx.conf.template`, in the foreground; the development
/// login's route only when started with [`Gateway::start_with_dev_login`].
pub struct Gateway {
    pub port: u16,
    child: Option<Child>,
    _prefix: TempDir,
}

impl Gateway {
    pub async fn start(command_port: u16, query_port: u16) -> anyhow::Result<Self> {
        Self::start_with(command_port, query_port, None).await
    }

    /// As `start`, with the development login enabled: `/auth/v1/` goes to jobs-dev-auth on
    /// `dev_auth_port`, as `deploy/up` renders it.
    pub async fn start_with_dev_login(
        command_port: u16,
        query_port: u16,
        dev_auth_port: u16,
    ) -> anyhow::Result<Self> {
        Self::start_with(command_port, query_port, Some(dev_auth_port)).await
    }

    async fn start_with(
        command_port: u16,
        query_port: u16,
        dev_auth_port: Option<u16>,
    ) -> anyhow::Result<Self> {
        let prefix = tempfile::Builder::new().prefix("jobs-nginx-").tempdir()?;
        let port = free_port();
        let deploy = crate::workspace_root().join("deploy");
        let template = std::fs::read_to_string(deploy.join("nginx.conf.template"))?;
        let dev_login = match dev_auth_port {
            Some(p) => {
                let snippet =
                    std::fs::read_to_string(deploy.join("nginx-dev-login.conf.template"))?
                        .replace("@DEV_AUTH_UPSTREAM@", &format!("127.0.0.1:{p}"));
                let path = prefix.path().join("dev-login.conf");
                std::fs::write(&path, snippet)?;
                format!("include {};", path.to_str().expect("utf-8"))
            }
            None => String::new(),
        };
        let is_root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0"))
            .unwrap_or(false);
        let conf = template
            .replace("@LISTEN@", &format!("127.0.0.1:{port}"))
            .replace("@COMMAND_UPSTREAM@", &format!("127.0.0.1:{command_port}"))
            .replace("@QUERY_UPSTREAM@", &format!("127.0.0.1:{query_port}"))
            .replace("@PREFIX@", prefix.path().to_str().expect("utf-8"))
            .replace("@USER_DIRECTIVE@", if is_root { "user root;" } else { "" })
            .replace("@DEV_LOGIN@", &dev_login)
            .replace(
                "@WEB_ROOT@",
                &format!("{}/../web", env!("CARGO_MANIFEST_DIR")),
            );
        let conf_path = prefix.path().join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let nginx = std::env::var_os("JOBS_TEST_NGINX")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/usr/sbin/nginx".into());
        let child = Command::new(&nginx)
            .arg("-p")
            .arg(prefix.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(prefix.path().join("error.log"))
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", nginx.display()))?;
        let gw = Self {
            port,
            child: Some(child),
            _prefix: prefix,
        };
        let url = format!("http://127.0.0.1:{port}/gateway/healthz");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !reqwest::get(&url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "nginx did not come up: {}",
                    read(&gw._prefix.path().join("error.log"))
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(gw)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The nginx master's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

impl Drop for Gateway {
    /// SIGTERM, nginx's fast shutdown: the master stops its workers before it exits. A SIGKILL
    /// of the master alone left its two workers running, orphaned, with the listening socket,
    /// after every test that used a gateway. SIGKILL only if it has not exited within 5 s.
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            terminate(c, Duration::from_secs(5));
        }
    }
}

/// A Postgres cluster of the test's own (initdb on a temporary directory, its own port), so a
/// test can stop and start it. Runs the server as the `postgres` user when the test runs as root.
pub struct PrivatePostgres {
    pub port: u16,
    dir: TempDir,
}

fn pg_bin(name: &str) -> PathBuf {
    let versions = std::fs::read_dir("/usr/lib/postgresql").map(|d| {
        let mut v: Vec<PathBuf> = d.filter_map(|e| e.ok().map(|e| e.path())).collect();
        v.sort();
        v
    });
    versions
        .ok()
        .and_then(|v| v.last().map(|p| p.join("bin").join(name)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn as_postgres(program: PathBuf) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false);
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl PrivatePostgres {
    pub fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("jobs-pg-").tempdir()?;
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status();
        let data = dir.path().join("data");
        let out = as_postgres(pg_bin("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
            .output()?;
        if !out.status.success() {
            bail!("initdb: {}", String::from_utf8_lossy(&out.stderr));
        }
        let pg = Self {
            port: free_port(),
            dir,
        };
        pg.up()?;
        Ok(pg)
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Starts the server (waiting until it accepts connections).
    pub fn up(&self) -> anyhow::Result<()> {
        let d = self.dir.path();
        let out = as_postgres(pg_bin("pg_ctl"))
            .arg("-D")
            .arg(d.join("data"))
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                self.port,
                d.display()
            ))
            .arg("-l")
            .arg(d.join("log"))
            .args(["-w", "start"])
            .output()?;
        if !out.status.success() {
            bail!("pg_ctl start: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Stops it at once, as a crash would (`-m immediate`).
    pub fn down(&self) -> anyhow::Result<()> {
        let out = as_postgres(pg_bin("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output()?;
        if !out.status.success() {
            bail!("pg_ctl stop: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.down();
    }
}

/// A 3-node JetStream cluster on loopback from `deploy/nats-cluster.conf.template`.
pub struct NatsCluster {
    nodes: Vec<ClusterNode>,
}

struct ClusterNode {
    port: u16,
    conf: PathBuf,
    child: Option<Child>,
    _store: TempDir,
}

impl NatsCluster {
    pub async fn start() -> anyhow::Result<Self> {
        let template = std::fs::read_to_string(
            crate::workspace_root().join("deploy/nats-cluster.conf.template"),
        )?;
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let routes = ports
            .iter()
            .map(|(_, c)| format!("\"nats-route://127.0.0.1:{c}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut nodes = Vec::new();
        for (i, (port, cport)) in ports.iter().enumerate() {
            let store = tempfile::Builder::new()
                .prefix("jobs-nats-node-")
                .tempdir()?;
            let conf_text = template
                .replace("@NAME@", &format!("n{i}-{}", uuid::Uuid::new_v4().simple()))
                .replace("@PORT@", &port.to_string())
                .replace("@CLUSTER_PORT@", &cport.to_string())
                .replace("@ROUTES@", &routes)
                .replace("@STORE_DIR@", store.path().to_str().expect("utf-8"));
            let conf = store.path().join("node.conf");
            std::fs::write(&conf, conf_text)?;
            nodes.push(ClusterNode {
                port: *port,
                conf,
                child: None,
                _store: store,
            });
        }
        let mut c = Self { nodes };
        for i in 0..3 {
            c.spawn(i)?;
        }
        // Ready when JetStream answers through the cluster (a meta leader was elected).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(client) = async_nats::connect(c.servers()).await {
                if async_nats::jetstream::new(client)
                    .query_account()
                    .await
                    .is_ok()
                {
                    return Ok(c);
                }
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the NATS cluster did not become ready");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let n = &mut self.nodes[i];
        n.child = Some(
            Command::new(nats_server_bin())
                .arg("-c")
                .arg(&n.conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        Ok(())
    }

    fn servers(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect()
    }

    /// Every node, comma-separated (a `JOBS_NATS_URL`).
    pub fn url(&self) -> String {
        self.servers().join(",")
    }

    /// kill -9 of node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        self.spawn(i)
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// [`projector_rebuild`] with owned arguments, to spawn.
pub async fn projector_rebuild_owned(nats_url: String, database_url: String) -> String {
    projector_rebuild(&nats_url, &database_url, &[]).await
}

/// Runs `projector rebuild` against `nats_url` and `database_url` (with `env` besides), without
/// blocking the caller's runtime, and checks it succeeded; its standard output (the report line,
/// and the log around it).
pub async fn projector_rebuild(nats_url: &str, database_url: &str, env: &[(&str, &str)]) -> String {
    let out = tokio::process::Command::new(bin_path("projector"))
        .arg("rebuild")
        .env_clear()
        .env("JOBS_NATS_URL", nats_url)
        .env("JOBS_DATABASE_URL", database_url)
        .envs(env.iter().copied())
        .output()
        .await
        .expect("projector rebuild runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("the report is text")
}
