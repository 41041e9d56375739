//! `jobsctl token`: signs a development token with a private key (the one `deploy/up`
//! generated). It prints the bare token, or under `--json` the token with what it grants.

use std::path::PathBuf;

use serde_json::json;
use uuid::Uuid;

#[derive(clap::Args)]
pub struct TokenArgs {
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
    /// Machine output: {"token", "tenantId", "roles", "expires_at"} instead of the bare token.
    #[arg(long)]
    json: bool,
}

pub fn run(a: TokenArgs) -> anyhow::Result<()> {
    let signer = common::signing::Signer::from_pem_file(&a.key)?;
    let now = chrono::Utc::now().timestamp();
    let exp = now + a.ttl_seconds;
    let token = signer.sign(&common::signing::TokenClaims {
        sub: a.sub.unwrap_or_else(|| Uuid::new_v4().to_string()),
        tenant_id: a.tenant,
        email: a.email,
        roles: a.roles.clone(),
        plan_tier: Some(a.plan_tier),
        iat: now,
        exp,
        iss: a.issuer,
        aud: a.audience,
    })?;
    if a.json {
        let expires_at = chrono::DateTime::from_timestamp(exp, 0)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        crate::output::print_ndjson(&json!({
            "token": token,
            "tenantId": a.tenant,
            "roles": a.roles,
            "expires_at": expires_at,
        }));
    } else {
        println!("{token}");
    }
    Ok(())
}
