//! Traces across the event stream: an OTLP/HTTP receiver started here (decoding with the
//! opentelemetry-proto types) gets spans from command-svc and the projector for one enqueue,
//! sharing the trace id the response's `meta.trace_id` names, the projector's span a child of
//! command-svc's.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde_json::{json, Value};
use tests::{eventually, Bin, TestApp, Tls};

#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
}

async fn receiver() -> (u16, Arc<Mutex<Vec<Span>>>) {
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let sink = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
                for rs in req.resource_spans {
                    let service = rs
                        .resource
                        .iter()
                        .flat_map(|r| r.attributes.iter())
                        .find(|a| a.key == "service.name")
                        .and_then(|a| a.value.as_ref())
                        .map(|v| format!("{:?}", v.value))
                        .unwrap_or_default();
                    for ss in rs.scope_spans {
                        for s in ss.spans {
                            sink.lock().unwrap().push(Span {
                                service: service.clone(),
                                name: s.name.clone(),
                                trace_id: hex(&s.trace_id),
                                span_id: hex(&s.span_id),
                                parent: hex(&s.parent_span_id),
                            });
                        }
                    }
                }
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, spans)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn one_enqueue_is_one_trace_from_the_request_through_the_stream_to_the_projector() {
    let app = TestApp::spawn_with(false).await;
    let (otlp, spans) = receiver().await;
    let tls = Tls::get();
    let port = tests::procs::free_port();
    let common_env = |name: &str| {
        vec![
            ("JOBS_NATS_URL", app.nats.url()),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{otlp}"),
            ),
            ("OTEL_SERVICE_NAME", name.to_string()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
        ]
    };
    let mut cmd_env = common_env("command-svc");
    cmd_env.extend([
        (
            "JOBS_JWT_PUBLIC_KEY",
            app.keys.rsa_public.to_str().unwrap().to_string(),
        ),
        ("JOBS_COMMAND_ADDR", format!("127.0.0.1:{port}")),
        ("JOBS_WORKER_ADDR", "127.0.0.1:0".to_string()),
        (
            "JOBS_WORKER_TLS_CERT",
            tls.server_cert.to_str().unwrap().to_string(),
        ),
        (
            "JOBS_WORKER_TLS_KEY",
            tls.server_key.to_str().unwrap().to_string(),
        ),
        (
            "JOBS_WORKER_CLIENT_CA",
            tls.ca.to_str().unwrap().to_string(),
        ),
    ]);
    let _cmd = Bin::spawn("command-svc", &cmd_env).unwrap();
    let mut proj_env = common_env("projector");
    proj_env.extend([
        ("JOBS_DATABASE_URL", app.db.url.clone()),
        ("JOBS_PROJECTOR_ADDR", "127.0.0.1:0".to_string()),
    ]);
    let _proj = Bin::spawn("projector", &proj_env).unwrap();
    eventually(Duration::from_secs(20), "command-svc ready", || async {
        let r = app
            .http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;

    // A caller's own trace continues through us.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let res = app
        .http
        .post(format!("http://127.0.0.1:{port}/jobs/v1/enqueue"))
        .bearer_auth(&app.token)
        .header(
            "traceparent",
            format!("00-{caller_trace}-00f067aa0ba902b7-01"),
        )
        .json(&json!({"type": "traced", "payload": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    let trace_id = body["meta"]["trace_id"].as_str().unwrap().to_string();
    assert_eq!(
        trace_id, caller_trace,
        "meta.trace_id is the trace the spans are exported in"
    );

    let (ours, projected) = eventually(
        Duration::from_secs(20),
        "spans from both services",
        || async {
            let all = spans.lock().unwrap().clone();
            let in_trace: Vec<Span> = all.into_iter().filter(|s| s.trace_id == trace_id).collect();
            let ours: Vec<Span> = in_trace
                .iter()
                .filter(|s| s.service.contains("command-svc"))
                .cloned()
                .collect();
            let projected = in_trace
                .iter()
                .find(|s| s.service.contains("projector") && s.name == "projector.apply_batch")
                .cloned()?;
            (!ours.is_empty()).then_some((ours, projected))
        },
    )
    .await;
    assert!(
        ours.iter().any(|s| s.span_id == projected.parent),
        "the projector's span is a child of a command-svc span: {projected:?} / {ours:?}"
    );
    assert!(
        ours.iter().any(|s| s.parent == "00f067aa0ba902b7"),
        "the request span continues the caller's span"
    );
}
