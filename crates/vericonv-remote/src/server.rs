//! The cloud's side: a tonic service around any [`CloudBackend`].
//!
//! - Kernels are registered once and kept in a cache bounded in bytes (least recently used
//!   first out); apart from it the server is stateless, so replicas are interchangeable.
//! - A semaphore bounds the convolutions running at once; past the bound a call is answered
//!   `RESOURCE_EXHAUSTED` at once instead of queueing.
//! - Requests are bounded in size (`RESOURCE_EXHAUSTED` past the limit) and in time (every
//!   call has a deadline).
//! - With a token, every call of the `Cloud` service needs `authorization: Bearer <token>`,
//!   compared in constant time; the health service stays open for load balancers.
//! - Logs never contain tensor contents: only shapes, handles, durations and outcomes.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};
use vericonv::Error;
use vericonv::ShareSeed;
use vericonv::{CloudBackend, SessionKernel};

use crate::RemoteError;
use crate::metrics::Metrics;
use crate::proto;
use crate::proto::cloud_server::{Cloud, CloudServer};
use crate::proto::conv_request::Input;
use crate::wire::{KernelHandle, decode_elements, encode_elements, geometry_from_proto};

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Convolutions that may run at once (default 4).
    pub max_concurrent: usize,
    /// The largest request or reply, in bytes (default 512 MiB: a VGG-16/224 activation at
    /// batch 16 is 205 MB).
    pub max_message_bytes: usize,
    /// The kernel cache's capacity, in bytes of `K'` (default 1 GiB).
    pub kernel_cache_bytes: usize,
    /// The largest tensor a `ConvStream` call may send or receive, in bytes (default 2 GiB).
    pub max_tensor_bytes: usize,
    /// The bearer token every `Cloud` call must carry, if any.
    pub token: Option<String>,
    /// The longest any call may take on the server (default 300 s); a client's own, shorter
    /// `grpc-timeout` applies too.
    pub request_timeout: Duration,
    /// Open connections at most (default 256); past it, new ones are closed at once.
    pub max_connections: usize,
    /// How long a new connection may take to start HTTP/2 or TLS (default 10 s).
    pub handshake_timeout: Duration,
    /// How long a connection may stay open with no call in flight (default 120 s).
    pub idle_timeout: Duration,
    /// The HTTP/2 ping interval while calls run; a peer that leaves a ping unanswered as long
    /// again is dropped (default 30 s).
    pub keepalive: Duration,
    /// After the shutdown signal, how long the calls in flight may take to finish before the
    /// server stops anyway (default 30 s).
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_concurrent: 4,
            max_message_bytes: 512 << 20,
            kernel_cache_bytes: 1 << 30,
            max_tensor_bytes: 2 << 30,
            token: None,
            request_timeout: Duration::from_secs(300),
            max_connections: 256,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            keepalive: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Registered kernels, least recently used first out, bounded in bytes.
struct KernelCache {
    capacity: usize,
    used: usize,
    kernels: HashMap<KernelHandle, SessionKernel>,
    order: VecDeque<KernelHandle>,
}

impl KernelCache {
    fn get(&mut self, h: &KernelHandle) -> Option<SessionKernel> {
        let found = self.kernels.get(h).cloned()?;
        self.order.retain(|x| x != h);
        self.order.push_back(*h);
        Some(found)
    }

    /// Stores a kernel, evicting the least recently used ones to make room.
    fn insert(&mut self, h: KernelHandle, kernel: SessionKernel) -> Result<(), Status> {
        let bytes = kernel.data().len() * 4;
        if bytes > self.capacity {
            return Err(Status::resource_exhausted(format!(
                "the kernel is {bytes} bytes; this server's kernel cache holds {} bytes",
                self.capacity
            )));
        }
        if self.kernels.contains_key(&h) {
            self.get(&h);
            return Ok(());
        }
        while self.used + bytes > self.capacity {
            let Some(old) = self.order.pop_front() else { break };
            if let Some(k) = self.kernels.remove(&old) {
                self.used -= k.data().len() * 4;
            }
        }
        self.used += bytes;
        self.kernels.insert(h, kernel);
        self.order.push_back(h);
        Ok(())
    }
}

/// The `Cloud` service.
pub struct CloudService {
    backend: Arc<dyn CloudBackend>,
    cache: Mutex<KernelCache>,
    permits: Arc<Semaphore>,
    cfg: ServerConfig,
    metrics: Arc<Metrics>,
}

impl CloudService {
    /// A service that runs every convolution on `backend`.
    pub fn new(backend: Arc<dyn CloudBackend>, cfg: ServerConfig, metrics: Arc<Metrics>) -> Self {
        let cache =
            KernelCache { capacity: cfg.kernel_cache_bytes, used: 0, kernels: HashMap::new(), order: VecDeque::new() };
        Self { backend, cache: Mutex::new(cache), permits: Arc::new(Semaphore::new(cfg.max_concurrent)), cfg, metrics }
    }

    /// The tonic server of this service, with the message limits and the token check.
    pub fn into_server(self) -> tonic::service::interceptor::InterceptedService<CloudServer<Self>, TokenCheck> {
        let limit = self.cfg.max_message_bytes;
        let check = TokenCheck { token: self.cfg.token.clone().map(Arc::new), metrics: self.metrics.clone() };
        let server = CloudServer::new(self).max_decoding_message_size(limit).max_encoding_message_size(limit);
        tonic::service::interceptor::InterceptedService::new(server, check)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, KernelCache> {
        // A panic while holding the lock cannot leave the cache inconsistent in a way that
        // matters: the worst case is a kernel to register again.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The bearer-token check in front of every `Cloud` call.
#[derive(Clone)]
pub struct TokenCheck {
    token: Option<Arc<String>>,
    metrics: Arc<Metrics>,
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.token else { return Ok(req) };
        let given = req.metadata().get("authorization").map(|v| v.as_bytes()).unwrap_or_default();
        if crate::token::bearer_matches(given, token) {
            Ok(req)
        } else {
            self.metrics.unauthenticated();
            Err(Status::unauthenticated("a valid bearer token is required"))
        }
    }
}

/// The gRPC status for an error of the backend or of a decoder.
pub fn status_of(e: &Error) -> Status {
    match e {
        Error::LengthMismatch { .. }
        | Error::NotAFieldElement { .. }
        | Error::ZeroDimension { .. }
        | Error::GroupsMismatch { .. }
        | Error::KernelLargerThanInput { .. }
        | Error::TooLarge { .. } => Status::invalid_argument(e.to_string()),
        Error::Backend { exhausted: true, .. } => Status::resource_exhausted(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

/// `INVALID_ARGUMENT` for a request that does not decode.
fn malformed(e: RemoteError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// `RESOURCE_EXHAUSTED` for an allocation of `bytes` that failed.
fn out_of_memory(bytes: usize) -> Status {
    Status::resource_exhausted(format!("this server cannot allocate {bytes} bytes now; retry later"))
}

/// The answer stream of `ConvStream`.
type ChunkStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<proto::ConvChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Cloud for CloudService {
    type ConvStreamStream = ChunkStream;

    async fn conv_stream(
        &self,
        req: Request<tonic::Streaming<proto::ConvChunk>>,
    ) -> Result<Response<Self::ConvStreamStream>, Status> {
        let start = Instant::now();
        // The input is read first: a stream that never completes it holds no slot.
        let result = async {
            let request = self.read_stream(req.into_inner()).await?;
            let permit = self.permit()?;
            self.conv_inner(request, self.cfg.max_tensor_bytes, permit).await
        }
        .await;
        if let Ok(reply) = &result {
            self.metrics.bytes_out(reply.output.len());
        }
        self.metrics.finished("ConvStream", &result, start.elapsed());
        let output = result?.output;
        // Answer chunks of at most half the message limit.
        let chunk = (self.cfg.max_message_bytes / 2).max(4) / 4 * 4;
        let chunks: Vec<Result<proto::ConvChunk, Status>> = output
            .chunks(chunk)
            .map(|c| Ok(proto::ConvChunk { data: c.to_vec(), ..proto::ConvChunk::default() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn info(&self, _: Request<proto::InfoRequest>) -> Result<Response<proto::InfoReply>, Status> {
        Ok(Response::new(proto::InfoReply {
            backend: self.backend.name(),
            version: env!("CARGO_PKG_VERSION").into(),
            max_message_bytes: self.cfg.max_message_bytes as u64,
            max_concurrent: self.cfg.max_concurrent as u32,
            kernel_cache_bytes: self.cfg.kernel_cache_bytes as u64,
        }))
    }

    async fn register_kernel(
        &self,
        req: Request<proto::RegisterKernelRequest>,
    ) -> Result<Response<proto::RegisterKernelReply>, Status> {
        let start = Instant::now();
        let req = req.into_inner();
        self.metrics.kernel_bytes_in(req.kernel.len());
        let result = (|| {
            let geom = req.geometry.as_ref().ok_or_else(|| Status::invalid_argument("no geometry"))?;
            let geom = geometry_from_proto(geom).map_err(malformed)?;
            let kernel = decode_elements(&req.kernel, geom.kernel_len(), "kernel").map_err(malformed)?;
            let handle = KernelHandle::of(&geom, &kernel);
            // The backend keeps kernels by the id: the first 128 bits of the content hash.
            let id = u128::from_le_bytes(handle.as_bytes()[..16].try_into().unwrap_or_default());
            let kernel = SessionKernel::new(id, geom, kernel).map_err(|e| status_of(&e))?;
            self.cache().insert(handle, kernel)?;
            tracing::info!(
                ?handle,
                cin = geom.cin(),
                cout = geom.cout(),
                h = geom.h(),
                w = geom.w(),
                "kernel registered"
            );
            Ok(proto::RegisterKernelReply { handle: handle.as_bytes().to_vec() })
        })();
        self.metrics.finished("RegisterKernel", &result, start.elapsed());
        result.map(Response::new)
    }

    async fn conv(&self, req: Request<proto::ConvRequest>) -> Result<Response<proto::ConvReply>, Status> {
        let start = Instant::now();
        let permit = match self.permit() {
            Ok(p) => p,
            Err(busy) => {
                let busy = Err(busy);
                self.metrics.finished("Conv", &busy, start.elapsed());
                return busy;
            }
        };
        let req = req.into_inner();
        let result = self.conv_inner(req, self.cfg.max_message_bytes, permit).await;
        if let Ok(reply) = &result {
            self.metrics.bytes_out(reply.output.len());
        }
        self.metrics.finished("Conv", &result, start.elapsed());
        result.map(Response::new)
    }
}

impl CloudService {
    /// A slot among the `max_concurrent`, or `RESOURCE_EXHAUSTED` at once.
    fn permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{} convolutions are running, the most this server runs at once; retry later",
                self.cfg.max_concurrent
            ))
        })
    }

    /// Reads a chunked request: its first chunk names the kernel, and the data may not exceed
    /// what the kernel's geometry and the batch announce, nor `max_tensor_bytes`.
    async fn read_stream(&self, mut chunks: tonic::Streaming<proto::ConvChunk>) -> Result<proto::ConvRequest, Status> {
        let first = chunks.message().await?.ok_or_else(|| Status::invalid_argument("an empty stream"))?;
        let handle = KernelHandle::from_bytes(&first.handle).map_err(malformed)?;
        let kernel = self.cache().get(&handle).ok_or_else(|| {
            self.metrics.cache_miss();
            Status::not_found(format!("unknown kernel {handle:?}: register it first"))
        })?;
        if !first.share_seed.is_empty() {
            return Ok(proto::ConvRequest {
                handle: first.handle,
                batch: first.batch,
                input: Some(Input::ShareSeed(first.share_seed)),
            });
        }
        let expected = usize::try_from(first.batch)
            .ok()
            .and_then(|b| b.checked_mul(kernel.geometry().image_len()))
            .and_then(|n| n.checked_mul(4))
            .filter(|&n| n <= self.cfg.max_tensor_bytes)
            .ok_or_else(|| {
                Status::resource_exhausted(format!(
                    "batch {} of this layer exceeds the server's tensor limit of {} bytes",
                    first.batch, self.cfg.max_tensor_bytes
                ))
            })?;
        // Grown as data arrives: a first chunk that announces a large batch allocates nothing.
        // The input is complete when the announced bytes are in; the call starts then, whether
        // or not the client has closed its side.
        let mut data = first.data;
        while data.len() < expected {
            match chunks.message().await? {
                Some(c) if c.data.len() <= expected - data.len() => {
                    data.try_reserve(c.data.len()).map_err(|_| out_of_memory(c.data.len()))?;
                    data.extend_from_slice(&c.data);
                }
                Some(c) => {
                    return Err(Status::invalid_argument(format!(
                        "the stream carried at least {} bytes of input, the layer and batch need {expected}",
                        data.len() + c.data.len()
                    )));
                }
                None => break,
            }
        }
        if data.len() != expected {
            return Err(Status::invalid_argument(format!(
                "the stream carried {} bytes of input, the layer and batch need {expected}",
                data.len()
            )));
        }
        Ok(proto::ConvRequest { handle: first.handle, batch: first.batch, input: Some(Input::Tensor(data)) })
    }

    /// One convolution, its input and answer each at most `limit` bytes (checked before
    /// anything is allocated, in the seed form too). `permit` is held until the computation
    /// ends, even when the call's deadline drops this future first.
    async fn conv_inner(
        &self,
        req: proto::ConvRequest,
        limit: usize,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<proto::ConvReply, Status> {
        let handle = KernelHandle::from_bytes(&req.handle).map_err(malformed)?;
        let Some(kernel) = self.cache().get(&handle) else {
            self.metrics.cache_miss();
            return Err(Status::not_found(format!("unknown kernel {handle:?}: register it first")));
        };
        self.metrics.cache_hit();
        let batch = usize::try_from(req.batch)
            .ok()
            .filter(|&b| b > 0)
            .ok_or_else(|| Status::invalid_argument(format!("batch = {}: at least 1 image", req.batch)))?;
        let geom = *kernel.geometry();
        let in_len = batch
            .checked_mul(geom.image_len())
            .ok_or_else(|| Status::invalid_argument(format!("batch = {batch} overflows the input size")))?;
        // The seed form expands to the same tensor: the same limit applies.
        if in_len.checked_mul(4).is_none_or(|n| n > limit) {
            return Err(Status::resource_exhausted(format!(
                "the input for {batch} images of this layer ({in_len} field elements) would exceed this server's limit of {limit} bytes"
            )));
        }
        let out_bytes = batch.checked_mul(geom.output_image_len()).and_then(|n| n.checked_mul(4));
        if out_bytes.is_none_or(|n| n > limit) {
            return Err(Status::resource_exhausted(format!(
                "the answer for {batch} images would exceed this server's limit of {limit} bytes"
            )));
        }
        enum Job {
            Tensor(Vec<u32>),
            Seed(ShareSeed),
        }
        let job = match req.input {
            Some(Input::Tensor(bytes)) => {
                self.metrics.input_bytes_in(bytes.len());
                Job::Tensor(decode_elements(&bytes, in_len, "input").map_err(malformed)?)
            }
            Some(Input::ShareSeed(bytes)) => {
                self.metrics.input_bytes_in(bytes.len());
                let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    Status::invalid_argument(format!("share seed of {} bytes, 32 expected", bytes.len()))
                })?;
                Job::Seed(ShareSeed::from_bytes(seed))
            }
            None => return Err(Status::invalid_argument("no input tensor or share seed")),
        };
        let backend = self.backend.clone();
        let started = Instant::now();
        let y = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            match job {
                Job::Tensor(x) => backend.conv_session(&kernel, batch, &x),
                Job::Seed(seed) => backend.conv_share_session(&kernel, batch, &seed),
            }
        })
        .await
        .map_err(|e| Status::internal(format!("the convolution task failed: {e}")))?
        .map_err(|e| status_of(&e))?;
        tracing::info!(?handle, batch, seconds = started.elapsed().as_secs_f64(), "convolution done");
        Ok(proto::ConvReply { output: encode_elements(&y) })
    }
}
