//! Self-attention with its two products in bf16, for the bf16 and int8
//! encoders on CPUs that multiply bf16: on AMX-BF16 tiles (`tdpbf16ps`,
//! Sapphire Rapids and later) or with AVX512-BF16 (`vdpbf16ps`: 32
//! products into 16 f32 lanes per instruction, twice an f32 FMA's 16).
//!
//! ```text
//! Q, K ─ round ─▶ bf16 ─▶ scores = Q Kᵀ (f32 sums) ─▶ softmax in f32 ─▶ P
//! P, V ─ round ─▶ bf16 ─▶ context = P V (f32 sums)
//! ```
//!
//! The same shape as [`kernels::attention`] (one sequence at a time, no
//! pads) with bf16 operands in pairs, the layout both instructions
//! multiply: Kᵀ as `[dim / 2][keys]` pairs of consecutive dimensions, V as
//! `[keys / 2][dim]` pairs of consecutive keys. The AVX512-BF16 products
//! run on register tiles of 6 rows × 32 columns; the AMX ones on 2 × 2
//! tiles of 16 × 16 f32, the operands' rows padded to whole tiles (pad
//! queries and keys are zeros, and no pad row reaches the context).
//! Attention was the one stage of those encoders left in f32 (13% of
//! bf16's time and 20% of int8's on a 2-core Zen 5, 20% and 30% on a
//! 2-core Xeon with AMX); the linear products already round (or quantize)
//! these very activations, so the error it adds is of the same kind and
//! smaller. `ce-engine-bench --fidelity` measured it on the standard
//! workload: on a Zen 5 (AVX512-BF16), bf16 Kendall τ 0.9937 either way,
//! golden max |Δ| 5.2e-4 → 6.1e-4; int8 τ 0.926 → 0.925, max |Δ| vs f32
//! 7.0e-3 → 6.8e-3. On a Xeon with AMX (`CE_BF16_ATTENTION=f32` vs AMX,
//! with the fused softmax below): bf16 τ 0.9943 → 0.9933, golden 5.6e-4 →
//! 6.0e-4; int8 τ 0.926 → 0.923, max |Δ| 7.0e-3 → 6.4e-3.
//!
//! Heads whose width is not a multiple of 32, CPUs with neither unit and
//! CPUs without AMX that issue `vdpbf16ps` slower than an FMA
//! ([`unit()`]) run [`kernels::attention`].

use super::kernels::{self, AttentionScratch, Heads};

/// What multiplies attention's bf16 operands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub enum Unit {
    /// AMX-BF16 tiles (`tdpbf16ps`).
    Amx,
    /// AVX512-BF16 dot products (`vdpbf16ps`).
    Avx512,
}

impl Unit {
    /// Its name, as `CE_BF16_ATTENTION` takes it and `/info` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Amx => "amx",
            Unit::Avx512 => "avx512",
        }
    }
}

/// How this CPU runs attention's products in bf16 (for heads whose width
/// allows, [`available`]), chosen once per process; `None`: in f32.
///
/// AMX-BF16 wherever the CPU has it and the OS grants the tiles: a tile
/// product is 8 192 multiply-adds, and attention's products at head width
/// 32 are exactly one tile deep. Otherwise AVX512-BF16, but only where
/// `vdpbf16ps` issues at about the rate of an f32 FMA — measured once per
/// process, because Intel's CPUs issue it at half that rate (twice the
/// instructions of bf16 work for the same time as f32's FMAs, plus the
/// rounding), where it would be slower than f32, while AMD Zen 4/5 issue
/// both at one rate. `CE_BF16_ATTENTION=f32` turns bf16 attention off,
/// `=amx` or `=avx512` asks for that unit (`avx512` whatever its rate),
/// `=bf16` for the best unit the CPU has, whatever its rate.
pub fn unit() -> Option<Unit> {
    static CHOSEN: std::sync::OnceLock<Option<Unit>> = std::sync::OnceLock::new();
    *CHOSEN.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let wanted = std::env::var("CE_BF16_ATTENTION").unwrap_or_default();
            let dot = std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512bf16");
            // The operands are rounded and packed with AVX512-BF16 on
            // either unit; every AMX-BF16 CPU has it.
            let amx = dot && super::amx::available(super::amx::Unit::Bf16);
            match wanted.as_str() {
                "f32" => None,
                "avx512" => dot.then_some(Unit::Avx512),
                "amx" => amx.then_some(Unit::Amx),
                "bf16" if amx => Some(Unit::Amx),
                "bf16" => dot.then_some(Unit::Avx512),
                _ if amx => Some(Unit::Amx),
                // SAFETY: the CPU has the features `wide::dot_rate` needs.
                _ => (dot && unsafe { wide::dot_rate() } >= MIN_DOT_RATE).then_some(Unit::Avx512),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        None
    })
}

/// `vdpbf16ps` per f32 FMA issued, below which bf16 attention loses: 1.0
/// measured on a Zen 5; Intel's documented rate is 0.5.
#[cfg(target_arch = "x86_64")]
const MIN_DOT_RATE: f64 = 0.75;

/// Whether bf16 attention runs for heads `dim` wide on this CPU.
pub fn available(dim: usize) -> bool {
    unit_for(dim).is_some()
}

/// The unit that multiplies attention's products for heads `dim` wide on
/// this CPU; `None`: f32.
pub fn unit_for(dim: usize) -> Option<Unit> {
    unit().filter(|_| dim > 0 && dim.is_multiple_of(32))
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
    /// A head's context rows, `[queries][dim]` (AMX: rounded up to whole
    /// tiles), before they are scaled into the head's columns.
    context: Vec<f32>,
    /// Per query row: 1 / the sum of its exponentials.
    inverse_sums: Vec<f32>,
    /// Per query row: its largest score.
    row_maxima: Vec<f32>,
    /// Per query row and 16 columns of scores: the keys it attends to.
    key_masks: Vec<u16>,
}

/// [`kernels::attention`]'s contract (same arguments, same outputs up to
/// bf16 rounding), its products in bf16 where [`available`]`(heads.dim)`.
pub fn attention(qkv: &[f32], heads: Heads, context: &mut [f32], scratch: &mut AttentionScratch) {
    #[cfg(target_arch = "x86_64")]
    if let (Some(unit), true) = (unit_for(heads.dim), heads.len > 0) {
        let hidden = heads.count * heads.dim;
        assert!(heads.queries <= heads.len, "more queries than tokens");
        assert!(qkv.len() >= heads.len * 3 * hidden && context.len() >= heads.len * hidden);
        // SAFETY: `unit` saw AVX-512F/BW and AVX512-BF16 (and, for AMX,
        // the tiles granted); the shapes were checked just above.
        return unsafe { wide::attention(qkv, heads, context, scratch, unit) };
    }
    kernels::attention(qkv, heads, context, scratch)
}

#[cfg(target_arch = "x86_64")]
mod wide {
    use std::arch::x86_64::*;

    use super::super::amx::{TILE_ROWS, Tiles};
    use super::super::kernels::{AttentionScratch, Heads};
    use super::{Unit, tiles};

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
    /// The CPU must have AVX-512F/BW and AVX512-BF16, and for
    /// [`Unit::Amx`] the tiles granted ([`super::super::amx::available`]);
    /// `qkv` and `context` hold `heads.len` rows, `heads.queries <=
    /// heads.len`, `heads.dim` is a positive multiple of 32.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn attention(
        qkv: &[f32],
        heads: Heads,
        context: &mut [f32],
        scratch: &mut AttentionScratch,
        unit: Unit,
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
        // Whole tiles of query rows: the AMX products read and write 16
        // rows at a time (pad rows are zeros and never reach `context`).
        let rows = queries.div_ceil(TILE_ROWS) * TILE_ROWS;
        let (scores, s) = scratch.bf16_parts();
        let scores = grow(scores, rows * padded);
        let q_pairs = grow(&mut s.queries, rows * half);
        let keys_t = grow(&mut s.keys_t, half * padded);
        let probs = grow(&mut s.probs, rows * padded / 2);
        let values = grow(&mut s.values, padded / 2 * dim);
        let tile_context = grow(&mut s.context, rows * dim);
        let inverse_sums = grow(&mut s.inverse_sums, queries);
        let row_maxima = grow(&mut s.row_maxima, queries);
        q_pairs[queries * half..].fill(0);
        probs[queries * padded / 2..].fill(0);
        values[key_pairs * dim..].fill(0);
        // The keys each query row attends to, one mask per 16 columns of
        // scores: the same for every head.
        let vectors = padded / 16;
        let masks = grow(&mut s.key_masks, queries * vectors);
        match window {
            // Every row reads all `len` keys: one row of masks, copied.
            None => {
                for (v, m) in masks[..vectors].iter_mut().enumerate() {
                    *m = key_mask(&(0..len), 16 * v);
                }
                for r in 1..queries {
                    masks.copy_within(..vectors, r * vectors);
                }
            }
            Some(w) => {
                for (r, row) in masks.chunks_exact_mut(vectors).enumerate() {
                    let keys = r.saturating_sub(w)..(r + w + 1).min(len);
                    for (v, m) in row.iter_mut().enumerate() {
                        *m = key_mask(&keys, 16 * v);
                    }
                }
            }
        }
        let _tiles = match unit {
            // SAFETY: the caller saw the tiles granted.
            Unit::Amx => Some(unsafe { Tiles::configure() }),
            Unit::Avx512 => None,
        };
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
            match unit {
                // SAFETY: the tiles are configured; the operands are
                // whole tiles (rows padded to 16, dim and padded
                // multiples of 32).
                Unit::Amx => unsafe {
                    tiles::product(
                        q_pairs, half, keys_t, padded, half, rows, padded, scores, padded,
                    )
                },
                Unit::Avx512 => product(
                    q_pairs, half, keys_t, padded, half, queries, padded, scores, padded,
                ),
            }
            // P = exp(scores − row max), rounded to bf16 pairs; each row's
            // 1 / Σ scales its context after the product (the rounding's
            // relative error is the same before or after the division).
            // Every row's maximum first: a row's exponentials wait for its
            // maximum's reduction, which this keeps off that path.
            for (r, max) in row_maxima.iter_mut().enumerate() {
                let masks = &masks[r * vectors..(r + 1) * vectors];
                // SAFETY: the CPU has the features; a row of scores is
                // `padded` floats, one mask per 16 of them.
                *max = unsafe { row_max(&scores[r * padded..(r + 1) * padded], masks) };
            }
            for (r, (inv, &max)) in inverse_sums.iter_mut().zip(row_maxima.iter()).enumerate() {
                // SAFETY: as above; a row of probabilities is `padded / 2`
                // pairs.
                *inv = unsafe {
                    exp_pairs(
                        &scores[r * padded..(r + 1) * padded],
                        &masks[r * vectors..(r + 1) * vectors],
                        max,
                        &mut probs[r * padded / 2..(r + 1) * padded / 2],
                    )
                };
            }
            // SAFETY: as above.
            unsafe {
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
            // [queries, dim] = P · V, over the key pairs.
            match unit {
                // SAFETY: as for the scores; P's rows are `padded / 2`
                // pairs, V has `padded / 2` rows (the pads zero).
                Unit::Amx => unsafe {
                    tiles::product(
                        probs,
                        padded / 2,
                        values,
                        dim,
                        padded / 2,
                        rows,
                        dim,
                        tile_context,
                        dim,
                    )
                },
                Unit::Avx512 => product(
                    probs,
                    padded / 2,
                    values,
                    dim,
                    key_pairs,
                    queries,
                    dim,
                    tile_context,
                    dim,
                ),
            }
            let rows_out = tile_context.chunks_exact(dim).zip(inverse_sums.iter());
            for (r, (from, &inv)) in rows_out.enumerate() {
                let to = &mut context[r * hidden + head * dim..][..dim];
                to.iter_mut().zip(from).for_each(|(t, &f)| *t = f * inv);
            }
        }
    }

    /// Lanes `j` of the register at column `i` with `i + j` in `keys`.
    #[inline(always)]
    fn key_mask(keys: &std::ops::Range<usize>, i: usize) -> __mmask16 {
        let below = keys.start.saturating_sub(i).min(16);
        let upto = keys.end.saturating_sub(i).min(16);
        (((1u32 << upto) - 1) & !((1u32 << below) - 1)) as __mmask16
    }

    /// The largest of the row's columns that `masks` (one per 16
    /// columns, [`key_mask`]) select; at least one is selected.
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn row_max(row: &[f32], masks: &[__mmask16]) -> f32 {
        assert_eq!(row.len(), masks.len() * 16);
        let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
        for (i, &m) in masks.iter().enumerate() {
            // SAFETY: 16 columns at 16 i < row.len().
            let v = unsafe { _mm512_loadu_ps(row.as_ptr().add(16 * i)) };
            max = _mm512_mask_max_ps(max, m, max, v);
        }
        _mm512_reduce_max_ps(max)
    }

    /// `exp(x − max)` of the row's columns that `masks` select, rounded to
    /// bf16 pairs in `out`, every other column 0; returns 1 / the sum of
    /// the exponentials before rounding. With [`row_max`], two passes
    /// where a softmax in f32 and its rounding made four.
    ///
    /// The exponential is `2ⁿ · p(r)` with `n = round(x · log₂e)`, `r = x −
    /// n · ln 2` (two-part ln 2) and `p` the degree-5 Taylor polynomial:
    /// relative error below 3e-6 on `|r| ≤ ln 2 / 2`, under bf16's 2e-3
    /// by three orders; `vscalefps` applies `2ⁿ`, underflowing to 0.
    ///
    /// # Safety
    /// The CPU must have AVX-512F/BW and AVX512-BF16.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn exp_pairs(row: &[f32], masks: &[__mmask16], max: f32, out: &mut [u32]) -> f32 {
        const LOG2E: f32 = std::f32::consts::LOG2_E;
        const LN2_HI: f32 = 0.693_359_4;
        const LN2_LO: f32 = -2.121_944_4e-4;
        let padded = row.len();
        assert!(padded.is_multiple_of(32) && out.len() * 2 == padded);
        assert_eq!(masks.len() * 16, padded);
        let max = _mm512_set1_ps(max);
        let exp = |x: __m512, m: __mmask16| -> __m512 {
            let x = _mm512_sub_ps(x, max);
            let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm512_mul_ps(x, _mm512_set1_ps(LOG2E)),
            );
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
            let mut poly = _mm512_set1_ps(1.0 / 120.0);
            for c in [1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
                poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(c));
            }
            _mm512_maskz_scalef_ps(m, poly, n)
        };
        let mut total = _mm512_setzero_ps();
        for (i, m) in masks.chunks_exact(2).enumerate() {
            // SAFETY: 32 columns at 32 i < padded, inside `row`; a register
            // of bf16 pairs is a register of bits; the 16 pairs at 16 i lie
            // inside `out`.
            unsafe {
                let at = row.as_ptr().add(32 * i);
                let lo = exp(_mm512_loadu_ps(at), m[0]);
                let hi = exp(_mm512_loadu_ps(at.add(16)), m[1]);
                total = _mm512_add_ps(total, _mm512_add_ps(lo, hi));
                let pairs: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_si512(out.as_mut_ptr().add(16 * i).cast(), pairs);
            }
        }
        1.0 / _mm512_reduce_add_ps(total)
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

/// Attention's products on AMX-BF16 tiles.
#[cfg(target_arch = "x86_64")]
mod tiles {
    use super::super::amx::TILE_ROWS;
    use super::super::amx::two_by_two::{self, Multiply};

    /// bf16 pairs in one tile row (64 bytes).
    const PAIRS: usize = 16;

    /// `c[rows, cols] = a[rows, depth] · b[depth, cols]` in f32, `a` and `b`
    /// in bf16 pairs (`depth` pairs deep; `b` in the pair layout of
    /// `tdpbf16ps`), each operand row-major with its row stride in
    /// elements. Every dimension is whole tiles: `rows` and `depth` a
    /// multiple of 16, `cols` of 32; 2 × 2 tiles (32 × 32 f32) at a time,
    /// one row of tiles where 16 rows are left.
    ///
    /// # Safety
    /// The tiles must be configured ([`super::super::amx::Tiles`]).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn product(
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
        assert!(
            rows.is_multiple_of(TILE_ROWS)
                && depth.is_multiple_of(PAIRS)
                && cols.is_multiple_of(2 * PAIRS)
                && rows > 0
                && depth > 0
        );
        assert!(a.len() >= (rows - 1) * a_row + depth);
        assert!(b.len() >= (depth - 1) * b_row + cols);
        assert!(c.len() >= (rows - 1) * c_row + cols);
        let (sa, sb, sc) = (a_row * 4, b_row * 4, c_row * 4);
        let mut r = 0;
        while r < rows {
            let both = r + 2 * TILE_ROWS <= rows;
            for col in (0..cols).step_by(2 * PAIRS) {
                // SAFETY: every tile load reads 16 rows of 64 bytes at
                // (row, pair) offsets inside `a` and `b` as asserted above,
                // and every store writes 16 rows of 2 × 16 f32 inside `c`;
                // the caller configured the tiles.
                unsafe {
                    two_by_two::zero();
                    for p in (0..depth).step_by(PAIRS) {
                        let a0 = a.as_ptr().add(r * a_row + p).cast();
                        let b0 = b.as_ptr().add(p * b_row + col).cast();
                        two_by_two::step(Multiply::Bf16, both, a0, sa, b0, sb);
                    }
                    two_by_two::store(both, c.as_mut_ptr().add(r * c_row + col).cast(), sc);
                }
            }
            r += if both { 2 * TILE_ROWS } else { TILE_ROWS };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bf16 units this CPU has (whatever [`unit`] chose), each to be
    /// tested.
    #[cfg(target_arch = "x86_64")]
    fn units_here() -> Vec<Unit> {
        let dot = std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512bf16");
        let amx = dot && super::super::amx::available(super::super::amx::Unit::Bf16);
        [(Unit::Avx512, dot), (Unit::Amx, amx)]
            .into_iter()
            .filter_map(|(unit, here)| here.then_some(unit))
            .collect()
    }

    /// bf16 attention against the f32 kernel on every shape the encoder
    /// asks for (ragged lengths, windows, [CLS] alone, two head widths,
    /// lengths across the AMX tiles' 16- and 32-row edges), on every unit
    /// this CPU has. (No other architecture has a bf16 unit.)
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn bf16_attention_is_f32_attention_to_bf16_precision() {
        let units = units_here();
        if units.is_empty() {
            eprintln!("no AVX512-BF16 here: the f32 fallback is the f32 kernel");
        }
        for unit in units {
            let mut worst = 0f32;
            for (count, dim) in [(3, 32), (2, 64)] {
                let hidden = count * dim;
                for (len, window) in [1usize, 2, 5, 16, 17, 33, 48, 70]
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
                        let mut scratch = AttentionScratch::default();
                        kernels::attention(&qkv, heads, &mut want, &mut scratch);
                        // Scratch reused from the whole layer's shape, as
                        // the encoder reuses it across sequences (stale
                        // rows past this sequence's must not count).
                        let whole = Heads {
                            queries: len,
                            ..heads
                        };
                        let mut got = vec![7f32; len * hidden];
                        // SAFETY: `units_here` saw the unit's features;
                        // the buffers hold `len` rows.
                        unsafe {
                            wide::attention(
                                &qkv,
                                whole,
                                &mut vec![0f32; len * hidden],
                                &mut scratch,
                                unit,
                            );
                            wide::attention(&qkv, heads, &mut got, &mut scratch, unit);
                        }
                        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                            if i < queries * hidden {
                                let d = (g - w).abs();
                                worst = worst.max(d);
                                assert!(
                                    d < 5e-3,
                                    "{unit:?}, dim {dim}, len {len}, {window:?}: {g} vs {w}"
                                );
                            } else {
                                assert_eq!(*g, 7.0, "{unit:?}: row past the queries written");
                            }
                        }
                    }
                }
            }
            eprintln!("{unit:?}: largest |bf16 − f32| of a context value: {worst:.2e}");
        }
    }

    /// The public entry point runs the chosen unit (or f32) on the same
    /// contract.
    #[test]
    fn the_chosen_unit_answers_through_the_entry_point() {
        let (count, dim, len) = (2, 32, 21);
        let hidden = count * dim;
        let qkv: Vec<f32> = (0..len * 3 * hidden)
            .map(|i| (((i * 31) % 97) as f32 - 48.0) * 0.01)
            .collect();
        let heads = Heads {
            count,
            dim,
            len,
            queries: len,
            window: None,
        };
        let mut want = vec![0f32; len * hidden];
        kernels::attention(&qkv, heads, &mut want, &mut AttentionScratch::default());
        let mut got = vec![0f32; len * hidden];
        attention(&qkv, heads, &mut got, &mut AttentionScratch::default());
        eprintln!("bf16 attention unit here: {:?}", unit_for(dim));
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 5e-3, "{g} vs {w}");
        }
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
            "vdpbf16ps per f32 FMA: {rate:.2}; bf16 attention: {:?}",
            unit()
        );
        assert!(rate.is_finite() && rate > 0.05 && rate < 20.0, "{rate}");
    }
}
