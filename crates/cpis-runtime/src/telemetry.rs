//! Logs, traces and the request span.
//!
//! - Logs: human-readable on a terminal, JSON lines otherwise, each carrying
//!   the request's span fields (method, request id, trace id, caller).
//! - Traces: OpenTelemetry over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT`
//!   is set (with `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER` and the other
//!   standard variables), off otherwise. W3C trace context is accepted from
//!   callers and sent on every call between our services.
//!
//! Nothing recorded here carries an NHS number, a date of birth or contact
//! details: spans are named by method and identified by ids.

use crate::metrics::Metrics;
use futures::future::BoxFuture;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::io::IsTerminal;
use std::task::{Context, Poll};
use std::time::Instant;
use tower::{Layer, Service};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::{fmt, prelude::*, EnvFilter};

/// Keeps the trace exporter alive; flushes pending spans when dropped.
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports every finished span now (tests and shutdown).
    pub fn flush(&self) {
        if let Some(p) = &self.provider {
            let _ = p.force_flush();
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Installs logging and (when configured) trace export, writing logs to stderr.
pub fn init(default_service_name: &str) -> TelemetryGuard {
    init_with_writer(default_service_name, std::io::stderr, std::io::stderr().is_terminal())
}

/// Installs logging and trace export with logs going to `writer` (JSON
/// unless `pretty`). Only the first call in a process takes effect.
pub fn init_with_writer<W>(default_service_name: &str, writer: W, pretty: bool) -> TelemetryGuard
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,h2=warn,tower=warn,hyper=warn,opentelemetry=warn"));
    let provider = otlp_provider(default_service_name);
    let otel_layer = provider.as_ref().map(|p| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer().with_tracer(p.tracer("cpis"))
    });
    let fmt_layer = if pretty {
        fmt::layer().with_writer(writer).boxed()
    } else {
        fmt::layer().json().with_current_span(true).with_span_list(false).with_writer(writer).boxed()
    };
    let installed = tracing_subscriber::registry().with(filter).with(fmt_layer).with(otel_layer).try_init();
    match (installed, provider) {
        (Ok(()), Some(provider)) => {
            opentelemetry::global::set_tracer_provider(provider.clone());
            TelemetryGuard { provider: Some(provider) }
        }
        _ => TelemetryGuard::default(),
    }
}

fn otlp_provider(default_service_name: &str) -> Option<SdkTracerProvider> {
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|e| !e.is_empty())?;
    use opentelemetry_otlp::WithExportConfig;
    let exporter = match opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint).build() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("OpenTelemetry export disabled: {e}");
            return None;
        }
    };
    let service_name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| default_service_name.to_string());
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service_name).build();
    Some(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}

/// Reads W3C trace context from gRPC (HTTP/2) headers.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Writes W3C trace context into outgoing gRPC metadata.
struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// Puts the current span's trace context on an outgoing request, so the
/// callee's span joins the same trace.
pub fn inject_context<T>(request: &mut tonic::Request<T>) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut MetadataInjector(request.metadata_mut()))
    });
}

/// The current span's trace context as a W3C `traceparent` value, to store
/// with work that continues later (an outbox row, an alert).
pub fn current_traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    let mut map = std::collections::HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut map));
    map.remove("traceparent")
}

/// Makes the stored `traceparent` the parent of `span` (work resumed later
/// in the same trace), and links to it.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(tp) = traceparent else { return };
    let carrier = std::collections::HashMap::from([("traceparent".to_string(), tp.to_string())]);
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
    let remote = cx.span().span_context().clone();
    if remote.is_valid() {
        let _ = span.set_parent(cx);
        span.add_link(remote);
    }
}

/// The trace id of the current span, for logs (empty when tracing is off).
pub fn current_trace_id() -> String {
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        sc.trace_id().to_string()
    } else {
        String::new()
    }
}

/// Tower layer: one server span per request (joined to the caller's trace),
/// a request id, and the request metrics.
#[derive(Debug, Clone)]
pub struct GrpcTraceLayer {
    metrics: Metrics,
    service: &'static str,
    fhir: bool,
}

impl GrpcTraceLayer {
    /// The layer for `service` (e.g. `registry`), counting into `metrics`.
    pub fn new(service: &'static str, metrics: Metrics) -> Self {
        Self { metrics, service, fhir: false }
    }

    /// The same layer for a FHIR (HTTP) port: its spans are `fhir.server`
    /// spans with HTTP attributes instead of gRPC ones.
    pub fn fhir(service: &'static str, metrics: Metrics) -> Self {
        Self { metrics, service, fhir: true }
    }
}

impl<S> Layer<S> for GrpcTraceLayer {
    type Service = GrpcTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcTrace { inner, metrics: self.metrics.clone(), service: self.service, fhir: self.fhir }
    }
}

/// The service made by [`GrpcTraceLayer`].
#[derive(Debug, Clone)]
pub struct GrpcTrace<S> {
    inner: S,
    metrics: Metrics,
    service: &'static str,
    fhir: bool,
}

/// The method label of requests for paths outside the contract.
pub const UNKNOWN_METHOD: &str = "unknown";

/// Request id header: accepted from the caller (up to 64 visible ASCII
/// characters) or generated, and returned on the response.
pub const REQUEST_ID: &str = "x-request-id";

impl<S, B> Service<http::Request<B>> for GrpcTrace<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        let request_id = req
            .headers()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_string)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(req.headers())));
        // Only methods of the contract name a span or a metric series: any
        // other path (a probe, a scanner, a client without a certificate)
        // is `unknown`, so callers cannot create series at will.
        let method =
            crate::authz::POLICY.iter().find(|(p, _)| *p == path).map(|(p, _)| &p[1..]).unwrap_or(UNKNOWN_METHOD);
        let span = if self.fhir {
            // The code a FHIR answer is counted under is recorded as for gRPC.
            tracing::info_span!(
                "fhir.server",
                otel.name = %method,
                otel.kind = "server",
                http.request.method = %req.method(),
                http.route = %format_args!("/{method}"),
                cpis.service = self.service,
                request_id = %request_id,
                trace_id = tracing::field::Empty,
                rpc.grpc.status_code = tracing::field::Empty,
            )
        } else {
            tracing::info_span!(
                "grpc.server",
                otel.name = %method,
                otel.kind = "server",
                rpc.system = "grpc",
                rpc.method = %method,
                cpis.service = self.service,
                request_id = %request_id,
                trace_id = tracing::field::Empty,
                rpc.grpc.status_code = tracing::field::Empty,
            )
        };
        let _ = span.set_parent(parent);
        let trace_id = {
            let _g = span.enter();
            current_trace_id()
        };
        if !trace_id.is_empty() {
            span.record("trace_id", trace_id.as_str());
        }
        let metrics = self.metrics.clone();
        let started = Instant::now();
        metrics.in_flight().inc();
        let fut = { self.inner.call(req) };
        Box::pin(
            async move {
                let result = fut.await;
                metrics.in_flight().dec();
                let mut response = result?;
                // grpc-status in the headers is a trailers-only (error)
                // answer; otherwise the call succeeded so far (0).
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .unwrap_or(0);
                let name = format!("{:?}", tonic::Code::from_i32(code));
                tracing::Span::current().record("rpc.grpc.status_code", code);
                metrics.observe(method, &name, started.elapsed().as_secs_f64());
                if code != 0 {
                    tracing::info!(code = %name, "request failed");
                }
                if let Ok(v) = http::HeaderValue::from_str(&request_id) {
                    response.headers_mut().insert(REQUEST_ID, v);
                }
                Ok(response)
            }
            .instrument(span),
        )
    }
}
