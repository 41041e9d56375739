//! The development login (jobs-dev-auth) as the seed page walks through it — log in, enqueue
//! with the token, refresh, read with the new token — all through the gateway, which routes
//! `/auth/v1/` to it only when the set-up enabled it. Users: the committed
//! `deploy/dev-users.toml`.

use std::collections::BTreeSet;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};
use tests::{
    dev_auth_config, dev_users_file, event_seq, json as body_json, start_dev_auth, Gateway,
    Running, TestApp,
};

const DEV: (&str, &str) = ("dev@eventzr.com", "Password123!");
const ADMIN: (&str, &str) = ("admin@eventzr.com", "Password123!");
const DEV_TENANT: &str = "10000000-0000-4000-8000-000000000004";

/// The services, jobs-dev-auth, and a gateway routing `/auth/v1/` to it.
struct Stack {
    app: TestApp,
    auth: Running,
    gw: Gateway,
}

async fn stack() -> Stack {
    let app = TestApp::spawn().await;
    let auth = start_dev_auth(dev_auth_config(&app.keys, &dev_users_file()))
        .await
        .expect("jobs-dev-auth starts");
    let gw = Gateway::start_with_dev_login(app.command.port, app.query.port, auth.port)
        .await
        .expect("gateway");
    Stack { app, auth, gw }
}

impl Stack {
    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let res = self
            .app
            .http
            .post(format!("{}{path}", self.gw.url()))
            .json(body)
            .send()
            .await
            .expect("sent");
        let status = res.status().as_u16();
        (status, body_json(res).await.expect("a JSON body"))
    }

    async fn login(&self, (email, password): (&str, &str)) -> (u16, Value) {
        self.post(
            "/auth/v1/login",
            &json!({"email": email, "password": password}),
        )
        .await
    }

    /// Logs in and returns `data` (accessToken, refreshToken, expiresIn), asserting 200.
    async fn session(&self, user: (&str, &str)) -> Value {
        let (status, body) = self.login(user).await;
        assert_eq!(status, 200, "{body}");
        body["data"].clone()
    }

    async fn refresh(&self, refresh_token: &str) -> (u16, Value) {
        self.post(
            "/auth/v1/refresh",
            &json!({ "refreshToken": refresh_token }),
        )
        .await
    }
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("{key} in {v}"))
}

/// The access token's claims, verified with the key the services verify with.
fn claims(app: &TestApp, token: &str) -> Value {
    let pem = std::fs::read(&app.keys.rsa_public).expect("public key");
    let key = DecodingKey::from_rsa_pem(&pem).expect("rsa public key");
    jsonwebtoken::decode::<Value>(token, &key, &Validation::new(Algorithm::RS256))
        .expect("a valid RS256 token")
        .claims
}

/// A 401 in the envelope; returns its message.
fn assert_unauthenticated(status: u16, body: &Value) -> String {
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["data"], Value::Null);
    assert_eq!(body["error"]["code"], "UNAUTHENTICATED", "{body}");
    assert!(body["meta"]["request_id"].is_string(), "{body}");
    str_of(&body["error"], "message").to_string()
}

#[tokio::test]
async fn the_seed_pages_walk_through_works_through_the_gateway() {
    let s = stack().await;
    let health = s
        .app
        .http
        .get(format!("{}/healthz", s.auth.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    // Log in as the seed's developer.
    let (status, body) = s.login(DEV).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["error"], Value::Null);
    let data = &body["data"];
    let fields: BTreeSet<&str> = data
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        BTreeSet::from(["accessToken", "refreshToken", "expiresIn"])
    );
    assert_eq!(data["expiresIn"], 3600);
    let access = str_of(data, "accessToken").to_string();
    let refresh = str_of(data, "refreshToken").to_string();
    assert_ne!(
        refresh.split('.').count(),
        3,
        "the refresh token is opaque, not a JWT"
    );

    // The seed's claim structure, with exactly the claims the services read.
    let c = claims(&s.app, &access);
    let names: BTreeSet<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from(["sub", "tenantId", "email", "roles", "planTier", "iat", "exp"])
    );
    assert_eq!(c["sub"], "20000000-0000-4000-8000-000000000004");
    assert_eq!(c["tenantId"], DEV_TENANT);
    assert_eq!(c["email"], "dev@eventzr.com");
    assert_eq!(c["roles"], json!(["member"]));
    assert_eq!(c["planTier"], "professional");
    assert_eq!(
        c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(),
        3600
    );

    // Enqueue the seed's job with it.
    let seed_job = json!({"type": "email.send", "payload": {"to": "user@example.com", "template": "welcome"}, "priority": 5});
    let res = s
        .app
        .http
        .post(format!("{}/jobs/v1/enqueue", s.gw.url()))
        .bearer_auth(&access)
        .json(&seed_job)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let seq = event_seq(&res);
    let job = body_json(res).await.unwrap()["data"].clone();
    assert_eq!(job["tenant_id"], DEV_TENANT, "{job}");

    // Refresh: a new pair, the refresh token rotated.
    let (status, body) = s.refresh(&refresh).await;
    assert_eq!(status, 200, "{body}");
    let renewed = &body["data"];
    assert_eq!(renewed["expiresIn"], 3600);
    assert_ne!(str_of(renewed, "refreshToken"), refresh);
    let access2 = str_of(renewed, "accessToken");
    assert_eq!(claims(&s.app, access2)["sub"], c["sub"]);

    // List the job with the refreshed token, once the read model has it.
    let res = s
        .app
        .http
        .get(format!("{}/jobs/v1/jobs", s.gw.url()))
        .bearer_auth(access2)
        .header("x-min-event-seq", seq.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let list = body_json(res).await.unwrap();
    assert_eq!(list["meta"]["tenant_id"], DEV_TENANT);
    let jobs = list["data"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{list}");
    assert_eq!(jobs[0]["id"], job["id"]);
    assert_eq!(jobs[0]["payload"], seed_job["payload"]);
}

#[tokio::test]
async fn a_used_refresh_token_is_refused_and_its_session_revoked() {
    let s = stack().await;
    let first = s.session(DEV).await;
    let other = s.session(DEV).await;
    let r1 = str_of(&first, "refreshToken").to_string();

    let (status, body) = s.refresh(&r1).await;
    assert_eq!(status, 200, "{body}");
    let r2 = str_of(&body["data"], "refreshToken").to_string();

    // r1 again: refused, and r2 (its successor) dies with it.
    let (status, body) = s.refresh(&r1).await;
    let message = assert_unauthenticated(status, &body);
    assert!(message.contains("already used"), "{message}");
    let (status, body) = s.refresh(&r2).await;
    let message = assert_unauthenticated(status, &body);
    assert!(message.contains("revoked"), "{message}");

    // Another login's session is its own family: untouched.
    let (status, body) = s.refresh(str_of(&other, "refreshToken")).await;
    assert_eq!(status, 200, "{body}");

    // Unknown tokens are refused; a refresh token is no bearer token.
    for unknown in ["devrt_0000", "", str_of(&first, "accessToken")] {
        let (status, body) = s.refresh(unknown).await;
        let message = assert_unauthenticated(status, &body);
        assert!(message.contains("unknown"), "{message}");
    }
    let res = s
        .app
        .http
        .get(format!("{}/jobs/v1/jobs", s.gw.url()))
        .bearer_auth(&r2)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(
        body_json(res).await.unwrap()["error"]["code"],
        "UNAUTHENTICATED"
    );
}

#[tokio::test]
async fn wrong_credentials_are_refused_alike_and_the_admin_gets_admin_routes() {
    let s = stack().await;
    let (status, wrong_password) = s.login(("dev@eventzr.com", "password123!")).await;
    let message = assert_unauthenticated(status, &wrong_password);
    let (status, unknown_user) = s.login(("nobody@eventzr.com", "Password123!")).await;
    assert_eq!(assert_unauthenticated(status, &unknown_user), message);
    assert_eq!(
        wrong_password["error"], unknown_user["error"],
        "a wrong password and an unknown user look the same"
    );

    // A malformed body is the services' 400 (415 for another content type).
    let (status, body) = s.post("/auth/v1/login", &json!({"email": DEV.0})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "VALIDATION_FAILED");
    let (status, body) = s.post("/auth/v1/refresh", &json!({"token": "x"})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "VALIDATION_FAILED");
    let res = s
        .app
        .http
        .post(format!("{}/auth/v1/login", s.gw.url()))
        .body("email=dev@eventzr.com")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);

    // The admin's token carries the admin role: admin routes answer; the developer's do not.
    let admin = s.session(ADMIN).await;
    let admin_token = str_of(&admin, "accessToken");
    let c = claims(&s.app, admin_token);
    assert_eq!(c["roles"], json!(["admin", "member"]));
    assert_eq!(c["tenantId"], "10000000-0000-4000-8000-000000000001");
    let dev = s.session(DEV).await;
    for (token, expected) in [(admin_token, 200), (str_of(&dev, "accessToken"), 403)] {
        let res = s
            .app
            .http
            .get(format!("{}/jobs/v1/admin/workers", s.gw.url()))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), expected);
    }
}

#[tokio::test]
async fn without_the_dev_login_the_gateway_answers_404_for_auth_routes() {
    let app = TestApp::spawn().await;
    // Even with jobs-dev-auth running, a gateway not set up for it never reaches it.
    let _auth = start_dev_auth(dev_auth_config(&app.keys, &dev_users_file()))
        .await
        .expect("jobs-dev-auth starts");
    let gw = Gateway::start(app.command.port, app.query.port)
        .await
        .expect("gateway");
    for (path, body) in [
        ("/auth/v1/login", json!({"email": DEV.0, "password": DEV.1})),
        ("/auth/v1/refresh", json!({"refreshToken": "devrt_0000"})),
    ] {
        let res = app
            .http
            .post(format!("{}{path}", gw.url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "{path}");
        let err = body_json(res).await.unwrap();
        assert_eq!(err["data"], Value::Null);
        assert_eq!(err["error"]["code"], "NOT_FOUND", "{err}");
    }
}

#[test]
fn the_binary_lists_its_settings_and_stops_on_a_bad_users_file_naming_it() {
    let bin = tests::procs::bin_path("jobs-dev-auth");
    let help = std::process::Command::new(&bin)
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for v in [
        "JOBS_DEV_AUTH_LISTEN",
        "JOBS_DEV_AUTH_USERS",
        "JOBS_DEV_AUTH_KEY",
        "JOBS_DEV_AUTH_ACCESS_TTL_SECONDS",
    ] {
        assert!(text.contains(v), "--help does not mention {v}: {text}");
    }

    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    std::fs::write(&users, "[[users]]\nemail = \"a@example.com\"\n").unwrap();
    let keys = tests::Keys::get();
    let out = std::process::Command::new(&bin)
        .args(["--listen", "127.0.0.1:0", "--users"])
        .arg(&users)
        .arg("--key")
        .arg(&keys.rsa_private)
        .env_clear()
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.trim().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("jobs-dev-auth: JOBS_DEV_AUTH_USERS") && last.contains("missing field"),
        "{err}"
    );
}
