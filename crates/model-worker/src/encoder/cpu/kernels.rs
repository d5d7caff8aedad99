//! The f32 kernels of the CPU encoder: one GEMM entry point and the fused
//! element-wise passes around it.
//!
//! Every element-wise kernel is written once as plain Rust over slices with
//! 16-wide accumulators, then compiled three times by `vectorized!`: for
//! AVX-512, for AVX2+FMA and for the baseline target, picked at run time.
//! The default `x86_64` target only promises SSE2, so without this the
//! compiler would vectorize four lanes wide on a machine that has sixteen.
//!
//! `exp` and `erf` are polynomial (`erf`: rational) approximations that
//! vectorize (libm's are scalar calls): `exp` is within 2 ulp, `erf` within
//! 4e-7 absolute, far below the engine's 1e-4 tolerance on logits.

use gemm::Parallelism;

/// Compiles `$body` for AVX-512, AVX2+FMA and the baseline, and dispatches
/// on what the CPU has. The body must be safe code.
macro_rules! vectorized {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            // `FMA`: whether `madd` may fuse (one instruction where the CPU
            // has FMA, a slow library call where it does not).
            #[inline(always)]
            fn portable<const FMA: bool>($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) {
                    portable::<true>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) {
                    portable::<true>($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has AVX2 and FMA.
                    return unsafe { avx2($($arg),*) };
                }
            }
            portable::<false>($($arg),*)
        }
    };
}

pub(crate) use vectorized;

/// Lanes of the unrolled reductions: one AVX-512 register of f32.
const LANES: usize = 16;

/// A strided read-only matrix: element `(r, c)` is `data[r * row + c * col]`.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// The elements.
    pub data: &'a [f32],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Distance between rows.
    pub row: usize,
    /// Distance between columns.
    pub col: usize,
}

impl<'a> View<'a> {
    /// A contiguous row-major `[rows, cols]` matrix.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row: cols,
            col: 1,
        }
    }

    /// The same elements read as the transpose.
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row: self.col,
            col: self.row,
            ..self
        }
    }

    /// Panics unless every element lies inside `data`: the GEMM reads raw
    /// pointers, so this check is what keeps it in bounds.
    fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.row + (self.cols - 1) * self.col;
            assert!(last < self.data.len(), "matrix view out of bounds");
        }
    }
}

/// `dst[m, n] (row stride dst_row) = lhs[m, k] · rhs[k, n]`, on the calling
/// thread (the encoder parallelises over sequences, not inside a product).
pub fn matmul(dst: &mut [f32], dst_row: usize, lhs: View, rhs: View) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "inner dimensions differ");
    lhs.check();
    rhs.check();
    if m == 0 || n == 0 {
        return;
    }
    assert!(n <= dst_row || m == 1, "destination rows overlap");
    assert!((m - 1) * dst_row + n <= dst.len(), "destination too small");
    if k == 0 {
        for r in 0..m {
            dst[r * dst_row..r * dst_row + n].fill(0.0);
        }
        return;
    }
    // SAFETY: the three views were checked to lie inside their slices, the
    // destination is a distinct `&mut` borrow, and with `read_dst = false`
    // the GEMM only writes `dst`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_row as isize,
            false,
            lhs.data.as_ptr(),
            lhs.col as isize,
            lhs.row as isize,
            rhs.data.as_ptr(),
            rhs.col as isize,
            rhs.row as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// `src`, a row-major `[rows, cols]` matrix, as `[cols, rows]`: in square
/// blocks, each output row's run written in order while the block's source
/// rows stay in cache. Element by element, every write to a weight
/// matrix's transpose missed the cache: 50 ms for a 4096 × 1024 one
/// against 14 ms so (9 of them allocating the result); before, the
/// transposes were about half of loading a layer of Qwen3-0.6B in f32.
pub fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const BLOCK: usize = 32;
    assert_eq!(src.len(), rows * cols, "transpose: shape");
    let mut dst = vec![0f32; rows * cols];
    for r0 in (0..rows).step_by(BLOCK) {
        let r1 = (r0 + BLOCK).min(rows);
        for c0 in (0..cols).step_by(BLOCK) {
            for c in c0..(c0 + BLOCK).min(cols) {
                let run = &mut dst[c * rows + r0..c * rows + r1];
                for (r, out) in (r0..r1).zip(run) {
                    *out = src[r * cols + c];
                }
            }
        }
    }
    dst
}

/// `a · b + c`, fused when `FMA`.
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// `e^x`, within 2 ulp for x in [-87, 88]; 0 below, saturating above.
#[inline(always)]
pub fn exp<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n * LN2_HI is exact for |n| < 2^11.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 · 2^23 rounds to the nearest integer
    // without a rounding instruction the baseline target lacks.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    // Taylor series of e^r on |r| <= ln2/2: the r^7 term is below 1.2e-7.
    let p = 1.0 / 720.0;
    let p = madd::<FMA>(p, r, 1.0 / 120.0);
    let p = madd::<FMA>(p, r, 1.0 / 24.0);
    let p = madd::<FMA>(p, r, 1.0 / 6.0);
    let p = madd::<FMA>(p, r, 0.5);
    let p = madd::<FMA>(p, r, 1.0);
    let p = madd::<FMA>(p, r, 1.0);
    // 2^n straight from the integer in `shifted`'s low bits: a float to int
    // conversion (`as i32` saturates) would not vectorize.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    p * scale
}

/// The error function, as `x · P(x²) / Q(x²)` (degree 5 over degree 5)
/// on |x| ≤ 3.9 and ±1 beyond (erf(3.9) = 1 − 3.5e-8): |error| < 2.4e-8
/// in exact arithmetic, < 4e-7 evaluated in f32 (the test measures it).
/// A least-squares rational fit made for this kernel: ten FMAs and one
/// division, where Abramowitz & Stegun 7.1.26 (the formula before it) took
/// a division, five FMAs and an `exp` — half the instructions. GELU on a
/// 128 × 1536 shard, best of 200: 162–166 → 95–105 µs; its share of the
/// int8 encoder's time 9.8–10.3% → 6.4–6.6% (2-core Xeon with AMX).
#[inline(always)]
pub fn erf<const FMA: bool>(x: f32) -> f32 {
    const P: [f32; 6] = [
        // erf'(0): the fit found it too.
        std::f32::consts::FRAC_2_SQRT_PI,
        0.189_664_72,
        0.052_685_548,
        3.744_336_8e-3,
        2.862_592_2e-4,
        2.079_682_6e-6,
    ];
    const Q: [f32; 5] = [
        0.501_418_3,
        0.113_834_88,
        0.014_923_673,
        1.160_912_1e-3,
        3.847_108_7e-5,
    ];
    let a = x.abs().min(3.9);
    let z = a * a;
    let p = madd::<FMA>(P[5], z, P[4]);
    let p = madd::<FMA>(p, z, P[3]);
    let p = madd::<FMA>(p, z, P[2]);
    let p = madd::<FMA>(p, z, P[1]);
    let p = madd::<FMA>(p, z, P[0]);
    let q = madd::<FMA>(Q[4], z, Q[3]);
    let q = madd::<FMA>(q, z, Q[2]);
    let q = madd::<FMA>(q, z, Q[1]);
    let q = madd::<FMA>(q, z, Q[0]);
    let q = madd::<FMA>(q, z, 1.0);
    ((a * p) / q).min(1.0).copysign(x)
}

/// `tanh`, through `exp` (relative error ~1e-7 away from 0, exact sign).
#[inline(always)]
pub fn tanh<const FMA: bool>(x: f32) -> f32 {
    let a = x.abs().min(20.0);
    let e = exp::<FMA>(2.0 * a);
    ((e - 1.0) / (e + 1.0)).copysign(x)
}

/// Which activation the feed-forward block applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x Φ(x)` with the exact normal CDF.
    GeluErf,
    /// The tanh approximation of GELU.
    GeluTanh,
    /// `max(x, 0)`.
    Relu,
    /// `tanh(x)` (the BERT and RoBERTa heads).
    Tanh,
    /// `x · sigmoid(x)` (SwiGLU's gate).
    Silu,
}

impl From<ce_model_spec::HiddenAct> for Activation {
    fn from(act: ce_model_spec::HiddenAct) -> Self {
        use ce_model_spec::HiddenAct as H;
        match act {
            H::GeluErf => Self::GeluErf,
            H::GeluTanh => Self::GeluTanh,
            H::Relu => Self::Relu,
            H::Tanh => Self::Tanh,
            H::Silu => Self::Silu,
        }
    }
}

/// `act(x)`, inlined into each kernel's loop.
#[inline(always)]
fn activate<const FMA: bool>(x: f32, act: Activation) -> f32 {
    match act {
        Activation::GeluErf => 0.5 * x * (1.0 + erf::<FMA>(x * std::f32::consts::FRAC_1_SQRT_2)),
        Activation::GeluTanh => {
            const C: f32 = 0.797_884_6; // sqrt(2 / pi)
            0.5 * x * (1.0 + tanh::<FMA>(C * (x + 0.044_715 * x * x * x)))
        }
        Activation::Relu => x.max(0.0),
        Activation::Tanh => tanh::<FMA>(x),
        Activation::Silu => x / (1.0 + exp::<FMA>(-x)),
    }
}

vectorized! {
    /// `rows[r][j] = act(rows[r][j] + bias[j])` for every row.
    pub fn bias_activation(rows: &mut [f32], bias: &[f32], act: Activation) {
        let width = bias.len();
        // One loop per activation, so each vectorizes on its own.
        for row in rows.chunks_exact_mut(width) {
            match act {
                Activation::GeluErf => {
                    for (v, b) in row.iter_mut().zip(bias) {
                        *v = activate::<FMA>(*v + b, Activation::GeluErf);
                    }
                }
                Activation::GeluTanh => {
                    for (v, b) in row.iter_mut().zip(bias) {
                        *v = activate::<FMA>(*v + b, Activation::GeluTanh);
                    }
                }
                Activation::Relu => {
                    for (v, b) in row.iter_mut().zip(bias) {
                        *v = (*v + b).max(0.0);
                    }
                }
                Activation::Tanh => {
                    for (v, b) in row.iter_mut().zip(bias) {
                        *v = tanh::<FMA>(*v + b);
                    }
                }
                Activation::Silu => {
                    for (v, b) in row.iter_mut().zip(bias) {
                        *v = activate::<FMA>(*v + b, Activation::Silu);
                    }
                }
            }
        }
    }
}

vectorized! {
    /// GeGLU: `gated[r][j] = act(x[r][j] + b[j]) · (x[r][F + j] + b[F + j])`
    /// for rows `x` of width `2F` (the input and gate halves of one
    /// product) and `bias` of `2F`; `gated` has rows of `F`.
    pub fn gated_activation(x: &[f32], bias: &[f32], act: Activation, gated: &mut [f32]) {
        let f = bias.len() / 2;
        let (bias_in, bias_gate) = bias.split_at(f);
        for (row, out) in x.chunks_exact(2 * f).zip(gated.chunks_exact_mut(f)) {
            let (input, gate) = row.split_at(f);
            match act {
                Activation::GeluErf => {
                    for ((((o, i), g), bi), bg) in out.iter_mut().zip(input).zip(gate).zip(bias_in).zip(bias_gate) {
                        *o = activate::<FMA>(i + bi, Activation::GeluErf) * (g + bg);
                    }
                }
                other => {
                    for ((((o, i), g), bi), bg) in out.iter_mut().zip(input).zip(gate).zip(bias_in).zip(bias_gate) {
                        *o = activate::<FMA>(i + bi, other) * (g + bg);
                    }
                }
            }
        }
    }
}

vectorized! {
    /// The pre-norm residual: `hidden[r] += out[r] + bias` for every row.
    pub fn add_residual(hidden: &mut [f32], out: &[f32], bias: &[f32]) {
        let width = bias.len();
        for (h, o) in hidden.chunks_exact_mut(width).zip(out.chunks_exact(width)) {
            for ((h, o), b) in h.iter_mut().zip(o).zip(bias) {
                *h += o + b;
            }
        }
    }
}

vectorized! {
    /// Layer norm of every row of `src` into `dst` (`src` unchanged).
    pub fn layer_norm_into(src: &[f32], dst: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
        let width = gamma.len();
        for (s, d) in src.chunks_exact(width).zip(dst.chunks_exact_mut(width)) {
            normalize(s, d, gamma, beta, eps);
        }
    }
}

/// Rotates the query and key halves of one sequence's `qkv` rows (row
/// stride `3 · count · dim`) by their positions, transformers' rotary
/// embedding without interleaving: for `i < d/2`,
/// `(x_i, x_{i+d/2}) ← (x_i cos − x_{i+d/2} sin, x_{i+d/2} cos + x_i sin)`.
/// `cos` and `sin` are `[positions, d/2]`; row `p` of the sequence takes
/// row `p` of them.
pub fn rotary(qkv: &mut [f32], len: usize, count: usize, dim: usize, cos: &[f32], sin: &[f32]) {
    let hidden = count * dim;
    let half = dim / 2;
    for p in 0..len {
        let (c, s) = (
            &cos[p * half..(p + 1) * half],
            &sin[p * half..(p + 1) * half],
        );
        let row = &mut qkv[p * 3 * hidden..p * 3 * hidden + 2 * hidden];
        for head in row.chunks_exact_mut(dim) {
            let (a, b) = head.split_at_mut(half);
            for (((x, y), c), s) in a.iter_mut().zip(b.iter_mut()).zip(c).zip(s) {
                let (x0, y0) = (*x, *y);
                *x = x0 * c - y0 * s;
                *y = y0 * c + x0 * s;
            }
        }
    }
}

vectorized! {
    /// `rows[r][j] += bias[j]` for every row.
    pub fn add_bias(rows: &mut [f32], bias: &[f32]) {
        for row in rows.chunks_exact_mut(bias.len()) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
    }
}

#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn sum_sq_dev(x: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|v| (v - mean) * (v - mean))
        .sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += (v - mean) * (v - mean);
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn normalize(src: &[f32], dst: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let n = src.len() as f32;
    let mean = sum(src) / n;
    let rstd = 1.0 / (sum_sq_dev(src, mean) / n + eps).sqrt();
    for (((d, s), g), b) in dst.iter_mut().zip(src).zip(gamma).zip(beta) {
        *d = (s - mean) * rstd * g + b;
    }
}

#[inline(always)]
fn rms_normalize(src: &[f32], dst: &mut [f32], gamma: &[f32], eps: f32) {
    let mut acc = [0f32; LANES];
    let chunks = src.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v * v;
        }
    }
    let mean_sq = (acc.iter().sum::<f32>() + tail) / src.len() as f32;
    let rstd = 1.0 / (mean_sq + eps).sqrt();
    for ((d, s), g) in dst.iter_mut().zip(src).zip(gamma) {
        *d = s * rstd * g;
    }
}

vectorized! {
    /// RMSNorm of every row of `src` (rows of `gamma.len()`) into `dst`:
    /// `x / √(mean(x²) + eps) · γ`, as transformers' `Qwen3RMSNorm` (in f32).
    pub fn rms_norm_into(src: &[f32], dst: &mut [f32], gamma: &[f32], eps: f32) {
        let width = gamma.len();
        for (s, d) in src.chunks_exact(width).zip(dst.chunks_exact_mut(width)) {
            rms_normalize(s, d, gamma, eps);
        }
    }
}

vectorized! {
    /// RMSNorm of every row of `rows` (rows of `gamma.len()`) in place.
    pub fn rms_norm(rows: &mut [f32], gamma: &[f32], eps: f32) {
        let mut tmp = [0f32; 1024];
        let width = gamma.len();
        for row in rows.chunks_exact_mut(width) {
            if width <= tmp.len() {
                tmp[..width].copy_from_slice(row);
                rms_normalize(&tmp[..width], row, gamma, eps);
            } else {
                let copy = row.to_vec();
                rms_normalize(&copy, row, gamma, eps);
            }
        }
    }
}

vectorized! {
    /// Layer norm of every row in place.
    pub fn layer_norm(rows: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
        let mut tmp = [0f32; 4096];
        let width = gamma.len();
        for row in rows.chunks_exact_mut(width) {
            if width <= tmp.len() {
                tmp[..width].copy_from_slice(row);
                normalize(&tmp[..width], row, gamma, beta, eps);
            } else {
                let copy = row.to_vec();
                normalize(&copy, row, gamma, beta, eps);
            }
        }
    }
}

vectorized! {
    /// The residual block's end: `hidden = LayerNorm(out + bias + hidden)`
    /// row by row (`out` is scratch afterwards).
    pub fn residual_layer_norm(
        hidden: &mut [f32],
        out: &mut [f32],
        bias: &[f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
    ) {
        let width = gamma.len();
        for (h, o) in hidden.chunks_exact_mut(width).zip(out.chunks_exact_mut(width)) {
            for ((o, b), h) in o.iter_mut().zip(bias).zip(h.iter()) {
                *o += b + h;
            }
            normalize(o, h, gamma, beta, eps);
        }
    }
}

vectorized! {
    /// Softmax of every row of `rows` (rows of `width`) in place.
    pub fn softmax_rows(rows: &mut [f32], width: usize) {
        for row in rows.chunks_exact_mut(width) {
            softmax_in_place::<FMA>(row);
        }
    }
}

vectorized! {
    /// `tanh(x)` for every element.
    pub fn tanh_all(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = tanh::<FMA>(*v);
        }
    }
}

/// Columns of one attention micro-tile: one AVX-512 register.
const TILE: usize = 16;

/// Buffers of [`attention`], reused across heads and sequences.
#[derive(Debug, Default)]
pub struct AttentionScratch {
    keys_t: Vec<f32>,
    scores: Vec<f32>,
    bf16: super::attention_bf16::Scratch,
}

impl AttentionScratch {
    /// The score rows and the pair buffers, for the bf16 attention.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(super) fn bf16_parts(&mut self) -> (&mut Vec<f32>, &mut super::attention_bf16::Scratch) {
        (&mut self.scores, &mut self.bf16)
    }
}

/// Where one sequence's heads lie in the packed matrices.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    /// Heads.
    pub count: usize,
    /// Width of one head (a multiple of 16).
    pub dim: usize,
    /// Tokens in the sequence.
    pub len: usize,
    /// Query rows computed: the first `queries` tokens attend (every token
    /// is a key and value). `len` for a whole layer; 1 where only `[CLS]`'s
    /// output is read.
    pub queries: usize,
    /// Sliding-window attention: query `r` attends only to keys at most
    /// this many positions away. `None`: to every key.
    pub window: Option<usize>,
}

/// Self-attention of one sequence: `qkv` holds its `len` rows of
/// `[Q | K | V]` (row stride `3 · count · dim`, Q already scaled by 1/√d);
/// each head's context `softmax(Q Kᵀ) V` goes to `context` (row stride
/// `count · dim`) at the head's columns.
///
/// The products are tiny (85 × 85 × 32 for a typical pair) — a general GEMM
/// spends longer packing them than multiplying — so they run on register
/// tiles here (6 × 32 with AVX-512, 4 × 16 otherwise), with K transposed
/// once per head so that both products read their right operand in rows.
/// Only the first `queries` rows of `context` are written.
pub fn attention(qkv: &[f32], heads: Heads, context: &mut [f32], scratch: &mut AttentionScratch) {
    let Heads {
        count, dim, len, ..
    } = heads;
    assert!(heads.queries <= len, "more queries than tokens");
    if len == 0 {
        // Validated batches hold no empty sequence; nothing attends here.
        return;
    }
    assert!(
        dim.is_multiple_of(TILE),
        "head width must be a multiple of 16"
    );
    let hidden = count * dim;
    assert!(qkv.len() >= len * 3 * hidden && context.len() >= len * hidden);
    let padded = len.div_ceil(2 * TILE) * 2 * TILE;
    grow(&mut scratch.keys_t, dim * padded);
    grow(&mut scratch.scores, len * padded);
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        fn avx512(qkv: &[f32], heads: Heads, context: &mut [f32], scratch: &mut AttentionScratch) {
            attention_heads::<true, true>(qkv, heads, context, scratch)
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2(qkv: &[f32], heads: Heads, context: &mut [f32], scratch: &mut AttentionScratch) {
            attention_heads::<true, false>(qkv, heads, context, scratch)
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { avx512(qkv, heads, context, scratch) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { avx2(qkv, heads, context, scratch) };
        }
    }
    attention_heads::<false, false>(qkv, heads, context, scratch)
}

fn grow(buf: &mut Vec<f32>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
}

/// `FMA`: fuse multiply-adds (a single instruction where the CPU has FMA; a
/// slow library call where it does not, hence the flag). `AVX512`: the
/// products' wide tiles use AVX-512 intrinsics (the caller has AVX-512F).
#[inline(always)]
fn attention_heads<const FMA: bool, const AVX512: bool>(
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
        ..
    } = heads;
    let hidden = count * dim;
    let stride = 3 * hidden;
    let padded = len.div_ceil(2 * TILE) * 2 * TILE;
    let keys_t = &mut scratch.keys_t[..dim * padded];
    let scores = &mut scratch.scores[..queries * padded];
    for head in 0..count {
        let q = &qkv[head * dim..];
        let k = &qkv[hidden + head * dim..];
        let v = &qkv[2 * hidden + head * dim..];
        // Kᵀ [dim, padded], the pad columns zero. Written a row at a
        // time: the reads stride through K's rows, which stay in L1.
        let k = &k[..(len - 1) * stride + dim];
        for (c, row) in keys_t.chunks_exact_mut(padded).enumerate() {
            for (j, t) in row[..len].iter_mut().enumerate() {
                // SAFETY: j < len and c < dim: inside `k` as cut above.
                *t = unsafe { *k.get_unchecked(j * stride + c) };
            }
            row[len..].fill(0.0);
        }
        // scores [len, padded] = Q [len, dim] · Kᵀ
        product::<FMA, AVX512>(
            q, stride, keys_t, padded, dim, queries, padded, scores, padded,
        );
        softmax_scores::<FMA, AVX512>(scores, padded, len, heads.window);
        // context [len, dim] = P [len, len] · V [len, dim]
        product::<FMA, AVX512>(
            scores,
            padded,
            v,
            stride,
            len,
            queries,
            dim,
            &mut context[head * dim..],
            hidden,
        );
    }
}

/// Each row of `scores` (`padded` wide, `len` keys) turned into attention
/// probabilities in place: a softmax over the keys in the row's window (all
/// of them without one), every other column 0. `AVX512` as in
/// [`attention_heads`].
#[inline(always)]
fn softmax_scores<const FMA: bool, const AVX512: bool>(
    scores: &mut [f32],
    padded: usize,
    len: usize,
    window: Option<usize>,
) {
    match window {
        None => {
            for row in scores.chunks_exact_mut(padded) {
                #[cfg(target_arch = "x86_64")]
                if AVX512 {
                    // SAFETY: AVX512 is set only by the caller compiled
                    // for (and dispatched on) AVX-512F.
                    unsafe { wide::softmax(row, len) };
                    continue;
                }
                softmax_in_place::<FMA>(&mut row[..len]);
            }
        }
        Some(window) => {
            // Keys outside the window get probability 0 (the product
            // below still reads them, as zeros).
            for (r, row) in scores.chunks_exact_mut(padded).enumerate() {
                let (lo, hi) = (r.saturating_sub(window), (r + window + 1).min(len));
                row[..lo].fill(0.0);
                row[hi..len].fill(0.0);
                softmax_in_place::<FMA>(&mut row[lo..hi]);
            }
        }
    }
}

/// `c[rows, cols] = a[rows, depth] · b[depth, cols]`, `cols` a multiple of
/// 16; each operand row-major with the given row stride.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn product<const FMA: bool, const AVX512: bool>(
    a: &[f32],
    a_row: usize,
    b: &[f32],
    b_row: usize,
    depth: usize,
    rows: usize,
    cols: usize,
    c: &mut [f32],
    c_row: usize,
) {
    debug_assert!(cols.is_multiple_of(TILE));
    // Two registers wide where the columns allow: 6 rows × 32 columns is 12
    // FMAs per 2 loads and 6 broadcasts, where 4 × 16 is 4 per 1 and 4.
    if cols.is_multiple_of(2 * TILE) {
        let mut r = 0;
        while r < rows {
            let n = (rows - r).min(6);
            for col in (0..cols).step_by(2 * TILE) {
                let (a, c) = (&a[r * a_row..], &mut c[r * c_row..]);
                #[cfg(target_arch = "x86_64")]
                if AVX512 {
                    // SAFETY: AVX512 is set only by the caller compiled for
                    // (and dispatched on) AVX-512F.
                    unsafe {
                        match n {
                            6 => wide::tile::<6>(a, a_row, b, b_row, depth, c, c_row, col),
                            5 => wide::tile::<5>(a, a_row, b, b_row, depth, c, c_row, col),
                            4 => wide::tile::<4>(a, a_row, b, b_row, depth, c, c_row, col),
                            3 => wide::tile::<3>(a, a_row, b, b_row, depth, c, c_row, col),
                            2 => wide::tile::<2>(a, a_row, b, b_row, depth, c, c_row, col),
                            _ => wide::tile::<1>(a, a_row, b, b_row, depth, c, c_row, col),
                        }
                    }
                    continue;
                }
                match n {
                    6 => tile::<6, 32, FMA>(a, a_row, b, b_row, depth, c, c_row, col),
                    5 => tile::<5, 32, FMA>(a, a_row, b, b_row, depth, c, c_row, col),
                    4 => tile::<4, 32, FMA>(a, a_row, b, b_row, depth, c, c_row, col),
                    3 => tile::<3, 32, FMA>(a, a_row, b, b_row, depth, c, c_row, col),
                    2 => tile::<2, 32, FMA>(a, a_row, b, b_row, depth, c, c_row, col),
                    _ => tile::<1, 32, FMA>(a, a_row, b, b_row, depth, c, c_row, col),
                }
            }
            r += n;
        }
        return;
    }
    let mut r = 0;
    while r < rows {
        let n = (rows - r).min(4);
        for col in (0..cols).step_by(TILE) {
            let (a, c) = (&a[r * a_row..], &mut c[r * c_row..]);
            match n {
                4 => tile::<4, 16, FMA>(a, a_row, b, b_row, depth, c, c_row, col),
                3 => tile::<3, 16, FMA>(a, a_row, b, b_row, depth, c, c_row, col),
                2 => tile::<2, 16, FMA>(a, a_row, b, b_row, depth, c, c_row, col),
                _ => tile::<1, 16, FMA>(a, a_row, b, b_row, depth, c, c_row, col),
            }
        }
        r += n;
    }
}

/// `R` rows × `W` columns of a product, accumulated in registers.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile<const R: usize, const W: usize, const FMA: bool>(
    a: &[f32],
    a_row: usize,
    b: &[f32],
    b_row: usize,
    depth: usize,
    c: &mut [f32],
    c_row: usize,
    col: usize,
) {
    // One bounds check per operand up front, none in the loop.
    let a = &a[..(R - 1) * a_row + depth];
    let b = &b[..(depth - 1) * b_row + col + W];
    let mut acc = [[0f32; W]; R];
    for p in 0..depth {
        // SAFETY: p < depth and r < R, so every index is below the lengths
        // the two slices were just cut to.
        let (bv, av): (&[f32; W], [f32; R]) = unsafe {
            (
                &*b.as_ptr().add(p * b_row + col).cast::<[f32; W]>(),
                std::array::from_fn(|r| *a.get_unchecked(r * a_row + p)),
            )
        };
        for (acc, av) in acc.iter_mut().zip(av) {
            for (acc, &bv) in acc.iter_mut().zip(bv) {
                *acc = if FMA {
                    av.mul_add(bv, *acc)
                } else {
                    *acc + av * bv
                };
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        c[r * c_row + col..][..W].copy_from_slice(acc);
    }
}

/// The attention products' 32-column tile in AVX-512 intrinsics: the
/// portable tile's `[f32; 32]` rows compile to split loads and inserts.
#[cfg(target_arch = "x86_64")]
mod wide {
    use std::arch::x86_64::*;

    /// Softmax of `row[..len]` in AVX-512, the columns after `len` set to
    /// 0: the portable softmax's arithmetic (the same `exp`, operation for
    /// operation) in whole registers, the last one masked. The compiler
    /// leaves the portable one's `f32::max` (NaN rules) and tails scalar,
    /// which made softmax 40% of attention.
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn softmax(row: &mut [f32], len: usize) {
        const LOG2E: f32 = std::f32::consts::LOG2_E;
        const LN2_HI: f32 = 0.693_359_4;
        const LN2_LO: f32 = -2.121_944_4e-4;
        const ROUND: f32 = 12_582_912.0;
        assert!(len <= row.len() && len > 0);
        let p = row.as_mut_ptr();
        let mask = |i: usize| -> __mmask16 {
            let left = len - i;
            if left >= 16 {
                0xffff
            } else {
                (1u16 << left) - 1
            }
        };
        // SAFETY (every access below): lane j of the register at column i
        // is read or written only where mask(i) has bit j, i.e. i + j < len.
        unsafe {
            let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
            for i in (0..len).step_by(16) {
                let v = _mm512_mask_loadu_ps(max, mask(i), p.add(i));
                max = _mm512_max_ps(max, v);
            }
            let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
            let (lo, hi) = (_mm512_set1_ps(-87.0), _mm512_set1_ps(88.0));
            let mut total = _mm512_setzero_ps();
            for i in (0..len).step_by(16) {
                let m = mask(i);
                let v = _mm512_maskz_loadu_ps(m, p.add(i));
                // max(lo, x) then min(hi, ·): a NaN stays NaN, as in clamp.
                let x = _mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_sub_ps(v, max)));
                let shifted = _mm512_add_ps(
                    _mm512_mul_ps(x, _mm512_set1_ps(LOG2E)),
                    _mm512_set1_ps(ROUND),
                );
                let n = _mm512_sub_ps(shifted, _mm512_set1_ps(ROUND));
                let r = _mm512_sub_ps(
                    _mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(LN2_HI))),
                    _mm512_mul_ps(n, _mm512_set1_ps(LN2_LO)),
                );
                let mut poly = _mm512_set1_ps(1.0 / 720.0);
                for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
                    poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(c));
                }
                let bits = _mm512_sub_epi32(
                    _mm512_castps_si512(shifted),
                    _mm512_set1_epi32(ROUND.to_bits() as i32),
                );
                let scale = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
                    bits,
                    _mm512_set1_epi32(127),
                )));
                let e = _mm512_maskz_mov_ps(m, _mm512_mul_ps(poly, scale));
                total = _mm512_add_ps(total, e);
                _mm512_mask_storeu_ps(p.add(i), m, e);
            }
            let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(total));
            for i in (0..len).step_by(16) {
                let m = mask(i);
                let v = _mm512_maskz_loadu_ps(m, p.add(i));
                _mm512_mask_storeu_ps(p.add(i), m, _mm512_mul_ps(v, inv));
            }
        }
        row[len..].fill(0.0);
    }

    /// `R` rows × 32 columns of `a · b`, as the portable `tile`.
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn tile<const R: usize>(
        a: &[f32],
        a_row: usize,
        b: &[f32],
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
                let (b0, b1) = (_mm512_loadu_ps(row), _mm512_loadu_ps(row.add(16)));
                for r in 0..R {
                    let av = _mm512_set1_ps(*a.get_unchecked(r * a_row + p));
                    lo[r] = _mm512_fmadd_ps(av, b0, lo[r]);
                    hi[r] = _mm512_fmadd_ps(av, b1, hi[r]);
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

#[inline(always)]
fn softmax_in_place<const FMA: bool>(row: &mut [f32]) {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let mut max = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = a.max(v);
        }
    }
    max = acc.iter().fold(max, |m, &v| m.max(v));
    for v in row.iter_mut() {
        *v = exp::<FMA>(*v - max);
    }
    let inv = 1.0 / sum(row);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_moves_every_element_once() {
        // Ragged against the 32-wide blocks in both directions, and a
        // single row and column.
        for (rows, cols) in [(1, 1), (1, 70), (70, 1), (33, 65), (64, 96), (100, 37)] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let t = transpose(&src, rows, cols);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        t[c * rows + r],
                        src[r * cols + c],
                        "{rows}x{cols} ({r}, {c})"
                    );
                }
            }
            assert_eq!(transpose(&t, cols, rows), src, "{rows}x{cols} twice");
        }
    }

    #[test]
    fn exp_is_accurate_over_the_softmax_range() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 + i as f32 * (87.0 + 10.0) / 200_000.0;
            let want = (x as f64).exp();
            let rel = ((exp::<false>(x) as f64 - want) / want).abs();
            let fused = ((exp::<true>(x) as f64 - want) / want).abs();
            worst = worst.max(rel).max(fused);
        }
        assert!(worst < 3e-7, "worst relative error {worst:e}");
        // Far below the range: the smallest value it keeps, never NaN or negative.
        assert!((0.0..2e-38).contains(&exp::<false>(-1000.0)));
        assert!(exp::<false>(1000.0).is_finite());
    }

    /// erf in f64: its Taylor series up to 3 (where it converges fast),
    /// 1 − erfc by erfc's continued fraction beyond.
    fn erf_reference(x: f64) -> f64 {
        let a = x.abs();
        let value = if a <= 3.0 {
            let (mut term, mut total) = (a, a);
            for n in 1..200 {
                term *= -a * a / n as f64;
                total += term / (2 * n + 1) as f64;
            }
            total * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let mut fraction = a;
            for n in (1..200).rev() {
                fraction = a + (n as f64 / 2.0) / fraction;
            }
            1.0 - (-a * a).exp() / (std::f64::consts::PI.sqrt() * fraction)
        };
        value.copysign(x)
    }

    #[test]
    fn erf_and_tanh_are_accurate() {
        let mut worst = 0f64;
        for i in -12_000..=12_000 {
            let x = i as f32 / 2000.0;
            let want = erf_reference(x as f64);
            for (fused, got) in [(false, erf::<false>(x)), (true, erf::<true>(x))] {
                let e = (got as f64 - want).abs();
                worst = worst.max(e);
                // 2.4e-8 from the approximation, the rest f32 rounding.
                assert!(e < 4e-7, "erf({x}), fused {fused}: error {e:e}");
            }
            if x.abs() <= 3.0 {
                let t = (tanh::<false>(x) as f64 - (x as f64).tanh()).abs();
                assert!(t < 3e-7, "tanh({x}): error {t:e}");
            }
        }
        println!("erf: worst |error| {worst:e} over [-6, 6]");
        assert_eq!(erf::<false>(9.0), 1.0);
        assert_eq!(erf::<false>(-9.0), -1.0);
        assert_eq!(erf::<true>(f32::MAX), 1.0);
        assert_eq!(erf::<false>(0.0), 0.0);
        assert_eq!(tanh::<false>(50.0), 1.0);
    }

    #[test]
    fn matmul_reads_strided_views() {
        // lhs [2, 3], rhs given transposed as [2 (n), 3 (k)].
        let lhs = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let rhs_t = [1.0, 0.0, 1.0, 0.5, 0.5, 0.5];
        let mut dst = [0f32; 2 * 4];
        matmul(
            &mut dst,
            4,
            View::rows(&lhs, 2, 3),
            View::rows(&rhs_t, 2, 3).t(),
        );
        assert_eq!(&dst[..2], &[4.0, 3.0]);
        assert_eq!(&dst[4..6], &[10.0, 7.5]);
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn matmul_refuses_a_view_past_its_slice() {
        let data = [0f32; 5];
        let mut dst = [0f32; 4];
        matmul(
            &mut dst,
            2,
            View::rows(&data, 2, 3),
            View::rows(&data, 3, 2),
        );
    }

    #[test]
    fn attention_of_an_empty_sequence_writes_nothing() {
        let heads = Heads {
            count: 2,
            dim: 16,
            len: 0,
            queries: 0,
            window: None,
        };
        let mut context = vec![7f32; 32];
        attention(&[], heads, &mut context, &mut AttentionScratch::default());
        assert!(context.iter().all(|&v| v == 7.0));
    }

    #[test]
    fn attention_matches_its_definition_on_every_path() {
        let (count, dim) = (3, 32);
        let hidden = count * dim;
        for (len, window) in [1usize, 5, 33, 70]
            .into_iter()
            .flat_map(|len| [(len, None), (len, Some(3))])
        {
            let qkv: Vec<f32> = (0..len * 3 * hidden)
                .map(|i| (((i * 7919) % 251) as f32 - 125.0) * 0.004)
                .collect();
            let heads = Heads {
                count,
                dim,
                len,
                queries: len,
                window,
            };
            let mut fast = vec![0f32; len * hidden];
            attention(&qkv, heads, &mut fast, &mut AttentionScratch::default());
            let mut plain = vec![0f32; len * hidden];
            let mut scratch = AttentionScratch::default();
            let padded = len.div_ceil(32) * 32;
            grow(&mut scratch.keys_t, dim * padded);
            grow(&mut scratch.scores, len * padded);
            attention_heads::<false, false>(&qkv, heads, &mut plain, &mut scratch);
            // The last layer's form: only the first token attends.
            let mut first = vec![0f32; len * hidden];
            let cls = Heads {
                queries: 1,
                ..heads
            };
            attention(&qkv, cls, &mut first, &mut AttentionScratch::default());
            let at = |row: usize, col: usize| qkv[row * 3 * hidden + col] as f64;
            for head in 0..count {
                for i in 0..len {
                    let seen = |j: usize| window.is_none_or(|w| i.abs_diff(j) <= w);
                    let logits: Vec<f64> = (0..len)
                        .map(|j| match seen(j) {
                            true => (0..dim)
                                .map(|c| at(i, head * dim + c) * at(j, hidden + head * dim + c))
                                .sum(),
                            false => f64::NEG_INFINITY,
                        })
                        .collect();
                    let max = logits.iter().cloned().fold(f64::MIN, f64::max);
                    let z: f64 = logits.iter().map(|l| (l - max).exp()).sum();
                    for c in 0..dim {
                        let want: f64 = (0..len)
                            .map(|j| {
                                (logits[j] - max).exp() / z * at(j, 2 * hidden + head * dim + c)
                            })
                            .sum();
                        let k = i * hidden + head * dim + c;
                        assert!(
                            (fast[k] as f64 - want).abs() < 1e-5,
                            "len {len}, window {window:?}: {} vs {want}",
                            fast[k]
                        );
                        assert!((plain[k] as f64 - want).abs() < 1e-5, "len {len} portable");
                        if i == 0 {
                            assert!(
                                (first[k] as f64 - want).abs() < 1e-5,
                                "len {len}, [CLS] alone"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn rotary_turns_each_query_and_key_pair_by_its_position() {
        let (count, dim, len) = (2, 4, 3);
        let hidden = count * dim;
        let mut qkv: Vec<f32> = (0..len * 3 * hidden).map(|i| i as f32 * 0.1).collect();
        let before = qkv.clone();
        let (cos, sin) = crate::encoder::rotary_table(10_000.0, dim, len);
        rotary(&mut qkv, len, count, dim, &cos, &sin);
        for p in 0..len {
            for part in 0..3 {
                for head in 0..count {
                    for i in 0..dim / 2 {
                        let at = |v: &[f32], c: usize| {
                            v[p * 3 * hidden + part * hidden + head * dim + c]
                        };
                        let (x, y) = (at(&before, i), at(&before, i + dim / 2));
                        let angle = p as f64 * 10_000f64.powf(-((2 * i) as f64) / dim as f64);
                        let (c, s) = (angle.cos() as f32, angle.sin() as f32);
                        let (want_x, want_y) = match part {
                            2 => (x, y), // values are not turned
                            _ => (x * c - y * s, y * c + x * s),
                        };
                        assert!((at(&qkv, i) - want_x).abs() < 1e-5, "{p} {part} {head} {i}");
                        assert!((at(&qkv, i + dim / 2) - want_y).abs() < 1e-5);
                    }
                }
            }
        }
    }

    #[test]
    fn gated_and_residual_passes_match_their_definitions() {
        let f = 20;
        let x: Vec<f32> = (0..2 * 2 * f).map(|i| (i as f32 - 40.0) * 0.07).collect();
        let bias: Vec<f32> = (0..2 * f).map(|i| i as f32 * 0.01).collect();
        let mut gated = vec![0f32; 2 * f];
        gated_activation(&x, &bias, Activation::GeluTanh, &mut gated);
        for r in 0..2 {
            for j in 0..f {
                let a = x[r * 2 * f + j] + bias[j];
                let g = x[r * 2 * f + f + j] + bias[f + j];
                let gelu = 0.5 * a * (1.0 + (0.797_884_6 * (a + 0.044_715 * a * a * a)).tanh());
                assert!((gated[r * f + j] - gelu * g).abs() < 1e-5);
            }
        }
        let mut hidden = vec![1f32; 2 * f];
        add_residual(&mut hidden, &gated, &bias[..f]);
        assert!((hidden[f + 3] - (1.0 + gated[f + 3] + bias[3])).abs() < 1e-6);
        let mut normed = vec![0f32; 2 * f];
        layer_norm_into(&hidden, &mut normed, &vec![1.0; f], &vec![0.0; f], 1e-5);
        let mean: f32 = normed[..f].iter().sum::<f32>() / f as f32;
        assert!(mean.abs() < 1e-5, "{mean}");
    }

    #[test]
    fn fused_passes_match_their_definitions() {
        let width = 40; // not a multiple of the lane count
        let x: Vec<f32> = (0..3 * width)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.3)
            .collect();
        let bias: Vec<f32> = (0..width).map(|i| i as f32 * 0.01).collect();
        let gamma: Vec<f32> = (0..width).map(|i| 1.0 + i as f32 * 0.02).collect();
        let beta: Vec<f32> = (0..width).map(|i| -0.1 * i as f32).collect();

        let mut gelu = x.clone();
        bias_activation(&mut gelu, &bias, Activation::GeluErf);
        for (i, g) in gelu.iter().enumerate() {
            let v = (x[i] + bias[i % width]) as f64;
            let want = 0.5 * v * (1.0 + erf_reference(v / 2f64.sqrt()));
            assert!((*g as f64 - want).abs() < 1e-5, "gelu({v})");
        }

        let mut hidden = x.clone();
        let mut out: Vec<f32> = x.iter().map(|v| v * 0.5).collect();
        residual_layer_norm(&mut hidden, &mut out, &bias, &gamma, &beta, 1e-12);
        for r in 0..3 {
            let v: Vec<f64> = (0..width)
                .map(|j| (x[r * width + j] * 1.5 + bias[j]) as f64)
                .collect();
            let mean = v.iter().sum::<f64>() / width as f64;
            let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / width as f64;
            for j in 0..width {
                let want = (v[j] - mean) / var.sqrt() * gamma[j] as f64 + beta[j] as f64;
                assert!((hidden[r * width + j] as f64 - want).abs() < 1e-4);
            }
        }

        let mut soft = x.clone();
        softmax_rows(&mut soft, width);
        for r in 0..3 {
            let row = &soft[r * width..(r + 1) * width];
            let total: f32 = row.iter().sum();
            assert!((total - 1.0).abs() < 1e-5);
            let max = x[r * width..(r + 1) * width]
                .iter()
                .cloned()
                .fold(f32::MIN, f32::max);
            let z: f64 = x[r * width..(r + 1) * width]
                .iter()
                .map(|v| ((v - max) as f64).exp())
                .sum();
            for j in 0..width {
                let want = ((x[r * width + j] - max) as f64).exp() / z;
                assert!((row[j] as f64 - want).abs() < 1e-6);
            }
        }
    }
}
