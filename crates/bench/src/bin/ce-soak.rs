//! `ce-soak`: a long steady load against a real `ce-supervisor`, watching
//! every process's memory and the supervisor's file descriptors.
//!
//! ```text
//! scripts/soak.sh 600            # ten minutes
//! ```
//!
//! It measures the server's capacity first (closed loop), then offers
//! `--load` of it (70% by default) at a steady rate for DURATION seconds,
//! sampling the resident memory of the supervisor and of every worker each
//! `--sample-every` seconds. It fails (exit 1) if a request fails, a worker
//! dies, any process's RSS peak grows by more than `--max-growth` over its
//! peak in the first third after warm-up (see `growth_marks`), or the
//! supervisor's open fds grow after warm-up (see `fd_growth`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ce_bench::server::Supervisor;
use ce_bench::{Request, Workload, WorkloadConfig};
use ce_proto::v1::cross_encoder_client::CrossEncoderClient;
use clap::Parser;
use hdrhistogram::Histogram;
use serde::Serialize;
use tonic::transport::Channel;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Steady load for a long time; fail on errors or memory growth"
)]
struct Args {
    /// Seconds of steady load (after the capacity probe).
    duration: u64,
    /// Model directory.
    #[arg(long, env = "CE_MODEL", default_value = "models/minilm-l6-ce")]
    model: String,
    /// Fraction of the measured capacity to offer.
    #[arg(long, default_value_t = 0.7)]
    load: f64,
    /// Seconds of closed-loop load that measure the capacity.
    #[arg(long, default_value_t = 15)]
    probe_seconds: u64,
    /// Concurrent clients of the capacity probe.
    #[arg(long, default_value_t = 4)]
    probe_concurrency: usize,
    /// Passages per request.
    #[arg(long, default_value_t = 32)]
    passages: usize,
    /// Seconds between memory samples.
    #[arg(long, default_value_t = 10)]
    sample_every: u64,
    /// Seconds of warm-up before memory counts (default: a fifth of the
    /// duration, 30 to 60 s: a model worker's heap grows until it has seen
    /// its largest batch shapes).
    #[arg(long)]
    warmup: Option<u64>,
    /// Largest RSS growth allowed over the baseline (0.10 = 10%).
    #[arg(long, default_value_t = 0.10)]
    max_growth: f64,
    /// Workload seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// ce-supervisor flags, e.g. `--server-args='--replicas 2'`.
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    server_args: String,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also write every memory sample as CSV here.
    #[arg(long)]
    csv: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct ProcessReport {
    pid: u32,
    name: String,
    baseline_rss_bytes: u64,
    max_rss_bytes: u64,
    last_rss_bytes: u64,
    growth_percent: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    duration_s: u64,
    capacity_requests_per_second: f64,
    offered_requests_per_second: f64,
    passages: usize,
    sent: usize,
    answered: usize,
    failed: usize,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    latency_max_ms: f64,
    processes: Vec<ProcessReport>,
    /// The supervisor's open file descriptors after the warm-up: first, peak, last.
    supervisor_fds: [usize; 3],
    problems: Vec<String>,
}

/// File descriptors the supervisor may gain over the soak (connections
/// come and go); a leak of one per request or restart passes it quickly.
const FD_SLACK: usize = 8;

/// The supervisor's fd counts after the warm-up: first, peak and last,
/// and a problem if the peak passes the first by more than [`FD_SLACK`].
fn fd_growth(fds: &[(f64, usize)], warmup: u64) -> ([usize; 3], Option<String>) {
    let after: Vec<usize> = fds
        .iter()
        .filter(|(at, _)| *at >= warmup as f64)
        .map(|(_, n)| *n)
        .collect();
    let (Some(&first), Some(&peak), Some(&last)) =
        (after.first(), after.iter().max(), after.last())
    else {
        return ([0; 3], None);
    };
    let problem = (peak > first + FD_SLACK)
        .then(|| format!("supervisor file descriptors grew from {first} to {peak} after warm-up"));
    ([first, peak, last], problem)
}

/// Requests per second the server answers at `concurrency` clients.
async fn capacity(
    client: &CrossEncoderClient<Channel>,
    requests: &Arc<Vec<Request>>,
    concurrency: usize,
    seconds: u64,
) -> anyhow::Result<f64> {
    let until = Instant::now() + Duration::from_secs(seconds);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (mut client, requests, next) = (client.clone(), requests.clone(), next.clone());
            tokio::spawn(async move {
                let mut done = 0usize;
                while Instant::now() < until {
                    let i = next.fetch_add(1, Ordering::Relaxed) % requests.len();
                    client.rerank(requests[i].to_rerank()).await?;
                    done += 1;
                }
                Ok::<_, tonic::Status>(done)
            })
        })
        .collect();
    let mut done = 0;
    for t in tasks {
        done += t.await??;
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

#[derive(Default)]
struct Outcomes {
    answered: usize,
    failures: Vec<String>,
    latency_us: Option<Histogram<u64>>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(soak(args))
}

async fn soak(args: Args) -> anyhow::Result<()> {
    let warmup = args
        .warmup
        .unwrap_or((args.duration / 5).clamp(30, 60))
        .min(args.duration.saturating_sub(args.sample_every));
    let requests: Arc<Vec<Request>> = Arc::new(
        Workload::new(WorkloadConfig {
            seed: args.seed,
            passages: args.passages,
            ..Default::default()
        })
        .take(64)
        .collect(),
    );
    let server_args: Vec<String> = args
        .server_args
        .split_whitespace()
        .map(String::from)
        .collect();
    let mut server = Supervisor::start(&args.model, &server_args)?;
    let client = server.connect(Duration::from_secs(300)).await?;
    eprintln!(
        "measuring capacity ({} clients, {} s)…",
        args.probe_concurrency, args.probe_seconds
    );
    let capacity = capacity(
        &client,
        &requests,
        args.probe_concurrency,
        args.probe_seconds,
    )
    .await?;
    let rate = capacity * args.load;
    eprintln!(
        "capacity {capacity:.2} requests/s ({:.1} pairs/s); offering {rate:.2} requests/s for {} s, warm-up {warmup} s",
        capacity * args.passages as f64,
        args.duration
    );
    let workers_at_start: BTreeMap<u32, String> = server
        .processes()
        .into_iter()
        .map(|p| (p.pid, p.name))
        .collect();

    let outcomes = Arc::new(std::sync::Mutex::new(Outcomes {
        latency_us: Some(Histogram::new(3)?),
        ..Default::default()
    }));
    let started = Instant::now();
    let (sent, mut samples, fds) =
        offer_load(&args, &server, &client, &requests, rate, &outcomes).await;
    samples.push((started.elapsed().as_secs_f64(), server.processes()));
    drop(server);

    let (processes, mut problems) =
        memory_growth(&workers_at_start, &samples, warmup, args.max_growth);
    let (supervisor_fds, fd_problem) = fd_growth(&fds, warmup);
    problems.extend(fd_problem);
    let outcomes = std::mem::take(&mut *outcomes.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    if !outcomes.failures.is_empty() {
        problems.push(format!(
            "{} of {sent} requests failed, first: {}",
            outcomes.failures.len(),
            outcomes.failures[0]
        ));
    }
    let latency = outcomes.latency_us.context("latency histogram")?;
    let ms = |us: u64| us as f64 / 1000.0;
    let report = Report {
        duration_s: args.duration,
        capacity_requests_per_second: capacity,
        offered_requests_per_second: rate,
        passages: args.passages,
        sent,
        answered: outcomes.answered,
        failed: outcomes.failures.len(),
        latency_p50_ms: ms(latency.value_at_quantile(0.5)),
        latency_p99_ms: ms(latency.value_at_quantile(0.99)),
        latency_max_ms: ms(latency.max()),
        processes,
        supervisor_fds,
        problems,
    };
    print_report(&report, warmup);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    if let Some(path) = &args.csv {
        let mut csv = String::from("seconds,pid,name,rss_bytes\n");
        for (at, ps) in &samples {
            for p in ps {
                csv += &format!(
                    "{at:.1},{},{},{}\n",
                    p.pid,
                    p.name,
                    p.rss_bytes.unwrap_or(0)
                );
            }
        }
        std::fs::write(path, csv)?;
    }
    if !report.problems.is_empty() {
        bail!("soak failed: {}", report.problems.join("; "));
    }
    Ok(())
}

/// Offers `rate` requests per second, open loop, for `args.duration`,
/// sampling every process's memory every `args.sample_every` seconds;
/// returns how many were sent and the samples.
async fn offer_load(
    args: &Args,
    server: &Supervisor,
    client: &CrossEncoderClient<Channel>,
    requests: &Arc<Vec<Request>>,
    rate: f64,
    outcomes: &Arc<std::sync::Mutex<Outcomes>>,
) -> (
    usize,
    Vec<(f64, Vec<ce_bench::server::Process>)>,
    Vec<(f64, usize)>,
) {
    let started = Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate.max(0.01));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sampler = tokio::time::interval(Duration::from_secs(args.sample_every));
    sampler.tick().await;
    let mut samples: Vec<(f64, Vec<ce_bench::server::Process>)> = Vec::new();
    let mut fds: Vec<(f64, usize)> = Vec::new();
    let mut in_flight = Vec::new();
    let (mut sent, mut next) = (0usize, 0usize);
    let end = started + Duration::from_secs(args.duration);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                if Instant::now() >= end {
                    break;
                }
                let (mut client, outcomes) = (client.clone(), outcomes.clone());
                let r = requests[next % requests.len()].to_rerank();
                next += 1;
                sent += 1;
                in_flight.push(tokio::spawn(async move {
                    let t = Instant::now();
                    let result = client.rerank(r).await;
                    let us = t.elapsed().as_micros() as u64;
                    if let Ok(mut o) = outcomes.lock() {
                        match result {
                            Ok(_) => {
                                o.answered += 1;
                                if let Some(h) = o.latency_us.as_mut() {
                                    let _ = h.record(us.max(1));
                                }
                            }
                            Err(status) => o.failures.push(format!("{status:?}")),
                        }
                    }
                }));
                in_flight.retain(|t| !t.is_finished());
            }
            _ = sampler.tick() => {
                let at = started.elapsed().as_secs_f64();
                let now = server.processes();
                let line: Vec<String> = now
                    .iter()
                    .map(|p| format!("{} {} MiB", p.name, p.rss_bytes.unwrap_or(0) >> 20))
                    .collect();
                let o = outcomes.lock().map(|o| (o.answered, o.failures.len())).unwrap_or_default();
                let open = server.fd_count();
                eprintln!(
                    "{at:>6.0} s: {} answered, {} failed; {}; supervisor {open} fds",
                    o.0,
                    o.1,
                    line.join(", ")
                );
                samples.push((at, now));
                fds.push((at, open));
            }
        }
    }
    for t in in_flight {
        let _ = t.await;
    }
    (sent, samples, fds)
}

/// Each process's RSS growth after the warm-up (high-water marks, first
/// third against the rest), and what is wrong: a process that died, one
/// never sampled, one that grew more than `max_growth`.
fn memory_growth(
    workers_at_start: &BTreeMap<u32, String>,
    samples: &[(f64, Vec<ce_bench::server::Process>)],
    warmup: u64,
    max_growth: f64,
) -> (Vec<ProcessReport>, Vec<String>) {
    let mut problems = Vec::new();
    let mut processes = Vec::new();
    for (&pid, name) in workers_at_start {
        let series: Vec<(f64, Option<u64>)> = samples
            .iter()
            .map(|(at, ps)| {
                (
                    *at,
                    ps.iter().find(|p| p.pid == pid).and_then(|p| p.rss_bytes),
                )
            })
            .collect();
        if series.iter().any(|(_, rss)| rss.is_none()) {
            problems.push(format!("{name} {pid} died during the soak"));
            continue;
        }
        let after: Vec<u64> = series
            .iter()
            .filter(|(at, _)| *at >= warmup as f64)
            .filter_map(|(_, rss)| *rss)
            .collect();
        let (Some((baseline, max)), Some(&last)) = (growth_marks(&after), after.last()) else {
            problems.push(format!("no sample of {name} {pid} after the warm-up"));
            continue;
        };
        let growth = max as f64 / baseline.max(1) as f64 - 1.0;
        if growth > max_growth {
            problems.push(format!(
                "{name} {pid}: RSS grew {:.1}% ({} → {} MiB) after warm-up",
                growth * 100.0,
                baseline >> 20,
                max >> 20
            ));
        }
        processes.push(ProcessReport {
            pid,
            name: name.clone(),
            baseline_rss_bytes: baseline,
            max_rss_bytes: max,
            last_rss_bytes: last,
            growth_percent: growth * 100.0,
        });
    }
    (processes, problems)
}

/// The baseline and the peak of a process's RSS samples after warm-up: the
/// highest of the first third of them (at least one) and the highest of
/// all. Comparing high-water marks, not single samples, keeps a process
/// whose memory saws up and down with each batch (large temporary tensors
/// freed back to the system) from reading as growth; a leak still raises
/// the later peaks.
fn growth_marks(samples: &[u64]) -> Option<(u64, u64)> {
    let first_third = samples.len().div_ceil(3).max(1);
    let baseline = samples.iter().take(first_third).copied().max()?;
    let peak = samples.iter().copied().max()?;
    Some((baseline, peak))
}

fn print_report(r: &Report, warmup: u64) {
    println!(
        "## Soak: {} s at {:.0}% of capacity ({:.2} of {:.2} requests/s, {} passages each)\n",
        r.duration_s,
        r.offered_requests_per_second / r.capacity_requests_per_second * 100.0,
        r.offered_requests_per_second,
        r.capacity_requests_per_second,
        r.passages
    );
    println!(
        "requests: {} sent, {} answered, {} failed; latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms\n",
        r.sent, r.answered, r.failed, r.latency_p50_ms, r.latency_p99_ms, r.latency_max_ms
    );
    println!(
        "| process | pid | peak RSS, first third after {warmup} s warm-up | peak RSS | last RSS | growth |"
    );
    println!("|---|---|---|---|---|---|");
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    for p in &r.processes {
        println!(
            "| {} | {} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:+.1}% |",
            p.name,
            p.pid,
            mib(p.baseline_rss_bytes),
            mib(p.max_rss_bytes),
            mib(p.last_rss_bytes),
            p.growth_percent
        );
    }
    let [first, peak, last] = r.supervisor_fds;
    println!(
        "\nsupervisor file descriptors after warm-up: {first} first, {peak} peak, {last} last"
    );
    if r.problems.is_empty() {
        println!("\nPASS");
    } else {
        println!("\nFAIL:");
        for p in &r.problems {
            println!("- {p}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{fd_growth, growth_marks};

    #[test]
    fn fds_must_stay_flat_after_the_warm_up() {
        let flat = [(0.0, 10), (30.0, 40), (40.0, 43), (50.0, 41)];
        assert_eq!(fd_growth(&flat, 30), ([40, 43, 41], None));
        let leak = [(30.0, 40), (40.0, 45), (50.0, 52)];
        assert!(fd_growth(&leak, 30).1.is_some());
    }

    #[test]
    fn growth_compares_high_water_marks() {
        assert_eq!(growth_marks(&[]), None);
        assert_eq!(growth_marks(&[5]), Some((5, 5)));
        // A saw-tooth from the start is no growth…
        assert_eq!(
            growth_marks(&[100, 130, 100, 130, 101, 129]),
            Some((130, 130))
        );
        // …a rising floor and peak is.
        assert_eq!(
            growth_marks(&[100, 101, 110, 120, 130, 140]),
            Some((101, 140))
        );
    }
}
