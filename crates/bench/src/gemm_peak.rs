//! The machine's f32 GEMM peak, measured with the same GEMM library candle
//! uses, so throughput can be reported as a fraction of what this machine's
//! matrix units actually deliver today (absolute numbers on a shared machine
//! drift; ratios measured in the same run do not).

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_positive_rate_and_a_correct_product() {
        let p = measure(64, 32, 16, 1, Duration::from_millis(5));
        assert!(p.gflops > 0.0 && p.gflops.is_finite());
        assert_eq!((p.m, p.n, p.k), (64, 32, 16));
    }
}
