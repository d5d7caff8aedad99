//! `ce-bench`: the load generator and the experiment runner.
//!
//! ```text
//! ce-bench run --server http://127.0.0.1:50051 --passages 32 --concurrency 1,2,4
//! ce-bench run --call score_tokens --rate 1,2          # the model stage alone, open loop
//! ce-bench run --transport http --http 127.0.0.1:8000 --ramp 0.5,4,30
//! ce-bench run --pairs-file pairs.jsonl --call score
//! ce-bench experiment conf/experiment/10_multi_model_pool.toml [--quick | --standard]
//! ce-bench summary --slo-p99-ms 2000
//! ```
//!
//! `experiment` expands the file's sweep, starts a `ce-supervisor` (found
//! beside this executable) per server variant with the variant's settings,
//! measures every client load level, stops it, and writes
//! `experiments/results/<name>_results.md` (+ JSON and SVG plots) and
//! `experiments/distribution/<name>.csv`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use ce_bench::client::{Call, Endpoint, Prepared, Transport};
use ce_bench::experiment::{ClientConfig, Experiment, LoadMode, Profile, Setting, plain};
use ce_bench::load::{LoadShape, LoadSpec, Measurement, Ramp, measure};
use ce_bench::report::{self, ExperimentResult, Machine, VariantResult};
use ce_bench::server::Supervisor;
use ce_bench::workload::{Request, Workload, WorkloadConfig, requests_from_pairs};
use ce_proto::v1::cross_encoder_client::CrossEncoderClient;
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

/// Generated requests per load level, cycled through.
const GENERATED_REQUESTS: usize = 64;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Load generator and experiment runner for ce-supervisor"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure a running server.
    Run {
        /// gRPC endpoint.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        server: String,
        /// HTTP address (`host:port`) for `--transport http`.
        #[arg(long, default_value = "127.0.0.1:8000")]
        http: String,
        /// gRPC or HTTP.
        #[arg(long, value_enum, default_value_t = TransportArg::Grpc)]
        transport: TransportArg,
        /// The API each request calls.
        #[arg(long, value_enum, default_value_t = CallArg::Rerank)]
        call: CallArg,
        /// Passages per request.
        #[arg(long, default_value_t = 32)]
        passages: usize,
        /// Pairs from this JSON-lines file (`{"query", "passage"}` per line)
        /// instead of the generated workload.
        #[arg(long)]
        pairs_file: Option<PathBuf>,
        /// Closed-loop levels (clients).
        #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
        concurrency: Vec<usize>,
        /// Open-loop rates (requests/s); replaces --concurrency.
        #[arg(long, value_delimiter = ',')]
        rate: Vec<f64>,
        /// A ramp `FROM,TO,SECONDS` (requests/s rising linearly); replaces
        /// --concurrency and --rate.
        #[arg(long, value_parser = parse_ramp)]
        ramp: Option<Ramp>,
        /// Measurement window in seconds.
        #[arg(long, default_value_t = 5.0)]
        window_s: f64,
        /// Warm-up in seconds.
        #[arg(long, default_value_t = 3.0)]
        warmup_s: f64,
        /// Write every measurement as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Run an experiment file's sweep.
    Experiment {
        /// The experiment file.
        config: PathBuf,
        /// Apply its `[quick]` overrides (a smoke run).
        #[arg(long, conflicts_with = "standard")]
        quick: bool,
        /// Apply its `[standard]` overrides (the whole grid, shorter windows).
        #[arg(long)]
        standard: bool,
        /// Override a key of the file, after the profile's overrides:
        /// `--set server.replicas=[1,2] --set client.concurrency=[1,4]`.
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_setting)]
        sets: Vec<Setting>,
        /// Model directory for every variant.
        #[arg(long, env = "CE_MODEL", default_value = "models/minilm-l6-ce")]
        model: String,
        /// Results root (`results/` and `distribution/` below it).
        #[arg(long, default_value = "experiments")]
        out: PathBuf,
    },
    /// Print one server variant's settings as TOML (for run_server.sh).
    Variant {
        /// The experiment file.
        config: PathBuf,
        /// Apply its `[quick]` overrides.
        #[arg(long, conflicts_with = "standard")]
        quick: bool,
        /// Apply its `[standard]` overrides.
        #[arg(long)]
        standard: bool,
        /// Override a key of the file, as for `experiment`.
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_setting)]
        sets: Vec<Setting>,
        /// Which variant (0-based, in sweep order).
        #[arg(long, default_value_t = 0)]
        index: usize,
    },
    /// Rank every experiment under `<out>/results/*.json`.
    Summary {
        /// Results root.
        #[arg(long, default_value = "experiments")]
        out: PathBuf,
        /// Also name the best configuration with p99 at most this.
        #[arg(long)]
        slo_p99_ms: Option<f64>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CallArg {
    Rerank,
    Score,
    Tokenize,
    // Spelled as in experiment files.
    #[value(name = "score_tokens")]
    ScoreTokens,
}

impl From<CallArg> for Call {
    fn from(c: CallArg) -> Self {
        match c {
            CallArg::Rerank => Call::Rerank,
            CallArg::Score => Call::Score,
            CallArg::Tokenize => Call::Tokenize,
            CallArg::ScoreTokens => Call::ScoreTokens,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TransportArg {
    Grpc,
    Http,
}

/// `FROM,TO,SECONDS` as a ramp.
fn parse_ramp(text: &str) -> Result<Ramp, String> {
    let values: Vec<f64> = text
        .split(',')
        .map(|v| v.trim().parse::<f64>().map_err(|e| format!("{v:?}: {e}")))
        .collect::<Result<_, _>>()?;
    match values[..] {
        [from, to, seconds] if from > 0.0 && to >= from && seconds > 0.0 => {
            Ok(Ramp { from, to, seconds })
        }
        _ => Err("expected FROM,TO,SECONDS with 0 < FROM ≤ TO and SECONDS > 0".into()),
    }
}

/// Progress of one load level: a bar of its windows on a terminal, a
/// plain line per window otherwise (logs, CI).
struct Progress {
    bar: Option<ProgressBar>,
    prefix: String,
}

impl Progress {
    fn new(prefix: String, windows: usize) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(windows as u64);
            let style = ProgressStyle::with_template(
                "{spinner} {prefix} [{bar:24}] {pos}/{len} windows, {elapsed} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(prefix.clone());
            bar.set_message("warming up");
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Self { bar, prefix }
    }

    fn window(&self, line: &str) {
        match &self.bar {
            Some(bar) => {
                bar.inc(1);
                bar.set_message(line.to_string());
            }
            None => eprintln!("{}: {line}", self.prefix),
        }
    }

    fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Windows a load level measures at most.
fn windows_of(shape: LoadShape, window_s: f64, max_windows: usize) -> usize {
    match shape {
        LoadShape::Ramp(r) => ((r.seconds / window_s).ceil() as usize).max(1),
        _ => max_windows,
    }
}

/// The requests of one load level: `passages` per request, generated from
/// `seed` or read from `pairs_file`.
fn requests(passages: usize, seed: u64, pairs_file: Option<&Path>) -> anyhow::Result<Vec<Request>> {
    Ok(match pairs_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            requests_from_pairs(&text, passages)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => Workload::new(WorkloadConfig {
            seed,
            passages,
            ..Default::default()
        })
        .take(GENERATED_REQUESTS)
        .collect(),
    })
}

/// Measures one load level with progress, and prints its line.
async fn measure_level(
    endpoint: &Endpoint,
    prepared: &Arc<Prepared>,
    spec: &LoadSpec,
    label: &str,
) -> Measurement {
    let progress = Progress::new(
        label.to_string(),
        windows_of(spec.shape, spec.window.as_secs_f64(), spec.max_windows),
    );
    let m = measure(endpoint.clone(), prepared.clone(), spec, &|line: &str| {
        progress.window(line)
    })
    .await;
    progress.finish();
    let errors: u64 = m.errors.values().sum();
    eprintln!(
        "{label}: {:.1} pairs/s, {:.2} req/s, p50 {:.0} ms, p99 {:.0} ms{}{}{}",
        m.pairs_per_second,
        m.requests_per_second,
        m.p50_ms,
        m.p99_ms,
        if errors > 0 {
            format!(", errors {:?}", m.errors)
        } else {
            String::new()
        },
        m.knee_per_second
            .map_or(String::new(), |k| format!(", knee {k:.2} req/s")),
        if m.stable || m.ramp.is_some() {
            ""
        } else {
            " (unstable)"
        }
    );
    m
}

fn shapes(c: &ClientConfig) -> Vec<LoadShape> {
    match (c.mode, c.ramp) {
        (LoadMode::Closed, _) => c
            .concurrency
            .iter()
            .map(|&n| LoadShape::Closed(n))
            .collect(),
        (LoadMode::Open, _) => c.rates.iter().map(|&r| LoadShape::Open(r)).collect(),
        (LoadMode::Ramp, Some(r)) => vec![LoadShape::Ramp(r)],
        (LoadMode::Ramp, None) => Vec::new(),
    }
}

/// The endpoint for `transport`.
async fn endpoint(transport: Transport, grpc: &str, http: &str) -> anyhow::Result<Endpoint> {
    Ok(match transport {
        Transport::Grpc => Endpoint::Grpc(
            CrossEncoderClient::connect(grpc.to_string())
                .await
                .with_context(|| format!("connecting to {grpc}"))?,
        ),
        Transport::Http => Endpoint::Http(http.to_string()),
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    match cli.command {
        Command::Run {
            server,
            http,
            transport,
            call,
            passages,
            pairs_file,
            concurrency,
            rate,
            ramp,
            window_s,
            warmup_s,
            json,
        } => runtime.block_on(async {
            let transport = match transport {
                TransportArg::Grpc => Transport::Grpc,
                TransportArg::Http => Transport::Http,
            };
            let endpoint = endpoint(transport, &server, &http).await?;
            let shapes: Vec<LoadShape> = match (ramp, rate.is_empty()) {
                (Some(ramp), _) => vec![LoadShape::Ramp(ramp)],
                (None, false) => rate.into_iter().map(LoadShape::Open).collect(),
                (None, true) => concurrency.into_iter().map(LoadShape::Closed).collect(),
            };
            let requests = requests(passages, 42, pairs_file.as_deref())?;
            let prepared = Arc::new(Prepared::new(call.into(), &endpoint, &requests).await?);
            let mut all = Vec::new();
            for shape in shapes {
                let spec = LoadSpec {
                    passages,
                    shape,
                    warmup: Duration::from_secs_f64(warmup_s),
                    window: Duration::from_secs_f64(window_s),
                    stable_windows: 3,
                    tolerance: 0.05,
                    max_windows: 8,
                    seed: 42,
                };
                let label = format!("{call:?} {shape:?}");
                all.push(measure_level(&endpoint, &prepared, &spec, &label).await);
            }
            if let Some(path) = json {
                std::fs::write(path, serde_json::to_vec_pretty(&all)?)?;
            }
            Ok(())
        }),
        Command::Experiment {
            config,
            quick,
            standard,
            sets,
            model,
            out,
        } => runtime.block_on(run_experiment(
            &config,
            profile(quick, standard),
            &sets,
            &model,
            &out,
        )),
        Command::Variant {
            config,
            quick,
            standard,
            sets,
            index,
        } => {
            let experiment = Experiment::load(&config, profile(quick, standard), &sets)?;
            let variants = experiment.variants();
            let Some(v) = variants.get(index) else {
                bail!(
                    "{} has {} variants; no index {index}",
                    experiment.name,
                    variants.len()
                );
            };
            eprintln!("{} variant {index}: {}", experiment.name, v.label);
            print!("{}", toml::to_string(&v.settings)?);
            Ok(())
        }
        Command::Summary { out, slo_p99_ms } => {
            let mut results = Vec::new();
            for entry in std::fs::read_dir(out.join("results"))? {
                let path = entry?.path();
                if path.extension().is_some_and(|e| e == "json") {
                    let r: ExperimentResult = serde_json::from_slice(&std::fs::read(&path)?)
                        .with_context(|| format!("reading {}", path.display()))?;
                    results.push(r);
                }
            }
            if results.is_empty() {
                bail!("no results under {}", out.join("results").display());
            }
            results.sort_by(|a, b| a.name.cmp(&b.name));
            let md = report::summary(&results, slo_p99_ms);
            std::fs::write(out.join("results/SUMMARY.md"), &md)?;
            print!("{md}");
            Ok(())
        }
    }
}

fn parse_setting(s: &str) -> Result<Setting, String> {
    s.parse()
}

fn profile(quick: bool, standard: bool) -> Profile {
    match (quick, standard) {
        (true, _) => Profile::Quick,
        (_, true) => Profile::Standard,
        _ => Profile::Full,
    }
}

async fn run_experiment(
    config: &Path,
    profile: Profile,
    sets: &[Setting],
    model: &str,
    out: &Path,
) -> anyhow::Result<()> {
    let experiment = Experiment::load(config, profile, sets)?;
    // What ran: the file after its `extends` chain, the profile and `--set`.
    let text = toml::to_string(&experiment)?;
    let results_dir = out.join("results");
    let distribution_dir = out.join("distribution");
    std::fs::create_dir_all(&results_dir)?;
    std::fs::create_dir_all(&distribution_dir)?;
    let scratch = tempfile_dir()?;
    let c = &experiment.client;
    let shapes = shapes(c);
    // Read (and check) the pairs once, before any server starts.
    let mut workloads = Vec::new();
    for &passages in &c.batch_sizes {
        workloads.push((
            passages,
            requests(passages, c.seed, c.pairs_file.as_deref())?,
        ));
    }
    let mut variants = Vec::new();
    for variant in experiment.variants() {
        let prefix = format!("{} [{}]", experiment.name, variant.label);
        let settings_path = scratch.join(format!("{}.toml", variants.len()));
        std::fs::write(&settings_path, toml::to_string(&variant.settings)?)?;
        let args = vec!["--config".to_string(), settings_path.display().to_string()];
        let mut result = VariantResult {
            label: variant.label.clone(),
            swept: variant
                .swept
                .iter()
                .map(|(k, v)| (k.clone(), plain(v)))
                .collect(),
            settings: variant
                .settings
                .iter()
                .map(|(k, v)| (k.clone(), plain(v)))
                .collect(),
            measurements: Vec::new(),
            padding_ratio: None,
            error: None,
        };
        measure_variant(&mut result, &prefix, model, &args, c, &workloads, &shapes).await;
        variants.push(result);
    }
    let result = ExperimentResult {
        name: experiment.name.clone(),
        description: experiment.description.clone(),
        config: text,
        profile,
        overrides: sets.iter().map(Setting::to_string).collect(),
        machine: Machine::detect(),
        call: c.call,
        transport: c.transport,
        windows: report::WindowRule::of(c),
        variants,
    };
    write_results(&result, &results_dir, &distribution_dir)?;
    let _ = std::fs::remove_dir_all(&scratch);
    eprintln!(
        "{}: results in {}",
        result.name,
        results_dir
            .join(format!("{}_results.md", result.name))
            .display()
    );
    if result.variants.iter().all(|v| v.error.is_some()) {
        bail!("no variant of {} could be measured", result.name);
    }
    Ok(())
}

/// Starts a server with one variant's settings and measures every load
/// level of the experiment on it, into `result` (its error, if the server
/// does not start or a workload cannot be prepared).
async fn measure_variant(
    result: &mut VariantResult,
    prefix: &str,
    model: &str,
    args: &[String],
    c: &ClientConfig,
    workloads: &[(usize, Vec<Request>)],
    shapes: &[LoadShape],
) {
    let started = async {
        let mut server = Supervisor::start(model, args)?;
        let client = server.connect(Duration::from_secs(300)).await?;
        let endpoint = match c.transport {
            Transport::Grpc => Endpoint::Grpc(client),
            Transport::Http => Endpoint::Http(format!("127.0.0.1:{}", server.http_port)),
        };
        Ok::<_, anyhow::Error>((server, endpoint))
    }
    .await;
    let (server, endpoint) = match started {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{prefix}: could not start: {e:#}");
            result.error = Some(format!("{e:#}"));
            return;
        }
    };
    let padding = |s: &Supervisor| {
        (
            s.metric_sum("inference_padding_ratio_sum"),
            s.metric_sum("inference_padding_ratio_count"),
        )
    };
    let before = padding(&server);
    for (passages, requests) in workloads {
        let prepared = match Prepared::new(c.call, &endpoint, requests).await {
            Ok(p) => Arc::new(p),
            Err(e) => {
                eprintln!("{prefix}: {e}");
                result.error = Some(e.to_string());
                break;
            }
        };
        for &shape in shapes {
            let spec = LoadSpec {
                passages: *passages,
                shape,
                warmup: Duration::from_secs_f64(c.warmup_s),
                window: Duration::from_secs_f64(c.window_s),
                stable_windows: c.stable_windows,
                tolerance: c.tolerance,
                max_windows: c.max_windows,
                seed: c.seed,
            };
            let label = format!("{prefix} {passages} passages {shape:?}");
            let stages_before = stage_sums(&server);
            let mut m = measure_level(&endpoint, &prepared, &spec, &label).await;
            if !server.wait_idle(IDLE_WAIT).await {
                eprintln!("{label}: the server was still busy {IDLE_WAIT:?} after the level");
            }
            m.server_stages_ms = stage_means(&stages_before, &stage_sums(&server));
            result.measurements.push(m);
        }
    }
    let after = padding(&server);
    if after.1 > before.1 {
        result.padding_ratio = Some((after.0 - before.0) / (after.1 - before.1));
    }
}

/// Writes the experiment's Markdown (with plots), JSON and distribution CSV.
fn write_results(
    result: &ExperimentResult,
    results_dir: &Path,
    distribution_dir: &Path,
) -> anyhow::Result<()> {
    let plots = report::plots(result, results_dir).map_err(anyhow::Error::msg)?;
    std::fs::write(
        results_dir.join(format!("{}_results.md", result.name)),
        report::markdown(result, &plots),
    )?;
    std::fs::write(
        results_dir.join(format!("{}.json", result.name)),
        serde_json::to_vec_pretty(result)?,
    )?;
    std::fs::write(
        distribution_dir.join(format!("{}.csv", result.name)),
        report::distribution_csv(result),
    )?;
    Ok(())
}

/// How long a level's leftovers (the batch a worker is still computing
/// for cancelled clients) may take before the next level starts anyway.
const IDLE_WAIT: Duration = Duration::from_secs(180);

/// The server's pipeline stages, as `inference_stage_duration_seconds`
/// labels them.
const STAGES: [&str; 5] = ["tokenize", "queue", "wait", "ring", "forward"];

/// Each stage's (seconds, observations) so far, from `/metrics`.
fn stage_sums(server: &Supervisor) -> Vec<(f64, f64)> {
    STAGES
        .iter()
        .map(|stage| {
            let metric = |part: &str| {
                server.metric_sum(&format!(
                    "inference_stage_duration_seconds_{part}{{stage=\"{stage}\"}}"
                ))
            };
            (metric("sum"), metric("count"))
        })
        .collect()
}

/// Mean milliseconds per observation of each stage between two scrapes
/// (stages not observed in between are left out).
fn stage_means(
    before: &[(f64, f64)],
    after: &[(f64, f64)],
) -> std::collections::BTreeMap<String, f64> {
    STAGES
        .iter()
        .zip(before.iter().zip(after))
        .filter(|(_, (b, a))| a.1 > b.1)
        .map(|(stage, (b, a))| (stage.to_string(), (a.0 - b.0) / (a.1 - b.1) * 1000.0))
        .collect()
}

/// A private scratch directory for the variants' settings files.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("ce-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
