//! The hostile-client harness: `vericonv serve` as a process on loopback, attacked with raw
//! TCP, raw HTTP/2 frames and partial gRPC calls, the way a peer that ignores the protocol
//! would. Each case states what the server must do; after every case a well-behaved client
//! must still be served, and at the end the server's peak memory and CPU time are printed with
//! the table of cases (the table in docs/service.md comes from this output:
//! `cargo test --release -p vericonv-cli --test hostile_server -- --nocapture`).
//!
//! Every case is bounded in connections, bytes and time, and talks to 127.0.0.1 only.

#[path = "common/server.rs"]
mod server;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use server::Server;

/// The HTTP/2 client preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("small frame");
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;

/// The request headers of a gRPC call to `method`, HPACK-encoded as literals without indexing
/// (every name and value shorter than 127 bytes).
fn grpc_headers(method: &str) -> Vec<u8> {
    let path = format!("/vericonv.v1.Cloud/{method}");
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path.as_str()),
        (":authority", "127.0.0.1"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        block.push(0);
        block.push(u8::try_from(name.len()).expect("short"));
        block.extend(name.as_bytes());
        block.push(u8::try_from(value.len()).expect("short"));
        block.extend(value.as_bytes());
    }
    block
}

/// A connection that has sent the preface and its SETTINGS.
fn h2(server: &Server) -> TcpStream {
    let mut s = TcpStream::connect(server.addr()).expect("connect");
    s.write_all(PREFACE).expect("preface");
    s.write_all(&frame(SETTINGS, 0, 0, &[])).expect("settings");
    s
}

/// Reads until the server closes the connection or `limit` passes; whether it closed, and the
/// frame types it sent before.
fn drain(s: &mut TcpStream, limit: Duration) -> (bool, Vec<u8>) {
    let started = Instant::now();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 << 10];
    let closed = loop {
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() {
            break false;
        }
        s.set_read_timeout(Some(left.min(Duration::from_millis(200)))).expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break true,
        }
    };
    let mut kinds = Vec::new();
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = usize::from(bytes[at]) << 16 | usize::from(bytes[at + 1]) << 8 | usize::from(bytes[at + 2]);
        kinds.push(bytes[at + 3]);
        at += 9 + len;
    }
    (closed, kinds)
}

fn frame_names(kinds: &[u8]) -> String {
    let mut names: Vec<&str> = kinds
        .iter()
        .map(|k| match k {
            0 => "DATA",
            1 => "HEADERS",
            3 => "RST_STREAM",
            4 => "SETTINGS",
            6 => "PING",
            7 => "GOAWAY",
            8 => "WINDOW_UPDATE",
            _ => "other",
        })
        .collect();
    names.dedup();
    names.join(" ")
}

/// A well-behaved client: one private convolution through the server, verified.
fn served(server: &Server) -> bool {
    Command::new("timeout")
        .args(["60", env!("CARGO_BIN_EXE_vericonv"), "conv-demo", "--privacy", "pad", "--cloud", &server.grpc])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn hostile_clients_get_bounded_answers_and_the_server_keeps_serving() {
    let server = Server::start_limited(
        &[
            "--max-connections",
            "64",
            "--handshake-timeout-s",
            "1",
            "--idle-timeout-s",
            "2",
            "--keepalive-s",
            "1",
            "--timeout-s",
            "3",
            "--max-message-mb",
            "1",
            "--max-tensor-mb",
            "1",
            "--shutdown-grace-s",
            "2",
        ],
        Some(128),
    );
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |case: &str, outcome: String| {
        println!("{case:<58} {outcome}");
        rows.push((case.to_string(), outcome));
    };
    assert!(served(&server), "a fresh server serves");

    // 1. Bytes that are not HTTP/2.
    let mut s = TcpStream::connect(server.addr()).expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let (closed, _) = drain(&mut s, Duration::from_secs(3));
    assert!(closed, "a connection that does not speak HTTP/2 is closed");
    row("HTTP/1.1 request instead of the HTTP/2 preface", "closed at once".into());

    // 2. A silent connection, and one that stops half-way through the preface.
    for (case, bytes) in [("silent connection", &b""[..]), ("half of the HTTP/2 preface, then silence", &PREFACE[..12])]
    {
        let mut s = TcpStream::connect(server.addr()).expect("connect");
        s.write_all(bytes).expect("write");
        let started = Instant::now();
        let (closed, _) = drain(&mut s, Duration::from_secs(5));
        assert!(closed, "{case}: closed by the handshake timeout");
        row(case, format!("closed after {:.1} s (handshake timeout 1 s)", started.elapsed().as_secs_f64()));
    }

    // 3. A complete handshake, then no call: a raw client that answers no ping is dropped by
    // the keepalive; real HTTP/2 clients that answer pings, by the idle timeout.
    let mut s = h2(&server);
    let started = Instant::now();
    let (closed, kinds) = drain(&mut s, Duration::from_secs(8));
    assert!(closed, "an idle HTTP/2 connection is closed");
    row(
        "HTTP/2 handshake, then no call, pings unanswered",
        format!("closed after {:.1} s (keepalive 1 s); sent {}", started.elapsed().as_secs_f64(), frame_names(&kinds)),
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let base = server.settled_open_files();
    let clients: Vec<_> = rt.block_on(async {
        let mut clients = Vec::new();
        for _ in 0..5 {
            let mut c =
                vericonv_remote::proto::cloud_client::CloudClient::connect(server.grpc.replace("grpc://", "http://"))
                    .await
                    .expect("connect");
            c.info(vericonv_remote::proto::InfoRequest {}).await.expect("one call");
            clients.push(c);
        }
        clients
    });
    let open = server.open_files();
    let started = Instant::now();
    while server.open_files() > base && started.elapsed() < Duration::from_secs(8) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(open >= base + 5, "the five connections were open: {base} -> {open}");
    assert!(server.open_files() <= base, "idle connections were closed");
    row(
        "5 HTTP/2 clients that answer pings, idle after one call",
        format!("closed after {:.1} s (idle timeout 2 s)", started.elapsed().as_secs_f64()),
    );
    drop(clients);
    drop(rt);

    // 4. A gRPC message that announces 4 GiB.
    let mut s = h2(&server);
    s.write_all(&frame(HEADERS, END_HEADERS, 1, &grpc_headers("Conv"))).expect("headers");
    s.write_all(&frame(DATA, 0, 1, &[0, 0xff, 0xff, 0xff, 0xff])).expect("data");
    let (_, kinds) = drain(&mut s, Duration::from_secs(4));
    assert!(kinds.contains(&HEADERS) || kinds.contains(&RST_STREAM), "the call is answered: {kinds:?}");
    row("gRPC message announcing 4 GiB, body never sent", format!("answered: {}", frame_names(&kinds)));

    // 5. A gRPC call whose body stops half-way (and whose client answers no ping): dropped by
    // the keepalive, or by the call timeout, whichever comes first.
    let mut s = h2(&server);
    s.write_all(&frame(HEADERS, END_HEADERS, 1, &grpc_headers("Conv"))).expect("headers");
    s.write_all(&frame(DATA, 0, 1, &[0, 0, 0, 0, 100, 1, 2, 3])).expect("data");
    let started = Instant::now();
    let (closed, kinds) = drain(&mut s, Duration::from_secs(10));
    assert!(closed, "the stalled call's connection is closed: {kinds:?}");
    row(
        "gRPC call whose body stops half-way, pings unanswered",
        format!(
            "closed after {:.1} s (keepalive 1 s, call timeout 3 s); sent {}",
            started.elapsed().as_secs_f64(),
            frame_names(&kinds)
        ),
    );

    // 6. Rapid reset: 500 streams opened and cancelled at once.
    let mut s = h2(&server);
    let mut burst = Vec::new();
    for i in 0..500u32 {
        let id = 2 * i + 1;
        burst.extend(frame(HEADERS, END_HEADERS, id, &grpc_headers("Info")));
        burst.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    let _ = s.write_all(&burst);
    let (closed, kinds) = drain(&mut s, Duration::from_secs(5));
    row(
        "rapid reset: 500 HEADERS + RST_STREAM",
        format!("{}; sent {}", if closed { "connection closed" } else { "connection kept" }, frame_names(&kinds)),
    );

    // 7. A slow reader: it asks for an answer, announces a zero window and never reads.
    let mut s = TcpStream::connect(server.addr()).expect("connect");
    s.write_all(PREFACE).expect("preface");
    // SETTINGS_INITIAL_WINDOW_SIZE (4) = 0.
    s.write_all(&frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0])).expect("settings");
    s.write_all(&frame(HEADERS, END_HEADERS, 1, &grpc_headers("Info"))).expect("headers");
    s.write_all(&frame(DATA, END_STREAM, 1, &[0, 0, 0, 0, 0])).expect("data");
    let started = Instant::now();
    let (closed, _) = drain(&mut s, Duration::from_secs(8));
    assert!(closed, "a reader that never reads (nor answers pings) is dropped");
    row(
        "slow reader: zero window, never reads",
        format!("dropped after {:.1} s (keepalive 1 s)", started.elapsed().as_secs_f64()),
    );
    assert!(served(&server), "served after the frame-level cases");

    // 8. A flood of silent connections past --max-connections under `ulimit -n 128`.
    let cpu_before = server.cpu_seconds();
    let flood: Vec<TcpStream> = (0..150).filter_map(|_| TcpStream::connect(server.addr()).ok()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let files = server.open_files();
    let started = Instant::now();
    let ok = served(&server);
    let waited = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let cpu = server.cpu_seconds() - cpu_before;
    assert!(ok, "a legitimate client is served during the flood");
    assert!(files < 128, "the server stays within its file descriptors: {files}");
    assert!(cpu < 2.0, "the flood does not make the server spin: {cpu:.2} CPU s");
    row(
        "150 silent connections, --max-connections 64, 128 fds",
        format!("{files} fds open; a legitimate call served in {:.2} s; {cpu:.2} CPU s in all", waited.as_secs_f64()),
    );
    drop(flood);

    // 9. SIGTERM while silent and half-open connections are held.
    let held: Vec<TcpStream> = (0..20)
        .filter_map(|i| {
            let mut s = TcpStream::connect(server.addr()).ok()?;
            if i % 2 == 1 {
                let _ = s.write_all(PREFACE);
            }
            Some(s)
        })
        .collect();
    let peak = server.peak_rss_mib();
    let mut server = server;
    let took = server.terminate(Duration::from_secs(6));
    row(
        "SIGTERM with 20 silent or half-open connections held",
        format!("exited 0 after {:.1} s (grace 2 s)", took.as_secs_f64()),
    );
    drop(held);
    assert!(peak < 256, "peak resident memory {peak} MiB");
    println!("server peak resident memory over all cases: {peak} MiB");
}

#[test]
fn one_32_byte_seed_call_neither_kills_nor_grows_the_server() {
    use vericonv_remote::geometry_to_proto;
    use vericonv_remote::proto::cloud_client::CloudClient;
    use vericonv_remote::proto::conv_request::Input;
    use vericonv_remote::proto::{ConvChunk, ConvRequest, RegisterKernelRequest};

    let server = Server::start(&["--max-message-mb", "1", "--max-tensor-mb", "1"]);
    let before = server.peak_rss_mib();
    // A 1×1 kernel on a 46340×46340 input with stride 46340, and 2^20 images in the seed form:
    // 9 PB once expanded, from 32 bytes.
    let g = vericonv::Conv2d::builder(1, 1, (46340, 46340), (1, 1)).stride(46340, 46340).build().expect("geometry");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let codes = rt.block_on(async {
        let mut c = CloudClient::connect(server.grpc.replace("grpc://", "http://")).await.expect("connect");
        let reg = RegisterKernelRequest { geometry: Some(geometry_to_proto(&g)), kernel: vec![1, 0, 0, 0] };
        let handle = c.register_kernel(reg).await.expect("registers").into_inner().handle;
        let seed = Some(Input::ShareSeed(vec![7; 32]));
        let unary = c.conv(ConvRequest { handle: handle.clone(), batch: 1 << 20, input: seed }).await;
        let first = ConvChunk { handle, batch: 1 << 20, share_seed: vec![7; 32], data: vec![] };
        let stream = match c.conv_stream(tokio_stream::iter(vec![first])).await {
            Ok(mut s) => s.get_mut().message().await.map(|_| ()),
            Err(e) => Err(e),
        };
        [unary.map(|_| ()), stream].map(|r| r.map_or_else(|e| format!("{:?}", e.code()), |()| "OK".into()))
    });
    assert_eq!(codes, ["ResourceExhausted", "ResourceExhausted"], "both call forms are refused");
    assert!(served(&server), "the server is still up and right");
    let after = server.peak_rss_mib();
    println!("peak resident memory: {before} MiB before, {after} MiB after the oversized seed calls");
    assert!(after < before + 32, "the refused calls allocated nothing large: {before} -> {after} MiB");
}
