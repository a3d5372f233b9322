//! f32 linear layers for CPUs with AVX-512: weights packed once at load, bias fused.
//!
//! candle's CPU matmul (the `gemm` crate) reached about 75% of this machine's FMA peak on
//! bert-base's shapes and repacks the weight on every call. Here the weight is packed
//! once into panels of `NR` columns, laid out so the kernel reads each one front to back,
//! and the activations are read in place. The loops follow the usual blocking: a panel's
//! slice of `KC` input channels stays in L1 while every row tile of a task passes over it,
//! and the task's rows (`MC x KC`) stay in L2 while the task walks its panels.
//!
//! Results differ from a plain dot product only in summation order (f32 FMAs, `KC` at a
//! time), well inside the parity tolerance.

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use super::ops::{gelu_in_place, par_tasks, with_cpu_f32, SendPtr};

/// Columns per packed panel: two 16-lane vectors.
pub(super) const NR: usize = 32;
/// Rows per register tile: 8 x 2 accumulators, 2 weight registers and the broadcasts fit
/// the 32 vector registers with room for the loads in flight.
pub(super) const MR: usize = 8;
/// Input channels per pass over a panel: `KC x NR` floats (32 KiB) is the L1 working set.
const KC: usize = 256;
/// Rows per parallel task: `MC x KC` floats (96 KiB) of activations stay in L2.
const MC: usize = 96;
/// Panels per parallel task, at most; `panels_per_task` goes lower for small products.
const PANELS_PER_TASK: usize = 4;
/// Products of fewer multiply-adds than this run on the calling thread: a few
/// microseconds of work, less than handing half of it to another thread costs. The
/// last layer's per-head products for one sentence are 12,288 each, 24 of them (with
/// MiniLM); run on the calling thread, they took MiniLM on SST-2 dev one sentence at a
/// time from 2.86 to 2.79 s (fastest of 5).
const SERIAL_MAX: usize = 1 << 16;
/// Outputs of at least this many floats (6 MiB) bypass the caches as they are written:
/// an ordinary store first reads each line it writes. Smaller outputs are better kept in
/// cache for the next op to read: streamed from 1 MiB on, bert-base (3-11 MB outputs, 1,000
/// review snippets) ran about 2% faster but MiniLM (1-5 MB, SST-2 dev) about 3% slower.
const STREAM_MIN: usize = 6 << 18;

/// Panels per task for `row_tasks` row blocks and `panels` panels: the most, up to
/// `PANELS_PER_TASK`, whose tasks the threads can share with the least waiting. Tasks
/// run whole, so with 4 panels per task a batch of short sentences through a 384-wide
/// layer (9 row blocks x 12 panels) made 27 tasks, and one thread ran the 27th alone;
/// 3 per task makes 36.
fn panels_per_task(row_tasks: usize, panels: usize, threads: usize) -> usize {
    let threads = threads.max(1);
    // Panel-steps on the busiest thread, if every task costs its panels.
    let busiest = |per: usize| {
        let (full, last) = (panels / per, panels % per);
        let tasks = row_tasks * (full + usize::from(last > 0));
        // The short tasks come last in a row block; cost them all as full ones but the
        // busiest thread runs ceil(tasks / threads) of them.
        tasks.div_ceil(threads) * per
    };
    (1..=PANELS_PER_TASK)
        .rev()
        .min_by_key(|&per| busiest(per))
        .unwrap_or(1)
}

/// What the output pass does to `x Wᵀ + b` as it stores it.
pub enum Epilogue<'a> {
    /// Nothing more.
    Bias,
    /// Exact GELU, while the values are still in cache (no pass of its own).
    BiasGelu,
    /// Adds a residual of the output's shape.
    BiasResidual(&'a Tensor),
}

/// `Epilogue` with the residual's data in hand.
#[derive(Clone, Copy)]
enum Finish<'a> {
    /// `Epilogue::Bias`.
    Bias,
    /// `Epilogue::BiasGelu`.
    Gelu,
    /// `Epilogue::BiasResidual`: the residual, `[m, n]` row-major.
    Residual(&'a [f32]),
}

/// A linear layer `y = x Wᵀ + b` whose f32 weight is packed for the AVX-512 kernel.
pub struct PackedLinear {
    /// Input features.
    k: usize,
    /// Output features.
    n: usize,
    /// `[panel][k][NR]`; the last panel's missing columns are zeros.
    packed: Vec<f32>,
    /// `[n]`.
    bias: Vec<f32>,
}

/// Whether this CPU runs the packed kernel (checked once). Elsewhere candle's matmul runs.
#[cfg(target_arch = "x86_64")]
pub fn available() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f") && !super::portable_only())
}

/// Whether this CPU runs the packed kernel: never off x86-64.
#[cfg(not(target_arch = "x86_64"))]
pub fn available() -> bool {
    false
}

impl PackedLinear {
    /// Packs a checkpoint-layout weight `[out, in]` and keeps `bias` `[out]`.
    pub fn new(weight: &Tensor, bias: &Tensor) -> Result<Self> {
        let (n, k) = weight.dims2()?;
        let w = weight.flatten_all()?.to_vec1::<f32>()?;
        let bias = bias.to_vec1::<f32>()?;
        let panels = n.div_ceil(NR);
        let mut packed = vec![0f32; panels * k * NR];
        // Each output column is a contiguous checkpoint row; one panel per task.
        packed
            .par_chunks_mut(k * NR)
            .enumerate()
            .for_each(|(p, panel)| {
                for j in 0..NR.min(n - p * NR) {
                    let row = &w[(p * NR + j) * k..(p * NR + j + 1) * k];
                    for (kk, &v) in row.iter().enumerate() {
                        panel[kk * NR + j] = v;
                    }
                }
            });
        Ok(Self { k, n, packed, bias })
    }

    /// The weight back as `[in, out]` (for int8 quantization at load).
    pub fn weight_t(&self) -> Result<Tensor> {
        let (k, n) = (self.k, self.n);
        let mut w = vec![0f32; k * n];
        for (kk, row) in w.chunks_mut(n).enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = self.packed[(c / NR) * k * NR + kk * NR + c % NR];
            }
        }
        Tensor::from_vec(w, (k, n), &candle_core::Device::Cpu)
    }

    /// `x` is `[m, in]`, f32; the result is `[m, out]`, finished by `epilogue` as it is
    /// stored (so a residual costs no pass of its own).
    pub fn forward(&self, x: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.k {
            candle_core::bail!(
                "packed-linear: input has {k} features, the layer takes {}",
                self.k
            );
        }
        let x = x.contiguous()?;
        let (y, offset) = match epilogue {
            Epilogue::Bias => {
                with_cpu_f32(&x, "packed-linear", |x| self.matmul(x, m, Finish::Bias))?
            }
            Epilogue::BiasGelu => {
                with_cpu_f32(&x, "packed-linear", |x| self.matmul(x, m, Finish::Gelu))?
            }
            Epilogue::BiasResidual(r) => {
                if r.dims() != [m, self.n] {
                    candle_core::bail!(
                        "packed-linear: residual {:?} does not match the output [{m}, {}]",
                        r.dims(),
                        self.n
                    );
                }
                let r = r.contiguous()?;
                with_cpu_f32(&r, "packed-linear residual", |r| {
                    with_cpu_f32(&x, "packed-linear", |x| {
                        self.matmul(x, m, Finish::Residual(r))
                    })
                })??
            }
        };
        output_tensor(y, offset, m, self.n)
    }

    /// The weights to fetch into cache while the tiles work on the block that ends at
    /// `end` (an offset into `packed`): the block after the next one, empty past the
    /// end of the weights.
    ///
    /// Loaded on demand, each block stalled the first tile that read it, and one
    /// sentence at a time reads every weight from memory. At batch 1 the block after
    /// next ran 4% faster than the next block, and three ahead slower (it evicts what
    /// is still in use). Past a panel's end this is the next panel, which the same
    /// thread usually takes next.
    fn prefetch_block(&self, end: usize) -> &[f32] {
        let start = (end + KC * NR).min(self.packed.len());
        &self.packed[start..(start + KC * NR).min(self.packed.len())]
    }

    /// `x` is `[m, in]`, f32. Returns `[m, out]` with `x Wᵀ + b` in every row for the
    /// columns from `lead` on, but in the first `lead` columns only for the rows in
    /// `rows` (zeros elsewhere). The last layer of a classifier needs queries for
    /// `[CLS]` alone but keys and values for every token; this skips the other
    /// tokens' queries (`lead` = hidden). Each value is computed exactly as by
    /// `forward`. A `lead` that does not end on a panel computes every column.
    pub fn forward_lead_for_rows(&self, x: &Tensor, lead: usize, rows: &[usize]) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        check_rows(rows, m)?;
        if !lead.is_multiple_of(NR) || lead > self.n || k != self.k {
            return self.forward(x, Epilogue::Bias);
        }
        let x = x.contiguous()?;
        let n = self.n;
        let (y, offset) = with_cpu_f32(&x, "packed-linear", |x| {
            let mut buf = vec![0f32; m * n + LINE];
            let offset = line_offset(buf.as_ptr());
            let y = &mut buf[offset..offset + m * n];
            let lead_panels = lead / NR;
            let panels = n.div_ceil(NR);
            self.matmul_into(
                x,
                m,
                lead_panels..panels,
                Finish::Bias,
                SendPtr(y.as_mut_ptr()),
                n,
            );
            let part = self.lead_rows(x, lead, rows);
            for (&r, values) in rows.iter().zip(part.chunks(lead.max(1))) {
                y[r * n..r * n + lead].copy_from_slice(values);
            }
            (buf, offset)
        })?;
        output_tensor(y, offset, m, n)
    }

    /// `x Wᵀ + b` for `x` `[m, in]` row-major, written to `y` with a row stride of
    /// `ldy` floats (so that several products can fill one matrix side by side).
    pub fn product_into(&self, x: &[f32], m: usize, y: &mut [f32], ldy: usize) {
        let (k, n) = (self.k, self.n);
        assert!(
            x.len() >= m * k && ldy >= n && (m == 0 || y.len() >= (m - 1) * ldy + n),
            "packed-linear: {m} rows of {k} do not fit {} inputs and {} outputs at stride {ldy}",
            x.len(),
            y.len()
        );
        let y = SendPtr(y.as_mut_ptr());
        self.matmul_into(x, m, 0..n.div_ceil(NR), Finish::Bias, y, ldy);
    }

    /// The first `lead` outputs (a whole number of panels) of rows `rows` of `x`
    /// (`[m, in]`, f32): `[rows.len(), lead]`, each value computed as by `forward`.
    pub fn lead_for_rows(&self, x: &Tensor, lead: usize, rows: &[usize]) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        check_rows(rows, m)?;
        if !lead.is_multiple_of(NR) || lead > self.n || k != self.k {
            candle_core::bail!(
                "packed-linear: the first {lead} of {} outputs are not whole panels of a \
                 layer taking {k} inputs",
                self.n
            );
        }
        let x = x.contiguous()?;
        let part = with_cpu_f32(&x, "packed-linear", |x| self.lead_rows(x, lead, rows))?;
        Tensor::from_vec(part, (rows.len(), lead), &candle_core::Device::Cpu)
    }

    /// `lead_for_rows` on the data (`lead` checked by the caller).
    fn lead_rows(&self, x: &[f32], lead: usize, rows: &[usize]) -> Vec<f32> {
        let k = self.k;
        let picked: Vec<f32> = rows
            .iter()
            .flat_map(|&r| &x[r * k..(r + 1) * k])
            .copied()
            .collect();
        let mut part = vec![0f32; rows.len() * lead];
        let part_ptr = SendPtr(part.as_mut_ptr());
        self.matmul_into(
            &picked,
            rows.len(),
            0..lead / NR,
            Finish::Bias,
            part_ptr,
            lead,
        );
        part
    }

    /// `x` (`[m, k]` row-major) times the packed weight, finished by `finish`: `[m, n]`
    /// from the returned offset on (`line_offset`, zeros before it).
    fn matmul(&self, x: &[f32], m: usize, finish: Finish) -> (Vec<f32>, usize) {
        let n = self.n;
        // Not zeroed first: the tasks write every value, and for one short sentence the
        // memset took 2-4% of the time.
        let mut y: Vec<f32> = Vec::with_capacity(m * n + LINE);
        let offset = line_offset(y.as_ptr());
        // SAFETY: offset + m * n is within the capacity; the padding is written here and
        // matmul_into writes rows 0..m of every panel after it, so all values.
        unsafe {
            y.as_mut_ptr().write_bytes(0, offset);
            let out = SendPtr(y.as_mut_ptr().add(offset));
            self.matmul_into(x, m, 0..n.div_ceil(NR), finish, out, n);
            y.set_len(offset + m * n);
        }
        (y, offset)
    }

    /// `x` (`[m, k]` row-major) times the packed panels `panels`, finished by `finish`
    /// and written to `y` (row stride `ldy`) at the panels' own columns. The caller
    /// owns `y`'s first `m` rows, at least as wide as the panels' last column.
    fn matmul_into(
        &self,
        x: &[f32],
        m: usize,
        panels: std::ops::Range<usize>,
        finish: Finish,
        y_ptr: SendPtr,
        ldy: usize,
    ) {
        let (k, n) = (self.k, self.n);
        debug_assert!(x.len() >= m * k && (panels.end * NR).min(n) <= ldy);
        let first_panel = panels.start;
        let panels = panels.len();
        let row_tasks = m.div_ceil(MC);
        let per_task = panels_per_task(row_tasks, panels, rayon::current_num_threads());
        let col_tasks = panels.div_ceil(per_task);
        let stream = m * ldy >= STREAM_MIN && available();
        // Each task owns a block of rows and columns; the blocks interleave in memory, so
        // it writes through a raw pointer.
        let task = |t: usize| {
            let (rt, ct) = (t / col_tasks, t % col_tasks);
            let rows = rt * MC..((rt + 1) * MC).min(m);
            let tiles = rows.len().div_ceil(MR);
            let mut acc = vec![[[0f32; NR]; MR]; tiles];
            for p in first_panel + ct * per_task..first_panel + ((ct + 1) * per_task).min(panels) {
                let panel = &self.packed[p * k * NR..(p + 1) * k * NR];
                let mut k0 = 0;
                while k0 < k {
                    let kc = KC.min(k - k0);
                    let ahead = self.prefetch_block(p * k * NR + (k0 + kc) * NR);
                    let share = (ahead.len().div_ceil(tiles * LINE) * LINE).max(LINE);
                    let mut shares = ahead.chunks(share);
                    for ((r0, mr), acc) in row_tiles(rows.clone()).zip(acc.iter_mut()) {
                        let ahead = shares.next().unwrap_or(&[]);
                        tile_product(
                            &x[r0 * k..(r0 + mr) * k],
                            k,
                            k0..k0 + kc,
                            mr,
                            &panel[k0 * NR..(k0 + kc) * NR],
                            acc,
                            k0 > 0,
                            ahead,
                        );
                    }
                    k0 += kc;
                }
                let cols = p * NR..((p + 1) * NR).min(n);
                let bias = &self.bias[cols.clone()];
                store_panel(
                    &mut acc,
                    rows.clone(),
                    cols,
                    bias,
                    finish,
                    Dest {
                        ptr: y_ptr,
                        stride: ldy,
                        stream,
                    },
                );
            }
            if stream {
                // Streamed stores are not ordered with the join that hands `y` to the
                // caller; the fence makes them visible first.
                // SAFETY: `stream` implies x86-64 with AVX-512.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    std::arch::x86_64::_mm_sfence()
                };
            }
        };
        let tasks = row_tasks * col_tasks;
        if m * k * panels * NR < SERIAL_MAX {
            (0..tasks).for_each(task);
        } else {
            par_tasks(tasks, task);
        }
    }
}

/// An error naming the first of `rows` that is not below `m`.
fn check_rows(rows: &[usize], m: usize) -> Result<()> {
    match rows.iter().find(|&&r| r >= m) {
        Some(&r) => candle_core::bail!("packed-linear: row {r} is outside the input's {m} rows"),
        None => Ok(()),
    }
}

/// Where in a buffer allocated `LINE` floats longer than its output the output starts:
/// on a cache line, so that whole panel rows can be streamed (`store_panel`).
fn line_offset(buf: *const f32) -> usize {
    buf.align_offset(LINE * 4).min(LINE)
}

/// `buf[offset..]` as an `[m, n]` tensor, without a copy.
fn output_tensor(buf: Vec<f32>, offset: usize, m: usize, n: usize) -> Result<Tensor> {
    let len = buf.len();
    Tensor::from_vec(buf, len, &candle_core::Device::Cpu)?
        .narrow(0, offset, m * n)?
        .reshape((m, n))
}

/// Where `store_panel` writes: `[m, stride]` row-major at `ptr`, past the caches if
/// `stream`.
#[derive(Clone, Copy)]
struct Dest {
    /// The output's first row.
    ptr: SendPtr,
    /// Floats per output row.
    stride: usize,
    /// Whether whole panel rows on a cache line are streamed (AVX-512 only).
    stream: bool,
}

/// The row tiles over `rows`, as (first row, row count): `rows.len().div_ceil(MR)`
/// tiles whose sizes differ by at most one. A tile of one row has two FMA chains, too
/// few to hide their latency, so 25 rows run as 7 + 6 + 6 + 6 rather than
/// 8 + 8 + 8 + 1. Each row's sums do not depend on its tile, so the split changes no
/// result.
pub(super) fn row_tiles(rows: std::ops::Range<usize>) -> impl Iterator<Item = (usize, usize)> {
    let tiles = rows.len().div_ceil(MR);
    let (base, extra) = (rows.len() / tiles.max(1), rows.len() % tiles.max(1));
    (0..tiles).map(move |tile| {
        (
            rows.start + tile * base + tile.min(extra),
            base + usize::from(tile < extra),
        )
    })
}

dispatch_simd!(store_panel, |acc: &mut [[[f32; NR]; MR]],
                             rows: std::ops::Range<usize>,
                             cols: std::ops::Range<usize>,
                             bias: &[f32],
                             finish: Finish,
                             dest: Dest| {
    let Dest {
        ptr: y,
        stride: n,
        stream,
    } = dest;
    // The output pass of one task's panel: `acc` holds the tiles of rows `rows`, and
    // the values go to `y` (`[m, n]` row-major) at columns `cols`, finished, and past
    // the caches if `stream` (then only on a CPU with AVX-512). Compiled for the vector
    // unit like the kernels (as plain closure code it ran 4 lanes wide).
    for ((r0, mr), acc) in row_tiles(rows).zip(acc.iter_mut()) {
        if let Finish::Gelu = finish {
            // The whole tile in one call: row by row, 32 values left the out-of-order
            // core too little to overlap and GELU's long dependency chain set the pace
            // (6.2% of a MiniLM profile, 4.3% this way).
            for row in acc.iter_mut().take(mr) {
                for (a, b) in row.iter_mut().zip(bias) {
                    *a += b;
                }
            }
            gelu_in_place(&mut acc.as_flattened_mut()[..mr * NR]);
        }
        let full_bias: Option<&[f32; NR]> = bias.try_into().ok();
        for (i, acc) in acc.iter().take(mr).enumerate() {
            let row_start = (r0 + i) * n + cols.start;
            // SAFETY: the caller's task alone owns these rows and columns of `y`, and
            // r0 + i < m, cols.end <= n keep every write below inside `y`'s capacity.
            let out = unsafe { y.get().add(row_start) };
            let streamed = stream && (out as usize).is_multiple_of(LINE * 4);
            if let (Some(b), false) = (full_bias, streamed) {
                // A full panel goes straight from the sums to `y`, with the bias as
                // a fixed-size array: a finished row built first (with slices of
                // runtime length) went through a zeroed copy on the stack, and the
                // load of it waited: half of this pass's samples, 10% of a MiniLM
                // profile in all.
                // SAFETY: as above; a full panel is NR columns.
                unsafe {
                    match finish {
                        // A whole-array copy: element by element it compiled to
                        // 32 scalar moves (`out` might alias `acc`).
                        Finish::Gelu => out.cast::<[f32; NR]>().write_unaligned(*acc),
                        Finish::Bias => {
                            for (c, (&a, &b)) in acc.iter().zip(b).enumerate() {
                                out.add(c).write(a + b);
                            }
                        }
                        Finish::Residual(res) => {
                            let res: &[f32] = &res[row_start..][..NR];
                            for (c, ((&a, &b), &r)) in acc.iter().zip(b).zip(res).enumerate() {
                                out.add(c).write(a + b + r);
                            }
                        }
                    }
                }
                continue;
            }
            let mut row = [0f32; NR];
            match finish {
                Finish::Gelu => row = *acc,
                Finish::Bias => {
                    for ((o, a), b) in row.iter_mut().zip(acc).zip(bias) {
                        *o = a + b;
                    }
                }
                Finish::Residual(res) => {
                    let res = &res[row_start..][..cols.len()];
                    for (((o, a), b), r) in row.iter_mut().zip(acc).zip(bias).zip(res) {
                        *o = a + b + r;
                    }
                }
            }
            // SAFETY: as above; `stream` is set only where AVX-512 was detected
            // (`matmul_into`).
            unsafe {
                if streamed && cols.len() == NR {
                    #[cfg(target_arch = "x86_64")]
                    {
                        stream_row(out, &row);
                        continue;
                    }
                }
                for (c, &v) in row.iter().take(cols.len()).enumerate() {
                    out.add(c).write(v);
                }
            }
        }
    }
});

/// Writes one panel row (two whole cache lines at `out`) without reading the lines
/// first and past the caches.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn stream_row(out: *mut f32, row: &[f32; NR]) {
    use std::arch::x86_64::*;
    _mm512_stream_ps(out, _mm512_loadu_ps(row.as_ptr()));
    _mm512_stream_ps(out.add(16), _mm512_loadu_ps(row.as_ptr().add(16)));
}

/// The same product in plain Rust: the reference for the kernel's tests, and what runs
/// if the packed layout is ever used without AVX-512.
fn tile_portable(
    x: &[f32],
    stride: usize,
    ks: std::ops::Range<usize>,
    mr: usize,
    panel: &[f32],
    acc: &mut [[f32; NR]; MR],
    accumulate: bool,
) {
    for (i, acc) in acc.iter_mut().take(mr).enumerate() {
        if !accumulate {
            acc.fill(0.0);
        }
        for (step, kk) in ks.clone().enumerate() {
            let a = x[i * stride + kk];
            for (o, &b) in acc.iter_mut().zip(&panel[step * NR..(step + 1) * NR]) {
                *o = a.mul_add(b, *o);
            }
        }
    }
}

/// `acc[i][j] (+)= Σ_{kk ∈ ks} x[i * stride + kk] · panel[(kk - ks.start) * NR + j]` for
/// the first `mr` rows of `x`; `accumulate` adds to what `acc` holds. Along the way it
/// fetches `prefetch` (whole cache lines; empty for none) into cache. Also the building
/// block of the fused attention, where `x` is a head's columns inside wider rows.
#[allow(clippy::too_many_arguments)]
pub(super) fn tile_product(
    x: &[f32],
    stride: usize,
    ks: std::ops::Range<usize>,
    mr: usize,
    panel: &[f32],
    acc: &mut [[f32; NR]; MR],
    accumulate: bool,
    prefetch: &[f32],
) {
    assert!(mr > 0 && mr <= MR && ks.end <= stride);
    assert!(x.len() >= (mr - 1) * stride + ks.end && panel.len() >= ks.len() * NR);
    let lines = prefetch.len() / LINE;
    #[cfg(target_arch = "x86_64")]
    if available() {
        let a = x[ks.start..].as_ptr();
        let (b, kc, pf) = (panel.as_ptr(), ks.len(), prefetch.as_ptr());
        // SAFETY: the feature was just detected; the asserts above bound every read.
        unsafe {
            match mr {
                8 => tile_avx512::<8>(a, stride, kc, b, acc, accumulate, pf, lines),
                7 => tile_avx512::<7>(a, stride, kc, b, acc, accumulate, pf, lines),
                6 => tile_avx512::<6>(a, stride, kc, b, acc, accumulate, pf, lines),
                5 => tile_avx512::<5>(a, stride, kc, b, acc, accumulate, pf, lines),
                4 => tile_avx512::<4>(a, stride, kc, b, acc, accumulate, pf, lines),
                3 => tile_avx512::<3>(a, stride, kc, b, acc, accumulate, pf, lines),
                2 => tile_avx512::<2>(a, stride, kc, b, acc, accumulate, pf, lines),
                _ => tile_avx512::<1>(a, stride, kc, b, acc, accumulate, pf, lines),
            }
        }
        return;
    }
    tile_portable(x, stride, ks, mr, panel, acc, accumulate);
}

/// f32 values per cache line.
const LINE: usize = 16;

/// `R` rows of `a` (row stride `lda`, `kc` channels) times a `kc x NR` panel slice,
/// prefetching `lines` cache lines from `pf` along the way.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx512<const R: usize>(
    a: *const f32,
    lda: usize,
    kc: usize,
    b: *const f32,
    acc: &mut [[f32; NR]; MR],
    accumulate: bool,
    pf: *const f32,
    lines: usize,
) {
    use std::arch::x86_64::*;
    let mut c = [[_mm512_setzero_ps(); 2]; R];
    if accumulate {
        for (c, acc) in c.iter_mut().zip(acc.iter()) {
            c[0] = _mm512_loadu_ps(acc.as_ptr());
            c[1] = _mm512_loadu_ps(acc.as_ptr().add(16));
        }
    }
    // The steps run in chunks of `every`, each led by `per_step` prefetches (at most
    // two lines per step: the rate the kernel itself reads), so the inner loop carries
    // no extra test.
    let per_step = lines.div_ceil(kc.max(1)).min(2);
    let every = (kc * per_step).checked_div(lines).unwrap_or(kc).max(1);
    let mut next = 0;
    let mut start = 0;
    while start < kc {
        let end = (start + every).min(kc);
        for _ in 0..per_step {
            if next < lines {
                _mm_prefetch::<PF_HINT>(pf.add(next * LINE) as *const i8);
                next += 1;
            }
        }
        for step in start..end {
            let b0 = _mm512_loadu_ps(b.add(step * NR));
            let b1 = _mm512_loadu_ps(b.add(step * NR + 16));
            for (i, c) in c.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*a.add(i * lda + step));
                c[0] = _mm512_fmadd_ps(x, b0, c[0]);
                c[1] = _mm512_fmadd_ps(x, b1, c[1]);
            }
        }
        start = end;
    }
    for (c, acc) in c.iter().zip(acc.iter_mut()) {
        _mm512_storeu_ps(acc.as_mut_ptr(), c[0]);
        _mm512_storeu_ps(acc.as_mut_ptr().add(16), c[1]);
    }
}

/// Where prefetched weights go: L2. Fetched into L1 they evicted the block in use (the
/// block is all of L1), and 300 SST-2 dev sentences at batch 1 ran 9% slower.
#[cfg(target_arch = "x86_64")]
const PF_HINT: i32 = std::arch::x86_64::_MM_HINT_T1;

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_f64_product_on_odd_shapes() -> Result<()> {
        // m not a multiple of MR or MC, k not of KC, n not of NR or a task's panels.
        for &(m, k, n) in &[
            (1, 1, 1),
            (3, 5, 33),
            (13, 300, 70),
            (100, 600, 161),
            (9, 256, 32),
            // Outputs past STREAM_MIN: streamed rows, and rows off a cache line (n odd).
            (1540, 8, 1024),
            (1530, 3, 1031),
        ] {
            let mut rand = crate::model::test_values(0x2545_f491);
            let w: Vec<f32> = (0..n * k).map(|_| rand()).collect();
            let x: Vec<f32> = (0..m * k).map(|_| rand()).collect();
            let b: Vec<f32> = (0..n).map(|_| rand()).collect();
            let dev = Device::Cpu;
            let layer = PackedLinear::new(
                &Tensor::from_vec(w.clone(), (n, k), &dev)?,
                &Tensor::from_vec(b.clone(), n, &dev)?,
            )?;
            let got = layer
                .forward(&Tensor::from_vec(x.clone(), (m, k), &dev)?, Epilogue::Bias)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            for r in 0..m {
                for c in 0..n {
                    let want = f64::from(b[c])
                        + (0..k)
                            .map(|kk| f64::from(x[r * k + kk]) * f64::from(w[c * k + kk]))
                            .sum::<f64>();
                    let g = got[r * n + c];
                    assert!(
                        (f64::from(g) - want).abs() <= 1e-5 * (k as f64).sqrt().max(1.0),
                        "{m}x{k}x{n} at ({r}, {c}): {g} vs {want}"
                    );
                }
            }
            // The residual epilogue adds exactly the residual.
            let res: Vec<f32> = (0..m * n).map(|_| rand()).collect();
            let with_res = layer
                .forward(
                    &Tensor::from_vec(x.clone(), (m, k), &dev)?,
                    Epilogue::BiasResidual(&Tensor::from_vec(res.clone(), (m, n), &dev)?),
                )?
                .flatten_all()?
                .to_vec1::<f32>()?;
            for ((w, g), r) in with_res.iter().zip(&got).zip(&res) {
                assert!(
                    (w - (g + r)).abs() <= 1e-6 * w.abs().max(1.0),
                    "{w} vs {g} + {r}"
                );
            }
            // The GELU epilogue gives exactly GELU of the plain output.
            let mut want = got.clone();
            gelu_in_place(&mut want);
            let gelu = layer
                .forward(
                    &Tensor::from_vec(x.clone(), (m, k), &dev)?,
                    Epilogue::BiasGelu,
                )?
                .flatten_all()?
                .to_vec1::<f32>()?;
            assert_eq!(gelu, want, "{m}x{k}x{n} GELU epilogue");
            // Unpacking gives the weight back exactly.
            let wt = layer.weight_t()?.flatten_all()?.to_vec1::<f32>()?;
            for c in 0..n {
                for kk in 0..k {
                    assert_eq!(wt[kk * n + c], w[c * k + kk]);
                }
            }
        }
        Ok(())
    }

    #[test]
    fn lead_columns_only_for_the_rows_asked() -> Result<()> {
        let (m, k, n, lead) = (21, 70, 3 * NR + 5, NR);
        let mut rand = crate::model::test_values(0x1234_5678);
        let dev = Device::Cpu;
        let w = Tensor::from_vec((0..n * k).map(|_| rand()).collect(), (n, k), &dev)?;
        let b = Tensor::from_vec((0..n).map(|_| rand()).collect(), n, &dev)?;
        let x = Tensor::from_vec((0..m * k).map(|_| rand()).collect(), (m, k), &dev)?;
        let layer = PackedLinear::new(&w, &b)?;
        let full = layer.forward(&x, Epilogue::Bias)?.to_vec2::<f32>()?;
        let rows = [0, 9, 20];
        let part = layer
            .forward_lead_for_rows(&x, lead, &rows)?
            .to_vec2::<f32>()?;
        for (r, (got, want)) in part.iter().zip(&full).enumerate() {
            // The same bits where computed, zeros in the lead columns of other rows.
            assert_eq!(got[lead..], want[lead..], "row {r}");
            if rows.contains(&r) {
                assert_eq!(got[..lead], want[..lead], "row {r}");
            } else {
                assert!(got[..lead].iter().all(|&v| v == 0.0), "row {r}");
            }
        }
        // A row past the input is an error, not a wrong answer.
        assert!(layer.forward_lead_for_rows(&x, lead, &[m]).is_err());
        Ok(())
    }

    #[test]
    fn small_products_split_evenly_across_threads() {
        // One MiniLM sentence: 384 columns are 12 panels; 4 per task left 3 tasks.
        assert_eq!(panels_per_task(1, 12, 2), 3);
        assert_eq!(panels_per_task(1, 36, 2), 3);
        // A batch of short sentences: 27 tasks of 4 panels, or 36 of 3.
        assert_eq!(panels_per_task(9, 12, 2), 3);
        // Already even, or one thread: the widest tasks.
        assert_eq!(panels_per_task(1, 48, 2), 4);
        assert_eq!(panels_per_task(9, 48, 2), 4);
        assert_eq!(panels_per_task(1, 12, 1), 4);
        // Fewer panels than threads: one panel per task.
        assert_eq!(panels_per_task(1, 1, 2), 1);
    }

    #[test]
    fn kernel_and_portable_code_agree() {
        let (k, kc) = (40, 37);
        let mut rand = crate::model::test_values(0x2545_f491);
        let x: Vec<f32> = (0..MR * k).map(|_| rand()).collect();
        let panel: Vec<f32> = (0..kc * NR).map(|_| rand()).collect();
        for mr in 1..=MR {
            for accumulate in [false, true] {
                let mut want = [[0.5f32; NR]; MR];
                tile_portable(&x, k, 2..2 + kc, mr, &panel, &mut want, accumulate);
                let mut got = [[0.5f32; NR]; MR];
                tile_product(&x, k, 2..2 + kc, mr, &panel, &mut got, accumulate, &[]);
                for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
                    assert!((g - w).abs() <= 1e-5, "mr {mr}: {g} vs {w}");
                }
            }
        }
    }
}
