//! JWT authentication and the route-to-roles table.
//!
//! Tokens are RS256 or ES256, verified against a PEM key or a JWKS file; the algorithm is
//! pinned to the key, so `none`, HS* and any algorithm other than the key's are refused. Every
//! protected route goes through [`authorize`], which looks the route up in [`ROUTE_ROLES`]: a
//! route missing from the table is refused, never open by accident.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context};
use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::context;
use crate::error::ApiError;

/// Groups of routes that share a role requirement (the seed's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteGroup {
    Jobs,
    DeadLetterQueue,
    MetricsAndQuota,
    Admin,
}

impl RouteGroup {
    /// Any one of these roles suffices; other roles grant nothing.
    pub fn roles(self) -> &'static [&'static str] {
        match self {
            RouteGroup::Jobs | RouteGroup::DeadLetterQueue | RouteGroup::MetricsAndQuota => {
                &["admin", "manager", "member", "viewer"]
            }
            RouteGroup::Admin => &["admin"],
        }
    }
}

/// The route-to-roles table: (path prefix under `/jobs/v1`, group). The first match wins.
pub const ROUTE_ROLES: &[(&str, RouteGroup)] = &[
    ("/jobs/v1/admin/", RouteGroup::Admin),
    ("/jobs/v1/dlq", RouteGroup::DeadLetterQueue),
    ("/jobs/v1/metrics", RouteGroup::MetricsAndQuota),
    ("/jobs/v1/quota", RouteGroup::MetricsAndQuota),
    ("/jobs/v1/enqueue", RouteGroup::Jobs),
    ("/jobs/v1/jobs", RouteGroup::Jobs),
    ("/jobs/v1/queues", RouteGroup::Jobs),
    ("/jobs/v1/types", RouteGroup::Jobs),
    ("/jobs/v1/schedules", RouteGroup::Jobs),
];

pub fn route_group(path: &str) -> Option<RouteGroup> {
    ROUTE_ROLES
        .iter()
        .find(|(prefix, _)| path == prefix.trim_end_matches('/') || path.starts_with(prefix))
        .map(|(_, g)| *g)
}

/// The claims we read from a token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(rename = "tenantId")]
    pub tenant_id: Uuid,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(rename = "planTier", default)]
    pub plan_tier: Option<String>,
    pub exp: i64,
}

/// The authenticated caller, available to handlers as an extractor.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub claims: Arc<Claims>,
}

impl AuthUser {
    pub fn tenant_id(&self) -> Uuid {
        self.claims.tenant_id
    }
    /// Who the audit trail names: the subject, else the email, else "unknown".
    pub fn actor_id(&self) -> String {
        self.claims
            .sub
            .clone()
            .or_else(|| self.claims.email.clone())
            .unwrap_or_else(|| "unknown".into())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<AuthUser>()
            .cloned()
            .ok_or_else(|| ApiError::Unauthenticated("this route needs a bearer token".into()))
    }
}

struct VerifyKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Verifies bearer tokens. Verified tokens are cached by their bytes until they expire, so a
/// client reusing its token pays for the signature check once.
pub struct JwtVerifier {
    keys: Vec<VerifyKey>,
    issuer: Option<String>,
    audience: Option<String>,
    cache: Mutex<HashMap<String, Arc<Claims>>>,
}

const CACHE_CAPACITY: usize = 10_000;

impl JwtVerifier {
    /// From a PEM public key (RSA → RS256, EC P-256 → ES256).
    pub fn from_pem_file(
        path: &Path,
        issuer: Option<String>,
        audience: Option<String>,
    ) -> anyhow::Result<Self> {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let (alg, key) = if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
            (Algorithm::RS256, k)
        } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
            (Algorithm::ES256, k)
        } else {
            bail!("{} is not a PEM RSA or EC public key", path.display());
        };
        Ok(Self::new(
            vec![VerifyKey {
                kid: None,
                alg,
                key,
            }],
            issuer,
            audience,
        ))
    }

    /// From a JWKS document (RSA and EC P-256 keys; others are skipped).
    pub fn from_jwks(
        json: &[u8],
        issuer: Option<String>,
        audience: Option<String>,
    ) -> anyhow::Result<Self> {
        let set: JwkSet = serde_json::from_slice(json).context("parsing the JWKS")?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            use jsonwebtoken::jwk::AlgorithmParameters as P;
            let alg = match &jwk.algorithm {
                P::RSA(_) => Algorithm::RS256,
                P::EllipticCurve(ec)
                    if matches!(ec.curve, jsonwebtoken::jwk::EllipticCurve::P256) =>
                {
                    Algorithm::ES256
                }
                _ => continue,
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| anyhow!("bad JWK: {e}"))?;
            keys.push(VerifyKey {
                kid: jwk.common.key_id.clone(),
                alg,
                key,
            });
        }
        if keys.is_empty() {
            bail!("the JWKS holds no RSA or P-256 key");
        }
        Ok(Self::new(keys, issuer, audience))
    }

    /// A verifier with no key: every token is refused (for building routers in tests).
    pub fn refusing_all() -> Self {
        Self::new(Vec::new(), None, None)
    }

    fn new(keys: Vec<VerifyKey>, issuer: Option<String>, audience: Option<String>) -> Self {
        Self {
            keys,
            issuer,
            audience,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Verifies a token and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Arc<Claims>, String> {
        let now = chrono::Utc::now().timestamp();
        if let Some(c) = self.cache.lock().expect("cache lock").get(token) {
            if c.exp > now {
                return Ok(c.clone());
            }
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| format!("malformed token: {e}"))?;
        let key = self
            .keys
            .iter()
            .find(|k| header.kid.is_some() && k.kid == header.kid)
            .or_else(|| self.keys.iter().find(|k| k.alg == header.alg))
            .ok_or_else(|| format!("tokens signed with {:?} are not accepted", header.alg))?;
        let mut v = Validation::new(key.alg);
        v.algorithms = vec![key.alg];
        v.leeway = 30;
        v.validate_nbf = true;
        let mut required = vec!["exp"];
        match &self.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                required.push("aud");
            }
            None => v.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        v.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &v)
            .map_err(|e| format!("invalid token: {e}"))?;
        let claims = Arc::new(data.claims);
        let mut cache = self.cache.lock().expect("cache lock");
        if cache.len() >= CACHE_CAPACITY {
            cache.retain(|_, c| c.exp > now);
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(token.to_string(), claims.clone());
        Ok(claims)
    }
}

/// Middleware for protected routes: authenticate, check `x-tenant-id`, look up the route's
/// group and require one of its roles.
pub async fn authorize(
    State(verifier): State<Arc<JwtVerifier>>,
    mut req: Request,
    next: Next,
) -> Response {
    match check(&verifier, &req) {
        Ok(user) => {
            let ctx = context::current();
            let _ = ctx.tenant_id.set(user.tenant_id());
            ctx.span
                .record("tenant_id", tracing::field::display(user.tenant_id()));
            req.extensions_mut().insert(user);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

fn check(verifier: &JwtVerifier, req: &Request) -> Result<AuthUser, ApiError> {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(|| ApiError::Unauthenticated("send Authorization: Bearer <token>".into()))?;
    let claims = verifier.verify(token).map_err(ApiError::Unauthenticated)?;
    if let Some(h) = req.headers().get("x-tenant-id") {
        let sent = h.to_str().ok().and_then(|s| Uuid::parse_str(s.trim()).ok());
        if sent != Some(claims.tenant_id) {
            return Err(ApiError::TenantMismatch);
        }
    }
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let group = route_group(&path)
        .ok_or_else(|| ApiError::Forbidden("this route grants no role".into()))?;
    if !claims
        .roles
        .iter()
        .any(|r| group.roles().contains(&r.as_str()))
    {
        return Err(ApiError::Forbidden(format!(
            "this route needs one of the roles {:?}",
            group.roles()
        )));
    }
    Ok(AuthUser { claims })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_public_route_family_is_in_the_table() {
        assert_eq!(
            route_group("/jobs/v1/enqueue/batch"),
            Some(RouteGroup::Jobs)
        );
        assert_eq!(
            route_group("/jobs/v1/jobs/{id}/events"),
            Some(RouteGroup::Jobs)
        );
        assert_eq!(
            route_group("/jobs/v1/dlq/retry"),
            Some(RouteGroup::DeadLetterQueue)
        );
        assert_eq!(
            route_group("/jobs/v1/quota"),
            Some(RouteGroup::MetricsAndQuota)
        );
        assert_eq!(
            route_group("/jobs/v1/admin/workers"),
            Some(RouteGroup::Admin)
        );
        assert_eq!(route_group("/jobs/v1/unknown"), None);
        assert_eq!(RouteGroup::Admin.roles(), ["admin"]);
        assert!(!RouteGroup::Jobs.roles().contains(&"user"));
    }
}
