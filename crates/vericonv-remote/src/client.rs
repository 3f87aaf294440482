//! The client's side: [`RemoteBackend`], a [`CloudBackend`] over gRPC.
//!
//! - `K'` is uploaded once per kernel and server, then referenced by its handle.
//! - `UNAVAILABLE` (a server down or restarting) or a connection cut mid-call moves to the next
//!   replica at once, and takes the failed one out of rotation for a back-off period (1 s,
//!   doubling with each failure in a row up to 30 s); `NOT_FOUND` (a replica that lost or never
//!   had the kernel) registers it again. Attempts are bounded. Everything else,
//!   `RESOURCE_EXHAUSTED` and deadlines included, is returned at once as [`RemoteError`].
//! - Transport (docs/scheme.md §15): plaintext `grpc://` only to hosts that resolve to loopback
//!   addresses, and then to the resolved address itself; any other host needs `grpcs://`
//!   unless [`RemoteOptions::allow_plaintext`] opts out, which logs a warning on every
//!   connection. The check runs before anything is sent.
//! - It never retries on a wrong answer: it cannot tell one. The client verifies every answer
//!   above it, reports a failure and counts it.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::RemoteError;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};
use vericonv::Conv2d;
use vericonv::{CallInput, CallKernel, CloudBackend, ConvCall, KernelRef, SessionKernel, replace_zeroized};
use vericonv::{Error, Result};

use crate::proto;
use crate::proto::cloud_client::CloudClient;
use crate::proto::conv_request::Input;
use crate::wire::{KernelHandle, encode_elements, geometry_to_proto};

/// How a [`RemoteBackend`] connects and retries.
#[derive(Clone)]
pub struct RemoteOptions {
    /// The bearer token the servers require, if any.
    pub token: Option<String>,
    /// A PEM CA certificate for `grpcs://` servers whose certificate the system does not trust.
    pub tls_ca: Option<Vec<u8>>,
    /// The deadline of each call (default 120 s).
    pub timeout: Duration,
    /// How long to wait for a connection (default 5 s).
    pub connect_timeout: Duration,
    /// Attempts per call across replicas, for `UNAVAILABLE` and `NOT_FOUND` (default 4).
    pub attempts: usize,
    /// The first backoff; it doubles with each attempt (default 50 ms).
    pub backoff: Duration,
    /// The largest request or reply message, in bytes (default 512 MiB).
    pub max_message_bytes: usize,
    /// Calls whose input or answer exceeds this many bytes go through `ConvStream`, in chunks
    /// of `chunk_bytes` (default 4 MiB: what proxies and tonic accept by default).
    pub stream_above: usize,
    /// The chunk size of `ConvStream`, in bytes (default 1 MiB).
    pub chunk_bytes: usize,
    /// Allow plaintext `grpc://` to hosts that are not loopback (default `false`): masked
    /// tensors, shares, seeds and the token then cross the network readable by anyone on the
    /// path. Every connection made so logs a warning.
    pub allow_plaintext: bool,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        Self {
            token: None,
            tls_ca: None,
            timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(5),
            attempts: 4,
            backoff: Duration::from_millis(50),
            max_message_bytes: 512 << 20,
            stream_above: 4 << 20,
            chunk_bytes: 1 << 20,
            allow_plaintext: false,
        }
    }
}

impl RemoteOptions {
    /// The default options with the bearer token read from `token_file`
    /// ([`crate::read_token`]) and the PEM CA certificate from `tls_ca`, and `allow_plaintext`.
    ///
    /// # Errors
    /// [`RemoteError::File`] for a file that cannot be read or a bad token
    /// ([`crate::read_token`]).
    pub fn from_files(
        token_file: Option<&std::path::Path>,
        tls_ca: Option<&std::path::Path>,
        allow_plaintext: bool,
    ) -> Result<Self> {
        Ok(Self {
            token: token_file.map(crate::read_token).transpose()?,
            tls_ca: tls_ca
                .map(|p| std::fs::read(p).map_err(|e| RemoteError::file(p, "cannot read the CA certificate", Some(e))))
                .transpose()?,
            allow_plaintext,
            ..Self::default()
        })
    }
}

impl std::fmt::Debug for RemoteOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteOptions")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// One replica.
struct Replica {
    url: String,
    /// Where its URL led when the backend was made.
    target: Target,
    client: CloudClient<Channel>,
    /// Out of rotation until this instant, after this many failures in a row.
    down: Mutex<(Option<Instant>, u32)>,
}

impl Replica {
    fn is_down(&self, now: Instant) -> bool {
        self.down.lock().unwrap_or_else(|e| e.into_inner()).0.is_some_and(|until| now < until)
    }

    /// Takes the replica out of rotation: 1 s after its first failure in a row, doubling up
    /// to 30 s.
    fn mark_down(&self) {
        let mut down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        let period = Duration::from_secs(1).saturating_mul(1 << down.1.min(5)).min(Duration::from_secs(30));
        *down = (Some(Instant::now() + period), down.1.saturating_add(1));
        tracing::warn!(replica = %self.url, seconds = period.as_secs(), "replica unreachable: out of rotation");
    }

    fn mark_up(&self) {
        *self.down.lock().unwrap_or_else(|e| e.into_inner()) = (None, 0);
    }
}

/// A cloud made of one or more interchangeable gRPC replicas.
pub struct RemoteBackend {
    replicas: Vec<Replica>,
    opts: RemoteOptions,
    runtime: tokio::runtime::Runtime,
    registered: Mutex<HashSet<(usize, KernelHandle)>>,
    /// The handle of each session kernel, hashed once per session.
    handles: Mutex<HashMap<u128, (KernelRef, KernelHandle)>>,
    next: AtomicUsize,
    retries: AtomicUsize,
}

impl std::fmt::Debug for RemoteBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteBackend").field("endpoints", &self.name()).finish_non_exhaustive()
    }
}

/// Where a cloud URL leads, resolved before anything is sent to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `host:port` as written in the URL.
    pub authority: String,
    /// Whether the URL asks for TLS (`grpcs://`).
    pub tls: bool,
    /// The socket addresses the host resolved to.
    pub addrs: Vec<SocketAddr>,
}

impl Target {
    /// Parses `grpc://HOST:PORT` or `grpcs://HOST:PORT` and resolves its host (an IP literal or
    /// a name from the resolver: nothing is sent to the host itself).
    ///
    /// # Errors
    /// [`RemoteError`] (`InvalidArgument`) for a malformed URL, (`Unavailable`) for a host
    /// that does not resolve.
    pub fn resolve(url: &str) -> Result<Self> {
        let bad = |code: &str, why: String| {
            Error::from(RemoteError::Call { endpoint: url.into(), code: code.into(), message: why })
        };
        let (rest, tls) = match url.split_once("://") {
            Some(("grpc", rest)) => (rest, false),
            Some(("grpcs", rest)) => (rest, true),
            _ => return Err(bad("InvalidArgument", "expected grpc://HOST:PORT or grpcs://HOST:PORT".into())),
        };
        if rest.is_empty() || rest.contains('/') || !rest.contains(':') {
            return Err(bad("InvalidArgument", "expected grpc://HOST:PORT or grpcs://HOST:PORT".into()));
        }
        let addrs: Vec<SocketAddr> =
            rest.to_socket_addrs().map_err(|e| bad("Unavailable", format!("cannot resolve `{rest}`: {e}")))?.collect();
        if addrs.is_empty() {
            return Err(bad("Unavailable", format!("`{rest}` resolves to no address")));
        }
        Ok(Self { authority: rest.to_string(), tls, addrs })
    }

    /// Whether every address is a loopback one.
    pub fn is_loopback(&self) -> bool {
        self.addrs.iter().all(|a| a.ip().is_loopback())
    }

    /// The transport rule of docs/scheme.md §15, decided before any connection: plaintext only
    /// to loopback, unless `allow_plaintext`. Returns the URL tonic connects to: for plaintext,
    /// the resolved loopback address itself, so that a name cannot be re-resolved elsewhere.
    ///
    /// # Errors
    /// [`RemoteError`] (`FailedPrecondition`) for plaintext to a host that is not loopback.
    pub fn connect_url(&self, allow_plaintext: bool) -> Result<String> {
        if self.tls {
            return Ok(format!("https://{}", self.authority));
        }
        if self.is_loopback() {
            return Ok(format!("http://{}", self.addrs[0]));
        }
        if !allow_plaintext {
            return Err(Error::from(RemoteError::Call {
                endpoint: format!("grpc://{}", self.authority),
                code: "FailedPrecondition".into(),
                message: format!(
                    "plaintext gRPC to a host that is not loopback ({}) would expose masked tensors, shares and the token to the network: use grpcs:// (or opt out explicitly, at your own risk)",
                    self.addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                ),
            }));
        }
        tracing::warn!(endpoint = %self.authority, "plaintext gRPC to a host that is not loopback: masked tensors, shares and the token cross the network unencrypted");
        Ok(format!("http://{}", self.authority))
    }

    /// Whether the two targets lead to a common socket address (the same cloud).
    pub fn same_socket(&self, other: &Target) -> bool {
        self.addrs.iter().any(|a| other.addrs.contains(a))
    }
}

/// The first URL of `a` that leads to the same socket address as one of `b`: one cloud that
/// would receive both shares in a two-cloud mode.
///
/// # Errors
/// As [`Target::resolve`].
pub fn same_cloud(a: &[String], b: &[String]) -> Result<Option<String>> {
    let b = b.iter().map(|u| Target::resolve(u)).collect::<Result<Vec<_>>>()?;
    for url in a {
        let t = Target::resolve(url)?;
        if b.iter().any(|o| o.same_socket(&t)) {
            return Ok(Some(url.clone()));
        }
    }
    Ok(None)
}

impl RemoteBackend {
    /// A backend over the replicas `urls` (`grpc://host:port` or `grpcs://host:port`).
    /// Connections are made lazily, on the first call.
    ///
    /// # Errors
    /// [`RemoteError`] for a malformed URL, no URL at all, or a TLS setup that fails.
    pub fn connect(urls: &[String], opts: RemoteOptions) -> Result<Self> {
        if urls.is_empty() {
            return Err(Error::from(RemoteError::Call {
                endpoint: String::new(),
                code: "InvalidArgument".into(),
                message: "no server given".into(),
            }));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("vericonv-remote")
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("tokio runtime: {e}")))?;
        let mut replicas = Vec::new();
        for url in urls {
            let target = Target::resolve(url)?;
            let connect_to = target.connect_url(opts.allow_plaintext)?;
            let err = |e: &dyn std::fmt::Display| {
                Error::from(RemoteError::Call {
                    endpoint: url.clone(),
                    code: "InvalidArgument".into(),
                    message: e.to_string(),
                })
            };
            let mut endpoint = Endpoint::from_shared(connect_to)
                .map_err(|e| err(&e))?
                .timeout(opts.timeout)
                .connect_timeout(opts.connect_timeout);
            if target.tls {
                let mut cfg = ClientTlsConfig::new().with_enabled_roots();
                if let Some(ca) = &opts.tls_ca {
                    cfg = cfg.ca_certificate(tonic::transport::Certificate::from_pem(ca));
                }
                endpoint = endpoint.tls_config(cfg).map_err(|e| err(&e))?;
            }
            let channel = {
                let _guard = runtime.enter();
                endpoint.connect_lazy()
            };
            let client = CloudClient::new(channel)
                .max_decoding_message_size(opts.max_message_bytes)
                .max_encoding_message_size(opts.max_message_bytes);
            replicas.push(Replica { url: url.clone(), target, client, down: Mutex::new((None, 0)) });
        }
        Ok(Self {
            replicas,
            opts,
            runtime,
            registered: Mutex::new(HashSet::new()),
            handles: Mutex::new(HashMap::new()),
            next: AtomicUsize::new(0),
            retries: AtomicUsize::new(0),
        })
    }

    /// The endpoints, as given.
    pub fn endpoints(&self) -> impl Iterator<Item = &str> {
        self.replicas.iter().map(|r| r.url.as_str())
    }

    /// Whether the two backends share a socket address (mode two-server must refuse that: one
    /// party would see both shares).
    pub fn shares_endpoint_with(&self, other: &RemoteBackend) -> bool {
        self.replicas.iter().any(|r| other.replicas.iter().any(|o| r.target.same_socket(&o.target)))
    }

    /// The endpoints reached over plaintext although they are not loopback (only with
    /// [`RemoteOptions::allow_plaintext`]).
    pub fn plaintext_remote_endpoints(&self) -> impl Iterator<Item = &str> {
        self.replicas.iter().filter(|r| !r.target.tls && !r.target.is_loopback()).map(|r| r.url.as_str())
    }

    /// Calls retried so far (`UNAVAILABLE`, `NOT_FOUND`).
    pub fn retries(&self) -> usize {
        self.retries.load(Ordering::Relaxed)
    }

    /// The `Info` of the first replica that answers.
    ///
    /// # Errors
    /// [`RemoteError`] when none does.
    pub fn info(&self) -> Result<proto::InfoReply> {
        let mut last = None;
        for r in &self.replicas {
            match self.runtime.block_on(r.client.clone().info(self.request(proto::InfoRequest {}))) {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(s) => last = Some(remote_error(&r.url, &s)),
            }
        }
        Err(last.unwrap_or_else(|| Error::Internal("no replica".into())))
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(self.opts.timeout);
        if let Some(token) = &self.opts.token
            && let Ok(value) = format!("Bearer {token}").parse()
        {
            req.metadata_mut().insert("authorization", value);
        }
        req
    }

    fn registered(&self) -> std::sync::MutexGuard<'_, HashSet<(usize, KernelHandle)>> {
        self.registered.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The handle of a session kernel, computed on its first call.
    fn handle_of(&self, kernel: &SessionKernel) -> KernelHandle {
        let mut handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((of, handle)) = handles.get(&kernel.id())
            && of.refers_to(kernel)
        {
            return *handle;
        }
        // Ended sessions' entries go; an id drawn alike by another session is replaced.
        handles.retain(|_, (of, _)| of.is_alive());
        let handle = KernelHandle::of(kernel.geometry(), kernel.data());
        handles.insert(kernel.id(), (kernel.downgrade(), handle));
        handle
    }

    /// One convolution, with registration, retries and failover.
    fn convolve(
        &self,
        geom: &Conv2d,
        batch: usize,
        kernel: &[u32],
        handle: KernelHandle,
        input: Input,
    ) -> Result<Vec<u32>> {
        let n = self.replicas.len();
        let mut replica = self.pick(self.next.fetch_add(1, Ordering::Relaxed) % n);
        let mut last = None;
        let mut failed_over = false;
        for attempt in 0..self.opts.attempts.max(1) {
            if attempt > 0 {
                self.retries.fetch_add(1, Ordering::Relaxed);
                // Another replica is tried at once; the same one (or all of them down) after
                // a growing pause.
                if !failed_over {
                    std::thread::sleep(self.opts.backoff.saturating_mul(1 << (attempt - 1).min(10)));
                }
            }
            let r = &self.replicas[replica];
            if !self.registered().contains(&(replica, handle)) {
                let req = self.request(proto::RegisterKernelRequest {
                    geometry: Some(geometry_to_proto(geom)),
                    kernel: encode_elements(kernel),
                });
                match self.runtime.block_on(r.client.clone().register_kernel(req)) {
                    Ok(reply) if reply.get_ref().handle == handle.as_bytes() => {
                        self.registered().insert((replica, handle));
                    }
                    Ok(_) => {
                        return Err(Error::from(RemoteError::Call {
                            endpoint: r.url.clone(),
                            code: "DataLoss".into(),
                            message: "the server returned another handle than the kernel's".into(),
                        }));
                    }
                    Err(s) if lost_connection(&s) => {
                        last = Some(remote_error(&r.url, &s));
                        (replica, failed_over) = self.fail_over(replica);
                        continue;
                    }
                    Err(s) => return Err(remote_error(&r.url, &s)),
                }
            }
            match self.runtime.block_on(self.conv_once(r, handle, geom, batch, &input)) {
                Ok(output) => {
                    r.mark_up();
                    return decode_answer(&r.url, &output);
                }
                Err(s) if s.code() == Code::NotFound => {
                    // Evicted, or a replica that never saw it: register again.
                    self.registered().remove(&(replica, handle));
                    last = Some(remote_error(&r.url, &s));
                    failed_over = false;
                }
                Err(s) if lost_connection(&s) => {
                    last = Some(remote_error(&r.url, &s));
                    (replica, failed_over) = self.fail_over(replica);
                }
                Err(s) => return Err(remote_error(&r.url, &s)),
            }
        }
        Err(last.unwrap_or_else(|| Error::Internal("no attempt was made".into())))
    }

    /// The first replica from `start` on that is in rotation (`start` when none is).
    fn pick(&self, start: usize) -> usize {
        let n = self.replicas.len();
        let now = Instant::now();
        (0..n).map(|i| (start + i) % n).find(|&i| !self.replicas[i].is_down(now)).unwrap_or(start)
    }

    /// Takes `failed` out of rotation and returns the replica to try next, and whether it is
    /// another one (tried at once).
    fn fail_over(&self, failed: usize) -> (usize, bool) {
        self.replicas[failed].mark_down();
        let next = self.pick((failed + 1) % self.replicas.len());
        (next, next != failed)
    }
}

impl RemoteBackend {
    /// One `Conv` call, or a `ConvStream` one when the input or the answer is larger than
    /// `stream_above`; returns the answer's bytes.
    async fn conv_once(
        &self,
        r: &Replica,
        handle: KernelHandle,
        geom: &Conv2d,
        batch: usize,
        input: &Input,
    ) -> Result<Vec<u8>, Status> {
        let out_bytes = batch.saturating_mul(geom.output_image_len()).saturating_mul(4);
        let in_bytes = match input {
            Input::Tensor(t) => t.len(),
            Input::ShareSeed(_) => 0,
        };
        let mut client = r.client.clone();
        if in_bytes.max(out_bytes) <= self.opts.stream_above {
            let req = proto::ConvRequest {
                handle: handle.as_bytes().to_vec(),
                batch: batch as u64,
                input: Some(input.clone()),
            };
            return Ok(client.conv(self.request(req)).await?.into_inner().output);
        }
        let mut first =
            proto::ConvChunk { handle: handle.as_bytes().to_vec(), batch: batch as u64, ..Default::default() };
        let mut chunks = Vec::new();
        match input {
            Input::ShareSeed(seed) => {
                first.share_seed = seed.clone();
                chunks.push(first);
            }
            Input::Tensor(t) => {
                let step = self.opts.chunk_bytes.max(4);
                let mut parts = t.chunks(step);
                first.data = parts.next().unwrap_or_default().to_vec();
                chunks.push(first);
                chunks.extend(parts.map(|p| proto::ConvChunk { data: p.to_vec(), ..Default::default() }));
            }
        }
        let mut answer = client.conv_stream(self.request(tokio_stream::iter(chunks))).await?.into_inner();
        let mut output = Vec::new();
        while let Some(chunk) = answer.message().await? {
            if output.len() + chunk.data.len() > out_bytes {
                return Err(Status::data_loss("the answer stream is longer than the layer's output"));
            }
            output.extend_from_slice(&chunk.data);
        }
        Ok(output)
    }
}

/// The answer's field elements. Their count and range are the verifier's business: a wrong
/// count is reported by the client as a malformed answer, like any other lie.
fn decode_answer(url: &str, bytes: &[u8]) -> Result<Vec<u32>> {
    if !bytes.len().is_multiple_of(4) {
        return Err(Error::from(RemoteError::Call {
            endpoint: url.into(),
            code: "DataLoss".into(),
            message: format!("an answer of {} bytes is not a whole number of field elements", bytes.len()),
        }));
    }
    Ok(bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// `UNAVAILABLE`, or a connection cut in the middle of a call (tonic reports it as `UNKNOWN`
/// with the transport's error as its source). Both calls are pure functions of their inputs, so
/// another replica may answer them.
fn lost_connection(s: &Status) -> bool {
    s.code() == Code::Unavailable || (s.code() == Code::Unknown && std::error::Error::source(s).is_some())
}

/// A status as this crate's error: the server's message, and for a transport failure the chain of
/// its causes (`tcp connect error: Connection refused (os error 111)`), which say what to fix.
fn remote_error(url: &str, s: &Status) -> Error {
    let mut message = s.message().to_string();
    let mut cause = std::error::Error::source(s);
    while let Some(c) = cause {
        let text = c.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        cause = c.source();
    }
    Error::from(RemoteError::Call { endpoint: url.into(), code: format!("{:?}", s.code()), message })
}

impl CloudBackend for RemoteBackend {
    fn name(&self) -> String {
        self.endpoints().collect::<Vec<_>>().join(", ")
    }

    fn call(&self, call: ConvCall<'_>, out: &mut Vec<u32>) -> Result<()> {
        call.check()?;
        let (geom, kernel) = (call.geometry(), call.kernel_data());
        let handle = match call.kernel {
            CallKernel::Raw(g, k) => KernelHandle::of(g, k),
            CallKernel::Session(k) => self.handle_of(k),
        };
        let input = match call.input {
            CallInput::Tensor(t) => Input::Tensor(encode_elements(t)),
            // Cloud A gets 32 bytes instead of the expanded share.
            CallInput::Seed(seed) => Input::ShareSeed(seed.as_bytes().to_vec()),
        };
        replace_zeroized(out, self.convolve(geom, call.batch, kernel, handle, input)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gRPC code of a remote cloud's error.
    fn code(e: &Error) -> Option<&str> {
        e.backend_error::<RemoteError>().and_then(RemoteError::code)
    }

    #[test]
    fn only_grpc_and_grpcs_urls_with_a_port_are_accepted() {
        let t = Target::resolve("grpc://127.0.0.1:7000").expect("ok");
        assert_eq!((t.tls, t.connect_url(false).expect("loopback")), (false, "http://127.0.0.1:7000".into()));
        let t = Target::resolve("grpcs://192.0.2.7:443").expect("ok");
        assert_eq!(t.connect_url(false).expect("TLS anywhere"), "https://192.0.2.7:443");
        for bad in ["http://127.0.0.1:7000", "grpc://", "grpc://host", "127.0.0.1:7000", "grpc://h:1/path"] {
            assert!(Target::resolve(bad).is_err_and(|e| code(&e).is_some()), "{bad}");
        }
    }

    #[test]
    fn plaintext_goes_only_to_loopback_unless_the_user_opts_out() {
        // IP literals: resolving them sends nothing, and the decision comes before any socket.
        for url in ["grpc://192.0.2.7:7000", "grpc://10.1.2.3:7000", "grpc://[2001:db8::1]:7000", "grpc://0.0.0.0:7000"]
        {
            let t = Target::resolve(url).expect("parses");
            let err = t.connect_url(false).expect_err(url);
            assert_eq!(code(&err), Some("FailedPrecondition"), "{url}: {err}");
            assert!(err.to_string().contains("grpcs://"), "the message says what to do: {err}");
            assert_eq!(t.connect_url(true).expect("opted out"), url.replace("grpc://", "http://"));
        }
        for url in ["grpc://127.0.0.1:7000", "grpc://127.9.9.9:7000", "grpc://[::1]:7000", "grpc://localhost:7000"] {
            let t = Target::resolve(url).expect("parses");
            let connect = t.connect_url(false).expect(url);
            assert!(!connect.contains("localhost"), "plaintext goes to the resolved address itself: {connect}");
        }
        // A backend to a remote host is refused when it is made, before any connection.
        let err = RemoteBackend::connect(&["grpc://192.0.2.7:7000".into()], RemoteOptions::default())
            .expect_err("plaintext to a remote host");
        assert_eq!(code(&err), Some("FailedPrecondition"), "{err}");
    }

    #[test]
    fn urls_that_resolve_to_one_socket_are_one_cloud() {
        let same = |a: &str, b: &str| same_cloud(&[a.into()], &[b.into()]).expect("resolves").is_some();
        assert!(same("grpc://127.0.0.1:7000", "grpc://localhost:7000"));
        assert!(same("grpc://127.0.0.1:7000", "grpc://127.0.0.1:07000"));
        assert!(!same("grpc://127.0.0.1:7000", "grpc://127.0.0.1:7001"));
        assert!(!same("grpc://127.0.0.1:7000", "grpc://127.0.0.2:7000"));
    }
}
