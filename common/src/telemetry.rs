//! Logging and tracing set-up, once per process: `RUST_LOG` filters; JSON lines in deploy,
//! readable text locally; and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans exported over
//! OTLP (HTTP/protobuf) with W3C trace context. Without an endpoint no exporter exists and the
//! trace ids are still made and carried (costing nothing but the id).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// How log lines look: `json` (deploy) or `pretty` (a terminal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Self::Json),
            "pretty" | "text" => Ok(Self::Pretty),
            other => Err(format!("unknown log format {other:?}: use json or pretty")),
        }
    }
}

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (an OTLP endpoint was configured).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Flushes exported spans when dropped (keep it alive for the process's life).
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Installs the global subscriber once; later calls (tests) are no-ops. `otlp_endpoint` is the
/// OTLP/HTTP base URL (spans go to `<base>/v1/traces`).
pub fn init(format: LogFormat, service: &str, otlp_endpoint: Option<&str>) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = otlp_endpoint.filter(|e| !e.is_empty()).and_then(|base| {
        let endpoint = format!("{}/v1/traces", base.trim_end_matches('/'));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .build();
        match exporter {
            Ok(exporter) => Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        opentelemetry_sdk::Resource::builder()
                            .with_service_name(service.to_string())
                            .build(),
                    )
                    .build(),
            ),
            Err(e) => {
                eprintln!("{service}: OTEL_EXPORTER_OTLP_ENDPOINT: {e}; not exporting traces");
                None
            }
        }
    });
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("jobs")));
    let fmt = tracing_subscriber::fmt::layer().with_target(false);
    let fmt = match format {
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Pretty => fmt.compact().boxed(),
    };
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .is_ok();
    if installed && provider.is_some() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        EXPORTING.store(true, Ordering::Relaxed);
    }
    Telemetry {
        provider: if installed { provider } else { None },
    }
}

use tracing_subscriber::Layer as _;

struct Headers<'a>(&'a axum::http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct One<'a>(&'a str);

impl Extractor for One<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0)
    }
    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

/// Makes `span` continue the trace of an incoming request's `traceparent` (when exporting)
/// and returns the span's trace id.
pub fn adopt_request_parent(
    span: &tracing::Span,
    headers: &axum::http::HeaderMap,
) -> Option<String> {
    if !exporting() {
        return None;
    }
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    let id = span.context().span().span_context().trace_id();
    (id != opentelemetry::trace::TraceId::INVALID).then(|| id.to_string())
}

/// Makes `span` continue (or, with `link`, link to) the trace in a `traceparent` value.
pub fn adopt_traceparent(span: &tracing::Span, traceparent: &str, link: bool) {
    if !exporting() {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&One(traceparent));
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() {
        return;
    }
    if link {
        span.add_link(sc);
    } else {
        let _ = span.set_parent(cx);
    }
}

/// The `traceparent` of the current span, when exporting.
pub fn current_traceparent() -> Option<String> {
    if !exporting() {
        return None;
    }
    let cx = tracing::Span::current().context();
    let mut map: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut map);
    map.remove("traceparent")
}
