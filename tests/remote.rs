//! The cloud as a gRPC service (`vericonv-remote`), on loopback only: whole models through one
//! and two servers, lying servers, bad requests, backpressure, failover, deadlines. Every loop
//! here is bounded in count, and every call in time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::RngExt;
use vericonv::Error;
use vericonv::client::{LayerConfig, PrivateConv};
use vericonv::cloud::{CloudBackend, Clouds, CpuBackend, Tamper, TamperingBackend};
use vericonv::geometry::{Conv2d, Padding};
use vericonv::keys::seeded_rng;
use vericonv::privacy::Privacy;
use vericonv::reference::conv_i64;
use vericonv::share::ShareSeed;
use vericonv_model::data::Dataset;
use vericonv_model::quant::{PlainExecutor, QuantConfig, QuantModel};
use vericonv_model::{Model, PrivateConfig, PrivateExecutor};
use vericonv_remote::proto::cloud_client::CloudClient;
use vericonv_remote::proto::conv_request::Input;
use vericonv_remote::proto::{self, ConvRequest, RegisterKernelRequest};
use vericonv_remote::wire::{KernelHandle, encode_elements, geometry_to_proto};
use vericonv_remote::{Listen, RemoteBackend, RemoteOptions, ServerConfig};

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
    for privacy in [Privacy::default(), Privacy::Pad, Privacy::TwoServer] {
        let clouds = if privacy == Privacy::TwoServer { Clouds::Two(&ca, &cb) } else { Clouds::One(&ca) };
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
        nc[8..12].copy_from_slice(&vericonv::field::P.to_le_bytes());
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
        assert!(matches!(&err, Error::Remote { code, .. } if code == "Unauthenticated"), "{token:?}: {err}");
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

    fn conv(&self, geom: &Conv2d, batch: usize, kernel: &[u32], input: &[u32]) -> vericonv::Result<Vec<u32>> {
        std::thread::sleep(self.0);
        self.1.conv(geom, batch, kernel, input)
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
                        Err(Error::Remote { code, .. }) if code == "ResourceExhausted" => {
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
            (false, Err(e)) => assert!(matches!(e, Error::Remote { .. }), "{e}"),
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
    assert!(matches!(&err, Error::Remote { code, .. } if code == "DeadlineExceeded" || code == "Cancelled"), "{err}");
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

#[test]
fn grpcs_with_a_trusted_ca_works_and_an_untrusted_certificate_is_refused() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("a self-signed certificate");
    let (pem, key) = (cert.cert.pem().into_bytes(), cert.signing_key.serialize_pem().into_bytes());
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let tls = vericonv_remote::TlsIdentity { cert: pem.clone(), key };
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
            addr_tx.send(listener.local_addr().expect("addr").port()).expect("send");
            let listen = Listen { listener, tls: Some(tls), metrics: None };
            let backend: Arc<dyn CloudBackend> = Arc::new(CpuBackend::new());
            vericonv_remote::serve(backend, ServerConfig::default(), listen, async move {
                let _ = stopped.await;
            })
            .await
            .expect("serve");
        });
    });
    let port = addr_rx.recv_timeout(Duration::from_secs(10)).expect("the server starts");
    // The server listens on 127.0.0.1 only; `localhost` is the name in its certificate.
    let url = vec![format!("grpcs://localhost:{port}")];
    let trusted = RemoteBackend::connect(&url, RemoteOptions { tls_ca: Some(pem), ..fast_retries() }).expect("client");
    let g = layer_geometry();
    let (k, x, y) = layer_data(60, &g, 1);
    let mut rng = seeded_rng(3);
    let mut layer = PrivateConv::new(g, &k, None, LayerConfig::default(), &mut rng).expect("layer");
    let (got, _) = layer.run(&trusted, &x, &mut rng).expect("verified over TLS");
    assert!(got.iter().zip(&y).all(|(&a, &b)| i64::from(a) == b));
    let untrusted = RemoteBackend::connect(&url, fast_retries()).expect("client");
    assert!(matches!(untrusted.info(), Err(Error::Remote { .. })), "a certificate nobody vouches for is refused");
    let plain = RemoteBackend::connect(&[format!("grpc://127.0.0.1:{port}")], fast_retries()).expect("client");
    assert!(plain.info().is_err(), "plaintext gRPC to a TLS port fails");
    let _ = stop.send(());
    let _ = thread.join();
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
    assert!(matches!(&err, Error::Remote { code, .. } if code == "ResourceExhausted"), "{err}");
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
        let long = vec![chunk(&handle, 1, x.clone()), chunk(&[], 0, vec![0; 8])];
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
