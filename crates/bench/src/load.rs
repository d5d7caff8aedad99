//! The load generator: closed loop at a fixed concurrency or open loop at
//! a Poisson rate, against a real server over gRPC, measured the way
//! perf_analyzer does — a warm-up, then windows until enough consecutive
//! windows agree (bounded; says so when they never do), HDR latency
//! histograms over the agreeing windows, errors by status, a per-second
//! time series, and the server's own tokenize/queue/inference split from
//! each response's timing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ce_proto::v1::RerankRequest;
use ce_proto::v1::cross_encoder_client::CrossEncoderClient;
use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Exp};
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

use crate::workload::{Request, Workload, WorkloadConfig};

/// Requests in flight at most in open loop (beyond it arrivals count as
/// dropped, so an overloaded server cannot grow the client without bound).
const OPEN_LOOP_CAP: usize = 4096;

/// How to load and how to measure.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadSpec {
    /// Passages per request.
    pub passages: usize,
    /// Closed loop (concurrency) or open loop (rate).
    pub shape: LoadShape,
    /// Warm-up before measuring.
    pub warmup: Duration,
    /// Length of a measurement window.
    pub window: Duration,
    /// Consecutive windows that must agree.
    pub stable_windows: usize,
    /// Relative spread allowed among them.
    pub tolerance: f64,
    /// Windows at most.
    pub max_windows: usize,
    /// Workload seed.
    pub seed: u64,
}

/// The load's shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LoadShape {
    /// This many clients, each waiting for its answer.
    Closed(usize),
    /// Poisson arrivals at this many requests per second.
    Open(f64),
}

/// One measurement window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WindowStats {
    /// Pairs answered per second.
    pub pairs_per_second: f64,
    /// Requests answered per second.
    pub requests_per_second: f64,
}

/// One second of the run (warm-up included), for the time series.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Second {
    /// Seconds since the load started.
    pub second: u64,
    /// Requests answered in it.
    pub requests: u64,
    /// Pairs answered in it.
    pub pairs: u64,
    /// Requests failed in it.
    pub errors: u64,
    /// Median latency of its answers, ms (0 without answers).
    pub p50_ms: f64,
}

/// The result of one load level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// Passages per request.
    pub passages: usize,
    /// Clients (closed loop).
    pub concurrency: Option<usize>,
    /// Offered requests per second (open loop).
    pub rate: Option<f64>,
    /// Whether `stable_windows` consecutive windows agreed.
    pub stable: bool,
    /// Every window measured.
    pub windows: Vec<WindowStats>,
    /// Mean over the agreeing (or last) windows.
    pub pairs_per_second: f64,
    /// Mean over the agreeing (or last) windows.
    pub requests_per_second: f64,
    /// Latency percentiles over those windows, ms.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
    /// Requests answered in those windows.
    pub requests: u64,
    /// Failures by gRPC status over the whole run.
    pub errors: BTreeMap<String, u64>,
    /// Mean server-side split of a request, ms: tokenize, queue, inference.
    pub server_tokenize_ms: f64,
    /// See `server_tokenize_ms`.
    pub server_queue_ms: f64,
    /// See `server_tokenize_ms`.
    pub server_inference_ms: f64,
    /// Per-second series.
    pub timeline: Vec<Second>,
}

/// What the clients record; the measuring task swaps windows out.
struct Recorder {
    started: Instant,
    window: WindowRecord,
    seconds: BTreeMap<u64, (Second, Histogram<u64>)>,
    errors: BTreeMap<String, u64>,
}

struct WindowRecord {
    latency_us: Histogram<u64>,
    requests: u64,
    pairs: u64,
    server_us: [u64; 3],
}

impl WindowRecord {
    fn new() -> Self {
        Self {
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            requests: 0,
            pairs: 0,
            server_us: [0; 3],
        }
    }
}

impl Recorder {
    fn answered(&mut self, latency: Duration, pairs: u64, server_us: [u64; 3]) {
        let us = (latency.as_micros() as u64).clamp(1, 3_600_000_000);
        let w = &mut self.window;
        let _ = w.latency_us.record(us);
        w.requests += 1;
        w.pairs += pairs;
        for (total, part) in w.server_us.iter_mut().zip(server_us) {
            *total += part;
        }
        let (second, h) = self.second();
        second.requests += 1;
        second.pairs += pairs;
        let _ = h.record(us);
    }

    fn failed(&mut self, code: tonic::Code) {
        *self.errors.entry(format!("{code:?}")).or_default() += 1;
        self.second().0.errors += 1;
    }

    fn second(&mut self) -> (&mut Second, &mut Histogram<u64>) {
        let s = self.started.elapsed().as_secs();
        let (second, h) = self.seconds.entry(s).or_insert_with(|| {
            (
                Second {
                    second: s,
                    ..Default::default()
                },
                Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid bounds"),
            )
        });
        (second, h)
    }
}

async fn one_request(
    client: &mut CrossEncoderClient<Channel>,
    request: RerankRequest,
    recorder: &Mutex<Recorder>,
) {
    let pairs = request.documents.len() as u64;
    let sent = Instant::now();
    let result = client.rerank(request).await;
    let latency = sent.elapsed();
    if let Ok(mut r) = recorder.lock() {
        match result {
            Ok(reply) => {
                let t = reply.into_inner().timing.unwrap_or_default();
                r.answered(latency, pairs, [t.tokenize_us, t.queue_us, t.inference_us]);
            }
            Err(status) => r.failed(status.code()),
        }
    }
}

/// Runs one load level against `client` and measures it; `progress` hears
/// a line per window.
pub async fn measure(
    client: CrossEncoderClient<Channel>,
    spec: &LoadSpec,
    progress: &(dyn Fn(&str) + Sync),
) -> Measurement {
    let requests: Arc<Vec<Request>> = Arc::new(
        Workload::new(WorkloadConfig {
            seed: spec.seed,
            passages: spec.passages,
            ..Default::default()
        })
        .take(64)
        .collect(),
    );
    let recorder = Arc::new(Mutex::new(Recorder {
        started: Instant::now(),
        window: WindowRecord::new(),
        seconds: BTreeMap::new(),
        errors: BTreeMap::new(),
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    match spec.shape {
        LoadShape::Closed(concurrency) => {
            for c in 0..concurrency {
                let (mut client, requests, recorder, stop) = (
                    client.clone(),
                    requests.clone(),
                    recorder.clone(),
                    stop.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    let mut i = c;
                    while !stop.load(Ordering::Relaxed) {
                        let r = requests[i % requests.len()].to_rerank();
                        one_request(&mut client, r, &recorder).await;
                        i += concurrency;
                    }
                }));
            }
        }
        LoadShape::Open(rate) => {
            let (client, requests, recorder, stop) = (
                client.clone(),
                requests.clone(),
                recorder.clone(),
                stop.clone(),
            );
            let seed = spec.seed;
            tasks.push(tokio::spawn(async move {
                let gaps = Exp::new(rate.max(1e-3)).expect("positive rate");
                let mut rng = StdRng::seed_from_u64(seed);
                let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                let mut next = Instant::now();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    next += Duration::from_secs_f64(gaps.sample(&mut rng));
                    tokio::time::sleep_until(next.into()).await;
                    if in_flight.load(Ordering::Relaxed) >= OPEN_LOOP_CAP {
                        if let Ok(mut r) = recorder.lock() {
                            r.failed(tonic::Code::ResourceExhausted);
                        }
                        continue;
                    }
                    let (mut client, recorder, in_flight) =
                        (client.clone(), recorder.clone(), in_flight.clone());
                    let request = requests[i % requests.len()].to_rerank();
                    i += 1;
                    in_flight.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(async move {
                        one_request(&mut client, request, &recorder).await;
                        in_flight.fetch_sub(1, Ordering::Relaxed);
                    });
                }
            }));
        }
    }

    tokio::time::sleep(spec.warmup).await;
    let take_window = || {
        recorder
            .lock()
            .map(|mut r| std::mem::replace(&mut r.window, WindowRecord::new()))
            .unwrap_or_else(|_| WindowRecord::new())
    };
    let _ = take_window();
    let mut windows: Vec<(WindowStats, WindowRecord)> = Vec::new();
    let mut stable = false;
    while windows.len() < spec.max_windows {
        let started = Instant::now();
        tokio::time::sleep(spec.window).await;
        let record = take_window();
        let seconds = started.elapsed().as_secs_f64();
        let stats = WindowStats {
            pairs_per_second: record.pairs as f64 / seconds,
            requests_per_second: record.requests as f64 / seconds,
        };
        progress(&format!(
            "window {}: {:.1} pairs/s, {:.2} requests/s",
            windows.len() + 1,
            stats.pairs_per_second,
            stats.requests_per_second
        ));
        windows.push((stats, record));
        if agree(
            &windows
                .iter()
                .map(|(s, _)| s.pairs_per_second)
                .collect::<Vec<_>>(),
            spec.stable_windows,
            spec.tolerance,
        ) {
            stable = true;
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }

    let last = &windows[windows.len().saturating_sub(spec.stable_windows)..];
    let mut latency = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
    let (mut requests_done, mut server_us) = (0u64, [0u64; 3]);
    for (_, record) in last {
        let _ = latency.add(&record.latency_us);
        requests_done += record.requests;
        for (t, p) in server_us.iter_mut().zip(record.server_us) {
            *t += p;
        }
    }
    let mean = |f: fn(&WindowStats) -> f64| {
        last.iter().map(|(s, _)| f(s)).sum::<f64>() / last.len().max(1) as f64
    };
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    let per_request = |us: u64| us as f64 / 1000.0 / requests_done.max(1) as f64;
    let (timeline, errors) = recorder
        .lock()
        .map(|r| {
            (
                r.seconds
                    .values()
                    .map(|(s, h)| Second {
                        p50_ms: if h.is_empty() {
                            0.0
                        } else {
                            h.value_at_quantile(0.5) as f64 / 1000.0
                        },
                        ..s.clone()
                    })
                    .collect(),
                r.errors.clone(),
            )
        })
        .unwrap_or_default();
    Measurement {
        passages: spec.passages,
        concurrency: match spec.shape {
            LoadShape::Closed(c) => Some(c),
            LoadShape::Open(_) => None,
        },
        rate: match spec.shape {
            LoadShape::Open(r) => Some(r),
            LoadShape::Closed(_) => None,
        },
        stable,
        windows: windows.iter().map(|(s, _)| *s).collect(),
        pairs_per_second: mean(|s| s.pairs_per_second),
        requests_per_second: mean(|s| s.requests_per_second),
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p95_ms: ms(0.95),
        p99_ms: ms(0.99),
        max_ms: latency.max() as f64 / 1000.0,
        requests: requests_done,
        errors,
        server_tokenize_ms: per_request(server_us[0]),
        server_queue_ms: per_request(server_us[1]),
        server_inference_ms: per_request(server_us[2]),
        timeline,
    }
}

/// True when the last `n` values lie within `tolerance` of their mean.
pub fn agree(values: &[f64], n: usize, tolerance: f64) -> bool {
    if n == 0 || values.len() < n {
        return false;
    }
    let last = &values[values.len() - n..];
    let mean = last.iter().sum::<f64>() / n as f64;
    mean > 0.0 && last.iter().all(|v| (v - mean).abs() <= tolerance * mean)
}

#[cfg(test)]
mod tests {
    use super::agree;

    #[test]
    fn windows_agree_only_within_the_tolerance() {
        assert!(!agree(&[10.0, 10.0], 3, 0.05));
        assert!(agree(&[3.0, 10.0, 10.2, 9.9], 3, 0.05));
        assert!(!agree(&[10.0, 10.0, 12.0], 3, 0.05));
        assert!(
            !agree(&[0.0, 0.0, 0.0], 3, 0.05),
            "nothing answered is not stable"
        );
    }
}
