//! The server's connections, bounded before tonic sees them: how many there are, how long a
//! client may take to start HTTP/2 (or TLS), and how long a connection may stay open with no call
//! in flight.
//!
//! - At `max_connections`, a new connection takes the slot of the oldest one still waiting for
//!   its handshake (a silent socket), so a flood of them cannot lock out a client that speaks at
//!   once; when every slot holds an established connection, the new one is closed as soon as it
//!   is accepted (the client gets `UNAVAILABLE` and can try another replica). When the process
//!   is out of file descriptors, accepting pauses instead of spinning.
//! - A connection must send the 24-byte HTTP/2 preface (or, with TLS, a TLS record header)
//!   within `handshake_timeout`, or it is closed without ever reaching tonic; the TLS handshake
//!   itself has the same timeout.
//! - A connection with no call in flight for `idle_timeout` is closed. Calls are counted per
//!   connection by [`TrackCalls`], from the request until its answer's body is sent, so a long
//!   convolution never makes its connection idle, and pings do not keep an idle one alive.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot};
use tonic::codegen::http;
use tonic::transport::server::{Connected, TlsConnectInfo};

/// The connection limits of a server.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Connections waiting for their handshake, oldest first: an id and the sender that evicts it.
type Pending = VecDeque<(u64, oneshot::Sender<()>)>;

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the server knows of one connection while it lives.
#[derive(Debug)]
pub(crate) struct ConnState {
    /// Calls in flight.
    active: AtomicUsize,
    /// When the last call ended (or the connection opened), in ms since `epoch`.
    idle_since_ms: AtomicU64,
    epoch: Instant,
    /// Set by the watchdog: the connection is to be closed.
    closed: AtomicBool,
    /// The reader to wake when `closed` is set.
    waker: Mutex<Option<Waker>>,
}

impl ConnState {
    fn new() -> Self {
        Self {
            active: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            closed: AtomicBool::new(false),
            waker: Mutex::new(None),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Counts a call until the returned guard is dropped.
    fn begin(self: &Arc<Self>) -> CallGuard {
        self.active.fetch_add(1, Ordering::SeqCst);
        CallGuard(self.clone())
    }

    fn idle_for(&self) -> Option<Duration> {
        if self.active.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let since = self.idle_since_ms.load(Ordering::SeqCst);
        Some(Duration::from_millis(self.now_ms().saturating_sub(since)))
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        if let Some(w) = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            w.wake();
        }
    }
}

/// One call in flight on a connection.
pub(crate) struct CallGuard(Arc<ConnState>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.idle_since_ms.store(self.0.now_ms(), Ordering::SeqCst);
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What tonic puts in every request's extensions for a [`Conn`].
#[derive(Clone, Debug)]
pub(crate) struct ConnInfo {
    state: Arc<ConnState>,
}

/// An accepted TCP connection that holds its slot among `max_connections` and closes itself
/// when its watchdog says so.
pub(crate) struct Conn {
    stream: TcpStream,
    state: Arc<ConnState>,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo { state: self.state.clone() }
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.state.closed.load(Ordering::SeqCst) {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "idle connection closed")));
        }
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if polled.is_pending() {
            *self.state.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
            // The watchdog may have closed the connection between the check and the store.
            if self.state.closed.load(Ordering::SeqCst) {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "idle connection closed")));
            }
        }
        polled
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The connections of `listener` that passed the limits, as a stream for tonic. The accept loop
/// runs until the stream is dropped.
pub(crate) fn incoming(
    listener: TcpListener,
    limits: Limits,
    tls: bool,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Connections still waiting for their handshake, oldest first, each with the means to
    // evict it: at the limit, a new connection takes the slot of the oldest silent one, so
    // that a flood of silent sockets cannot lock out a client that speaks at once.
    let pending: Arc<Mutex<Pending>> = Arc::default();
    tokio::spawn(async move {
        for id in 0u64.. {
            let accepted = tokio::select! {
                accepted = accept(&listener, "gRPC") => accepted,
                () = tx.closed() => return,
            };
            let Some(stream) = accepted else { continue };
            let slot = match slots.clone().try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) => {
                    let oldest = pending.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                    match oldest {
                        Some((_, evict)) => {
                            let _ = evict.send(());
                            // The evicted task drops its slot at once.
                            tokio::time::timeout(Duration::from_millis(100), slots.clone().acquire_owned())
                                .await
                                .ok()
                                .and_then(Result::ok)
                        }
                        None => None,
                    }
                }
            };
            let Some(slot) = slot else {
                tracing::warn!(max = limits.max_connections, "connection refused: too many open connections");
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (evict, evicted) = oneshot::channel();
            pending.lock().unwrap_or_else(|e| e.into_inner()).push_back((id, evict));
            let (tx, pending) = (tx.clone(), pending.clone());
            tokio::spawn(async move {
                let handshake = tokio::select! {
                    done = await_preface(&stream, limits.handshake_timeout, tls) => done,
                    _ = evicted => Err("evicted for a new connection at the limit"),
                };
                pending.lock().unwrap_or_else(|e| e.into_inner()).retain(|(p, _)| *p != id);
                if let Err(why) = handshake {
                    tracing::debug!(peer = ?stream.peer_addr().ok(), why, "connection closed before its handshake");
                    return;
                }
                let state = Arc::new(ConnState::new());
                tokio::spawn(watchdog(Arc::downgrade(&state), limits.idle_timeout));
                let _ = tx.send(Ok(Conn { stream, state, _slot: slot })).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The next connection of `listener`, or `None` after a pause when accepting failed (out of
/// file descriptors, typically: the pause keeps an accept loop from spinning).
pub(crate) async fn accept(listener: &TcpListener, what: &str) -> Option<TcpStream> {
    match listener.accept().await {
        Ok((stream, _)) => Some(stream),
        Err(e) => {
            tracing::warn!(error = %e, "{what}: accept failed");
            tokio::time::sleep(Duration::from_millis(100)).await;
            None
        }
    }
}

/// Waits, without consuming anything, until the connection has sent the HTTP/2 preface (or a
/// TLS handshake record's header).
async fn await_preface(stream: &TcpStream, timeout: Duration, tls: bool) -> Result<(), &'static str> {
    let need = if tls { 5 } else { PREFACE.len() };
    let wait = async {
        let mut buf = [0u8; PREFACE.len()];
        loop {
            let n = stream.peek(&mut buf).await.map_err(|_| "read error")?;
            if n == 0 {
                return Err("closed by the peer");
            }
            let seen = &buf[..n.min(need)];
            let ok = if tls { seen[0] == 0x16 } else { PREFACE.starts_with(seen) };
            if !ok {
                return Err(if tls { "not a TLS handshake" } else { "not HTTP/2" });
            }
            if n >= need {
                return Ok(());
            }
            // Part of it: peek returns at once while those bytes wait, so pause.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(timeout, wait).await.map_err(|_| "handshake timeout")?
}

/// Closes the connection once it has had no call in flight for `idle`; ends with it.
async fn watchdog(state: std::sync::Weak<ConnState>, idle: Duration) {
    let tick = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        tokio::time::sleep(tick).await;
        let Some(state) = state.upgrade() else { return };
        if state.idle_for().is_some_and(|d| d >= idle) {
            tracing::debug!(seconds = idle.as_secs_f64(), "closing an idle connection");
            state.close();
            return;
        }
    }
}

/// A tower layer that counts each request as a call of its connection until its answer's body
/// has been sent.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TrackCallsLayer;

impl<S> tower::Layer<S> for TrackCallsLayer {
    type Service = TrackCalls<S>;

    fn layer(&self, inner: S) -> TrackCalls<S> {
        TrackCalls(inner)
    }
}

/// See [`TrackCallsLayer`].
#[derive(Clone, Debug)]
pub(crate) struct TrackCalls<S>(S);

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for TrackCalls<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Tracked<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let ext = req.extensions();
        let state = ext
            .get::<ConnInfo>()
            .or_else(|| ext.get::<TlsConnectInfo<ConnInfo>>().map(TlsConnectInfo::get_ref))
            .map(|c| c.state.clone());
        let guard = state.map(|s| s.begin());
        let future = self.0.call(req);
        Box::pin(async move {
            let response = future.await?;
            Ok(response.map(|body| Tracked { body, _guard: guard }))
        })
    }
}

/// A response body that keeps its call counted until it is sent or dropped.
pub(crate) struct Tracked<B> {
    body: B,
    _guard: Option<CallGuard>,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
