//! Intel AMX (Sapphire Rapids and later): 16 × 16 tiles of bf16 dot products, `tdpbf16ps`, each
//! instruction 8,192 multiply-adds. On the 2-core machine this project measures on, one core
//! runs about 1.7 T int8 ops/s through AMX against about 1 T through AVX-512 VNNI, and PyTorch's
//! bf16 prompt processing (oneDNN on AMX) was twice bakeoff's VNNI tiles.
//!
//! Rust has no stable AMX intrinsics, so the few instructions used are written with `asm!`. The
//! tile registers are invisible to the compiler, which never uses them itself, so the tiles keep
//! their contents between `asm!` blocks of one thread. Linux hands out the tile state only to a
//! process that asks (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`), which
//! [`available`] does once: without it the first tile instruction kills the process.

use std::arch::asm;
use std::arch::x86_64::__cpuid_count;

/// Tokens (B columns) and weight rows (A rows) per tile.
pub const TILE: usize = 16;
/// bf16 values per tile row along the shared dimension (64 bytes).
pub const TILE_K: usize = 32;

/// Whether the processor has AMX-TILE and AMX-BF16 and the OS granted this process the tile
/// state. Asking is idempotent, so every backend may call it.
pub fn available() -> bool {
    let leaf7 = __cpuid_count(7, 0);
    let amx_bf16 = leaf7.edx >> 22 & 1 == 1;
    let amx_tile = leaf7.edx >> 24 & 1 == 1;
    amx_bf16 && amx_tile && request_permission()
}

#[cfg(target_os = "linux")]
fn request_permission() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with this request only changes which state components the kernel lets
    // the process use; it fails cleanly (-1) where the kernel does not support them.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn request_permission() -> bool {
    false
}

/// Palette 1 with all eight tiles at 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t] = 64; // bytes per row, u16 little-endian
            c[48 + t] = TILE as u8; // rows
        }
        TileConfig(c)
    }
}

/// One thread's tile state, configured for [`Tiles::block`] and released when dropped.
pub struct Tiles(());

impl Tiles {
    /// Configures this thread's tiles.
    ///
    /// # Safety
    /// [`available`] must have returned true in this process.
    pub unsafe fn new() -> Tiles {
        let cfg = TileConfig::new();
        // SAFETY: AMX is available and permitted (caller); the config is a valid palette-1
        // layout, 64-byte aligned.
        unsafe { asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly)) };
        Tiles(())
    }

    /// A 32-token × 32-row block: tile `c[i][j]` (16 × 16 f32, a row per token, `c_stride`
    /// bytes between rows) receives the products of tokens `16i..16i+16` and weight rows
    /// `16j..16j+16`, overwriting it.
    ///
    /// `a` holds 32 tokens of bf16, row-major, `a_stride` values from one token to the next.
    /// `b[j]` holds 16 weight rows in the pair layout of [`super::x86::rows_to_pairs16`]: for
    /// each value pair, the 16 rows' pairs side by side. `k` is a multiple of [`TILE_K`].
    ///
    /// # Safety
    /// `a` must point at 32 readable rows of `k` values `a_stride` apart, `b[0]`, `b[1]` at 16·k
    /// values each, and every `c[i][j]` at 16 writable rows of 16 f32 `c_stride` bytes apart.
    pub unsafe fn block(
        &self,
        a: *const u16,
        a_stride: usize,
        b: [*const u16; 2],
        k: usize,
        c: [[*mut f32; 2]; 2],
        c_stride: usize,
    ) {
        // SAFETY (whole block): the tiles were configured by `new` on this thread; every load
        // reads 16 rows of 64 bytes inside the buffers the caller vouches for, and the stores
        // write 16 rows of 64 bytes where the caller allows.
        unsafe {
            asm!(
                "tilezero tmm4",
                "tilezero tmm5",
                "tilezero tmm6",
                "tilezero tmm7",
                options(nostack, nomem)
            );
            let a1 = a.add(TILE * a_stride);
            for kc in 0..k / TILE_K {
                let off = kc * TILE_K;
                asm!(
                    "tileloadd tmm0, [{a0} + {as_}*1]",
                    "tileloadd tmm1, [{a1} + {as_}*1]",
                    "tileloadd tmm2, [{b0} + {bs}*1]",
                    "tileloadd tmm3, [{b1} + {bs}*1]",
                    "tdpbf16ps tmm4, tmm0, tmm2",
                    "tdpbf16ps tmm5, tmm0, tmm3",
                    "tdpbf16ps tmm6, tmm1, tmm2",
                    "tdpbf16ps tmm7, tmm1, tmm3",
                    a0 = in(reg) a.add(off),
                    a1 = in(reg) a1.add(off),
                    as_ = in(reg) a_stride * 2,
                    // Pair p of the chunk's first value `off` sits at 64·(off / 2) bytes.
                    b0 = in(reg) b[0].add(off * TILE),
                    b1 = in(reg) b[1].add(off * TILE),
                    bs = in(reg) 64usize,
                    options(nostack, readonly)
                );
            }
            asm!(
                "tilestored [{c00} + {cs}*1], tmm4",
                "tilestored [{c01} + {cs}*1], tmm5",
                "tilestored [{c10} + {cs}*1], tmm6",
                "tilestored [{c11} + {cs}*1], tmm7",
                c00 = in(reg) c[0][0],
                c01 = in(reg) c[0][1],
                c10 = in(reg) c[1][0],
                c11 = in(reg) c[1][1],
                cs = in(reg) c_stride,
                options(nostack)
            );
        }
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: releases the tile state this thread configured in `new`.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}
