//! `vericonv serve` as a child process on an ephemeral loopback port, killed when dropped.
// Each test binary that includes this file uses a part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running server, the two addresses it printed, and the file its log goes to.
pub struct Server {
    pub child: Child,
    pub grpc: String,
    pub metrics: String,
    log: tempfile::NamedTempFile,
}

impl Server {
    /// `vericonv serve` on the CPU backend with `extra` flags.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_limited(extra, None)
    }

    /// The same, with at most `files` open file descriptors (`ulimit -n`) when given.
    pub fn start_limited(extra: &[&str], files: Option<u32>) -> Self {
        let log = tempfile::NamedTempFile::new().expect("log file");
        let ulimit = files.map_or_else(String::new, |n| format!("ulimit -n {n}; "));
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("{ulimit}exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_vericonv"))
            .args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--backend", "cpu"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(log.reopen().expect("log"))
            .spawn()
            .expect("vericonv serve starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut next = || lines.next().and_then(Result::ok).unwrap_or_default();
        let first = next();
        let grpc = first.split_whitespace().find(|w| w.starts_with("grpc://")).expect("the address").to_string();
        let second = next();
        let metrics = second.split("http://").nth(1).and_then(|r| r.split('/').next()).expect("metrics").to_string();
        Self { child, grpc, metrics, log }
    }

    /// `host:port` of the gRPC socket.
    pub fn addr(&self) -> &str {
        self.grpc.trim_start_matches("grpc://")
    }

    /// `GET /metrics` with an optional bearer token: the status line and the body.
    pub fn metrics_with(&self, token: Option<&str>) -> String {
        let mut s = std::net::TcpStream::connect(&self.metrics).expect("metrics endpoint");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
        write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").expect("request");
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body
    }

    /// `GET /metrics` without a token.
    pub fn metrics(&self) -> String {
        self.metrics_with(None)
    }

    /// One counter of `/metrics` (0 when absent).
    pub fn counter(&self, token: Option<&str>, line_start: &str) -> u64 {
        self.metrics_with(token)
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// The peak resident memory of the server process, in MiB.
    pub fn peak_rss_mib(&self) -> u64 {
        self.status_kib("VmHWM:") / 1024
    }

    /// Open file descriptors of the server process.
    pub fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map_or(0, Iterator::count)
    }

    /// Open file descriptors once the count stops changing (the same for 300 ms, at most 5 s
    /// of waiting): a connection its peer saw closed may still hold its descriptor a moment.
    pub fn settled_open_files(&self) -> usize {
        let started = std::time::Instant::now();
        let (mut last, mut same_since) = (self.open_files(), std::time::Instant::now());
        while same_since.elapsed() < std::time::Duration::from_millis(300)
            && started.elapsed() < std::time::Duration::from_secs(5)
        {
            std::thread::sleep(std::time::Duration::from_millis(50));
            let now = self.open_files();
            if now != last {
                (last, same_since) = (now, std::time::Instant::now());
            }
        }
        last
    }

    /// CPU seconds the server process has used (user + system).
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).expect("proc stat");
        // Fields after the command name in parentheses: utime and stime are the 12th and 13th.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let f: Vec<f64> = rest.split_whitespace().map(|v| v.parse().unwrap_or(0.0)).collect();
        (f[11] + f[12]) / 100.0
    }

    fn status_kib(&self, key: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("proc status");
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .expect("a /proc status field")
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Sends SIGTERM and waits at most `limit` for the exit; returns the time it took.
    pub fn terminate(&mut self, limit: Duration) -> Duration {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
        let started = std::time::Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                assert!(s.success(), "a clean exit on SIGTERM: {s}");
                return started.elapsed();
            }
            assert!(started.elapsed() < limit, "the server did not stop within {limit:?} of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
