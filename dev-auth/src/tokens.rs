//! Access tokens: JWTs signed with the dev key (`common::signing`) for a user, carrying the
//! claims the services verify (`sub`, `tenantId`, `email`, `roles`, `planTier`, `exp`) plus
//! `iat`, and `iss`/`aud` when configured.

use common::signing::{Signer, TokenClaims};

use crate::users::User;

pub struct AccessTokens {
    signer: Signer,
    ttl_seconds: u32,
    issuer: Option<String>,
    audience: Option<String>,
}

impl AccessTokens {
    pub fn new(
        signer: Signer,
        ttl_seconds: u32,
        issuer: Option<String>,
        audience: Option<String>,
    ) -> Self {
        Self {
            signer,
            ttl_seconds,
            issuer,
            audience,
        }
    }

    /// Seconds an access token lives (the answer's `expiresIn`).
    pub fn ttl_seconds(&self) -> u32 {
        self.ttl_seconds
    }

    /// A token for `user`, issued at `now` (Unix seconds).
    pub fn issue(&self, user: &User, now: i64) -> anyhow::Result<String> {
        self.signer.sign(&TokenClaims {
            sub: user.sub.clone(),
            tenant_id: user.tenant_id,
            email: user.email.clone(),
            roles: user.roles.clone(),
            plan_tier: user.plan_tier.clone(),
            iat: now,
            exp: now + i64::from(self.ttl_seconds),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        })
    }
}
