//! Experiment results: the JSON record, the Markdown page, the per-second
//! CSV, the SVG plots, and the cross-experiment summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::client::{Call, Transport};
use crate::load::{Measurement, WindowStats};

/// Where and when an experiment ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model name.
    pub cpu: String,
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
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            memory_gib,
            gpu,
            revision: run("git", &["describe", "--always", "--dirty"])
                .unwrap_or_else(|| "unknown".into()),
            date: run("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default(),
        }
    }
}

/// One server configuration's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantResult {
    /// `key=value,…` of the swept keys.
    pub label: String,
    /// The swept keys' values.
    pub swept: BTreeMap<String, String>,
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
    /// The configuration file's text.
    pub config: String,
    /// Whether `--quick` overrides applied.
    pub quick: bool,
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
    /// Per server variant.
    pub variants: Vec<VariantResult>,
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

    /// The point with the highest throughput.
    pub fn best(&self) -> Option<(&VariantResult, &Measurement)> {
        self.points()
            .max_by(|a, b| a.1.pairs_per_second.total_cmp(&b.1.pairs_per_second))
    }
}

fn load_label(m: &Measurement) -> String {
    match (m.concurrency, m.rate, m.ramp) {
        (Some(c), _, _) => format!("c={c}"),
        (_, Some(r), _) => format!("{r:.2} req/s"),
        (_, _, Some(r)) => format!("ramp {:.2}→{:.2} req/s", r.from, r.to),
        _ => "-".into(),
    }
}

/// The stable column: whether windows agreed, or what a ramp found.
fn stability(m: &Measurement) -> String {
    match (m.ramp, m.knee_per_second) {
        (Some(_), Some(k)) => format!("knee {k:.2} req/s"),
        (Some(_), None) => "kept up".into(),
        _ if m.stable => "yes".into(),
        _ => "no".into(),
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
        "Machine: {} ({} cores, {:.1} GiB, GPU: {}). Revision {}, {}{}{}.\n",
        m.cpu,
        m.cores,
        m.memory_gib,
        m.gpu,
        m.revision,
        m.date,
        if r.quick { ", `--quick`" } else { "" },
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
        "| variant | passages | load | pairs/s | req/s | p50 ms | p95 ms | p99 ms | errors | batch padding | stable | server split ms (tok/queue/inf) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for v in &r.variants {
        if let Some(e) = &v.error {
            let _ = writeln!(md, "| {} | | | failed: {e} | | | | | | | | |", v.label);
        }
        for x in &v.measurements {
            let errors: u64 = x.errors.values().sum();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.1} | {:.2} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} |",
                v.label,
                x.passages,
                load_label(x),
                x.pairs_per_second,
                x.requests_per_second,
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
    if r.points().any(|(_, m)| !m.server_stages_ms.is_empty()) {
        let _ = writeln!(
            md,
            "\nServer stages, mean ms from `/metrics` deltas over each level: tokenize per \
             tokenize job, queue wait per pair, ring transfer per job, forward pass per batch.\n"
        );
        let _ = writeln!(
            md,
            "| variant | passages | load | tokenize | queue | ring | forward |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        for (v, m) in r.points() {
            let stage = |s: &str| {
                m.server_stages_ms
                    .get(s)
                    .map_or("-".to_string(), |ms| format!("{ms:.2}"))
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} |",
                v.label,
                m.passages,
                load_label(m),
                stage("tokenize"),
                stage("queue"),
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
    let _ = writeln!(md, "\n## Configuration\n\n```toml\n{}```", r.config);
    md
}

/// A sentence computed from the data: the best variant against the first,
/// at the load level where the best was measured.
pub fn insight(r: &ExperimentResult) -> Option<String> {
    let (best_v, best) = r.best()?;
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
                "{} is best ({:.1} pairs/s at {}, {} passages); {} reaches {:.2}× of it, p50 {:+.0}%",
                best_v.label,
                best.pairs_per_second,
                load_label(best),
                best.passages,
                wv.label,
                w.pairs_per_second / best.pairs_per_second,
                (w.p50_ms / best.p50_ms - 1.0) * 100.0
            ),
            None => format!(
                "{:.1} pairs/s at {}, {} passages, p50 {:.0} ms",
                best.pairs_per_second,
                load_label(best),
                best.passages,
                best.p50_ms
            ),
        });
    }
    Some(format!(
        "{}: {:.2}× the throughput of {} ({:.1} vs {:.1} pairs/s at {}, {} passages), p50 {:+.0}%",
        best_v.label,
        best.pairs_per_second / base.pairs_per_second.max(1e-9),
        baseline_v.label,
        best.pairs_per_second,
        base.pairs_per_second,
        load_label(best),
        best.passages,
        (best.p50_ms / base.p50_ms.max(1e-9) - 1.0) * 100.0
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
                &format!("{}: throughput", r.name),
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
                &format!("{}: p50 (solid) and p99 (dashed)", r.name),
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
                &format!("{}: answered vs offered (dashed: keeping up)", r.name),
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
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
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
    let x_max = xy.iter().map(|p| p.0).fold(0.0, f64::max) * 1.15;
    let y_max = xy.iter().map(|p| p.1).fold(0.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: throughput vs p99 (Pareto front in red)", r.name),
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
    chart.draw_series(
        xy.iter()
            .map(|&p| Circle::new(p, 5, BLUE.mix(0.6).filled())),
    )?;
    let mut on_front: Vec<(f64, f64)> = front.iter().map(|&i| xy[i]).collect();
    on_front.sort_by(|a, b| a.0.total_cmp(&b.0));
    chart.draw_series(LineSeries::new(on_front.clone(), RED.stroke_width(2)))?;
    chart.draw_series(on_front.iter().map(|&p| Circle::new(p, 6, RED.filled())))?;
    chart.draw_series(front.iter().map(|&i| {
        Text::new(
            points[i].0.clone(),
            (xy[i].0, xy[i].1),
            ("sans-serif", 12).into_font(),
        )
    }))?;
    root.present()?;
    Ok(())
}

/// The ranking over every experiment's JSON, and the best configuration
/// under a p99 SLO.
pub fn summary(results: &[ExperimentResult], slo_p99_ms: Option<f64>) -> String {
    let mut md = String::from("# Experiment summary\n\n");
    if let Some(first) = results.first() {
        let m = &first.machine;
        let _ = writeln!(
            md,
            "Machine: {} ({} cores, {:.1} GiB, GPU: {}), revision {}.\n",
            m.cpu, m.cores, m.memory_gib, m.gpu, m.revision
        );
    }
    let (whole, stages): (Vec<&ExperimentResult>, Vec<&ExperimentResult>) =
        results.iter().partition(|r| r.end_to_end());
    ranking_table(&mut md, &whole);
    if !stages.is_empty() {
        let _ = writeln!(
            md,
            "\n## Pipeline stages alone\n\nTokenize measures the tokenizer workers only; \
             ScoreTokens the model workers only, on pre-tokenized pairs. Not ranked with the \
             end-to-end experiments above.\n"
        );
        ranking_table(&mut md, &stages);
    }
    if let Some(slo) = slo_p99_ms {
        let best = results
            .iter()
            .filter(|r| r.end_to_end())
            .flat_map(|r| r.points().map(move |(v, m)| (r, v, m)))
            .filter(|(_, _, m)| m.p99_ms <= slo && m.errors.is_empty())
            .max_by(|a, b| a.2.pairs_per_second.total_cmp(&b.2.pairs_per_second));
        let _ = match best {
            Some((r, v, m)) => writeln!(
                md,
                "\n**Best under p99 ≤ {slo} ms:** {} / {} ({} passages, {}): {:.1} pairs/s, p99 {:.0} ms.",
                r.name,
                v.label,
                m.passages,
                load_label(m),
                m.pairs_per_second,
                m.p99_ms
            ),
            None => writeln!(md, "\n**No configuration meets p99 ≤ {slo} ms.**"),
        };
    }
    md
}

/// Experiments ranked by their best throughput, with their insight.
fn ranking_table(md: &mut String, results: &[&ExperimentResult]) {
    let mut ranked: Vec<(&ExperimentResult, &VariantResult, &Measurement)> = results
        .iter()
        .filter_map(|r| r.best().map(|(v, m)| (*r, v, m)))
        .collect();
    ranked.sort_by(|a, b| b.2.pairs_per_second.total_cmp(&a.2.pairs_per_second));
    let _ = writeln!(
        md,
        "| rank | experiment | best variant | pairs/s | p50 ms | p99 ms | key insight |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for (i, (r, v, m)) in ranked.iter().enumerate() {
        let _ = writeln!(
            md,
            "| {} | {} | {} ({} passages, {}) | {:.1} | {:.0} | {:.0} | {} |",
            i + 1,
            r.name,
            v.label,
            m.passages,
            load_label(m),
            m.pairs_per_second,
            m.p50_ms,
            m.p99_ms,
            insight(r).unwrap_or_default()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
