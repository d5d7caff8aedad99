//! bf16 linear layers: weights rounded to bf16 once at load, activations
//! rounded per product, every product of two bf16 summed in f32.
//!
//! ```text
//! x [rows, in] f32 ─ round to nearest even ─▶ bf16 ┐
//! W [out, in] f32 ─ round once, at load ───▶ bf16 ┴─▶ Σ in f32 ─▶ y [rows, out] f32
//! ```
//!
//! bf16 keeps f32's exponent and 8 bits of its mantissa, so unlike f16 no
//! value overflows and no scale is needed; what is lost is precision past
//! the third significant digit, which the f32 sums and the f32 norms,
//! softmax and activations around the products (the CPU encoder keeps all
//! of those in f32) keep from compounding.
//!
//! The weights are packed once at load in the layout the CPU's bf16
//! instructions read: blocks of 32 output columns, and for each pair of
//! inputs, 32 × 2 consecutive bf16. Two kernels read it:
//!
//! * **AMX-BF16** (`tdpbf16ps`, Sapphire Rapids and later): a 16 × 16 tile
//!   of f32 += 16 × 32 bf16 · 32 × 16 bf16 per instruction;
//! * **AVX512-BF16** (`vdpbf16ps`, Cooper Lake, Zen 4 and later): 32
//!   products into 16 f32 lanes per instruction, twice an f32 FMA's 16.
//!
//! Every other CPU gets **f32**: the rounded weights widened back to f32 at
//! load and the f32 GEMM, on activations rounded the same way — bf16's
//! numbers at f32's speed, so a model validated in bf16 scores alike on
//! every machine. `CE_BF16_KERNEL=amx|avx512|f32` forces one (falling back
//! when the CPU lacks it), for comparisons.

use super::kernels::{View, matmul, vectorized};
use super::profile::{Stage, timed};

/// Output columns per packed block: two AVX-512 registers of f32, or two
/// AMX tiles.
const COLS: usize = 32;
/// The packed depth is a multiple of this: one AMX tile row of bf16.
const DEPTH_STEP: usize = 32;
/// Rows per AVX-512 micro-tile: 8 rows × 2 registers = 16 accumulators.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const ROWS: usize = 8;
/// Rows rounded and multiplied per pass, so that they stay in cache while
/// every column block reads them.
const ROW_BLOCK: usize = 192;
/// Rows of the rounded activations are padded to a multiple of this: one
/// AMX pass (two tiles of 16).
const PASS_ROWS: usize = 32;

/// The bf16 kernel in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Intel AMX-BF16 tiles.
    Amx,
    /// AVX512-BF16 dot products.
    Avx512,
    /// bf16-rounded operands multiplied by the f32 GEMM.
    F32,
}

impl Kernel {
    /// Its name, as `CE_BF16_KERNEL` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kernel::Amx => "amx",
            Kernel::Avx512 => "avx512",
            Kernel::F32 => "f32",
        }
    }

    /// Whether it multiplies bf16 natively (rather than in f32).
    pub fn is_native(self) -> bool {
        self != Kernel::F32
    }
}

/// The fastest kernel this CPU and OS run, chosen once per process
/// (`CE_BF16_KERNEL` may ask for a slower one).
pub fn kernel() -> Kernel {
    static CHOSEN: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let wanted = std::env::var("CE_BF16_KERNEL").unwrap_or_default();
        #[cfg(target_arch = "x86_64")]
        {
            if !matches!(wanted.as_str(), "avx512" | "f32") && amx::available() {
                return Kernel::Amx;
            }
            if wanted != "f32" && avx512::available() {
                return Kernel::Avx512;
            }
        }
        let _ = wanted;
        Kernel::F32
    })
}

/// Activation buffers reused across products.
#[derive(Debug, Default)]
pub struct Scratch {
    /// Rounded rows, `[rows padded to 32][depth]` bf16 bits (native kernels).
    packed: Vec<u16>,
    /// Rounded rows as f32, `[rows][inputs]` (the f32 kernel).
    widened: Vec<f32>,
}

/// A linear layer's weight in bf16, laid out for one kernel.
#[derive(Debug)]
pub struct Bf16Linear {
    outputs: usize,
    inputs: usize,
    /// `inputs` rounded up to a multiple of [`DEPTH_STEP`] (zeros beyond).
    depth: usize,
    kernel: Kernel,
    /// Native kernels: `[out / COLS][depth / 2][COLS][2]` bf16 bits.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    packed: Vec<u16>,
    /// The f32 kernel: the rounded weight widened, transposed `[in, out]`.
    widened: Vec<f32>,
}

/// `v` rounded to the nearest bf16 (ties to even), as its bits. NaN stays
/// NaN (its quiet bit set, so rounding cannot carry it into infinity).
#[inline(always)]
pub fn round(v: f32) -> u16 {
    let bits = v.to_bits();
    let rounded = (bits.wrapping_add(0x7FFF + (bits >> 16 & 1)) >> 16) as u16;
    if v.is_nan() {
        (bits >> 16) as u16 | 0x40
    } else {
        rounded
    }
}

/// The f32 a bf16 stands for.
#[inline(always)]
pub fn widen(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

impl Bf16Linear {
    /// Rounds a row-major `[outputs, inputs]` f32 weight for the kernel in use.
    pub fn quantize(weight: &[f32], outputs: usize, inputs: usize) -> Self {
        Self::for_kernel(weight, outputs, inputs, kernel())
    }

    /// Rounds a weight for `kernel` (tests build one per kernel).
    fn for_kernel(weight: &[f32], outputs: usize, inputs: usize, kernel: Kernel) -> Self {
        assert_eq!(weight.len(), outputs * inputs, "weight shape");
        let depth = inputs.div_ceil(DEPTH_STEP) * DEPTH_STEP;
        let (mut packed, mut widened) = (Vec::new(), Vec::new());
        if kernel.is_native() {
            packed = vec![0u16; outputs.div_ceil(COLS) * depth * COLS];
            for o in 0..outputs {
                let (block, col) = (o / COLS, o % COLS);
                for (k, &v) in weight[o * inputs..(o + 1) * inputs].iter().enumerate() {
                    packed[(block * depth / 2 + k / 2) * COLS * 2 + col * 2 + k % 2] = round(v);
                }
            }
        } else {
            widened = vec![0f32; outputs * inputs];
            for o in 0..outputs {
                for i in 0..inputs {
                    widened[i * outputs + o] = widen(round(weight[o * inputs + i]));
                }
            }
        }
        Self {
            outputs,
            inputs,
            depth,
            kernel,
            packed,
            widened,
        }
    }

    /// `dst[rows, outputs] = x[rows, inputs] · Wᵀ` (no bias).
    pub fn product(&self, x: &[f32], rows: usize, dst: &mut [f32], scratch: &mut Scratch) {
        assert!(x.len() >= rows * self.inputs, "input too small");
        assert!(dst.len() >= rows * self.outputs, "destination too small");
        if !self.kernel.is_native() {
            scratch.widened.clear();
            scratch.widened.resize(rows * self.inputs, 0.0);
            timed(Stage::Quantize, || {
                round_rows(&x[..rows * self.inputs], &mut scratch.widened)
            });
            matmul(
                dst,
                self.outputs,
                View::rows(&scratch.widened, rows, self.inputs),
                View::rows(&self.widened, self.inputs, self.outputs),
            );
            return;
        }
        for start in (0..rows).step_by(ROW_BLOCK) {
            let n = ROW_BLOCK.min(rows - start);
            let x = &x[start * self.inputs..(start + n) * self.inputs];
            // Only the x86 kernels below write it; elsewhere `kernel()` never
            // leaves the f32 path above.
            #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
            let dst = &mut dst[start * self.outputs..(start + n) * self.outputs];
            scratch.packed.clear();
            scratch
                .packed
                .resize(n.div_ceil(PASS_ROWS) * PASS_ROWS * self.depth, 0);
            timed(Stage::Quantize, || {
                pack_rows(x, self.inputs, self.depth, &mut scratch.packed)
            });
            match self.kernel {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `kernel()` chose AMX only after the CPU reported
                // it and the kernel granted this process the tile state;
                // the scratch holds `n` rows padded to a whole pass.
                Kernel::Amx => unsafe { amx::block(self, n, &scratch.packed, dst) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `kernel()` chose AVX512-BF16 only where the CPU
                // has the features `avx512::block` is compiled for.
                Kernel::Avx512 => unsafe { avx512::block(self, n, &scratch.packed, dst) },
                _ => unreachable!("native kernels exist only on x86_64"),
            }
        }
    }
}

vectorized! {
    /// Each value rounded to bf16 and widened back.
    fn round_rows(x: &[f32], out: &mut [f32]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = widen(round(v));
        }
    }
}

vectorized! {
    /// Rows of `inputs` values rounded to bf16 into rows of `depth` (the
    /// padding stays zero).
    fn pack_rows(x: &[f32], inputs: usize, depth: usize, out: &mut [u16]) {
        for (row, packed) in x.chunks_exact(inputs).zip(out.chunks_exact_mut(depth)) {
            for (p, &v) in packed.iter_mut().zip(row) {
                *p = round(v);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Bf16Linear, COLS, ROWS};

    pub fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }

    /// Multiplies `rows` rounded rows by every column block.
    ///
    /// # Safety
    /// The CPU must have AVX-512F/BW/BF16; `a` must hold `rows` rows of
    /// `w.depth` bf16 and `dst` `rows × w.outputs` floats.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn block(w: &Bf16Linear, rows: usize, a: &[u16], dst: &mut [f32]) {
        assert!(a.len() >= rows * w.depth && dst.len() >= rows * w.outputs);
        let pairs = w.depth / 2;
        for block in 0..w.outputs.div_ceil(COLS) {
            let panel = &w.packed[block * pairs * COLS * 2..(block + 1) * pairs * COLS * 2];
            let o0 = block * COLS;
            let cols = COLS.min(w.outputs - o0);
            let mut r = 0;
            while r < rows {
                let n = ROWS.min(rows - r);
                let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
                // SAFETY: rows r..r+n exist in `a` (asserted above) and the
                // panel holds `pairs` groups of 64 bf16.
                unsafe { tile(&a[r * w.depth..], w.depth, n, panel, pairs, &mut acc) };
                for (i, lanes) in acc.iter().enumerate().take(n) {
                    let out = &mut dst[(r + i) * w.outputs + o0..][..cols];
                    let mut values = [0f32; COLS];
                    // SAFETY: `values` is 32 f32 = two unaligned 64-byte stores.
                    unsafe {
                        _mm512_storeu_ps(values.as_mut_ptr(), lanes[0]);
                        _mm512_storeu_ps(values.as_mut_ptr().add(16), lanes[1]);
                    }
                    out.copy_from_slice(&values[..cols]);
                }
                r += n;
            }
        }
    }

    /// The micro-kernel: `n` (≤ ROWS) rows × 32 columns over the whole depth.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn tile(
        a: &[u16],
        depth: usize,
        n: usize,
        panel: &[u16],
        pairs: usize,
        acc: &mut [[__m512; 2]; ROWS],
    ) {
        assert!(a.len() >= (n - 1) * depth + pairs * 2 && panel.len() >= pairs * COLS * 2);
        let a = a.as_ptr();
        let b = panel.as_ptr();
        macro_rules! rows {
            ($count:literal) => {{
                let mut c = [[_mm512_setzero_ps(); 2]; $count];
                for p in 0..pairs {
                    // SAFETY: p < pairs and every row index < n were checked
                    // against the slices' lengths above; the casts
                    // reinterpret 32 bf16 (or one pair) as the vector types.
                    unsafe {
                        let b0: __m512bh =
                            std::mem::transmute(_mm512_loadu_si512(b.add(p * 2 * COLS).cast()));
                        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(
                            b.add(p * 2 * COLS + COLS).cast(),
                        ));
                        for (i, ci) in c.iter_mut().enumerate() {
                            let v: __m512bh = std::mem::transmute(_mm512_set1_epi32(
                                a.add(i * depth + p * 2).cast::<i32>().read_unaligned(),
                            ));
                            ci[0] = _mm512_dpbf16_ps(ci[0], v, b0);
                            ci[1] = _mm512_dpbf16_ps(ci[1], v, b1);
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

/// Intel AMX-BF16 (the tiles themselves: [`super::amx`]).
#[cfg(target_arch = "x86_64")]
mod amx {
    use super::super::amx::two_by_two::{self, Multiply};
    use super::super::amx::{Tiles, Unit};
    use super::{Bf16Linear, COLS, DEPTH_STEP, PASS_ROWS};

    /// Whether the CPU has AMX-BF16 and the process may use the tiles.
    pub fn available() -> bool {
        super::super::amx::available(Unit::Bf16)
    }

    /// Multiplies `rows` rounded rows by every column block.
    ///
    /// # Safety
    /// [`available`] must have returned true in this process; `a` must hold
    /// `rows` rounded up to [`PASS_ROWS`] rows of `w.depth` bf16, and `dst`
    /// `rows × w.outputs` floats.
    pub unsafe fn block(w: &Bf16Linear, rows: usize, a: &[u16], dst: &mut [f32]) {
        let padded_rows = rows.div_ceil(PASS_ROWS) * PASS_ROWS;
        assert!(a.len() >= padded_rows * w.depth && dst.len() >= rows * w.outputs);
        assert!(w.depth.is_multiple_of(DEPTH_STEP));
        let pairs = w.depth / 2;
        // Bytes between rows: activations `depth` bf16; weights one pair of
        // depths × 32 columns.
        let a_stride = w.depth * 2;
        let b_stride = COLS * 2 * 2;
        let mut c = [0f32; PASS_ROWS * COLS];
        // SAFETY: the caller checked `available`.
        let _tiles = unsafe { Tiles::configure() };
        for block in 0..w.outputs.div_ceil(COLS) {
            let panel = &w.packed[block * pairs * COLS * 2..(block + 1) * pairs * COLS * 2];
            let o0 = block * COLS;
            let cols = COLS.min(w.outputs - o0);
            for r in (0..rows).step_by(PASS_ROWS) {
                let pass = &a[r * w.depth..(r + PASS_ROWS) * w.depth];
                for step in 0..w.depth / DEPTH_STEP {
                    // Each tile load reads 16 rows of 64 bytes: activation
                    // rows r..r+32 (depths step*32..+32) and 16 pairs of
                    // depths of the panel, all inside the slices above.
                    let a0 = pass[step * DEPTH_STEP..].as_ptr();
                    let b0 = panel[step * (DEPTH_STEP / 2) * COLS * 2..].as_ptr();
                    // SAFETY: the four loads stay inside `pass` and `panel`
                    // (see above); the tiles were configured.
                    unsafe {
                        if step == 0 {
                            two_by_two::zero();
                        }
                        two_by_two::step(
                            Multiply::Bf16,
                            true,
                            a0.cast(),
                            a_stride,
                            b0.cast(),
                            b_stride,
                        );
                    }
                }
                let real = PASS_ROWS.min(rows - r);
                if real == PASS_ROWS && cols == COLS {
                    // A whole pass: the tiles go straight to their rows.
                    let out = dst[r * w.outputs + o0..].as_mut_ptr();
                    let row_bytes = w.outputs * 4;
                    // SAFETY: rows r..r+32 and columns o0..o0+32 lie inside
                    // `dst` (asserted above, and this pass is whole).
                    unsafe { two_by_two::store(true, out.cast(), row_bytes) };
                } else {
                    // SAFETY: `c` is 32 rows of 32 f32.
                    unsafe { two_by_two::store(true, c.as_mut_ptr().cast(), COLS * 4) };
                    for i in 0..real {
                        dst[(r + i) * w.outputs + o0..][..cols]
                            .copy_from_slice(&c[i * COLS..i * COLS + cols]);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operands(rows: usize, inputs: usize, outputs: usize) -> (Vec<f32>, Vec<f32>) {
        let w = (0..outputs * inputs)
            .map(|i| (((i * 7919) % 201) as f32 - 100.0) * 0.001)
            .collect();
        let x = (0..rows * inputs)
            .map(|i| (((i * 104_729) % 97) as f32 - 48.0) * 0.05)
            .collect();
        (w, x)
    }

    /// The product of the bf16-rounded operands, in f64.
    fn rounded_reference(
        x: &[f32],
        w: &[f32],
        rows: usize,
        inputs: usize,
        outputs: usize,
    ) -> Vec<f64> {
        let r = |v: f32| widen(round(v)) as f64;
        let mut want = vec![0f64; rows * outputs];
        for i in 0..rows {
            for o in 0..outputs {
                want[i * outputs + o] = (0..inputs)
                    .map(|k| r(x[i * inputs + k]) * r(w[o * inputs + k]))
                    .sum();
            }
        }
        want
    }

    #[test]
    fn rounding_is_to_nearest_even_and_keeps_specials() {
        assert_eq!(round(1.0), 0x3F80);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to even (1).
        assert_eq!(round(f32::from_bits(0x3F80_8000)), 0x3F80);
        // Just above halfway rounds up.
        assert_eq!(round(f32::from_bits(0x3F80_8001)), 0x3F81);
        // Odd below halfway-tie goes up to even.
        assert_eq!(round(f32::from_bits(0x3F81_8000)), 0x3F82);
        assert_eq!(round(-2.5), 0xC020);
        assert_eq!(widen(round(f32::INFINITY)), f32::INFINITY);
        assert!(widen(round(f32::NAN)).is_nan());
        // The largest finite f32 rounds to infinity, as bf16 cannot hold it.
        assert_eq!(widen(round(f32::MAX)), f32::INFINITY);
    }

    #[test]
    fn every_kernel_multiplies_the_rounded_operands() {
        // Ragged everywhere: rows past one AMX pass and one row block, odd
        // depths and a partial column block.
        for (rows, inputs, outputs) in [(21, 70, 45), (200, 96, 64), (33, 384, 32)] {
            let (w, x) = operands(rows, inputs, outputs);
            let want = rounded_reference(&x, &w, rows, inputs, outputs);
            #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
            let mut kernels = vec![Kernel::F32];
            #[cfg(target_arch = "x86_64")]
            {
                if avx512::available() {
                    kernels.push(Kernel::Avx512);
                }
                if amx::available() {
                    kernels.push(Kernel::Amx);
                }
            }
            for kernel in kernels {
                let lin = Bf16Linear::for_kernel(&w, outputs, inputs, kernel);
                let mut got = vec![f32::NAN; rows * outputs];
                lin.product(&x, rows, &mut got, &mut Scratch::default());
                for (i, (&g, &want)) in got.iter().zip(&want).enumerate() {
                    // The sums are f32 (the native units may also flush
                    // denormals and fuse differently): a few f32 ulps of
                    // the terms' magnitude.
                    assert!(
                        (g as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()) + 1e-4,
                        "{} ({rows}x{inputs}x{outputs}) element {i}: {g} vs {want}",
                        kernel.as_str()
                    );
                }
            }
            println!("bf16 kernel in use: {}", kernel().as_str());
        }
    }

    #[test]
    fn bf16_product_is_close_to_the_f32_product() {
        let (rows, inputs, outputs) = (9, 384, 40);
        let (w, x) = operands(rows, inputs, outputs);
        let lin = Bf16Linear::quantize(&w, outputs, inputs);
        let mut got = vec![0f32; rows * outputs];
        lin.product(&x, rows, &mut got, &mut Scratch::default());
        for i in 0..rows {
            for o in 0..outputs {
                let exact: f32 = (0..inputs)
                    .map(|k| x[i * inputs + k] * w[o * inputs + k])
                    .sum();
                let scale: f32 = (0..inputs)
                    .map(|k| (x[i * inputs + k] * w[o * inputs + k]).abs())
                    .sum();
                // Two roundings of 2^-9 relative each, over the terms.
                assert!((got[i * outputs + o] - exact).abs() <= 2.0 * scale / 256.0);
            }
        }
    }
}
