//! Integer linear layers: int8 weights per output channel, int8 activations
//! per row, products summed in i32.
//!
//! ```text
//! x [rows, in] f32 ─ per row: lo = min, sx = (max − lo)/255 ─▶ u8 = round((x − lo)/sx)
//! W [out, in] f32 ─ per channel: sw = max|w|/127 (at load) ─▶ i8, packed
//! y[r][o] = sw[o] · (sx[r] · Σk u8[r][k] · i8[o][k]  +  lo[r] · Σk i8[o][k])
//! ```
//!
//! The activations use all 256 levels over each row's own range: after GELU
//! a row is nearly all positive, and a symmetric code would waste half its
//! levels on values that never occur.
//!
//! The u8 × i8 form is what the CPU's integer matrix instructions multiply,
//! and the weights are packed once at load into their layout: blocks of 32
//! output columns, and for each group of 4 inputs, 32 × 4 consecutive bytes.
//! Four kernels, the best the CPU has chosen at start:
//!
//! * **AMX** (`tdpbusd`, Sapphire Rapids and later): a 16 × 16 tile of i32
//!   += 16 × 64 u8 · 64 × 16 i8 per instruction, 16 384 products;
//! * **AVX-512 VNNI** (`vpdpbusd`): 64 products into 16 lanes per
//!   instruction, four times an f32 FMA's 16;
//! * **AVX2** (`vpmaddwd` on operands widened to i16, then `vpaddd`): 16
//!   products into 8 lanes per pair of instructions, for the x86 CPUs
//!   with neither (Haswell to Ice Lake client, AMD Zen 1–3). It reads its
//!   own copy of the weights in i16, widened from the packed bytes on
//!   first use, because `vpmaddubsw`, the u8 × i8 instruction AVX2 has,
//!   saturates at 16 bits: 2 · 255 · 127 does not fit, so it would not
//!   compute the same integers;
//! * **portable** code for every other CPU (correct, much slower).
//!
//! `CE_INT8_KERNEL=amx|vnni|avx2|portable` forces one (falling back to the
//! next when the CPU lacks it), for comparisons; all four compute the same
//! integers.
//!
//! Per-row activation scales keep a token with large activations from
//! flattening every other token's precision; per-channel weight scales do
//! the same for output columns.
//!
//! Per-row scales cannot help a row whose range one *input channel*
//! dominates, and the residual stream of a BERT-like model has such
//! channels: in the default model the input of every feed-forward block
//! reaches |28| on one channel where the median channel's peak is ~2, so
//! that row's other channels keep a few levels each. [Smoothing]
//! (SmoothQuant, Xiao et al. 2023) moves that range into the weights: a
//! layer made by [`Int8Linear::quantize_smoothed`] multiplies input `k` by
//! `1/s[k]` before quantizing and its weight column `k` by `s[k]`, with
//! `s[k] = peak_x[k]^α / peak_w[k]^(1−α)` from the activations' peaks seen
//! on calibration text, so the product is the same and both operands are
//! flatter.
//!
//! [Smoothing]: Int8Linear::quantize_smoothed

use std::ops::Range;

/// Output columns per packed block: two AVX-512 registers of i32, or two
/// AMX tiles.
const COLS: usize = 32;
/// The packed depth is a multiple of this: one AMX tile row of bytes.
const DEPTH_STEP: usize = 64;
/// Rows per micro-tile: 8 rows × 2 registers = 16 accumulators.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const ROWS: usize = 8;
/// Rows quantized and multiplied per pass, so that their bytes stay in cache
/// while every column block reads them.
const ROW_BLOCK: usize = 192;
/// Quantized rows, in bytes, that go through every column block before the
/// next rows do: half the 48 KB L1 of the Xeons with AMX and of Zen 5, so
/// that those rows and one weight panel (12 KB at depth 384) stay in L1
/// across the column blocks, where a pass's rows (128 × 384 bytes in an
/// int8 shard) pushed each other out and every block reread them from L2.
/// (Zen 4's L1 is 32 KB: there the pair overflows it by a little.)
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const GROUP_BYTES: usize = 24 * 1024;

/// The order a kernel multiplies `rows` rows by `w`'s column blocks in:
/// (a group of rows, a column block), each group (whole micro-tiles of
/// `tile_rows`, about [`GROUP_BYTES`]) through every block before the next.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn passes(
    w: &Int8Linear,
    rows: usize,
    tile_rows: usize,
) -> impl Iterator<Item = (Range<usize>, usize)> {
    let group = (GROUP_BYTES / w.depth.max(1) / tile_rows).max(1) * tile_rows;
    let blocks = w.outputs.div_ceil(COLS);
    (0..rows)
        .step_by(group)
        .flat_map(move |g| (0..blocks).map(move |b| (g..(g + group).min(rows), b)))
}

/// Activation buffers reused across products.
#[derive(Debug, Default)]
pub struct Scratch {
    quantized: Vec<u8>,
    /// Per row: the step between levels.
    scales: Vec<f32>,
    /// Per row: the value level 0 stands for.
    lows: Vec<f32>,
    /// The AVX2 kernel's copy of `quantized`, zero-extended to i16.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    widened: Vec<i16>,
}

impl Int8Linear {
    /// Turns row `row`'s i32 sums for columns `o0..o0 + out.len()` into floats.
    #[inline(always)]
    fn dequantize(&self, sums: &[i32], scratch: &Scratch, row: usize, o0: usize, out: &mut [f32]) {
        let (sx, lo) = (scratch.scales[row], scratch.lows[row]);
        let n = out.len();
        let columns = self.scales[o0..o0 + n].iter().zip(&self.sums[o0..o0 + n]);
        for ((o, &acc), (sw, total)) in out.iter_mut().zip(&sums[..n]).zip(columns) {
            *o = sw * (acc as f32 * sx + lo * total);
        }
    }
}

/// A linear layer's weight in int8, packed for the integer GEMM.
#[derive(Debug)]
pub struct Int8Linear {
    outputs: usize,
    inputs: usize,
    /// `inputs` rounded up to a multiple of [`DEPTH_STEP`] (zeros beyond).
    depth: usize,
    /// `[out / COLS][depth / 4][COLS][4]` signed bytes (padding is 0).
    packed: Vec<i8>,
    /// Per output column: the weight scale.
    scales: Vec<f32>,
    /// Per output column: `Σk w[o][k]` of the quantized weight, what each
    /// row's offset `lo` multiplies.
    sums: Vec<f32>,
    /// `packed` sign-extended for the AVX2 kernel, `[out / COLS][depth /
    /// 2][COLS][2]`; made on the first product that needs it, so the
    /// other kernels never hold it.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    widened: std::sync::OnceLock<Vec<i16>>,
    /// Per input: `1/s[k]`, what a smoothed layer multiplies activation
    /// `k` by before quantizing it (`None`: not smoothed).
    input_scales: Option<Vec<f32>>,
}

/// SmoothQuant's migration strength: how much of an input channel's range
/// moves into the weights. Measured on the default model with the
/// built-in calibration text (`ce-engine-bench --dtypes i8 --fidelity`,
/// Kendall τ vs f32, mean / worst batch): 0.5 → 0.960 / 0.948, 0.65 →
/// 0.962 / 0.955, 0.8 → 0.961 / 0.953; unsmoothed 0.923 / 0.905.
pub const SMOOTHING_ALPHA: f32 = 0.65;

/// A product is smoothed only where calibration found outlier channels:
/// its largest input peak at least this many times its median channel's
/// ([`has_outlier_channels`]). Where there are none, smoothing has nothing
/// to absorb and only spreads the weights' range: measured on a
/// random-weight Qwen3 at Qwen3-Reranker-0.6B's size (max / median 1.8–2.6
/// in every layer), smoothing its two residual-stream products raised
/// i8's mean |Δ| vs f32 from 0.61 to 0.97 (256 pairs of the standard
/// workload). The products it helps are far above: the default model's
/// 3.4–5.8 (Q K V) and 15–21 (the feed-forward input), and 20–38 in the
/// Qwen3 fixture with outlier channels (`decoder_int8_smoothing_absorbs_outlier_channels`).
/// Between the two the evidence is mixed: a random-weight ELECTRA-base's
/// ratios grow with depth from 1.9 to 6.3, and smoothing its layers above
/// 3 raised its Kendall τ vs f32 (0.75 → 0.77) and its mean |Δ| (0.007 →
/// 0.014) alike.
pub const OUTLIER_RATIO: f32 = 3.0;

/// Whether `activation_peaks` (one per input channel, from calibration)
/// have outlier channels worth smoothing: see [`OUTLIER_RATIO`]. Peaks
/// that are all zero, or not numbers, have none.
pub fn has_outlier_channels(activation_peaks: &[f32]) -> bool {
    let mut sorted: Vec<f32> = activation_peaks.to_vec();
    sorted.sort_by(f32::total_cmp);
    match (sorted.get(sorted.len() / 2), sorted.last()) {
        (Some(&median), Some(&max)) => max >= OUTLIER_RATIO * median && max > 0.0,
        _ => false,
    }
}

/// Smoothing factors stay within this factor of 1 either way: a channel
/// the calibration never saw (peak 0) or a column of zero weights would
/// otherwise ask for an unbounded one.
const SMOOTHING_BOUND: f32 = 100.0;

impl Int8Linear {
    /// Quantizes a row-major `[outputs, inputs]` f32 weight.
    pub fn quantize(weight: &[f32], outputs: usize, inputs: usize) -> Self {
        Self::quantize_packed(weight, outputs, inputs, None)
    }

    /// Quantizes a row-major `[outputs, inputs]` f32 weight smoothed for
    /// activations whose input `k` reached `±activation_peaks[k]` (module
    /// docs): the products are the same as [`Int8Linear::quantize`]'s up
    /// to rounding, with less of it where a few inputs are far larger than
    /// the rest.
    pub fn quantize_smoothed(
        weight: &[f32],
        outputs: usize,
        inputs: usize,
        activation_peaks: &[f32],
    ) -> Self {
        assert_eq!(weight.len(), outputs * inputs, "weight shape");
        assert_eq!(activation_peaks.len(), inputs, "one peak per input");
        let mut weight_peaks = vec![0f32; inputs];
        for row in weight.chunks_exact(inputs) {
            for (peak, w) in weight_peaks.iter_mut().zip(row) {
                *peak = peak.max(w.abs());
            }
        }
        let factors: Vec<f32> = activation_peaks
            .iter()
            .zip(&weight_peaks)
            .map(|(&x, &w)| {
                let s = x.powf(SMOOTHING_ALPHA) / w.powf(1.0 - SMOOTHING_ALPHA);
                match s.is_finite() && s > 0.0 {
                    true => s.clamp(1.0 / SMOOTHING_BOUND, SMOOTHING_BOUND),
                    false => 1.0,
                }
            })
            .collect();
        let smoothed: Vec<f32> = weight
            .chunks_exact(inputs)
            .flat_map(|row| row.iter().zip(&factors).map(|(w, s)| w * s))
            .collect();
        let input_scales = factors.iter().map(|s| 1.0 / s).collect();
        Self::quantize_packed(&smoothed, outputs, inputs, Some(input_scales))
    }

    /// Whether its inputs are scaled as they are quantized (smoothed).
    pub fn is_smoothed(&self) -> bool {
        self.input_scales.is_some()
    }

    fn quantize_packed(
        weight: &[f32],
        outputs: usize,
        inputs: usize,
        input_scales: Option<Vec<f32>>,
    ) -> Self {
        assert_eq!(weight.len(), outputs * inputs, "weight shape");
        let depth = inputs.div_ceil(DEPTH_STEP) * DEPTH_STEP;
        let blocks = outputs.div_ceil(COLS);
        let mut packed = vec![0i8; blocks * depth * COLS];
        let mut scales = vec![0f32; outputs];
        let mut sums = vec![0f32; outputs];
        for o in 0..outputs {
            let row = &weight[o * inputs..(o + 1) * inputs];
            let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
            scales[o] = scale;
            let (block, col) = (o / COLS, o % COLS);
            let mut total = 0i32;
            for (k, &v) in row.iter().enumerate() {
                let q = (v / scale).round().clamp(-127.0, 127.0) as i8;
                total += q as i32;
                packed[(block * depth / 4 + k / 4) * COLS * 4 + col * 4 + k % 4] = q;
            }
            sums[o] = total as f32;
        }
        Self {
            outputs,
            inputs,
            depth,
            packed,
            scales,
            sums,
            widened: std::sync::OnceLock::new(),
            input_scales,
        }
    }

    /// The weights as the AVX2 kernel reads them: each group of 4 depths
    /// of a column becomes two groups of 2, in i16.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn widened_weights(&self) -> &[i16] {
        self.widened.get_or_init(|| {
            let mut wide = vec![0i16; self.packed.len()];
            let quads = self.depth / 4;
            for (q, group) in self.packed.chunks_exact(COLS * 4).enumerate() {
                let (block, quad) = (q / quads, q % quads);
                for (col, bytes) in group.chunks_exact(4).enumerate() {
                    for (j, &b) in bytes.iter().enumerate() {
                        let pair = block * quads * 2 + quad * 2 + j / 2;
                        wide[pair * COLS * 2 + col * 2 + j % 2] = b as i16;
                    }
                }
            }
            wide
        })
    }

    /// `dst[rows, outputs] = x[rows, inputs] · Wᵀ` (no bias).
    pub fn product(&self, x: &[f32], rows: usize, dst: &mut [f32], scratch: &mut Scratch) {
        assert!(x.len() >= rows * self.inputs, "input too small");
        assert!(dst.len() >= rows * self.outputs, "destination too small");
        for start in (0..rows).step_by(ROW_BLOCK) {
            let n = ROW_BLOCK.min(rows - start);
            let x = &x[start * self.inputs..(start + n) * self.inputs];
            let dst = &mut dst[start * self.outputs..(start + n) * self.outputs];
            super::profile::timed(super::profile::Stage::Quantize, || {
                self.quantize_rows(x, n, scratch)
            });
            match kernel() {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `kernel()` chose AMX only after the CPU reported
                // it and the kernel granted this process the tile state;
                // `quantize_rows` sized the scratch for `n` rows.
                Kernel::Amx => unsafe { amx::block(self, n, scratch, dst) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `kernel()` chose VNNI only where the CPU has the
                // features `vnni::block` is compiled for.
                Kernel::Vnni => unsafe { vnni::block(self, n, scratch, dst) },
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => {
                    widen_activations(&mut scratch.widened, &scratch.quantized[..n * self.depth]);
                    // SAFETY: `kernel()` chose AVX2 only where the CPU has it;
                    // the widened rows are the `n` quantized ones.
                    unsafe { avx2::block(self, n, scratch, dst) }
                }
                _ => self.block_portable(n, scratch, dst),
            }
        }
    }

    /// Rounds `rows` rows of `x` to u8 with one scale per row; the rows
    /// are padded with zeros (128) to a whole number of AMX tile pairs.
    fn quantize_rows(&self, x: &[f32], rows: usize, scratch: &mut Scratch) {
        scratch.quantized.clear();
        scratch
            .quantized
            .resize(rows.div_ceil(amx::ROWS) * amx::ROWS * self.depth, 128);
        scratch.scales.clear();
        scratch.scales.resize(rows, 0.0);
        scratch.lows.clear();
        scratch.lows.resize(rows, 0.0);
        quantize_activations(
            x,
            self.inputs,
            self.depth,
            self.input_scales.as_deref(),
            &mut scratch.quantized,
            &mut scratch.scales,
            &mut scratch.lows,
        );
    }

    fn block_portable(&self, rows: usize, scratch: &Scratch, dst: &mut [f32]) {
        let quads = self.depth / 4;
        let mut sums = vec![0i32; self.outputs];
        for r in 0..rows {
            let a = &scratch.quantized[r * self.depth..(r + 1) * self.depth];
            for (o, total) in sums.iter_mut().enumerate() {
                let (block, col) = (o / COLS, o % COLS);
                let mut acc = 0i32;
                for q in 0..quads {
                    let b = &self.packed[(block * quads + q) * COLS * 4 + col * 4..][..4];
                    for j in 0..4 {
                        acc += a[q * 4 + j] as i32 * b[j] as i32;
                    }
                }
                *total = acc;
            }
            self.dequantize(
                &sums,
                scratch,
                r,
                0,
                &mut dst[r * self.outputs..(r + 1) * self.outputs],
            );
        }
    }
}

/// The integer kernel in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Intel AMX tiles.
    Amx,
    /// AVX-512 VNNI.
    Vnni,
    /// AVX2 on operands widened to i16.
    Avx2,
    /// Plain Rust.
    Portable,
}

impl Kernel {
    /// Its name, as `CE_INT8_KERNEL` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kernel::Amx => "amx",
            Kernel::Vnni => "vnni",
            Kernel::Avx2 => "avx2",
            Kernel::Portable => "portable",
        }
    }

    /// Whether this CPU (and, for AMX, the OS) runs it.
    fn available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Amx => amx::available(),
            #[cfg(target_arch = "x86_64")]
            Kernel::Vnni => vnni::available(),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => avx2::available(),
            Kernel::Portable => true,
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// The fastest kernel this CPU and OS run, chosen once per process
/// (`CE_INT8_KERNEL` may ask for a slower one).
pub fn kernel() -> Kernel {
    static CHOSEN: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
    *CHOSEN.get_or_init(|| {
        // Fastest first; a forced kernel starts the search at its place.
        const BY_SPEED: [Kernel; 4] = [Kernel::Amx, Kernel::Vnni, Kernel::Avx2, Kernel::Portable];
        let wanted = std::env::var("CE_INT8_KERNEL").unwrap_or_default();
        let from = BY_SPEED
            .iter()
            .position(|k| k.as_str() == wanted)
            .unwrap_or(0);
        BY_SPEED[from..]
            .iter()
            .copied()
            .find(|k| k.available())
            .unwrap_or(Kernel::Portable)
    })
}

/// Whether int8 encoders and decoders are smoothed (module docs): yes, unless
/// `CE_I8_SMOOTHING=off` (for comparisons).
pub fn smoothing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| !matches!(std::env::var("CE_I8_SMOOTHING").as_deref(), Ok("off")))
}

/// `wide[i] = narrow[i]` (the AVX2 kernel's activations).
#[cfg(target_arch = "x86_64")]
fn widen_activations(wide: &mut Vec<i16>, narrow: &[u8]) {
    wide.clear();
    wide.extend(narrow.iter().map(|&b| b as i16));
}

/// Per row: lo = min, scale = (max − lo) / 255, u8 = round((x − lo) /
/// scale), of `x` times `input_scales` where the layer is smoothed; the
/// first `inputs` bytes of each `depth`-byte row of `out`.
fn quantize_activations(
    x: &[f32],
    inputs: usize,
    depth: usize,
    input_scales: Option<&[f32]>,
    out: &mut [u8],
    scales: &mut [f32],
    lows: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    let avx512 = std::arch::is_x86_feature_detected!("avx512f");
    let rows = x.chunks_exact(inputs).zip(out.chunks_exact_mut(depth));
    for ((row, q), (scale, low)) in rows.zip(scales.iter_mut().zip(lows.iter_mut())) {
        let q = &mut q[..inputs];
        #[cfg(target_arch = "x86_64")]
        if avx512 {
            // SAFETY: the CPU has AVX-512F.
            (*scale, *low) = unsafe { quantize_avx512::row_to_levels(row, input_scales, q) };
            continue;
        }
        let mut levels = (0.0, 0.0);
        row_to_levels_portable(row, input_scales, q, &mut levels);
        (*scale, *low) = levels;
    }
}

/// Adding 1.5 · 2^23 rounds a float in [0, 2^22) to the nearest integer
/// (ties to even) in its low mantissa bits.
const ROUND: f32 = 12_582_912.0;

/// [`quantize_activations`] in AVX-512, the same bytes, scales and lows:
/// the same operations in the same order on 16 floats at a time. The
/// compiler's vectorization of the portable loop kept each min and max
/// NaN-exact (three instructions each, and a check per 64 floats) and
/// reduced each row's sixteen lanes in a chain of scalar operations.
#[cfg(target_arch = "x86_64")]
mod quantize_avx512 {
    use std::arch::x86_64::*;

    use super::ROUND;

    /// The lanes of `mask` from `row[i..]`, times `input_scales[i..]`
    /// where given; 0 elsewhere.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load(row: &[f32], input_scales: Option<&[f32]>, i: usize, mask: __mmask16) -> __m512 {
        // SAFETY: the masked lanes lie inside `row` (and the scales, as
        // long as `row`): the caller's masks stop at its end.
        unsafe {
            let v = _mm512_maskz_loadu_ps(mask, row.as_ptr().add(i));
            match input_scales {
                Some(m) => _mm512_mul_ps(v, _mm512_maskz_loadu_ps(mask, m.as_ptr().add(i))),
                None => v,
            }
        }
    }

    /// The lanes of 16 floats from `i` that lie inside `len`.
    #[inline]
    fn lanes(i: usize, len: usize) -> __mmask16 {
        match len - i {
            n if n >= 16 => 0xFFFF,
            n => ((1u32 << n) - 1) as __mmask16,
        }
    }

    /// One row's levels into `q` (as long as `row`); its (scale, lo).
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn row_to_levels(
        row: &[f32],
        input_scales: Option<&[f32]>,
        q: &mut [u8],
    ) -> (f32, f32) {
        assert!(row.len() == q.len() && input_scales.is_none_or(|m| m.len() >= row.len()));
        let len = row.len();
        // Four chains of each, so that a min waits for the one four back;
        // whole registers unmasked, the ragged end masked.
        let mut lo = [_mm512_set1_ps(f32::INFINITY); 4];
        let mut hi = [_mm512_set1_ps(f32::NEG_INFINITY); 4];
        let whole = len / 64 * 64;
        for i in (0..whole).step_by(64) {
            for c in 0..4 {
                let v = load(row, input_scales, i + 16 * c, 0xFFFF);
                // The new value first: vminps returns its second operand
                // where either is NaN, and f32::min ignores a NaN.
                lo[c] = _mm512_min_ps(v, lo[c]);
                hi[c] = _mm512_max_ps(v, hi[c]);
            }
        }
        for i in (whole..len).step_by(16) {
            let mask = lanes(i, len);
            let v = load(row, input_scales, i, mask);
            lo[0] = _mm512_mask_min_ps(lo[0], mask, v, lo[0]);
            hi[0] = _mm512_mask_max_ps(hi[0], mask, v, hi[0]);
        }
        let lo = _mm512_min_ps(_mm512_min_ps(lo[0], lo[1]), _mm512_min_ps(lo[2], lo[3]));
        let hi = _mm512_max_ps(_mm512_max_ps(hi[0], hi[1]), _mm512_max_ps(hi[2], hi[3]));
        let (lo, hi) = (_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi));
        let s = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
        let inv = 1.0 / s;
        let (lo_v, inv_v) = (_mm512_set1_ps(lo), _mm512_set1_ps(inv));
        let (round, bias) = (
            _mm512_set1_ps(ROUND),
            _mm512_set1_epi32(ROUND.to_bits() as i32),
        );
        let (zero, top) = (_mm512_setzero_si512(), _mm512_set1_epi32(255));
        for i in (0..len).step_by(16) {
            let mask = lanes(i, len);
            let t = _mm512_mul_ps(_mm512_sub_ps(load(row, input_scales, i, mask), lo_v), inv_v);
            // The portable rounding bit for bit (a NaN's level follows its
            // sign bit there, which a conversion instruction would not).
            let bits = _mm512_sub_epi32(_mm512_castps_si512(_mm512_add_ps(t, round)), bias);
            let levels = _mm512_min_epi32(_mm512_max_epi32(bits, zero), top);
            // SAFETY: the masked bytes lie inside `q`, as long as `row`.
            unsafe { _mm512_mask_cvtepi32_storeu_epi8(q.as_mut_ptr().add(i).cast(), mask, levels) };
        }
        (s, lo)
    }
}

super::kernels::vectorized! {
    /// One row's levels into `q` (as long as `row`); its (scale, lo) into
    /// `levels`. [`quantize_activations`] where the CPU has no AVX-512.
    fn row_to_levels_portable(
        row: &[f32],
        input_scales: Option<&[f32]>,
        q: &mut [u8],
        levels: &mut (f32, f32),
    ) {
        #[inline(always)]
        fn row_to_levels(values: impl Iterator<Item = f32> + Clone, q: &mut [u8]) -> (f32, f32) {
            let (lo, hi) = values
                .clone()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
            let s = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
            let inv = 1.0 / s;
            for (q, v) in q.iter_mut().zip(values) {
                let level = (((v - lo) * inv + ROUND).to_bits() as i32 - ROUND.to_bits() as i32).clamp(0, 255);
                *q = level as u8;
            }
            (s, lo)
        }
        *levels = match input_scales {
            Some(m) => row_to_levels(row.iter().zip(m).map(|(v, m)| v * m), q),
            None => row_to_levels(row.iter().copied(), q),
        };
    }
}

/// The SIMD kernels' epilogue, i32 sums to floats in registers: AVX-512 for
/// the VNNI and AMX kernels, AVX2 for the AVX2 kernel.
#[cfg(target_arch = "x86_64")]
mod epilogue {
    use std::arch::x86_64::*;

    use super::{COLS, Int8Linear};

    /// One packed block's column constants in registers, for the
    /// epilogue: [`Int8Linear::dequantize`]'s arithmetic, operation for
    /// operation (so the floats are the portable kernel's), sixteen columns
    /// per instruction. The scalar epilogue, through a stack copy of the
    /// sums, cost a sixth of the micro-kernel's time at depth 384.
    pub struct Columns {
        scales: [__m512; 2],
        sums: [__m512; 2],
        masks: [__mmask16; 2],
        cols: usize,
    }

    impl Columns {
        /// # Safety
        /// The CPU must have AVX-512F; `o0 + cols <= w.outputs`, `cols <= 32`.
        #[inline]
        #[target_feature(enable = "avx512f")]
        pub unsafe fn load(w: &Int8Linear, o0: usize, cols: usize) -> Self {
            assert!(cols <= COLS && o0 + cols <= w.outputs);
            let mask = |half: usize| -> __mmask16 {
                let n = cols.saturating_sub(half * 16).min(16);
                ((1u32 << n) - 1) as __mmask16
            };
            let masks = [mask(0), mask(1)];
            let (scales, sums) = (&w.scales[o0..o0 + cols], &w.sums[o0..o0 + cols]);
            // SAFETY: lane j of half h is read only where the mask has bit
            // j, i.e. 16h + j < cols, inside both slices; a pointer is
            // offset only where its half has columns.
            let half = |values: &[f32], h: usize| unsafe {
                if masks[h] == 0 {
                    _mm512_setzero_ps()
                } else {
                    _mm512_maskz_loadu_ps(masks[h], values.as_ptr().add(16 * h))
                }
            };
            Self {
                scales: [half(scales, 0), half(scales, 1)],
                sums: [half(sums, 0), half(sums, 1)],
                masks,
                cols,
            }
        }

        /// `out[c] = sw[c] · (acc[c] · sx + lo · Σw[c])` for the block's columns.
        ///
        /// # Safety
        /// The CPU must have AVX-512F; `out` holds the block's columns.
        #[inline]
        #[target_feature(enable = "avx512f")]
        pub unsafe fn dequantize(&self, acc: &[__m512i; 2], sx: f32, lo: f32, out: &mut [f32]) {
            assert!(out.len() >= self.cols);
            let (sx, lo) = (_mm512_set1_ps(sx), _mm512_set1_ps(lo));
            for (h, &acc) in acc.iter().enumerate().take(self.cols.div_ceil(16)) {
                let t = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), sx);
                let v = _mm512_mul_ps(
                    self.scales[h],
                    _mm512_add_ps(t, _mm512_mul_ps(lo, self.sums[h])),
                );
                // SAFETY: the mask covers only columns inside `out`.
                unsafe { _mm512_mask_storeu_ps(out.as_mut_ptr().add(16 * h), self.masks[h], v) };
            }
        }
    }

    /// Half a packed block's column constants (16 columns, two AVX2
    /// registers), for the AVX2 kernel's epilogue: the same arithmetic as
    /// [`Columns`].
    pub struct HalfColumns {
        scales: [__m256; 2],
        sums: [__m256; 2],
        masks: [__m256i; 2],
        cols: usize,
    }

    impl HalfColumns {
        /// # Safety
        /// The CPU must have AVX2; `o0 + cols <= w.outputs`, `cols <= 16`.
        #[inline]
        #[target_feature(enable = "avx2")]
        pub unsafe fn load(w: &Int8Linear, o0: usize, cols: usize) -> Self {
            assert!(cols <= COLS / 2 && o0 + cols <= w.outputs);
            let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let mask = |h: usize| {
                _mm256_cmpgt_epi32(_mm256_set1_epi32(cols.saturating_sub(8 * h) as i32), lanes)
            };
            let masks = [mask(0), mask(1)];
            let (scales, sums) = (&w.scales[o0..o0 + cols], &w.sums[o0..o0 + cols]);
            // SAFETY: lane j of half h is read only where its mask is set,
            // i.e. 8h + j < cols, inside both slices; a pointer is offset
            // only where its half has columns.
            let half = |values: &[f32], h: usize| unsafe {
                if cols <= 8 * h {
                    _mm256_setzero_ps()
                } else {
                    _mm256_maskload_ps(values.as_ptr().add(8 * h), masks[h])
                }
            };
            Self {
                scales: [half(scales, 0), half(scales, 1)],
                sums: [half(sums, 0), half(sums, 1)],
                masks,
                cols,
            }
        }

        /// `out[c] = sw[c] · (acc[c] · sx + lo · Σw[c])` for the half block's columns.
        ///
        /// # Safety
        /// The CPU must have AVX2.
        #[inline]
        #[target_feature(enable = "avx2")]
        pub unsafe fn dequantize(&self, acc: &[__m256i; 2], sx: f32, lo: f32, out: &mut [f32]) {
            assert!(out.len() >= self.cols);
            let (sx, lo) = (_mm256_set1_ps(sx), _mm256_set1_ps(lo));
            for (h, &acc) in acc.iter().enumerate().take(self.cols.div_ceil(8)) {
                let t = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), sx);
                let v = _mm256_mul_ps(
                    self.scales[h],
                    _mm256_add_ps(t, _mm256_mul_ps(lo, self.sums[h])),
                );
                // SAFETY: the mask covers only columns inside `out`.
                unsafe { _mm256_maskstore_ps(out.as_mut_ptr().add(8 * h), self.masks[h], v) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::epilogue::Columns;
    use super::{COLS, Int8Linear, ROWS, Scratch, passes};

    pub fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }

    /// Multiplies `rows` quantized rows by every column block.
    ///
    /// # Safety
    /// The CPU must have AVX-512F/BW/VNNI; `scratch` must hold `rows` rows
    /// of `w.depth` bytes and `dst` `rows × w.outputs` floats.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn block(w: &Int8Linear, rows: usize, scratch: &Scratch, dst: &mut [f32]) {
        assert!(scratch.quantized.len() >= rows * w.depth && dst.len() >= rows * w.outputs);
        let quads = w.depth / 4;
        for (group, block) in passes(w, rows, ROWS) {
            let panel = &w.packed[block * quads * COLS * 4..(block + 1) * quads * COLS * 4];
            let o0 = block * COLS;
            let cols = COLS.min(w.outputs - o0);
            // SAFETY: the CPU has AVX-512F; columns o0..o0 + cols exist.
            let columns = unsafe { Columns::load(w, o0, cols) };
            let mut r = group.start;
            while r < group.end {
                let n = ROWS.min(group.end - r);
                let mut acc = [[_mm512_setzero_si512(); 2]; ROWS];
                // SAFETY: rows r..r+n exist in the scratch (asserted above)
                // and the panel holds `quads` groups of 128 bytes.
                unsafe {
                    tile(
                        &scratch.quantized[r * w.depth..],
                        w.depth,
                        n,
                        panel,
                        quads,
                        &mut acc,
                    )
                };
                for (i, lanes) in acc.iter().enumerate().take(n) {
                    let row = r + i;
                    // SAFETY: the CPU has AVX-512F; `dst` holds the row's
                    // `cols` columns from `o0` (asserted above).
                    unsafe {
                        columns.dequantize(
                            lanes,
                            scratch.scales[row],
                            scratch.lows[row],
                            &mut dst[row * w.outputs + o0..][..cols],
                        )
                    };
                }
                r += n;
            }
        }
    }

    /// The micro-kernel: `n` (≤ ROWS) rows × 32 columns over the whole depth.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile(
        a: &[u8],
        depth: usize,
        n: usize,
        panel: &[i8],
        quads: usize,
        acc: &mut [[__m512i; 2]; ROWS],
    ) {
        assert!(a.len() >= (n - 1) * depth + quads * 4 && panel.len() >= quads * COLS * 4);
        let a = a.as_ptr();
        let b = panel.as_ptr();
        macro_rules! rows {
            ($count:literal) => {{
                let mut c = [[_mm512_setzero_si512(); 2]; $count];
                for q in 0..quads {
                    // SAFETY: q < quads and every row index < n were checked
                    // against the slices' lengths above.
                    unsafe {
                        let b0 = _mm512_loadu_si512(b.add(q * 128).cast());
                        let b1 = _mm512_loadu_si512(b.add(q * 128 + 64).cast());
                        for (i, ci) in c.iter_mut().enumerate() {
                            let v = _mm512_set1_epi32(
                                a.add(i * depth + q * 4).cast::<i32>().read_unaligned(),
                            );
                            ci[0] = _mm512_dpbusd_epi32(ci[0], v, b0);
                            ci[1] = _mm512_dpbusd_epi32(ci[1], v, b1);
                        }
                    }
                }
                acc[..$count].copy_from_slice(&c);
            }};
        }
        match n {
            8 => rows!(8),
            7 => rows!(7),
            6 => rows!(6),
            5 => rows!(5),
            4 => rows!(4),
            3 => rows!(3),
            2 => rows!(2),
            _ => rows!(1),
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::epilogue::HalfColumns;
    use super::{COLS, Int8Linear, Scratch};

    /// Rows per micro-tile: 6 rows × 2 registers of 8 i32 = 12 of the 16
    /// registers, leaving two for weights and one for the row's operand.
    const ROWS: usize = 6;
    /// Columns per micro-tile: half a packed block.
    const HALF: usize = COLS / 2;

    pub fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx2")
    }

    /// Multiplies `rows` widened rows by every column block.
    ///
    /// # Safety
    /// The CPU must have AVX2; `scratch.widened` must hold `rows` rows of
    /// `w.depth` values and `dst` `rows × w.outputs` floats.
    #[target_feature(enable = "avx2")]
    pub unsafe fn block(w: &Int8Linear, rows: usize, scratch: &Scratch, dst: &mut [f32]) {
        let a = &scratch.widened;
        assert!(a.len() >= rows * w.depth && dst.len() >= rows * w.outputs);
        let wide = w.widened_weights();
        let pairs = w.depth / 2;
        for block in 0..w.outputs.div_ceil(COLS) {
            let panel = &wide[block * pairs * COLS * 2..(block + 1) * pairs * COLS * 2];
            for half in 0..2 {
                let o0 = block * COLS + half * HALF;
                if o0 >= w.outputs {
                    break;
                }
                let cols = HALF.min(w.outputs - o0);
                // SAFETY: the CPU has AVX2; columns o0..o0 + cols exist.
                let columns = unsafe { HalfColumns::load(w, o0, cols) };
                let mut r = 0;
                while r < rows {
                    let n = ROWS.min(rows - r);
                    let mut acc = [[_mm256_setzero_si256(); 2]; ROWS];
                    // SAFETY: rows r..r+n exist in `a` (asserted above) and
                    // the panel holds `pairs` groups of 64 i16.
                    unsafe {
                        tile(
                            &a[r * w.depth..],
                            w.depth,
                            n,
                            &panel[half * HALF * 2..],
                            pairs,
                            &mut acc,
                        )
                    };
                    for (i, lanes) in acc.iter().enumerate().take(n) {
                        let row = r + i;
                        // SAFETY: the CPU has AVX2; `dst` holds the row's
                        // `cols` columns from `o0` (asserted above).
                        unsafe {
                            columns.dequantize(
                                lanes,
                                scratch.scales[row],
                                scratch.lows[row],
                                &mut dst[row * w.outputs + o0..][..cols],
                            )
                        };
                    }
                    r += n;
                }
            }
        }
    }

    /// The micro-kernel: `n` (≤ ROWS) rows × 16 columns over the whole
    /// depth; `panel` starts at the half block's first column.
    #[target_feature(enable = "avx2")]
    unsafe fn tile(
        a: &[i16],
        depth: usize,
        n: usize,
        panel: &[i16],
        pairs: usize,
        acc: &mut [[__m256i; 2]; ROWS],
    ) {
        assert!(a.len() >= (n - 1) * depth + pairs * 2);
        assert!(panel.len() >= (pairs - 1) * COLS * 2 + HALF * 2);
        let a = a.as_ptr();
        let b = panel.as_ptr();
        macro_rules! rows {
            ($count:literal) => {{
                let mut c = [[_mm256_setzero_si256(); 2]; $count];
                for p in 0..pairs {
                    // SAFETY: p < pairs and every row index < n were checked
                    // against the slices' lengths above.
                    unsafe {
                        let b0 = _mm256_loadu_si256(b.add(p * COLS * 2).cast());
                        let b1 = _mm256_loadu_si256(b.add(p * COLS * 2 + 16).cast());
                        for (i, ci) in c.iter_mut().enumerate() {
                            let v = _mm256_set1_epi32(
                                a.add(i * depth + p * 2).cast::<i32>().read_unaligned(),
                            );
                            ci[0] = _mm256_add_epi32(ci[0], _mm256_madd_epi16(v, b0));
                            ci[1] = _mm256_add_epi32(ci[1], _mm256_madd_epi16(v, b1));
                        }
                    }
                }
                acc[..$count].copy_from_slice(&c);
            }};
        }
        match n {
            6 => rows!(6),
            5 => rows!(5),
            4 => rows!(4),
            3 => rows!(3),
            2 => rows!(2),
            _ => rows!(1),
        }
    }
}

/// Intel AMX-INT8 (the tiles themselves: [`super::amx`]).
#[cfg(target_arch = "x86_64")]
mod amx {
    use std::arch::x86_64::_mm512_loadu_si512;

    use super::super::amx::Tiles;
    use super::super::amx::two_by_two::{self, Multiply};
    use super::epilogue::Columns;
    use super::{COLS, DEPTH_STEP, Int8Linear, Scratch, passes};

    /// Rows per pass: two A tiles of 16.
    pub const ROWS: usize = 32;

    /// Whether the CPU has AMX-INT8 and the process may use the tiles (and
    /// AVX-512F, which every AMX CPU has, for the epilogue).
    pub fn available() -> bool {
        super::super::amx::available(super::super::amx::Unit::Int8)
            && std::arch::is_x86_feature_detected!("avx512f")
    }

    /// Multiplies `rows` quantized rows by every column block.
    ///
    /// # Safety
    /// [`available`] must have returned true in this process; `scratch`
    /// must hold `rows` rounded up to [`ROWS`] rows of `w.depth` bytes, and
    /// `dst` `rows × w.outputs` floats.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn block(w: &Int8Linear, rows: usize, scratch: &Scratch, dst: &mut [f32]) {
        let padded_rows = rows.div_ceil(ROWS) * ROWS;
        assert!(scratch.quantized.len() >= padded_rows * w.depth && dst.len() >= rows * w.outputs);
        assert!(w.depth.is_multiple_of(DEPTH_STEP));
        let quads = w.depth / 4;
        let a_stride = w.depth;
        // Weights: 4 depths × 32 columns = 128 bytes per group of 4 depths.
        let b_stride = COLS * 4;
        let mut c = [0i32; ROWS * COLS];
        // SAFETY: the caller checked `available`.
        let _tiles = unsafe { Tiles::configure() };
        for (group, block) in passes(w, rows, ROWS) {
            let panel = &w.packed[block * quads * COLS * 4..(block + 1) * quads * COLS * 4];
            let o0 = block * COLS;
            let cols = COLS.min(w.outputs - o0);
            // SAFETY: `available` saw AVX-512F; columns o0..o0 + cols exist.
            let columns = unsafe { Columns::load(w, o0, cols) };
            for r in group.step_by(ROWS) {
                let a = &scratch.quantized[r * a_stride..(r + ROWS) * a_stride];
                for step in 0..w.depth / DEPTH_STEP {
                    // Each tile load reads 16 rows of 64 bytes: A rows
                    // r..r+32 (depths step*64..+64) and 16 groups of 4
                    // depths of the panel, all inside the slices above.
                    let a0 = a[step * DEPTH_STEP..].as_ptr();
                    let b0 = panel[step * 16 * b_stride..].as_ptr();
                    // SAFETY: the four loads stay inside `a` and `panel` (see
                    // above); the tiles were configured by ldtilecfg.
                    unsafe {
                        if step == 0 {
                            two_by_two::zero();
                        }
                        two_by_two::step(Multiply::Int8, true, a0, a_stride, b0.cast(), b_stride);
                    }
                }
                // SAFETY: `c` is 32 rows of 32 i32 (128 bytes a row).
                unsafe { two_by_two::store(true, c.as_mut_ptr().cast(), COLS * 4) };
                for i in 0..ROWS.min(rows - r) {
                    let row = r + i;
                    let sums = &c[i * COLS..(i + 1) * COLS];
                    // SAFETY: `available` saw AVX-512F; `sums` is 32 i32,
                    // two 64-byte loads; `dst` holds the row's columns.
                    unsafe {
                        let lanes = [
                            _mm512_loadu_si512(sums.as_ptr().cast()),
                            _mm512_loadu_si512(sums.as_ptr().add(16).cast()),
                        ];
                        columns.dequantize(
                            &lanes,
                            scratch.scales[row],
                            scratch.lows[row],
                            &mut dst[row * w.outputs + o0..][..cols],
                        );
                    }
                }
            }
        }
    }
}

/// Stand-ins where AMX cannot exist, so the row padding stays one rule.
#[cfg(not(target_arch = "x86_64"))]
mod amx {
    pub const ROWS: usize = 32;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_product_approximates_f32_on_every_path() {
        // Ragged everywhere; then the default model's width, with rows
        // enough for several AMX row groups and a ragged last one.
        for (rows, inputs, outputs) in [(21, 70, 45), (150, 384, 45)] {
            product_approximates_f32_on_every_path(rows, inputs, outputs);
        }
    }

    fn product_approximates_f32_on_every_path(rows: usize, inputs: usize, outputs: usize) {
        let w: Vec<f32> = (0..outputs * inputs)
            .map(|i| (((i * 7919) % 201) as f32 - 100.0) * 0.001)
            .collect();
        let x: Vec<f32> = (0..rows * inputs)
            .map(|i| (((i * 104_729) % 97) as f32 - 48.0) * 0.05)
            .collect();
        let lin = Int8Linear::quantize(&w, outputs, inputs);
        let mut got = vec![0f32; rows * outputs];
        let mut scratch = Scratch::default();
        lin.product(&x, rows, &mut got, &mut scratch);
        let mut portable = vec![0f32; rows * outputs];
        lin.quantize_rows(&x, rows, &mut scratch);
        lin.block_portable(rows, &scratch, &mut portable);
        #[cfg(target_arch = "x86_64")]
        {
            // Every kernel this CPU has computes the same integers.
            if vnni::available() {
                let mut v = vec![0f32; rows * outputs];
                unsafe { vnni::block(&lin, rows, &scratch, &mut v) };
                assert_eq!(v, portable, "vnni");
            }
            if amx::available() {
                let mut a = vec![0f32; rows * outputs];
                unsafe { amx::block(&lin, rows, &scratch, &mut a) };
                assert_eq!(a, portable, "amx");
            }
            if avx2::available() {
                let mut a = vec![0f32; rows * outputs];
                widen_activations(&mut scratch.widened, &scratch.quantized[..rows * lin.depth]);
                unsafe { avx2::block(&lin, rows, &scratch, &mut a) };
                assert_eq!(a, portable, "avx2");
            }
            println!("int8 kernel in use: {}", kernel().as_str());
        }
        for r in 0..rows {
            for o in 0..outputs {
                let want: f32 = (0..inputs)
                    .map(|k| x[r * inputs + k] * w[o * inputs + k])
                    .sum();
                let g = got[r * outputs + o];
                assert!(
                    (g - want).abs() < 0.02 + 0.01 * want.abs(),
                    "({r},{o}): {g} vs {want}"
                );
                // The SIMD and portable paths compute the same integers.
                assert!((g - portable[r * outputs + o]).abs() <= 1e-5 * (1.0 + want.abs()));
            }
        }
    }

    /// The AVX-512 quantization writes the portable one's bytes, scales
    /// and lows: ragged widths, smoothing or not, a constant row, a NaN,
    /// signed zeros and infinities.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_quantization_is_the_portable_one() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        for inputs in [1usize, 15, 16, 17, 70, 384, 1536] {
            let depth = inputs.div_ceil(DEPTH_STEP) * DEPTH_STEP;
            let rows = 6;
            let mut x: Vec<f32> = (0..rows * inputs)
                .map(|i| (((i * 7919) % 211) as f32 - 105.0) * 0.037)
                .collect();
            x[inputs..2 * inputs].fill(0.75); // constant
            // NaNs first and last: the last one meets the end of a chain.
            x[2 * inputs] = f32::NAN;
            x[3 * inputs - 1] = f32::NAN;
            x[3 * inputs] = -0.0;
            x[4 * inputs] = f32::INFINITY;
            x[5 * inputs..6 * inputs].fill(-0.0);
            let smoothing: Vec<f32> = (0..inputs).map(|k| 0.5 + (k % 7) as f32 * 0.25).collect();
            for input_scales in [None, Some(&smoothing[..])] {
                let run = |simd: bool| {
                    let mut q = vec![7u8; rows * depth];
                    let mut levels = Vec::new();
                    for (row, q) in x.chunks_exact(inputs).zip(q.chunks_exact_mut(depth)) {
                        let q = &mut q[..inputs];
                        levels.push(match simd {
                            // SAFETY: AVX-512F checked above.
                            true => unsafe { quantize_avx512::row_to_levels(row, input_scales, q) },
                            false => {
                                let mut l = (0.0, 0.0);
                                row_to_levels_portable(row, input_scales, q, &mut l);
                                l
                            }
                        });
                    }
                    (q, levels)
                };
                let (want, got) = (run(false), run(true));
                let what = format!("{inputs} inputs, smoothed {}", input_scales.is_some());
                assert_eq!(got.0, want.0, "levels, {what}");
                for ((gs, gl), (ws, wl)) in got.1.iter().zip(&want.1) {
                    assert_eq!(gs.to_bits(), ws.to_bits(), "scale, {what}");
                    assert_eq!(gl, wl, "low, {what}");
                }
            }
        }
    }

    /// Largest |got − x·Wᵀ| over every output.
    fn worst_error(lin: &Int8Linear, x: &[f32], w: &[f32], rows: usize, inputs: usize) -> f32 {
        let outputs = w.len() / inputs;
        let mut got = vec![0f32; rows * outputs];
        lin.product(x, rows, &mut got, &mut Scratch::default());
        let mut worst = 0f32;
        for r in 0..rows {
            for o in 0..outputs {
                let want: f32 = (0..inputs)
                    .map(|k| x[r * inputs + k] * w[o * inputs + k])
                    .sum();
                worst = worst.max((got[r * outputs + o] - want).abs());
            }
        }
        worst
    }

    #[test]
    fn smoothing_absorbs_an_outlier_channel() {
        // Channel 5 is thirty times the others, as the residual stream's
        // massive channels are: per-row scales alone spend most levels on it.
        let (rows, inputs, outputs) = (12, 96, 40);
        let w: Vec<f32> = (0..outputs * inputs)
            .map(|i| (((i * 7919) % 201) as f32 - 100.0) * 0.001)
            .collect();
        let x: Vec<f32> = (0..rows * inputs)
            .map(|i| {
                let v = (((i * 104_729) % 97) as f32 - 48.0) * 0.02;
                if i % inputs == 5 { 30.0 + v } else { v }
            })
            .collect();
        let mut peaks = vec![0f32; inputs];
        for row in x.chunks_exact(inputs) {
            for (p, v) in peaks.iter_mut().zip(row) {
                *p = p.max(v.abs());
            }
        }
        let plain = worst_error(
            &Int8Linear::quantize(&w, outputs, inputs),
            &x,
            &w,
            rows,
            inputs,
        );
        let smoothed = Int8Linear::quantize_smoothed(&w, outputs, inputs, &peaks);
        let smoothed = worst_error(&smoothed, &x, &w, rows, inputs);
        assert!(
            smoothed < 0.75 * plain,
            "smoothed {smoothed} vs plain {plain}"
        );
    }

    #[test]
    fn smoothing_without_evidence_changes_nothing() {
        // Peaks of 0 (a channel calibration never reached), infinite or NaN
        // leave that channel's factor at 1: no division by zero, no NaN.
        let (inputs, outputs) = (8, 4);
        let w: Vec<f32> = (0..outputs * inputs)
            .map(|i| i as f32 * 0.01 - 0.1)
            .collect();
        let x: Vec<f32> = (0..2 * inputs).map(|i| i as f32 * 0.1 - 0.5).collect();
        let peaks = [0.0, f32::INFINITY, f32::NAN, 0.0, 0.0, 0.0, 0.0, 0.0];
        let lin = Int8Linear::quantize_smoothed(&w, outputs, inputs, &peaks);
        let scales = lin.input_scales.as_ref().expect("smoothed");
        assert!(scales[..4].iter().all(|&s| s == 1.0), "{scales:?}");
        let mut smoothed = vec![0f32; 2 * outputs];
        lin.product(&x, 2, &mut smoothed, &mut Scratch::default());
        let mut plain = vec![0f32; 2 * outputs];
        let reference = Int8Linear::quantize(&w, outputs, inputs);
        reference.product(&x, 2, &mut plain, &mut Scratch::default());
        assert!(smoothed.iter().all(|v| v.is_finite()));
        // Zero weight columns ask for no factor either.
        let zeros = Int8Linear::quantize_smoothed(&[0.0; 4 * 8], 4, 8, &[3.0; 8]);
        assert!(
            zeros
                .input_scales
                .as_ref()
                .unwrap()
                .iter()
                .all(|s| s.is_finite() && *s > 0.0)
        );
        for (a, b) in smoothed.iter().zip(&plain) {
            assert!((a - b).abs() < 0.02, "{a} vs {b}");
        }
    }

    #[test]
    fn outlier_channels_are_peaks_far_above_the_median() {
        assert!(!has_outlier_channels(&[1.0, 1.2, 0.9, 2.5, 1.1]));
        assert!(has_outlier_channels(&[1.0, 1.0, 0.9, 3.0, 1.1]));
        assert!(has_outlier_channels(&[0.5, 28.0, 2.0, 1.5, 2.1]));
        // A median of zero (most channels never reached) and one that is.
        assert!(has_outlier_channels(&[0.0, 0.0, 0.0, 1.0]));
        for none in [&[][..], &[0.0; 4], &[f32::NAN; 3]] {
            assert!(!has_outlier_channels(none), "{none:?}");
        }
        // A NaN sorts last (total order): it is no evidence of an outlier.
        assert!(!has_outlier_channels(&[1.0, 1.1, f32::NAN]));
    }

    #[test]
    fn zero_rows_and_weights_stay_zero() {
        let lin = Int8Linear::quantize(&[0.0; 8 * 4], 8, 4);
        let mut out = vec![1f32; 2 * 8];
        lin.product(&[0.0; 2 * 4], 2, &mut out, &mut Scratch::default());
        assert!(out.iter().all(|&v| v == 0.0));
    }
}
