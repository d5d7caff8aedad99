//! The supervisor's Prometheus metrics (names follow the seed system, see
//! DESIGN.md §6) and their text rendering for `GET /metrics`.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a request metric.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `rerank`, `score`, `stream`, `http_rerank`.
    pub method: String,
    /// `ok` or the error class.
    pub status: String,
}

/// Labels of a worker metric.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    /// `tokenizer` or `model`.
    pub role: String,
}

/// Labels of a per-method metric.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// As in [`RequestLabels`].
    pub method: String,
}

/// Every metric the supervisor exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Requests answered, by method and outcome.
    pub requests: Family<RequestLabels, Counter>,
    /// Request latency, arrival to answer.
    pub request_duration: Family<MethodLabels, Histogram>,
    /// Pairs scored.
    pub pairs: Counter,
    /// Pairs waiting in the scheduling queue.
    pub queue_pairs: Gauge,
    /// Model replicas serving.
    pub active_replicas: Gauge,
    /// Tokenizer workers serving.
    pub active_tokenizers: Gauge,
    /// Pairs per batch.
    pub batch_size: Histogram,
    /// Real tokens per batch.
    pub batch_tokens: Histogram,
    /// Padded / real tokens per batch (what padded attention computes).
    pub padding_ratio: Histogram,
    /// Workers replaced after dying, by role.
    pub worker_restarts: Family<RoleLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration = Family::<MethodLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        let pairs = Counter::default();
        let queue_pairs = Gauge::default();
        let active_replicas = Gauge::default();
        let active_tokenizers = Gauge::default();
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 11));
        let batch_tokens = Histogram::new(exponential_buckets(16.0, 2.0, 12));
        let padding_ratio = Histogram::new([1.0, 1.05, 1.1, 1.2, 1.35, 1.5, 2.0, 3.0, 5.0]);
        let worker_restarts = Family::<RoleLabels, Counter>::default();
        registry.register(
            "inference_requests",
            "Requests answered, by method and status",
            requests.clone(),
        );
        registry.register(
            "inference_request_duration_seconds",
            "Request latency from arrival to answer",
            request_duration.clone(),
        );
        registry.register("inference_pairs", "Pairs scored", pairs.clone());
        registry.register(
            "inference_queue_size",
            "Pairs waiting for a batch",
            queue_pairs.clone(),
        );
        registry.register(
            "model_pool_active_workers",
            "Model replicas serving",
            active_replicas.clone(),
        );
        registry.register(
            "tokenizer_pool_active_workers",
            "Tokenizer workers serving",
            active_tokenizers.clone(),
        );
        registry.register(
            "inference_batch_size",
            "Pairs per batch",
            batch_size.clone(),
        );
        registry.register(
            "inference_batch_tokens",
            "Real tokens per batch",
            batch_tokens.clone(),
        );
        registry.register(
            "inference_padding_ratio",
            "Padded over real tokens per batch",
            padding_ratio.clone(),
        );
        registry.register(
            "worker_restarts",
            "Workers replaced after dying",
            worker_restarts.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            worker_restarts,
            requests,
            request_duration,
            pairs,
            queue_pairs,
            active_replicas,
            active_tokenizers,
            batch_size,
            batch_tokens,
            padding_ratio,
        }
    }

    /// Records one request's outcome and latency.
    pub fn observe_request(&self, method: &str, status: &str, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.into(),
                status: status.into(),
            })
            .inc();
        self.request_duration
            .get_or_create(&MethodLabels {
                method: method.into(),
            })
            .observe(seconds);
    }

    /// Records one batch sent to a replica.
    pub fn observe_batch(&self, pairs: usize, tokens: usize, longest: usize) {
        self.pairs.inc_by(pairs as u64);
        self.batch_size.observe(pairs as f64);
        self.batch_tokens.observe(tokens as f64);
        if tokens > 0 {
            self.padding_ratio
                .observe((pairs * longest) as f64 / tokens as f64);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        }
        out
    }
}
