//! # vericonv-remote
//!
//! The untrusted cloud as a network service. [`serve`] puts any
//! [`CloudBackend`] behind a gRPC server (`vericonv serve`);
//! [`RemoteBackend`] is the `CloudBackend` a client uses to call one or more such servers. The
//! client still verifies every answer before decrypting it: the network adds a trust boundary,
//! not trust.
//!
//! The protocol is `proto/vericonv.proto`: `RegisterKernel(geometry, K') → handle` once per
//! session, then `Conv(handle, batch, X' | share seed) → Y'`, and `Info`. The standard
//! `grpc.health.v1` service runs beside it.

#![warn(missing_docs)]

mod client;
mod conn;
mod error;
mod metrics;
mod server;
mod token;
mod wire;

/// The generated protobuf messages and gRPC stubs of `proto/vericonv.proto`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("vericonv.v1");
}

use std::future::Future;
use std::sync::Arc;

pub use client::{RemoteBackend, RemoteOptions, Target, same_cloud};
pub use error::RemoteError;
use metrics::Metrics;
use server::CloudService;
pub use server::ServerConfig;
pub use token::read_token;
use tonic::codegen::http;
use vericonv::CloudBackend;
use vericonv::{Error, Result};
pub use wire::{KernelHandle, decode_elements, encode_elements, geometry_from_proto, geometry_to_proto};

/// A PEM certificate chain and private key for TLS.
#[derive(Clone)]
pub struct TlsIdentity {
    /// The certificate chain, PEM.
    pub cert: Vec<u8>,
    /// The private key, PEM.
    pub key: Vec<u8>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity").field("cert", &format!("{} bytes", self.cert.len())).finish_non_exhaustive()
    }
}

/// Where and how [`serve`] listens.
#[derive(Debug)]
pub struct Listen {
    /// The gRPC socket, already bound (bind port 0 for an ephemeral one).
    pub listener: tokio::net::TcpListener,
    /// TLS, if any (rustls).
    pub tls: Option<TlsIdentity>,
    /// The socket of the Prometheus `/metrics` endpoint, if any, already bound.
    pub metrics: Option<tokio::net::TcpListener>,
}

/// tonic answers a request over its decoding limit with `OUT_OF_RANGE`; the contract of this
/// service is `RESOURCE_EXHAUSTED`, as for every other limit.
fn oversize_is_resource_exhausted<B>(mut r: http::Response<B>) -> http::Response<B> {
    let headers = r.headers();
    let oversize = headers.get("grpc-status").is_some_and(|v| v.as_bytes() == b"11")
        && headers
            .get("grpc-message")
            .is_some_and(|m| m.as_bytes().starts_with(b"Error,%20decoded%20message%20length%20too%20large"));
    if oversize {
        r.headers_mut().insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    r
}

/// HTTP/2 streams one connection may have open at once.
const MAX_STREAMS_PER_CONNECTION: u32 = 32;

/// Serves `backend` until `shutdown` resolves, then stops accepting, lets the calls in flight
/// finish for at most [`ServerConfig::shutdown_grace`], and returns.
///
/// Besides the limits of [`ServerConfig`], every connection has HTTP/2 limits: at most 32
/// concurrent streams, 16 KiB of headers, 20 pending resets (against rapid-reset floods), and
/// pings every [`ServerConfig::keepalive`], a peer that leaves one unanswered as long being
/// dropped.
///
/// # Errors
/// [`RemoteError`] when TLS is misconfigured, the token is empty, or the server fails.
pub async fn serve(
    backend: Arc<dyn CloudBackend>,
    cfg: ServerConfig,
    listen: Listen,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let endpoint = listen.listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let transport = |e: &dyn std::fmt::Display| Error::from(RemoteError::new(&endpoint, "Unavailable", e.to_string()));
    if cfg.token.as_ref().is_some_and(|t| t.trim().is_empty()) {
        return Err(transport(&"an empty bearer token would let anyone in: set a real one, or none"));
    }
    let metrics = Arc::new(Metrics::default());
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<proto::cloud_server::CloudServer<CloudService>>().await;
    let limits = conn::Limits {
        max_connections: cfg.max_connections.max(1),
        handshake_timeout: cfg.handshake_timeout,
        idle_timeout: cfg.idle_timeout,
    };
    let (timeout, grace, keepalive) = (cfg.request_timeout, cfg.shutdown_grace, cfg.keepalive);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if let Some(listener) = listen.metrics {
        let token = cfg.token.clone().map(Arc::new);
        tokio::spawn(metrics::serve_http(listener, metrics.clone(), token, stop_rx.clone()));
    }
    let service = CloudService::new(backend, cfg, metrics.clone()).into_server();
    let mut builder = tonic::transport::Server::builder()
        .timeout(timeout)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_max_header_list_size(16 << 10)
        .http2_max_pending_accept_reset_streams(Some(20))
        .http2_keepalive_interval(Some(keepalive))
        .http2_keepalive_timeout(Some(keepalive));
    if let Some(id) = &listen.tls {
        let identity = tonic::transport::Identity::from_pem(&id.cert, &id.key);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity).timeout(limits.handshake_timeout))
            .map_err(|e| transport(&e))?;
    }
    let router = builder
        .layer(conn::TrackCallsLayer)
        .layer(tower::util::MapResponseLayer::new(oversize_is_resource_exhausted))
        .add_service(health_service)
        .add_service(service);
    let incoming = conn::incoming(listen.listener, limits, listen.tls.is_some());
    let mut stopping = stop_rx.clone();
    let serving = router.serve_with_incoming_shutdown(incoming, async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    // The grace period starts with the signal; past it, the server returns even if a call or a
    // connection is still open (the caller's runtime then drops them).
    let deadline = async move {
        let _ = stopping.wait_for(|&s| s).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = serving => result.map_err(|e| transport(&e)),
        () = deadline => {
            tracing::warn!(seconds = grace.as_secs_f64(), "grace period over: stopping with calls or connections still open");
            Ok(())
        }
    }
}

/// Resolves on SIGINT or SIGTERM: the shutdown signal of `vericonv serve`.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down: finishing the calls in flight, refusing new ones");
}
