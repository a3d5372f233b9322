//! f32 linear layers with the weight packed once at load, bias fused: the driver.
//!
//! candle's CPU matmul (the `gemm` crate) reached about 75% of this machine's FMA peak on
//! bert-base's shapes and repacks the weight on every call. Here the weight is packed
//! once into panels of `NR` columns, laid out so the kernel reads each one front to back,
//! and the activations are read in place. The loops follow the usual blocking: a panel's
//! slice of `KC` input channels (`block_len`) stays in cache while every row tile of a
//! task passes over it, and the task's rows (`MC x KC`) stay in L2 while the task walks
//! its panels.
//!
//! `microkernel` multiplies one register tile, `store` finishes and writes it. Each value
//! is one chain of f32 FMAs over the input channels in order, whatever the blocks: it
//! differs from a plain dot product only in rounding, well inside the parity tolerance.

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use super::microkernel::{row_tiles, tile_count, tile_product, LINE, MR, NR};
use super::par::{par_tasks, Disjoint};
use super::store::{store_panel, Dest, Finish};
use super::tensor;

/// Input channels per pass over a panel: `KC x NR` floats (32 KiB) is the L1 working set
/// (a last block of at most `KC / 2` joins the one before on AVX2: `block_len`).
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

/// A linear layer `y = x Wᵀ + b` whose f32 weight is packed for the micro-kernel.
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

    /// Input channels.
    pub fn in_dim(&self) -> usize {
        self.k
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
        tensor::from_vec(w, (k, n))
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
                tensor::read(&x, "packed-linear", |x| self.matmul(x, m, Finish::Bias))?
            }
            Epilogue::BiasGelu => {
                tensor::read(&x, "packed-linear", |x| self.matmul(x, m, Finish::Gelu))?
            }
            Epilogue::BiasResidual(r) => {
                tensor::read_with_residual(&x, r, (m, self.n), "packed-linear", |x, r| {
                    self.matmul(x, m, Finish::Residual(r))
                })?
            }
        };
        tensor::from_aligned(y, offset, m, self.n)
    }

    /// The weights to fetch into cache while the tiles work on a block of `kc` input
    /// channels that ends at `end` (an offset into `packed`): the block after the next
    /// one (blocks of a layer's panels are all `kc` long but a short last one), empty
    /// past the end of the weights.
    ///
    /// Loaded on demand, each block stalled the first tile that read it, and one
    /// sentence at a time reads every weight from memory. At batch 1 the block after
    /// next ran 4% faster than the next block, and three ahead slower (it evicts what
    /// is still in use). Past a panel's end this is the next panel, which the same
    /// thread usually takes next.
    fn prefetch_block(&self, end: usize, kc: usize) -> &[f32] {
        let start = (end + kc * NR).min(self.packed.len());
        &self.packed[start..(start + kc * NR).min(self.packed.len())]
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
        let (y, offset) = tensor::read(&x, "packed-linear", |x| {
            let mut buf = vec![0f32; m * n + LINE];
            let offset = line_offset(buf.as_ptr());
            let y = &mut buf[offset..offset + m * n];
            let lead_panels = lead / NR;
            let panels = n.div_ceil(NR);
            self.matmul_into(x, m, lead_panels..panels, Finish::Bias, Disjoint::new(y), n);
            let part = self.lead_rows(x, lead, rows);
            for (&r, values) in rows.iter().zip(part.chunks(lead.max(1))) {
                y[r * n..r * n + lead].copy_from_slice(values);
            }
            (buf, offset)
        })?;
        tensor::from_aligned(y, offset, m, n)
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
        self.matmul_into(x, m, 0..n.div_ceil(NR), Finish::Bias, Disjoint::new(y), ldy);
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
        let part = tensor::read(&x, "packed-linear", |x| self.lead_rows(x, lead, rows))?;
        tensor::from_vec(part, (rows.len(), lead))
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
        self.matmul_into(
            &picked,
            rows.len(),
            0..lead / NR,
            Finish::Bias,
            Disjoint::new(&mut part),
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
        // SAFETY: offset + m * n is within the capacity, which `y` owns and nothing else
        // touches; the padding is written here and matmul_into writes rows 0..m of every
        // panel after it (through `part_ptr`, never reading), so every value is
        // initialised before `set_len`.
        unsafe {
            y.as_mut_ptr().write_bytes(0, offset);
            let out = Disjoint::uninit(y.as_mut_ptr().add(offset), m * n);
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
        y: Disjoint,
        ldy: usize,
    ) {
        let (k, n) = (self.k, self.n);
        debug_assert!(x.len() >= m * k && (panels.end * NR).min(n) <= ldy);
        let first_panel = panels.start;
        let panels = panels.len();
        let row_tasks = m.div_ceil(MC);
        let per_task = panels_per_task(row_tasks, panels, rayon::current_num_threads());
        let col_tasks = panels.div_ceil(per_task);
        let stream = m * ldy >= STREAM_MIN && super::avx512();
        // Each task owns a block of rows and columns of `y`.
        let task = |t: usize| {
            let (rt, ct) = (t / col_tasks, t % col_tasks);
            let rows = rt * MC..((rt + 1) * MC).min(m);
            let tiles = tile_count(rows.len());
            let mut acc = vec![[[0f32; NR]; MR]; tiles];
            for p in first_panel + ct * per_task..first_panel + ((ct + 1) * per_task).min(panels) {
                let panel = &self.packed[p * k * NR..(p + 1) * k * NR];
                let mut k0 = 0;
                while k0 < k {
                    let kc = block_len(k - k0);
                    let ahead = self.prefetch_block(p * k * NR + (k0 + kc) * NR, kc);
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
                        out: y,
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

/// Input channels in the next block over a panel when `left` remain: `KC`, or all of
/// them where the rest would make a block of at most half that on the AVX2 tile. There a
/// short block costs about what a full one does (a pass per row tile, its accumulators
/// loaded and stored), so MiniLM's 384 channels ran as 256 + 128 about 5% slower than as
/// one block (one thread, 25 x 384 x 1152 with the weights streamed, alternating runs);
/// the block outgrowing L1 did not show. Whole runs gained less (MiniLM on SST-2 dev,
/// new / old wall: one sentence at a time 0.984 over 10 alternating pairs, batches of
/// 32 1.007 over 8, inside this machine's noise). The sums are the same either way:
/// each runs through every channel in order, one FMA at a time. AVX-512 hosts keep `KC`
/// (not measured there: none was at hand); so does the portable tile.
fn block_len(left: usize) -> usize {
    if left <= KC + KC / 2 && super::avx2() && !super::avx512() {
        left
    } else {
        KC.min(left)
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
            let mut rand = super::super::test_values(0x2545_f491);
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
            super::super::elementwise::gelu_slice_in_place(&mut want);
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
        let mut rand = super::super::test_values(0x1234_5678);
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
}
