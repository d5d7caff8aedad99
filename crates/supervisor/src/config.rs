//! Settings: built-in defaults, then a TOML file (`--config`), then
//! `--set key=value` overrides, then flags and their environment variables.
//! Every key is both a flag (`max_batch_tokens` ↔ `--max-batch-tokens`, env
//! `CE_MAX_BATCH_TOKENS`) and a key in the file, declared once in the
//! `settings!` list below. Values are typed as they are read (a dtype is a
//! [`WeightDType`]), so a bad one is refused here, with its key.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use ce_model_spec::{AttentionLayout, DeviceSpec, ReplicaSpec, WeightDType};

pub use crate::chunks::Aggregation;
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
    /// The name requests route to with `model` (default: the model's id,
    /// see [`model_id`], or `served_model_name` for the default model).
    /// Instances of one name serve one model, side by side.
    pub name: Option<String>,
    /// Weight precision (default: `dtype`).
    pub dtype: Option<WeightDType>,
    /// Device (default: the next of `devices`).
    pub device: Option<DeviceSpec>,
    /// Compute threads (default: `threads_per_replica`).
    pub threads: Option<usize>,
    /// Which logit is the relevance score (default: the label `config.json`'s
    /// `id2label` names "relevant"/"positive"/"yes", else the second of two,
    /// else the first).
    pub relevant_label: Option<usize>,
    /// An LLM reranker's prompt (default: `prompt_template`).
    pub prompt_template: Option<String>,
    /// An LLM reranker's default instruction (default: `instruction`).
    pub instruction: Option<String>,
}

/// A comma-separated device list on the command line (`cuda:0,cuda:1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceList(pub Vec<DeviceSpec>);

impl std::str::FromStr for DeviceList {
    type Err = ce_model_spec::SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl From<DeviceList> for Vec<DeviceSpec> {
    fn from(list: DeviceList) -> Self {
        list.0
    }
}

/// Declares every setting once — doc, flag attributes, key, type, flag
/// value type, default — and generates from that list the [`Settings`]
/// struct (the file's keys, via serde), its `Default`, and [`SettingFlags`]
/// (each key as an optional flag with its environment variable, via clap).
/// Flags are merged into the file's table by their key, so the three can
/// never disagree. `file_only` keys (tables) have no flag.
macro_rules! settings {
    (
        flags {
            $( $(#[doc = $doc:literal])* [$($arg:tt)*] $name:ident : $ty:ty => $flag:ident = $default:expr, )*
        }
        file_only {
            $( $(#[doc = $fdoc:literal])* $fname:ident : $fty:ty = $fdefault:expr, )*
        }
    ) => {
        /// Everything the supervisor can be told.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct Settings {
            $( $(#[doc = $doc])* pub $name: $ty, )*
            $( $(#[doc = $fdoc])* pub $fname: $fty, )*
        }

        impl Default for Settings {
            fn default() -> Self {
                Self {
                    $( $name: $default, )*
                    $( $fname: $fdefault, )*
                }
            }
        }

        /// Every setting that has a flag, unset unless given (on the
        /// command line or in its environment variable).
        #[derive(Debug, clap::Args, Default)]
        pub struct SettingFlags {
            $( $(#[doc = $doc])* #[arg($($arg)*)] pub $name: Option<$flag>, )*
        }

        impl SettingFlags {
            /// The flags that were given, as a table of settings keys.
            fn as_table(&self) -> Result<toml::Table, ConfigError> {
                let mut table = toml::Table::new();
                $(
                    if let Some(value) = &self.$name {
                        let value: $ty = value.clone().into();
                        let value = toml::Value::try_from(&value).map_err(|e| {
                            ConfigError::Invalid(format!("{}: {e}", stringify!($name)))
                        })?;
                        table.insert(stringify!($name).into(), value);
                    }
                )*
                Ok(table)
            }
        }
    };
}

settings! {
    flags {
        /// Model directory or hub id: the default model.
        [long, env = "CE_MODEL"]
        model: String => String = "models/minilm-l6-ce".into(),
        /// The name clients give as `model` for the default model (default:
        /// its id: a directory's last component, or the hub id); a request
        /// without `model` gets it.
        [long, env = "CE_SERVED_MODEL_NAME"]
        served_model_name: Option<String> => String = None,
        /// An LLM reranker's prompt (Qwen3 models): the text with
        /// `{instruction}`, `{query}` and `{document}` in it (default:
        /// Qwen3-Reranker's). Encoders take none.
        [long, env = "CE_PROMPT_TEMPLATE"]
        prompt_template: Option<String> => String = None,
        /// The instruction an LLM reranker's request gets when it names
        /// none (default: Qwen3-Reranker's, "Given a web search query,
        /// retrieve relevant passages that answer the query").
        [long, env = "CE_INSTRUCTION"]
        instruction: Option<String> => String = None,
        /// Model replicas (one process each).
        [long, env = "CE_REPLICAS"]
        replicas: usize => usize = 1,
        /// Tokenizer worker processes; 0 tokenizes inside the supervisor.
        [long, env = "CE_TOKENIZERS"]
        tokenizers: usize => usize = 1,
        /// Threads each tokenizer worker encodes a job's documents on: 1
        /// scales tokenization by processes alone; more turns on the
        /// tokenizers library's batch parallelism (`TOKENIZERS_PARALLELISM`)
        /// inside every worker, for few workers on many cores.
        [long, env = "CE_TOKENIZER_THREADS"]
        tokenizer_threads: usize => usize = 1,
        /// Devices assigned to replicas round-robin (`cpu`, `cuda:N`,
        /// `metal:N`), e.g. `cuda:0,cuda:1`.
        [long, env = "CE_DEVICES"]
        devices: Vec<DeviceSpec> => DeviceList = vec![DeviceSpec::Cpu],
        /// Weight precision: f32, f16, bf16, q8_0, q4_0, i8 (CPU).
        [long, env = "CE_DTYPE"]
        dtype: WeightDType => WeightDType = WeightDType::F32,
        /// Compute threads per replica (default: max(1, cores / replicas)).
        [long, env = "CE_THREADS_PER_REPLICA"]
        threads_per_replica: Option<usize> => usize = None,
        /// Longest pair in tokens (capped by the model).
        [long, env = "CE_MAX_LENGTH"]
        max_length: usize => usize = 512,
        /// Attention layout: `grouped` (sequences of close lengths together),
        /// `single` (one attention block padded to the batch's longest) or
        /// `padded` (every layer on sequences padded to the longest); the last
        /// two are the padding experiment's baselines.
        [long, env = "CE_ATTENTION"]
        attention: AttentionLayout => AttentionLayout = AttentionLayout::Grouped,
        /// Token budget of a batch (real tokens, as the packed engine computes them).
        [long, env = "CE_MAX_BATCH_TOKENS"]
        max_batch_tokens: usize => usize = 16_384,
        /// Pairs in a batch at most.
        [long, env = "CE_MAX_BATCH_SIZE"]
        max_batch_size: usize => usize = 128,
        /// How long a partial batch may wait for company while every replica
        /// is busy, in ms.
        [long, env = "CE_BATCH_TIMEOUT_MS"]
        batch_timeout_ms: u64 => u64 = 5,
        /// Batches in flight per replica.
        [long, env = "CE_MAX_INFLIGHT_PER_REPLICA"]
        max_inflight_per_replica: usize => usize = 2,
        /// Pairs per tokenize job.
        [long, env = "CE_TOKENIZE_CHUNK"]
        tokenize_chunk: usize => usize = 32,
        /// A worker holding a batch or tokenize job longer is killed and
        /// replaced, in ms.
        [long, env = "CE_BATCH_DEADLINE_MS"]
        batch_deadline_ms: u64 => u64 = 60_000,
        /// Documents (or pairs) per request at most.
        [long, env = "CE_MAX_DOCUMENTS"]
        max_documents: usize => usize = 1024,
        /// Characters per query or document at most.
        [long, env = "CE_MAX_INPUT_CHARS"]
        max_input_chars: usize => usize = 50_000,
        /// Windows a long document is split into at most: the default of
        /// Cohere's `max_chunks_per_doc`, and the most a request may ask.
        [long, env = "CE_MAX_CHUNKS_PER_DOC"]
        max_chunks_per_doc: usize => usize = 10,
        /// Tokens each window of a long document shares with the one before.
        [long, env = "CE_CHUNK_OVERLAP_TOKENS"]
        chunk_overlap_tokens: usize => usize = 64,
        /// How a document's window scores become its score: `max`, `first`
        /// or `mean_top_k` (the mean of the best `chunk_top_k`).
        [long, env = "CE_CHUNK_AGGREGATION"]
        chunk_aggregation: Aggregation => Aggregation = Aggregation::Max,
        /// Windows `mean_top_k` averages.
        [long, env = "CE_CHUNK_TOP_K"]
        chunk_top_k: usize => usize = 3,
        /// Tokens of a document considered at most before it is split: the
        /// default of Cohere v2's `max_tokens_per_doc`, and its ceiling.
        [long, env = "CE_MAX_TOKENS_PER_DOC"]
        max_tokens_per_doc: usize => usize = 4096,
        /// Pairs admitted and not yet scored at most; beyond it requests are
        /// refused (RESOURCE_EXHAUSTED / 429).
        [long, env = "CE_MAX_QUEUE_PAIRS"]
        max_queue_pairs: usize => usize = 65_536,
        /// Tokens of model work queued at most, counted once a request is
        /// tokenized; a request over it alone, or past it with the queue, is
        /// refused (RESOURCE_EXHAUSTED / 429).
        [long, env = "CE_MAX_QUEUE_TOKENS"]
        max_queue_tokens: usize => usize = 262_144,
        /// Longest a request may take on the server, in ms (a client's
        /// shorter deadline wins): then DEADLINE_EXCEEDED / 504.
        [long, env = "CE_REQUEST_TIMEOUT_MS"]
        request_timeout_ms: u64 => u64 = 120_000,
        /// Largest gRPC message or HTTP body accepted, in bytes.
        [long, env = "CE_MAX_REQUEST_BYTES"]
        max_request_bytes: usize => usize = 8 << 20,
        /// gRPC listen address (port 0: any free port; see `addr_file`).
        [long, env = "CE_GRPC_ADDR"]
        grpc_addr: SocketAddr => SocketAddr = ([127, 0, 0, 1], 50051).into(),
        /// HTTP listen address (`/rerank`, `/health`, `/info`, `/metrics`).
        [long, env = "CE_HTTP_ADDR"]
        http_addr: SocketAddr => SocketAddr = ([127, 0, 0, 1], 8000).into(),
        /// Once both ports listen, write their addresses here as JSON
        /// (`{"grpc": "127.0.0.1:PORT", "http": …}`): with port 0, how a test
        /// or a launcher learns them without racing for a free port.
        [long, env = "CE_ADDR_FILE"]
        addr_file: Option<PathBuf> => PathBuf = None,
        /// Where the worker binaries are (default: beside `ce-supervisor`).
        [long, env = "CE_WORKER_DIR"]
        worker_dir: Option<PathBuf> => PathBuf = None,
        /// Listen on this address instead of the addresses' own (e.g. `0.0.0.0`:
        /// exposing the server is explicit).
        [long, env = "CE_HOST"]
        host: Option<IpAddr> => IpAddr = None,
        /// Require `authorization: Bearer KEY` for scoring and info.
        [long, env = "CE_API_KEY", hide_env_values = true]
        api_key: Option<String> => String = None,
        /// PEM certificate chain: with `tls_key`, both ports speak TLS only.
        [long, env = "CE_TLS_CERT", requires = "tls_key"]
        tls_cert: Option<PathBuf> => PathBuf = None,
        /// PEM private key of `tls_cert`.
        [long, env = "CE_TLS_KEY", requires = "tls_cert"]
        tls_key: Option<PathBuf> => PathBuf = None,
        /// An HTTP connection is closed when a request's headers take longer
        /// than this to arrive, in ms.
        [long, env = "CE_HTTP_HEADER_TIMEOUT_MS"]
        http_header_timeout_ms: u64 => u64 = 10_000,
        /// An HTTP connection with no request for this long is closed, in ms.
        [long, env = "CE_HTTP_IDLE_TIMEOUT_MS"]
        http_idle_timeout_ms: u64 => u64 = 60_000,
        /// A request body that takes longer to arrive is refused (408), in ms.
        [long, env = "CE_HTTP_BODY_TIMEOUT_MS"]
        http_body_timeout_ms: u64 => u64 = 30_000,
        /// A gRPC connection that has not sent its first bytes (the HTTP/2
        /// preface, or TLS hello) within this is closed, in ms.
        [long, env = "CE_GRPC_HANDSHAKE_TIMEOUT_MS"]
        grpc_handshake_timeout_ms: u64 => u64 = 10_000,
        /// HTTP/2 keepalive pings on gRPC connections every this many ms…
        [long, env = "CE_GRPC_KEEPALIVE_INTERVAL_MS"]
        grpc_keepalive_interval_ms: u64 => u64 = 30_000,
        /// …and a connection whose ping is not answered within this is closed, in ms.
        [long, env = "CE_GRPC_KEEPALIVE_TIMEOUT_MS"]
        grpc_keepalive_timeout_ms: u64 => u64 = 10_000,
        /// Concurrent streams (calls) per gRPC connection at most, advertised
        /// in SETTINGS_MAX_CONCURRENT_STREAMS.
        [long, env = "CE_GRPC_MAX_CONCURRENT_STREAMS"]
        grpc_max_concurrent_streams: u32 => u32 = 256,
        /// Failed starts in a row after which a worker slot stops retrying
        /// and reports why ("replica N cannot load: …").
        [long, env = "CE_MAX_START_ATTEMPTS"]
        max_start_attempts: u32 => u32 = 5,
        /// How long in-flight requests may take to finish after SIGTERM, in ms.
        [long, env = "CE_SHUTDOWN_GRACE_MS"]
        shutdown_grace_ms: u64 => u64 = 30_000,
        /// Then how long the workers may take to finish and exit, in ms;
        /// whatever is left ends with the supervisor (parent-death signal).
        [long, env = "CE_WORKER_GRACE_MS"]
        worker_grace_ms: u64 => u64 = 2_000,
        /// Worker heartbeat period, in ms.
        [long, env = "CE_HEARTBEAT_MS"]
        heartbeat_ms: u64 => u64 = 1_000,
        /// How long a worker may take to load and warm up, in seconds.
        [long, env = "CE_READY_TIMEOUT_S"]
        ready_timeout_s: u64 => u64 = 300,
    }
    file_only {
        /// A heterogeneous pool; when non-empty it replaces `replicas`.
        instances: Vec<Instance> = Vec::new(),
    }
}

/// The command line: every setting as an optional flag (unset ones fall
/// back to `--set`, the file, then the defaults), plus where the file is.
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
    /// One device for every replica (shorthand for `--devices`).
    #[arg(long, env = "CE_DEVICE", conflicts_with = "devices")]
    pub device: Option<DeviceSpec>,
    /// The settings' flags.
    #[command(flatten)]
    pub flags: SettingFlags,
}

impl Cli {
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
        table.extend(self.flags.as_table()?);
        if let Some(device) = self.device {
            let devices = toml::Value::try_from(vec![device])
                .map_err(|e| ConfigError::Invalid(format!("device: {e}")))?;
            table.insert("devices".into(), devices);
        }
        // Through TOML text, so that a bad value's error shows its key and
        // line (`dtype = "q3"` … unknown dtype "q3").
        let text = toml::to_string(&table).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let mut settings: Settings =
            toml::from_str(&text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some(host) = settings.host {
            settings.grpc_addr.set_ip(host);
            settings.http_addr.set_ip(host);
        }
        settings.validate()?;
        Ok(settings)
    }
}

/// A model's name when none is given: a local directory's last component
/// (`models/minilm-l6-ce` → `minilm-l6-ce`), else the hub id as given.
pub fn model_id(model: &str) -> String {
    let path = std::path::Path::new(model);
    match path.file_name() {
        Some(last) if path.is_dir() => last.to_string_lossy().into_owned(),
        _ => model.to_string(),
    }
}

/// The longest duration a setting may name: a day. Longer is a typo, and
/// arithmetic on it (a heartbeat times the misses allowed) stays in range.
pub const MAX_DURATION_MS: u64 = 86_400_000;

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
            ("tokenizer_threads", self.tokenizer_threads),
            ("max_documents", self.max_documents),
            ("max_input_chars", self.max_input_chars),
            ("max_chunks_per_doc", self.max_chunks_per_doc),
            ("chunk_top_k", self.chunk_top_k),
            ("max_tokens_per_doc", self.max_tokens_per_doc),
            ("max_queue_pairs", self.max_queue_pairs),
            ("max_queue_tokens", self.max_queue_tokens),
            ("max_request_bytes", self.max_request_bytes),
            ("max_length", self.max_length),
            (
                "grpc_max_concurrent_streams",
                self.grpc_max_concurrent_streams as usize,
            ),
            ("max_start_attempts", self.max_start_attempts as usize),
        ] {
            if v == 0 {
                return bad(format!("{key} must be at least 1"));
            }
        }
        for (key, ms, least) in [
            ("batch_timeout_ms", self.batch_timeout_ms, 0),
            ("batch_deadline_ms", self.batch_deadline_ms, 1),
            ("request_timeout_ms", self.request_timeout_ms, 1),
            ("http_header_timeout_ms", self.http_header_timeout_ms, 1),
            ("http_idle_timeout_ms", self.http_idle_timeout_ms, 1),
            ("http_body_timeout_ms", self.http_body_timeout_ms, 1),
            (
                "grpc_handshake_timeout_ms",
                self.grpc_handshake_timeout_ms,
                1,
            ),
            (
                "grpc_keepalive_interval_ms",
                self.grpc_keepalive_interval_ms,
                1,
            ),
            (
                "grpc_keepalive_timeout_ms",
                self.grpc_keepalive_timeout_ms,
                1,
            ),
            ("shutdown_grace_ms", self.shutdown_grace_ms, 0),
            ("worker_grace_ms", self.worker_grace_ms, 0),
            ("heartbeat_ms", self.heartbeat_ms, 10),
            (
                "ready_timeout_s",
                self.ready_timeout_s.saturating_mul(1000),
                1000,
            ),
        ] {
            if !(least..=MAX_DURATION_MS).contains(&ms) {
                return bad(format!(
                    "{key} must be between {least} ms and a day ({MAX_DURATION_MS} ms)"
                ));
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("tls_cert and tls_key go together: give both or neither".into());
        }
        Ok(())
    }

    /// The replicas to start: `instances` if given, else `replicas` copies,
    /// devices round-robin, threads = max(1, cores / replicas) unless set.
    pub fn replica_plans(&self, cores: usize) -> Vec<ReplicaSpec> {
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
                ReplicaSpec {
                    model: inst.model.unwrap_or_else(|| self.model.clone()),
                    dtype: inst.dtype.unwrap_or(self.dtype),
                    device: inst.device.unwrap_or(self.devices[i % self.devices.len()]),
                    attention: self.attention,
                    threads: inst.threads.unwrap_or(default_threads),
                }
            })
            .collect()
    }

    /// The name each replica serves under (see [`Instance::name`]), by slot.
    pub fn replica_names(&self) -> Vec<String> {
        let default_name = self.default_model_name();
        self.replica_plans(1)
            .iter()
            .enumerate()
            .map(|(i, plan)| {
                let named = self.instances.get(i).and_then(|inst| inst.name.clone());
                named.unwrap_or_else(|| {
                    if plan.model == self.model {
                        default_name.clone()
                    } else {
                        model_id(&plan.model)
                    }
                })
            })
            .collect()
    }

    /// The name requests without `model` get.
    pub fn default_model_name(&self) -> String {
        self.served_model_name
            .clone()
            .unwrap_or_else(|| model_id(&self.model))
    }

    /// The settings key a replica's fields come from, for error messages.
    pub fn replica_key(&self, index: usize) -> String {
        if self.instances.is_empty() {
            "model/dtype/devices".into()
        } else {
            format!("instances[{index}]")
        }
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
    fn the_gpu_profile_sizes_batches_for_a_gpu_and_keeps_the_rest() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../conf/gpu.toml");
        let s = cli(&["--config", path]).settings().unwrap();
        assert_eq!(s.devices, vec![DeviceSpec::Cuda(0)]);
        assert_eq!(s.dtype, WeightDType::F16);
        assert!(s.max_batch_tokens >= 4 * Settings::default().max_batch_tokens);
        assert!(s.max_batch_size >= 256 && s.max_batch_tokens >= s.max_batch_size * 86);
        assert_eq!(s.max_documents, Settings::default().max_documents);
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
    fn durations_are_bounded_so_their_arithmetic_cannot_overflow() {
        for key in [
            "heartbeat_ms",
            "batch_deadline_ms",
            "shutdown_grace_ms",
            "http_idle_timeout_ms",
        ] {
            let e = cli(&["--set", &format!("{key}={}", u64::MAX / 2)])
                .settings()
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains("a day"), "{e}");
        }
        let e = cli(&["--set", "ready_timeout_s=18446744073709551"])
            .settings()
            .unwrap_err()
            .to_string();
        assert!(e.contains("ready_timeout_s"), "{e}");
        let e = cli(&["--heartbeat-ms", "1"])
            .settings()
            .unwrap_err()
            .to_string();
        assert!(e.contains("heartbeat_ms"), "{e}");
        assert!(cli(&["--heartbeat-ms", "86400000"]).settings().is_ok());
    }

    #[test]
    fn typed_values_are_refused_at_start_with_their_key() {
        let e = cli(&["--set", "dtype=q3"])
            .settings()
            .unwrap_err()
            .to_string();
        assert!(e.contains("dtype") && e.contains("q3"), "{e}");
        assert!(Cli::try_parse_from(["ce-supervisor", "--dtype", "q3"]).is_err());
        let e = cli(&["--set", "attention=diagonal"])
            .settings()
            .unwrap_err()
            .to_string();
        assert!(e.contains("attention") && e.contains("diagonal"), "{e}");
        let e = cli(&["--set", "devices=[\"tpu:0\"]"])
            .settings()
            .unwrap_err()
            .to_string();
        assert!(e.contains("devices") && e.contains("tpu:0"), "{e}");
        let s = cli(&["--device", "cuda:1", "--dtype", "int8"])
            .settings()
            .unwrap();
        assert_eq!(
            (s.devices, s.dtype),
            (vec![DeviceSpec::Cuda(1)], WeightDType::I8)
        );
    }

    #[test]
    fn replicas_share_the_cores_and_devices_round_robin() {
        let s = cli(&["--replicas", "3", "--devices", "cuda:0,cuda:1"])
            .settings()
            .unwrap();
        let plans = s.replica_plans(2);
        assert_eq!(
            plans
                .iter()
                .map(|p| p.device.to_string())
                .collect::<Vec<_>>(),
            ["cuda:0", "cuda:1", "cuda:0"]
        );
        assert!(plans.iter().all(|p| p.threads == 1));
        let s = cli(&["--replicas", "2"]).settings().unwrap();
        assert!(s.replica_plans(16).iter().all(|p| p.threads == 8));
    }

    #[test]
    fn models_are_named_by_alias_directory_or_hub_id() {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("my-reranker");
        std::fs::create_dir(&local).unwrap();
        let settings = Settings {
            model: local.display().to_string(),
            instances: vec![
                Instance::default(),
                Instance {
                    model: Some("BAAI/bge-reranker-base".into()),
                    ..Instance::default()
                },
                Instance {
                    model: Some("BAAI/bge-reranker-base".into()),
                    name: Some("bge".into()),
                    ..Instance::default()
                },
            ],
            ..Settings::default()
        };
        assert_eq!(
            settings.replica_names(),
            ["my-reranker", "BAAI/bge-reranker-base", "bge"]
        );
        let aliased = Settings {
            served_model_name: Some("fast".into()),
            ..settings
        };
        assert_eq!(aliased.replica_names()[0], "fast");
        assert_eq!(aliased.default_model_name(), "fast");
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
        assert_eq!(
            (plans[1].device.to_string().as_str(), plans[1].threads),
            ("cuda:1", 3)
        );
    }
}
