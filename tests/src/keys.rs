//! Signing keys for tests, made once per test process with the openssl CLI: the service's RSA
//! key, a second RSA key (bad signatures) and an EC P-256 key (wrong key type).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use uuid::Uuid;

#[derive(Clone)]
pub struct Keys {
    pub dir: PathBuf,
    pub rsa_private: PathBuf,
    pub rsa_public: PathBuf,
    pub other_rsa_private: PathBuf,
    pub ec_private: PathBuf,
    pub ec_public: PathBuf,
}

static KEYS: OnceLock<Keys> = OnceLock::new();

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Keys {
    pub fn get() -> Keys {
        KEYS.get_or_init(|| {
            let dir = tempfile::Builder::new()
                .prefix("jobs-keys-")
                .tempdir()
                .expect("tempdir")
                .keep();
            let p = |n: &str| dir.join(n);
            let s = |p: &PathBuf| p.to_str().expect("utf-8 path").to_string();
            let keys = Keys {
                rsa_private: p("rsa.pem"),
                rsa_public: p("rsa.pub.pem"),
                other_rsa_private: p("other.pem"),
                ec_private: p("ec.pem"),
                ec_public: p("ec.pub.pem"),
                dir: dir.clone(),
            };
            for k in [&keys.rsa_private, &keys.other_rsa_private] {
                openssl(&[
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                    "-out",
                    &s(k),
                ]);
            }
            openssl(&[
                "pkey",
                "-in",
                &s(&keys.rsa_private),
                "-pubout",
                "-out",
                &s(&keys.rsa_public),
            ]);
            openssl(&[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &s(&keys.ec_private),
            ]);
            openssl(&[
                "pkey",
                "-in",
                &s(&keys.ec_private),
                "-pubout",
                "-out",
                &s(&keys.ec_public),
            ]);
            keys
        })
        .clone()
    }

    pub fn claims(tenant: Uuid, roles: &[&str]) -> Value {
        let now = chrono::Utc::now().timestamp();
        json!({
            "sub": Uuid::new_v4(), "tenantId": tenant, "email": "t@example.com",
            "roles": roles, "planTier": "professional", "iat": now, "exp": now + 3600,
        })
    }

    /// A valid RS256 token for `tenant` with `roles`.
    pub fn token(&self, tenant: Uuid, roles: &[&str]) -> String {
        self.sign(&Self::claims(tenant, roles))
    }

    /// Signs arbitrary claims with the service's RSA key.
    pub fn sign(&self, claims: &Value) -> String {
        sign_with(&self.rsa_private, Algorithm::RS256, claims)
    }
}

pub fn sign_with(pem: &PathBuf, alg: Algorithm, claims: &Value) -> String {
    let bytes = std::fs::read(pem).expect("key file");
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&bytes).expect("rsa key"),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&bytes).expect("ec key"),
        Algorithm::HS256 => EncodingKey::from_secret(&bytes),
        other => panic!("no test signer for {other:?}"),
    };
    jsonwebtoken::encode(&Header::new(alg), claims, &key).expect("sign")
}
