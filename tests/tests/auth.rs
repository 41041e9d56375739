//! Authentication and authorization: every way a token can be wrong is a 401, a token for the
//! wrong tenant or without a listed role is a 403.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use reqwest::Method;
use serde_json::json;
use tests::keys::sign_with;
use tests::{email_job, json as body_json, Keys, TestApp};
use uuid::Uuid;

#[tokio::test]
async fn bad_tokens_are_401_and_wrong_tenants_or_roles_are_403() {
    let app = TestApp::spawn().await;
    let keys = Keys::get();
    let tenant = app.tenant;
    let claims = Keys::claims(tenant, &["member"]);

    let mut expired = claims.clone();
    expired["exp"] = json!(chrono::Utc::now().timestamp() - 120);
    let mut no_tenant = claims.clone();
    no_tenant.as_object_mut().unwrap().remove("tenantId");
    let mut not_yet = claims.clone();
    not_yet["nbf"] = json!(chrono::Utc::now().timestamp() + 600);
    let mut no_exp = claims.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    let alg_none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let unauthenticated = [
        ("expired", keys.sign(&expired)),
        ("not yet valid", keys.sign(&not_yet)),
        ("without exp", keys.sign(&no_exp)),
        (
            "bad signature",
            sign_with(&keys.other_rsa_private, Algorithm::RS256, &claims),
        ),
        ("alg none", alg_none),
        (
            "HS256 with the public key as secret",
            sign_with(&keys.rsa_public, Algorithm::HS256, &claims),
        ),
        (
            "wrong key type (ES256)",
            sign_with(&keys.ec_private, Algorithm::ES256, &claims),
        ),
        ("missing tenantId", keys.sign(&no_tenant)),
        ("garbage", "not.a.token".to_string()),
    ];
    for (what, token) in &unauthenticated {
        for (method, path) in [
            (Method::POST, "/jobs/v1/enqueue"),
            (Method::GET, "/jobs/v1/jobs"),
        ] {
            let mut req = app.request(method.clone(), path, token);
            if method == Method::POST {
                req = req.json(&email_job(1));
            }
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), 401, "{what} on {path}");
            assert_eq!(res.headers()["www-authenticate"], "Bearer");
            assert_eq!(
                body_json(res).await.unwrap()["error"]["code"],
                "UNAUTHENTICATED"
            );
        }
    }
    let res = app
        .http
        .post(format!("{}/jobs/v1/enqueue", app.command.url()))
        .json(&email_job(1))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "no token at all");

    let res = app
        .request(Method::POST, "/jobs/v1/enqueue", &app.token)
        .header("x-tenant-id", Uuid::new_v4().to_string())
        .json(&email_job(1))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(
        body_json(res).await.unwrap()["error"]["code"],
        "TENANT_MISMATCH"
    );
    let res = app
        .request(Method::POST, "/jobs/v1/enqueue", &app.token)
        .header("x-tenant-id", tenant.to_string())
        .json(&email_job(1))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "a matching x-tenant-id is fine");

    let user_only = keys.token(tenant, &["user", "organizer"]);
    for (method, path) in [
        (Method::POST, "/jobs/v1/enqueue"),
        (Method::GET, "/jobs/v1/jobs"),
    ] {
        let mut req = app.request(method.clone(), path, &user_only);
        if method == Method::POST {
            req = req.json(&email_job(1));
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 403, "role user alone on {path}");
        assert_eq!(body_json(res).await.unwrap()["error"]["code"], "FORBIDDEN");
    }
    for role in ["admin", "manager", "member", "viewer"] {
        let res = app
            .enqueue_as(&keys.token(tenant, &[role]), &email_job(1))
            .await;
        assert_eq!(res.status(), 201, "role {role} may enqueue");
    }
}

#[tokio::test]
async fn es256_keys_and_jwks_files_verify_too() {
    let keys = Keys::get();
    let tenant = Uuid::new_v4();
    let claims = Keys::claims(tenant, &["member"]);
    let ec = common::auth::JwtVerifier::from_pem_file(&keys.ec_public, None, None).unwrap();
    assert!(ec
        .verify(&sign_with(&keys.ec_private, Algorithm::ES256, &claims))
        .is_ok());
    assert!(
        ec.verify(&keys.sign(&claims)).is_err(),
        "an RS256 token against an EC key"
    );

    // A JWKS holding the RSA key, built from its modulus and exponent.
    let pem = std::fs::read_to_string(&keys.rsa_public).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["rsa", "-pubin", "-noout", "-modulus"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(pem.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    let modulus = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .trim_start_matches("Modulus=")
        .to_string();
    let n = URL_SAFE_NO_PAD.encode(hex_decode(&modulus));
    let jwks = json!({"keys": [{"kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256", "n": n, "e": "AQAB"}]});
    let v = common::auth::JwtVerifier::from_jwks(jwks.to_string().as_bytes(), None, None).unwrap();
    let c = v.verify(&keys.sign(&claims)).unwrap();
    assert_eq!(c.tenant_id, tenant);

    let with_iss = common::auth::JwtVerifier::from_pem_file(
        &keys.rsa_public,
        Some("https://issuer".into()),
        Some("jobs".into()),
    )
    .unwrap();
    assert!(
        with_iss.verify(&keys.sign(&claims)).is_err(),
        "iss and aud are checked when configured"
    );
    let mut good = claims.clone();
    good["iss"] = json!("https://issuer");
    good["aud"] = json!("jobs");
    assert!(with_iss.verify(&keys.sign(&good)).is_ok());
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
