//! `ce-bench`: the load generator and the experiment runner.
//!
//! ```text
//! ce-bench run --server http://127.0.0.1:50051 --passages 32 --concurrency 1,2,4
//! ce-bench experiment conf/experiment/10_multi_model_pool.toml [--quick]
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
use std::time::Duration;

use anyhow::{Context, bail};
use ce_bench::experiment::{Experiment, LoadMode, plain};
use ce_bench::load::{LoadShape, LoadSpec, Measurement, measure};
use ce_bench::report::{self, ExperimentResult, Machine, VariantResult};
use ce_bench::server::Supervisor;
use ce_proto::v1::cross_encoder_client::CrossEncoderClient;
use clap::{Parser, Subcommand};

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
        /// Passages per request.
        #[arg(long, default_value_t = 32)]
        passages: usize,
        /// Closed-loop levels (clients).
        #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
        concurrency: Vec<usize>,
        /// Open-loop rates (requests/s); replaces --concurrency.
        #[arg(long, value_delimiter = ',')]
        rate: Vec<f64>,
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
        /// Apply its `[quick]` overrides.
        #[arg(long)]
        quick: bool,
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
        #[arg(long)]
        quick: bool,
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

/// Progress: a redrawn line on a terminal, plain lines otherwise.
fn progress(prefix: String) -> impl Fn(&str) + Sync {
    let tty = std::io::stderr().is_terminal();
    move |line: &str| {
        if tty {
            eprint!("\r\x1b[2K{prefix}: {line}");
        } else {
            eprintln!("{prefix}: {line}");
        }
    }
}

fn end_progress() {
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
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
            passages,
            concurrency,
            rate,
            window_s,
            warmup_s,
            json,
        } => runtime.block_on(async {
            let client = CrossEncoderClient::connect(server.clone())
                .await
                .with_context(|| format!("connecting to {server}"))?;
            let shapes: Vec<LoadShape> = if rate.is_empty() {
                concurrency.into_iter().map(LoadShape::Closed).collect()
            } else {
                rate.into_iter().map(LoadShape::Open).collect()
            };
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
                let m = measure(client.clone(), &spec, &progress(format!("{shape:?}"))).await;
                end_progress();
                println!(
                    "{shape:?}: {:.1} pairs/s, {:.2} req/s, p50 {:.0} ms, p99 {:.0} ms, errors {:?}{}",
                    m.pairs_per_second,
                    m.requests_per_second,
                    m.p50_ms,
                    m.p99_ms,
                    m.errors,
                    if m.stable { "" } else { " (unstable)" }
                );
                all.push(m);
            }
            if let Some(path) = json {
                std::fs::write(path, serde_json::to_vec_pretty(&all)?)?;
            }
            Ok(())
        }),
        Command::Experiment {
            config,
            quick,
            model,
            out,
        } => runtime.block_on(run_experiment(&config, quick, &model, &out)),
        Command::Variant {
            config,
            quick,
            index,
        } => {
            let experiment = Experiment::load(&config, quick)?;
            let variants = experiment.variants();
            let Some(v) = variants.get(index) else {
                bail!("{} has {} variants; no index {index}", experiment.name, variants.len());
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

async fn run_experiment(config: &Path, quick: bool, model: &str, out: &Path) -> anyhow::Result<()> {
    let experiment = Experiment::load(config, quick)?;
    let text = std::fs::read_to_string(config)?;
    let results_dir = out.join("results");
    let distribution_dir = out.join("distribution");
    std::fs::create_dir_all(&results_dir)?;
    std::fs::create_dir_all(&distribution_dir)?;
    let scratch = tempfile_dir()?;
    let c = &experiment.client;
    let shapes: Vec<LoadShape> = match c.mode {
        LoadMode::Closed => c
            .concurrency
            .iter()
            .map(|&n| LoadShape::Closed(n))
            .collect(),
        LoadMode::Open => c.rates.iter().map(|&r| LoadShape::Open(r)).collect(),
    };
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
            measurements: Vec::new(),
            padding_ratio: None,
            error: None,
        };
        let started = async {
            let mut server = Supervisor::start(model, &args)?;
            let client = server.connect(Duration::from_secs(300)).await?;
            Ok::<_, anyhow::Error>((server, client))
        }
        .await;
        let (server, client) = match started {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{prefix}: could not start: {e:#}");
                result.error = Some(format!("{e:#}"));
                variants.push(result);
                continue;
            }
        };
        let padding = |s: &Supervisor| {
            (
                s.metric_sum("inference_padding_ratio_sum"),
                s.metric_sum("inference_padding_ratio_count"),
            )
        };
        let before = padding(&server);
        for &passages in &c.batch_sizes {
            for &shape in &shapes {
                let spec = LoadSpec {
                    passages,
                    shape,
                    warmup: Duration::from_secs_f64(c.warmup_s),
                    window: Duration::from_secs_f64(c.window_s),
                    stable_windows: c.stable_windows,
                    tolerance: c.tolerance,
                    max_windows: c.max_windows,
                    seed: c.seed,
                };
                let label = format!("{prefix} {passages} passages {shape:?}");
                let m: Measurement = measure(client.clone(), &spec, &progress(label.clone())).await;
                end_progress();
                eprintln!(
                    "{label}: {:.1} pairs/s, p50 {:.0} ms, p99 {:.0} ms{}",
                    m.pairs_per_second,
                    m.p50_ms,
                    m.p99_ms,
                    if m.stable { "" } else { " (unstable)" }
                );
                result.measurements.push(m);
            }
        }
        let after = padding(&server);
        if after.1 > before.1 {
            result.padding_ratio = Some((after.0 - before.0) / (after.1 - before.1));
        }
        drop(server);
        variants.push(result);
    }
    let result = ExperimentResult {
        name: experiment.name.clone(),
        description: experiment.description.clone(),
        config: text,
        quick,
        machine: Machine::detect(),
        variants,
    };
    let plots = report::plots(&result, &results_dir).map_err(anyhow::Error::msg)?;
    std::fs::write(
        results_dir.join(format!("{}_results.md", result.name)),
        report::markdown(&result, &plots),
    )?;
    std::fs::write(
        results_dir.join(format!("{}.json", result.name)),
        serde_json::to_vec_pretty(&result)?,
    )?;
    std::fs::write(
        distribution_dir.join(format!("{}.csv", result.name)),
        report::distribution_csv(&result),
    )?;
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

/// A private scratch directory for the variants' settings files.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("ce-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
