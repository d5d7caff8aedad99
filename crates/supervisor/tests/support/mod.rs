//! Test-side helpers around the one server harness
//! ([`ce_bench::server::Supervisor`], which the benchmarks use too): the
//! default model, the tests' way of starting a server (SIGKILL on drop,
//! failing the test on error), small real clients and the engine's
//! reference scores.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

pub use ce_bench::server::{Launch, OnDrop, Supervisor};
use ce_proto::v1::cross_encoder_client::CrossEncoderClient;
use tonic::transport::Channel;

pub use ce_bench::server::{http, workspace_root};

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

/// Where the server and worker executables of this build are.
pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_ce-supervisor"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A running supervisor on ports it chose; killed (SIGKILL) if the test
/// ends without stopping it.
pub struct Server(Supervisor);

impl std::ops::Deref for Server {
    type Target = Supervisor;

    fn deref(&self) -> &Supervisor {
        &self.0
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut Supervisor {
        &mut self.0
    }
}

impl Server {
    /// Starts the server without waiting for readiness (its ports listen).
    pub fn spawn(args: &[&str], worker_dir: &Path) -> Self {
        Self::spawn_with_env(args, worker_dir, &[])
    }

    /// [`Server::spawn`] with extra environment variables (workers inherit them).
    pub fn spawn_with_env(args: &[&str], worker_dir: &Path, env: &[(&str, String)]) -> Self {
        let launch = Launch {
            model: model_dir().display().to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            worker_dir: Some(worker_dir.to_path_buf()),
            on_drop: OnDrop::Kill,
            own_process_group: false,
            log_file: None,
        };
        Self(Supervisor::launch(launch).expect("start ce-supervisor"))
    }

    /// Starts the server as a shell starts a foreground job (its own
    /// process group) and waits until it serves.
    pub fn start_as_job(args: &[&str]) -> Self {
        let launch = Launch {
            model: model_dir().display().to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            worker_dir: Some(bin_dir()),
            on_drop: OnDrop::Kill,
            own_process_group: true,
            ..Launch::default()
        };
        let server = Self(Supervisor::launch(launch).expect("start ce-supervisor"));
        server.wait_ready(Duration::from_secs(60));
        server
    }

    /// Starts a server from a `Launch` (a model other than the default…),
    /// without waiting for readiness.
    pub fn launch(launch: Launch) -> Result<Self, ce_bench::server::ServerError> {
        Supervisor::launch(launch).map(Self)
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

    /// Waits until `/health` says it serves; fails the test otherwise.
    pub fn wait_ready(&self, limit: Duration) {
        self.0
            .wait_ready(limit)
            .unwrap_or_else(|e| panic!("server not ready: {e}"));
    }

    /// A gRPC client.
    pub async fn client(&self) -> CrossEncoderClient<Channel> {
        self.0.client().await.expect("connect")
    }

    /// SIGTERM, then the exit status (within `limit`).
    pub fn terminate(&mut self, limit: Duration) -> ExitStatus {
        self.0
            .terminate(limit)
            .unwrap_or_else(|e| panic!("server did not exit within {limit:?} of SIGTERM: {e}"))
    }
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
