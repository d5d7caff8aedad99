//! The load generator: closed loop at a fixed concurrency, open loop at a
//! Poisson rate, or a ramp of Poisson arrivals whose rate rises linearly,
//! against a real server (any [`Call`] over gRPC, or HTTP), measured the
//! way perf_analyzer does — a warm-up, then windows until enough
//! consecutive windows agree (bounded; says so when they never do), HDR
//! latency histograms over the agreeing windows, errors by status, a
//! per-second time series, and the server's own tokenize/queue/inference
//! split from each response's timing. A ramp measures every window and
//! reports the knee: the highest offered rate the server kept up with
//! (see [`keeping_up`] for what keeping up means).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Exp};
use serde::{Deserialize, Serialize};

use crate::client::{Answered, Caller, Endpoint, Prepared};

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
    /// Poisson arrivals whose rate rises linearly from `from` to `to`
    /// requests per second over `seconds` (after a warm-up at `from`).
    Ramp(Ramp),
}

/// A rising arrival rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ramp {
    /// Requests per second at the start.
    pub from: f64,
    /// Requests per second at the end.
    pub to: f64,
    /// Length of the rise.
    pub seconds: f64,
}

/// A ramp's window keeps up only while its median latency stays within
/// this multiple of the lightly loaded median: past it, queueing, not
/// work, is what a request waits for.
pub const KNEE_LATENCY_FACTOR: f64 = 2.0;

/// A ramp's window keeps up only while it answers at least this share of
/// the requests that arrived.
pub const KEEP_UP_SHARE: f64 = 0.9;

/// One measurement window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WindowStats {
    /// Pairs answered per second.
    pub pairs_per_second: f64,
    /// Requests answered per second.
    pub requests_per_second: f64,
    /// The offered load, requests per second: open loop and ramp, the
    /// arrival rate at the window's middle; closed loop, requests sent.
    #[serde(default)]
    pub offered_per_second: f64,
    /// Median latency of the window's answers, ms (0 without answers).
    #[serde(default)]
    pub p50_ms: f64,
    /// Requests sent per second (open loop and ramp: the arrivals).
    #[serde(default)]
    pub sent_per_second: f64,
    /// The window's length, s (0 in results from before it was kept).
    #[serde(default)]
    pub seconds: f64,
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
    /// The ramp (ramp mode).
    #[serde(default)]
    pub ramp: Option<Ramp>,
    /// Ramp: the highest offered rate (requests/s) of a window that kept
    /// up, before the server fell behind for good ([`knee`]); `None` when
    /// it kept up to the end.
    #[serde(default)]
    pub knee_per_second: Option<f64>,
    /// Whether `stable_windows` consecutive windows agreed.
    pub stable: bool,
    /// Coefficient of variation of pairs/s over the windows the headline
    /// averages (standard deviation ÷ mean): the run-to-run noise a reader
    /// should allow for when comparing two rows.
    #[serde(default)]
    pub cv: f64,
    /// Every window measured.
    pub windows: Vec<WindowStats>,
    /// Mean over the agreeing (or last) windows.
    pub pairs_per_second: f64,
    /// Mean over the agreeing (or last) windows.
    pub requests_per_second: f64,
    /// Mean latency over those windows, ms.
    #[serde(default)]
    pub mean_ms: f64,
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
    /// The server's stage means over the level (warm-up included), ms,
    /// from `/metrics` deltas of `inference_stage_duration_seconds`:
    /// `tokenize` per tokenize job, `queue` per pair, `ring` per job
    /// (round trip less the worker's time), `forward` per batch. Filled by
    /// a runner that can scrape the server; empty otherwise.
    #[serde(default)]
    pub server_stages_ms: BTreeMap<String, f64>,
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
    sent: u64,
    requests: u64,
    pairs: u64,
    server_us: [u64; 3],
    /// Answers that carried the server's split.
    timed: u64,
    /// When the latest answer of the window arrived.
    last_answer: Option<Instant>,
}

impl WindowRecord {
    fn new() -> Self {
        Self {
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            sent: 0,
            requests: 0,
            pairs: 0,
            server_us: [0; 3],
            timed: 0,
            last_answer: None,
        }
    }
}

impl Recorder {
    fn answered(&mut self, latency: Duration, answer: Answered) {
        let us = (latency.as_micros() as u64).clamp(1, 3_600_000_000);
        let pairs = answer.pairs;
        let w = &mut self.window;
        let _ = w.latency_us.record(us);
        w.requests += 1;
        w.pairs += pairs;
        w.last_answer = Some(Instant::now());
        if let Some(server_us) = answer.server_us {
            w.timed += 1;
            for (total, part) in w.server_us.iter_mut().zip(server_us) {
                *total += part;
            }
        }
        let (second, h) = self.second();
        second.requests += 1;
        second.pairs += pairs;
        let _ = h.record(us);
    }

    fn failed(&mut self, status: String) {
        *self.errors.entry(status).or_default() += 1;
        self.second().0.errors += 1;
    }

    /// Every second's figures (with its median latency) and the errors by
    /// status.
    fn summary(&self) -> (Vec<Second>, BTreeMap<String, u64>) {
        let timeline = self
            .seconds
            .values()
            .map(|(s, h)| Second {
                p50_ms: if h.is_empty() {
                    0.0
                } else {
                    h.value_at_quantile(0.5) as f64 / 1000.0
                },
                ..s.clone()
            })
            .collect();
        (timeline, self.errors.clone())
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
    caller: &mut Caller,
    prepared: &Prepared,
    i: usize,
    recorder: &Mutex<Recorder>,
) {
    if let Ok(mut r) = recorder.lock() {
        r.window.sent += 1;
    }
    let sent = Instant::now();
    let result = caller.call(prepared, i).await;
    let latency = sent.elapsed();
    if let Ok(mut r) = recorder.lock() {
        match result {
            Ok(answer) => r.answered(latency, answer),
            Err(status) => r.failed(status),
        }
    }
}

/// Runs one load level of `prepared` requests against `endpoint` and
/// measures it; `progress` hears a line per window.
pub async fn measure(
    endpoint: Endpoint,
    prepared: Arc<Prepared>,
    spec: &LoadSpec,
    progress: &(dyn Fn(&str) + Sync),
) -> Measurement {
    let recorder = Arc::new(Mutex::new(Recorder {
        started: Instant::now(),
        window: WindowRecord::new(),
        seconds: BTreeMap::new(),
        errors: BTreeMap::new(),
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let load = Load {
        endpoint,
        prepared,
        recorder: recorder.clone(),
        stop: stop.clone(),
    };
    let tasks = match spec.shape {
        LoadShape::Closed(concurrency) => load.closed_loop(concurrency),
        LoadShape::Open(_) | LoadShape::Ramp(_) => vec![load.open_loop(spec, started)],
    };
    tokio::time::sleep(spec.warmup).await;
    let (windows, stable) = measure_windows(spec, &recorder, started, progress).await;
    stop.store(true, Ordering::Relaxed);
    // Closed-loop clients still waiting are cancelled rather than waited
    // for: the server drops a cancelled request's queued pairs, so a slow
    // level (a minute per request on a slow dtype) does not hold the run.
    // The caller waits for the server to go idle before the next level.
    for t in tasks {
        if matches!(spec.shape, LoadShape::Closed(_)) {
            t.abort();
        }
        let _ = t.await;
    }
    summarize(spec, &windows, stable, &recorder)
}

/// What the load's tasks share.
struct Load {
    endpoint: Endpoint,
    prepared: Arc<Prepared>,
    recorder: Arc<Mutex<Recorder>>,
    stop: Arc<AtomicBool>,
}

impl Load {
    /// `concurrency` clients, each sending its next request as soon as the
    /// last is answered.
    fn closed_loop(&self, concurrency: usize) -> Vec<tokio::task::JoinHandle<()>> {
        (0..concurrency)
            .map(|c| {
                let (mut caller, prepared, recorder, stop) = (
                    Caller::new(self.endpoint.clone()),
                    self.prepared.clone(),
                    self.recorder.clone(),
                    self.stop.clone(),
                );
                tokio::spawn(async move {
                    let mut i = c;
                    while !stop.load(Ordering::Relaxed) {
                        one_request(&mut caller, &prepared, i, &recorder).await;
                        i += concurrency;
                    }
                })
            })
            .collect()
    }

    /// Poisson arrivals at the shape's rate (fixed or ramping), whatever
    /// the answers do, up to [`OPEN_LOOP_CAP`] in flight.
    fn open_loop(&self, spec: &LoadSpec, started: Instant) -> tokio::task::JoinHandle<()> {
        let (endpoint, prepared, recorder, stop) = (
            self.endpoint.clone(),
            self.prepared.clone(),
            self.recorder.clone(),
            self.stop.clone(),
        );
        let (seed, shape, warmup) = (spec.seed, spec.shape, spec.warmup);
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            // Idle HTTP connections, reused by later arrivals.
            let idle: Arc<Mutex<Vec<Caller>>> = Arc::new(Mutex::new(Vec::new()));
            let mut next = Instant::now();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let rate = arrival_rate(shape, warmup, next.duration_since(started));
                let gaps = Exp::new(rate.max(1e-3)).expect("positive rate");
                next += Duration::from_secs_f64(gaps.sample(&mut rng));
                tokio::time::sleep_until(next.into()).await;
                if in_flight.load(Ordering::Relaxed) >= OPEN_LOOP_CAP {
                    if let Ok(mut r) = recorder.lock() {
                        r.failed("dropped by client (too many in flight)".into());
                    }
                    continue;
                }
                let mut caller = idle
                    .lock()
                    .ok()
                    .and_then(|mut v| v.pop())
                    .unwrap_or_else(|| Caller::new(endpoint.clone()));
                let (prepared, recorder, in_flight, idle) = (
                    prepared.clone(),
                    recorder.clone(),
                    in_flight.clone(),
                    idle.clone(),
                );
                let request = i;
                i += 1;
                in_flight.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    one_request(&mut caller, &prepared, request, &recorder).await;
                    if let Ok(mut v) = idle.lock() {
                        v.push(caller);
                    }
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                });
            }
        })
    }
}

/// Waits up to `limit` for the next answer after the ones already in the
/// window, then takes the window: windows end on an answer, so a window
/// counts whole requests over exactly the time they took to arrive, and a
/// few lumpy completions (a batch answers several requests at once) do not
/// swing a short window's rate by a whole request's share.
async fn take_on_answer(recorder: &Mutex<Recorder>, limit: Duration) -> WindowRecord {
    let answered = || recorder.lock().map(|r| r.window.requests).unwrap_or(0);
    let before = answered();
    let until = Instant::now() + limit;
    while answered() == before && Instant::now() < until {
        tokio::time::sleep(ANSWER_POLL).await;
    }
    recorder
        .lock()
        .map(|mut r| std::mem::replace(&mut r.window, WindowRecord::new()))
        .unwrap_or_else(|_| WindowRecord::new())
}

/// How often [`take_on_answer`] looks for the next answer.
const ANSWER_POLL: Duration = Duration::from_millis(2);

/// Measures windows until enough agree (a ramp: every window of its rise);
/// returns them and whether they agreed. Each window runs at least
/// `spec.window` and ends on the next answer after it (waiting at most
/// another window for one); its rates are over its span from the answer
/// that ended the window before.
async fn measure_windows(
    spec: &LoadSpec,
    recorder: &Mutex<Recorder>,
    started: Instant,
    progress: &(dyn Fn(&str) + Sync),
) -> (Vec<(WindowStats, WindowRecord)>, bool) {
    let mut window_start = take_on_answer(recorder, spec.window)
        .await
        .last_answer
        .unwrap_or_else(Instant::now);
    let mut windows: Vec<(WindowStats, WindowRecord)> = Vec::new();
    // A ramp measures every window of its rise and never stops early.
    let (window_count, ramp) = match spec.shape {
        LoadShape::Ramp(r) => (
            ((r.seconds / spec.window.as_secs_f64()).ceil() as usize).max(1),
            Some(r),
        ),
        _ => (spec.max_windows, None),
    };
    while windows.len() < window_count {
        let window_started = window_start;
        tokio::time::sleep_until((window_started + spec.window).into()).await;
        let record = take_on_answer(recorder, spec.window).await;
        let window_end = record.last_answer.unwrap_or_else(Instant::now);
        window_start = window_end;
        let span = window_end.saturating_duration_since(window_started);
        let seconds = span.as_secs_f64().max(1e-3);
        let middle = window_started.duration_since(started) + span / 2;
        let stats = WindowStats {
            pairs_per_second: record.pairs as f64 / seconds,
            requests_per_second: record.requests as f64 / seconds,
            offered_per_second: match spec.shape {
                LoadShape::Closed(_) => record.sent as f64 / seconds,
                shape => arrival_rate(shape, spec.warmup, middle),
            },
            p50_ms: if record.latency_us.is_empty() {
                0.0
            } else {
                record.latency_us.value_at_quantile(0.5) as f64 / 1000.0
            },
            sent_per_second: record.sent as f64 / seconds,
            seconds,
        };
        progress(&format!(
            "window {}/{window_count}: {:.1} pairs/s, {:.2} of {:.2} requests/s answered",
            windows.len() + 1,
            stats.pairs_per_second,
            stats.requests_per_second,
            stats.offered_per_second,
        ));
        windows.push((stats, record));
        if ramp.is_none()
            && agree(
                &windows
                    .iter()
                    .map(|(s, _)| s.pairs_per_second)
                    .collect::<Vec<_>>(),
                spec.stable_windows,
                spec.tolerance,
            )
        {
            return (windows, true);
        }
    }
    (windows, false)
}

/// The level's statistics: over the agreeing windows (or the last ones
/// when none agreed); a ramp's latencies over all of them and its
/// throughput the rate it answered once saturated.
fn summarize(
    spec: &LoadSpec,
    windows: &[(WindowStats, WindowRecord)],
    stable: bool,
    recorder: &Mutex<Recorder>,
) -> Measurement {
    let ramp = match spec.shape {
        LoadShape::Ramp(r) => Some(r),
        _ => None,
    };
    let keep = if ramp.is_some() {
        windows.len()
    } else {
        spec.stable_windows
    };
    let last = &windows[windows.len().saturating_sub(keep)..];
    let mut latency = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
    let (mut requests_done, mut timed, mut server_us) = (0u64, 0u64, [0u64; 3]);
    for (_, record) in last {
        let _ = latency.add(&record.latency_us);
        requests_done += record.requests;
        timed += record.timed;
        for (t, p) in server_us.iter_mut().zip(record.server_us) {
            *t += p;
        }
    }
    let mean = |f: fn(&WindowStats) -> f64| {
        last.iter().map(|(s, _)| f(s)).sum::<f64>() / last.len().max(1) as f64
    };
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    let per_request = |us: u64| us as f64 / 1000.0 / timed.max(1) as f64;
    let stats: Vec<WindowStats> = windows.iter().map(|(s, _)| *s).collect();
    let sustained = |f: fn(&WindowStats) -> f64| {
        let from = saturated_from(&stats);
        let tail = &stats[from..];
        tail.iter().map(f).sum::<f64>() / tail.len().max(1) as f64
    };
    let headline = |f: fn(&WindowStats) -> f64| {
        if ramp.is_some() {
            sustained(f)
        } else {
            mean(f)
        }
    };
    let cv = if ramp.is_some() {
        coefficient_of_variation(
            &stats[saturated_from(&stats)..]
                .iter()
                .map(|w| w.pairs_per_second)
                .collect::<Vec<_>>(),
        )
    } else {
        coefficient_of_variation(
            &last
                .iter()
                .map(|(s, _)| s.pairs_per_second)
                .collect::<Vec<_>>(),
        )
    };
    let (timeline, errors) = recorder.lock().map(|r| r.summary()).unwrap_or_default();
    Measurement {
        passages: spec.passages,
        concurrency: match spec.shape {
            LoadShape::Closed(c) => Some(c),
            _ => None,
        },
        rate: match spec.shape {
            LoadShape::Open(r) => Some(r),
            _ => None,
        },
        ramp,
        knee_per_second: ramp.and_then(|_| knee(&stats)),
        stable,
        cv,
        pairs_per_second: headline(|s| s.pairs_per_second),
        requests_per_second: headline(|s| s.requests_per_second),
        windows: stats,
        mean_ms: latency.mean() / 1000.0,
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
        server_stages_ms: BTreeMap::new(),
        timeline,
    }
}

/// The arrival rate `elapsed` into the load (warm-up included).
fn arrival_rate(shape: LoadShape, warmup: Duration, elapsed: Duration) -> f64 {
    match shape {
        LoadShape::Open(rate) => rate,
        LoadShape::Ramp(r) => {
            let into = elapsed.saturating_sub(warmup).as_secs_f64();
            let share = if r.seconds > 0.0 {
                (into / r.seconds).min(1.0)
            } else {
                1.0
            };
            r.from + (r.to - r.from) * share
        }
        LoadShape::Closed(_) => 0.0,
    }
}

/// Which windows of a ramp kept up. A window keeps up when
/// * its median latency is at most [`KNEE_LATENCY_FACTOR`] × the base, the
///   lower median of the first two answered windows (one slow first
///   window does not set the bar), and
/// * it and the window before it together answered at least
///   [`KEEP_UP_SHARE`] of the requests that arrived in them (a batch
///   answers several requests at once, so one window alone is lumpy),
///   not counting those that arrived within [`KNEE_LATENCY_FACTOR`] base
///   latencies of its end: they are still on their way, not behind.
///
/// Windows before the first answer are still filling and count as keeping
/// up; with no answer at all, none keeps up.
pub fn keeping_up(windows: &[WindowStats]) -> Vec<bool> {
    let Some(first) = windows.iter().position(|w| w.p50_ms > 0.0) else {
        return vec![false; windows.len()];
    };
    let base = windows[first..]
        .iter()
        .filter(|w| w.p50_ms > 0.0)
        .take(2)
        .map(|w| w.p50_ms)
        .fold(f64::INFINITY, f64::min);
    (0..windows.len())
        .map(|i| {
            if i < first {
                return true;
            }
            let pair = &windows[i.saturating_sub(1).max(first)..=i];
            // Counts where the windows' lengths are known, else rates (the
            // windows are of about one length).
            let count =
                |rate: f64, w: &WindowStats| rate * if w.seconds > 0.0 { w.seconds } else { 1.0 };
            let answered: f64 = pair.iter().map(|w| count(w.requests_per_second, w)).sum();
            let arrived: f64 = pair.iter().map(|w| count(w.sent_per_second, w)).sum();
            let w = &windows[i];
            let on_their_way = if w.seconds > 0.0 {
                w.sent_per_second * KNEE_LATENCY_FACTOR * base / 1000.0
            } else {
                0.0
            };
            w.p50_ms > 0.0
                && w.p50_ms <= KNEE_LATENCY_FACTOR * base
                && answered >= KEEP_UP_SHARE * (arrived - on_their_way).max(0.0)
        })
        .collect()
}

/// Where the server fell behind for good: the first window that did not
/// keep up and was not followed by one that did (the last window counts
/// when it did not keep up). A single noisy window is not a knee.
fn first_behind(windows: &[WindowStats]) -> Option<usize> {
    let up = keeping_up(windows);
    (0..up.len()).find(|&i| !up[i] && up.get(i + 1).is_none_or(|next| !next))
}

/// Where a ramp's sustained throughput is averaged from: the first
/// saturated window, or the last third when it never saturated. Batches
/// finish several requests at once, so single windows are lumpy; the
/// average over the saturated stretch is the capacity.
fn saturated_from(windows: &[WindowStats]) -> usize {
    first_behind(windows).unwrap_or(windows.len() - windows.len().div_ceil(3))
}

/// The knee: the highest offered rate of a window that kept up, among
/// those before the server fell behind for good (`None`: it kept up
/// throughout; 0 when it never kept up).
pub fn knee(windows: &[WindowStats]) -> Option<f64> {
    let behind = first_behind(windows)?;
    let up = keeping_up(windows);
    Some(
        windows[..behind]
            .iter()
            .zip(&up)
            .filter(|(_, up)| **up)
            .map(|(w, _)| w.offered_per_second)
            .fold(0.0, f64::max),
    )
}

/// Standard deviation ÷ mean (population), 0 for fewer than two values or
/// a zero mean.
pub fn coefficient_of_variation(values: &[f64]) -> f64 {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n.max(1.0);
    if values.len() < 2 || mean <= 0.0 {
        return 0.0;
    }
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    variance.sqrt() / mean
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
    use super::*;

    #[test]
    fn the_knee_is_the_last_rate_kept_up_before_falling_behind_for_good() {
        // Offered, answered, median: every arrival answered unless said.
        let w = |offered: f64, answered: f64, p50_ms: f64| WindowStats {
            pairs_per_second: answered * 32.0,
            requests_per_second: answered,
            offered_per_second: offered,
            p50_ms,
            sent_per_second: offered,
            seconds: 0.0,
        };
        let ramp = [
            w(0.5, 0.0, 0.0), // nothing answered yet: no baseline
            w(1.0, 1.0, 700.0),
            w(2.0, 2.0, 900.0),
            w(3.0, 3.0, 1300.0),
            w(4.0, 3.2, 2500.0),
            w(5.0, 3.2, 6000.0),
        ];
        assert_eq!(knee(&ramp), Some(3.0));
        assert_eq!(knee(&ramp[..4]), None, "kept up to the end");
        assert_eq!(knee(&[w(4.0, 0.0, 0.0)]), Some(0.0), "never kept up");
        assert_eq!(saturated_from(&ramp), 4);
        assert_eq!(saturated_from(&ramp[..4]), 2, "the last third, rounded up");
        assert_eq!(saturated_from(&ramp[..2]), 1, "never an empty stretch");

        // One slow window in the middle is noise, not the knee.
        let noisy = [
            w(1.0, 1.0, 700.0),
            w(2.0, 2.0, 800.0),
            w(3.0, 3.0, 1300.0),
            w(4.0, 2.0, 1200.0), // lumpy: two of its answers land in the next window
            w(5.0, 7.0, 1300.0),
            w(6.0, 4.0, 3000.0),
            w(7.0, 4.0, 5000.0),
        ];
        assert_eq!(knee(&noisy), Some(5.0));
        // Answering too few is falling behind even at a low median.
        let dropping = [
            w(1.0, 1.0, 700.0),
            w(2.0, 2.0, 700.0),
            w(3.0, 2.0, 700.0),
            w(4.0, 2.0, 700.0),
        ];
        assert_eq!(knee(&dropping), Some(2.0));
        // The base is the lower of the first two medians.
        let slow_start = [
            w(1.0, 1.0, 2000.0),
            w(2.0, 2.0, 700.0),
            w(3.0, 3.0, 1300.0),
            w(4.0, 4.0, 1500.0),
            w(5.0, 5.0, 1600.0),
        ];
        assert_eq!(knee(&slow_start), Some(3.0));

        // Requests still on their way at a window's end are not behind:
        // at 0.8 arrivals/s and a 0.5 s median, ~0.8 of a window's 3.2
        // arrivals are in flight when it ends.
        let slow = |offered: f64, answered: f64, p50_ms: f64| WindowStats {
            seconds: 4.0,
            ..w(offered, answered, p50_ms)
        };
        let light = [
            slow(0.8, 0.6, 480.0),
            slow(1.1, 0.9, 940.0),
            slow(1.2, 1.3, 440.0),
            slow(1.5, 1.4, 2400.0),
            slow(1.8, 1.6, 2300.0),
        ];
        assert_eq!(keeping_up(&light), [true, true, true, false, false]);
        assert_eq!(knee(&light), Some(1.2));
    }

    #[test]
    fn the_coefficient_of_variation_is_spread_over_mean() {
        assert_eq!(coefficient_of_variation(&[5.0]), 0.0);
        assert_eq!(coefficient_of_variation(&[0.0, 0.0]), 0.0);
        assert!((coefficient_of_variation(&[9.0, 11.0]) - 0.1).abs() < 1e-12);
        assert_eq!(coefficient_of_variation(&[4.0, 4.0, 4.0]), 0.0);
    }

    #[test]
    fn a_ramp_rises_linearly_after_its_warm_up() {
        let shape = LoadShape::Ramp(Ramp {
            from: 1.0,
            to: 5.0,
            seconds: 8.0,
        });
        let at = |s: f64| arrival_rate(shape, Duration::from_secs(2), Duration::from_secs_f64(s));
        assert_eq!(at(1.0), 1.0);
        assert_eq!(at(2.0), 1.0);
        assert_eq!(at(6.0), 3.0);
        assert_eq!(at(20.0), 5.0);
        assert_eq!(
            arrival_rate(LoadShape::Open(2.5), Duration::ZERO, Duration::ZERO),
            2.5
        );
    }

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
