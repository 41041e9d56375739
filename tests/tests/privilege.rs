//! Least privilege on NATS (`deploy/nats-auth.conf.template`): each service runs as its own
//! user with only the rights it needs, the whole loop still works, and query-svc's or the
//! projector's credential cannot publish an event. Anonymous connections are refused.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tests::{email_job, Keys, NatsServer, TestDb};

const PASSWORDS: [(&str, &str); 3] = [
    ("command-svc", "c-pass"),
    ("projector", "p-pass"),
    ("query-svc", "q-pass"),
];

fn auth_config() -> String {
    let template =
        std::fs::read_to_string(tests::workspace_root().join("deploy/nats-auth.conf.template"))
            .unwrap();
    template
        .replace("@COMMAND_PASSWORD@", PASSWORDS[0].1)
        .replace("@PROJECTOR_PASSWORD@", PASSWORDS[1].1)
        .replace("@QUERY_PASSWORD@", PASSWORDS[2].1)
        .replace("@AUDITOR_PASSWORD@", "a-pass")
        .replace("@BENCH_PASSWORD@", "b-pass")
        // The test harness's own user, with every right.
        .replace(
            "users = [",
            "users = [\n    { user: admin, password: \"admin-test-password\" }",
        )
}

#[tokio::test]
async fn each_service_has_only_the_rights_it_needs() {
    let nats = NatsServer::start_with(&auth_config()).await.unwrap();
    let db = TestDb::create().await.unwrap();
    let keys = Keys::get();
    let as_user = |i: usize| nats.url_as(PASSWORDS[i].0, PASSWORDS[i].1);
    let command = tests::start_command(&as_user(0), &keys).await.unwrap();
    let projector = tests::start_projector(&as_user(1), &db.url).await.unwrap();
    let query = tests::start_query(&as_user(2), &db.url, &keys)
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let tenant = uuid::Uuid::new_v4();
    let token = keys.token(tenant, &["member"]);

    // The whole loop works with least privilege.
    let res = http
        .post(format!("{}/jobs/v1/enqueue", command.url()))
        .bearer_auth(&token)
        .json(&email_job(1))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let seq = tests::event_seq(&res);
    let job: Value = res.json().await.unwrap();
    let id = job["data"]["id"].as_str().unwrap();
    let res = http
        .get(format!("{}/jobs/v1/jobs/{id}", query.url()))
        .bearer_auth(&token)
        .header("x-min-event-seq", seq.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        200,
        "projected and served: {:?}",
        res.text().await
    );
    let w = tests::Worker::new(
        command.worker_port,
        &tests::Tls::get().worker_pem("lp"),
        "lp",
    );
    let held = w.lease(&json!({"types": ["email.send"]})).await;
    assert_eq!(w.complete(&held[0]).await.0, 200);
    let key = http
        .request(Method::POST, format!("{}/jobs/v1/enqueue", command.url()))
        .bearer_auth(&token)
        .header("idempotency-key", "lp-1")
        .json(&email_job(2))
        .send()
        .await
        .unwrap();
    assert_eq!(
        key.status(),
        201,
        "the idempotency bucket works as command-svc"
    );
    for base in [command.url(), projector.url(), query.url()] {
        let r = http.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{base}: {:?}", r.text().await);
    }

    // Only command-svc may publish events.
    for i in [1, 2] {
        let url = as_user(i);
        let client = common::nats::credentials(
            &url,
            async_nats::ConnectOptions::new().request_timeout(Some(Duration::from_secs(2))),
        )
        .connect(common::nats::servers(&url))
        .await
        .unwrap();
        let js = async_nats::jetstream::new(client);
        let forged = js
            .publish(
                format!("jobs.events.{tenant}.{}", uuid::Uuid::now_v7()),
                "forged".into(),
            )
            .await;
        let acked = match forged {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        assert!(
            !acked,
            "{} must not be able to publish an event",
            PASSWORDS[i].0
        );
    }
    // The auditor reads the history (and can write nothing).
    let all = tests::all_events(&nats.url_as("auditor", "a-pass")).await;
    assert!(!all.is_empty());
    assert!(
        all.iter().all(|r| r.envelope.tenant_id == tenant),
        "nothing forged reached the stream"
    );
    // Anonymous connections are refused.
    assert!(
        async_nats::ConnectOptions::new()
            .connect(nats.url())
            .await
            .is_err(),
        "anonymous"
    );
}

#[tokio::test]
async fn query_svc_reads_with_a_read_only_postgres_role_and_the_projector_owns_the_read_model() {
    let nats = NatsServer::start().await.unwrap();
    let admin_url = std::env::var("JOBS_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let admin = sqlx::PgPool::connect(&admin_url).await.unwrap();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (owner, reader, db) = (
        format!("jobs_projector_{suffix}"),
        format!("jobs_query_{suffix}"),
        format!("jobs_roles_{suffix}"),
    );
    // What deploy/postgres-roles.sql sets up, with names of this test's own.
    let setup = std::fs::read_to_string(tests::workspace_root().join("deploy/postgres-roles.sql"))
        .unwrap()
        .replace("jobs_projector", &owner)
        .replace("jobs_query", &reader);
    sqlx::raw_sql(&setup).execute(&admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {db} OWNER {owner}"))
        .execute(&admin)
        .await
        .unwrap();
    let with_user = |user: &str, db: &str| {
        let base = admin_url
            .rsplit_once('/')
            .unwrap()
            .0
            .replace("postgres@", &format!("{user}@"));
        format!("{base}/{db}")
    };
    let in_db = sqlx::PgPool::connect(&with_user("postgres", &db))
        .await
        .unwrap();
    sqlx::query(&format!(
        "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} GRANT SELECT ON TABLES TO {reader}"
    ))
    .execute(&in_db)
    .await
    .unwrap();
    in_db.close().await;

    let keys = Keys::get();
    let projector = tests::start_projector(&nats.url(), &with_user(&owner, &db))
        .await
        .unwrap();
    let command = tests::start_command(&nats.url(), &keys).await.unwrap();
    let query = tests::start_query(&nats.url(), &with_user(&reader, &db), &keys)
        .await
        .unwrap();
    let token = keys.token(uuid::Uuid::new_v4(), &["member"]);
    let http = reqwest::Client::new();
    let res = http
        .post(format!("{}/jobs/v1/enqueue", command.url()))
        .bearer_auth(&token)
        .json(&email_job(1))
        .send()
        .await
        .unwrap();
    let seq = tests::event_seq(&res);
    let job: Value = res.json().await.unwrap();
    let res = http
        .get(format!(
            "{}/jobs/v1/jobs/{}",
            query.url(),
            job["data"]["id"].as_str().unwrap()
        ))
        .bearer_auth(&token)
        .header("x-min-event-seq", seq.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        http.get(format!("{}/readyz", query.url()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(format!("{}/readyz", projector.url()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // The reader cannot write.
    let ro = sqlx::PgPool::connect(&with_user(&reader, &db))
        .await
        .unwrap();
    for stmt in [
        "UPDATE projector_checkpoint SET last_seq = 0",
        "DELETE FROM jobs",
        "DROP TABLE job_events",
    ] {
        let err = sqlx::query(stmt)
            .execute(&ro)
            .await
            .expect_err(stmt)
            .to_string();
        assert!(
            err.contains("permission denied") || err.contains("must be owner"),
            "{stmt}: {err}"
        );
    }
    ro.close().await;

    // A rebuild by the projector's role keeps the reader reading.
    tests::procs::projector_rebuild(&nats.url(), &with_user(&owner, &db), &[]).await;
    let res = http
        .get(format!(
            "{}/jobs/v1/jobs/{}",
            query.url(),
            job["data"]["id"].as_str().unwrap()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        200,
        "the read-only role reads the rebuilt tables"
    );
    drop((projector, command, query));
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .execute(&admin)
        .await;
    let _ = sqlx::query(&format!("DROP ROLE IF EXISTS {owner}"))
        .execute(&admin)
        .await;
    let _ = sqlx::query(&format!("DROP ROLE IF EXISTS {reader}"))
        .execute(&admin)
        .await;
}

#[tokio::test]
async fn the_services_speak_tls_to_nats_when_given_its_ca() {
    let tls = tests::Tls::get();
    let extra = format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n}}\nauthorization {{ users = [ {{ user: admin, password: \"admin-test-password\" }} ] }}\n",
        tls.server_cert.display(),
        tls.server_key.display()
    );
    let nats = NatsServer::start_with_tls(&extra, &tls.ca).await.unwrap();
    let url = nats.url_as("admin", "admin-test-password");
    let mut config = tests::command_config(&url, &Keys::get());
    config.nats.nats_ca = Some(tls.ca.clone());
    let app = command_svc::Application::build(config)
        .await
        .expect("command-svc connects over TLS");
    drop(app);
    // Without the CA (no TLS), the server refuses the connection.
    let mut plain = tests::command_config(&url, &Keys::get());
    plain.nats.nats_connect_wait_seconds = 1;
    assert!(
        command_svc::Application::build(plain).await.is_err(),
        "plain text is refused"
    );
}
