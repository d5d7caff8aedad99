//! Self-attention with its two products in bf16, for the bf16 and int8
//! encoders on CPUs with AVX512-BF16 (`vdpbf16ps`: 32 products into 16 f32 lanes per
//! instruction, twice an f32 FMA's 16).
//!
//! ```text
//! Q, K ─ round ─▶ bf16 ─▶ scores = Q Kᵀ (f32 sums) ─▶ softmax in f32 ─▶ P
//! P, V ─ round ─▶ bf16 ─▶ context = P V (f32 sums)
//! ```
//!
//! The same shape as [`kernels::attention`] (one sequence at a time, no
//! pads, register tiles of 6 rows × 32 columns) with bf16 operands in
//! pairs, the layout `vdpbf16ps` multiplies: Kᵀ as `[dim / 2][keys]` pairs
//! of consecutive dimensions, V as `[keys / 2][dim]` pairs of consecutive
//! keys. Attention was the one stage of those encoders left in f32 (13%
//! of bf16's time and 20% of int8's on a 2-core Zen 5); the linear
//! products already round (or quantize) these very activations, so the
//! error it adds is of the same kind and smaller. `ce-engine-bench
//! --fidelity` measured it on the standard workload: bf16 Kendall τ
//! 0.9937 either way, golden max |Δ| 5.2e-4 → 6.1e-4; int8 τ 0.926 →
//! 0.925, max |Δ| vs f32 7.0e-3 → 6.8e-3.
//!
//! Heads whose width is not a multiple of 32, CPUs without AVX512-BF16
//! and CPUs that issue `vdpbf16ps` slower than an FMA ([`cpu_runs_it`])
//! run [`kernels::attention`].

use super::kernels::{self, AttentionScratch, Heads};

/// Whether this CPU runs attention's products in bf16 (for heads whose
/// width allows, [`available`]): it has AVX-512F/BW and AVX512-BF16, and
/// issues `vdpbf16ps` at about the rate of an f32 FMA — measured once per
/// process, because Intel's AMX CPUs issue it at half that rate (twice the
/// instructions of bf16 work for the same time as f32's FMAs, plus the
/// rounding), so there bf16 attention would be slower than f32, while AMD
/// Zen 4/5 issue both at one rate. `CE_BF16_ATTENTION=f32` turns it off,
/// `=bf16` on wherever the instructions exist.
pub fn cpu_runs_it() -> bool {
    static RUNS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *RUNS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let wanted = std::env::var("CE_BF16_ATTENTION").unwrap_or_default();
            let features = std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512bf16");
            match wanted.as_str() {
                "f32" => false,
                "bf16" => features,
                // SAFETY: the CPU has the features `wide::dot_rate` needs.
                _ => features && unsafe { wide::dot_rate() } >= MIN_DOT_RATE,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// `vdpbf16ps` per f32 FMA issued, below which bf16 attention loses: 1.0
/// measured on a Zen 5; Intel's documented rate is 0.5.
#[cfg(target_arch = "x86_64")]
const MIN_DOT_RATE: f64 = 0.75;

/// Whether bf16 attention runs for heads `dim` wide on this CPU.
pub fn available(dim: usize) -> bool {
    cpu_runs_it() && dim > 0 && dim.is_multiple_of(32)
}

/// Buffers of [`attention`]: bf16 pairs as `u32`, low half first.
#[derive(Debug, Default)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub struct Scratch {
    /// `[queries][dim / 2]`.
    queries: Vec<u32>,
    /// `[dim / 2][padded keys]`, the pad keys zero.
    keys_t: Vec<u32>,
    /// `[queries][padded keys / 2]`.
    probs: Vec<u32>,
    /// `[keys / 2, rounded up][dim]`, a missing last key zero.
    values: Vec<u32>,
}

/// [`kernels::attention`]'s contract (same arguments, same outputs up to
/// bf16 rounding), its products in bf16 where [`available`]`(heads.dim)`.
pub fn attention(qkv: &[f32], heads: Heads, context: &mut [f32], scratch: &mut AttentionScratch) {
    #[cfg(target_arch = "x86_64")]
    if available(heads.dim) && heads.len > 0 {
        let hidden = heads.count * heads.dim;
        assert!(heads.queries <= heads.len, "more queries than tokens");
        assert!(qkv.len() >= heads.len * 3 * hidden && context.len() >= heads.len * hidden);
        // SAFETY: `available` saw AVX-512F/BW and AVX512-BF16; the shapes
        // were checked just above.
        return unsafe { wide::attention(qkv, heads, context, scratch) };
    }
    kernels::attention(qkv, heads, context, scratch)
}

#[cfg(target_arch = "x86_64")]
mod wide {
    use std::arch::x86_64::*;

    use super::super::kernels::{AttentionScratch, Heads, softmax_scores};

    /// Rows per register tile: 6 rows × 2 registers = 12 accumulators.
    const ROWS: usize = 6;

    /// `vdpbf16ps` issued per f32 FMA in the same time: twelve independent
    /// chains of each (enough to fill every pipe), the best of five short
    /// runs (~0.1 ms each) so that a preempted run does not decide.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn dot_rate() -> f64 {
        const STEPS: usize = 4096;
        fn best(run: impl Fn() -> f32) -> f64 {
            (0..5)
                .map(|_| {
                    let start = std::time::Instant::now();
                    std::hint::black_box(run());
                    start.elapsed().as_secs_f64()
                })
                .fold(f64::INFINITY, f64::min)
        }
        let fma = best(|| {
            // Opaque operands: nothing to fold at compile time.
            let (a, b) = std::hint::black_box((_mm512_set1_ps(0.999), _mm512_set1_ps(1e-3)));
            let mut acc = [_mm512_set1_ps(1.0); 12];
            for _ in 0..STEPS {
                for c in acc.iter_mut() {
                    *c = _mm512_fmadd_ps(*c, a, b);
                }
            }
            acc.iter().map(|&c| _mm512_reduce_add_ps(c)).sum()
        });
        let dot = best(|| {
            // SAFETY: a register of bf16 pairs is a register of bits.
            let a: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi32(0x3f80_3f80)) };
            let a = std::hint::black_box(a);
            let mut acc = [_mm512_setzero_ps(); 12];
            for _ in 0..STEPS {
                for c in acc.iter_mut() {
                    *c = _mm512_dpbf16_ps(*c, a, a);
                }
            }
            acc.iter().map(|&c| _mm512_reduce_add_ps(c)).sum()
        });
        fma / dot
    }

    fn grow<T: Copy + Default>(buf: &mut Vec<T>, len: usize) -> &mut [T] {
        if buf.len() < len {
            buf.resize(len, T::default());
        }
        &mut buf[..len]
    }

    /// 32 floats rounded to bf16 (nearest, ties to even), in order.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX512-BF16.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn round32(x: &[f32]) -> __m512i {
        assert!(x.len() >= 32);
        // SAFETY: two loads of 16 inside `x`.
        unsafe {
            let (lo, hi) = (
                _mm512_loadu_ps(x.as_ptr()),
                _mm512_loadu_ps(x.as_ptr().add(16)),
            );
            // The second operand fills the low half.
            std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo))
        }
    }

    /// # Safety
    /// The CPU must have AVX-512F/BW and AVX512-BF16; `qkv` and `context`
    /// hold `heads.len` rows, `heads.queries <= heads.len`, `heads.dim` is
    /// a positive multiple of 32.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn attention(
        qkv: &[f32],
        heads: Heads,
        context: &mut [f32],
        scratch: &mut AttentionScratch,
    ) {
        let Heads {
            count,
            dim,
            len,
            queries,
            window,
        } = heads;
        let (hidden, half) = (count * dim, dim / 2);
        let stride = 3 * hidden;
        let padded = len.div_ceil(32) * 32;
        let key_pairs = len.div_ceil(2);
        let (scores, s) = scratch.bf16_parts();
        let scores = grow(scores, queries * padded);
        let q_pairs = grow(&mut s.queries, queries * half);
        let keys_t = grow(&mut s.keys_t, half * padded);
        let probs = grow(&mut s.probs, queries * padded / 2);
        let values = grow(&mut s.values, key_pairs * dim);
        // Interleaves two rows' 32 bf16: lanes 2i, 2i + 1 = a[i], b[i].
        let (lo_index, hi_index) = {
            let index = |base: i16| -> __m512i {
                let mut idx = [0i16; 32];
                for (i, pair) in idx.chunks_exact_mut(2).enumerate() {
                    pair[0] = base + i as i16;
                    pair[1] = base + 32 + i as i16;
                }
                // SAFETY: 32 i16 are one 64-byte load.
                unsafe { _mm512_loadu_si512(idx.as_ptr().cast()) }
            };
            (index(0), index(16))
        };
        let row = |t: usize| t * stride;
        for head in 0..count {
            let (q, k, v) = (head * dim, hidden + head * dim, 2 * hidden + head * dim);
            // SAFETY (every `round32` and store below): the CPU has the
            // features; each 32-float read lies inside a row's head
            // columns (dim is a multiple of 32), each store inside the
            // buffers grown above.
            unsafe {
                for r in 0..queries {
                    for c in (0..dim).step_by(32) {
                        let pairs = round32(&qkv[row(r) + q + c..]);
                        _mm512_storeu_si512(
                            q_pairs[r * half + c / 2..][..16].as_mut_ptr().cast(),
                            pairs,
                        );
                    }
                }
                for j in 0..len {
                    for c in (0..dim).step_by(32) {
                        let mut pairs = [0u32; 16];
                        _mm512_storeu_si512(
                            pairs.as_mut_ptr().cast(),
                            round32(&qkv[row(j) + k + c..]),
                        );
                        for (p, &pair) in pairs.iter().enumerate() {
                            keys_t[(c / 2 + p) * padded + j] = pair;
                        }
                    }
                }
            }
            for p in 0..half {
                keys_t[p * padded + len..(p + 1) * padded].fill(0);
            }
            // scores [queries, padded] = Q · Kᵀ, over dim / 2 pairs.
            product(
                q_pairs, half, keys_t, padded, half, queries, padded, scores, padded,
            );
            softmax_scores::<true, true>(scores, padded, len, window);
            // SAFETY: as above; score rows are `padded` (a multiple of 32)
            // long, the pad columns zero after the softmax.
            unsafe {
                for r in 0..queries {
                    for c in (0..padded).step_by(32) {
                        let pairs = round32(&scores[r * padded + c..]);
                        let at = r * padded / 2 + c / 2;
                        _mm512_storeu_si512(probs[at..at + 16].as_mut_ptr().cast(), pairs);
                    }
                }
                let zero = [0f32; 32];
                for kp in 0..key_pairs {
                    for c in (0..dim).step_by(32) {
                        let a = round32(&qkv[row(2 * kp) + v + c..]);
                        let b = match 2 * kp + 1 < len {
                            true => round32(&qkv[row(2 * kp + 1) + v + c..]),
                            false => round32(&zero),
                        };
                        let out = values[kp * dim + c..][..32].as_mut_ptr();
                        _mm512_storeu_si512(out.cast(), _mm512_permutex2var_epi16(a, lo_index, b));
                        _mm512_storeu_si512(
                            out.add(16).cast(),
                            _mm512_permutex2var_epi16(a, hi_index, b),
                        );
                    }
                }
            }
            // context [queries, dim] = P · V, over the key pairs.
            product(
                probs,
                padded / 2,
                values,
                dim,
                key_pairs,
                queries,
                dim,
                &mut context[head * dim..],
                hidden,
            );
        }
    }

    /// `c[rows, cols] = a[rows, depth] · b[depth, cols]` over bf16 pairs
    /// (`cols` a multiple of 32), each operand row-major with its stride.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    fn product(
        a: &[u32],
        a_row: usize,
        b: &[u32],
        b_row: usize,
        depth: usize,
        rows: usize,
        cols: usize,
        c: &mut [f32],
        c_row: usize,
    ) {
        let mut r = 0;
        while r < rows {
            let n = (rows - r).min(ROWS);
            for col in (0..cols).step_by(32) {
                let (a, c) = (&a[r * a_row..], &mut c[r * c_row..]);
                // SAFETY: the CPU has the features this function is
                // compiled for; `tile` checks its slices.
                unsafe {
                    match n {
                        6 => tile::<6>(a, a_row, b, b_row, depth, c, c_row, col),
                        5 => tile::<5>(a, a_row, b, b_row, depth, c, c_row, col),
                        4 => tile::<4>(a, a_row, b, b_row, depth, c, c_row, col),
                        3 => tile::<3>(a, a_row, b, b_row, depth, c, c_row, col),
                        2 => tile::<2>(a, a_row, b, b_row, depth, c, c_row, col),
                        _ => tile::<1>(a, a_row, b, b_row, depth, c, c_row, col),
                    }
                }
            }
            r += n;
        }
    }

    /// `R` rows × 32 columns of a pair product, accumulated in registers.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX512-BF16.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const R: usize>(
        a: &[u32],
        a_row: usize,
        b: &[u32],
        b_row: usize,
        depth: usize,
        c: &mut [f32],
        c_row: usize,
        col: usize,
    ) {
        let a = &a[..(R - 1) * a_row + depth];
        let b = &b[..(depth - 1) * b_row + col + 32];
        let c = &mut c[..(R - 1) * c_row + col + 32];
        let mut lo = [_mm512_setzero_ps(); R];
        let mut hi = [_mm512_setzero_ps(); R];
        for p in 0..depth {
            // SAFETY: p < depth and r < R: every load is inside the slices
            // as cut above.
            unsafe {
                let row = b.as_ptr().add(p * b_row + col);
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(row.cast()));
                let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(row.add(16).cast()));
                for r in 0..R {
                    let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(
                        *a.get_unchecked(r * a_row + p) as i32,
                    ));
                    lo[r] = _mm512_dpbf16_ps(lo[r], av, b0);
                    hi[r] = _mm512_dpbf16_ps(hi[r], av, b1);
                }
            }
        }
        for r in 0..R {
            // SAFETY: row r's 32 columns are inside `c` as cut above.
            unsafe {
                let out = c.as_mut_ptr().add(r * c_row + col);
                _mm512_storeu_ps(out, lo[r]);
                _mm512_storeu_ps(out.add(16), hi[r]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// bf16 attention against the f32 kernel on every shape the encoder
    /// asks for: ragged lengths, windows, [CLS] alone, two head widths.
    #[test]
    fn bf16_attention_is_f32_attention_to_bf16_precision() {
        if !available(32) {
            eprintln!("no AVX512-BF16 here: the f32 fallback is the f32 kernel");
        }
        let mut worst = 0f32;
        for (count, dim) in [(3, 32), (2, 64)] {
            let hidden = count * dim;
            for (len, window) in [1usize, 2, 5, 33, 70]
                .into_iter()
                .flat_map(|len| [(len, None), (len, Some(3))])
            {
                let qkv: Vec<f32> = (0..len * 3 * hidden)
                    .map(|i| (((i * 7919) % 251) as f32 - 125.0) * 0.004)
                    .collect();
                for queries in [len, 1] {
                    let heads = Heads {
                        count,
                        dim,
                        len,
                        queries,
                        window,
                    };
                    let mut want = vec![0f32; len * hidden];
                    kernels::attention(&qkv, heads, &mut want, &mut AttentionScratch::default());
                    // Scratch reused from the whole layer's shape, as the
                    // encoder reuses it across sequences.
                    let mut scratch = AttentionScratch::default();
                    let whole = Heads {
                        queries: len,
                        ..heads
                    };
                    attention(&qkv, whole, &mut vec![0f32; len * hidden], &mut scratch);
                    let mut got = vec![7f32; len * hidden];
                    attention(&qkv, heads, &mut got, &mut scratch);
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        if i < queries * hidden {
                            let d = (g - w).abs();
                            worst = worst.max(d);
                            assert!(d < 5e-3, "dim {dim}, len {len}, {window:?}: {g} vs {w}");
                        } else {
                            assert_eq!(*g, 7.0, "row past the queries written");
                        }
                    }
                }
            }
        }
        eprintln!("largest |bf16 − f32| of a context value: {worst:.2e}");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_dot_rate_is_measured_where_the_instructions_exist() {
        if !(std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16"))
        {
            return;
        }
        // SAFETY: checked just above.
        let rate = unsafe { wide::dot_rate() };
        eprintln!(
            "vdpbf16ps per f32 FMA: {rate:.2}; bf16 attention: {}",
            cpu_runs_it()
        );
        assert!(rate.is_finite() && rate > 0.05 && rate < 20.0, "{rate}");
    }
}
