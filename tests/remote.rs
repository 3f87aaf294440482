//! The cloud as a gRPC service (`vericonv-remote`), on loopback only: whole models through one
//! and two servers, lying servers, bad requests, backpressure, failover, deadlines. Every loop
//! here is bounded in count, and every call in time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::RngExt;
use vericonv::Error;
use vericonv::Privacy;
use vericonv::ShareSeed;
use vericonv::conv_i64;
use vericonv::seeded_rng;
use vericonv::{CallInput, CloudBackend, Clouds, ConvCall, CpuBackend, Tamper, TamperingBackend};
use vericonv::{Conv2d, Padding};
use vericonv::{LayerConfig, PrivateConv};
use vericonv_model::Dataset;
use vericonv_model::{Model, PrivateConfig, PrivateExecutor};
use vericonv_model::{PlainExecutor, QuantConfig, QuantModel};
use vericonv_remote::proto::cloud_client::CloudClient;
use vericonv_remote::proto::conv_request::Input;
use vericonv_remote::proto::{self, ConvRequest, RegisterKernelRequest};
use vericonv_remote::{KernelHandle, encode_elements, geometry_to_proto};
use vericonv_remote::{Listen, RemoteBackend, RemoteError, RemoteOptions, ServerConfig};

/// The gRPC code of a remote cloud's error (`None` for any other error).
fn code(e: &Error) -> Option<&str> {
    e.backend_error::<RemoteError>().and_then(RemoteError::code)
}

/// A server on an ephemeral loopback port, stopped (gracefully) when dropped.
struct TestServer {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    fn start(backend: Arc<dyn CloudBackend>, cfg: ServerConfig) -> Self {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
                addr_tx.send(listener.local_addr().expect("addr")).expect("send");
                let listen = Listen { listener, tls: None, metrics: None };
                vericonv_remote::serve(backend, cfg, listen, async move {
                    let _ = stopped.await;
                })
                .await
                .expect("serve");
            });
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).expect("the server starts");
        Self { url: format!("grpc://{addr}"), stop: Some(stop), thread: Some(thread) }
    }

    fn cpu() -> Self {
        Self::start(Arc::new(CpuBackend::new()), ServerConfig::default())
    }

    fn client(&self) -> RemoteBackend {
        RemoteBackend::connect(std::slice::from_ref(&self.url), fast_retries()).expect("client")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn fast_retries() -> RemoteOptions {
    RemoteOptions { timeout: Duration::from_secs(30), backoff: Duration::from_millis(10), ..RemoteOptions::default() }
}

fn layer_geometry() -> Conv2d {
    Conv2d::builder(8, 16, (16, 16), (3, 3)).padding(Padding::uniform(1)).build().expect("geometry")
}

/// A random layer and batch, and the plaintext answer.
fn layer_data(seed: u64, g: &Conv2d, batch: usize) -> (Vec<i32>, Vec<i32>, Vec<i64>) {
    let mut rng = common::rng(seed);
    let k: Vec<i32> = (0..g.kernel_len()).map(|_| rng.random_range(-127..=127)).collect();
    let x: Vec<i32> = (0..batch * g.image_len()).map(|_| rng.random_range(-127..=127)).collect();
    let widen = |v: &[i32]| v.iter().map(|&a| i64::from(a)).collect::<Vec<_>>();
    let y = conv_i64(g, batch, &widen(&k), &widen(&x)).expect("plaintext");
    (k, x, y)
}

#[test]
fn whole_models_through_remote_clouds_equal_the_quantized_model_bit_for_bit() {
    let root = common::repo_root();
    let model = Model::load(root.join("models/lenet5-mnist.json")).expect("model");
    let data = Dataset::from_idx(
        "demo",
        &root.join("models/demo/mnist-t10k-16-images.idx"),
        &root.join("models/demo/mnist-t10k-16-labels.idx"),
    )
    .expect("demo images");
    let qm = QuantModel::new(&model, QuantConfig::default()).expect("quantized");
    let (plain, _) = qm.forward(data.images(), &mut PlainExecutor).expect("plaintext");
    let (a, b) = (TestServer::cpu(), TestServer::cpu());
    let (ca, cb) = (a.client(), b.client());
    let own = CpuBackend::new();
    for privacy in [Privacy::LowRank { rank: 2 }, Privacy::Pad, Privacy::TwoServer, Privacy::SplitModel] {
        let clouds = if privacy.clouds() == 2 { Clouds::Two(&ca, &cb) } else { Clouds::One(&ca) };
        let cfg = PrivateConfig { privacy, ..PrivateConfig::default() };
        let mut exec = PrivateExecutor::new(&qm, clouds, &cfg, seeded_rng(3)).expect("executor");
        exec.prepare_pads(data.len(), &own).expect("pads");
        let (logits, _) = qm.forward(data.images(), &mut exec).expect("private through gRPC");
        assert!(
            logits.iter().zip(&plain).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{}: logits differ from the quantized model",
            privacy.label()
        );
        for layer in exec.stats().filter(|l| l.outsourced) {
            assert_eq!((layer.calls, layer.verified), (1, 1), "{}: {}", privacy.label(), layer.name);
        }
    }
    assert_eq!((ca.retries(), cb.retries()), (0, 0), "no retries on healthy servers");
}

#[test]
fn every_lie_of_a_tampering_server_is_caught() {
    let g = layer_geometry();
    let (k, x, _) = layer_data(11, &g, 2);
    for strategy in Tamper::ALL {
        let lying = TamperingBackend::new(CpuBackend::new(), &[strategy], 1.0, 5);
        let server = TestServer::start(Arc::new(lying), ServerConfig::default());
        let cloud = server.client();
        let mut rng = seeded_rng(9);
        let mut layer = PrivateConv::new(g, &k, None, LayerConfig::default(), &mut rng).expect("layer");
        match layer.run(&cloud, &x, &mut rng) {
            Err(Error::VerificationFailed { .. } | Error::MalformedAnswer { .. }) => {}
            other => panic!("{strategy:?}: a lie was not caught: {:?}", other.map(|(y, _)| y.len())),
        }
    }
}

#[test]
fn bad_requests_get_their_status_and_the_server_stays_up() {
    let cfg = ServerConfig { max_message_bytes: 1 << 20, ..ServerConfig::default() };
    let server = TestServer::start(Arc::new(CpuBackend::new()), cfg);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let g = layer_geometry();
    let k = vec![1u32; g.kernel_len()];
    rt.block_on(async {
        let mut c = CloudClient::connect(server.url.replace("grpc://", "http://")).await.expect("connect");
        let status = |r: Result<tonic::Response<proto::ConvReply>, tonic::Status>| r.map(|_| ()).unwrap_err().code();
        let reg = |geometry: Option<proto::Geometry>, kernel: Vec<u8>| RegisterKernelRequest { geometry, kernel };
        // Registration: a good kernel, then a short one, a non-canonical one, a bad geometry.
        let handle = c
            .register_kernel(reg(Some(geometry_to_proto(&g)), encode_elements(&k)))
            .await
            .expect("registers")
            .into_inner()
            .handle;
        assert_eq!(handle, KernelHandle::of(&g, &k).as_bytes(), "the handle is the content hash");
        let code = |r: Result<tonic::Response<proto::RegisterKernelReply>, tonic::Status>| r.unwrap_err().code();
        let short = c.register_kernel(reg(Some(geometry_to_proto(&g)), vec![0; 12])).await;
        assert_eq!(code(short), tonic::Code::InvalidArgument);
        let mut p = encode_elements(&k);
        p[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(code(c.register_kernel(reg(Some(geometry_to_proto(&g)), p)).await), tonic::Code::InvalidArgument);
        let mut bad = geometry_to_proto(&g);
        bad.groups = 3;
        assert_eq!(code(c.register_kernel(reg(Some(bad), encode_elements(&k))).await), tonic::Code::InvalidArgument);
        bad = geometry_to_proto(&g);
        bad.in_channels = u64::MAX;
        assert_eq!(code(c.register_kernel(reg(Some(bad), vec![])).await), tonic::Code::InvalidArgument);
        assert_eq!(code(c.register_kernel(reg(None, vec![])).await), tonic::Code::InvalidArgument);
        // Convolutions.
        let conv =
            |handle: &[u8], batch: u64, input: Option<Input>| ConvRequest { handle: handle.to_vec(), batch, input };
        let x = encode_elements(&vec![2u32; g.image_len()]);
        let ok = c.conv(conv(&handle, 1, Some(Input::Tensor(x.clone())))).await.expect("a good call");
        assert_eq!(ok.into_inner().output.len(), 4 * g.output_image_len());
        assert_eq!(status(c.conv(conv(&[7; 32], 1, Some(Input::Tensor(x.clone())))).await), tonic::Code::NotFound);
        assert_eq!(
            status(c.conv(conv(&[7; 5], 1, Some(Input::Tensor(x.clone())))).await),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            status(c.conv(conv(&handle, 2, Some(Input::Tensor(x.clone())))).await),
            tonic::Code::InvalidArgument
        );
        assert_eq!(status(c.conv(conv(&handle, 0, Some(Input::Tensor(vec![])))).await), tonic::Code::InvalidArgument);
        assert_eq!(status(c.conv(conv(&handle, u64::MAX, None)).await), tonic::Code::InvalidArgument);
        let mut nc = x.clone();
        nc[8..12].copy_from_slice(&vericonv::P.to_le_bytes());
        assert_eq!(status(c.conv(conv(&handle, 1, Some(Input::Tensor(nc)))).await), tonic::Code::InvalidArgument);
        assert_eq!(
            status(c.conv(conv(&handle, 1, Some(Input::ShareSeed(vec![1; 31])))).await),
            tonic::Code::InvalidArgument
        );
        assert_eq!(status(c.conv(conv(&handle, 1, None)).await), tonic::Code::InvalidArgument);
        // Past the 1 MiB message limit, and an answer that would be.
        let big = vec![0u8; 2 << 20];
        assert_eq!(status(c.conv(conv(&handle, 512, Some(Input::Tensor(big)))).await), tonic::Code::ResourceExhausted);
        assert_eq!(status(c.conv(conv(&handle, 100, None)).await), tonic::Code::ResourceExhausted);
    });
    // Garbage and truncated frames on raw connections.
    use std::io::Write;
    let addr = server.url.trim_start_matches("grpc://").to_string();
    for junk in [&b"GET / HTTP/1.1\r\n\r\n"[..], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\xff\x04", &[0xffu8; 64]] {
        let mut s = std::net::TcpStream::connect(&addr).expect("connect");
        let _ = s.write_all(junk);
    }
    // Still up, and still right.
    let cloud = server.client();
    let info = cloud.info().expect("info");
    assert_eq!(info.max_message_bytes, 1 << 20);
    let (k, x, y) = layer_data(4, &g, 1);
    let mut rng = seeded_rng(2);
    let mut layer = PrivateConv::new(g, &k, None, LayerConfig::default(), &mut rng).expect("layer");
    let (got, _) = layer.run(&cloud, &x, &mut rng).expect("verified");
    assert!(got.iter().zip(&y).all(|(&a, &b)| i64::from(a) == b));
}

#[test]
fn a_wrong_or_missing_token_is_unauthenticated() {
    let cfg = ServerConfig { token: Some("s3cret-token".into()), ..ServerConfig::default() };
    let server = TestServer::start(Arc::new(CpuBackend::new()), cfg);
    let url = std::slice::from_ref(&server.url);
    for token in [None, Some("s3cret-tokeN"), Some("s3cret"), Some("")] {
        let opts = RemoteOptions { token: token.map(String::from), ..fast_retries() };
        let err = RemoteBackend::connect(url, opts).expect("client").info().expect_err("refused");
        assert_eq!(code(&err), Some("Unauthenticated"), "{token:?}: {err}");
    }
    let opts = RemoteOptions { token: Some("s3cret-token".into()), ..fast_retries() };
    assert!(RemoteBackend::connect(url, opts).expect("client").info().is_ok());
}

#[test]
fn an_evicted_kernel_is_registered_again() {
    // Room for one kernel: two layers evict each other on every call.
    let g = layer_geometry();
    let cfg = ServerConfig { kernel_cache_bytes: 4 * g.kernel_len(), ..ServerConfig::default() };
    let server = TestServer::start(Arc::new(CpuBackend::new()), cfg);
    let cloud = server.client();
    let mut rng = seeded_rng(6);
    let mut layers: Vec<_> = (0..2)
        .map(|i| {
            let (k, x, y) = layer_data(20 + i, &g, 1);
            (PrivateConv::new(g, &k, None, LayerConfig::default(), &mut rng).expect("layer"), x, y)
        })
        .collect();
    for _ in 0..3 {
        for (layer, x, y) in &mut layers {
            let (got, _) = layer.run(&cloud, x, &mut rng).expect("verified after re-registering");
            assert!(got.iter().zip(y.iter()).all(|(&a, &b)| i64::from(a) == b));
        }
    }
    assert!(cloud.retries() >= 4, "NOT_FOUND was answered and retried ({} retries)", cloud.retries());
}

/// The CPU backend, slowed down.
struct Slow(Duration, CpuBackend);

impl CloudBackend for Slow {
    fn name(&self) -> String {
        "slow cpu".into()
    }

    fn call(&self, call: ConvCall<'_>, out: &mut Vec<u32>) -> vericonv::Result<()> {
        std::thread::sleep(self.0);
        self.1.call(call, out)
    }
}

#[test]
fn under_load_every_answer_is_verified_or_refused_as_busy() {
    let server = TestServer::start(
        Arc::new(Slow(Duration::from_millis(20), CpuBackend::new())),
        ServerConfig { max_concurrent: 4, ..ServerConfig::default() },
    );
    let g = layer_geometry();
    let (k, x, y) = layer_data(30, &g, 2);
    let (verified, busy) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let started = Instant::now();
    std::thread::scope(|s| {
        for client in 0..32u64 {
            let (url, k, x, y, verified, busy) = (&server.url, &k, &x, &y, &verified, &busy);
            s.spawn(move || {
                let cloud = RemoteBackend::connect(std::slice::from_ref(url), fast_retries()).expect("client");
                let mut rng = seeded_rng(100 + client);
                let mut layer = PrivateConv::new(g, k, None, LayerConfig::default(), &mut rng).expect("layer");
                for _ in 0..3 {
                    match layer.run(&cloud, x, &mut rng) {
                        Ok((got, _)) => {
                            assert!(got.iter().zip(y).all(|(&a, &b)| i64::from(a) == b), "a wrong answer");
                            verified.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if code(&e) == Some("ResourceExhausted") => {
                            busy.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => panic!("neither verified nor refused as busy: {e}"),
                    }
                }
            });
        }
    });
    let (v, b) = (verified.into_inner(), busy.into_inner());
    println!(
        "32 clients × 3 calls, --max-concurrent 4: {v} verified, {b} RESOURCE_EXHAUSTED in {:?}",
        started.elapsed()
    );
    assert_eq!(v + b, 96, "no call lost");
    assert!(v >= 4, "the server kept answering");
}

#[test]
fn dead_and_killed_replicas_fail_over_or_give_a_typed_error() {
    // A port with nothing behind it: bind, note it, close it.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("grpc://{}", l.local_addr().expect("addr"))
    };
    let alive = TestServer::cpu();
    let cloud = RemoteBackend::connect(&[dead.clone(), alive.url.clone()], fast_retries()).expect("client");
    let g = layer_geometry();
    let (k, x, y) = layer_data(40, &g, 1);
    let mut rng = seeded_rng(8);
    let mut layer = PrivateConv::new(g, &k, None, LayerConfig::default(), &mut rng).expect("layer");
    for _ in 0..2 {
        let (got, _) = layer.run(&cloud, &x, &mut rng).expect("the live replica answers");
        assert!(got.iter().zip(&y).all(|(&a, &b)| i64::from(a) == b));
    }
    assert!(cloud.retries() >= 1, "the dead replica was tried and skipped");
    // A server killed in the middle of a call (its runtime torn down: connections cut, nothing
    // answered): alone, the client gets a typed error in bounded time; with a live replica
    // beside it, the client fails over.
    for with_replica in [false, true] {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind loopback");
        let dying = format!("grpc://{}", listener.local_addr().expect("addr"));
        let slow: Arc<dyn CloudBackend> = Arc::new(Slow(Duration::from_millis(800), CpuBackend::new()));
        let listen = Listen { listener, tls: None, metrics: None };
        rt.spawn(vericonv_remote::serve(slow, ServerConfig::default(), listen, std::future::pending()));
        let mut urls = vec![dying];
        if with_replica {
            urls.push(alive.url.clone());
        }
        let cloud = RemoteBackend::connect(&urls, fast_retries()).expect("client");
        let mut layer = PrivateConv::new(g, &k, None, LayerConfig::default(), &mut rng).expect("layer");
        let started = Instant::now();
        let result = std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(200));
                rt.shutdown_background();
            });
            layer.run(&cloud, &x, &mut rng)
        });
        match (with_replica, result) {
            (true, Ok((got, _))) => assert!(got.iter().zip(&y).all(|(&a, &b)| i64::from(a) == b)),
            (false, Err(e)) => assert!(code(&e).is_some(), "{e}"),
            (true, Err(e)) => panic!("no failover after a kill: {e}"),
            (false, Ok(_)) => panic!("a killed server answered"),
        }
        assert!(started.elapsed() < Duration::from_secs(20));
    }
}

#[test]
fn a_slow_server_hits_the_clients_deadline() {
    let server = TestServer::start(Arc::new(Slow(Duration::from_secs(3), CpuBackend::new())), ServerConfig::default());
    let opts = RemoteOptions { timeout: Duration::from_millis(300), ..fast_retries() };
    let cloud = RemoteBackend::connect(std::slice::from_ref(&server.url), opts).expect("client");
    let g = layer_geometry();
    let (k, x, _) = layer_data(50, &g, 1);
    let mut rng = seeded_rng(1);
    let mut layer = PrivateConv::new(g, &k, None, LayerConfig::default(), &mut rng).expect("layer");
    let started = Instant::now();
    let err = layer.run(&cloud, &x, &mut rng).expect_err("deadline");
    assert!(matches!(code(&err), Some("DeadlineExceeded" | "Cancelled")), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3), "the client did not wait for the slow server");
}

#[test]
fn cloud_a_gets_32_bytes_and_expands_the_share_itself() {
    let server = TestServer::cpu();
    let cloud = server.client();
    let g = layer_geometry();
    let k: Vec<u32> = (0..g.kernel_len() as u32).map(|i| i % 1000).collect();
    let seed = ShareSeed::from_bytes([9; 32]);
    let remote = cloud.conv_share(&g, 2, &k, &seed).expect("seed form");
    let local = CpuBackend::new().conv(&g, 2, &k, &seed.expand(2 * g.image_len())).expect("expanded");
    assert_eq!(remote, local);
}

/// A TLS server on loopback with `tls`, stopped when the returned guard drops; its port.
fn start_tls(tls: vericonv_remote::TlsIdentity, cfg: ServerConfig) -> (u16, TlsServer) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
            addr_tx.send(listener.local_addr().expect("addr").port()).expect("send");
            let listen = Listen { listener, tls: Some(tls), metrics: None };
            let backend: Arc<dyn CloudBackend> = Arc::new(CpuBackend::new());
            vericonv_remote::serve(backend, cfg, listen, async move {
                let _ = stopped.await;
            })
            .await
            .expect("serve");
        });
    });
    let port = addr_rx.recv_timeout(Duration::from_secs(10)).expect("the server starts");
    (port, TlsServer(Some(stop), Some(thread)))
}

/// Stops a TLS test server when dropped.
struct TlsServer(Option<tokio::sync::oneshot::Sender<()>>, Option<std::thread::JoinHandle<()>>);

impl Drop for TlsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.0.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.1.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn grpcs_with_a_trusted_ca_works_and_an_untrusted_certificate_is_refused() {
    // A self-signed CA that signs each server's certificate for `localhost`.
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let ca_pem = ca.pem().into_bytes();
    let server_identity = || {
        let key = rcgen::KeyPair::generate().expect("server key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("signed by the CA");
        vericonv_remote::TlsIdentity { cert: cert.pem().into_bytes(), key: key.serialize_pem().into_bytes() }
    };
    let token = "tls-and-a-token";
    let cfg = ServerConfig { token: Some(token.into()), ..ServerConfig::default() };
    let (port_a, _a) = start_tls(server_identity(), cfg.clone());
    let (port_b, _b) = start_tls(server_identity(), cfg);
    // The servers listen on 127.0.0.1 only; `localhost` is the name in their certificates.
    let url = |port: u16| vec![format!("grpcs://localhost:{port}")];
    let trusted = RemoteOptions { tls_ca: Some(ca_pem), token: Some(token.into()), ..fast_retries() };
    let a = RemoteBackend::connect(&url(port_a), trusted.clone()).expect("client");
    let b = RemoteBackend::connect(&url(port_b), trusted.clone()).expect("client");
    let g = layer_geometry();
    let (k, x, y) = layer_data(60, &g, 2);
    let mut rng = seeded_rng(3);
    let mut layer = PrivateConv::new(g, &k, None, LayerConfig::default(), &mut rng).expect("layer");
    let (got, _) = layer.run(&a, &x, &mut rng).expect("verified over TLS");
    assert!(got.iter().zip(&y).all(|(&p, &q)| i64::from(p) == q));
    // Both clouds of two-server over TLS, each with its token.
    let cfg = LayerConfig { privacy: Privacy::TwoServer, ..LayerConfig::default() };
    let mut layer = PrivateConv::new(g, &k, None, cfg, &mut rng).expect("layer");
    let (got, _) = layer.run(Clouds::Two(&a, &b), &x, &mut rng).expect("two-server over TLS");
    assert!(got.iter().zip(&y).all(|(&p, &q)| i64::from(p) == q));
    let no_token = RemoteOptions { token: None, ..trusted };
    let err = RemoteBackend::connect(&url(port_a), no_token).expect("client").info().expect_err("no token");
    assert_eq!(code(&err), Some("Unauthenticated"), "{err}");
    let untrusted = RemoteBackend::connect(&url(port_a), fast_retries()).expect("client");
    assert!(untrusted.info().is_err_and(|e| code(&e).is_some()), "a certificate nobody vouches for is refused");
    let plain = RemoteBackend::connect(&[format!("grpc://127.0.0.1:{port_a}")], fast_retries()).expect("client");
    assert!(plain.info().is_err(), "plaintext gRPC to a TLS port fails");
}

#[test]
fn tensors_above_the_message_limit_travel_in_chunks() {
    // 1 MiB messages; a batch whose input is 1.6 MB and whose answer is 1.6 MB.
    let cfg = ServerConfig { max_message_bytes: 1 << 20, ..ServerConfig::default() };
    let server = TestServer::start(Arc::new(CpuBackend::new()), cfg);
    let g = Conv2d::builder(16, 16, (64, 64), (3, 3)).padding(Padding::uniform(1)).build().expect("geometry");
    let (k, x, y) = layer_data(70, &g, 6);
    let url = std::slice::from_ref(&server.url);
    let unary =
        RemoteBackend::connect(url, RemoteOptions { stream_above: usize::MAX, ..fast_retries() }).expect("client");
    let mut rng = seeded_rng(4);
    let mut layer = PrivateConv::new(g, &k, None, LayerConfig::default(), &mut rng).expect("layer");
    let err = layer.run(&unary, &x, &mut rng).expect_err("one message is too large");
    assert_eq!(code(&err), Some("ResourceExhausted"), "{err}");
    assert!(matches!(err, Error::Backend { exhausted: true, .. }), "{err}");
    let chunked = RemoteOptions { stream_above: 256 << 10, chunk_bytes: 64 << 10, ..fast_retries() };
    let cloud = RemoteBackend::connect(url, chunked.clone()).expect("client");
    let (got, _) = layer.run(&cloud, &x, &mut rng).expect("verified through ConvStream");
    assert!(got.iter().zip(&y).all(|(&a, &b)| i64::from(a) == b));
    // Mode two-server: cloud A's 32-byte seed, its answer streamed back; cloud B's share in chunks.
    let other = TestServer::start(
        Arc::new(CpuBackend::new()),
        ServerConfig { max_message_bytes: 1 << 20, ..ServerConfig::default() },
    );
    let b = RemoteBackend::connect(std::slice::from_ref(&other.url), chunked).expect("client");
    let cfg = LayerConfig { privacy: Privacy::TwoServer, ..LayerConfig::default() };
    let mut layer = PrivateConv::new(g, &k, None, cfg, &mut rng).expect("layer");
    let (got, _) = layer.run(Clouds::Two(&cloud, &b), &x, &mut rng).expect("two-server through ConvStream");
    assert!(got.iter().zip(&y).all(|(&a, &b)| i64::from(a) == b));
}

#[test]
fn a_stream_that_lies_about_its_length_is_refused() {
    let server = TestServer::cpu();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let g = layer_geometry();
    let k = vec![1u32; g.kernel_len()];
    rt.block_on(async {
        let mut c = CloudClient::connect(server.url.replace("grpc://", "http://")).await.expect("connect");
        let reg = RegisterKernelRequest { geometry: Some(geometry_to_proto(&g)), kernel: encode_elements(&k) };
        let handle = c.register_kernel(reg).await.expect("registers").into_inner().handle;
        let x = encode_elements(&vec![3u32; g.image_len()]);
        let chunk = |handle: &[u8], batch: u64, data: Vec<u8>| proto::ConvChunk {
            handle: handle.to_vec(),
            batch,
            data,
            ..proto::ConvChunk::default()
        };
        let call = |chunks: Vec<proto::ConvChunk>| {
            let mut c = c.clone();
            async move {
                match c.conv_stream(tokio_stream::iter(chunks)).await {
                    Ok(mut s) => loop {
                        match s.get_mut().message().await {
                            Ok(Some(_)) => {}
                            Ok(None) => break Ok(()),
                            Err(e) => break Err(e.code()),
                        }
                    },
                    Err(e) => Err(e.code()),
                }
            }
        };
        assert_eq!(call(vec![chunk(&handle, 1, x[..100].to_vec()), chunk(&[], 0, x[100..].to_vec())]).await, Ok(()));
        let short = vec![chunk(&handle, 2, x.clone())];
        assert_eq!(call(short).await, Err(tonic::Code::InvalidArgument), "half the data announced");
        let mut over = x[100..].to_vec();
        over.extend([0; 8]);
        let long = vec![chunk(&handle, 1, x[..100].to_vec()), chunk(&[], 0, over)];
        assert_eq!(call(long).await, Err(tonic::Code::InvalidArgument), "more data than announced");
        assert_eq!(call(vec![chunk(&[9; 32], 1, x.clone())]).await, Err(tonic::Code::NotFound));
        assert_eq!(call(vec![chunk(&handle, u64::MAX, vec![])]).await, Err(tonic::Code::ResourceExhausted));
        assert_eq!(call(vec![]).await, Err(tonic::Code::InvalidArgument), "an empty stream");
    });
}

#[test]
fn sessions_seeded_alike_get_their_own_handles() {
    let server = TestServer::cpu();
    let cloud = server.client();
    let g = layer_geometry();
    let (_, x, _) = layer_data(90, &g, 1);
    for which in 0..2u64 {
        let (k, _, _) = layer_data(91 + which, &g, 1);
        let widen = |v: &[i32]| v.iter().map(|&a| i64::from(a)).collect::<Vec<_>>();
        let exact = conv_i64(&g, 1, &widen(&k), &widen(&x)).expect("plaintext");
        // The same key seed: the same session id, another kernel.
        let mut rng = seeded_rng(5);
        let mut layer = PrivateConv::new(g, &k, None, LayerConfig::default(), &mut rng).expect("layer");
        let (got, _) = layer.run(&cloud, &x, &mut rng).expect("verified");
        assert!(got.iter().zip(&exact).all(|(&a, &b)| i64::from(a) == b), "kernel {which}");
    }
}

/// A backend that counts the forms of the calls it receives, after an optional delay.
#[derive(Default)]
struct Counting {
    delay: Duration,
    tensors: AtomicUsize,
    seeds: AtomicUsize,
    cpu: CpuBackend,
}

impl CloudBackend for Counting {
    fn name(&self) -> String {
        "counting cpu".into()
    }

    fn call(&self, call: ConvCall<'_>, out: &mut Vec<u32>) -> vericonv::Result<()> {
        let count = match call.input {
            CallInput::Tensor(_) => &self.tensors,
            CallInput::Seed(_) => &self.seeds,
        };
        count.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        self.cpu.call(call, out)
    }
}

/// An `Arc` of a backend, as a backend (the test keeps a handle to read its counters).
struct Shared<B>(Arc<B>);

impl<B: CloudBackend> CloudBackend for Shared<B> {
    fn name(&self) -> String {
        self.0.name()
    }

    fn call(&self, call: ConvCall<'_>, out: &mut Vec<u32>) -> vericonv::Result<()> {
        self.0.call(call, out)
    }
}

/// A raw gRPC client of `server`, with a kernel of `g` registered; returns the handle too.
async fn raw_client(server: &TestServer, g: &Conv2d) -> (CloudClient<tonic::transport::Channel>, Vec<u8>) {
    let mut c = CloudClient::connect(server.url.replace("grpc://", "http://")).await.expect("connect");
    let reg = RegisterKernelRequest {
        geometry: Some(geometry_to_proto(g)),
        kernel: encode_elements(&vec![1u32; g.kernel_len()]),
    };
    let handle = c.register_kernel(reg).await.expect("registers").into_inner().handle;
    (c, handle)
}

#[test]
fn a_32_byte_seed_call_is_held_to_the_tensor_limit() {
    // The attack: a 1×1 kernel over a 46340×46340 input with stride 46340 (a 1×1 answer), cloud
    // A's seed form, 2^20 images: 9 PB once expanded. Refused before anything is allocated, in
    // both call forms, and the server stays up.
    let cfg = ServerConfig { max_message_bytes: 1 << 20, max_tensor_bytes: 1 << 20, ..ServerConfig::default() };
    let server = TestServer::start(Arc::new(CpuBackend::new()), cfg);
    let g = Conv2d::builder(1, 1, (46340, 46340), (1, 1)).stride(46340, 46340).build().expect("geometry");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let (mut c, handle) = raw_client(&server, &g).await;
        for batch in [1u64 << 20, 1] {
            let req = ConvRequest { handle: handle.clone(), batch, input: Some(Input::ShareSeed(vec![7; 32])) };
            let err = c.conv(req).await.expect_err("the seed form is refused");
            assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{}", err.message());
            assert!(err.message().contains("input"), "the message says what is too large: {}", err.message());
            let first = proto::ConvChunk { handle: handle.clone(), batch, share_seed: vec![7; 32], data: vec![] };
            let err = match c.conv_stream(tokio_stream::iter(vec![first])).await {
                Ok(mut s) => s.get_mut().message().await.expect_err("refused"),
                Err(e) => e,
            };
            assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{}", err.message());
        }
    });
    assert!(server.client().info().is_ok(), "the server is still up");
}

#[test]
fn a_call_past_its_deadline_keeps_its_slot_until_the_computation_ends() {
    let backend = Arc::new(Counting { delay: Duration::from_millis(1200), ..Counting::default() });
    let cfg = ServerConfig { max_concurrent: 1, ..ServerConfig::default() };
    let server = TestServer::start(Arc::new(Shared(backend.clone())), cfg);
    let g = layer_geometry();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let codes = rt.block_on(async {
        let (c, handle) = raw_client(&server, &g).await;
        let mut codes = Vec::new();
        for _ in 0..6 {
            let input = Some(Input::Tensor(encode_elements(&vec![1u32; g.image_len()])));
            let mut req = tonic::Request::new(ConvRequest { handle: handle.clone(), batch: 1, input });
            req.set_timeout(Duration::from_millis(150));
            codes.push(c.clone().conv(req).await.map(|_| ()).unwrap_err().code());
        }
        codes
    });
    println!("six calls with 150 ms deadlines to a 1.2 s layer, one slot: {codes:?}");
    assert!(matches!(codes[0], tonic::Code::DeadlineExceeded | tonic::Code::Cancelled), "{codes:?}");
    let busy = codes.iter().filter(|&&c| c == tonic::Code::ResourceExhausted).count();
    assert!(busy >= 4, "the slot stays taken while the first computation runs: {codes:?}");
    assert!(backend.tensors.load(Ordering::SeqCst) <= 2, "at most one computation at a time was admitted");
}

#[test]
fn streams_take_a_slot_only_once_their_input_is_complete() {
    let g = layer_geometry();
    let cfg = ServerConfig { max_concurrent: 2, ..ServerConfig::default() };
    let server = TestServer::start(Arc::new(CpuBackend::new()), cfg);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let (c, handle) = raw_client(&server, &g).await;
        let x = encode_elements(&vec![3u32; g.image_len()]);
        let first = |data: Vec<u8>| proto::ConvChunk { handle: handle.clone(), batch: 1, data, ..Default::default() };
        // Four streams that announce a call and never send its input, their request side open.
        let mut stalled = Vec::new();
        for _ in 0..4 {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(first(vec![])).await.expect("send");
            let mut c = c.clone();
            let call =
                tokio::spawn(async move { c.conv_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
            stalled.push((tx, call));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Twenty legitimate calls beside them: all answered.
        for i in 0..20 {
            let req = ConvRequest { handle: handle.clone(), batch: 1, input: Some(Input::Tensor(x.clone())) };
            c.clone().conv(req).await.unwrap_or_else(|e| panic!("call {i} blocked by stalled streams: {e}"));
        }
        // A stream that sends its whole input but keeps its side open is answered at once.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(first(x.clone())).await.expect("send");
        let started = Instant::now();
        let mut answer = c
            .clone()
            .conv_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("answered")
            .into_inner();
        let mut bytes = 0;
        while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), answer.message())
            .await
            .expect("the answer comes before the deadline")
            .expect("a chunk")
        {
            bytes += chunk.data.len();
        }
        assert_eq!(bytes, 4 * g.output_image_len());
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(tx);
        drop(stalled);
    });
}

#[test]
fn cloud_a_receives_its_seed_through_a_tampering_wrapper() {
    let (a_backend, b_backend) = (Arc::new(Counting::default()), Arc::new(Counting::default()));
    let a = TestServer::start(Arc::new(Shared(a_backend.clone())), ServerConfig::default());
    let b = TestServer::start(Arc::new(Shared(b_backend.clone())), ServerConfig::default());
    let g = layer_geometry();
    let (k, x, y) = layer_data(95, &g, 2);
    let cfg = LayerConfig { privacy: Privacy::TwoServer, ..LayerConfig::default() };
    let mut rng = seeded_rng(12);
    for rate in [0.0, 1.0] {
        // The CLI wraps every cloud so; an honest wrapper must not change what crosses the wire.
        let ca = TamperingBackend::new(a.client(), &Tamper::ALL, rate, 1);
        let cb = TamperingBackend::new(b.client(), &Tamper::ALL, 0.0, 2);
        let mut layer = PrivateConv::new(g, &k, None, cfg.clone(), &mut rng).expect("layer");
        match (rate > 0.0, layer.run(Clouds::Two(&ca, &cb), &x, &mut rng)) {
            (false, Ok((got, _))) => assert!(got.iter().zip(&y).all(|(&p, &q)| i64::from(p) == q)),
            (true, Err(Error::VerificationFailed { .. } | Error::MalformedAnswer { .. })) => {}
            (cheats, other) => panic!("rate {rate} (cheats {cheats}): {:?}", other.map(|_| ())),
        }
    }
    assert_eq!(a_backend.tensors.load(Ordering::SeqCst), 0, "cloud A never received a tensor");
    assert!(a_backend.seeds.load(Ordering::SeqCst) >= 2, "cloud A received its seeds");
    assert_eq!(b_backend.seeds.load(Ordering::SeqCst), 0);
}

#[test]
fn a_dead_replica_is_skipped_for_a_back_off_period() {
    let g = Conv2d::builder(32, 32, (32, 32), (3, 3)).padding(Padding::uniform(1)).build().expect("geometry");
    let (k, x, y) = layer_data(96, &g, 4);
    let alive = TestServer::cpu();
    // A replica killed after it served: its port now refuses connections.
    let killed = {
        let s = TestServer::cpu();
        let mut layer = PrivateConv::new(g, &k, None, LayerConfig::default(), &mut seeded_rng(1)).expect("layer");
        layer.run(&s.client(), &x, &mut seeded_rng(2)).expect("the replica serves before it dies");
        s.url.clone()
    };
    let opts = RemoteOptions::default();
    let time = |urls: Vec<String>| {
        let cloud = RemoteBackend::connect(&urls, opts.clone()).expect("client");
        let mut rng = seeded_rng(3);
        let mut layer = PrivateConv::new(g, &k, None, LayerConfig::default(), &mut rng).expect("layer");
        let started = Instant::now();
        for _ in 0..20 {
            let (got, _) = layer.run(&cloud, &x, &mut rng).expect("verified");
            assert!(got.iter().zip(&y).all(|(&p, &q)| i64::from(p) == q));
        }
        (started.elapsed(), cloud.retries())
    };
    // Interleaved, three times each, the fastest of each kept: other tests share the cores.
    let (mut healthy, mut degraded) = (Duration::MAX, Duration::MAX);
    for _ in 0..3 {
        healthy = healthy.min(time(vec![alive.url.clone()]).0);
        let (took, retries) = time(vec![killed.clone(), alive.url.clone()]);
        assert!(retries <= 2, "the dead replica was tried once per back-off period, not per call: {retries}");
        degraded = degraded.min(took);
    }
    println!("20 calls, fastest of 3: healthy {healthy:?}; one of two replicas dead {degraded:?}");
    assert!(degraded <= healthy * 2, "{degraded:?} against {healthy:?} healthy");
}

#[test]
fn an_element_count_that_is_not_whole_is_reported_in_bytes() {
    let server = TestServer::cpu();
    let g = Conv2d::builder(3, 4, (8, 8), (3, 3)).build().expect("geometry");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut c = CloudClient::connect(server.url.replace("grpc://", "http://")).await.expect("connect");
        let kernel = vec![0u8; 4 * g.kernel_len() + 1];
        let reg = RegisterKernelRequest { geometry: Some(geometry_to_proto(&g)), kernel };
        let err = c.register_kernel(reg).await.expect_err("one byte too long");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("433 bytes") && err.message().contains("108"), "{}", err.message());
    });
}
