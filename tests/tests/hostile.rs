//! Hostile input: each gets its clear 4xx in the envelope, and the service keeps serving.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use reqwest::Method;
use serde_json::{json, Value};
use tests::{email_job, Keys, TestApp};

async fn status_and_code(res: reqwest::Response) -> (u16, Value) {
    let s = res.status().as_u16();
    (
        s,
        res.json::<Value>()
            .await
            .map(|v| v["error"]["code"].clone())
            .unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn hostile_requests_get_clear_4xx_and_the_service_keeps_serving() {
    let app = TestApp::spawn().await;
    let post = |body: Vec<u8>| {
        app.request(Method::POST, "/jobs/v1/enqueue", &app.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // Deep nesting, invalid UTF-8, a number out of every range, a NUL: 400.
    let deep = format!(
        "{{\"type\":\"t\",\"payload\":{}1{}}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let mut invalid = br#"{"type":"t","payload":{"a":""#.to_vec();
    invalid.extend([0xff, 0xfe]);
    invalid.extend(br#""}}"#);
    for (what, body) in [
        ("deep nesting", deep.into_bytes()),
        ("invalid UTF-8", invalid),
        (
            "a huge number",
            br#"{"type":"t","payload":{},"priority":1e400}"#.to_vec(),
        ),
        ("an empty body", Vec::new()),
    ] {
        let (s, code) = status_and_code(post(body).await.unwrap()).await;
        assert_eq!(
            (s, code.as_str()),
            (400, Some("VALIDATION_FAILED")),
            "{what}"
        );
    }
    // Oversized headers: 431 in the envelope.
    let res = app
        .request(Method::POST, "/jobs/v1/enqueue", &app.token)
        .header("x-padding", "a".repeat(64 * 1024))
        .json(&email_job(1))
        .send()
        .await
        .unwrap();
    let (s, code) = status_and_code(res).await;
    assert_eq!(
        (s, code.as_str()),
        (431, Some("REQUEST_HEADER_FIELDS_TOO_LARGE"))
    );
    // Query abuse.
    for q in [
        "limit=1000000",
        "limit=-1",
        "cursor=%00%01",
        "cursor=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "created_after=not-a-date",
    ] {
        let (s, code) = status_and_code(
            app.request(Method::GET, &format!("/jobs/v1/jobs?{q}"), &app.token)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((s, code.as_str()), (400, Some("VALIDATION_FAILED")), "{q}");
    }
    // JWT header tricks: a `kid` that points nowhere (or somewhere odd), `jku`/`x5u` naming an
    // attacker's key set: the key is always ours, so these tokens fail the signature.
    let keys = Keys::get();
    let claims = Keys::claims(app.tenant, &["admin"]);
    let attacker = tests::keys::sign_with(
        &keys.other_rsa_private,
        jsonwebtoken::Algorithm::RS256,
        &claims,
    );
    let parts: Vec<&str> = attacker.split('.').collect();
    for header in [
        json!({"alg": "RS256", "typ": "JWT", "kid": "../../../../etc/passwd"}),
        json!({"alg": "RS256", "typ": "JWT", "kid": "' OR 1=1 --"}),
        json!({"alg": "RS256", "typ": "JWT", "jku": "http://127.0.0.1:1/attacker.json"}),
        json!({"alg": "RS256", "typ": "JWT", "x5u": "http://127.0.0.1:1/attacker.pem"}),
    ] {
        let token = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            parts[1],
            parts[2]
        );
        let res = app.enqueue_as(&token, &email_job(1)).await;
        assert_eq!(res.status(), 401, "{header}");
    }
    // And a well-behaved client is still served.
    let res = app.enqueue_as(&app.token, &email_job(2)).await;
    assert_eq!(res.status(), 201);
    let (s, _) = app.get("/jobs/v1/jobs", 0).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn slow_and_idle_clients_are_cut_off_while_others_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn().await;
    let addr = ("127.0.0.1", app.command.port);
    // Headers that never end.
    let mut slow_headers = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow_headers
        .write_all(b"POST /jobs/v1/enqueue HTTP/1.1\r\nHost: x\r\n".as_slice())
        .await
        .unwrap();
    // A body that never ends.
    let mut slow_body = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /jobs/v1/enqueue HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"type\":",
        app.token
    );
    slow_body.write_all(head.as_bytes()).await.unwrap();
    // A connection that never sends a byte.
    let idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Others are served meanwhile.
    let started = std::time::Instant::now();
    assert_eq!(
        app.enqueue_as(&app.token, &email_job(1)).await.status(),
        201
    );
    let limit = common::server::HEADER_READ_TIMEOUT + std::time::Duration::from_secs(5);
    for (what, mut stream) in [
        ("unfinished headers", slow_headers),
        ("unfinished body", slow_body),
        ("idle", idle),
    ] {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(limit, stream.read_to_end(&mut buf)).await;
        assert!(
            read.is_ok(),
            "{what}: the server kept the connection open past {limit:?}"
        );
        let text = String::from_utf8_lossy(&buf);
        assert!(
            buf.is_empty() || text.starts_with("HTTP/1.1 4"),
            "{what}: closed, or answered with a 4xx: {text}"
        );
    }
    assert!(started.elapsed() < limit + std::time::Duration::from_secs(5));
    // On a new connection: the shared client's pooled one sat idle as long as the server's
    // header timeout, and the server may close it just as a request goes out on it (hyper's
    // `IncompleteMessage`, seen once in the suite).
    let fresh = reqwest::Client::new()
        .post(format!("{}/jobs/v1/enqueue", app.command.url()))
        .bearer_auth(&app.token)
        .json(&email_job(2))
        .send()
        .await
        .expect("enqueue sent");
    assert_eq!(fresh.status(), 201, "still serving");
}
