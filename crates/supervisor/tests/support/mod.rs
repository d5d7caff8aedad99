//! A real `ce-supervisor` process for the tests, and small real clients.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ce_proto::v1::cross_encoder_client::CrossEncoderClient;
use tonic::transport::Channel;

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The default model; the tests fail (not skip) without it.
pub fn model_dir() -> PathBuf {
    let dir = workspace_root().join("models/minilm-l6-ce");
    assert!(
        dir.join("model.safetensors").is_file(),
        "default model missing at {}: run scripts/fetch_model.sh (scripts/test.sh does)",
        dir.display()
    );
    dir
}

pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_ce-supervisor"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running supervisor; killed (SIGKILL) if the test ends without stopping it.
pub struct Server {
    pub child: Option<Child>,
    pub grpc_port: u16,
    pub http_port: u16,
}

impl Server {
    /// Starts the server without waiting for readiness.
    pub fn spawn(args: &[&str], worker_dir: &Path) -> Self {
        Self::spawn_with_env(args, worker_dir, &[])
    }

    /// [`Server::spawn`] with extra environment variables (workers inherit them).
    pub fn spawn_with_env(args: &[&str], worker_dir: &Path, env: &[(&str, String)]) -> Self {
        let (grpc_port, http_port) = (free_port(), free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_ce-supervisor"))
            .arg("--model")
            .arg(model_dir())
            .args(["--grpc-addr", &format!("127.0.0.1:{grpc_port}")])
            .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
            .arg("--worker-dir")
            .arg(worker_dir)
            .args(args)
            .env("CE_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .spawn()
            .expect("start ce-supervisor");
        Self {
            child: Some(child),
            grpc_port,
            http_port,
        }
    }

    /// Starts the server and waits until `/health` says it serves.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// [`Server::start`] with extra environment variables (workers inherit them).
    pub fn start_with_env(args: &[&str], env: &[(&str, String)]) -> Self {
        let server = Self::spawn_with_env(args, &bin_dir(), env);
        server.wait_ready(Duration::from_secs(60));
        server
    }

    pub fn wait_ready(&self, limit: Duration) {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if let Ok((200, _)) = http(self.http_port, "GET", "/health", None) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server not ready within {limit:?}");
    }

    pub async fn client(&self) -> CrossEncoderClient<Channel> {
        CrossEncoderClient::connect(format!("http://127.0.0.1:{}", self.grpc_port))
            .await
            .expect("connect")
    }

    /// The worker processes (pid, executable name), from every thread's
    /// children (workers are spawned by a dedicated thread).
    pub fn workers(&self) -> Vec<(u32, String)> {
        let pid = self.pid();
        let mut out = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok())
            {
                let name =
                    std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
                out.push((child, name.trim().to_string()));
            }
        }
        out
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGTERM, then the exit status (within `limit`).
    pub fn terminate(&mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let until = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > until {
                let _ = child.kill();
                panic!("server did not exit within {limit:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A minimal HTTP/1.1 client: `(status, body)`.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    json: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = json.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let status = response
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The value of the first sample of `name` on the server's `/metrics`
/// (-1 when absent).
pub fn metric(port: u16, name: &str) -> f64 {
    let (_, metrics) = http(port, "GET", "/metrics", None).unwrap();
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(-1.0)
}

#[derive(Debug, serde::Deserialize)]
pub struct Fixture {
    pub pairs: Vec<FixturePair>,
}

#[derive(Debug, serde::Deserialize)]
pub struct FixturePair {
    pub query: String,
    pub passage: String,
}

pub fn fixture() -> Fixture {
    let path = workspace_root().join("tests/fixtures/golden_minilm_l6_ce.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A Score request of `query` against every document, raw logits.
pub fn score_request(query: &str, documents: &[String]) -> ce_proto::v1::ScoreRequest {
    ce_proto::v1::ScoreRequest {
        pairs: documents
            .iter()
            .map(|d| ce_proto::v1::Pair {
                query: query.into(),
                passage: d.clone(),
            })
            .collect(),
        raw_scores: true,
        ..Default::default()
    }
}

/// A small Rerank request: "q" against "a" and "b".
pub fn two_document_rerank() -> ce_proto::v1::RerankRequest {
    ce_proto::v1::RerankRequest {
        query: "q".into(),
        documents: vec!["a".into(), "b".into()],
        ..Default::default()
    }
}

/// The bare engine's raw logit of `query` with each document.
pub fn engine_logits_for(query: &str, documents: &[String]) -> Vec<f32> {
    engine_logits(
        &documents
            .iter()
            .map(|d| (query.to_string(), d.clone()))
            .collect::<Vec<_>>(),
    )
}

/// The bare engine's raw logit for each pair (the reference).
pub fn engine_logits(pairs: &[(String, String)]) -> Vec<f32> {
    engine_logits_in(model_worker::WeightDType::F32, pairs)
}

/// The bare engine's raw logit for each pair, in `dtype`.
pub fn engine_logits_in(dtype: model_worker::WeightDType, pairs: &[(String, String)]) -> Vec<f32> {
    let mut config = model_worker::EngineConfig::new(model_dir().to_str().unwrap());
    config.dtype = dtype;
    let engine = model_worker::Engine::load(&config).unwrap();
    let mut batch = ce_common::TokenBatch::default();
    for (q, p) in pairs {
        engine
            .tokenizer()
            .encode_into(&mut batch, q, p, Default::default())
            .unwrap();
    }
    engine.score(&batch).unwrap().first_logits()
}
