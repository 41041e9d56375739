//! Signing development tokens: what `jobsctl token` prints and what `jobs-dev-auth` answers a
//! login with. The services themselves only verify ([`crate::auth::JwtVerifier`]).
//!
//! The algorithm follows the key, as verification does: an RSA key signs RS256, an EC P-256 key
//! ES256. [`TokenClaims`] carries exactly what [`crate::auth::Claims`] reads, under the same
//! names (`sub`, `tenantId`, `email`, `roles`, `planTier`, `exp`), plus `iat` and, when the
//! services check them, `iss` and `aud`.

use std::path::Path;

use anyhow::{bail, Context};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use uuid::Uuid;

/// The claims of a token we sign.
#[derive(Debug, Clone, Serialize)]
pub struct TokenClaims {
    pub sub: String,
    #[serde(rename = "tenantId")]
    pub tenant_id: Uuid,
    pub email: String,
    pub roles: Vec<String>,
    #[serde(rename = "planTier", skip_serializing_if = "Option::is_none")]
    pub plan_tier: Option<String>,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// A private key and the algorithm it signs with.
pub struct Signer {
    alg: Algorithm,
    key: EncodingKey,
}

impl Signer {
    /// From a PEM private key: RSA → RS256, EC P-256 → ES256.
    pub fn from_pem(pem: &[u8]) -> anyhow::Result<Self> {
        if let Ok(key) = EncodingKey::from_rsa_pem(pem) {
            Ok(Self {
                alg: Algorithm::RS256,
                key,
            })
        } else if let Ok(key) = EncodingKey::from_ec_pem(pem) {
            Ok(Self {
                alg: Algorithm::ES256,
                key,
            })
        } else {
            bail!("not a PEM RSA or EC private key")
        }
    }

    /// From a PEM file, naming the file in any error.
    pub fn from_pem_file(path: &Path) -> anyhow::Result<Self> {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading the signing key {}", path.display()))?;
        Self::from_pem(&pem).with_context(|| path.display().to_string())
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// A compact JWT of `claims`.
    pub fn sign(&self, claims: &TokenClaims) -> anyhow::Result<String> {
        jsonwebtoken::encode(&Header::new(self.alg), claims, &self.key).context("signing a token")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_that_is_not_a_private_key_is_refused() {
        let err = Signer::from_pem(b"-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n")
            .err()
            .expect("refused");
        assert!(err.to_string().contains("not a PEM RSA or EC private key"));
    }
}
