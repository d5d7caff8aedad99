//! The machine's f32 GEMM peak, measured with the same GEMM library candle
//! uses, so throughput can be reported as a fraction of what this machine's
//! matrix units actually deliver today (absolute numbers on a shared machine
//! drift; ratios measured in the same run do not) — and the peaks of the
//! CPU encoder's own int8 and bf16 products ([`reduced_peak`]), the ceilings
//! its i8 and bf16 runs are measured against.

use std::time::{Duration, Instant};

use gemm::Parallelism;

/// One GEMM measurement.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct GemmPeak {
    /// Rows of the left operand.
    pub m: usize,
    /// Columns of the result.
    pub n: usize,
    /// Inner dimension.
    pub k: usize,
    /// Threads used.
    pub threads: usize,
    /// Best GFLOP/s over the repetitions.
    pub gflops: f64,
}

/// Multiplies row-major `[m, k] × [k, n]` f32 matrices repeatedly for about
/// `budget` and returns the best rate.
pub fn measure(m: usize, n: usize, k: usize, threads: usize, budget: Duration) -> GemmPeak {
    let lhs: Vec<f32> = (0..m * k).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
    let rhs: Vec<f32> = (0..k * n).map(|i| ((i % 5) as f32 - 2.0) * 0.01).collect();
    let mut dst = vec![0f32; m * n];
    let parallelism = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    let flops = 2.0 * (m * n * k) as f64;
    let mut best = f64::INFINITY;
    let started = Instant::now();
    let mut runs = 0;
    while runs < 3 || (started.elapsed() < budget && runs < 1000) {
        let t = Instant::now();
        // SAFETY: the three buffers are row-major with the strides given and
        // exactly m*k, k*n and m*n elements long; they do not overlap.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                1,
                n as isize,
                false,
                lhs.as_ptr(),
                1,
                k as isize,
                rhs.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
        best = best.min(t.elapsed().as_secs_f64());
        runs += 1;
    }
    std::hint::black_box(&dst);
    GemmPeak {
        m,
        n,
        k,
        threads,
        gflops: flops / best / 1e9,
    }
}

/// The best of a square GEMM and the model's feed-forward shape
/// (`[4096, 384] × [384, 1536]`).
pub fn machine_peak(threads: usize, budget: Duration) -> GemmPeak {
    let square = measure(1024, 1024, 1024, threads, budget / 2);
    let ffn = measure(4096, 1536, 384, threads, budget / 2);
    if square.gflops >= ffn.gflops {
        square
    } else {
        ffn
    }
}

/// A reduced precision whose product peak [`reduced_peak`] measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reduced {
    /// The CPU encoder's int8 linear (`Int8Linear`).
    I8,
    /// The CPU encoder's bf16 linear (`Bf16Linear`).
    Bf16,
}

impl Reduced {
    /// What its rate counts: integer operations or floating-point ones.
    pub fn unit(self) -> &'static str {
        match self {
            Reduced::I8 => "GOP",
            Reduced::Bf16 => "GFLOP",
        }
    }
}

/// The peak of one of the CPU encoder's reduced-precision products.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ReducedPeak {
    /// Which product.
    pub precision: Reduced,
    /// The kernel this CPU runs it on (`amx`, `vnni`, `avx512`, …).
    pub kernel: &'static str,
    /// Rows each thread multiplies per product.
    pub m: usize,
    /// Outputs.
    pub n: usize,
    /// Inputs.
    pub k: usize,
    /// Threads, each multiplying its own rows (as the encoder's shards do).
    pub threads: usize,
    /// Multiply-adds × 2 per second, in billions: integer operations for
    /// int8, FLOPs for bf16.
    pub gops: f64,
}

impl ReducedPeak {
    /// One line for a report: the rate, its kernel and shape, and how it
    /// compares with the f32 GEMM peak `f32_gflops` of the same run.
    pub fn describe(&self, f32_gflops: f64) -> String {
        format!(
            "{:?} product peak {:.1} {}/s ({}, the encoder's whole product on [{}, {}] x [{}, {}] per thread, {} threads; {:.2}× the f32 GEMM peak)",
            self.precision,
            self.gops,
            self.precision.unit(),
            self.kernel,
            self.m,
            self.k,
            self.k,
            self.n,
            self.threads,
            self.gops / f32_gflops
        )
    }
}

/// The best rate of the CPU encoder's own `precision` product — the whole
/// product as a layer runs it: activations quantized or rounded, the
/// kernel, the f32 result — on the model's feed-forward shape (`[384, 384]
/// × [384, 1536]` per thread, every thread on its own rows), over about
/// `budget`. The same code the engine runs, so it is the ceiling its i8 and
/// bf16 layers can reach on this CPU.
pub fn reduced_peak(precision: Reduced, threads: usize, budget: Duration) -> ReducedPeak {
    use model_worker::encoder::cpu::{bf16, int8};
    let (m, n, k) = (384, 1536, 384);
    let weight: Vec<f32> = (0..n * k).map(|i| ((i % 13) as f32 - 6.0) * 0.01).collect();
    let x: Vec<f32> = (0..m * k).map(|i| ((i % 11) as f32 - 5.0) * 0.1).collect();
    let threads = threads.max(1);
    let best = match precision {
        Reduced::I8 => {
            let (layer, x) = (&int8::Int8Linear::quantize(&weight, n, k), &x);
            best_parallel_seconds(threads, budget, || {
                let (mut scratch, mut dst) = (int8::Scratch::default(), vec![0f32; m * n]);
                move || layer.product(x, m, &mut dst, &mut scratch)
            })
        }
        Reduced::Bf16 => {
            let (layer, x) = (&bf16::Bf16Linear::quantize(&weight, n, k), &x);
            best_parallel_seconds(threads, budget, || {
                let (mut scratch, mut dst) = (bf16::Scratch::default(), vec![0f32; m * n]);
                move || layer.product(x, m, &mut dst, &mut scratch)
            })
        }
    };
    ReducedPeak {
        precision,
        kernel: match precision {
            Reduced::I8 => model_worker::int8_kernel().as_str(),
            Reduced::Bf16 => model_worker::bf16_kernel().as_str(),
        },
        m,
        n,
        k,
        threads,
        gops: 2.0 * (m * n * k * threads) as f64 / best / 1e9,
    }
}

/// Runs a product made by `make` (one per thread, with its own buffers)
/// on `threads` threads at once, round after round for about `budget`, and
/// returns the best time of a product on the slowest thread.
fn best_parallel_seconds<M, P>(threads: usize, budget: Duration, make: M) -> f64
where
    M: Fn() -> P + Sync,
    P: FnMut(),
{
    // The number of rounds is fixed up front from one timed product, so
    // every thread runs as many and none waits at the barrier for a thread
    // that stopped.
    let once = {
        let mut product = make();
        product();
        let t = Instant::now();
        product();
        t.elapsed().as_secs_f64().max(1e-9)
    };
    let rounds = ((budget.as_secs_f64() / once) as usize).clamp(3, 1000);
    let barrier = std::sync::Barrier::new(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (barrier, make) = (&barrier, &make);
                scope.spawn(move || {
                    let mut product = make();
                    let mut best = f64::INFINITY;
                    for _ in 0..rounds {
                        barrier.wait();
                        let t = Instant::now();
                        product();
                        best = best.min(t.elapsed().as_secs_f64());
                    }
                    best
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or(f64::INFINITY))
            .fold(0.0, f64::max)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_positive_rate_and_a_correct_product() {
        let p = measure(64, 32, 16, 1, Duration::from_millis(5));
        assert!(p.gflops > 0.0 && p.gflops.is_finite());
        assert_eq!((p.m, p.n, p.k), (64, 32, 16));
    }

    #[test]
    fn the_reduced_peaks_run_the_encoders_kernels_on_every_thread() {
        for precision in [Reduced::I8, Reduced::Bf16] {
            let p = reduced_peak(precision, 2, Duration::from_millis(20));
            assert!(p.gops > 0.0 && p.gops.is_finite(), "{p:?}");
            assert_eq!((p.threads, p.precision), (2, precision));
            assert!(!p.kernel.is_empty());
        }
    }
}
