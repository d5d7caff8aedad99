//! Rates for the gauges that need history: pairs scored per second
//! (`inference_throughput_samples_per_second`, over 10 s) and each
//! process's CPU percent (`process_cpu_percent`, over 5 s), sampled once a
//! second.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::core::Core;
use crate::metrics::process_name;

/// Window of the throughput gauge.
const THROUGHPUT_WINDOW: Duration = Duration::from_secs(10);
/// Window of the CPU gauges.
const CPU_WINDOW: Duration = Duration::from_secs(5);
/// Sampling period.
const PERIOD: Duration = Duration::from_secs(1);

/// A cumulative value's samples over a sliding window, and its rate.
#[derive(Debug)]
pub struct RateWindow {
    span: Duration,
    samples: VecDeque<(Instant, f64)>,
}

impl RateWindow {
    /// A window `span` long.
    pub fn new(span: Duration) -> Self {
        Self {
            span,
            samples: VecDeque::new(),
        }
    }

    /// Adds a sample of the cumulative value; returns its rate per second
    /// over the window (`None` until two samples exist).
    pub fn push(&mut self, at: Instant, value: f64) -> Option<f64> {
        self.samples.push_back((at, value));
        // Keep one sample at or before the window's start, so the rate
        // covers the whole window.
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|(t, _)| at.saturating_duration_since(*t) >= self.span)
        {
            self.samples.pop_front();
        }
        let (first, last) = (self.samples.front()?, self.samples.back()?);
        let seconds = last.0.saturating_duration_since(first.0).as_secs_f64();
        (seconds > 0.0).then(|| (last.1 - first.1).max(0.0) / seconds)
    }
}

/// Samples once a second until `stop`.
pub async fn run(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    let mut throughput = RateWindow::new(THROUGHPUT_WINDOW);
    // Keyed by process name and pid: a restarted worker starts afresh.
    let mut cpu: HashMap<(String, u32), RateWindow> = HashMap::new();
    let mut tick = tokio::time::interval(PERIOD);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = Instant::now();
        let m = &core.metrics;
        if let Some(rate) = throughput.push(now, core.pairs_scored() as f64) {
            m.throughput.set(rate);
        }
        let mut processes = vec![(
            ("supervisor".to_string(), std::process::id()),
            ce_common::procstat::own_cpu_time()
                .map(|d| d.as_secs_f64())
                .ok(),
        )];
        for (w, _) in core.process_figures().workers {
            if w.alive {
                processes.push((
                    (process_name(w.role, w.slot), w.pid),
                    Some(w.snapshot.cpu_seconds),
                ));
            }
        }
        let mut percent = BTreeMap::new();
        let mut seen = Vec::new();
        for (key, seconds) in processes {
            let Some(seconds) = seconds else { continue };
            let window = cpu
                .entry(key.clone())
                .or_insert_with(|| RateWindow::new(CPU_WINDOW));
            if let Some(rate) = window.push(now, seconds) {
                percent.insert(key.0.clone(), rate * 100.0);
            }
            seen.push(key);
        }
        cpu.retain(|k, _| seen.contains(k));
        if let Ok(mut p) = m.cpu_percent.lock() {
            *p = percent;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_covers_the_window_and_forgets_older_samples() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = RateWindow::new(s(10));
        assert_eq!(w.push(t0, 0.0), None);
        assert_eq!(w.push(t0 + s(1), 50.0), Some(50.0));
        for i in 2..=20 {
            w.push(t0 + s(i), 50.0 * i as f64);
        }
        // Over the last 10 s (from the sample at 15 s, 750): 250 / 10.
        assert_eq!(w.push(t0 + s(25), 1000.0), Some(25.0));
        assert!(w.samples.len() <= 12);
        // Counters never produce negative rates (a reset reads as 0).
        assert_eq!(w.push(t0 + s(26), 0.0), Some(0.0));
    }
}
