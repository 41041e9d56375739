//! `jobsctl worker`: a reference worker to copy. It leases jobs of the given types over mTLS,
//! runs a shell command per job with the payload (JSON) on stdin, heartbeats while the command
//! runs, and completes or fails the job by the command's exit status:
//!
//! - exit 0: complete; stdout is the result (as JSON when it parses, else `{"stdout": ...}`);
//! - exit 100: fail, not retryable (the job dead-letters at once);
//! - any other exit: fail, retryable (backoff, then dead-letter after `max_attempts`);
//! - a cancel requested while it runs: the command is killed and the job fails, so it ends
//!   cancelled.
//!
//! Environment of the command: `JOBS_JOB_ID`, `JOBS_JOB_TYPE`, `JOBS_ATTEMPT`.
//!
//! What became of each job is one line: on stderr for people, or under `--json` one JSON
//! document per line on stdout (`at`, `job_id`, `type`, `outcome`, `exit_code`, `duration_ms`).
//! Diagnostics stay on stderr either way.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

/// Exit status meaning "do not retry".
pub const EXIT_NOT_RETRYABLE: i32 = 100;
const MAX_OUTPUT: usize = 64 * 1024;

#[derive(clap::Args)]
pub struct WorkerArgs {
    /// The worker listener of command-svc.
    #[arg(
        long,
        env = "JOBS_WORKER_URL",
        default_value = "https://127.0.0.1:8443"
    )]
    url: String,
    /// This worker's client certificate (PEM); its identity is the worker id.
    #[arg(
        long,
        env = "JOBS_WORKER_CERT",
        default_value = "deploy/.dev/worker.pem"
    )]
    cert: PathBuf,
    /// The certificate's private key (PEM).
    #[arg(
        long,
        env = "JOBS_WORKER_KEY",
        default_value = "deploy/.dev/worker-key.pem"
    )]
    key: PathBuf,
    /// CA certificate that signed the server's certificate (PEM).
    #[arg(long, env = "JOBS_WORKER_CA", default_value = "deploy/.dev/ca.pem")]
    ca: PathBuf,
    /// Job types to run (comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    types: Vec<String>,
    /// Only these queues (comma-separated); all when absent.
    #[arg(long, value_delimiter = ',')]
    queues: Option<Vec<String>>,
    /// Shell command run per job (`sh -c`), the payload on stdin.
    #[arg(long)]
    exec: String,
    /// Jobs run at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Lease length; the worker heartbeats every third of it.
    #[arg(long, default_value_t = 30)]
    lease_seconds: u64,
    /// Stop after this many jobs (0: run until interrupted).
    #[arg(long, default_value_t = 0)]
    max_jobs: u64,
    /// Machine output: a JSON line per job on stdout {"at", "job_id", "type", "outcome",
    /// "exit_code", "duration_ms"}; outcome is completed, failed, dead_lettered or cancelled.
    #[arg(long)]
    json: bool,
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        let res = self
            .http
            .post(format!("{}/jobs/v1/worker{path}", self.base))
            .json(body)
            .send()
            .await
            .context("calling the worker listener")?;
        let status = res.status().as_u16();
        Ok((status, res.json().await.unwrap_or(Value::Null)))
    }
}

fn truncate(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim();
    if s.len() <= MAX_OUTPUT {
        return s.to_string();
    }
    let mut end = MAX_OUTPUT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

pub async fn run(a: WorkerArgs) -> anyhow::Result<()> {
    let mut identity =
        std::fs::read(&a.cert).with_context(|| format!("reading {}", a.cert.display()))?;
    identity.extend(std::fs::read(&a.key).with_context(|| format!("reading {}", a.key.display()))?);
    let ca = std::fs::read(&a.ca).with_context(|| format!("reading {}", a.ca.display()))?;
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .identity(reqwest::Identity::from_pem(&identity).context("the certificate and key")?)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).context("the CA")?)
        .timeout(Duration::from_secs(60))
        .build()?;
    if a.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let client = Arc::new(Client {
        http,
        base: a.url.trim_end_matches('/').to_string(),
    });
    let slots = Arc::new(Semaphore::new(a.concurrency));
    let exec = Arc::new(a.exec.clone());
    let mut started = 0u64;
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    eprintln!("jobsctl worker: leasing {:?} from {}", a.types, a.url);
    loop {
        if a.max_jobs > 0 && started >= a.max_jobs {
            break;
        }
        let free = slots.available_permits().max(1);
        let want = if a.max_jobs > 0 {
            free.min((a.max_jobs - started) as usize)
        } else {
            free
        };
        let body = json!({
            "types": a.types, "queues": a.queues, "max_jobs": want.min(100),
            "lease_seconds": a.lease_seconds, "wait_seconds": 20,
        });
        let leased = tokio::select! {
            r = client.post("/lease", &body) => r,
            _ = &mut stop => break,
        };
        let jobs = match leased {
            Ok((200, v)) => v["data"]["jobs"].as_array().cloned().unwrap_or_default(),
            Ok((status, v)) => {
                eprintln!(
                    "jobsctl worker: lease answered {status}: {}",
                    v["error"]["message"]
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => {
                eprintln!("jobsctl worker: {e:#}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for job in jobs {
            started += 1;
            let permit = slots.clone().acquire_owned().await?;
            let (client, exec) = (client.clone(), exec.clone());
            let (lease_seconds, json_out) = (a.lease_seconds, a.json);
            tokio::spawn(async move {
                if let Err(e) = run_job(&client, &exec, &job, lease_seconds, json_out).await {
                    eprintln!("jobsctl worker: job {}: {e:#}", job["id"]);
                }
                drop(permit);
            });
        }
    }
    // Let running jobs finish.
    let _ = slots.acquire_many(a.concurrency as u32).await;
    Ok(())
}

async fn run_job(
    client: &Client,
    exec: &str,
    job: &Value,
    lease_seconds: u64,
    json_out: bool,
) -> anyhow::Result<()> {
    let id = job["id"].as_str().context("a leased job has an id")?;
    let job_type = job["type"].as_str().unwrap_or_default();
    let lease_id = job["lease"]["lease_id"].clone();
    let started = Instant::now();
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(exec)
        .env("JOBS_JOB_ID", id)
        .env("JOBS_JOB_TYPE", job_type)
        .env("JOBS_ATTEMPT", job["attempts"].to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the command")?;
    if let Some(mut stdin) = child.stdin.take() {
        let mut payload = serde_json::to_vec(&job["payload"])?;
        payload.push(b'\n');
        // A command that does not read its stdin is fine.
        let _ = stdin.write_all(&payload).await;
    }
    let read = |r: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>| {
        tokio::spawn(async move {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut r, &mut buf).await;
            }
            buf
        })
    };
    let out_task = read(child.stdout.take().map(|o| Box::new(o) as _));
    let err_task = read(child.stderr.take().map(|o| Box::new(o) as _));
    let beat = Duration::from_secs((lease_seconds / 3).max(1));
    let mut cancelled = false;
    let status = loop {
        tokio::select! {
            st = child.wait() => break st?,
            _ = tokio::time::sleep(beat) => {
                let (status, v) = client.post(&format!("/jobs/{id}/heartbeat"), &json!({"lease_id": lease_id})).await?;
                if status == 409 {
                    eprintln!("jobsctl worker: job {id}: lease lost; stopping the command");
                    let _ = child.kill().await;
                    return Ok(());
                }
                if v["data"]["cancel_requested"] == json!(true) {
                    cancelled = true;
                    let _ = child.kill().await;
                    break child.wait().await?;
                }
            }
        }
    };
    let duration = started.elapsed();
    let output = std::process::Output {
        status,
        stdout: out_task.await?,
        stderr: err_task.await?,
    };
    let stdout = truncate(&output.stdout);
    let stderr = truncate(&output.stderr);
    let (path, body) = match output.status.code() {
        Some(0) if !cancelled => {
            let result = serde_json::from_str::<Value>(&stdout)
                .unwrap_or_else(|_| json!({ "stdout": stdout }));
            ("complete", json!({"lease_id": lease_id, "result": result}))
        }
        code => {
            let message = if cancelled {
                "cancelled while running".to_string()
            } else if stderr.is_empty() {
                format!("the command exited with {code:?}")
            } else {
                stderr
            };
            let code_name = code.map_or("KILLED".to_string(), |c| format!("EXIT_{c}"));
            let retryable = code != Some(EXIT_NOT_RETRYABLE);
            (
                "fail",
                json!({"lease_id": lease_id, "error": {"message": message, "code": code_name}, "retryable": retryable}),
            )
        }
    };
    let (status, v) = client.post(&format!("/jobs/{id}/{path}"), &body).await?;
    if status != 200 {
        bail!("{path} answered {status}: {}", v["error"]["message"]);
    }
    if json_out {
        let outcome = match (path, v["data"]["status"].as_str()) {
            ("complete", _) => "completed",
            (_, Some("dead_lettered")) => "dead_lettered",
            (_, Some("cancelled")) => "cancelled",
            _ => "failed",
        };
        crate::output::print_ndjson(&json!({
            "at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "job_id": id,
            "type": job_type,
            "outcome": outcome,
            "exit_code": output.status.code(),
            "duration_ms": duration.as_millis() as u64,
        }));
    } else {
        eprintln!(
            "jobsctl worker: job {id}: {path} -> {}",
            v["data"]["status"]
        );
    }
    Ok(())
}
