//! Settings: built-in defaults, then a TOML file (`--config`), then
//! `--set key=value` overrides, then flags and their environment variables.
//! Every key is both a flag (`max_batch_tokens` ↔ `--max-batch-tokens`, env
//! `CE_MAX_BATCH_TOKENS`) and a key in the file.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use serde::{Deserialize, Serialize};

/// Why the settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file or an override is not valid TOML or names an unknown key.
    #[error("invalid settings: {0}")]
    Invalid(String),
}

/// One model replica of a heterogeneous pool (`[[instances]]` in the file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    /// Model directory or hub id (default: `model`).
    pub model: Option<String>,
    /// Weight precision (default: `dtype`).
    pub dtype: Option<String>,
    /// Device (default: the next of `devices`).
    pub device: Option<String>,
    /// Compute threads (default: `threads_per_replica`).
    pub threads: Option<usize>,
}

/// Everything the supervisor can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Model directory or hub id.
    pub model: String,
    /// Model replicas (one process each).
    pub replicas: usize,
    /// Tokenizer worker processes; 0 tokenizes inside the supervisor.
    pub tokenizers: usize,
    /// Devices, assigned to replicas round-robin (`cpu`, `cuda:N`, `metal:N`).
    pub devices: Vec<String>,
    /// Weight precision: f32, f16, bf16, q8_0, q4_0, i8 (CPU).
    pub dtype: String,
    /// Compute threads per replica (default: max(1, cores / replicas)).
    pub threads_per_replica: Option<usize>,
    /// A heterogeneous pool; when non-empty it replaces `replicas`.
    pub instances: Vec<Instance>,
    /// Longest pair in tokens (capped by the model).
    pub max_length: usize,
    /// Attention layout: `grouped` (sequences of close lengths together),
    /// `single` (one attention block padded to the batch's longest) or
    /// `padded` (every layer on sequences padded to the longest); the last
    /// two are the padding experiment's baselines.
    pub attention: String,
    /// Token budget of a batch (real tokens, as the packed engine computes them).
    pub max_batch_tokens: usize,
    /// Pairs in a batch at most.
    pub max_batch_size: usize,
    /// How long a partial batch may wait for company while every replica is busy.
    pub batch_timeout_ms: u64,
    /// Batches in flight per replica.
    pub max_inflight_per_replica: usize,
    /// Pairs per tokenize job.
    pub tokenize_chunk: usize,
    /// A worker holding a batch or tokenize job longer is killed and replaced.
    pub batch_deadline_ms: u64,
    /// Documents (or pairs) per request at most.
    pub max_documents: usize,
    /// Characters per query or document at most.
    pub max_input_chars: usize,
    /// Pairs waiting to be scored at most; beyond it requests are refused.
    pub max_queue_pairs: usize,
    /// Largest gRPC message or HTTP body accepted, in bytes.
    pub max_request_bytes: usize,
    /// gRPC listen address.
    pub grpc_addr: SocketAddr,
    /// HTTP listen address (`/rerank`, `/health`, `/info`, `/metrics`).
    pub http_addr: SocketAddr,
    /// Where the worker binaries are (default: beside `ce-supervisor`).
    pub worker_dir: Option<PathBuf>,
    /// Listen on this address instead of the addresses' own (e.g. `0.0.0.0`:
    /// exposing the server is explicit).
    pub host: Option<std::net::IpAddr>,
    /// Require `authorization: Bearer KEY` for scoring and info.
    pub api_key: Option<String>,
    /// PEM certificate chain: with `tls_key`, both ports speak TLS only.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// How long in-flight work may take to finish after SIGTERM.
    pub shutdown_grace_ms: u64,
    /// Worker heartbeat period.
    pub heartbeat_ms: u64,
    /// How long a worker may take to load and warm up.
    pub ready_timeout_s: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model: "models/minilm-l6-ce".into(),
            replicas: 1,
            tokenizers: 1,
            devices: vec!["cpu".into()],
            dtype: "f32".into(),
            threads_per_replica: None,
            instances: Vec::new(),
            max_length: 512,
            attention: "grouped".into(),
            max_batch_tokens: 16_384,
            max_batch_size: 128,
            batch_timeout_ms: 5,
            max_inflight_per_replica: 2,
            tokenize_chunk: 32,
            batch_deadline_ms: 60_000,
            max_documents: 1024,
            max_input_chars: 50_000,
            max_queue_pairs: 65_536,
            max_request_bytes: 8 << 20,
            grpc_addr: ([127, 0, 0, 1], 50051).into(),
            http_addr: ([127, 0, 0, 1], 8000).into(),
            worker_dir: None,
            host: None,
            api_key: None,
            tls_cert: None,
            tls_key: None,
            shutdown_grace_ms: 30_000,
            heartbeat_ms: 1_000,
            ready_timeout_s: 300,
        }
    }
}

/// The command line. Every flag is optional: unset ones fall back to the
/// file, then to the defaults.
#[derive(Debug, Parser, Default)]
#[command(
    name = "ce-supervisor",
    version,
    about = "Serve a cross-encoder reranker over gRPC and HTTP"
)]
pub struct Cli {
    /// TOML file with any of the keys below.
    #[arg(long, env = "CE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Override one key, e.g. `--set max_batch_tokens=8192` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Model directory or hub id.
    #[arg(long, env = "CE_MODEL")]
    pub model: Option<String>,
    /// Model replicas (one process each).
    #[arg(long, env = "CE_REPLICAS")]
    pub replicas: Option<usize>,
    /// Tokenizer worker processes; 0 tokenizes inside the supervisor.
    #[arg(long, env = "CE_TOKENIZERS")]
    pub tokenizers: Option<usize>,
    /// One device for every replica.
    #[arg(long, env = "CE_DEVICE", conflicts_with = "devices")]
    pub device: Option<String>,
    /// Devices assigned to replicas round-robin, e.g. `cuda:0,cuda:1`.
    #[arg(long, env = "CE_DEVICES", value_delimiter = ',')]
    pub devices: Option<Vec<String>>,
    /// Weight precision: f32, f16, bf16, q8_0, q4_0, i8 (CPU).
    #[arg(long, env = "CE_DTYPE")]
    pub dtype: Option<String>,
    /// Compute threads per replica (default: max(1, cores / replicas)).
    #[arg(long, env = "CE_THREADS_PER_REPLICA")]
    pub threads_per_replica: Option<usize>,
    /// Longest pair in tokens.
    #[arg(long, env = "CE_MAX_LENGTH")]
    pub max_length: Option<usize>,
    /// Attention layout: grouped (default), single (attention padded to the
    /// batch's longest) or padded (every layer padded).
    #[arg(long, env = "CE_ATTENTION")]
    pub attention: Option<String>,
    /// Token budget of a batch.
    #[arg(long, env = "CE_MAX_BATCH_TOKENS")]
    pub max_batch_tokens: Option<usize>,
    /// Pairs in a batch at most.
    #[arg(long, env = "CE_MAX_BATCH_SIZE")]
    pub max_batch_size: Option<usize>,
    /// Partial-batch wait while every replica is busy, in ms.
    #[arg(long, env = "CE_BATCH_TIMEOUT_MS")]
    pub batch_timeout_ms: Option<u64>,
    /// Batches in flight per replica.
    #[arg(long, env = "CE_MAX_INFLIGHT_PER_REPLICA")]
    pub max_inflight_per_replica: Option<usize>,
    /// Pairs per tokenize job.
    #[arg(long, env = "CE_TOKENIZE_CHUNK")]
    pub tokenize_chunk: Option<usize>,
    /// Kill and replace a worker holding a batch longer than this, in ms.
    #[arg(long, env = "CE_BATCH_DEADLINE_MS")]
    pub batch_deadline_ms: Option<u64>,
    /// Documents per request at most.
    #[arg(long, env = "CE_MAX_DOCUMENTS")]
    pub max_documents: Option<usize>,
    /// Characters per query or document at most.
    #[arg(long, env = "CE_MAX_INPUT_CHARS")]
    pub max_input_chars: Option<usize>,
    /// Pairs waiting to be scored at most.
    #[arg(long, env = "CE_MAX_QUEUE_PAIRS")]
    pub max_queue_pairs: Option<usize>,
    /// Largest gRPC message or HTTP body, in bytes.
    #[arg(long, env = "CE_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// gRPC listen address.
    #[arg(long, env = "CE_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// HTTP listen address.
    #[arg(long, env = "CE_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Directory of the worker binaries.
    #[arg(long, env = "CE_WORKER_DIR")]
    pub worker_dir: Option<PathBuf>,
    /// Listen address for both ports, e.g. `0.0.0.0` (default: loopback).
    #[arg(long, env = "CE_HOST")]
    pub host: Option<std::net::IpAddr>,
    /// Require `authorization: Bearer KEY` for scoring and info.
    #[arg(long, env = "CE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// PEM certificate chain; with `--tls-key`, gRPC and HTTP speak TLS.
    #[arg(long, env = "CE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `--tls-cert`.
    #[arg(long, env = "CE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Grace period after SIGTERM, in ms.
    #[arg(long, env = "CE_SHUTDOWN_GRACE_MS")]
    pub shutdown_grace_ms: Option<u64>,
    /// Worker heartbeat period, in ms.
    #[arg(long, env = "CE_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Seconds a worker may take to load.
    #[arg(long, env = "CE_READY_TIMEOUT_S")]
    pub ready_timeout_s: Option<u64>,
}

impl Cli {
    /// Flags that were given, as a TOML table of settings keys.
    fn as_table(&self) -> Result<toml::Table, ConfigError> {
        let mut t = toml::Table::new();
        let mut put = |k: &str, v: Option<toml::Value>| {
            if let Some(v) = v {
                t.insert(k.into(), v);
            }
        };
        let s = |v: &Option<String>| v.clone().map(toml::Value::String);
        let n = |v: Option<usize>| v.map(|v| toml::Value::Integer(v as i64));
        let u = |v: Option<u64>| v.map(|v| toml::Value::Integer(v as i64));
        let a = |v: Option<SocketAddr>| v.map(|v| toml::Value::String(v.to_string()));
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| toml::Value::String(p.display().to_string()))
        };
        put("model", s(&self.model));
        put("replicas", n(self.replicas));
        put("tokenizers", n(self.tokenizers));
        put(
            "devices",
            self.device
                .clone()
                .map(|d| vec![d])
                .or_else(|| self.devices.clone())
                .map(|d| d.into()),
        );
        put("dtype", s(&self.dtype));
        put("threads_per_replica", n(self.threads_per_replica));
        put("max_length", n(self.max_length));
        put("attention", s(&self.attention));
        put("max_batch_tokens", n(self.max_batch_tokens));
        put("max_batch_size", n(self.max_batch_size));
        put("batch_timeout_ms", u(self.batch_timeout_ms));
        put("max_inflight_per_replica", n(self.max_inflight_per_replica));
        put("tokenize_chunk", n(self.tokenize_chunk));
        put("batch_deadline_ms", u(self.batch_deadline_ms));
        put("max_documents", n(self.max_documents));
        put("max_input_chars", n(self.max_input_chars));
        put("max_queue_pairs", n(self.max_queue_pairs));
        put("max_request_bytes", n(self.max_request_bytes));
        put("grpc_addr", a(self.grpc_addr));
        put("http_addr", a(self.http_addr));
        put("worker_dir", path(&self.worker_dir));
        put(
            "host",
            self.host.map(|h| toml::Value::String(h.to_string())),
        );
        put("api_key", s(&self.api_key));
        put("tls_cert", path(&self.tls_cert));
        put("tls_key", path(&self.tls_key));
        put("shutdown_grace_ms", u(self.shutdown_grace_ms));
        put("heartbeat_ms", u(self.heartbeat_ms));
        put("ready_timeout_s", u(self.ready_timeout_s));
        Ok(t)
    }

    /// Resolves the settings: defaults < file < `--set` < flags/env.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let mut table = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))?
            }
            None => toml::Table::new(),
        };
        for o in &self.overrides {
            let (key, value) = o
                .split_once('=')
                .ok_or_else(|| ConfigError::Invalid(format!("--set {o:?}: expected KEY=VALUE")))?;
            // A value that is not TOML (an unquoted path, say) is a string.
            let value = format!("v = {value}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(value.to_string()));
            table.insert(key.trim().to_string(), value);
        }
        table.extend(self.as_table()?);
        let mut settings: Settings = Settings::deserialize(toml::Value::Table(table))
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some(host) = settings.host {
            settings.grpc_addr.set_ip(host);
            settings.http_addr.set_ip(host);
        }
        settings.validate()?;
        Ok(settings)
    }
}

/// Where, on what and how one replica runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaPlan {
    /// Model directory or hub id.
    pub model: String,
    /// Weight precision.
    pub dtype: String,
    /// Device.
    pub device: String,
    /// Compute threads.
    pub threads: usize,
}

impl Settings {
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.instances.is_empty() && self.replicas == 0 {
            return bad("replicas must be at least 1".into());
        }
        if self.devices.is_empty() {
            return bad("devices must name at least one device".into());
        }
        for (key, v) in [
            ("max_batch_tokens", self.max_batch_tokens),
            ("max_batch_size", self.max_batch_size),
            ("max_inflight_per_replica", self.max_inflight_per_replica),
            ("tokenize_chunk", self.tokenize_chunk),
            ("batch_deadline_ms", self.batch_deadline_ms as usize),
            ("max_documents", self.max_documents),
            ("max_input_chars", self.max_input_chars),
            ("max_queue_pairs", self.max_queue_pairs),
            ("max_request_bytes", self.max_request_bytes),
            ("max_length", self.max_length),
        ] {
            if v == 0 {
                return bad(format!("{key} must be at least 1"));
            }
        }
        if self.max_batch_tokens < self.max_length {
            return bad(format!(
                "max_batch_tokens ({}) must hold one pair of max_length ({}) tokens",
                self.max_batch_tokens, self.max_length
            ));
        }
        if !matches!(self.attention.as_str(), "grouped" | "single" | "padded") {
            return bad(format!(
                "attention {:?}: expected \"grouped\", \"single\" or \"padded\"",
                self.attention
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("tls_cert and tls_key go together: give both or neither".into());
        }
        Ok(())
    }

    /// The replicas to start: `instances` if given, else `replicas` copies,
    /// devices round-robin, threads = max(1, cores / replicas) unless set.
    pub fn replica_plans(&self, cores: usize) -> Vec<ReplicaPlan> {
        let count = if self.instances.is_empty() {
            self.replicas
        } else {
            self.instances.len()
        };
        let default_threads = self
            .threads_per_replica
            .unwrap_or((cores / count.max(1)).max(1));
        (0..count)
            .map(|i| {
                let inst = self.instances.get(i).cloned().unwrap_or_default();
                ReplicaPlan {
                    model: inst.model.unwrap_or_else(|| self.model.clone()),
                    dtype: inst.dtype.unwrap_or_else(|| self.dtype.clone()),
                    device: inst
                        .device
                        .unwrap_or_else(|| self.devices[i % self.devices.len()].clone()),
                    threads: inst.threads.unwrap_or(default_threads),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("ce-supervisor").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn flags_beat_overrides_beat_the_file_beat_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "replicas = 3\nmax_batch_size = 7\ntokenizers = 2\n").unwrap();
        let f = file.to_str().unwrap();
        let s = cli(&[
            "--config",
            f,
            "--set",
            "max_batch_size=9",
            "--tokenizers",
            "4",
        ])
        .settings()
        .unwrap();
        assert_eq!((s.replicas, s.max_batch_size, s.tokenizers), (3, 9, 4));
        assert_eq!(s.max_documents, Settings::default().max_documents);
    }

    #[test]
    fn host_is_explicit_and_moves_both_listeners() {
        let s = cli(&[]).settings().unwrap();
        assert!(s.grpc_addr.ip().is_loopback() && s.http_addr.ip().is_loopback());
        let s = cli(&["--host", "0.0.0.0", "--grpc-addr", "127.0.0.1:7000"])
            .settings()
            .unwrap();
        assert_eq!(s.grpc_addr.to_string(), "0.0.0.0:7000");
        assert_eq!(s.http_addr.to_string(), "0.0.0.0:8000");
    }

    #[test]
    fn the_shipped_config_documents_every_key_with_its_default() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../conf/config.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let shipped: Settings = toml::from_str(&text).unwrap();
        assert_eq!(shipped, Settings::default(), "conf/config.toml values");
        // Every key, optional ones included, is there (maybe commented out).
        let all = Settings {
            threads_per_replica: Some(1),
            worker_dir: Some("/w".into()),
            host: Some([0, 0, 0, 0].into()),
            api_key: Some("k".into()),
            tls_cert: Some("/c".into()),
            tls_key: Some("/k".into()),
            ..Settings::default()
        };
        let keys = toml::Table::try_from(&all).unwrap();
        for key in keys.keys() {
            assert!(
                text.contains(&format!("{key} =")) || text.contains(&format!("[[{key}]]")),
                "conf/config.toml does not mention {key}"
            );
        }
    }

    #[test]
    fn tls_needs_both_certificate_and_key() {
        let e = cli(&["--set", "tls_cert=/c.pem"])
            .settings()
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls_key"), "{e}");
        assert!(Cli::try_parse_from(["ce-supervisor", "--tls-key", "/k.pem"]).is_err());
        let s = cli(&["--tls-cert", "/c.pem", "--tls-key", "/k.pem"])
            .settings()
            .unwrap();
        assert_eq!(s.tls_key.as_deref(), Some(std::path::Path::new("/k.pem")));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = cli(&["--set", "max_batch_tokenz=1"])
            .settings()
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_batch_tokenz"), "{e}");
        let e = cli(&["--max-batch-size", "0"])
            .settings()
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_batch_size"), "{e}");
    }

    #[test]
    fn replicas_share_the_cores_and_devices_round_robin() {
        let s = cli(&["--replicas", "3", "--devices", "cuda:0,cuda:1"])
            .settings()
            .unwrap();
        let plans = s.replica_plans(2);
        assert_eq!(
            plans.iter().map(|p| p.device.as_str()).collect::<Vec<_>>(),
            ["cuda:0", "cuda:1", "cuda:0"]
        );
        assert!(plans.iter().all(|p| p.threads == 1));
        let s = cli(&["--replicas", "2"]).settings().unwrap();
        assert!(s.replica_plans(16).iter().all(|p| p.threads == 8));
    }

    #[test]
    fn instances_make_a_heterogeneous_pool() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[[instances]]\ndtype = \"q8_0\"\n[[instances]]\ndevice = \"cuda:1\"\nthreads = 3\n",
        )
        .unwrap();
        let s = cli(&["--config", file.to_str().unwrap()])
            .settings()
            .unwrap();
        let plans = s.replica_plans(4);
        assert_eq!(plans.len(), 2);
        assert_eq!((plans[0].dtype.as_str(), plans[0].threads), ("q8_0", 2));
        assert_eq!((plans[1].device.as_str(), plans[1].threads), ("cuda:1", 3));
    }
}
