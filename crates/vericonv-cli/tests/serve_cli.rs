//! `vericonv serve` as a process, on loopback: clients of every command reach it, its
//! Prometheus metrics count what happened, its memory stays bounded under 32 concurrent
//! clients, and SIGTERM stops it cleanly. Every wait is bounded.

mod common;
#[path = "common/server.rs"]
mod server;

use server::Server;

use std::process::Command;
use std::time::Duration;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_vericonv")
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
        "vericonv_input_bytes_in_total",
        "vericonv_kernel_cache_hits_total",
    ] {
        assert!(metrics.contains(needle), "metrics lack {needle}:\n{metrics}");
    }
    let conv_ok = server.counter(None, "vericonv_requests_total{method=\"Conv\",code=\"OK\"}");
    assert!(conv_ok >= 4, "{conv_ok} convolutions counted");
    // SIGTERM: calls in flight finish, the process exits 0.
    let mut server = server;
    server.terminate(Duration::from_secs(20));
}

/// Runs `vericonv args…` (bounded in time) and returns its output, whatever its status.
fn try_run(args: &[&str]) -> std::process::Output {
    Command::new("timeout").arg("300").arg(bin()).args(args).output().expect("runs")
}

#[test]
fn cloud_a_receives_32_bytes_per_call_through_every_command() {
    let (a, b) = (Server::start(&[]), Server::start(&[]));
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dataset = common::small_idx(tmp.path());
    let model = common::repo().join("models/lenet5-mnist.json").display().to_string();
    let report = format!("{}/r.json", tmp.path().display());
    let two = ["--privacy", "two-server", "--cloud", &a.grpc, "--cloud-b", &b.grpc];
    let eval = ["eval", "--model", &model, "--dataset", &dataset, "--report", &report];
    for args in [&eval[..], &["demo"], &["conv-demo"]] {
        let before = a.counter(None, "vericonv_input_bytes_in_total");
        let calls_before = a.counter(None, "vericonv_requests_total{method=\"Conv\",code=\"OK\"}");
        run(&[args, &two[..]].concat());
        let bytes = a.counter(None, "vericonv_input_bytes_in_total") - before;
        let calls = a.counter(None, "vericonv_requests_total{method=\"Conv\",code=\"OK\"}") - calls_before;
        let b_bytes = b.counter(None, "vericonv_input_bytes_in_total");
        println!("{}: cloud A received {bytes} input bytes in {calls} calls (cloud B so far: {b_bytes})", args[0]);
        assert!(calls > 0, "{}: cloud A was called", args[0]);
        assert_eq!(bytes, 32 * calls, "{}: cloud A receives its 32-byte seed, never the share", args[0]);
    }
}

#[test]
fn a_lying_remote_cloud_is_reported_as_caught_by_eval() {
    let liar = Server::start(&["--tamper-rate", "1"]);
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dataset = common::small_idx(tmp.path());
    let model = common::repo().join("models/lenet5-mnist.json").display().to_string();
    let report = format!("{}/r.json", tmp.path().display());
    let out = try_run(&["eval", "--model", &model, "--dataset", &dataset, "--cloud", &liar.grpc, "--report", &report]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("a cloud cheated and was caught"), "{stderr}");
    assert!(!stderr.contains("internal error"), "a caught cheater is not a bug: {stderr}");
}

#[test]
fn two_server_refuses_one_endpoint_for_both_clouds() {
    let server = Server::start(&[]);
    let port = server.addr().rsplit(':').next().expect("port").to_string();
    for other in [server.grpc.clone(), format!("grpc://localhost:{port}"), format!("grpc://127.0.0.1:0{port}")] {
        let out = try_run(&["demo", "--privacy", "two-server", "--cloud", &server.grpc, "--cloud-b", &other]);
        assert_eq!(out.status.code(), Some(1), "{other}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("needs two different clouds"), "{other}");
    }
    assert_eq!(server.counter(None, "vericonv_requests_total{method=\"Conv\""), 0, "refused before any call");
}

/// `vericonv args…` in a network namespace with no routes when `unshare` can make one (nothing
/// it sends can leave the machine), else as it is.
fn run_without_network(args: &[&str]) -> std::process::Output {
    let isolated = Command::new("unshare").args(["-rn", "true"]).status().is_ok_and(|s| s.success());
    let mut cmd = if isolated {
        let mut c = Command::new("unshare");
        c.args(["-rn", "timeout", "60", bin()]);
        c
    } else {
        let mut c = Command::new("timeout");
        c.args(["60", bin()]);
        c
    };
    cmd.args(args).output().expect("runs")
}

#[test]
fn plaintext_to_a_remote_host_is_refused_unless_opted_out_with_a_warning() {
    // A documentation address (TEST-NET-1); refused before any socket is opened.
    let out = run_without_network(&["demo", "--privacy", "pad", "--cloud", "grpc://192.0.2.1:7000"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("grpcs://") && stderr.contains("FailedPrecondition"), "{stderr}");
    // Opted out: it warns, then tries (and fails: there is no route in the namespace).
    let isolated = Command::new("unshare").args(["-rn", "true"]).status().is_ok_and(|s| s.success());
    if isolated {
        let out = run_without_network(&[
            "demo",
            "--privacy",
            "pad",
            "--cloud",
            "grpc://192.0.2.1:7000",
            "--insecure-plaintext",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("warning: --insecure-plaintext"), "{stderr}");
    } else {
        println!("skipped the opt-out half: no network namespace can be made here");
    }
}

#[test]
fn an_empty_token_file_is_refused_and_metrics_need_the_token() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let empty = tmp.path().join("empty");
    std::fs::write(&empty, "  \n").expect("write");
    let out = try_run(&["serve", "--listen", "127.0.0.1:0", "--token-file", &empty.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the token file is empty"));
    let token = tmp.path().join("token");
    std::fs::write(&token, "metrics-and-calls\n").expect("write");
    let server = Server::start(&["--token-file", &token.display().to_string()]);
    assert!(server.metrics().starts_with("HTTP/1.1 401"), "{}", server.metrics());
    assert!(server.metrics_with(Some("wrong")).starts_with("HTTP/1.1 401"));
    let ok = server.metrics_with(Some("metrics-and-calls"));
    assert!(ok.starts_with("HTTP/1.1 200") && ok.contains("vericonv_unauthenticated_total 2"), "{ok}");
    // The client side refuses an empty token file as well.
    let out = try_run(&["demo", "--cloud", &server.grpc, "--token-file", &empty.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the token file is empty"));
    run(&["demo", "--cloud", &server.grpc, "--token-file", &token.display().to_string()]);
    let log = server.log();
    assert!(log.contains("convolution done"), "the server logs its calls: {log}");
    assert!(!log.contains('\u{1b}'), "no ANSI colour codes in a log that is not a terminal");
}

#[test]
fn eval_counts_two_cheating_clouds_in_one_call_as_caught() {
    // Both clouds of two-server corrupt every answer: one rejected call holds two corrupted
    // answers, and that is a cheater caught, not a missed corruption.
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dataset = common::small_idx(tmp.path());
    let model = common::repo().join("models/lenet5-mnist.json").display().to_string();
    let report = format!("{}/r.json", tmp.path().display());
    let out = run(&[
        "eval",
        "--model",
        &model,
        "--dataset",
        &dataset,
        "--privacy",
        "two-server",
        "--backend",
        "cpu",
        "--tamper-rate",
        "1",
        "--report",
        &report,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("2 corrupted cloud answers, 1 rejected by verification"), "{stdout}");
}
