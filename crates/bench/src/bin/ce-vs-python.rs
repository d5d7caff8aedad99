//! `ce-vs-python`: our engine and our server against the Python stacks —
//! sentence-transformers' `CrossEncoder` (torch), ONNX Runtime (f32, int8)
//! and OpenVINO (f32, bf16, int8) — in one run, on the same generated
//! pairs, with the f32 GEMM roofline and our int8 and bf16 products' peaks
//! measured in the same run.
//!
//! ```text
//! scripts/bench_vs_python.sh        # sets up the Python side, then runs this
//! ```
//!
//! Order: GEMM peak and product peaks; our engine (f32, bf16, i8); our
//! server over gRPC (the same dtypes); the Python script once per
//! `--backends` entry on the pairs file this writes; our f32 engine again
//! (the drift between the two engine runs says how steady the machine was).
//! Every stack's raw logits are compared with our f32 engine's pair by pair
//! (max |Δ|), and its rankings request by request (Kendall's τ and the
//! overlap of the top 10): the fidelity of each precision beside its speed.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use ce_bench::Request;
use ce_bench::gemm_peak;
use ce_bench::server::Supervisor;
use ce_bench::throughput::{StandardRun, engine_rate, served_rate};
use ce_common::TokenBatch;
use clap::Parser;
use model_worker::fidelity::{kendall_tau, max_abs_diff, top_k_overlap};
use model_worker::{Engine, EngineConfig, WeightDType};
use serde::{Deserialize, Serialize};
use tokenizer_worker::Truncation;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Our engine and server vs sentence-transformers on the same pairs"
)]
struct Args {
    #[command(flatten)]
    run: StandardRun,
    /// The Python interpreter that has sentence-transformers (and, for
    /// those backends, onnxruntime, openvino and nncf).
    #[arg(long, default_value = "python3")]
    python: String,
    /// The Python stacks to run, in order (the first is the ratios'
    /// baseline): torch, onnx, onnx-int8, openvino, openvino-bf16,
    /// openvino-int8. `--backends ''` runs none: ours alone, with our f32
    /// engine as the ratios' baseline (no Python environment needed).
    #[arg(long, value_delimiter = ',', default_value = "torch")]
    backends: Vec<String>,
    /// Skip our server's end-to-end runs (the engine alone is measured).
    #[arg(long)]
    no_served: bool,
    /// Skip our i8 runs (where the CPU has none of AMX, AVX-512 VNNI or
    /// AVX2, i8 runs the portable kernel, ~30× slower than f32: nothing to
    /// learn from timing it at a base model's size).
    #[arg(long)]
    no_i8: bool,
    /// Skip our bf16 runs.
    #[arg(long)]
    no_bf16: bool,
    /// The script that runs CrossEncoder on a pairs file.
    #[arg(long, default_value = "scripts/bench_python.py")]
    python_script: PathBuf,
    /// CrossEncoder.predict's batch size (the library's default is 32).
    #[arg(long, default_value_t = 32)]
    python_batch_size: usize,
    /// Where to keep the pairs file and the Python result.
    #[arg(long, default_value = "target/bench-vs-python")]
    work_dir: PathBuf,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Serialize)]
struct PythonResult {
    library: String,
    backend: String,
    threads: usize,
    batch_size: usize,
    pairs: usize,
    pairs_per_second: f64,
    #[serde(skip_serializing)]
    scores: Vec<f32>,
}

#[derive(Debug, Serialize)]
struct Row {
    name: String,
    pairs_per_second: f64,
    vs_python: f64,
    percent_of_roofline: f64,
    /// Largest |logit − our f32 engine's| over the pairs (None: not compared).
    max_abs_difference: Option<f32>,
    /// Mean over requests of Kendall's τ of its ranking against ours in f32.
    kendall_tau: Option<f64>,
    /// Mean over requests of the share of our f32 top 10 it also ranks in
    /// its top 10.
    top10_overlap: Option<f64>,
}

/// How close a stack's scores are to our f32 engine's.
struct Fidelity {
    max_abs_difference: f32,
    kendall_tau: f64,
    top10_overlap: f64,
}

/// How close `scores` are to our f32 engine's `reference`, request by
/// request: the largest |Δ|, and the means of the rankings' Kendall τ and
/// of their top-10 overlap.
fn fidelity(scores: &[f32], reference: &[f32], batches: &[TokenBatch]) -> Fidelity {
    let mut start = 0;
    let (mut taus, mut overlaps) = (Vec::new(), Vec::new());
    for b in batches {
        let range = start..start + b.len();
        let (got, want) = (&scores[range.clone()], &reference[range]);
        taus.extend(kendall_tau(got, want));
        overlaps.extend(top_k_overlap(got, want, 10));
        start += b.len();
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    Fidelity {
        max_abs_difference: max_abs_diff(scores, reference),
        kendall_tau: mean(&taus),
        top10_overlap: mean(&overlaps),
    }
}

#[derive(Debug, Serialize)]
struct Report {
    cores: usize,
    pairs: usize,
    mean_tokens_per_pair: f64,
    gflop_per_pair: f64,
    gemm_peak: gemm_peak::GemmPeak,
    roofline_pairs_per_second: f64,
    /// Our int8 and bf16 products' peaks, for the reduced dtypes measured.
    reduced_peaks: Vec<gemm_peak::ReducedPeak>,
    python: Vec<PythonResult>,
    engine_f32_drift_percent: f64,
    rows: Vec<Row>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // SAFETY: first statement after argument parsing; no thread exists yet.
    let cores = unsafe { model_worker::threads::use_every_core() }?;

    let load = |dtype| {
        let mut config = EngineConfig::new(&args.run.model);
        config.dtype = dtype;
        Engine::load(&config).with_context(|| format!("loading the model in {dtype}"))
    };
    let f32_engine = load(WeightDType::F32)?;
    let reduced_dtypes = reduced_precisions(&args);
    let reduced_engines = reduced_dtypes
        .iter()
        .map(|&d| load(d))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let requests: Vec<Request> = args.run.requests();
    let batches: Vec<TokenBatch> = requests
        .iter()
        .map(|r| {
            f32_engine
                .tokenizer()
                .encode_query(&r.query, &r.passages, Truncation::Right)
        })
        .collect::<Result<_, _>>()?;
    let pairs: usize = batches.iter().map(TokenBatch::len).sum();
    let tokens: usize = batches.iter().map(TokenBatch::total_tokens).sum();
    let config = f32_engine.config();
    let flop: f64 = batches
        .iter()
        .flat_map(|b| (0..b.len()).map(|i| config.flops_per_sequence(b.seq_len(i))))
        .sum();
    let gflop_per_pair = flop / pairs as f64 / 1e9;

    let pairs_file = write_pairs_file(&args.work_dir, &requests)?;

    eprintln!("GEMM peak, {cores} thread(s)…");
    let peak = gemm_peak::machine_peak(cores, Duration::from_secs(4));
    let roofline = peak.gflops / gflop_per_pair;
    let reduced_peaks: Vec<gemm_peak::ReducedPeak> = reduced_dtypes
        .iter()
        .map(|dtype| match dtype {
            WeightDType::I8 => gemm_peak::Reduced::I8,
            _ => gemm_peak::Reduced::Bf16,
        })
        .map(|precision| {
            eprintln!("{precision:?} product peak…");
            gemm_peak::reduced_peak(precision, cores, Duration::from_secs(2))
        })
        .collect();

    eprintln!("our engine, f32 and {reduced_dtypes:?} ({pairs} pairs)…");
    let engine_f32_before = engine_rate(&f32_engine, &batches)?;
    let reduced_rates = reduced_engines
        .iter()
        .map(|e| engine_rate(e, &batches))
        .collect::<Result<Vec<_>, _>>()?;
    let logits_of = |engine: &Engine| -> anyhow::Result<Vec<f32>> {
        Ok(batches
            .iter()
            .map(|b| engine.score(b).map(|s| s.first_logits()))
            .collect::<Result<Vec<_>, _>>()?
            .concat())
    };
    let ours = logits_of(&f32_engine)?;
    let reduced_logits = reduced_engines
        .iter()
        .map(logits_of)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let reduced_kernels: Vec<String> = reduced_engines.iter().map(Engine::kernel).collect();
    drop(reduced_engines);

    let served = match args.no_served {
        true => Vec::new(),
        false => served_rates(&args, requests)?,
    };

    let mut python = Vec::new();
    for backend in args.backends.iter().filter(|b| !b.is_empty()) {
        let result = run_python(&args, backend, &pairs_file, cores)?;
        if result.scores.len() != ours.len() {
            bail!(
                "{backend} scored {} pairs, ours {}",
                result.scores.len(),
                ours.len()
            );
        }
        python.push(result);
    }

    eprintln!("our engine again…");
    let engine_f32_after = engine_rate(&f32_engine, &batches)?;
    let engine_f32 = (engine_f32_before + engine_f32_after) / 2.0;

    let baseline = python.first().map_or(engine_f32, |p| p.pairs_per_second);
    let row = |name: String, rate: f64, scores: Option<&[f32]>| {
        let fidelity = scores.map(|s| fidelity(s, &ours, &batches));
        Row {
            name,
            pairs_per_second: rate,
            vs_python: rate / baseline,
            percent_of_roofline: rate / roofline * 100.0,
            max_abs_difference: fidelity.as_ref().map(|f| f.max_abs_difference),
            kendall_tau: fidelity.as_ref().map(|f| f.kendall_tau),
            top10_overlap: fidelity.as_ref().map(|f| f.top10_overlap),
        }
    };
    let mut rows: Vec<Row> = python
        .iter()
        .map(|p| {
            row(
                format!(
                    "{} ({}, batch {}, {} threads)",
                    p.backend, p.library, p.batch_size, p.threads
                ),
                p.pairs_per_second,
                Some(&p.scores),
            )
        })
        .collect();
    rows.push(row(
        format!("ce engine f32 ({cores} threads)"),
        engine_f32,
        Some(&ours),
    ));
    for (((dtype, rate), scores), kernel) in reduced_dtypes
        .iter()
        .zip(reduced_rates)
        .zip(&reduced_logits)
        .zip(&reduced_kernels)
    {
        rows.push(row(
            format!("ce engine {dtype} ({cores} threads, {kernel})"),
            rate,
            Some(scores),
        ));
    }
    for (dtype, rate) in &served {
        rows.push(row(
            format!("ce-supervisor {dtype}, gRPC end to end"),
            *rate,
            None,
        ));
    }

    let report = Report {
        cores,
        pairs,
        mean_tokens_per_pair: tokens as f64 / pairs as f64,
        gflop_per_pair,
        gemm_peak: peak,
        roofline_pairs_per_second: roofline,
        reduced_peaks,
        python,
        engine_f32_drift_percent: (engine_f32_after / engine_f32_before - 1.0) * 100.0,
        rows,
    };
    print_report(&report, args.run.passages);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}

/// Every pair as a JSON line, for the Python side to read.
fn write_pairs_file(dir: &std::path::Path, requests: &[Request]) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let pairs_file = dir.join("pairs.jsonl");
    let mut lines = String::new();
    for r in requests {
        for p in &r.passages {
            lines.push_str(&serde_json::to_string(
                &serde_json::json!({ "query": r.query, "passage": p }),
            )?);
            lines.push('\n');
        }
    }
    std::fs::write(&pairs_file, lines)?;
    Ok(pairs_file)
}

/// Our reduced precisions the run measures beside f32.
fn reduced_precisions(args: &Args) -> Vec<WeightDType> {
    [
        (WeightDType::Bf16, args.no_bf16),
        (WeightDType::I8, args.no_i8),
    ]
    .into_iter()
    .filter(|(_, skipped)| !skipped)
    .map(|(d, _)| d)
    .collect()
}

/// Our server end to end over gRPC, in f32 and each reduced precision.
fn served_rates(args: &Args, requests: Vec<Request>) -> anyhow::Result<Vec<(String, f64)>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let requests = Arc::new(requests);
    let mut served = Vec::new();
    let dtypes: Vec<String> = std::iter::once(WeightDType::F32)
        .chain(reduced_precisions(args))
        .map(|d| d.to_string())
        .collect();
    for dtype in dtypes {
        eprintln!("our server over gRPC, {dtype}…");
        let server_args: Vec<String> = [
            "--dtype",
            &dtype,
            "--max-batch-size",
            &args.run.passages.to_string(),
            "--max-batch-tokens",
            "65536",
        ]
        .map(String::from)
        .into();
        let mut server = Supervisor::start(&args.run.model, &server_args)?;
        let rate = runtime.block_on(served_rate(
            &mut server,
            requests.clone(),
            args.run.concurrency,
        ))?;
        served.push((dtype, rate));
    }
    Ok(served)
}

/// sentence-transformers' `CrossEncoder` on the same pairs, with as many
/// threads as we use.
fn run_python(
    args: &Args,
    backend: &str,
    pairs_file: &std::path::Path,
    cores: usize,
) -> anyhow::Result<PythonResult> {
    eprintln!("Python: {backend}…");
    let python_out = args.work_dir.join(format!("python-{backend}.json"));
    let status = Command::new(&args.python)
        .arg(&args.python_script)
        .arg("--backend")
        .arg(backend)
        .arg("--cache-dir")
        .arg(args.work_dir.join("exports"))
        .arg("--model")
        .arg(&args.run.model)
        .arg("--pairs")
        .arg(pairs_file)
        .arg("--out")
        .arg(&python_out)
        .arg("--threads")
        .arg(cores.to_string())
        .arg("--batch-size")
        .arg(args.python_batch_size.to_string())
        .env("HF_HUB_OFFLINE", "1")
        .env("TOKENIZERS_PARALLELISM", "false")
        .status()
        .with_context(|| format!("running {}", args.python))?;
    if !status.success() {
        bail!(
            "{} {} failed: {status}",
            args.python,
            args.python_script.display()
        );
    }
    serde_json::from_slice(&std::fs::read(&python_out)?)
        .with_context(|| format!("reading {}", python_out.display()))
}

/// The Markdown table on stdout.
fn print_report(report: &Report, passages: usize) {
    let (pairs, cores, peak) = (report.pairs, report.cores, &report.gemm_peak);
    println!(
        "## ce-supervisor vs the Python stacks ({pairs} pairs in requests of {passages} passages, {:.1} tokens/pair, {cores} cores)\n",
        report.mean_tokens_per_pair
    );
    println!(
        "f32 roofline: GEMM peak {:.1} GFLOP/s ({}x{}x{}, {} threads) / {:.2} GFLOP per pair (the whole model's; our CPU encoder skips the last layer's non-[CLS] rows, ~1/7 of them) = {:.1} pairs/s\n",
        peak.gflops,
        peak.m,
        peak.n,
        peak.k,
        peak.threads,
        report.gflop_per_pair,
        report.roofline_pairs_per_second
    );
    for p in &report.reduced_peaks {
        println!(
            "{:?} roofline: {} / {:.2} {} per pair = {:.1} pairs/s (norms, softmax and activations stay f32, so it is a ceiling, not a target)\n",
            p.precision,
            p.describe(peak.gflops),
            report.gflop_per_pair,
            p.precision.unit(),
            p.gops / report.gflop_per_pair
        );
    }
    let baseline = report
        .python
        .first()
        .map_or("ce engine f32", |p| p.backend.as_str());
    println!(
        "| | pairs/s | × {baseline} | % of f32 roofline | max \\|Δ\\| vs ce f32 | Kendall τ vs ce f32 | top-10 overlap vs ce f32 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &report.rows {
        let delta = r
            .max_abs_difference
            .map_or("—".into(), |d| format!("{d:.2e}"));
        let tau = r.kendall_tau.map_or("—".into(), |t| format!("{t:.3}"));
        let top10 = r.top10_overlap.map_or("—".into(), |t| format!("{t:.3}"));
        println!(
            "| {} | {:.1} | {:.2}× | {:.0}% | {delta} | {tau} | {top10} |",
            r.name, r.pairs_per_second, r.vs_python, r.percent_of_roofline
        );
    }
    println!(
        "\nSame pairs for every stack; fidelity against our f32 engine's raw logits (τ: mean over requests of the rankings' Kendall τ; top-10 overlap: mean share of our f32 top 10 that the stack also ranks in its top 10). Our f32 engine drifted {:+.1}% between its two runs.",
        report.engine_f32_drift_percent
    );
}
