//! The supervisor's Prometheus metrics (names follow the seed system, see
//! docs/ARCHITECTURE.md, "Metrics") and their text rendering for `GET /metrics`.
//!
//! Two kinds: metrics the supervisor updates as work flows (registered
//! once), and per-process figures — every worker's CPU, memory, jobs and
//! rings, the supervisor's own CPU and memory — encoded at scrape time from
//! the latest snapshots ([`ProcessFigures`]). Worker series carry `role`,
//! `replica` and `pid`: a restarted worker is a new series that starts at
//! zero, so no counter ever goes backwards for one label set.
//!
//! Buckets, chosen for this workload:
//! * requests and pair latency: 1 ms doubling to 65 s (a 128-pair request
//!   takes ~3 s on 2 cores, far longer when queued);
//! * queue wait: 100 µs ×2.5 to 15 s;
//! * stages (tokenize, queue, wait behind a job, ring transfer, forward): 10 µs ×2.5 to 9 s,
//!   since a ring hand-off takes microseconds and a forward pass seconds;
//! * batch size 1…1024 pairs, batch tokens 16…32 768, padding ratio 1…5.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use ce_common::control::{MetricsSnapshot, Role};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::workers::WorkerFigures;
use ce_model_spec::ReplicaSpec;

/// Labels of a request metric.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `rerank`, `score`, `stream`, `http_rerank`, `cohere_v1_rerank`…
    pub method: String,
    /// `ok` or the error class.
    pub status: String,
    /// The served model's name; empty when the request named none served.
    pub model: String,
}

/// Labels of a per-model metric.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    /// The served model's name.
    pub model: String,
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
    /// As in [`RequestLabels`].
    pub model: String,
}

/// Labels of a pipeline stage's duration.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// `tokenize`, `queue`, `wait`, `ring` or `forward`.
    pub stage: &'static str,
}

/// Pipeline stages timed by [`Metrics::observe_stage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// A tokenize job, by the worker's clock (or in process).
    Tokenize,
    /// A pair waiting for its batch.
    Queue,
    /// A job waiting behind the worker's previous job (sent while the
    /// worker was busy: `max_inflight_per_replica` > 1, or a shared
    /// tokenizer).
    Wait,
    /// A job's round trip less the worker's own time and its wait: ring
    /// transfer, doorbells and decoding.
    Ring,
    /// A batch's forward pass, by the model worker's clock.
    Forward,
}

impl Stage {
    fn label(self) -> &'static str {
        match self {
            Stage::Tokenize => "tokenize",
            Stage::Queue => "queue",
            Stage::Wait => "wait",
            Stage::Ring => "ring",
            Stage::Forward => "forward",
        }
    }
}

/// Every metric the supervisor updates as work flows.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Requests answered, by method and outcome.
    pub requests: Family<RequestLabels, Counter>,
    /// Request latency, arrival to answer.
    pub request_duration: Family<MethodLabels, Histogram>,
    /// Pairs scored, by model (a long document's windows each count).
    pub pairs: Family<ModelLabel, Counter>,
    /// Per pair: queued to scored.
    pub pair_latency: Histogram,
    /// Per pair: queued to sent in a batch.
    pub queue_wait: Histogram,
    /// Pairs scored per second over the last few seconds.
    pub throughput: Gauge<f64, AtomicU64>,
    /// Pairs waiting in the scheduling queue, by model.
    pub queue_pairs: Family<ModelLabel, Gauge>,
    /// Batches sent to model replicas and not yet answered.
    pub batches_in_flight: Gauge,
    /// Tokenize jobs sent to workers and not yet answered.
    pub tokenizer_queue: Gauge,
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
    /// Durations of the pipeline's stages.
    pub stages: Family<StageLabels, Histogram>,
    /// Workers replaced after dying, by role.
    pub worker_restarts: Family<RoleLabels, Counter>,
    /// Replacement starts that failed (the worker died or was killed before
    /// it was ready); the slot tries again after its back-off.
    pub worker_start_failures: Family<RoleLabels, Counter>,
    /// CPU use of each process (`supervisor`, `model-0`, …) in percent of
    /// one core, kept by the sampler.
    pub cpu_percent: Mutex<BTreeMap<String, f64>>,
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
        let seconds = || Histogram::new(exponential_buckets(0.001, 2.0, 17));
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration =
            Family::<MethodLabels, Histogram>::new_with_constructor(seconds as fn() -> Histogram);
        let stages = Family::<StageLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.000_01, 2.5, 16))) as fn() -> Histogram,
        );
        let metrics = Self {
            registry: Mutex::new(Registry::default()),
            requests,
            request_duration,
            pairs: Family::default(),
            pair_latency: seconds(),
            queue_wait: Histogram::new(exponential_buckets(0.000_1, 2.5, 14)),
            throughput: Gauge::default(),
            queue_pairs: Family::default(),
            batches_in_flight: Gauge::default(),
            tokenizer_queue: Gauge::default(),
            active_replicas: Gauge::default(),
            active_tokenizers: Gauge::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            batch_tokens: Histogram::new(exponential_buckets(16.0, 2.0, 12)),
            padding_ratio: Histogram::new([1.0, 1.05, 1.1, 1.2, 1.35, 1.5, 2.0, 3.0, 5.0]),
            stages,
            worker_restarts: Family::default(),
            worker_start_failures: Family::default(),
            cpu_percent: Mutex::default(),
        };
        metrics.register_requests(&mut registry);
        metrics.register_pipeline(&mut registry);
        // Both roles from the start, so dashboards show 0, not "no data".
        for role in ["model", "tokenizer"] {
            for family in [&metrics.worker_restarts, &metrics.worker_start_failures] {
                family
                    .get_or_create(&RoleLabels { role: role.into() })
                    .inc_by(0);
            }
        }
        if let Ok(mut r) = metrics.registry.lock() {
            *r = registry;
        }
        metrics
    }

    /// Requests, pairs, latency and queue figures.
    fn register_requests(&self, registry: &mut Registry) {
        let m = self;
        registry.register(
            "inference_requests",
            "Requests answered, by method, status and model",
            m.requests.clone(),
        );
        registry.register(
            "inference_request_duration_seconds",
            "Request latency from arrival to answer",
            m.request_duration.clone(),
        );
        registry.register(
            "inference_pairs",
            "Pairs scored, by model (each window of a long document is one)",
            m.pairs.clone(),
        );
        registry.register(
            "inference_latency_seconds",
            "Per pair: from entering the queue to its score",
            m.pair_latency.clone(),
        );
        registry.register(
            "inference_queue_wait_time_seconds",
            "Per pair: from entering the queue to leaving in a batch",
            m.queue_wait.clone(),
        );
        registry.register(
            "inference_throughput_samples_per_second",
            "Pairs scored per second, over the last 10 s",
            m.throughput.clone(),
        );
        registry.register(
            "inference_queue_size",
            "Pairs waiting for a batch, by model",
            m.queue_pairs.clone(),
        );
    }

    /// Pools, batches, stages and restarts.
    fn register_pipeline(&self, registry: &mut Registry) {
        let m = self;
        registry.register(
            "inference_batches_in_flight",
            "Batches sent to model replicas and not yet answered",
            m.batches_in_flight.clone(),
        );
        registry.register(
            "tokenizer_pool_queue_size",
            "Tokenize jobs sent to tokenizer workers and not yet answered",
            m.tokenizer_queue.clone(),
        );
        registry.register(
            "model_pool_active_workers",
            "Model replicas serving",
            m.active_replicas.clone(),
        );
        registry.register(
            "tokenizer_pool_active_workers",
            "Tokenizer workers serving",
            m.active_tokenizers.clone(),
        );
        registry.register(
            "inference_batch_size",
            "Pairs per batch",
            m.batch_size.clone(),
        );
        registry.register(
            "inference_batch_tokens",
            "Real tokens per batch",
            m.batch_tokens.clone(),
        );
        registry.register(
            "inference_padding_ratio",
            "Padded over real tokens per batch",
            m.padding_ratio.clone(),
        );
        registry.register(
            "inference_stage_duration_seconds",
            "Duration of a pipeline stage: tokenize (per job), queue (per pair), wait (per job: behind the worker's previous job), ring (per job: round trip less the worker's time and the wait), forward (per batch)",
            m.stages.clone(),
        );
        registry.register(
            "worker_restarts",
            "Workers replaced after dying",
            m.worker_restarts.clone(),
        );
        registry.register(
            "worker_start_failures",
            "Replacement worker starts that failed and will be retried after a back-off",
            m.worker_start_failures.clone(),
        );
    }

    /// Records one request's outcome and latency.
    pub fn observe_request(&self, method: &str, status: &str, model: &str, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.into(),
                status: status.into(),
                model: model.into(),
            })
            .inc();
        self.request_duration
            .get_or_create(&MethodLabels {
                method: method.into(),
                model: model.into(),
            })
            .observe(seconds);
    }

    /// The counter of pairs scored for `model`.
    pub fn model_pairs(&self, model: &str) -> Counter {
        self.pairs
            .get_or_create(&ModelLabel {
                model: model.into(),
            })
            .clone()
    }

    /// The gauge of pairs queued for `model`.
    pub fn model_queue(&self, model: &str) -> Gauge {
        self.queue_pairs
            .get_or_create(&ModelLabel {
                model: model.into(),
            })
            .clone()
    }

    /// Records one batch sent to a replica.
    pub fn observe_batch(&self, pairs: usize, tokens: usize, longest: usize) {
        self.batch_size.observe(pairs as f64);
        self.batch_tokens.observe(tokens as f64);
        if tokens > 0 {
            self.padding_ratio
                .observe((pairs * longest) as f64 / tokens as f64);
        }
    }

    /// Records one stage's duration.
    pub fn observe_stage(&self, stage: Stage, seconds: f64) {
        self.stages
            .get_or_create(&StageLabels {
                stage: stage.label(),
            })
            .observe(seconds);
    }

    /// The Prometheus text exposition of every metric, with `processes`'
    /// figures.
    pub fn render(&self, processes: ProcessFigures) -> String {
        let mut out = String::new();
        let mut scrape = Registry::default();
        scrape.register_collector(Box::new(processes));
        if let Ok(registry) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode_registry(&mut out, &registry);
        }
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &scrape);
        let _ = prometheus_client::encoding::text::encode_eof(&mut out);
        out
    }
}

/// The name of a process in `process` labels: `supervisor`, `model-0`,
/// `tokenizer-1`.
pub fn process_name(role: Role, index: u32) -> String {
    format!("{}-{index}", role_name(role))
}

/// `model`, `tokenizer` or `supervisor`.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Model => "model",
        Role::Tokenizer => "tokenizer",
        Role::Supervisor => "supervisor",
    }
}

/// A model worker's plan and the name its model is served under, as its
/// metrics label it.
#[derive(Debug, Clone)]
pub struct NamedReplica {
    /// The name requests route to.
    pub name: String,
    /// Model, dtype, device, attention, threads.
    pub spec: ReplicaSpec,
}

/// Everything per process, as of one scrape.
#[derive(Debug, Clone, Default)]
pub struct ProcessFigures {
    /// The supervisor's resident memory.
    pub supervisor_rss_bytes: u64,
    /// Every worker slot, with the replica's plan for model workers.
    pub workers: Vec<(WorkerFigures, Option<NamedReplica>)>,
    /// CPU percent per process name, from the sampler.
    pub cpu_percent: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcessLabel {
    process: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    role: &'static str,
    replica: String,
    pid: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RingLabels {
    role: &'static str,
    replica: String,
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabel {
    replica: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    replica: String,
    model: String,
    name: String,
    dtype: String,
    device: String,
    /// The GPU's name (empty on the CPU).
    gpu: String,
    /// The GPU's compute capability (empty on the CPU).
    compute_capability: String,
}

/// Encodes one metric family from `(labels, value)` rows.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in rows {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

impl WorkerLabels {
    fn of(w: &WorkerFigures) -> Self {
        Self {
            role: role_name(w.role),
            replica: w.slot.to_string(),
            pid: w.pid.to_string(),
        }
    }
}

/// One row per live worker: its labels and `value` of its snapshot.
fn per_worker<'a, M: 'a>(
    live: &'a [&(WorkerFigures, Option<NamedReplica>)],
    value: impl Fn(&MetricsSnapshot) -> M + 'a,
) -> impl Iterator<Item = (WorkerLabels, M)> + 'a {
    live.iter()
        .map(move |(w, _)| (WorkerLabels::of(w), value(&w.snapshot)))
}

type Live<'a> = Vec<&'a (WorkerFigures, Option<NamedReplica>)>;

impl Collector for ProcessFigures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let live: Live = self.workers.iter().filter(|(w, _)| w.alive).collect();
        self.encode_processes(&mut encoder, &live)?;
        self.encode_worker_counters(&mut encoder, &live)?;
        self.encode_rings(&mut encoder, &live)?;
        self.encode_replicas(&mut encoder)
    }
}

impl ProcessFigures {
    /// CPU and memory of every process, the supervisor's included.
    fn encode_processes(
        &self,
        encoder: &mut DescriptorEncoder,
        live: &Live,
    ) -> Result<(), std::fmt::Error> {
        family(
            encoder,
            "process_cpu_percent",
            "CPU use of each process, percent of one core, over the last 5 s",
            MetricType::Gauge,
            self.cpu_percent
                .iter()
                .map(|(p, v)| (ProcessLabel { process: p.clone() }, ConstGauge::new(*v))),
        )?;
        family(
            encoder,
            "process_resident_memory_bytes",
            "Resident memory of each process",
            MetricType::Gauge,
            std::iter::once((
                ProcessLabel {
                    process: "supervisor".into(),
                },
                ConstGauge::new(self.supervisor_rss_bytes as i64),
            ))
            .chain(live.iter().map(|(w, _)| {
                (
                    ProcessLabel {
                        process: process_name(w.role, w.slot),
                    },
                    ConstGauge::new(w.snapshot.rss_bytes as i64),
                )
            })),
        )
    }

    /// Each worker's own counters, and whether each slot serves.
    fn encode_worker_counters(
        &self,
        encoder: &mut DescriptorEncoder,
        live: &Live,
    ) -> Result<(), std::fmt::Error> {
        family(
            encoder,
            "worker_cpu_seconds",
            "CPU seconds used by the worker process",
            MetricType::Counter,
            per_worker(live, |s| ConstCounter::new(s.cpu_seconds)),
        )?;
        family(
            encoder,
            "worker_busy_seconds",
            "Seconds the worker spent on jobs (forward passes or tokenization)",
            MetricType::Counter,
            per_worker(live, |s| ConstCounter::new(s.busy_seconds)),
        )?;
        family(
            encoder,
            "worker_jobs",
            "Jobs (batches or tokenize jobs) the worker completed",
            MetricType::Counter,
            per_worker(live, |s| ConstCounter::new(s.jobs)),
        )?;
        family(
            encoder,
            "worker_pairs",
            "Pairs the worker completed",
            MetricType::Counter,
            per_worker(live, |s| ConstCounter::new(s.pairs)),
        )?;
        family(
            encoder,
            "worker_resident_memory_bytes",
            "Resident memory of the worker process",
            MetricType::Gauge,
            per_worker(live, |s| ConstGauge::new(s.rss_bytes as i64)),
        )?;
        family(
            encoder,
            "worker_up",
            "1 while the worker slot's process serves, 0 while it is dead or restarting",
            MetricType::Gauge,
            self.workers
                .iter()
                .map(|(w, _)| (WorkerLabels::of(w), ConstGauge::new(i64::from(w.alive)))),
        )
    }

    /// Bytes waiting in each live worker's two rings.
    fn encode_rings(
        &self,
        encoder: &mut DescriptorEncoder,
        live: &Live,
    ) -> Result<(), std::fmt::Error> {
        family(
            encoder,
            "ring_occupancy_bytes",
            "Bytes waiting in a worker's shared-memory ring",
            MetricType::Gauge,
            live.iter().flat_map(|(w, _)| {
                let labels = |direction| RingLabels {
                    role: role_name(w.role),
                    replica: w.slot.to_string(),
                    direction,
                };
                [
                    (
                        labels("to_worker"),
                        ConstGauge::new(w.to_worker_bytes as i64),
                    ),
                    (
                        labels("from_worker"),
                        ConstGauge::new(w.from_worker_bytes as i64),
                    ),
                ]
            }),
        )
    }

    /// Device memory and the served model of each replica.
    fn encode_replicas(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let models = || self.workers.iter().filter(|(w, _)| w.role == Role::Model);
        let replica = |w: &WorkerFigures| ReplicaLabel {
            replica: w.slot.to_string(),
        };
        family(
            encoder,
            "gpu_memory_bytes",
            "Device memory a model replica's process holds, as the NVIDIA driver accounts it (0 on the CPU, or where the driver cannot tell)",
            MetricType::Gauge,
            models().map(|(w, _)| {
                let used = w.gpu_memory_bytes.unwrap_or(0);
                (replica(w), ConstGauge::new(used as i64))
            }),
        )?;
        family(
            encoder,
            "gpu_memory_total_bytes",
            "Memory of the GPU a serving model replica computes on, all of it (replicas on the CPU have no sample)",
            MetricType::Gauge,
            models().filter(|(w, _)| w.alive).filter_map(|(w, _)| {
                let gpu = w.gpu.as_ref()?;
                Some((replica(w), ConstGauge::new(gpu.total_memory_bytes as i64)))
            }),
        )?;
        family(
            encoder,
            "model_info",
            "The model each replica serves (value 1)",
            MetricType::Gauge,
            models().filter_map(|(w, plan)| {
                let NamedReplica { name, spec } = plan.as_ref()?;
                let gpu = w.gpu.as_ref();
                Some((
                    ModelLabels {
                        replica: w.slot.to_string(),
                        model: spec.model.clone(),
                        name: name.clone(),
                        dtype: spec.dtype.to_string(),
                        device: spec.device.to_string(),
                        gpu: gpu.map(|g| g.name.clone()).unwrap_or_default(),
                        compute_capability: gpu
                            .map(|g| g.compute_capability.clone())
                            .unwrap_or_default(),
                    },
                    ConstGauge::new(1i64),
                ))
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(role: Role, slot: u32, pid: u32, alive: bool) -> WorkerFigures {
        WorkerFigures {
            role,
            slot,
            pid,
            alive,
            snapshot: MetricsSnapshot {
                cpu_seconds: 1.5,
                rss_bytes: 100 << 20,
                jobs: 7,
                pairs: 300,
                busy_seconds: 1.25,
            },
            to_worker_bytes: 4096,
            from_worker_bytes: 0,
            gpu: None,
            gpu_memory_bytes: None,
        }
    }

    #[test]
    fn the_exposition_holds_every_family_with_its_labels() {
        let metrics = Metrics::new();
        metrics.observe_request("rerank", "ok", "m", 0.2);
        metrics.observe_stage(Stage::Ring, 0.000_03);
        metrics.pair_latency.observe(0.05);
        let plan = ReplicaSpec {
            model: "m".into(),
            dtype: ce_model_spec::WeightDType::F32,
            device: ce_model_spec::DeviceSpec::Cpu,
            attention: Default::default(),
            threads: 2,
        };
        let text = metrics.render(ProcessFigures {
            supervisor_rss_bytes: 30 << 20,
            workers: vec![
                (
                    worker(Role::Model, 0, 41, true),
                    Some(NamedReplica {
                        name: "fast".into(),
                        spec: plan,
                    }),
                ),
                (worker(Role::Tokenizer, 0, 42, true), None),
                (worker(Role::Model, 1, 0, false), None),
            ],
            cpu_percent: [("supervisor".to_string(), 12.5)].into(),
        });
        for needle in [
            "inference_requests_total{method=\"rerank\",status=\"ok\",model=\"m\"} 1",
            "inference_request_duration_seconds_bucket{",
            "inference_latency_seconds_count 1",
            "inference_stage_duration_seconds_bucket{le=\"0.0000625\",stage=\"ring\"} 1",
            "inference_throughput_samples_per_second 0",
            "tokenizer_pool_queue_size 0",
            "process_cpu_percent{process=\"supervisor\"} 12.5",
            "process_resident_memory_bytes{process=\"model-0\"} 104857600",
            "worker_cpu_seconds_total{role=\"model\",replica=\"0\",pid=\"41\"} 1.5",
            "worker_pairs_total{role=\"tokenizer\",replica=\"0\",pid=\"42\"} 300",
            "worker_up{role=\"model\",replica=\"1\",pid=\"0\"} 0",
            "ring_occupancy_bytes{role=\"model\",replica=\"0\",direction=\"to_worker\"} 4096",
            "gpu_memory_bytes{replica=\"0\"} 0",
            "model_info{replica=\"0\",model=\"m\",name=\"fast\",dtype=\"f32\",device=\"cpu\",gpu=\"\",compute_capability=\"\"} 1",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
        // A CPU replica has no GPU to size.
        assert!(!text.contains("gpu_memory_total_bytes{"), "{text}");
        // A dead slot exports no counters (its process is gone).
        assert!(!text.contains("pid=\"0\"} 1.5"));
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn a_gpu_replica_reports_its_memory_and_its_device() {
        let mut on_gpu = worker(Role::Model, 2, 77, true);
        on_gpu.gpu = Some(ce_common::control::GpuDevice {
            name: "NVIDIA H200".into(),
            compute_capability: "9.0".into(),
            total_memory_bytes: 150_000_000_000,
        });
        on_gpu.gpu_memory_bytes = Some(1_234_567_890);
        let plan = ReplicaSpec {
            model: "m".into(),
            dtype: ce_model_spec::WeightDType::F16,
            device: ce_model_spec::DeviceSpec::Cuda(0),
            attention: Default::default(),
            threads: 1,
        };
        let text = Metrics::new().render(ProcessFigures {
            workers: vec![(
                on_gpu,
                Some(NamedReplica {
                    name: "m".into(),
                    spec: plan,
                }),
            )],
            ..ProcessFigures::default()
        });
        for needle in [
            "gpu_memory_bytes{replica=\"2\"} 1234567890",
            "gpu_memory_total_bytes{replica=\"2\"} 150000000000",
            "model_info{replica=\"2\",model=\"m\",name=\"m\",dtype=\"f16\",device=\"cuda:0\",gpu=\"NVIDIA H200\",compute_capability=\"9.0\"} 1",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
    }
}
