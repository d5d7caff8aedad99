//! What the AMX kernels (the integer and bf16 products, bf16 attention)
//! share: whether this CPU and OS let the process use the tile registers,
//! the one tile configuration they all run under, and the 2 × 2 tile block
//! they all compute — accumulators tmm0–tmm3, operands tmm4–tmm7.
//!
//! Rust has no stable AMX intrinsics; the kernels drive the tiles with
//! inline assembly, which needs no compiler support beyond the assembler.

#![cfg(target_arch = "x86_64")]

use std::arch::asm;
use std::sync::OnceLock;

/// Rows of every tile.
pub const TILE_ROWS: usize = 16;
/// Bytes of every tile row.
pub const TILE_BYTES: usize = 64;

/// Which AMX multiply instructions a kernel needs.
#[derive(Debug, Clone, Copy)]
pub enum Unit {
    /// `tdpbusd` (AMX-INT8).
    Int8,
    /// `tdpbf16ps` (AMX-BF16).
    Bf16,
}

/// Whether the CPU has AMX tiles and `unit`, and Linux lets this process
/// use the tile state (it must be asked for, once per process).
pub fn available(unit: Unit) -> bool {
    // CPUID leaf 7: EDX bit 22 AMX-BF16, 24 AMX-TILE, 25 AMX-INT8.
    let leaf = std::arch::x86_64::__cpuid_count(7, 0);
    let bit = |b: u32| leaf.edx >> b & 1 == 1;
    let has_unit = match unit {
        Unit::Int8 => bit(25),
        Unit::Bf16 => bit(22),
    };
    has_unit && bit(24) && tile_state_granted()
}

#[cfg(target_os = "linux")]
fn tile_state_granted() -> bool {
    static GRANTED: OnceLock<bool> = OnceLock::new();
    *GRANTED.get_or_init(|| {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl with these arguments only changes which
        // register state the kernel saves for this process.
        let granted = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        } == 0;
        if !granted {
            tracing::info!("the CPU has AMX but the kernel refused the tile state; using AVX-512");
        }
        granted
    })
}

/// Only Linux has the `arch_prctl` permission request; no other x86 host
/// this server targets (Intel Macs) has AMX at all.
#[cfg(not(target_os = "linux"))]
fn tile_state_granted() -> bool {
    false
}

/// Palette 1 with all eight tiles 16 rows of 64 bytes: tiles 0–3
/// accumulate 16 × 16 32-bit sums, 4–5 hold 16 rows of activations, 6–7
/// 16 interleaved groups of weights (4 bytes of depth × 16 columns).
#[repr(C, align(64))]
struct Config([u8; 64]);

/// The tile registers, configured; released when dropped so the kernel
/// need not save them on every context switch.
pub struct Tiles(());

impl Tiles {
    /// Configures the tiles.
    ///
    /// # Safety
    /// [`available`] must have returned true in this process.
    pub unsafe fn configure() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t] = TILE_BYTES as u8;
            c[48 + t] = TILE_ROWS as u8;
        }
        let config = Config(c);
        // SAFETY: the configuration is a valid palette-1 layout, and the
        // caller checked the CPU has tiles and the OS granted them.
        unsafe { asm!("ldtilecfg [{0}]", in(reg) config.0.as_ptr(), options(nostack)) };
        Self(())
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: tiles were configured by `configure`; none is in use past
        // this point.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// A 2 × 2 block of accumulators: tmm0 top left, tmm1 top right, tmm2
/// bottom left, tmm3 bottom right, each 16 × 16 four-byte sums; tmm4–5 hold
/// the block's two A tiles (top, bottom rows), tmm6–7 its two B tiles (left,
/// right columns). A block with one row of tiles uses tmm0, tmm1, tmm4, tmm6
/// and tmm7.
pub mod two_by_two {
    use std::arch::asm;

    use super::{TILE_BYTES, TILE_ROWS};

    /// Which tile multiply a step runs.
    #[derive(Debug, Clone, Copy)]
    pub enum Multiply {
        /// `tdpbusd`: u8 × i8 quads into i32.
        Int8,
        /// `tdpbf16ps`: bf16 pairs into f32.
        Bf16,
    }

    /// Zeroes the accumulators.
    ///
    /// # Safety
    /// The tiles must be configured ([`super::Tiles`]).
    #[inline(always)]
    pub unsafe fn zero() {
        // SAFETY: forwarded; tilezero touches only tile registers.
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            )
        };
    }

    /// One depth step: the A tiles from `a` and `a` + 16 rows (rows
    /// `a_stride` bytes apart), the B tiles from `b` and `b` + 64 bytes
    /// (rows `b_stride` bytes apart), then the four products; `two_rows`
    /// false: the top row of tiles alone (no bottom A tile is read).
    ///
    /// # Safety
    /// The tiles must be configured; each tile read (16 rows of 64 bytes at
    /// its stride) must lie inside its operand.
    #[inline(always)]
    pub unsafe fn step(
        multiply: Multiply,
        two_rows: bool,
        a: *const u8,
        a_stride: usize,
        b: *const u8,
        b_stride: usize,
    ) {
        // SAFETY: forwarded from the caller (the bottom A tile is formed
        // and read only with `two_rows`).
        unsafe {
            let b1 = b.add(TILE_BYTES);
            macro_rules! run {
                ($op:literal) => {
                    if two_rows {
                        asm!(
                            "tileloadd tmm4, [{a0} + {sa}*1]",
                            "tileloadd tmm5, [{a1} + {sa}*1]",
                            "tileloadd tmm6, [{b0} + {sb}*1]",
                            "tileloadd tmm7, [{b1} + {sb}*1]",
                            concat!($op, " tmm0, tmm4, tmm6"),
                            concat!($op, " tmm1, tmm4, tmm7"),
                            concat!($op, " tmm2, tmm5, tmm6"),
                            concat!($op, " tmm3, tmm5, tmm7"),
                            a0 = in(reg) a,
                            a1 = in(reg) a.add(TILE_ROWS * a_stride),
                            b0 = in(reg) b,
                            b1 = in(reg) b1,
                            sa = in(reg) a_stride,
                            sb = in(reg) b_stride,
                            options(nostack, readonly)
                        )
                    } else {
                        asm!(
                            "tileloadd tmm4, [{a0} + {sa}*1]",
                            "tileloadd tmm6, [{b0} + {sb}*1]",
                            "tileloadd tmm7, [{b1} + {sb}*1]",
                            concat!($op, " tmm0, tmm4, tmm6"),
                            concat!($op, " tmm1, tmm4, tmm7"),
                            a0 = in(reg) a,
                            b0 = in(reg) b,
                            b1 = in(reg) b1,
                            sa = in(reg) a_stride,
                            sb = in(reg) b_stride,
                            options(nostack, readonly)
                        )
                    }
                };
            }
            match multiply {
                Multiply::Int8 => run!("tdpbusd"),
                Multiply::Bf16 => run!("tdpbf16ps"),
            }
        }
    }

    /// Stores the accumulators as 16 (`two_rows` false) or 32 rows of 32
    /// four-byte sums at `out`, rows `row_bytes` apart.
    ///
    /// # Safety
    /// The tiles must be configured; `out` must be valid for those rows of
    /// 128 bytes at that stride.
    #[inline(always)]
    pub unsafe fn store(two_rows: bool, out: *mut u8, row_bytes: usize) {
        // SAFETY: forwarded; each store writes 16 rows of 64 bytes at one
        // quarter of the block.
        unsafe {
            asm!(
                "tilestored [{c0} + {s}*1], tmm0",
                "tilestored [{c1} + {s}*1], tmm1",
                c0 = in(reg) out,
                c1 = in(reg) out.add(TILE_BYTES),
                s = in(reg) row_bytes,
                options(nostack)
            );
            if two_rows {
                let bottom = out.add(TILE_ROWS * row_bytes);
                asm!(
                    "tilestored [{c2} + {s}*1], tmm2",
                    "tilestored [{c3} + {s}*1], tmm3",
                    c2 = in(reg) bottom,
                    c3 = in(reg) bottom.add(TILE_BYTES),
                    s = in(reg) row_bytes,
                    options(nostack)
                );
            }
        }
    }
}
