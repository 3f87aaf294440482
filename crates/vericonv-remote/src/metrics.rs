//! Prometheus metrics of the server, in the text exposition format on `/metrics`: requests by
//! method and status, a latency histogram, bytes in and out, refusals (busy, unauthenticated)
//! and kernel-cache hits and misses.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tonic::Status;

/// The upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// One method's latency histogram: bucket counts, count, sum of seconds.
type Histogram = ([u64; BUCKETS.len()], u64, f64);

/// The server's counters.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, String), u64>>,
    latency: Mutex<BTreeMap<&'static str, Histogram>>,
    kernel_bytes_in: AtomicU64,
    input_bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    unauthenticated: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
}

impl Metrics {
    /// Records one finished call of `method`.
    pub fn finished<T>(&self, method: &'static str, result: &Result<T, Status>, took: Duration) {
        let code = match result {
            Ok(_) => "OK".to_string(),
            Err(s) => format!("{:?}", s.code()),
        };
        *self.requests.lock().unwrap_or_else(|e| e.into_inner()).entry((method, code)).or_default() += 1;
        let mut latency = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let (buckets, count, sum) = latency.entry(method).or_insert(([0; BUCKETS.len()], 0, 0.0));
        let s = took.as_secs_f64();
        for (b, &le) in buckets.iter_mut().zip(&BUCKETS) {
            if s <= le {
                *b += 1;
            }
        }
        *count += 1;
        *sum += s;
    }

    /// Counts the bytes of a registered kernel.
    pub fn kernel_bytes_in(&self, n: usize) {
        self.kernel_bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts the bytes of a call's input: a tensor, or cloud A's 32-byte seed.
    pub fn input_bytes_in(&self, n: usize) {
        self.input_bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts reply bytes.
    pub fn bytes_out(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts a call refused for its token.
    pub fn unauthenticated(&self) {
        self.unauthenticated.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a `Conv` whose kernel was cached.
    pub fn cache_hit(&self) {
        self.cache_hits.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a `Conv` whose kernel was not.
    pub fn cache_miss(&self) {
        self.cache_misses.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP vericonv_requests_total Calls by method and gRPC status.");
        let _ = writeln!(out, "# TYPE vericonv_requests_total counter");
        for ((method, code), n) in self.requests.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "vericonv_requests_total{{method=\"{method}\",code=\"{code}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP vericonv_request_seconds Call latency on the server.");
        let _ = writeln!(out, "# TYPE vericonv_request_seconds histogram");
        for (method, (buckets, count, sum)) in self.latency.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            for (b, le) in buckets.iter().zip(BUCKETS) {
                let _ = writeln!(out, "vericonv_request_seconds_bucket{{method=\"{method}\",le=\"{le}\"}} {b}");
            }
            let _ = writeln!(out, "vericonv_request_seconds_bucket{{method=\"{method}\",le=\"+Inf\"}} {count}");
            let _ = writeln!(out, "vericonv_request_seconds_sum{{method=\"{method}\"}} {sum}");
            let _ = writeln!(out, "vericonv_request_seconds_count{{method=\"{method}\"}} {count}");
        }
        for (name, help, v) in [
            ("vericonv_kernel_bytes_in_total", "Bytes of registered kernels received.", &self.kernel_bytes_in),
            (
                "vericonv_input_bytes_in_total",
                "Bytes of call inputs (tensors or share seeds) received.",
                &self.input_bytes_in,
            ),
            ("vericonv_bytes_out_total", "Tensor bytes sent.", &self.bytes_out),
            ("vericonv_unauthenticated_total", "Calls refused for a missing or wrong token.", &self.unauthenticated),
            ("vericonv_kernel_cache_hits_total", "Conv calls whose kernel was cached.", &self.cache_hits),
            ("vericonv_kernel_cache_misses_total", "Conv calls answered NOT_FOUND.", &self.cache_misses),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", v.load(Ordering::Relaxed));
        }
        out
    }
}

/// Serves `GET /metrics` (and 404 for anything else) over HTTP/1.1 until `stop` turns true.
/// With a `token`, a scrape needs `Authorization: Bearer <token>` (401 otherwise), as every
/// call of the gRPC service does. A connection lives at most 30 s.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    metrics: std::sync::Arc<Metrics>,
    token: Option<std::sync::Arc<String>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    loop {
        let accepted = tokio::select! {
            accepted = crate::conn::accept(&listener, "metrics endpoint") => accepted,
            _ = stop.changed() => return,
        };
        let Some(stream) = accepted else { continue };
        let (metrics, token) = (metrics.clone(), token.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let authorized = token.as_ref().is_none_or(|t| {
                    let given = req.headers().get("authorization").map(|v| v.as_bytes()).unwrap_or_default();
                    crate::token::bearer_matches(given, t)
                });
                let (status, body) = if !authorized {
                    metrics.unauthenticated();
                    (hyper::StatusCode::UNAUTHORIZED, "a valid bearer token is required\n".to_string())
                } else if req.uri().path() == "/metrics" {
                    (hyper::StatusCode::OK, metrics.render())
                } else {
                    (hyper::StatusCode::NOT_FOUND, "only /metrics is served here\n".to_string())
                };
                let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
                *response.status_mut() = status;
                response
                    .headers_mut()
                    .insert("content-type", hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"));
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(io, service);
            match tokio::time::timeout(Duration::from_secs(30), conn).await {
                Ok(Err(e)) => tracing::debug!(error = %e, "metrics connection ended"),
                Err(_) => tracing::debug!("metrics connection closed after 30 s"),
                Ok(Ok(())) => {}
            }
        });
    }
}
