//! jobsctl: the Jobs Service's command line for people.
//!
//! `jobsctl token` signs a development token with the key `deploy/up` generated, so a developer
//! can call the API without an identity provider; `jobsctl worker` is a reference worker.

mod history;
mod worker;

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use uuid::Uuid;

#[derive(Parser)]
#[command(name = "jobsctl", version, about = "Command line for the Jobs Service")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print a signed bearer token (RS256 for an RSA key, ES256 for an EC P-256 key).
    Token(TokenArgs),
    /// Run jobs: lease over mTLS, run a command per job, complete or fail by its exit status.
    Worker(worker::WorkerArgs),
    /// Print events from JOBS_EVENTS (NDJSON or a table), filtered; --follow tails new ones.
    Replay(history::ReplayArgs),
    /// Check the hash chains of a tenant's (or one job's) events; exit 0 intact, 2 tampered.
    Verify(history::VerifyArgs),
    /// A tenant's queues as they were at an instant (counts by status and type, who held what).
    State(history::StateArgs),
    /// Check the service's invariants on the stream (and the read model); exit 2 on a violation.
    Check(CheckArgs),
}

#[derive(clap::Args)]
struct CheckArgs {
    /// NATS server holding JOBS_EVENTS.
    #[arg(long, env = "JOBS_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// The read model to compare with the stream (omit to check the stream alone).
    #[arg(long, env = "JOBS_DATABASE_URL")]
    database_url: Option<String>,
}

#[derive(clap::Args)]
struct TokenArgs {
    /// Tenant the token is for (the `tenantId` claim).
    #[arg(long)]
    tenant: Uuid,
    /// Comma-separated roles, e.g. admin,member.
    #[arg(long, value_delimiter = ',', default_value = "member")]
    roles: Vec<String>,
    /// PEM private key to sign with.
    #[arg(
        long,
        env = "JOBS_JWT_PRIVATE_KEY",
        default_value = "deploy/.dev/jwt-private.pem"
    )]
    key: PathBuf,
    /// Subject (`sub`); a new UUID when absent.
    #[arg(long)]
    sub: Option<String>,
    /// E-mail claim.
    #[arg(long, default_value = "dev@example.com")]
    email: String,
    /// Plan tier: free, starter, professional or enterprise.
    #[arg(long, default_value = "professional")]
    plan_tier: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl_seconds: i64,
    /// `iss` claim, when the services check one.
    #[arg(long, env = "JOBS_JWT_ISSUER")]
    issuer: Option<String>,
    /// `aud` claim, when the services check one.
    #[arg(long, env = "JOBS_JWT_AUDIENCE")]
    audience: Option<String>,
}

fn token(a: TokenArgs) -> anyhow::Result<String> {
    let pem = std::fs::read(&a.key)
        .with_context(|| format!("reading the signing key {}", a.key.display()))?;
    let (alg, key) = if let Ok(k) = EncodingKey::from_rsa_pem(&pem) {
        (Algorithm::RS256, k)
    } else if let Ok(k) = EncodingKey::from_ec_pem(&pem) {
        (Algorithm::ES256, k)
    } else {
        bail!("{} is not a PEM RSA or EC private key", a.key.display());
    };
    let now = chrono::Utc::now().timestamp();
    let mut claims = json!({
        "sub": a.sub.unwrap_or_else(|| Uuid::new_v4().to_string()),
        "tenantId": a.tenant,
        "email": a.email,
        "roles": a.roles,
        "planTier": a.plan_tier,
        "iat": now,
        "exp": now + a.ttl_seconds,
    });
    if let Some(iss) = a.issuer {
        claims["iss"] = json!(iss);
    }
    if let Some(aud) = a.audience {
        claims["aud"] = json!(aud);
    }
    Ok(jsonwebtoken::encode(&Header::new(alg), &claims, &key)?)
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Token(a) => token(a).map(|t| println!("{t}")),
        Cmd::Worker(a) => worker::run(a).await,
        Cmd::Replay(a) => history::replay(a).await,
        Cmd::State(a) => history::state(a).await,
        Cmd::Check(a) => {
            match jobsctl::check::check(&a.nats_url, a.database_url.as_deref(), &[]).await {
                Ok(r) => {
                    for p in &r.problems {
                        println!("{p}");
                    }
                    println!(
                        "{} events, {} jobs, {} problems",
                        r.events,
                        r.jobs,
                        r.problems.len()
                    );
                    if !r.ok() {
                        std::process::exit(2);
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        Cmd::Verify(a) => match history::verify(a).await {
            Ok(true) => Ok(()),
            Ok(false) => std::process::exit(2),
            Err(e) => Err(e),
        },
    };
    if let Err(e) = result {
        eprintln!("jobsctl: {e:#}");
        std::process::exit(1);
    }
}
