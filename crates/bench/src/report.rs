//! Experiment results: the JSON record, the Markdown page, the per-second
//! CSV, the SVG plots, and the cross-experiment summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::client::{Call, Transport};
use crate::experiment::Profile;
use crate::load::{Measurement, WindowStats};

/// Where and when an experiment ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model name.
    pub cpu: String,
    /// The vector extensions the kernels dispatch on (the model name alone
    /// does not tell an AVX2-only EPYC from an AVX-512 one).
    #[serde(default)]
    pub cpu_features: String,
    /// Logical cores.
    pub cores: usize,
    /// Memory in GiB.
    pub memory_gib: f64,
    /// GPUs, or "none".
    pub gpu: String,
    /// `git describe` of the tree.
    pub revision: String,
    /// UTC date and time.
    pub date: String,
}

impl Machine {
    /// Reads this machine's facts.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let flags: Vec<&str> = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("flags"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.split_whitespace().collect())
            .unwrap_or_default();
        let cpu_features = [
            ("avx2", "AVX2"),
            ("fma", "FMA"),
            ("avx512f", "AVX-512"),
            ("avx512_vnni", "VNNI"),
            ("avx512_bf16", "AVX512-BF16"),
            ("amx_tile", "AMX"),
            ("asimd", "NEON"),
        ]
        .iter()
        .filter(|(flag, _)| flags.contains(flag))
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join(", ");
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
            .map(|kb| kb / 1024.0 / 1024.0)
            .unwrap_or(0.0);
        let run = |cmd: &str, args: &[&str]| {
            std::process::Command::new(cmd)
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let gpu = run("nvidia-smi", &["--query-gpu=name", "--format=csv,noheader"])
            .filter(|s| !s.is_empty())
            .map(|s| s.lines().collect::<Vec<_>>().join(", "))
            .unwrap_or_else(|| "none".into());
        Self {
            cpu,
            cpu_features,
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            memory_gib,
            gpu,
            revision: revision(&run),
            date: run("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default(),
        }
    }
}

/// The commit the code is at, `-dirty` when tracked files other than the
/// results differ from it (a run rewrites `experiments/` itself, which
/// must not mark its own pages dirty).
fn revision(run: &dyn Fn(&str, &[&str]) -> Option<String>) -> String {
    let Some(commit) = run("git", &["rev-parse", "--short", "HEAD"]) else {
        return "unknown".into();
    };
    let changed = run(
        "git",
        &[
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":(exclude)experiments",
        ],
    );
    match changed {
        Some(c) if c.is_empty() => commit,
        _ => format!("{commit}-dirty"),
    }
}

/// One server configuration's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantResult {
    /// `key=value,…` of the swept keys.
    pub label: String,
    /// The swept keys' values.
    pub swept: BTreeMap<String, String>,
    /// Every server setting of the variant, as text.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// Every load level measured.
    pub measurements: Vec<Measurement>,
    /// Mean padding ratio of its batches (from `/metrics`).
    pub padding_ratio: Option<f64>,
    /// Why it could not be measured, if it could not.
    pub error: Option<String>,
}

/// Everything one experiment produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentResult {
    /// Its name.
    pub name: String,
    /// Its description.
    pub description: String,
    /// The configuration as run (after `extends`, the profile's
    /// overrides and `--set`), as TOML.
    pub config: String,
    /// Which of the file's override tables applied.
    #[serde(default)]
    pub profile: Profile,
    /// The `--set KEY=VALUE` overrides the run was given.
    #[serde(default)]
    pub overrides: Vec<String>,
    /// Where and when.
    pub machine: Machine,
    /// The API the client called.
    #[serde(default)]
    pub call: Call,
    /// Over what.
    #[serde(default)]
    pub transport: Transport,
    /// How its levels were measured.
    #[serde(default)]
    pub windows: WindowRule,
    /// Per server variant.
    pub variants: Vec<VariantResult>,
}

/// The measurement rule an experiment ran under (its client settings).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WindowRule {
    /// Seconds per window.
    pub window_s: f64,
    /// Consecutive windows that had to agree.
    pub stable_windows: usize,
    /// Within this share of their mean.
    pub tolerance: f64,
    /// Windows at most.
    pub max_windows: usize,
}

impl Default for WindowRule {
    fn default() -> Self {
        let c = crate::experiment::ClientConfig::default();
        Self::of(&c)
    }
}

impl WindowRule {
    /// The rule of these client settings.
    pub fn of(c: &crate::experiment::ClientConfig) -> Self {
        Self {
            window_s: c.window_s,
            stable_windows: c.stable_windows,
            tolerance: c.tolerance,
            max_windows: c.max_windows,
        }
    }
}

impl ExperimentResult {
    /// Every (variant, measurement) pair.
    pub fn points(&self) -> impl Iterator<Item = (&VariantResult, &Measurement)> {
        self.variants
            .iter()
            .flat_map(|v| v.measurements.iter().map(move |m| (v, m)))
    }

    /// True when the client ran the whole pipeline (Rerank or Score), so
    /// its pairs/s compare with other end-to-end experiments.
    pub fn end_to_end(&self) -> bool {
        matches!(self.call, Call::Rerank | Call::Score)
    }

    /// The point with the highest throughput among the trusted ones
    /// ([`trusted`]); when none is, the highest of all (every page says
    /// which it is).
    pub fn best(&self) -> Option<(&VariantResult, &Measurement)> {
        let fastest = |a: &(&VariantResult, &Measurement), b: &(&VariantResult, &Measurement)| {
            a.1.pairs_per_second.total_cmp(&b.1.pairs_per_second)
        };
        self.points()
            .filter(|(_, m)| trusted(m))
            .max_by(fastest)
            .or_else(|| self.points().max_by(fastest))
    }

    /// (stable, all) measurements, ramps counted as stable.
    pub fn stable_count(&self) -> (usize, usize) {
        let all = self.points().count();
        (self.points().filter(|(_, m)| trusted(m)).count(), all)
    }
}

/// Whether a measurement's figures can be compared: its windows agreed. A
/// ramp has no such verdict (it is meant to change); its knee stands for
/// it.
pub fn trusted(m: &Measurement) -> bool {
    m.stable || m.ramp.is_some()
}

/// The smallest relative difference between two measurements that is not
/// noise: twice their combined coefficient of variation, and at least the
/// 5% within which the stability check lets windows differ.
pub fn noise(a: &Measurement, b: &Measurement) -> f64 {
    (2.0 * a.cv.hypot(b.cv)).max(0.05)
}

fn load_label(m: &Measurement) -> String {
    match (m.concurrency, m.rate, m.ramp) {
        (Some(c), _, _) => format!("c={c}"),
        (_, Some(r), _) => format!("{r:.2} req/s"),
        (_, _, Some(r)) => format!("ramp {:.2}→{:.2} req/s", r.from, r.to),
        _ => "-".into(),
    }
}

/// The stability column: whether windows agreed (or what a ramp found)
/// and the coefficient of variation across the windows measured.
pub fn stability(m: &Measurement) -> String {
    let cv = format!("cv {:.1}%", m.cv * 100.0);
    match (m.ramp, m.knee_per_second) {
        (Some(_), Some(k)) => format!("knee {k:.2} req/s, {cv}"),
        (Some(_), None) => format!("kept up, {cv}"),
        _ if m.stable => format!("stable, {cv}"),
        _ => format!("**unstable**, {cv}"),
    }
}

fn call_name(call: Call) -> &'static str {
    match call {
        Call::Rerank => "Rerank",
        Call::Score => "Score",
        Call::Tokenize => "Tokenize (tokenizer stage only)",
        Call::ScoreTokens => "ScoreTokens (model stage only, pre-tokenized)",
    }
}

/// The Markdown page of one experiment.
pub fn markdown(r: &ExperimentResult, plots: &[String]) -> String {
    let mut md = String::new();
    let m = &r.machine;
    let _ = writeln!(md, "# {}\n\n{}\n", r.name, r.description);
    let _ = writeln!(
        md,
        "Machine: {} [{}] ({} cores, {:.1} GiB, GPU: {}). Revision {}, {}{}{}.\n",
        m.cpu,
        m.cpu_features,
        m.cores,
        m.memory_gib,
        m.gpu,
        m.revision,
        m.date,
        match r.profile {
            Profile::Full => String::new(),
            p => format!(", `--{p}`"),
        },
        r.overrides
            .iter()
            .map(|o| format!(", `--set {o}`"))
            .collect::<String>()
    );
    let _ = writeln!(
        md,
        "Client: {} over {}. Pairs/s for a stage-only call count the pairs that stage handled. \
         Batch padding: the batches' padded ÷ real tokens, what an engine padding every pair to \
         its batch's longest would compute (the packed engine computes real tokens).\n",
        call_name(r.call),
        match r.transport {
            Transport::Grpc => "gRPC",
            Transport::Http => "HTTP/1.1",
        }
    );
    let _ = writeln!(
        md,
        "| variant | passages | load | pairs/s | req/s | mean ms | p50 ms | p95 ms | p99 ms | errors | batch padding | stability | server split ms (tok/queue/inf) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for v in &r.variants {
        if let Some(e) = &v.error {
            let _ = writeln!(md, "| {} | | | failed: {e} | | | | | | | | | |", v.label);
        }
        for x in &v.measurements {
            let errors: u64 = x.errors.values().sum();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.1} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} |",
                v.label,
                x.passages,
                load_label(x),
                x.pairs_per_second,
                x.requests_per_second,
                x.mean_ms,
                x.p50_ms,
                x.p95_ms,
                x.p99_ms,
                errors,
                v.padding_ratio.map_or("-".into(), |p| format!("{p:.2}")),
                stability(x),
                if x.server_tokenize_ms + x.server_queue_ms + x.server_inference_ms > 0.0 {
                    format!(
                        "{:.0} / {:.0} / {:.0}",
                        x.server_tokenize_ms, x.server_queue_ms, x.server_inference_ms
                    )
                } else {
                    "-".into()
                },
            );
        }
    }
    let (stable, all) = r.stable_count();
    let _ = writeln!(
        md,
        "\nStability: {stable} of {all} measurements stable ({} consecutive windows within \
         ±{:.0}% of their mean, at most {} windows; cv = standard deviation ÷ mean of pairs/s \
         over the windows reported). A difference smaller than twice the two rows' combined cv \
         (and at least 5%) is noise.",
        r.windows.stable_windows,
        r.windows.tolerance * 100.0,
        r.windows.max_windows,
    );
    if r.points().any(|(_, m)| !m.server_stages_ms.is_empty()) {
        let _ = writeln!(
            md,
            "\nServer stages, mean ms from `/metrics` deltas over each level: tokenize per \
             tokenize job; queue: a pair waiting in the supervisor for its batch; wait: a job \
             sent while its worker was still busy with the one before, until that one's answer; \
             ring: the rest of a job's round trip less the worker's own time (transfer, \
             doorbells, decoding); forward: a batch's forward pass by the worker's clock.\n"
        );
        let _ = writeln!(
            md,
            "| variant | passages | load | tokenize | queue | wait | ring | forward |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
        for (v, m) in r.points() {
            let stage = |s: &str| {
                m.server_stages_ms
                    .get(s)
                    .map_or("-".to_string(), |ms| format!("{ms:.2}"))
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                v.label,
                m.passages,
                load_label(m),
                stage("tokenize"),
                stage("queue"),
                stage("wait"),
                stage("ring"),
                stage("forward")
            );
        }
    }
    if let Some(insight) = insight(r) {
        let _ = writeln!(md, "\n**Insight:** {insight}");
    }
    for p in plots {
        let _ = writeln!(md, "\n![{p}]({p})");
    }
    let _ = writeln!(
        md,
        "\n## Configuration as run\n\nAfter `extends`, the profile's overrides and any `--set`.\n\n```toml\n{}```",
        r.config
    );
    md
}

/// A sentence computed from the data: the best (stable) variant against
/// the first, at the load level where the best was measured, saying when
/// the difference is within the noise ([`noise`]) and when a figure is
/// from an unstable measurement.
pub fn insight(r: &ExperimentResult) -> Option<String> {
    let (best_v, best) = r.best()?;
    let flag = |m: &Measurement| if trusted(m) { "" } else { " (unstable)" };
    let verdict = |a: &Measurement, b: &Measurement| {
        let n = noise(a, b);
        if (a.pairs_per_second / b.pairs_per_second.max(1e-9) - 1.0).abs() <= n {
            format!(" — within noise (±{:.0}%)", n * 100.0)
        } else {
            String::new()
        }
    };
    let baseline_v = r.variants.iter().find(|v| !v.measurements.is_empty())?;
    let base = baseline_v.measurements.iter().find(|m| {
        m.passages == best.passages && m.concurrency == best.concurrency && m.rate == best.rate
    })?;
    if best_v.label == baseline_v.label {
        let worst = r
            .points()
            .filter(|(v, m)| {
                v.label != best_v.label
                    && m.passages == best.passages
                    && m.concurrency == best.concurrency
            })
            .min_by(|a, b| a.1.pairs_per_second.total_cmp(&b.1.pairs_per_second));
        return Some(match worst {
            Some((wv, w)) => format!(
                "{} is best ({:.1} pairs/s{} at {}, {} passages); {} reaches {:.2}× of it{}, p50 {:+.0}%{}",
                best_v.label,
                best.pairs_per_second,
                flag(best),
                load_label(best),
                best.passages,
                wv.label,
                w.pairs_per_second / best.pairs_per_second,
                flag(w),
                (w.p50_ms / best.p50_ms - 1.0) * 100.0,
                verdict(best, w),
            ),
            None => format!(
                "{:.1} pairs/s{} at {}, {} passages, p50 {:.0} ms",
                best.pairs_per_second,
                flag(best),
                load_label(best),
                best.passages,
                best.p50_ms
            ),
        });
    }
    Some(format!(
        "{}: {:.2}× the throughput of {} ({:.1}{} vs {:.1}{} pairs/s at {}, {} passages), p50 {:+.0}%{}",
        best_v.label,
        best.pairs_per_second / base.pairs_per_second.max(1e-9),
        baseline_v.label,
        best.pairs_per_second,
        flag(best),
        base.pairs_per_second,
        flag(base),
        load_label(best),
        best.passages,
        (best.p50_ms / base.p50_ms.max(1e-9) - 1.0) * 100.0,
        verdict(best, base),
    ))
}

/// The per-second series of every load level, as CSV.
pub fn distribution_csv(r: &ExperimentResult) -> String {
    let mut csv =
        String::from("variant,passages,concurrency,rate,second,requests,pairs,errors,p50_ms\n");
    for (v, m) in r.points() {
        for s in &m.timeline {
            let _ = writeln!(
                csv,
                "\"{}\",{},{},{},{},{},{},{},{:.1}",
                v.label,
                m.passages,
                m.concurrency.map_or(String::new(), |c| c.to_string()),
                m.rate.map_or(String::new(), |c| format!("{c:.3}")),
                s.second,
                s.requests,
                s.pairs,
                s.errors,
                s.p50_ms
            );
        }
    }
    csv
}

/// Indices of the points on the Pareto front of (throughput up, p99 down).
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<usize> {
    (0..points.len())
        .filter(|&i| {
            let (t, l) = points[i];
            !points
                .iter()
                .any(|&(t2, l2)| t2 >= t && l2 <= l && (t2 > t || l2 < l))
        })
        .collect()
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

/// Writes the experiment's plots into `dir`; returns their file names.
pub fn plots(r: &ExperimentResult, dir: &Path) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut add = |name: String, draw: &dyn Fn(&Path) -> PlotResult| -> Result<(), String> {
        draw(&dir.join(&name)).map_err(|e| format!("{name}: {e}"))?;
        names.push(name);
        Ok(())
    };
    let series = series(r);
    if r.points().any(|(_, m)| m.concurrency.is_some()) {
        add(format!("{}_throughput.svg", r.name), &|p| {
            line_plot(
                p,
                &format!("{}: throughput (hollow: unstable)", r.name),
                "clients",
                "pairs/s",
                &series,
                |m| m.pairs_per_second,
                None,
            )
        })?;
        add(format!("{}_latency.svg", r.name), &|p| {
            line_plot(
                p,
                &format!("{}: p50 (solid), p99 (dashed); hollow: unstable", r.name),
                "clients",
                "ms",
                &series,
                |m| m.p50_ms,
                Some(|m| m.p99_ms),
            )
        })?;
    }
    if r.points().any(|(_, m)| m.ramp.is_some()) {
        add(format!("{}_ramp.svg", r.name), &|p| {
            ramp_plot(
                p,
                r,
                &format!(
                    "{}: answered vs offered (diagonal: keeping up; vertical: the knee)",
                    r.name
                ),
                "answered requests/s",
                |w| w.requests_per_second,
                true,
            )
        })?;
        add(format!("{}_ramp_latency.svg", r.name), &|p| {
            ramp_plot(
                p,
                r,
                &format!("{}: median latency as the load rises", r.name),
                "p50 ms",
                |w| w.p50_ms,
                false,
            )
        })?;
    }
    add(format!("{}_pareto.svg", r.name), &|p| pareto_plot(p, r))?;
    Ok(names)
}

/// Points grouped by variant and passages, ordered by load.
fn series(r: &ExperimentResult) -> Vec<(String, Vec<&Measurement>)> {
    let mut out: Vec<(String, Vec<&Measurement>)> = Vec::new();
    for v in &r.variants {
        let mut by_passages: BTreeMap<usize, Vec<&Measurement>> = BTreeMap::new();
        for m in &v.measurements {
            by_passages.entry(m.passages).or_default().push(m);
        }
        for (passages, mut ms) in by_passages {
            ms.sort_by_key(|m| m.concurrency.unwrap_or(0));
            out.push((format!("{} ({passages} passages)", v.label), ms));
        }
    }
    out
}

fn line_plot(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<&Measurement>)],
    y: fn(&Measurement) -> f64,
    dashed: Option<fn(&Measurement) -> f64>,
) -> PlotResult {
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let x_max = series
        .iter()
        .flat_map(|(_, ms)| ms.iter().map(|m| m.concurrency.unwrap_or(1)))
        .max()
        .unwrap_or(1) as f64;
    let y_max = series
        .iter()
        .flat_map(|(_, ms)| ms.iter().map(|m| y(m).max(dashed.map_or(0.0, |d| d(m)))))
        .fold(0.0, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0.5..x_max + 0.5, 0.0..y_max.max(1.0))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        // Clients are whole numbers: label only those.
        .x_label_formatter(&|x| {
            if x.fract().abs() < 1e-9 {
                format!("{x:.0}")
            } else {
                String::new()
            }
        })
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, (name, ms)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> = ms
            .iter()
            .map(|m| (m.concurrency.unwrap_or(1) as f64, y(m)))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart.draw_series(points.iter().zip(ms).map(|(&p, m)| {
            let style = if trusted(m) {
                color.filled()
            } else {
                color.stroke_width(2)
            };
            Circle::new(p, 5, style)
        }))?;
        if let Some(d) = dashed {
            let second: Vec<(f64, f64)> = ms
                .iter()
                .map(|m| (m.concurrency.unwrap_or(1) as f64, d(m)))
                .collect();
            chart.draw_series(DashedLineSeries::new(second, 6, 4, color.stroke_width(2)))?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

/// A per-window figure against the offered rate, for every ramp; with
/// `diagonal`, the line of keeping up (answered = offered).
fn ramp_plot(
    path: &Path,
    r: &ExperimentResult,
    title: &str,
    y_label: &str,
    y: fn(&WindowStats) -> f64,
    diagonal: bool,
) -> PlotResult {
    let ramps: Vec<(String, Vec<(f64, f64)>)> = r
        .points()
        .filter(|(_, m)| m.ramp.is_some())
        .map(|(v, m)| {
            (
                format!("{} ({} passages)", v.label, m.passages),
                m.windows
                    .iter()
                    .map(|w| (w.offered_per_second, y(w)))
                    .collect(),
            )
        })
        .collect();
    let x_max = ramps
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(x, _)| x))
        .fold(0.0, f64::max)
        * 1.1;
    let mut y_max = ramps
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(_, y)| y))
        .fold(0.0, f64::max)
        * 1.1;
    if diagonal {
        y_max = y_max.max(x_max);
    }
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max.max(0.1), 0.0..y_max.max(0.1))?;
    chart
        .configure_mesh()
        .x_desc("offered requests/s")
        .y_desc(y_label)
        .label_style(("sans-serif", 14))
        .draw()?;
    if diagonal {
        chart.draw_series(DashedLineSeries::new(
            vec![(0.0, 0.0), (x_max, x_max)],
            6,
            4,
            BLACK.mix(0.5).stroke_width(1),
        ))?;
    }
    // Each ramp's knee as a vertical line.
    for (i, (_, m)) in r.points().filter(|(_, m)| m.ramp.is_some()).enumerate() {
        if let Some(knee) = m.knee_per_second.filter(|k| *k > 0.0) {
            let color = Palette99::pick(i).to_rgba();
            chart.draw_series(DashedLineSeries::new(
                vec![(knee, 0.0), (knee, y_max.max(0.1))],
                3,
                3,
                color.stroke_width(1),
            ))?;
            chart.draw_series(std::iter::once(
                EmptyElement::at((knee, y_max.max(0.1) * 0.95))
                    + Text::new(
                        format!("knee {knee:.2}"),
                        (4, 0),
                        ("sans-serif", 12).into_font(),
                    ),
            ))?;
        }
    }
    for (i, (name, points)) in ramps.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

fn pareto_plot(path: &Path, r: &ExperimentResult) -> PlotResult {
    let points: Vec<(String, f64, f64)> = r
        .points()
        .map(|(v, m)| {
            (
                format!("{} {} {}p", v.label, load_label(m), m.passages),
                m.pairs_per_second,
                m.p99_ms,
            )
        })
        .collect();
    let xy: Vec<(f64, f64)> = points.iter().map(|p| (p.1, p.2)).collect();
    let front = pareto_front(&xy);
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    // Room on the right and at the top for the front's labels.
    let x_max = xy.iter().map(|p| p.0).fold(0.0, f64::max) * 1.45;
    let y_max = xy.iter().map(|p| p.1).fold(0.0, f64::max) * 1.2;
    let stable: Vec<bool> = r.points().map(|(_, m)| trusted(m)).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{}: throughput vs p99 (Pareto front in red; hollow: unstable)",
                r.name
            ),
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max.max(1.0), 0.0..y_max.max(1.0))?;
    chart
        .configure_mesh()
        .x_desc("pairs/s")
        .y_desc("p99 ms")
        .label_style(("sans-serif", 14))
        .draw()?;
    chart.draw_series(xy.iter().zip(&stable).map(|(&p, &stable)| {
        let style = if stable {
            BLUE.mix(0.6).filled()
        } else {
            BLUE.mix(0.8).stroke_width(2)
        };
        Circle::new(p, 5, style)
    }))?;
    let mut on_front: Vec<(f64, f64)> = front.iter().map(|&i| xy[i]).collect();
    on_front.sort_by(|a, b| a.0.total_cmp(&b.0));
    chart.draw_series(LineSeries::new(on_front.clone(), RED.stroke_width(2)))?;
    chart.draw_series(on_front.iter().map(|&p| Circle::new(p, 6, RED.filled())))?;
    // Labels start just right of their point, so the widened x range keeps
    // them inside the plot.
    chart.draw_series(front.iter().map(|&i| {
        EmptyElement::at((xy[i].0, xy[i].1))
            + Text::new(points[i].0.clone(), (8, -6), ("sans-serif", 12).into_font())
    }))?;
    root.present()?;
    Ok(())
}

/// The ranking over every experiment's JSON (stability on every row), the
/// labels the seed gave its rows computed from our data, the seed's two
/// tables beside ours, and the best configuration under a p99 SLO.
pub fn summary(results: &[ExperimentResult], slo_p99_ms: Option<f64>) -> String {
    let mut md = String::from("# Experiment summary\n\n");
    if let Some(first) = results.first() {
        let m = &first.machine;
        let revisions: std::collections::BTreeSet<&str> = results
            .iter()
            .map(|r| r.machine.revision.as_str())
            .collect();
        let profiles: std::collections::BTreeSet<String> =
            results.iter().map(|r| r.profile.to_string()).collect();
        let dates: Vec<&str> = results.iter().map(|r| r.machine.date.as_str()).collect();
        let _ = writeln!(
            md,
            "Machine: {} [{}] ({} cores, {:.1} GiB, GPU: {}). Revision {}; profile {}; run {} to {}.\n",
            m.cpu,
            m.cpu_features,
            m.cores,
            m.memory_gib,
            m.gpu,
            revisions.into_iter().collect::<Vec<_>>().join(", "),
            profiles.into_iter().collect::<Vec<_>>().join(", "),
            dates.iter().min().unwrap_or(&""),
            dates.iter().max().unwrap_or(&""),
        );
    }
    let (stable, all) = results.iter().fold((0, 0), |(s, a), r| {
        let (rs, ra) = r.stable_count();
        (s + rs, a + ra)
    });
    let _ = writeln!(
        md,
        "Stability: {stable} of {all} measurements stable (ramps count as stable: their knee \
         is their verdict). Each row's best is the fastest *stable* measurement; a row whose \
         measurements were all unstable says so. cv: the coefficient of variation of pairs/s \
         across the windows reported; a ratio closer to 1 than twice the rows' combined cv \
         (and 5%) is noise, and the insights say so.\n"
    );
    let (whole, stages): (Vec<&ExperimentResult>, Vec<&ExperimentResult>) =
        results.iter().partition(|r| r.end_to_end());
    let ranked = ranking_table(&mut md, &whole);
    if !stages.is_empty() {
        let _ = writeln!(
            md,
            "\n## Pipeline stages alone\n\nTokenize measures the tokenizer workers only; \
             ScoreTokens the model workers only, on pre-tokenized pairs. Not ranked with the \
             end-to-end experiments above.\n"
        );
        ranking_table(&mut md, &stages);
    }
    let labels = seed_labels(&whole);
    labels_table(&mut md, &labels);
    match crate::seed::seed() {
        Ok(seed) => {
            seed_ranking_table(&mut md, &seed, &whole, &ranked, &labels);
            crate::seed::pipeline_tables(&mut md, &seed, results);
        }
        Err(e) => {
            let _ = writeln!(md, "\nThe seed's figures could not be read: {e}");
        }
    }
    if let Some(slo) = slo_p99_ms {
        let best = results
            .iter()
            .filter(|r| r.end_to_end())
            .flat_map(|r| r.points().map(move |(v, m)| (r, v, m)))
            .filter(|(_, _, m)| m.p99_ms <= slo && m.errors.is_empty() && trusted(m))
            .max_by(|a, b| a.2.pairs_per_second.total_cmp(&b.2.pairs_per_second));
        let _ = match best {
            Some((r, v, m)) => writeln!(
                md,
                "\n**Best under p99 ≤ {slo} ms (stable measurements only):** {} / {} ({} passages, {}): {:.1} pairs/s, p99 {:.0} ms, {}.",
                r.name,
                v.label,
                m.passages,
                load_label(m),
                m.pairs_per_second,
                m.p99_ms,
                stability(m)
            ),
            None => writeln!(md, "\n**No stable configuration meets p99 ≤ {slo} ms.**"),
        };
    }
    md
}

/// Experiments ranked by their best throughput, with stability and their
/// insight; returns the experiments' names in rank order.
fn ranking_table(md: &mut String, results: &[&ExperimentResult]) -> Vec<String> {
    let mut ranked: Vec<(&ExperimentResult, &VariantResult, &Measurement)> = results
        .iter()
        .filter_map(|r| r.best().map(|(v, m)| (*r, v, m)))
        .collect();
    ranked.sort_by(|a, b| b.2.pairs_per_second.total_cmp(&a.2.pairs_per_second));
    let _ = writeln!(
        md,
        "| rank | experiment | best variant | pairs/s | p50 ms | p99 ms | stability | stable levels | key insight |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    for (i, (r, v, m)) in ranked.iter().enumerate() {
        let (stable, all) = r.stable_count();
        let _ = writeln!(
            md,
            "| {} | {} | {} ({} passages, {}) | {:.1} | {:.0} | {:.0} | {} | {stable}/{all} | {} |",
            i + 1,
            r.name,
            v.label,
            m.passages,
            load_label(m),
            m.pairs_per_second,
            m.p50_ms,
            m.p99_ms,
            stability(m),
            insight(r).unwrap_or_default()
        );
    }
    ranked.iter().map(|(r, _, _)| r.name.clone()).collect()
}

/// One of the seed's labels, held by one measurement.
struct Label<'a> {
    label: &'static str,
    rule: &'static str,
    experiment: &'a ExperimentResult,
    variant: &'a VariantResult,
    m: &'a Measurement,
}

/// The seed's labels, computed over every stable closed-loop measurement
/// of the end-to-end experiments:
/// * best throughput: the most pairs/s;
/// * best balance: the highest (pairs/s ÷ the most) × (the lowest p50 per
///   passage ÷ its p50 per passage), so neither figure alone wins;
/// * best stability: the lowest cv;
/// * best single: the most pairs/s with one replica;
/// * best latency: the lowest p50 per passage of the request (requests
///   of different sizes compare per pair).
fn seed_labels<'a>(results: &[&'a ExperimentResult]) -> Vec<Label<'a>> {
    let points: Vec<(&ExperimentResult, &VariantResult, &Measurement)> = results
        .iter()
        .flat_map(|r| r.points().map(move |(v, m)| (*r, v, m)))
        .filter(|(_, _, m)| m.stable && m.ramp.is_none() && m.pairs_per_second > 0.0)
        .collect();
    let most = points
        .iter()
        .map(|p| p.2.pairs_per_second)
        .fold(0.0, f64::max);
    let per_pair = |m: &Measurement| m.p50_ms / m.passages.max(1) as f64;
    let quickest = points
        .iter()
        .map(|p| per_pair(p.2))
        .fold(f64::INFINITY, f64::min);
    let single = |v: &VariantResult| {
        v.settings.get("replicas").is_none_or(|r| r == "1") && !v.settings.contains_key("instances")
    };
    type Key = fn(&Measurement, f64, f64) -> f64;
    let rules: [(&'static str, &'static str, Key, bool); 5] = [
        (
            "Best throughput",
            "most pairs/s",
            |m, _, _| m.pairs_per_second,
            false,
        ),
        (
            "Best balance",
            "highest (pairs/s ÷ most) × (lowest p50/passage ÷ p50/passage)",
            |m, most, quickest| {
                (m.pairs_per_second / most) * (quickest / (m.p50_ms / m.passages.max(1) as f64))
            },
            false,
        ),
        ("Best stability", "lowest cv", |m, _, _| -m.cv, false),
        (
            "Best single",
            "most pairs/s with one replica",
            |m, _, _| m.pairs_per_second,
            true,
        ),
        (
            "Best latency",
            "lowest p50 per passage",
            |m, _, _| -(m.p50_ms / m.passages.max(1) as f64),
            false,
        ),
    ];
    rules
        .iter()
        .filter_map(|&(label, rule, key, one_replica)| {
            points
                .iter()
                .filter(|(_, v, _)| !one_replica || single(v))
                .max_by(|a, b| key(a.2, most, quickest).total_cmp(&key(b.2, most, quickest)))
                .map(|&(experiment, variant, m)| Label {
                    label,
                    rule,
                    experiment,
                    variant,
                    m,
                })
        })
        .collect()
}

fn labels_table(md: &mut String, labels: &[Label]) {
    if labels.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\n## The seed's labels, from our data\n\nOver every stable closed-loop measurement of \
         the end-to-end experiments.\n"
    );
    let _ = writeln!(
        md,
        "| label | rule | experiment | variant | pairs/s | p50 ms | p99 ms | stability |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for l in labels {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} ({} passages, {}) | {:.1} | {:.0} | {:.0} | {} |",
            l.label,
            l.rule,
            l.experiment.name,
            l.variant.label,
            l.m.passages,
            load_label(l.m),
            l.m.pairs_per_second,
            l.m.p50_ms,
            l.m.p99_ms,
            stability(l.m)
        );
    }
}

/// The seed's ranking rows beside our result of the same experiment.
fn seed_ranking_table(
    md: &mut String,
    seed: &crate::seed::Seed,
    results: &[&ExperimentResult],
    ranked: &[String],
    labels: &[Label],
) {
    let _ = writeln!(
        md,
        "\n## The seed's ranking, side by side\n\nSeed: {}. Ours: the experiment's best stable \
         measurement on this machine, its rank among our end-to-end experiments, and the \
         labels (above) it holds.\n",
        seed.source
    );
    let _ = writeln!(
        md,
        "| seed rank | seed experiment | seed pairs/s | seed latency ms | seed label | our rank | our best | pairs/s | p50 ms | stability | our labels | pairs/s ours ÷ seed |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---|---|---|---:|---:|---|---|---:|");
    for row in &seed.ranking {
        let ours = labels_of(labels, &row.experiment);
        let rank = ranked.iter().position(|n| *n == row.experiment);
        let best = results
            .iter()
            .find(|r| r.name == row.experiment)
            .and_then(|r| r.best());
        let cells = match (rank, best) {
            (Some(rank), Some((v, m))) => format!(
                "{} | {} ({} passages, {}) | {:.1} | {:.0} | {} | {} | {:.2}×",
                rank + 1,
                v.label,
                m.passages,
                load_label(m),
                m.pairs_per_second,
                m.p50_ms,
                stability(m),
                if ours.is_empty() {
                    "-".into()
                } else {
                    ours.join(", ")
                },
                m.pairs_per_second / row.pairs_per_second
            ),
            _ => "not run | | | | | | ".into(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {:.1} | {} | {cells} |",
            row.rank, row.name, row.pairs_per_second, row.latency_ms, row.label
        );
    }
}

fn labels_of(labels: &[Label], experiment: &str) -> Vec<&'static str> {
    labels
        .iter()
        .filter(|l| l.experiment.name == experiment)
        .map(|l| l.label)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(
        passages: usize,
        c: usize,
        pairs: f64,
        p50: f64,
        stable: bool,
        cv: f64,
    ) -> Measurement {
        Measurement {
            passages,
            concurrency: Some(c),
            rate: None,
            ramp: None,
            knee_per_second: None,
            stable,
            cv,
            windows: Vec::new(),
            pairs_per_second: pairs,
            requests_per_second: pairs / passages as f64,
            mean_ms: p50,
            p50_ms: p50,
            p90_ms: p50,
            p95_ms: p50,
            p99_ms: p50 * 1.5,
            max_ms: p50 * 2.0,
            requests: 100,
            errors: BTreeMap::new(),
            server_tokenize_ms: 0.0,
            server_queue_ms: 0.0,
            server_inference_ms: 0.0,
            server_stages_ms: BTreeMap::new(),
            timeline: Vec::new(),
        }
    }

    fn experiment(
        name: &str,
        call: Call,
        variants: Vec<(&str, Vec<Measurement>)>,
    ) -> ExperimentResult {
        ExperimentResult {
            name: name.into(),
            description: String::new(),
            config: String::new(),
            profile: Profile::Standard,
            overrides: Vec::new(),
            machine: Machine {
                cpu: "Test CPU".into(),
                cpu_features: "AVX2, FMA".into(),
                cores: 2,
                memory_gib: 1.0,
                gpu: "none".into(),
                revision: "abc1234".into(),
                date: "2026-12-04 03:00 UTC".into(),
            },
            call,
            transport: Transport::Grpc,
            windows: WindowRule::default(),
            variants: variants
                .into_iter()
                .map(|(label, measurements)| VariantResult {
                    label: label.into(),
                    swept: BTreeMap::new(),
                    settings: BTreeMap::new(),
                    measurements,
                    padding_ratio: None,
                    error: None,
                })
                .collect(),
        }
    }

    #[test]
    fn the_best_is_stable_and_small_differences_are_called_noise() {
        let r = experiment(
            "pool",
            Call::Rerank,
            vec![
                ("replicas=1", vec![level(32, 4, 100.0, 300.0, true, 0.01)]),
                ("replicas=2", vec![level(32, 4, 103.0, 290.0, true, 0.01)]),
                ("replicas=3", vec![level(32, 4, 150.0, 200.0, false, 0.2)]),
            ],
        );
        let (v, m) = r.best().unwrap();
        assert_eq!(
            (v.label.as_str(), m.pairs_per_second),
            ("replicas=2", 103.0)
        );
        let sentence = insight(&r).unwrap();
        assert!(sentence.contains("within noise (±5%)"), "{sentence}");
        assert_eq!(r.stable_count(), (2, 3));
        assert_eq!(
            stability(&r.variants[2].measurements[0]),
            "**unstable**, cv 20.0%"
        );

        // Only unstable levels: the fastest, marked as such.
        let shaky = experiment(
            "shaky",
            Call::Rerank,
            vec![
                ("a", vec![level(32, 1, 50.0, 600.0, false, 0.3)]),
                ("b", vec![level(32, 1, 90.0, 300.0, false, 0.3)]),
            ],
        );
        assert_eq!(shaky.best().unwrap().0.label, "b");
        assert!(insight(&shaky).unwrap().contains("(unstable)"));
    }

    #[test]
    fn the_summary_shows_stability_labels_and_the_seed_tables() {
        let results = vec![
            experiment(
                "11_3x_replicas",
                Call::Rerank,
                vec![
                    ("replicas=1", vec![level(32, 3, 160.0, 600.0, true, 0.02)]),
                    ("replicas=3", vec![level(32, 3, 170.0, 560.0, false, 0.09)]),
                ],
            ),
            experiment(
                "tokenizer_only",
                Call::Tokenize,
                vec![
                    (
                        "1 worker, parallelism off",
                        vec![
                            level(128, 4, 7000.0, 70.0, true, 0.01),
                            level(128, 16, 7100.0, 280.0, true, 0.01),
                        ],
                    ),
                    (
                        "1 worker, parallelism on",
                        vec![level(128, 16, 13000.0, 150.0, true, 0.01)],
                    ),
                ],
            ),
        ];
        let md = summary(&results, Some(1000.0));
        assert!(md.contains("Stability: 4 of 5 measurements stable"), "{md}");
        assert!(
            md.contains("| 1 | 11_3x_replicas | replicas=1 (32 passages, c=3) | 160.0 |"),
            "{md}"
        );
        assert!(
            md.contains("| Best throughput | most pairs/s | 11_3x_replicas | replicas=1"),
            "{md}"
        );
        // The seed's ranking row for 11 beside ours: 160 / 1200.8.
        assert!(
            md.contains("| 1 | 11: 3x Replicas | 1200.8 | 211.6 | Best throughput | 1 |"),
            "{md}"
        );
        assert!(md.contains("0.13× |"), "{md}");
        // The pipeline table takes the highest stable concurrency up to 16.
        assert!(
            md.contains("| Tokenizer only | 1 | - | off | c=16 | "),
            "{md}"
        );
        // Parallelism on: 13000 / 7100 = 1.83× against the seed's 1.93×: holds.
        assert!(
            md.contains("| 1.93× | 1.83× (c=16) | 280 → 150 ms | holds |"),
            "{md}"
        );
        assert!(
            md.contains("| Inference only | - | 1 | - | not measured"),
            "{md}"
        );
        assert!(
            md.contains(
                "Best under p99 ≤ 1000 ms (stable measurements only):** 11_3x_replicas / replicas=1"
            ),
            "{md}"
        );
    }

    #[test]
    fn the_pareto_front_keeps_only_undominated_points() {
        let points = [
            (10.0, 100.0),
            (20.0, 300.0),
            (15.0, 400.0),
            (5.0, 50.0),
            (20.0, 250.0),
        ];
        assert_eq!(pareto_front(&points), vec![0, 3, 4]);
    }
}
