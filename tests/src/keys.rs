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
            "roles": roles, "planTier": "enterprise", "iat": now, "exp": now + 3600,
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

/// TLS material for the worker listener, made once per test process with rcgen: a CA, the
/// server's certificate (127.0.0.1, localhost), and client certificates on demand — from the
/// CA, from another CA, or expired.
pub struct Tls {
    pub ca_pem: String,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    ca_params: rcgen::CertificateParams,
    ca_key: rcgen::KeyPair,
}

static TLS: OnceLock<Tls> = OnceLock::new();

fn ca(name: &str) -> (rcgen::CertificateParams, rcgen::KeyPair, String) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let key = rcgen::KeyPair::generate().expect("key");
    let pem = params.self_signed(&key).expect("self-signed").pem();
    (params, key, pem)
}

/// A worker certificate and key as one PEM (what `reqwest::Identity::from_pem` takes).
fn client_pem(
    name: &str,
    issuer: &rcgen::CertificateParams,
    issuer_key: &rcgen::KeyPair,
    expired: bool,
) -> String {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.subject_alt_names = vec![rcgen::SanType::URI(
        format!("spiffe://jobs.test/worker/{name}")
            .try_into()
            .expect("uri"),
    )];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = rcgen::KeyPair::generate().expect("key");
    let issuer = rcgen::Issuer::from_params(issuer, issuer_key);
    let cert = params.signed_by(&key, &issuer).expect("signed");
    format!("{}{}", cert.pem(), key.serialize_pem())
}

impl Tls {
    pub fn get() -> &'static Tls {
        TLS.get_or_init(|| {
            let dir = tempfile::Builder::new()
                .prefix("jobs-tls-")
                .tempdir()
                .expect("tempdir")
                .keep();
            let (ca_params, ca_key, ca_pem) = ca("jobs test CA");
            let mut server = rcgen::CertificateParams::new(vec![
                "localhost".to_string(),
                "127.0.0.1".to_string(),
            ])
            .expect("params");
            server.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
            let server_key = rcgen::KeyPair::generate().expect("key");
            let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
            let server_cert = server.signed_by(&server_key, &issuer).expect("server cert");
            let tls = Tls {
                ca: dir.join("ca.pem"),
                server_cert: dir.join("server.pem"),
                server_key: dir.join("server-key.pem"),
                ca_pem: ca_pem.clone(),
                ca_params,
                ca_key,
            };
            std::fs::write(&tls.ca, &ca_pem).expect("write");
            std::fs::write(&tls.server_cert, server_cert.pem()).expect("write");
            std::fs::write(&tls.server_key, server_key.serialize_pem()).expect("write");
            tls
        })
    }

    /// A client certificate for worker `name` from the trusted CA.
    pub fn worker_pem(&self, name: &str) -> String {
        client_pem(name, &self.ca_params, &self.ca_key, false)
    }

    /// A client certificate from the trusted CA that expired in 2021.
    pub fn expired_worker_pem(&self, name: &str) -> String {
        client_pem(name, &self.ca_params, &self.ca_key, true)
    }

    /// A client certificate from a CA the service does not trust.
    pub fn foreign_worker_pem(&self, name: &str) -> String {
        let (p, k, _) = ca("some other CA");
        client_pem(name, &p, &k, false)
    }
}
