//! Prometheus metrics, one registry per service, served as text on a
//! separate plain-HTTP port (`/metrics`). Labels carry methods, status codes
//! and states — never an NHS number or anything else about a person.

use deadpool_postgres::Pool;
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

type Refresher = Box<dyn Fn() + Send + Sync>;

/// The metrics of one service.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    in_flight: IntGauge,
    refreshers: Arc<Mutex<Vec<Refresher>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics named `cpis_*` with the constant label `service`.
    pub fn new(service: &str) -> Self {
        let labels = HashMap::from([("service".to_string(), service.to_string())]);
        let registry = Registry::new_custom(Some("cpis".into()), Some(labels)).expect("static registry options");
        let requests = IntCounterVec::new(
            Opts::new("grpc_requests_total", "gRPC requests finished, by method and status code"),
            &["method", "code"],
        )
        .expect("static metric");
        let latency = HistogramVec::new(
            HistogramOpts::new("grpc_request_duration_seconds", "Time to the response headers, by method")
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["method"],
        )
        .expect("static metric");
        let in_flight = IntGauge::new("grpc_requests_in_flight", "gRPC requests being handled").expect("static metric");
        for c in [Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>, Box::new(latency.clone())] {
            registry.register(c).expect("unique metric");
        }
        registry.register(Box::new(in_flight.clone())).expect("unique metric");
        Self { registry, requests, latency, in_flight, refreshers: Arc::default() }
    }

    /// The underlying registry, for service-specific metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Registers a metric, ignoring a second registration of the same one.
    pub fn register(&self, collector: impl prometheus::core::Collector + 'static) {
        let _ = self.registry.register(Box::new(collector));
    }

    /// Runs `f` before every scrape (to sample a gauge).
    pub fn on_scrape(&self, f: impl Fn() + Send + Sync + 'static) {
        if let Ok(mut r) = self.refreshers.lock() {
            r.push(Box::new(f));
        }
    }

    /// Counts one finished request.
    pub fn observe(&self, method: &str, code: &str, seconds: f64) {
        self.requests.with_label_values(&[method, code]).inc();
        self.latency.with_label_values(&[method]).observe(seconds);
    }

    /// Tracks requests in flight.
    pub fn in_flight(&self) -> &IntGauge {
        &self.in_flight
    }

    /// Samples the database pool (size, available, waiting) at every scrape.
    pub fn watch_pool(&self, pool: Pool) {
        let gauge = IntGaugeVec::new(
            Opts::new("db_pool_connections", "Database pool connections by state (max, size, available, waiting)"),
            &["state"],
        )
        .expect("static metric");
        self.register(gauge.clone());
        self.on_scrape(move || {
            let s = pool.status();
            gauge.with_label_values(&["max"]).set(s.max_size as i64);
            gauge.with_label_values(&["size"]).set(s.size as i64);
            gauge.with_label_values(&["available"]).set(s.available as i64);
            gauge.with_label_values(&["waiting"]).set(s.waiting as i64);
        });
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        if let Ok(r) = self.refreshers.lock() {
            r.iter().for_each(|f| f());
        }
        let mut out = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Serves `GET /metrics` (plain HTTP/1.1) until `stop` fires.
pub async fn serve(listener: TcpListener, metrics: Metrics, stop: CancellationToken) {
    use hyper::{body::Incoming, Request, Response};
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(_) => continue,
            },
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let response = if req.uri().path() == "/metrics" {
                        Response::builder()
                            .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                            .body(metrics.render())
                    } else {
                        Response::builder().status(404).body("not found: try /metrics\n".to_string())
                    };
                    Ok::<_, Infallible>(response.unwrap_or_default())
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
    }
}
