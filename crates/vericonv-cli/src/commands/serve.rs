//! `vericonv serve`: the untrusted cloud as a gRPC server.

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::builder::TypedValueParser;
use rand::RngExt;

use vericonv::os_rng;
use vericonv::{CloudBackend, Tamper, TamperingBackend};

use super::options::*;

#[derive(clap::Args)]
pub(crate) struct ServeArgs {
    /// The address to listen on (loopback by default; use 0.0.0.0:PORT to accept other hosts).
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub(crate) listen: std::net::SocketAddr,
    /// Where the convolutions run.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub(crate) backend: BackendChoice,
    /// TLS certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); needs --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// A file holding the bearer token every client must send.
    #[arg(long)]
    pub(crate) token_file: Option<PathBuf>,
    /// Convolutions that may run at once; past that, calls get RESOURCE_EXHAUSTED at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=1024).map(usize::from))]
    pub(crate) max_concurrent: usize,
    /// The largest request or reply, in MiB.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u16).range(1..=4096).map(usize::from))]
    pub(crate) max_message_mb: usize,
    /// The largest tensor a chunked call (`ConvStream`) may send or receive, in MiB.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..=1_048_576).map(|v| v as usize))]
    pub(crate) max_tensor_mb: usize,
    /// The kernel cache's capacity, in MiB of masked kernels.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_048_576).map(|v| v as usize))]
    pub(crate) kernel_cache_mb: usize,
    /// The longest any call may run on the server, in seconds.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub(crate) timeout_s: u64,
    /// Open connections at most; past it, new ones are closed at once.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65_536).map(|v| v as usize))]
    pub(crate) max_connections: usize,
    /// Close a connection that has had no call in flight for this many seconds.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub(crate) idle_timeout_s: u64,
    /// Close a new connection that has not started HTTP/2 (or TLS) within this many seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub(crate) handshake_timeout_s: u64,
    /// Ping clients every this many seconds while their calls run; drop one that leaves a ping
    /// unanswered as long.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub(crate) keepalive_s: u64,
    /// After SIGTERM or SIGINT, let the calls in flight finish for at most this many seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3_600))]
    pub(crate) shutdown_grace_s: u64,
    /// Serve Prometheus metrics on http://ADDR/metrics (with --token-file, a scrape needs the
    /// same bearer token).
    #[arg(long)]
    pub(crate) metrics_listen: Option<std::net::SocketAddr>,
    /// Make the server lie: corrupt this fraction of answers (for demos and tests; every lie is
    /// caught by the client's verification).
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    pub(crate) tamper_rate: f64,
}

/// `vericonv serve`: the cloud as a gRPC server, until SIGINT or SIGTERM.
pub(crate) fn serve(args: &ServeArgs) -> Result<(), anyhow::Error> {
    use std::io::Write;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).try_init();
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let (backend, why) = select_backend(args.backend)?;
    let backend: std::sync::Arc<dyn CloudBackend> = if args.tamper_rate > 0.0 {
        eprintln!("warning: --tamper-rate {}: this server lies on purpose", args.tamper_rate);
        std::sync::Arc::new(TamperingBackend::new(backend, &Tamper::ALL, args.tamper_rate, os_rng().random()))
    } else {
        std::sync::Arc::from(backend)
    };
    let cfg = vericonv_remote::ServerConfig {
        max_concurrent: args.max_concurrent,
        max_message_bytes: args.max_message_mb << 20,
        kernel_cache_bytes: args.kernel_cache_mb << 20,
        max_tensor_bytes: args.max_tensor_mb << 20,
        token: args.token_file.as_deref().map(vericonv_remote::read_token).transpose()?,
        request_timeout: Duration::from_secs(args.timeout_s),
        max_connections: args.max_connections,
        idle_timeout: Duration::from_secs(args.idle_timeout_s),
        handshake_timeout: Duration::from_secs(args.handshake_timeout_s),
        keepalive: Duration::from_secs(args.keepalive_s),
        shutdown_grace: Duration::from_secs(args.shutdown_grace_s),
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(vericonv_remote::TlsIdentity { cert: read(c)?, key: read(k)? }),
        _ => None,
    };
    let scheme = if tls.is_some() { "grpcs" } else { "grpc" };
    let runtime = tokio::runtime::Runtime::new().map_err(|e| anyhow::anyhow!("tokio runtime: {e}"))?;
    let served = runtime.block_on(async {
        let bind = |addr: std::net::SocketAddr| async move {
            tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                vericonv::Error::from(vericonv_remote::RemoteError::new(
                    addr.to_string(),
                    "Unavailable",
                    format!("cannot listen: {e}"),
                ))
            })
        };
        let listener = bind(args.listen).await?;
        let metrics = match args.metrics_listen {
            Some(m) => Some(bind(m).await?),
            None => None,
        };
        // The bound addresses (port 0 picks a free one), for people and for scripts.
        let local = |l: &tokio::net::TcpListener| l.local_addr().map_or_else(|_| "?".into(), |a| a.to_string());
        let _ = writeln!(
            std::io::stdout(),
            "vericonv serve: {scheme}://{} on {} ({why}); at most {} convolutions at once, {} MiB messages, {} MiB of kernels{}",
            local(&listener),
            backend.name(),
            cfg.max_concurrent,
            args.max_message_mb,
            args.kernel_cache_mb,
            if cfg.token.is_some() { "; bearer token required" } else { "" }
        );
        if let Some(m) = &metrics {
            let _ = writeln!(std::io::stdout(), "  metrics: http://{}/metrics", local(m));
        }
        let _ = std::io::stdout().flush();
        let listen = vericonv_remote::Listen { listener, tls, metrics };
        vericonv_remote::serve(backend, cfg, listen, vericonv_remote::shutdown_signal()).await
    });
    // Past the grace period, what is left (a computation, a connection) is abandoned.
    runtime.shutdown_timeout(Duration::from_millis(500));
    served?;
    // stdout may be gone (a closed pipe): the message is not worth a failure.
    let _ = writeln!(std::io::stdout(), "vericonv serve: stopped");
    Ok(())
}
