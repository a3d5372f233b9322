//! bf16 dense layers on AMX tiles (`--dtype bf16` on Intel Xeon from Sapphire Rapids on).
//!
//! AMX multiplies a 16 x 32 bf16 tile by a 32 x 16 one into a 16 x 16 f32 tile in one
//! instruction (`tdpbf16ps`): 1,024 flops a cycle a core, sixteen times an AVX-512 FMA
//! unit. The weight is rounded to bf16 and packed once, at load, into the tile layout
//! (`[column tile][k step][k pair][column][pair]`, 1 KiB a tile, so a column tile's steps
//! are read front to back); each call rounds its activations to bf16 once, row-major,
//! and a task walks blocks of 32 x 32 outputs: two row tiles by two column tiles, four
//! accumulators, `k` in blocks of 256 channels (the sums wait in memory between blocks),
//! each block's activations reused from L1 by the task's columns. Sums are f32 (AMX
//! accumulates in f32); bias, GELU or residual are added in f32 as the block is stored,
//! as on the f32 path. So this differs from f32 only by the rounding of inputs and
//! weights to bf16, which is what PyTorch's bf16 autocast does for its linear layers.
//!
//! The AMX intrinsics are nightly-only in Rust, so the tile instructions are `asm!`.
//! Linux hands out the tile registers only on request (`arch_prctl`); `available` asks
//! once and the layers fall back to f32 arithmetic where the request or the CPUID check
//! fails. `int8_group` is the same tiles' integer product for `q8`.

use std::sync::OnceLock;

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use super::elementwise::gelu_slice_in_place;
use super::gemm::Epilogue;
use super::par::{par_tasks, Disjoint};
use super::tensor;

/// Rows of a tile, and output columns of one.
const TILE: usize = 16;
/// bf16 values of `k` a tile row holds (64 bytes).
const KSTEP: usize = 32;
/// bf16 values in one packed weight tile.
const TILE_LEN: usize = TILE * KSTEP;
/// Steps of `k` per pass over a task's blocks (256 channels).
const K_BLOCK: usize = 4;
/// Row blocks (of 32) per parallel task: `128 x k` bf16 activations stay in L2.
const ROW_BLOCKS_PER_TASK: usize = 4;
/// Column pairs (of 32 columns) per parallel task, at most.
const COL_PAIRS_PER_TASK: usize = 4;
/// Products of fewer multiply-adds than this run on the calling thread.
const SERIAL_MAX: usize = 1 << 18;

/// Whether the bf16 layers run on AMX tiles here: the CPU has AMX-TILE and AMX-BF16,
/// Linux granted the tile state, and neither `BERT_CLI_PORTABLE` nor `BERT_CLI_NO_AMX`
/// is set. Checked once.
pub fn available() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        !super::portable_only() && !super::env_flag("BERT_CLI_NO_AMX") && cpu_has_amx_bf16()
    })
}

/// Whether `--quantize q8` runs its integer products on AMX tiles too: `available()`
/// and AMX-INT8 (`tdpbusd`). Checked once.
pub(super) fn int8_available() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            // CPUID leaf 7, EDX bit 25: AMX-INT8.
            available() && std::arch::x86_64::__cpuid_count(7, 0).edx & (1 << 25) != 0
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

#[cfg(target_arch = "x86_64")]
fn cpu_has_amx_bf16() -> bool {
    // CPUID leaf 7, EDX: bit 22 AMX-BF16, bit 24 AMX-TILE.
    let leaf = std::arch::x86_64::__cpuid_count(7, 0);
    let cpu = leaf.edx & (1 << 22) != 0 && leaf.edx & (1 << 24) != 0;
    // Every CPU with AMX has AVX-512, which the store pass is compiled for.
    cpu && std::arch::is_x86_feature_detected!("avx512f") && request_tile_state()
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has_amx_bf16() -> bool {
    false
}

/// Asks Linux for the AMX tile data state (`ARCH_REQ_XCOMP_PERM`, `XFEATURE_XTILEDATA`):
/// without it the first tile instruction kills the process. Process-wide.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn request_tile_state() -> bool {
    false
}

/// `v` rounded to the nearest bf16 (ties to even), as its 16 bits. NaN stays NaN.
#[inline(always)]
fn bf16_bits(v: f32) -> u16 {
    let bits = v.to_bits();
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    let quiet_nan = ((bits >> 16) | 0x40) as u16;
    if v.is_nan() {
        quiet_nan
    } else {
        rounded
    }
}

/// `v` rounded to bf16 and back: what a bf16 weight holds (the tests' reference).
#[cfg(test)]
fn round_to_bf16(v: f32) -> f32 {
    f32::from_bits(u32::from(bf16_bits(v)) << 16)
}

/// A linear layer `y = x Wᵀ + b` whose weight is bf16, packed for the AMX tiles.
pub struct AmxLinear {
    /// Input features.
    k: usize,
    /// Output features.
    n: usize,
    /// `k` steps of `KSTEP` (the last one padded with zeros).
    steps: usize,
    /// Column tiles, an even number (the last pair padded with zero columns).
    col_tiles: usize,
    /// `[col_tiles][steps][TILE_LEN]` bf16 bits.
    packed: Vec<u16>,
    /// `[n]`, f32.
    bias: Vec<f32>,
}

impl AmxLinear {
    /// Rounds a checkpoint-layout weight `[out, in]` (f32) to bf16 and packs it; keeps
    /// `bias` `[out]` in f32.
    /// An error where `available()` is false: the tiles are only ever used after the
    /// CPU was checked and Linux granted them.
    pub fn new(weight: &Tensor, bias: &Tensor) -> Result<Self> {
        if !available() {
            candle_core::bail!("amx-linear: this CPU has no AMX tiles granted to the process");
        }
        let (n, k) = weight.dims2()?;
        let w = weight.flatten_all()?.to_vec1::<f32>()?;
        let bias = bias.to_vec1::<f32>()?;
        let steps = k.div_ceil(KSTEP).max(1);
        let col_tiles = n.div_ceil(2 * TILE).max(1) * 2;
        let mut packed = vec![0u16; col_tiles * steps * TILE_LEN];
        packed
            .par_chunks_mut(steps * TILE_LEN)
            .enumerate()
            .for_each(|(j, tiles)| {
                for c in 0..TILE.min(n.saturating_sub(j * TILE)) {
                    let row = &w[(j * TILE + c) * k..(j * TILE + c + 1) * k];
                    for (kk, &v) in row.iter().enumerate() {
                        // Tile row kk/2 of step kk/KSTEP holds k pairs side by side.
                        let (s, r) = (kk / KSTEP, (kk % KSTEP) / 2);
                        tiles[s * TILE_LEN + r * 2 * TILE + 2 * c + kk % 2] = bf16_bits(v);
                    }
                }
            });
        Ok(Self {
            k,
            n,
            steps,
            col_tiles,
            packed,
            bias,
        })
    }

    /// Input channels.
    pub fn in_dim(&self) -> usize {
        self.k
    }

    /// `x` is `[m, in]`, f32; the result is `[m, out]`, f32, finished by `epilogue` as
    /// it is stored.
    pub fn forward(&self, x: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.k {
            candle_core::bail!(
                "amx-linear: input has {k} features, the layer takes {}",
                self.k
            );
        }
        let x = x.contiguous()?;
        let a = tensor::read(&x, "amx-linear", |x| self.activations(x, m))?;
        let y = match epilogue {
            Epilogue::Bias => self.matmul(&a, m, Finish::Bias),
            Epilogue::BiasGelu => self.matmul(&a, m, Finish::Gelu),
            Epilogue::BiasResidual(r) => {
                let r = r.contiguous()?;
                if r.dims() != [m, self.n] {
                    candle_core::bail!(
                        "amx-linear: residual {:?} does not match the output [{m}, {}]",
                        r.dims(),
                        self.n
                    );
                }
                tensor::read(&r, "amx-linear", |r| {
                    self.matmul(&a, m, Finish::Residual(r))
                })?
            }
        };
        tensor::from_vec(y, (m, self.n))
    }

    /// `x` (`[m, k]` f32) rounded to bf16, `[rows, steps * KSTEP]`, with rows up to a
    /// whole tile and channels up to a whole step padded with zeros.
    fn activations(&self, x: &[f32], m: usize) -> Vec<u16> {
        let (k, kp) = (self.k, self.steps * KSTEP);
        let mut a = vec![0u16; m.div_ceil(TILE).max(1) * TILE * kp];
        a.par_chunks_mut(TILE * kp)
            .zip(x.par_chunks(TILE * k))
            .for_each(|(a, x)| round_rows(a, x, k, kp));
        a
    }

    /// `a` (from `activations`) times the packed weight, finished, as `[m, n]`.
    fn matmul(&self, a: &[u16], m: usize, finish: Finish) -> Vec<f32> {
        let n = self.n;
        let mut y: Vec<f32> = Vec::with_capacity(m * n);
        let row_blocks = m.div_ceil(2 * TILE);
        let row_tasks = row_blocks.div_ceil(ROW_BLOCKS_PER_TASK);
        let pairs = self.col_tiles / 2;
        let col_tasks = pairs.div_ceil(COL_PAIRS_PER_TASK);
        let kp = self.steps * KSTEP;
        // SAFETY: every task writes its own rows x columns of `y` through `part_ptr` and
        // the tasks cover all of `[m, n]` before `set_len`.
        let out = unsafe { Disjoint::uninit(y.as_mut_ptr(), m * n) };
        let steps = self.steps;
        let task = |t: usize| {
            let (rt, ct) = (t / col_tasks, t % col_tasks);
            let blocks = rt * ROW_BLOCKS_PER_TASK..((rt + 1) * ROW_BLOCKS_PER_TASK).min(row_blocks);
            let pair_range = ct * COL_PAIRS_PER_TASK..((ct + 1) * COL_PAIRS_PER_TASK).min(pairs);
            let _tiles = Tiles::configure();
            let mut acc: Vec<Block> = (0..blocks.len() * pair_range.len())
                .map(|_| Block([0f32; 4 * TILE * TILE]))
                .collect();
            // K in blocks of `K_BLOCK` steps: a row block's slice of activations (32 rows
            // x 256 channels, 16 KiB) stays in L1 while the task's column pairs pass
            // over it. Over the whole of k at once both operands came from L2, 64 bytes
            // a cycle, and the tiles ran at a fifth of their peak.
            for k0 in (0..steps).step_by(K_BLOCK) {
                let ks = K_BLOCK.min(steps - k0);
                for (bi, rb) in blocks.clone().enumerate() {
                    let r0 = rb * 2 * TILE;
                    let rows = (m - r0).min(2 * TILE);
                    let a = &a[r0 * kp + k0 * KSTEP..];
                    for (pj, p) in pair_range.clone().enumerate() {
                        let b0 = &self.packed[(2 * p * steps + k0) * TILE_LEN..];
                        let b1 = &self.packed[((2 * p + 1) * steps + k0) * TILE_LEN..];
                        let c = &mut acc[bi * pair_range.len() + pj];
                        // SAFETY: `available()` held when the layer was made (`new`),
                        // the tiles are configured, `a` holds `rows` (up to a tile) of
                        // `kp` activations from step `k0`, and `b0`, `b1` at least `ks`
                        // weight tiles.
                        unsafe { block(a, kp, rows > TILE, b0, b1, ks, c) };
                    }
                }
            }
            for (bi, rb) in blocks.clone().enumerate() {
                let r0 = rb * 2 * TILE;
                let rows = (m - r0).min(2 * TILE);
                for (pj, p) in pair_range.clone().enumerate() {
                    let cols = p * 2 * TILE..((p + 1) * 2 * TILE).min(n);
                    let c = &acc[bi * pair_range.len() + pj];
                    // SAFETY: AMX implies AVX-512 F (`available`); this task owns rows
                    // `blocks` x column pairs `pair_range` of `y`.
                    unsafe { store_block(c, r0..r0 + rows, cols, &self.bias, finish, out, n) };
                }
            }
        };
        let tasks = row_tasks * col_tasks;
        if m * kp * pairs * 2 * TILE < SERIAL_MAX {
            (0..tasks).for_each(task);
        } else {
            par_tasks(tasks, task);
        }
        // SAFETY: see above; every value of `[m, n]` was written.
        unsafe { y.set_len(m * n) };
        y
    }
}

dispatch_simd!(round_rows, |a: &mut [u16],
                            x: &[f32],
                            k: usize,
                            kp: usize| {
    // A tile's rows of `x` (`k` wide) rounded into `a` (`kp` wide, zero beyond `k`).
    // Branch-free, so that it vectorises: one value at a time, the rounding took a
    // tenth of bert-base's time on the tiles.
    for (a, x) in a.chunks_mut(kp).zip(x.chunks(k)) {
        for (a, &x) in a.iter_mut().zip(x) {
            *a = bf16_bits(x);
        }
    }
});

/// What the store pass adds to the sums.
#[derive(Clone, Copy)]
enum Finish<'a> {
    Bias,
    Gelu,
    /// `[m, n]` row-major.
    Residual(&'a [f32]),
}

/// Four accumulator tiles as `tilestored` leaves them: tile `2 * i + j` (row tile `i`,
/// column tile `j`) at `TILE * TILE` floats each, rows of 16.
#[repr(C, align(64))]
struct Block([f32; 4 * TILE * TILE]);

/// The tile registers configured for this thread (every tile 16 rows of 64 bytes) until
/// dropped, when they are released (a thread holding tile state pays for it at every
/// context switch).
pub(super) struct Tiles;

#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

impl Tiles {
    /// Only after `available()` (or `int8_available()`) held.
    pub(super) fn configure() -> Self {
        let mut cfg = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            bytes_per_row: [0; 16],
            rows: [0; 16],
        };
        for t in 0..8 {
            cfg.bytes_per_row[t] = 64;
            cfg.rows[t] = TILE as u8;
        }
        // SAFETY: only reached where `available()` held; `cfg` is a valid palette-1
        // configuration, 64-byte aligned.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            std::arch::asm!("ldtilecfg [{}]", in(reg) &cfg, options(nostack, readonly));
        }
        Tiles
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: the tiles were configured by `configure`.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            std::arch::asm!("tilerelease", options(nostack, nomem));
        }
    }
}

/// Adds to block `c` (32 x 32, or 16 x 32 where `!two_rows`) `ks` steps of `a` (rows
/// from its start, `kp` bf16 a row) times two column tiles' packed weight tiles from `b0`
/// and `b1`.
///
/// # Safety
/// AMX must be available and configured by `Tiles` on this thread; `a` must hold 16 rows
/// (32 where `two_rows`) of `kp` values, the first `ks * KSTEP` of them read, and `b0`,
/// `b1` at least `ks` tiles each.
#[cfg(target_arch = "x86_64")]
unsafe fn block(
    a: &[u16],
    kp: usize,
    two_rows: bool,
    b0: &[u16],
    b1: &[u16],
    ks: usize,
    c: &mut Block,
) {
    debug_assert!(a.len() >= (if two_rows { TILE } else { 0 } + TILE - 1) * kp + ks * KSTEP);
    debug_assert!(b0.len() >= ks * TILE_LEN && b1.len() >= ks * TILE_LEN && ks > 0);
    let lda = kp * 2;
    let a0 = a.as_ptr();
    let c = c.0.as_mut_ptr();
    if two_rows {
        std::arch::asm!(
            "tileloadd tmm0, [{c} + {ldb}*1]",
            "tileloadd tmm1, [{c} + {ldb}*1 + 1024]",
            "tileloadd tmm2, [{c} + {ldb}*1 + 2048]",
            "tileloadd tmm3, [{c} + {ldb}*1 + 3072]",
            "2:",
            // Each product issued as soon as its two tiles are in, the loads of the
            // others overlapping it.
            "tileloadd tmm4, [{a0} + {lda}*1]",
            "tileloadd tmm6, [{b0} + {ldb}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {ldb}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {lda}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a0}, 64",
            "add {a1}, 64",
            "add {b0}, 1024",
            "add {b1}, 1024",
            "dec {steps}",
            "jnz 2b",
            "tilestored [{c} + {ldb}*1], tmm0",
            "tilestored [{c} + {ldb}*1 + 1024], tmm1",
            "tilestored [{c} + {ldb}*1 + 2048], tmm2",
            "tilestored [{c} + {ldb}*1 + 3072], tmm3",
            a0 = inout(reg) a0 => _,
            a1 = inout(reg) a0.add(TILE * kp) => _,
            b0 = inout(reg) b0.as_ptr() => _,
            b1 = inout(reg) b1.as_ptr() => _,
            steps = inout(reg) ks => _,
            lda = in(reg) lda,
            ldb = in(reg) 64usize,
            c = in(reg) c,
            options(nostack),
        );
    } else {
        std::arch::asm!(
            "tileloadd tmm0, [{c} + {ldb}*1]",
            "tileloadd tmm1, [{c} + {ldb}*1 + 1024]",
            "2:",
            "tileloadd tmm4, [{a0} + {lda}*1]",
            "tileloadd tmm6, [{b0} + {ldb}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {ldb}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "add {a0}, 64",
            "add {b0}, 1024",
            "add {b1}, 1024",
            "dec {steps}",
            "jnz 2b",
            "tilestored [{c} + {ldb}*1], tmm0",
            "tilestored [{c} + {ldb}*1 + 1024], tmm1",
            a0 = inout(reg) a0 => _,
            b0 = inout(reg) b0.as_ptr() => _,
            b1 = inout(reg) b1.as_ptr() => _,
            steps = inout(reg) ks => _,
            lda = in(reg) lda,
            ldb = in(reg) 64usize,
            c = in(reg) c,
            options(nostack),
        );
    }
}

/// Four 16 x 16 tiles of i32 sums as `int8_group` leaves them: tile `2 * i + j` (row
/// tile `i`, column tile `j`), rows of 16.
#[repr(C, align(64))]
pub(super) struct Int8Block(pub [i32; 4 * TILE * TILE]);

/// The i32 sums of one group of 64 input channels for a 32 x 32 block (16 x 32 where
/// `!two_rows`): `a` (u8, rows `lda` bytes apart) times two column tiles of int8 weights
/// `b0`, `b1` (16 rows of 4-byte quads for 16 columns, rows `ldb` bytes apart), into `c`
/// (overwritten). One `tdpbusd` per tile: 16 x 16 x 64 multiply-adds.
///
/// # Safety
/// AMX-INT8 must be available and configured by `Tiles` on this thread; `a` must be
/// readable for 16 rows (32 where `two_rows`) of 64 bytes at `lda`, `b0` and `b1` for 16
/// rows of 64 bytes at `ldb`.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn int8_group(
    a: *const u8,
    lda: usize,
    two_rows: bool,
    b0: *const i8,
    b1: *const i8,
    ldb: usize,
    c: &mut Int8Block,
) {
    let c = c.0.as_mut_ptr();
    if two_rows {
        std::arch::asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "tileloadd tmm4, [{a0} + {lda}*1]",
            "tileloadd tmm6, [{b0} + {ldb}*1]",
            "tdpbusd tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {ldb}*1]",
            "tdpbusd tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {lda}*1]",
            "tdpbusd tmm2, tmm5, tmm6",
            "tdpbusd tmm3, tmm5, tmm7",
            "tilestored [{c} + {ldc}*1], tmm0",
            "tilestored [{c} + {ldc}*1 + 1024], tmm1",
            "tilestored [{c} + {ldc}*1 + 2048], tmm2",
            "tilestored [{c} + {ldc}*1 + 3072], tmm3",
            a0 = in(reg) a,
            a1 = in(reg) a.add(TILE * lda),
            b0 = in(reg) b0,
            b1 = in(reg) b1,
            lda = in(reg) lda,
            ldb = in(reg) ldb,
            ldc = in(reg) 64usize,
            c = in(reg) c,
            options(nostack),
        );
    } else {
        std::arch::asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tileloadd tmm4, [{a0} + {lda}*1]",
            "tileloadd tmm6, [{b0} + {ldb}*1]",
            "tdpbusd tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {ldb}*1]",
            "tdpbusd tmm1, tmm4, tmm7",
            "tilestored [{c} + {ldc}*1], tmm0",
            "tilestored [{c} + {ldc}*1 + 1024], tmm1",
            a0 = in(reg) a,
            b0 = in(reg) b0,
            b1 = in(reg) b1,
            lda = in(reg) lda,
            ldb = in(reg) ldb,
            ldc = in(reg) 64usize,
            c = in(reg) c,
            options(nostack),
        );
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn int8_group(
    _: *const u8,
    _: usize,
    _: bool,
    _: *const i8,
    _: *const i8,
    _: usize,
    _: &mut Int8Block,
) {
    unreachable!("AMX is x86-64 only; `int8_available()` is false elsewhere")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn block(_: &[u16], _: usize, _: bool, _: &[u16], _: &[u16], _: usize, _: &mut Block) {
    unreachable!("AMX is x86-64 only; `available()` is false elsewhere")
}

/// Writes block `c`'s rows `rows` and columns `cols` (of `[m, n]` in `out`), bias added,
/// then GELU or the residual. Compiled for AVX-512, which every CPU with AMX has.
///
/// # Safety
/// The CPU must have AVX-512 F; the calling task alone owns those rows and columns.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn store_block(
    c: &Block,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    bias: &[f32],
    finish: Finish,
    out: Disjoint,
    n: usize,
) {
    use std::arch::x86_64::*;
    let width = cols.len();
    let bias = &bias[cols.clone()];
    for (i, r) in rows.enumerate() {
        // Block row i, column j lies in tile 2 * (i / 16) + j / 16 at (i % 16, j % 16).
        let tiles = &c.0[(i / TILE) * 2 * TILE * TILE + (i % TILE) * TILE..];
        let dst = out.part_ptr(r * n + cols.start, width);
        if width == 2 * TILE {
            let mut v = [
                _mm512_add_ps(
                    _mm512_loadu_ps(tiles.as_ptr()),
                    _mm512_loadu_ps(bias.as_ptr()),
                ),
                _mm512_add_ps(
                    _mm512_loadu_ps(tiles.as_ptr().add(TILE * TILE)),
                    _mm512_loadu_ps(bias.as_ptr().add(TILE)),
                ),
            ];
            match finish {
                Finish::Bias => {}
                Finish::Gelu => v = v.map(|v| gelu16(v)),
                Finish::Residual(res) => {
                    let res = res[r * n + cols.start..][..2 * TILE].as_ptr();
                    v[0] = _mm512_add_ps(v[0], _mm512_loadu_ps(res));
                    v[1] = _mm512_add_ps(v[1], _mm512_loadu_ps(res.add(TILE)));
                }
            }
            _mm512_storeu_ps(dst, v[0]);
            _mm512_storeu_ps(dst.add(TILE), v[1]);
            continue;
        }
        let mut row = [0f32; 2 * TILE];
        row[..TILE].copy_from_slice(&tiles[..TILE]);
        row[TILE..].copy_from_slice(&tiles[TILE * TILE..TILE * TILE + TILE]);
        let row = &mut row[..width];
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
        match finish {
            Finish::Bias => {}
            Finish::Gelu => gelu_slice_in_place(row),
            Finish::Residual(res) => {
                for (v, r) in row.iter_mut().zip(&res[r * n + cols.start..][..width]) {
                    *v += r;
                }
            }
        }
        for (j, &v) in row.iter().enumerate() {
            dst.add(j).write(v);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn store_block(
    _: &Block,
    _: std::ops::Range<usize>,
    _: std::ops::Range<usize>,
    _: &[f32],
    _: Finish,
    _: Disjoint,
    _: usize,
) {
    unreachable!("AMX is x86-64 only; `available()` is false elsewhere")
}

/// Exact GELU of 16 lanes by `elementwise`'s rational erf, its division replaced by a
/// reciprocal estimate and one Newton step (about 1e-7 relative; the division was half
/// of GELU's time, and GELU a tenth of bert-base's on the tiles). Its input came from
/// bf16 products, whose rounding is a thousand times larger.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn gelu16(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use super::elementwise::{ERF_P, ERF_Q, ERF_Z_MAX};
    use std::arch::x86_64::*;
    let horner = |s: __m512, c: &[f32]| {
        c[1..].iter().fold(_mm512_set1_ps(c[0]), |acc, &k| {
            _mm512_fmadd_ps(acc, s, _mm512_set1_ps(k))
        })
    };
    let z = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
    let z = _mm512_min_ps(
        _mm512_max_ps(z, _mm512_set1_ps(-ERF_Z_MAX)),
        _mm512_set1_ps(ERF_Z_MAX),
    );
    let s = _mm512_mul_ps(z, z);
    let (p, q) = (horner(s, &ERF_P), horner(s, &ERF_Q));
    let r = _mm512_rcp14_ps(q);
    // r (2 - q r): the estimate's 14 bits to about 28.
    let r = _mm512_mul_ps(r, _mm512_fnmadd_ps(q, r, _mm512_set1_ps(2.0)));
    let half = _mm512_mul_ps(x, _mm512_set1_ps(0.5));
    _mm512_fmadd_ps(half, _mm512_mul_ps(_mm512_mul_ps(z, p), r), half)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn rounding_to_bf16_is_to_nearest_even() {
        assert_eq!(round_to_bf16(1.0), 1.0);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0).
        assert_eq!(round_to_bf16(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(round_to_bf16(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
        assert!(round_to_bf16(f32::NAN).is_nan());
        assert_eq!(round_to_bf16(f32::INFINITY), f32::INFINITY);
        assert_eq!(round_to_bf16(-2.5), -2.5);
    }

    /// The tiles against an f64 product of the same bf16-rounded inputs, on shapes that
    /// are no multiple of a tile, a step or a block, with the tiles reconfigured for
    /// every product (each task configures and releases them).
    #[test]
    fn tiles_match_the_rounded_f64_product_on_odd_shapes() -> Result<()> {
        if !available() {
            super::super::skip(
                "tiles_match_the_rounded_f64_product_on_odd_shapes",
                "no AMX (AMX-TILE and AMX-BF16, granted by Linux) on this CPU",
            );
            return Ok(());
        }
        for &(m, k, n) in &[
            (1, 1, 1),
            (3, 5, 33),
            (17, 31, 16),
            (33, 64, 47),
            (13, 300, 70),
            (100, 600, 161),
            (129, 97, 300),
            (260, 768, 96),
        ] {
            let mut rand = super::super::test_values(0x2545_f491);
            let w: Vec<f32> = (0..n * k).map(|_| rand()).collect();
            let x: Vec<f32> = (0..m * k).map(|_| rand()).collect();
            let b: Vec<f32> = (0..n).map(|_| rand()).collect();
            let res: Vec<f32> = (0..m * n).map(|_| rand()).collect();
            let dev = Device::Cpu;
            let layer = AmxLinear::new(
                &Tensor::from_vec(w.clone(), (n, k), &dev)?,
                &Tensor::from_vec(b.clone(), n, &dev)?,
            )?;
            let xt = Tensor::from_vec(x.clone(), (m, k), &dev)?;
            let plain = layer
                .forward(&xt, Epilogue::Bias)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let rt = Tensor::from_vec(res.clone(), (m, n), &dev)?;
            let with_res = layer
                .forward(&xt, Epilogue::BiasResidual(&rt))?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let gelu = layer
                .forward(&xt, Epilogue::BiasGelu)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            for r in 0..m {
                for c in 0..n {
                    let want = f64::from(b[c])
                        + (0..k)
                            .map(|kk| {
                                f64::from(round_to_bf16(x[r * k + kk]))
                                    * f64::from(round_to_bf16(w[c * k + kk]))
                            })
                            .sum::<f64>();
                    let g = plain[r * n + c];
                    assert!(
                        (f64::from(g) - want).abs() <= 1e-5 * (k as f64).sqrt().max(1.0),
                        "{m}x{k}x{n} at ({r}, {c}): {g} vs {want}"
                    );
                    let i = r * n + c;
                    assert_eq!(with_res[i], plain[i] + res[i], "{m}x{k}x{n} residual");
                }
            }
            // GELU as the f32 path computes it, but for the reciprocal in place of a
            // division (`gelu16`).
            let mut want = plain.clone();
            gelu_slice_in_place(&mut want);
            for (g, w) in gelu.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                    "{m}x{k}x{n} GELU epilogue: {g} vs {w}"
                );
            }
        }
        Ok(())
    }
}
