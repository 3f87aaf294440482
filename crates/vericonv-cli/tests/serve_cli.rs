//! `vericonv serve` as a process, on loopback: clients of every command reach it, its
//! Prometheus metrics count what happened, its memory stays bounded under 32 concurrent
//! clients, and SIGTERM stops it cleanly. Every wait is bounded.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_vericonv")
}

/// A running server and the two addresses it printed.
struct Server {
    child: Child,
    grpc: String,
    metrics: String,
}

impl Server {
    fn start(extra: &[&str]) -> Self {
        let mut child = Command::new(bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--backend", "cpu"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("vericonv serve starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut next = || lines.next().and_then(Result::ok).unwrap_or_default();
        let first = next();
        let grpc = first.split_whitespace().find(|w| w.starts_with("grpc://")).expect("the address").to_string();
        let second = next();
        let metrics = second.split("http://").nth(1).and_then(|r| r.split('/').next()).expect("metrics").to_string();
        Self { child, grpc, metrics }
    }

    fn metrics(&self) -> String {
        let mut s = std::net::TcpStream::connect(&self.metrics).expect("metrics endpoint");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("request");
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body
    }

    /// The peak resident memory of the server process, in MiB.
    fn peak_rss_mib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("proc status");
        let kib: u64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .expect("VmHWM");
        kib / 1024
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(args: &[&str]) -> std::process::Output {
    let out = Command::new("timeout").arg("300").arg(bin()).args(args).output().expect("runs");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn a_served_cloud_answers_every_command_counts_it_stays_small_and_stops_on_sigterm() {
    let server = Server::start(&["--max-concurrent", "4"]);
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dataset = common::small_idx(tmp.path());
    let model = common::repo().join("models/lenet5-mnist.json").display().to_string();
    let out = tmp.path().display().to_string();
    run(&[
        "eval",
        "--model",
        &model,
        "--dataset",
        &dataset,
        "--cloud",
        &server.grpc,
        "--report",
        &format!("{out}/r.json"),
    ]);
    run(&["demo", "--cloud", &server.grpc]);
    run(&["attack", "--model", &model, "--dataset", &dataset, "--limit", "2", "--cloud", &server.grpc, "--out", &out]);
    let attack_report = std::fs::read_dir(tmp.path()).expect("dir").flatten().any(|e| {
        e.file_name().to_string_lossy().starts_with("lenet5-mnist") && e.path().extension().is_some_and(|x| x == "json")
    });
    assert!(attack_report, "the attack through the server wrote its report");
    // 32 clients at once against --max-concurrent 4.
    let load = run(&[
        "bench",
        "--cloud",
        &server.grpc,
        "--only",
        "LeNet",
        "--clients",
        "32",
        "--requests",
        "3",
        "--out",
        &out,
    ]);
    let table = String::from_utf8_lossy(&load.stdout);
    assert!(table.contains("every verified answer equals the plaintext"), "{table}");
    let peak = server.peak_rss_mib();
    println!("server peak resident memory after 32 concurrent clients: {peak} MiB");
    assert!(peak < 512, "the server's memory stays bounded: {peak} MiB");
    let metrics = server.metrics();
    for needle in [
        "vericonv_requests_total{method=\"Conv\",code=\"OK\"}",
        "vericonv_requests_total{method=\"RegisterKernel\",code=\"OK\"}",
        "vericonv_request_seconds_bucket{method=\"Conv\",le=\"+Inf\"}",
        "vericonv_bytes_in_total",
        "vericonv_kernel_cache_hits_total",
    ] {
        assert!(metrics.contains(needle), "metrics lack {needle}:\n{metrics}");
    }
    let conv_ok: u64 = metrics
        .lines()
        .find(|l| l.starts_with("vericonv_requests_total{method=\"Conv\",code=\"OK\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(conv_ok >= 4, "{conv_ok} convolutions counted");
    // SIGTERM: calls in flight finish, the process exits 0.
    let mut server = server;
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let started = Instant::now();
    let status = loop {
        if let Some(s) = server.child.try_wait().expect("wait") {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the server did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "a clean exit on SIGTERM: {status}");
}

#[test]
fn two_server_refuses_one_endpoint_for_both_clouds() {
    let server = Server::start(&[]);
    let out = Command::new(bin())
        .args(["demo", "--privacy", "two-server", "--cloud", &server.grpc, "--cloud-b", &server.grpc])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs two different clouds"));
}
