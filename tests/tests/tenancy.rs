//! Tenancy: the route-to-roles matrix, plan-tier limits (payload, rate, active jobs, concurrent
//! leases), admin overrides applied live, and draining a worker.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tests::{email_job, eventually, Keys, TestApp};
use uuid::Uuid;

async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let base = if method == Method::GET {
        app.query.url()
    } else {
        app.command.url()
    };
    let mut req = app.http.request(method, format!("{base}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn every_route_answers_every_role_and_tenant_as_the_table_says() {
    let app = TestApp::spawn().await;
    let keys = Keys::get();
    let (job, _) = app.enqueue(&email_job(1)).await;
    let id = job["id"].as_str().unwrap().to_string();
    let (tenant, other) = (app.tenant, Uuid::new_v4());
    // Every public route of the contract, with a body where it takes one.
    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::POST, "/jobs/v1/enqueue".into(), Some(email_job(2))),
        (
            Method::POST,
            "/jobs/v1/enqueue/batch".into(),
            Some(json!({"jobs": [email_job(3)]})),
        ),
        (Method::GET, "/jobs/v1/jobs".into(), None),
        (Method::GET, format!("/jobs/v1/jobs/{id}"), None),
        (Method::GET, format!("/jobs/v1/jobs/{id}/events"), None),
        (Method::GET, format!("/jobs/v1/jobs/{id}/explain"), None),
        (
            Method::PATCH,
            format!("/jobs/v1/jobs/{id}"),
            Some(json!({"priority": 6})),
        ),
        (Method::POST, format!("/jobs/v1/jobs/{id}/retry"), None),
        (Method::GET, "/jobs/v1/dlq".into(), None),
        (Method::GET, format!("/jobs/v1/dlq/{id}"), None),
        (Method::POST, format!("/jobs/v1/dlq/{id}/retry"), None),
        (
            Method::POST,
            "/jobs/v1/dlq/retry".into(),
            Some(json!({"dry_run": true})),
        ),
        (Method::DELETE, format!("/jobs/v1/dlq/{id}"), None),
        (Method::GET, "/jobs/v1/quota".into(), None),
        (Method::GET, "/jobs/v1/admin/workers".into(), None),
        (Method::GET, "/jobs/v1/admin/workers/nobody".into(), None),
        (
            Method::POST,
            "/jobs/v1/admin/workers/nobody/undrain".into(),
            None,
        ),
        (
            Method::GET,
            format!("/jobs/v1/admin/tenants/{other}/overrides"),
            None,
        ),
        (
            Method::DELETE,
            format!("/jobs/v1/admin/tenants/{other}/overrides"),
            None,
        ),
    ];
    let roles: [(&str, &[&str]); 6] = [
        ("admin", &["admin"]),
        ("manager", &["manager"]),
        ("member", &["member"]),
        ("viewer", &["viewer"]),
        ("user-only", &["user", "organizer"]),
        ("none", &[]),
    ];
    for (method, path, body) in &routes {
        let group = common::auth::route_group(path)
            .unwrap_or_else(|| panic!("{path} is not in the route table"));
        for (name, role_set) in roles {
            for own in [true, false] {
                let t = if own { tenant } else { other };
                let token = (name != "none").then(|| keys.token(t, role_set));
                let (status, v) =
                    call(&app, method.clone(), path, token.as_deref(), body.clone()).await;
                let case = format!(
                    "{method} {path} as {name} of the {} tenant",
                    if own { "job's" } else { "other" }
                );
                let allowed = role_set.iter().any(|r| group.roles().contains(r));
                if name == "none" {
                    assert_eq!(status, 401, "{case}: {v}");
                } else if !allowed {
                    assert_eq!(
                        (status, v["error"]["code"].as_str()),
                        (403, Some("FORBIDDEN")),
                        "{case}"
                    );
                } else {
                    assert!(status != 401 && status != 403, "{case}: {status} {v}");
                    let names_the_job = path.contains(&id);
                    if names_the_job && !own {
                        assert_eq!(status, 404, "{case}: another tenant's job is not found");
                    }
                }
            }
        }
    }
}

fn free_token(keys: &Keys, tenant: Uuid, roles: &[&str]) -> String {
    let mut claims = Keys::claims(tenant, roles);
    claims["planTier"] = json!("free");
    keys.sign(&claims)
}

#[tokio::test]
async fn the_plan_tier_limits_payload_and_rate_with_an_honest_retry_after() {
    let app = TestApp::spawn().await;
    let keys = Keys::get();
    let tenant = Uuid::new_v4();
    let token = free_token(&keys, tenant, &["member"]);
    let plans = common::plans::Plans::load(None).unwrap();
    let free = plans.tier(Some("free")).1;

    let big =
        json!({"type": "t", "payload": {"blob": "x".repeat(free.max_payload_bytes as usize)}});
    let res = app.enqueue_as(&token, &big).await;
    assert_eq!(res.status(), 413, "the free tier's payload limit");

    let (status, quota) = call(&app, Method::GET, "/jobs/v1/quota", Some(&token), None).await;
    assert_eq!(status, 200);
    assert_eq!(quota["data"]["plan_tier"], "free");
    assert_eq!(
        quota["data"]["limits"]["enqueue_per_second"],
        free.enqueue_per_second
    );
    assert_eq!(quota["data"]["overridden"], false);

    let mut accepted = 0;
    let retry_after = loop {
        let res = app.enqueue_as(&token, &email_job(accepted)).await;
        if res.status() == 429 {
            let after: u64 = res.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            let v: Value = res.json().await.unwrap();
            assert_eq!(v["error"]["code"], "RATE_LIMITED");
            break after;
        }
        assert_eq!(res.status(), 201);
        accepted += 1;
        assert!(
            accepted <= free.enqueue_burst as usize + 5,
            "the burst never ran out"
        );
    };
    assert!(
        accepted as u64 >= free.enqueue_burst - 2,
        "the whole burst was allowed ({accepted})"
    );
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let res = app.enqueue_as(&token, &email_job(999)).await;
    assert_eq!(res.status(), 201, "a retry after Retry-After succeeds");
}

#[tokio::test]
async fn overrides_change_limits_live_and_deleting_one_restores_the_tier() {
    let app = TestApp::spawn().await;
    let keys = Keys::get();
    let admin = keys.token(app.tenant, &["admin"]);
    let path = format!("/jobs/v1/admin/tenants/{}/overrides", app.tenant);
    let (status, v) = call(
        &app,
        Method::PUT,
        &path,
        Some(&admin),
        Some(json!({"max_active_jobs": 3})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    for i in 0..3 {
        app.enqueue(&email_job(i)).await;
    }
    let res = app.enqueue_as(&app.token, &email_job(4)).await;
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["error"]["code"], "QUOTA_EXCEEDED");
    let res = app
        .request(Method::POST, "/jobs/v1/enqueue/batch", &app.token)
        .json(&json!({"jobs": [email_job(5)]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429, "a batch is refused whole");

    // Raise it: effective at once.
    let (status, _) = call(
        &app,
        Method::PUT,
        &path,
        Some(&admin),
        Some(json!({"max_active_jobs": 5, "max_concurrent_leases": 1})),
    )
    .await;
    assert_eq!(status, 200);
    app.enqueue(&email_job(6)).await;
    let quota = eventually(
        Duration::from_secs(10),
        "the override in the read model",
        || async {
            let (_, q) = call(&app, Method::GET, "/jobs/v1/quota", Some(&app.token), None).await;
            (q["data"]["overridden"] == true && q["data"]["limits"]["max_active_jobs"] == 5)
                .then_some(q)
        },
    )
    .await;
    assert_eq!(quota["data"]["usage"]["active_jobs"], 4);
    let (status, got) = call(&app, Method::GET, &path, Some(&admin), None).await;
    assert_eq!(
        (status, &got["data"]["overrides"]),
        (
            200,
            &json!({"max_active_jobs": 5, "max_concurrent_leases": 1})
        )
    );
    assert_eq!(
        got["data"]["updated_by"]["kind"], "user",
        "the audit trail says who"
    );

    // Concurrent leases capped at 1 for this tenant while another keeps getting work.
    let other = keys.token(Uuid::new_v4(), &["member"]);
    for i in 0..3 {
        assert_eq!(
            app.enqueue_as(&other, &email_job(100 + i)).await.status(),
            201
        );
    }
    let w = app.worker("w1");
    let jobs = w
        .lease(&json!({"types": ["email.send"], "max_jobs": 10}))
        .await;
    let mine = jobs
        .iter()
        .filter(|j| j["tenant_id"] == app.tenant.to_string())
        .count();
    assert_eq!(
        (mine, jobs.len() - mine),
        (1, 3),
        "capped at 1 lease; the other tenant got all 3"
    );

    // Lower it below usage, then delete: back to the tier's default.
    let (status, _) = call(
        &app,
        Method::PUT,
        &path,
        Some(&admin),
        Some(json!({"max_active_jobs": 1})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        app.enqueue_as(&app.token, &email_job(7)).await.status(),
        429
    );
    let (status, _) = call(&app, Method::DELETE, &path, Some(&admin), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        app.enqueue_as(&app.token, &email_job(8)).await.status(),
        201,
        "the tier default is back"
    );
    for bad in [
        json!({}),
        json!({"max_active_jobs": 0}),
        json!({"colour": 1}),
    ] {
        let (status, _) = call(&app, Method::PUT, &path, Some(&admin), Some(bad.clone())).await;
        assert_eq!(status, 400, "{bad}");
    }
    let member = keys.token(app.tenant, &["member", "manager"]);
    let (status, _) = call(
        &app,
        Method::PUT,
        &path,
        Some(&member),
        Some(json!({"max_active_jobs": 100})),
    )
    .await;
    assert_eq!(status, 403, "only admins");
}

#[tokio::test]
async fn a_draining_worker_gets_no_new_jobs_while_another_does() {
    let app = TestApp::spawn().await;
    let admin = Keys::get().token(app.tenant, &["admin"]);
    let (w1, w2) = (app.worker("drained"), app.worker("busy"));
    app.enqueue(&email_job(1)).await;
    let held = w1.lease(&json!({"types": ["email.send"]})).await;
    assert_eq!(held.len(), 1);
    let id = w1.id();
    let encoded: String = id
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let (status, v) = call(
        &app,
        Method::POST,
        &format!("/jobs/v1/admin/workers/{encoded}/drain"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["worker_id"], id);
    for i in 0..3 {
        app.enqueue(&email_job(10 + i)).await;
    }
    assert!(
        w1.lease(&json!({"types": ["email.send"], "max_jobs": 10, "wait_seconds": 1}))
            .await
            .is_empty(),
        "drained"
    );
    assert_eq!(
        w2.lease(&json!({"types": ["email.send"], "max_jobs": 10}))
            .await
            .len(),
        3,
        "the other worker gets them"
    );
    let (status, _) = w1.complete(&held[0]).await;
    assert_eq!(status, 200, "a draining worker may finish what it holds");

    let registry = eventually(Duration::from_secs(10), "the registry", || async {
        let (_, v) = call(
            &app,
            Method::GET,
            &format!("/jobs/v1/admin/workers/{encoded}"),
            Some(&admin),
            None,
        )
        .await;
        (v["data"]["draining"] == true && v["data"]["leased_jobs"] == 0).then_some(v)
    })
    .await;
    assert!(
        registry["data"]["first_seen"].is_string() && registry["data"]["last_seen"].is_string()
    );
    let (_, all) = call(
        &app,
        Method::GET,
        "/jobs/v1/admin/workers",
        Some(&admin),
        None,
    )
    .await;
    let busy = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["worker_id"] == w2.id())
        .cloned()
        .unwrap();
    assert_eq!(
        (busy["leased_jobs"].as_u64(), busy["draining"].as_bool()),
        (Some(3), Some(false))
    );

    let (status, _) = call(
        &app,
        Method::POST,
        &format!("/jobs/v1/admin/workers/{encoded}/undrain"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200);
    app.enqueue(&email_job(20)).await;
    assert_eq!(
        w1.lease(&json!({"types": ["email.send"]})).await.len(),
        1,
        "undrained"
    );
}
