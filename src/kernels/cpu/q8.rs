//! Int8 linear layers for `--quantize q8` on the CPU.
//!
//! The input dimension is cut into groups of 64. Weights are quantized once, symmetrically
//! per output column and group (`w ≈ ws·q`, q in -127..=127); activations at every call,
//! per row and group, asymmetrically (`x ≈ s·(u - z)`, u in 0..=L). Groups matter
//! because BERT's activations have a few channels ten to twenty times larger than the
//! rest: with one scale per row they would leave the other channels a handful of levels.
//! Inside a group the product is exact integer arithmetic; groups are summed in f32:
//!
//!   y[m,n] = Σ_g s[m,g]·ws[g,n]·Σ_{k∈g} u·q  -  Σ_g (s·z)[m,g]·(ws·Σq)[g,n]  +  b[n]
//!
//! Where the layer's input range per channel was measured (a calibration pass at load),
//! each input channel `k` is first scaled by `1/sₖ` and its weight row by `sₖ`, with
//! `sₖ = sqrt(max|xₖ| / max|Wₖ|)` (SmoothQuant's balance, α = ½): the product is the same,
//! but the few outlier channels of BERT's residual stream (one in nearly every group of
//! 64) no longer stretch their group's levels, and the weights take a share of it.
//!
//! On CPUs with AVX-512 VNNI one `vpdpbusd` does 64 byte multiply-adds, four times the
//! work of an f32 FMA, which is where the speed comes from; it takes bytes, so there the
//! activations have L = 255 levels. CPUs with AVX2 multiply 16-bit words (`vpmaddwd`, 16
//! multiply-adds), and so do others in portable code: a word holds L = 32767 levels at the
//! same cost as a byte, so there the activations are quantized 128 times finer and only
//! the weights' rounding is left (on the MiniLM fixture, the mean change of the SST-2
//! logit margin against f32 went from 0.026 to 0.017). The AVX2 and portable paths give
//! the same bits; VNNI gives its own, which the portable code reproduces from bytes.

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use super::elementwise::gelu_slice_in_place;
use super::gemm::Epilogue;
use super::microkernel::{row_tiles, AVX2_ROWS};
use super::par::{par_tasks, Disjoint};
use super::store::Finish;
use super::tensor;

/// Input channels per quantization group (16 steps of `vpdpbusd`'s 4 bytes).
const GROUP: usize = 64;
/// Columns per packed panel: three 16-lane vectors.
const NR: usize = 48;
/// Rows per register tile: 8 x 3 integer accumulators, plus 3 weight and 1 broadcast
/// registers, fit the 32 vector registers.
const MR: usize = 8;
/// Rows per parallel task: large enough that a weight panel read from L2 is reused.
const MC: usize = 64;
/// Panels per parallel task.
const PANELS_PER_TASK: usize = 2;

/// A linear layer `y = x W + b` with int8 weights.
pub struct Q8Linear {
    k: usize,
    n: usize,
    /// Groups along the input (the last one zero-padded).
    groups: usize,
    /// Panels of `NR` columns; in each, for every 4 input channels, 4 bytes per column.
    packed: Vec<i8>,
    /// `[panel][group][NR]`: weight scale per group and column.
    scale: Vec<f32>,
    /// `[panel][group][NR]`: `ws · Σ q` per group and column, for the zero-point correction.
    weight_sums: Vec<f32>,
    bias: Vec<f32>,
    /// `1/sₖ` per input channel, applied to the input before it is quantized; empty where
    /// no range was measured.
    unsmooth: Vec<f32>,
}

/// Levels of an activation quantized to a 16-bit word (the top of a signed word: the
/// word kernels multiply signed words).
const WORD_LEVELS: f32 = 32767.0;

/// Quantized activations, `[rows][groups * GROUP]`: bytes where VNNI multiplies them,
/// 16-bit words elsewhere.
enum Codes {
    Bytes(Vec<u8>),
    Words(Vec<i16>),
}

/// Some rows of `Codes`.
#[derive(Clone, Copy)]
enum CodeRows<'a> {
    Bytes(&'a [u8]),
    Words(&'a [i16]),
}

impl Codes {
    fn rows(&self, range: std::ops::Range<usize>) -> CodeRows<'_> {
        match self {
            Codes::Bytes(b) => CodeRows::Bytes(&b[range]),
            Codes::Words(w) => CodeRows::Words(&w[range]),
        }
    }
}

impl CodeRows<'_> {
    fn len(&self) -> usize {
        match self {
            CodeRows::Bytes(b) => b.len(),
            CodeRows::Words(w) => w.len(),
        }
    }
}

/// Rows of quantized activations and, per row and group, scale and `scale * zero point`.
struct Rows {
    codes: Codes,
    scale: Vec<f32>,
    scaled_zero: Vec<f32>,
}

impl Q8Linear {
    /// Quantizes `weight_t` (`[in, out]`, f32) and keeps `bias` (`[out]`). With
    /// `input_range` (`max |x|` per input channel, from a calibration pass), the scales
    /// are balanced between input and weight first (see the module's notes).
    pub fn new(weight_t: &Tensor, bias: &Tensor, input_range: Option<&[f32]>) -> Result<Self> {
        let (k, n) = weight_t.dims2()?;
        let mut w = weight_t.flatten_all()?.to_vec1::<f32>()?;
        let unsmooth = match input_range {
            Some(range) if range.len() != k => candle_core::bail!(
                "int8 layer: an input range of {} channels for a weight of {k}",
                range.len()
            ),
            Some(range) => smooth_weights(&mut w, n, range),
            None => Vec::new(),
        };
        let bias = bias.to_vec1::<f32>()?;
        let groups = k.div_ceil(GROUP);
        let kp = groups * GROUP;
        let panels = n.div_ceil(NR);
        let mut packed = vec![0i8; panels * kp * NR];
        let mut scale = vec![1f32; panels * groups * NR];
        // One panel per task, its columns read row by row as they lie in memory.
        let panel_sums: Vec<Vec<f32>> = packed
            .par_chunks_mut(kp * NR)
            .zip(scale.par_chunks_mut(groups * NR))
            .enumerate()
            .map(|(p, (packed, scale))| {
                let cols = p * NR..((p + 1) * NR).min(n);
                let mut sums = vec![0f32; groups * NR];
                for g in 0..groups {
                    let ks = g * GROUP..((g + 1) * GROUP).min(k);
                    let mut max = [0f32; NR];
                    for kk in ks.clone() {
                        for (m, &v) in max
                            .iter_mut()
                            .zip(&w[kk * n + cols.start..kk * n + cols.end])
                        {
                            *m = if v.abs() > *m { v.abs() } else { *m };
                        }
                    }
                    let ws = &mut scale[g * NR..(g + 1) * NR];
                    for (s, &m) in ws.iter_mut().zip(&max[..cols.len()]) {
                        *s = if m > 0.0 { m / 127.0 } else { 1.0 };
                    }
                    let mut count = [0i32; NR];
                    for kk in ks {
                        let row = &w[kk * n + cols.start..kk * n + cols.end];
                        for (j, &v) in row.iter().enumerate() {
                            let q = round_magic((v / ws[j]).clamp(-127.0, 127.0)) as i8;
                            packed[(kk / 4) * NR * 4 + j * 4 + kk % 4] = q;
                            count[j] += i32::from(q);
                        }
                    }
                    for j in 0..cols.len() {
                        sums[g * NR + j] = ws[j] * count[j] as f32;
                    }
                }
                sums
            })
            .collect();
        let weight_sums = panel_sums.concat();
        Ok(Self {
            k,
            n,
            groups,
            packed,
            scale,
            weight_sums,
            bias,
            unsmooth,
        })
    }

    /// `x` is `[m, in]`, f32; the result is `[m, out]`, finished by `epilogue` as each
    /// row is stored. Done as separate passes, the residual was a candle op with its own
    /// threads and buffer, and GELU a pass over memory: together about 15% of a MiniLM
    /// q8 profile.
    pub fn forward(&self, x: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.k {
            candle_core::bail!(
                "q8-linear: input has {k} features, the layer takes {}",
                self.k
            );
        }
        let x = x.contiguous()?;
        let y = match epilogue {
            Epilogue::Bias => tensor::read(&x, "q8-linear", |x| self.matmul(x, m, Finish::Bias))?,
            Epilogue::BiasGelu => {
                tensor::read(&x, "q8-linear", |x| self.matmul(x, m, Finish::Gelu))?
            }
            Epilogue::BiasResidual(r) => {
                tensor::read_with_residual(&x, r, (m, self.n), "q8-linear", |x, r| {
                    self.matmul(x, m, Finish::Residual(r))
                })?
            }
        };
        tensor::from_vec(y, (m, self.n))
    }

    fn quantize_rows(&self, x: &[f32], m: usize) -> Rows {
        let (k, groups) = (self.k, self.groups);
        let kp = groups * GROUP;
        let mut rows = Rows {
            codes: if vnni_available() {
                // On AMX tiles, rows up to a whole tile (zeros past `m`).
                Codes::Bytes(vec![0; m.div_ceil(AMX_ROWS) * AMX_ROWS * kp])
            } else {
                Codes::Words(vec![0; m * kp])
            },
            scale: vec![0f32; m * groups],
            scaled_zero: vec![0f32; m * groups],
        };
        let per_row = rows
            .scale
            .par_chunks_mut(groups)
            .zip(rows.scaled_zero.par_chunks_mut(groups))
            .zip(x.par_chunks(k));
        match &mut rows.codes {
            Codes::Bytes(u) => per_row
                .zip(u.par_chunks_mut(kp))
                .for_each(|(((s, sz), x), u)| self.quantize_row(x, u, s, sz, quantize_group)),
            Codes::Words(u) => per_row
                .zip(u.par_chunks_mut(kp))
                .for_each(|(((s, sz), x), u)| self.quantize_row(x, u, s, sz, quantize_words)),
        }
        rows
    }

    /// One row, a group at a time: scale and `scale * zero point` per group into `s`, `sz`.
    fn quantize_row<T>(
        &self,
        x: &[f32],
        u: &mut [T],
        s: &mut [f32],
        sz: &mut [f32],
        quantize: fn(&[f32], &mut [T]) -> (f32, i32),
    ) {
        let mut scaled = [0f32; GROUP];
        for (g, x) in x.chunks(GROUP).enumerate() {
            // Smoothed a group at a time, in a buffer that stays in L1.
            let x = match self.unsmooth.get(g * GROUP..g * GROUP + x.len()) {
                Some(unsmooth) => {
                    let scaled = &mut scaled[..x.len()];
                    for ((y, x), s) in scaled.iter_mut().zip(x).zip(unsmooth) {
                        *y = x * s;
                    }
                    &*scaled
                }
                None => x,
            };
            let (scale, zero) = quantize(x, &mut u[g * GROUP..g * GROUP + x.len()]);
            s[g] = scale;
            sz[g] = scale * zero as f32;
        }
    }

    fn matmul(&self, x: &[f32], m: usize, finish: Finish) -> Vec<f32> {
        self.matmul_on(x, m, finish, use_amx())
    }

    /// `matmul`, on AMX tiles where `amx` (and the codes are bytes).
    fn matmul_on(&self, x: &[f32], m: usize, finish: Finish, amx: bool) -> Vec<f32> {
        let (n, groups) = (self.n, self.groups);
        let kp = groups * GROUP;
        let rows = self.quantize_rows(x, m);
        #[cfg(target_arch = "x86_64")]
        if let (Codes::Bytes(bytes), true) = (&rows.codes, amx) {
            return self.matmul_amx(bytes, &rows, m, finish);
        }
        let _ = amx;
        let panels = n.div_ceil(NR);
        let row_tasks = m.div_ceil(MC);
        let col_tasks = panels.div_ceil(PANELS_PER_TASK);
        // Not zeroed first: the tasks write every value once.
        let mut y: Vec<f32> = Vec::with_capacity(m * n);
        // SAFETY: `y` owns m * n floats of capacity and nothing else touches them; each
        // task writes its own block through `part_ptr` before reading any of it.
        let y_out = unsafe { Disjoint::uninit(y.as_mut_ptr(), m * n) };
        par_tasks(row_tasks * col_tasks, |t| {
            let (rt, ct) = (t / col_tasks, t % col_tasks);
            let row_range = rt * MC..((rt + 1) * MC).min(m);
            let first_panel = ct * PANELS_PER_TASK;
            let last_panel = (first_panel + PANELS_PER_TASK).min(panels);
            let mut acc = [[0f32; NR]; MR];
            for p in first_panel..last_panel {
                let panel = Panel {
                    weights: &self.packed[p * kp * NR..(p + 1) * kp * NR],
                    scale: &self.scale[p * groups * NR..(p + 1) * groups * NR],
                    sums: &self.weight_sums[p * groups * NR..(p + 1) * groups * NR],
                };
                let cols = p * NR..((p + 1) * NR).min(n);
                for (r0, mr) in row_tiles(row_range.clone()) {
                    let a = Activations {
                        codes: rows.codes.rows(r0 * kp..(r0 + mr) * kp),
                        scale: &rows.scale[r0 * groups..(r0 + mr) * groups],
                        scaled_zero: &rows.scaled_zero[r0 * groups..(r0 + mr) * groups],
                    };
                    tile(&a, groups, mr, &panel, &mut acc);
                    // Bias, then GELU over the whole tile at once (a call per row of 48
                    // ran GELU's short-slice code: twice as slow), in the order the
                    // separate passes used, so the results are the same to the bit.
                    let bias = &self.bias[cols.clone()];
                    for row in acc.iter_mut().take(mr) {
                        for (a, b) in row.iter_mut().zip(bias) {
                            *a += b;
                        }
                    }
                    if let Finish::Gelu = finish {
                        gelu_slice_in_place(&mut acc.as_flattened_mut()[..mr * NR]);
                    }
                    for (i, acc) in acc.iter().take(mr).enumerate() {
                        let r = r0 + i;
                        // SAFETY: row r and these columns belong to this task alone.
                        let ptr = unsafe { y_out.part_ptr(r * n + cols.start, cols.len()) };
                        let acc = &acc[..cols.len()];
                        match finish {
                            Finish::Residual(res) => {
                                let res = &res[r * n + cols.start..r * n + cols.end];
                                for (j, (a, v)) in acc.iter().zip(res).enumerate() {
                                    // SAFETY: j < cols.len(), inside the part.
                                    unsafe { ptr.add(j).write(a + v) };
                                }
                            }
                            Finish::Bias | Finish::Gelu => {
                                // SAFETY: cols.len() floats, the part's length.
                                unsafe { ptr.copy_from_nonoverlapping(acc.as_ptr(), acc.len()) };
                            }
                        }
                    }
                }
            }
        });
        // SAFETY: the tasks, now joined, wrote all m * n floats.
        unsafe { y.set_len(m * n) };
        y
    }
}

/// Rows of a tile on AMX, to which the byte codes are padded.
const AMX_ROWS: usize = 16;
/// Row blocks of 32 per parallel task on AMX tiles.
const AMX_ROW_BLOCKS_PER_TASK: usize = 2;
/// Pairs of 16-column tiles per parallel task on AMX tiles.
const AMX_PAIRS_PER_TASK: usize = 3;

/// Whether the byte codes go through AMX tiles (`tdpbusd`) rather than VNNI: AMX-INT8
/// present and granted, and neither `BERT_CLI_PORTABLE` nor `BERT_CLI_NO_AMX` set.
fn use_amx() -> bool {
    vnni_available() && super::amx::int8_available()
}

#[cfg(target_arch = "x86_64")]
impl Q8Linear {
    /// `matmul` on AMX tiles, to the same bits as the VNNI kernel: a group's integer
    /// sums are exact either way (one `tdpbusd` of 64 channels per tile), and each group
    /// is scaled into the f32 sums with VNNI's two FMAs, in its order. The tiles do the
    /// integer products 16 times as fast as `vpdpbusd`; the scaling, 4 vector operations
    /// per 16 sums and group, then sets the pace.
    fn matmul_amx(&self, bytes: &[u8], rows: &Rows, m: usize, finish: Finish) -> Vec<f32> {
        let n = self.n;
        let col_tiles = n.div_ceil(16);
        let pairs = col_tiles.div_ceil(2);
        let row_blocks = m.div_ceil(2 * AMX_ROWS);
        let row_tasks = row_blocks.div_ceil(AMX_ROW_BLOCKS_PER_TASK);
        let col_tasks = pairs.div_ceil(AMX_PAIRS_PER_TASK);
        let mut y: Vec<f32> = Vec::with_capacity(m * n);
        // SAFETY: `y` owns m * n floats of capacity; each task writes its own rows and
        // columns through `part_ptr` before anything reads them.
        let y_out = unsafe { Disjoint::uninit(y.as_mut_ptr(), m * n) };
        par_tasks(row_tasks * col_tasks, |t| {
            let (rt, ct) = (t / col_tasks, t % col_tasks);
            let blocks =
                rt * AMX_ROW_BLOCKS_PER_TASK..((rt + 1) * AMX_ROW_BLOCKS_PER_TASK).min(row_blocks);
            let pair_range = ct * AMX_PAIRS_PER_TASK..((ct + 1) * AMX_PAIRS_PER_TASK).min(pairs);
            let _tiles = super::amx::Tiles::configure();
            for rb in blocks {
                let r0 = rb * 2 * AMX_ROWS;
                let mr = (m - r0).min(2 * AMX_ROWS);
                for p in pair_range.clone() {
                    // SAFETY: `use_amx()` held (AVX-512 F and AMX-INT8, tiles granted and
                    // now configured); `bytes` holds whole tiles of rows (`quantize_rows`).
                    unsafe { self.block_amx(bytes, rows, r0, mr, p, finish, y_out) };
                }
            }
        });
        // SAFETY: the tasks, now joined, wrote all m * n floats.
        unsafe { y.set_len(m * n) };
        y
    }

    /// Rows `r0..r0 + mr` (at most 32) by columns `32 p..32 p + 32` (those below `n`):
    /// the groups' sums on the tiles, scaled as `tile_vnni` scales them, then bias, GELU
    /// or residual as `matmul` adds them, written to `y`.
    ///
    /// # Safety
    /// As `matmul_amx` says; this task alone owns these rows and columns of `y`.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block_amx(
        &self,
        bytes: &[u8],
        rows: &Rows,
        r0: usize,
        mr: usize,
        p: usize,
        finish: Finish,
        y: Disjoint,
    ) {
        use std::arch::x86_64::*;
        let (n, groups) = (self.n, self.groups);
        let kp = groups * GROUP;
        let panels = n.div_ceil(NR);
        // The two 16-column tiles: panel and place in it. A second tile past the last
        // panel repeats the first (its sums are computed and never stored).
        let tile_of = |j: usize| (j / 3, j % 3);
        let j0 = 2 * p;
        let j1 = if (2 * p + 1) / 3 < panels {
            2 * p + 1
        } else {
            j0
        };
        let (t0, t1) = (tile_of(j0), tile_of(j1));
        assert!(bytes.len() >= (r0 + mr).div_ceil(AMX_ROWS) * AMX_ROWS * kp);
        assert!(
            rows.scale.len() >= (r0 + mr) * groups && rows.scaled_zero.len() >= (r0 + mr) * groups
        );
        let mut f = [[_mm512_setzero_ps(); 2]; 2 * AMX_ROWS];
        let mut c = [
            super::amx::Int8Block([0; 4 * 256]),
            super::amx::Int8Block([0; 4 * 256]),
        ];
        let sums = |g: usize, c: &mut super::amx::Int8Block| {
            let b = |(panel, t): (usize, usize)| {
                self.packed[panel * kp * NR + g * 16 * NR * 4 + t * 64..].as_ptr()
            };
            super::amx::int8_group(
                bytes[r0 * kp + g * GROUP..].as_ptr(),
                kp,
                mr > AMX_ROWS,
                b(t0),
                b(t1),
                NR * 4,
                c,
            );
        };
        sums(0, &mut c[0]);
        for g in 0..groups {
            // The next group's tiles go first, so that they run while this group's sums
            // are scaled (the tiles and the vector unit work side by side; one group at
            // a time, each waited for the other).
            let (this, next) = c.split_at_mut(1);
            let (this, next) = if g % 2 == 0 {
                (&this[0], &mut next[0])
            } else {
                (&next[0], &mut this[0])
            };
            if g + 1 < groups {
                sums(g + 1, next);
            }
            let c = this;
            let at = |(panel, t): (usize, usize), v: &[f32]| {
                _mm512_loadu_ps(v.as_ptr().add(panel * groups * NR + g * NR + t * 16))
            };
            let w = [at(t0, &self.scale), at(t1, &self.scale)];
            let z = [at(t0, &self.weight_sums), at(t1, &self.weight_sums)];
            for (i, f) in f.iter_mut().enumerate().take(mr) {
                let r = r0 + i;
                let s = _mm512_set1_ps(*rows.scale.get_unchecked(r * groups + g));
                let sz = _mm512_set1_ps(*rows.scaled_zero.get_unchecked(r * groups + g));
                for (h, (f, (w, z))) in f.iter_mut().zip(w.iter().zip(&z)).enumerate() {
                    let sums =
                        c.0.as_ptr()
                            .add((2 * (i / AMX_ROWS) + h) * 256 + (i % AMX_ROWS) * 16);
                    let sums = _mm512_cvtepi32_ps(_mm512_loadu_si512(sums as *const _));
                    let scaled = _mm512_fmadd_ps(sums, _mm512_mul_ps(s, *w), *f);
                    *f = _mm512_fnmadd_ps(sz, *z, scaled);
                }
            }
        }
        let c0 = j0 * 16;
        let width = (if j1 == j0 { 16 } else { 32 }).min(n - c0);
        let bias = &self.bias[c0..c0 + width];
        let mut row = [0f32; 32];
        for (i, f) in f.iter().enumerate().take(mr) {
            _mm512_storeu_ps(row.as_mut_ptr(), f[0]);
            _mm512_storeu_ps(row.as_mut_ptr().add(16), f[1]);
            let row = &mut row[..width];
            for (a, b) in row.iter_mut().zip(bias) {
                *a += b;
            }
            let r = r0 + i;
            match finish {
                Finish::Bias => {}
                Finish::Gelu => gelu_slice_in_place(row),
                Finish::Residual(res) => {
                    for (a, v) in row.iter_mut().zip(&res[r * n + c0..r * n + c0 + width]) {
                        *a += v;
                    }
                }
            }
            let ptr = y.part_ptr(r * n + c0, width);
            ptr.copy_from_nonoverlapping(row.as_ptr(), width);
        }
    }
}

/// Raises `range` to `max |x|` per channel over `x`, rows of `range.len()` channels: the
/// input range `Q8Linear::new` takes, gathered over a calibration pass.
pub fn raise_input_range(range: &mut [f32], x: &[f32]) {
    for row in x.chunks(range.len().max(1)) {
        for (r, v) in range.iter_mut().zip(row) {
            *r = r.max(v.abs());
        }
    }
}

/// Scales row `k` of `w` (`[in, n]`) by `sₖ = sqrt(range[k] / max|w[k, ..]|)` and returns
/// the `1/sₖ` the input is to be multiplied by. A channel the calibration never saw move,
/// or whose weights are all zero, keeps `sₖ = 1`: a tiny `sₖ` would blow up any value it
/// does take later.
fn smooth_weights(w: &mut [f32], n: usize, range: &[f32]) -> Vec<f32> {
    w.chunks_mut(n)
        .zip(range)
        .map(|(row, &x)| {
            let wmax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let s = (x / wmax).sqrt();
            if !(x > 0.0 && wmax > 0.0 && s.is_finite() && s > 0.0) {
                return 1.0;
            }
            for v in row.iter_mut() {
                *v *= s;
            }
            1.0 / s
        })
        .collect()
}

/// Asymmetric: `u = round(x / s) + z` with `s = (max - min) / 255` and zero point `z`, so
/// the 256 levels span exactly the group's range (GELU outputs are nearly all positive,
/// and a symmetric range would waste half of them). Returns `(s, z)`.
fn quantize_group(x: &[f32], out: &mut [u8]) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    if x.len() == GROUP && out.len() == GROUP && vnni_available() {
        // SAFETY: AVX-512 F and BW were detected (`vnni_available` checks both); the
        // lengths were just checked.
        return unsafe { quantize_full_group_avx512(x, out) };
    }
    let mut scale_zero = (1.0, 0);
    quantize_group_simd(x, out, &mut scale_zero);
    scale_zero
}

/// `quantize_group` into 16-bit words: 32767 levels instead of 255.
fn quantize_words(x: &[f32], out: &mut [i16]) -> (f32, i32) {
    let mut scale_zero = (1.0, 0);
    quantize_words_simd(x, out, &mut scale_zero);
    scale_zero
}

/// `quantize_group` for one whole group in registers: the generic code's 16-lane
/// reductions ended in 32 scalar steps per 64 values, and a call per group (14% of a
/// MiniLM q8 profile). Same arithmetic, so the same bytes: multiply then add (no FMA),
/// clamp, and the conversion's default rounding (to nearest, ties to even) in place of
/// `round_magic`.
///
/// # Safety
/// The CPU must have AVX-512 F and BW; `x` and `out` must hold `GROUP` values each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_full_group_avx512(x: &[f32], out: &mut [u8]) -> (f32, i32) {
    use std::arch::x86_64::*;
    let p = x.as_ptr();
    let v = [
        _mm512_loadu_ps(p),
        _mm512_loadu_ps(p.add(16)),
        _mm512_loadu_ps(p.add(32)),
        _mm512_loadu_ps(p.add(48)),
    ];
    let lo = _mm512_min_ps(_mm512_min_ps(v[0], v[1]), _mm512_min_ps(v[2], v[3]));
    let hi = _mm512_max_ps(_mm512_max_ps(v[0], v[1]), _mm512_max_ps(v[2], v[3]));
    // The range always includes 0, so that 0 is exact.
    let lo = _mm512_reduce_min_ps(lo).min(0.0);
    let hi = _mm512_reduce_max_ps(hi).max(0.0);
    let s = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
    let inv = 1.0 / s;
    let z = round_magic((-lo * inv).clamp(0.0, 255.0));
    let (vinv, vz) = (_mm512_set1_ps(inv), _mm512_set1_ps(z));
    let (floor, top) = (_mm512_setzero_ps(), _mm512_set1_ps(255.0));
    for (i, v) in v.iter().enumerate() {
        let q = _mm512_add_ps(_mm512_mul_ps(*v, vinv), vz);
        let q = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(q, floor), top));
        _mm_storeu_si128(
            out.as_mut_ptr().add(i * 16) as *mut __m128i,
            _mm512_cvtepi32_epi8(q),
        );
    }
    (s, z as i32)
}

/// Round to nearest (ties to even) for |x| < 2^22, without a call to `roundf`.
#[inline(always)]
fn round_magic(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0;
    (x + ROUND) - ROUND
}

/// `u = round(x / s) + z` in `0..=levels`, `s = (max - min) / levels`; returns `(s, z)`.
/// Lane-wise min/max (a single running one stays scalar), and rounding by adding and
/// taking off 1.5 * 2^23 instead of a call to `roundf` per element.
#[inline(always)]
fn quantize_levels<T>(
    x: &[f32],
    levels: f32,
    out: &mut [T],
    store: impl Fn(i32) -> T,
) -> (f32, i32) {
    // The range always includes 0, so that 0 is exact.
    let lo = super::elementwise::lane_min(x).min(0.0);
    let hi = super::elementwise::lane_max(x).max(0.0);
    let s = if hi > lo { (hi - lo) / levels } else { 1.0 };
    let inv = 1.0 / s;
    let z = round_magic((-lo * inv).clamp(0.0, levels));
    for (o, &v) in out.iter_mut().zip(x) {
        // Through i32: already in range, and a plain conversion vectorises where a
        // saturating one does not.
        *o = store(round_magic((v * inv + z).clamp(0.0, levels)) as i32);
    }
    (s, z as i32)
}

dispatch_simd!(
    quantize_group_simd,
    |x: &[f32], out: &mut [u8], scale_zero: &mut (f32, i32)| {
        *scale_zero = quantize_levels(x, 255.0, out, |u| u as u8);
    }
);

dispatch_simd!(
    quantize_words_simd,
    |x: &[f32], out: &mut [i16], scale_zero: &mut (f32, i32)| {
        *scale_zero = quantize_levels(x, WORD_LEVELS, out, |u| u as i16);
    }
);

/// Up to `MR` rows of quantized activations, and `scale` `[rows][groups]`.
struct Activations<'a> {
    codes: CodeRows<'a>,
    scale: &'a [f32],
    /// `[rows][groups]`: scale times zero point.
    scaled_zero: &'a [f32],
}

/// One packed panel: `weights` `[groups * GROUP / 4][NR][4]`, `scale` `[groups][NR]`.
struct Panel<'a> {
    weights: &'a [i8],
    scale: &'a [f32],
    /// `[groups][NR]`: `ws · Σ q`.
    sums: &'a [f32],
}

/// `acc[i][j] = Σ_g s[i,g]·ws[g,j]·Σ_{k∈g} u[i,k]·q[k,j] - (s·z)[i,g]·(ws·Σq)[g,j]` for
/// `mr` rows: the product without bias.
fn tile(a: &Activations, groups: usize, mr: usize, panel: &Panel, acc: &mut [[f32; NR]; MR]) {
    let kp = groups * GROUP;
    assert!(mr <= MR && mr > 0);
    assert!(a.codes.len() >= mr * kp && a.scale.len() >= mr * groups);
    assert!(a.scaled_zero.len() >= mr * groups);
    assert!(panel.weights.len() >= kp * NR && panel.scale.len() >= groups * NR);
    assert!(panel.sums.len() >= groups * NR);
    match a.codes {
        #[cfg(target_arch = "x86_64")]
        CodeRows::Bytes(bytes) if vnni_available() => {
            // SAFETY: the features were just detected; the asserts above bound every access.
            unsafe {
                match mr {
                    8 => tile_vnni::<8>(bytes, a, groups, panel, acc),
                    7 => tile_vnni::<7>(bytes, a, groups, panel, acc),
                    6 => tile_vnni::<6>(bytes, a, groups, panel, acc),
                    5 => tile_vnni::<5>(bytes, a, groups, panel, acc),
                    4 => tile_vnni::<4>(bytes, a, groups, panel, acc),
                    3 => tile_vnni::<3>(bytes, a, groups, panel, acc),
                    2 => tile_vnni::<2>(bytes, a, groups, panel, acc),
                    _ => tile_vnni::<1>(bytes, a, groups, panel, acc),
                }
            }
        }
        // `row_tiles` cuts tiles of at most `AVX2_ROWS` rows wherever this kernel runs.
        #[cfg(target_arch = "x86_64")]
        CodeRows::Words(words) if avx2_available() && mr <= AVX2_ROWS => {
            // SAFETY: AVX2 was detected; the asserts above bound every access.
            unsafe { tile_avx2(words, a, groups, mr, panel, acc) };
        }
        _ => tile_portable(a, groups, mr, panel, acc),
    }
}

/// Whether this CPU runs the AVX2 int8 kernel: AVX2 without VNNI (checked once).
#[cfg(target_arch = "x86_64")]
pub fn avx2_available() -> bool {
    !vnni_available() && super::avx2()
}

/// Whether this CPU runs the AVX2 int8 kernel.
#[cfg(not(target_arch = "x86_64"))]
pub fn avx2_available() -> bool {
    false
}

/// The integer tile on AVX2: `vpmaddwd` multiplies pairs of 16-bit values and adds each
/// pair into a 32-bit lane. Exact: `vpmaddubsw`, the byte instruction, saturates its
/// 16-bit pair sums (255 · 127 · 2 does not fit), which is why ONNX Runtime and PyTorch
/// document a reduced range on such CPUs; words do not, and they carry activations of up
/// to 32767 levels (a group's 64 products stay under 2^28). On AMD's cores `vpmaddwd`
/// does as many multiply-adds per cycle as `vpmaddubsw` followed by the `vpmaddwd` that
/// widens its sums, so the exact way costs nothing there.
///
/// The panel's 4 bytes per column and step become 4 words: one `vpmaddwd` against the
/// row's 4 activations (as words, broadcast) gives two partial sums per column, which a
/// horizontal add joins at the end of each group. Columns go 8 at a time (two weight
/// registers), for up to `AVX2_ROWS` rows (12 accumulators).
///
/// # Safety
/// The CPU must have AVX2; `mr <= AVX2_ROWS`; `words` (`a`'s codes), `a` and `panel` must
/// hold `mr` rows and `groups` groups (as `tile` asserts).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(
    words: &[i16],
    a: &Activations,
    groups: usize,
    mr: usize,
    panel: &Panel,
    acc: &mut [[f32; NR]; MR],
) {
    for chunk in 0..NR / 8 {
        match mr {
            6 => chunk_avx2::<6>(words, a, groups, panel, chunk, acc),
            5 => chunk_avx2::<5>(words, a, groups, panel, chunk, acc),
            4 => chunk_avx2::<4>(words, a, groups, panel, chunk, acc),
            3 => chunk_avx2::<3>(words, a, groups, panel, chunk, acc),
            2 => chunk_avx2::<2>(words, a, groups, panel, chunk, acc),
            _ => chunk_avx2::<1>(words, a, groups, panel, chunk, acc),
        }
    }
}

/// `R` rows times the panel's columns `chunk * 8..chunk * 8 + 8`, into
/// `acc[i][chunk * 8..][..8]`, with VNNI's f32 arithmetic per group.
///
/// # Safety
/// As `tile_avx2`, for `R` rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn chunk_avx2<const R: usize>(
    words: &[i16],
    a: &Activations,
    groups: usize,
    panel: &Panel,
    chunk: usize,
    acc: &mut [[f32; NR]; MR],
) {
    use std::arch::x86_64::*;
    let kp = groups * GROUP;
    let col = chunk * 8;
    let xp = words.as_ptr();
    let wp = panel.weights.as_ptr().add(col * 4);
    let mut f = [_mm256_setzero_ps(); R];
    for g in 0..groups {
        let mut c = [[_mm256_setzero_si256(); 2]; R];
        for step in g * GROUP / 4..(g + 1) * GROUP / 4 {
            let w = wp.add(step * NR * 4);
            let w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(w as *const __m128i));
            let w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(w.add(16) as *const __m128i));
            for (i, c) in c.iter_mut().enumerate() {
                let x =
                    _mm256_set1_epi64x((xp.add(i * kp + step * 4) as *const i64).read_unaligned());
                c[0] = _mm256_add_epi32(c[0], _mm256_madd_epi16(x, w0));
                c[1] = _mm256_add_epi32(c[1], _mm256_madd_epi16(x, w1));
            }
        }
        let ws = _mm256_loadu_ps(panel.scale.as_ptr().add(g * NR + col));
        let z = _mm256_loadu_ps(panel.sums.as_ptr().add(g * NR + col));
        for (i, (f, c)) in f.iter_mut().zip(&c).enumerate() {
            // Lanes of c[0]: columns 0-3, two halves each; of c[1]: columns 4-7. The
            // horizontal add leaves columns 0 1 4 5 | 2 3 6 7; the permute puts them in
            // order.
            let sums = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_hadd_epi32(c[0], c[1]));
            let s = _mm256_set1_ps(*a.scale.get_unchecked(i * groups + g));
            let sz = _mm256_set1_ps(*a.scaled_zero.get_unchecked(i * groups + g));
            let scaled = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_mul_ps(s, ws), *f);
            *f = _mm256_fnmadd_ps(sz, z, scaled);
        }
    }
    for (f, acc) in f.iter().zip(acc.iter_mut()) {
        _mm256_storeu_ps(acc.as_mut_ptr().add(col), *f);
    }
}

/// Whether this CPU runs the VNNI kernel (checked once).
#[cfg(target_arch = "x86_64")]
pub fn vnni_available() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
            && !super::portable_only()
    })
}

/// Whether this CPU runs the VNNI kernel.
#[cfg(not(target_arch = "x86_64"))]
pub fn vnni_available() -> bool {
    false
}

fn tile_portable(
    a: &Activations,
    groups: usize,
    mr: usize,
    panel: &Panel,
    acc: &mut [[f32; NR]; MR],
) {
    match a.codes {
        CodeRows::Bytes(bytes) => tile_portable_codes(bytes, a, groups, mr, panel, acc),
        CodeRows::Words(words) => tile_portable_codes(words, a, groups, mr, panel, acc),
    }
}

fn tile_portable_codes<T: Copy + Into<i32>>(
    codes: &[T],
    a: &Activations,
    groups: usize,
    mr: usize,
    panel: &Panel,
    acc: &mut [[f32; NR]; MR],
) {
    let kp = groups * GROUP;
    for (i, acc) in acc.iter_mut().take(mr).enumerate() {
        acc.fill(0.0);
        for g in 0..groups {
            let mut sums = [0i32; NR];
            for kk in (g * GROUP..(g + 1) * GROUP).step_by(4) {
                let quad = &codes[i * kp + kk..i * kp + kk + 4];
                let w = &panel.weights[kk / 4 * NR * 4..(kk / 4 + 1) * NR * 4];
                for (j, sum) in sums.iter_mut().enumerate() {
                    for t in 0..4 {
                        *sum += quad[t].into() * i32::from(w[j * 4 + t]);
                    }
                }
            }
            // The SIMD kernels' two FMAs, so that every CPU gives the same bits.
            let (s, sz) = (a.scale[i * groups + g], a.scaled_zero[i * groups + g]);
            for (j, out) in acc.iter_mut().enumerate() {
                let scaled = (sums[j] as f32).mul_add(s * panel.scale[g * NR + j], *out);
                *out = (-sz).mul_add(panel.sums[g * NR + j], scaled);
            }
        }
    }
}

/// The integer tile on VNNI: `vpdpbusd` multiplies 4 bytes per lane and adds them to the
/// lane's i32 sum.
///
/// # Safety
/// The CPU must have AVX-512 F, BW and VNNI; `bytes` (`a`'s codes), `a` and `panel` must
/// hold `R` rows and `groups` groups (as `tile` asserts).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_vnni<const R: usize>(
    bytes: &[u8],
    a: &Activations,
    groups: usize,
    panel: &Panel,
    acc: &mut [[f32; NR]; MR],
) {
    use std::arch::x86_64::*;
    let kp = groups * GROUP;
    let mut f = [[_mm512_setzero_ps(); 3]; R];
    let (ap, wp) = (bytes.as_ptr(), panel.weights.as_ptr());
    for g in 0..groups {
        let mut c = [[_mm512_setzero_si512(); 3]; R];
        for step in g * GROUP / 4..(g + 1) * GROUP / 4 {
            let w = wp.add(step * NR * 4);
            let b0 = _mm512_loadu_si512(w as *const _);
            let b1 = _mm512_loadu_si512(w.add(64) as *const _);
            let b2 = _mm512_loadu_si512(w.add(128) as *const _);
            for (i, c) in c.iter_mut().enumerate() {
                let x =
                    _mm512_set1_epi32((ap.add(i * kp + step * 4) as *const i32).read_unaligned());
                c[0] = _mm512_dpbusd_epi32(c[0], x, b0);
                c[1] = _mm512_dpbusd_epi32(c[1], x, b1);
                c[2] = _mm512_dpbusd_epi32(c[2], x, b2);
            }
        }
        let ws = panel.scale.as_ptr().add(g * NR);
        let w = [
            _mm512_loadu_ps(ws),
            _mm512_loadu_ps(ws.add(16)),
            _mm512_loadu_ps(ws.add(32)),
        ];
        let zs = panel.sums.as_ptr().add(g * NR);
        let z = [
            _mm512_loadu_ps(zs),
            _mm512_loadu_ps(zs.add(16)),
            _mm512_loadu_ps(zs.add(32)),
        ];
        for (i, (f, c)) in f.iter_mut().zip(&c).enumerate() {
            let s = _mm512_set1_ps(*a.scale.get_unchecked(i * groups + g));
            let sz = _mm512_set1_ps(*a.scaled_zero.get_unchecked(i * groups + g));
            for v in 0..3 {
                let scaled =
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(c[v]), _mm512_mul_ps(s, w[v]), f[v]);
                f[v] = _mm512_fnmadd_ps(sz, z[v], scaled);
            }
        }
    }
    for (i, f) in f.iter().enumerate() {
        for (v, reg) in f.iter().enumerate() {
            _mm512_storeu_ps(acc[i][v * 16..].as_mut_ptr(), *reg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AMX tiles give the VNNI kernel's bits, on shapes that are no multiple of a
    /// tile, a pair of tiles, a panel or a group, with every epilogue.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn amx_tiles_give_the_vnni_kernels_bits() -> Result<()> {
        if !use_amx() {
            super::super::skip(
                "amx_tiles_give_the_vnni_kernels_bits",
                "no AMX-INT8 (with AVX-512 VNNI, granted by Linux) on this CPU",
            );
            return Ok(());
        }
        for &(m, k, n) in &[
            (1, 64, 16),
            (3, 70, 33),
            (17, 130, 48),
            (33, 384, 100),
            (70, 768, 161),
        ] {
            let mut rand = super::super::test_values(0x5eed_1234);
            let w: Vec<f32> = (0..k * n).map(|_| rand()).collect();
            let x: Vec<f32> = (0..m * k).map(|_| 4.0 * rand()).collect();
            let b: Vec<f32> = (0..n).map(|_| rand()).collect();
            let res: Vec<f32> = (0..m * n).map(|_| rand()).collect();
            let range: Vec<f32> = (0..k).map(|i| 1.0 + (i % 7) as f32).collect();
            let dev = candle_core::Device::Cpu;
            let layer = Q8Linear::new(
                &Tensor::from_vec(w, (k, n), &dev)?,
                &Tensor::from_vec(b, n, &dev)?,
                Some(&range),
            )?;
            for finish in [Finish::Bias, Finish::Gelu, Finish::Residual(&res)] {
                let tiles = layer.matmul_on(&x, m, finish, true);
                let vnni = layer.matmul_on(&x, m, finish, false);
                assert!(
                    tiles
                        .iter()
                        .zip(&vnni)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{m}x{k}x{n}: the tiles differ from VNNI"
                );
            }
        }
        Ok(())
    }
    use candle_core::Device;

    /// Exact integer reference of what the kernel must compute, from the same quantization
    /// (`w` as the layer holds it: balanced against the input where it was smoothed).
    fn reference(x: &[f32], m: usize, layer: &Q8Linear, w: &[f32]) -> Vec<f32> {
        let (k, n) = (layer.k, layer.n);
        let x: Vec<f32> = if layer.unsmooth.is_empty() {
            x.to_vec()
        } else {
            x.chunks(k)
                .flat_map(|row| row.iter().zip(&layer.unsmooth).map(|(x, s)| x * s))
                .collect()
        };
        let mut y = vec![0f32; m * n];
        for r in 0..m {
            for c in 0..n {
                let mut total = f64::from(layer.bias[c]);
                for (g, xs) in x[r * k..(r + 1) * k].chunks(GROUP).enumerate() {
                    // Bytes where VNNI runs, words elsewhere, as `quantize_rows` chooses.
                    let (u, (s, z)) = if vnni_available() {
                        let mut u = vec![0u8; xs.len()];
                        let sz = quantize_group(xs, &mut u);
                        (u.into_iter().map(i64::from).collect::<Vec<_>>(), sz)
                    } else {
                        let mut u = vec![0i16; xs.len()];
                        let sz = quantize_words(xs, &mut u);
                        (u.into_iter().map(i64::from).collect(), sz)
                    };
                    let ws = layer.scale[((c / NR) * layer.groups + g) * NR + c % NR];
                    let mut acc = 0i64;
                    for (t, &u) in u.iter().enumerate() {
                        let kk = g * GROUP + t;
                        let q = round_magic((w[kk * n + c] / ws).clamp(-127.0, 127.0)) as i64;
                        acc += (u - i64::from(z)) * q;
                    }
                    total += acc as f64 * f64::from(s) * f64::from(ws);
                }
                y[r * n + c] = total as f32;
            }
        }
        y
    }

    #[test]
    fn matches_integer_reference_and_f32_on_odd_shapes() -> Result<()> {
        // Odd sizes on purpose: k not a multiple of 4 or 64, n not of 48, m not of 8 or 64.
        for &(m, k, n) in &[(1, 5, 3), (13, 37, 50), (70, 130, 97), (9, 384, 144)] {
            let mut rand = super::super::test_values(0x9e37_79b9);
            let w: Vec<f32> = (0..k * n).map(|_| rand()).collect();
            // One channel ten times larger than the rest, as in BERT's activations.
            let x: Vec<f32> = (0..m * k)
                .map(|i| rand() * if i % k == 3 { 30.0 } else { 3.0 })
                .collect();
            let b: Vec<f32> = (0..n).map(|_| rand()).collect();
            let dev = Device::Cpu;
            let wt = Tensor::from_vec(w.clone(), (k, n), &dev)?;
            let xt = Tensor::from_vec(x.clone(), (m, k), &dev)?;
            for smoothed in [false, true] {
                let range = smoothed.then(|| input_range(&x, k));
                let layer = Q8Linear::new(
                    &wt,
                    &Tensor::from_vec(b.clone(), n, &dev)?,
                    range.as_deref(),
                )?;
                let mut w = w.clone();
                if let Some(range) = &range {
                    smooth_weights(&mut w, n, range);
                }
                let got = layer
                    .forward(&xt, Epilogue::Bias)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let want = reference(&x, m, &layer, &w);
                // GELU and a residual finished as rows are stored: the same bits as the
                // separate passes they replace.
                let mut gelu = Tensor::from_vec(got.clone(), (m, n), &dev)?;
                super::super::gelu_in_place(&gelu)?;
                gelu = gelu.contiguous()?;
                let fused = layer.forward(&xt, Epilogue::BiasGelu)?;
                assert_eq!(
                    fused.flatten_all()?.to_vec1::<f32>()?,
                    gelu.flatten_all()?.to_vec1::<f32>()?
                );
                let residual = Tensor::from_vec(
                    (0..m * n).map(|_| rand()).collect::<Vec<f32>>(),
                    (m, n),
                    &dev,
                )?;
                let added = (Tensor::from_vec(got.clone(), (m, n), &dev)? + &residual)?;
                let fused = layer.forward(&xt, Epilogue::BiasResidual(&residual))?;
                assert_eq!(
                    fused.flatten_all()?.to_vec1::<f32>()?,
                    added.flatten_all()?.to_vec1::<f32>()?
                );
                let wrong = Tensor::zeros((m, n + 1), candle_core::DType::F32, &dev)?;
                assert!(layer.forward(&xt, Epilogue::BiasResidual(&wrong)).is_err());
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 1e-3 * w.abs().max(1.0),
                        "{m}x{k}x{n}: {g} vs {w}"
                    );
                }
                // And close to the f32 product.
                let exact = xt
                    .matmul(&wt)?
                    .broadcast_add(&Tensor::from_vec(b.clone(), n, &dev)?)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let typical =
                    (exact.iter().map(|v| v * v).sum::<f32>() / exact.len() as f32).sqrt();
                let worst = got
                    .iter()
                    .zip(&exact)
                    .fold(0f32, |a, (g, e)| a.max((g - e).abs()));
                assert!(
                    worst < 0.05 * typical.max(1.0),
                    "{m}x{k}x{n}: off by {worst}, typical {typical}"
                );
            }
        }
        Ok(())
    }

    /// `max |x|` per channel of `[rows, k]` values.
    fn input_range(x: &[f32], k: usize) -> Vec<f32> {
        let mut range = vec![0f32; k];
        raise_input_range(&mut range, x);
        range
    }

    /// Root-mean-square difference from the f32 product.
    fn rms_error(layer: &Q8Linear, x: &Tensor, w: &Tensor) -> Result<f32> {
        let got = layer.forward(x, Epilogue::Bias)?;
        let diff = (got - x.matmul(w)?)?.flatten_all()?.to_vec1::<f32>()?;
        Ok((diff.iter().map(|d| d * d).sum::<f32>() / diff.len() as f32).sqrt())
    }

    #[test]
    fn a_measured_input_range_shrinks_the_error_of_outlier_channels() -> Result<()> {
        // One large channel in each group of 64, as in BERT's residual stream.
        let (m, k, n) = (24, 256, 96);
        let mut rand = super::super::test_values(0x5eed_0123);
        let w: Vec<f32> = (0..k * n).map(|_| rand()).collect();
        let x: Vec<f32> = (0..m * k)
            .map(|i| rand() * if i % 64 == 5 { 20.0 } else { 1.0 })
            .collect();
        let dev = Device::Cpu;
        let (wt, xt) = (
            Tensor::from_vec(w, (k, n), &dev)?,
            Tensor::from_vec(x.clone(), (m, k), &dev)?,
        );
        let zero = Tensor::zeros(n, candle_core::DType::F32, &dev)?;
        let plain = rms_error(&Q8Linear::new(&wt, &zero, None)?, &xt, &wt)?;
        let mut range = input_range(&x, k);
        // A channel the calibration never saw move keeps its scale.
        range[7] = 0.0;
        let layer = Q8Linear::new(&wt, &zero, Some(&range))?;
        assert_eq!(layer.unsmooth[7], 1.0);
        assert!(layer.unsmooth[5] < layer.unsmooth[6]);
        let smoothed = rms_error(&layer, &xt, &wt)?;
        // Bytes gain most: the outlier no longer takes its group's 255 levels. Words have
        // levels to spare, and gain on the weights' side alone: the outlier channel's
        // weights, scaled up, are rounded finer where their error is multiplied most
        // (0.88 of the error without a range, for words, on this test's values).
        let bound = if vnni_available() { 0.7 } else { 0.95 };
        assert!(
            smoothed < bound * plain,
            "rms error {smoothed} with the range, {plain} without"
        );
        assert!(Q8Linear::new(&wt, &zero, Some(&range[1..])).is_err());
        Ok(())
    }

    /// Either width puts every value within half a step of where it was, with steps of
    /// `range / levels`: words are 128 times finer than bytes.
    #[test]
    fn words_quantize_128_times_finer_than_bytes() {
        let mut rand = super::super::test_values(0x0bad_cafe);
        for spread in [1e-3f32, 1.0, 40.0] {
            // Mostly positive, like GELU outputs, with one outlier.
            let mut x: Vec<f32> = (0..GROUP).map(|_| (rand() + 0.3) * spread).collect();
            x[17] = -9.0 * spread;
            let (lo, hi) = x
                .iter()
                .fold((0f32, 0f32), |(l, h), &v| (l.min(v), h.max(v)));
            let mut b = vec![0u8; GROUP];
            let (sb, zb) = quantize_group(&x, &mut b);
            let mut w = vec![0i16; GROUP];
            let (sw, zw) = quantize_words(&x, &mut w);
            assert!(((sb / sw) - WORD_LEVELS / 255.0).abs() < 1e-3 * WORD_LEVELS / 255.0);
            assert!((sw - (hi - lo) / WORD_LEVELS).abs() <= 1e-6 * sw);
            for (name, s, z, u) in [
                (
                    "bytes",
                    sb,
                    zb,
                    b.iter().map(|&u| i32::from(u)).collect::<Vec<_>>(),
                ),
                ("words", sw, zw, w.iter().map(|&u| i32::from(u)).collect()),
            ] {
                for (&x, &u) in x.iter().zip(&u) {
                    assert!(u >= 0, "{name}: {u}");
                    let back = s * (u - z) as f32;
                    assert!(
                        (back - x).abs() <= 0.51 * s,
                        "{name}, spread {spread}: {x} came back as {back}, step {s}"
                    );
                }
            }
        }
    }

    #[test]
    fn group_fast_path_equals_generic_code() {
        if !vnni_available() {
            super::super::skip(
                "group_fast_path_equals_generic_code",
                "this CPU has no AVX-512 VNNI (or BERT_CLI_PORTABLE is set): only the generic code runs",
            );
            return;
        }
        let mut rand = super::super::test_values(0x9e37_79b9);
        for spread in [0.0f32, 1e-3, 1.0, 40.0] {
            // Mostly positive (like GELU outputs), with exact ties to the rounding steps.
            let x: Vec<f32> = (0..GROUP)
                .map(|i| {
                    if i % 9 == 0 {
                        0.5
                    } else {
                        (rand() + 0.3) * spread
                    }
                })
                .collect();
            let mut fast = vec![0u8; GROUP];
            let got = quantize_group(&x, &mut fast);
            let mut generic = vec![0u8; GROUP];
            let mut want = (1.0, 0);
            quantize_group_simd(&x, &mut generic, &mut want);
            assert_eq!(got, want, "spread {spread}");
            assert_eq!(fast, generic, "spread {spread}");
        }
    }

    /// Every integer kernel this CPU has gives the portable code's bits, on every row
    /// count it takes.
    #[test]
    fn portable_and_simd_kernels_agree() {
        #[cfg(target_arch = "x86_64")]
        let kernels = [("VNNI", vnni_available()), ("AVX2", avx2_available())];
        #[cfg(not(target_arch = "x86_64"))]
        let kernels = [("none", false)];
        let groups = 3;
        let kp = groups * GROUP;
        let mut data: Vec<u8> = (0..MR * kp).map(|i| (i * 37 % 256) as u8).collect();
        data[..GROUP].fill(255);
        // Words over the whole range, the top included: 64 products of 32767 and 127 in
        // one group must not overflow a lane.
        let mut wide: Vec<i16> = (0..MR * kp).map(|i| (i * 7919 % 32768) as i16).collect();
        wide[..GROUP].fill(i16::MAX);
        let scale: Vec<f32> = (0..MR * groups).map(|i| 0.01 + i as f32 * 1e-3).collect();
        // The extremes included: 255 against -127 and 127 on both channels of a pair is
        // where a 16-bit pair sum would saturate.
        let weights: Vec<i8> = (0..kp * NR)
            .map(|i| {
                if i % 5 < 2 {
                    [-127, 127][i / 5 % 2]
                } else {
                    ((i * 91 % 255) as i32 - 127) as i8
                }
            })
            .collect();
        let wscale: Vec<f32> = (0..groups * NR).map(|i| 0.02 + i as f32 * 1e-4).collect();
        let zeros: Vec<f32> = (0..MR * groups).map(|i| (i % 7) as f32 * 0.1).collect();
        let sums: Vec<f32> = (0..groups * NR).map(|i| (i % 11) as f32 - 5.0).collect();
        let bytes = Activations {
            codes: CodeRows::Bytes(&data),
            scale: &scale,
            scaled_zero: &zeros,
        };
        let words = Activations {
            codes: CodeRows::Words(&wide),
            scale: &scale,
            scaled_zero: &zeros,
        };
        let panel = Panel {
            weights: &weights,
            scale: &wscale,
            sums: &sums,
        };
        let mut checked = 0;
        for (name, available) in kernels {
            if !available {
                super::super::skip(
                    "portable_and_simd_kernels_agree",
                    &format!("this CPU does not run the {name} int8 kernel (or BERT_CLI_PORTABLE is set)"),
                );
                continue;
            }
            // Tiles taller than a kernel takes would run the portable code itself.
            let (rows, a) = if name == "AVX2" {
                (AVX2_ROWS, &words)
            } else {
                (MR, &bytes)
            };
            for mr in 1..=rows {
                let mut want = [[0f32; NR]; MR];
                tile_portable(a, groups, mr, &panel, &mut want);
                let mut got = [[0f32; NR]; MR];
                tile(a, groups, mr, &panel, &mut got);
                assert_eq!(got, want, "{name}, {mr} rows");
                checked += 1;
            }
        }
        eprintln!("portable_and_simd_kernels_agree: {checked} tiles checked");
    }
}
