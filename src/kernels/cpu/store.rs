//! The packed GEMM's store pass: a task's finished tiles, with bias and then a residual
//! or GELU applied, written to the output (past the caches for large outputs).

use super::elementwise::gelu_slice_in_place;
use super::microkernel::{row_tiles, LINE, MR, NR};
use super::par::Disjoint;

/// `Epilogue` with the residual's data in hand.
#[derive(Clone, Copy)]
pub(super) enum Finish<'a> {
    /// `Epilogue::Bias`.
    Bias,
    /// `Epilogue::BiasGelu`.
    Gelu,
    /// `Epilogue::BiasResidual`: the residual, `[m, n]` row-major.
    Residual(&'a [f32]),
}

/// Where `store_panel` writes: `[m, stride]` row-major in `out`, past the caches if
/// `stream`.
#[derive(Clone, Copy)]
pub(super) struct Dest<'a> {
    /// The output, from its first row.
    pub out: Disjoint<'a>,
    /// Floats per output row.
    pub stride: usize,
    /// Whether whole panel rows on a cache line are streamed (AVX-512 only).
    pub stream: bool,
}

dispatch_simd!(pub(super) store_panel, |acc: &mut [[[f32; NR]; MR]],
                             rows: std::ops::Range<usize>,
                             cols: std::ops::Range<usize>,
                             bias: &[f32],
                             finish: Finish,
                             dest: Dest| {
    let Dest {
        out: y,
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
            gelu_slice_in_place(&mut acc.as_flattened_mut()[..mr * NR]);
        }
        let full_bias: Option<&[f32; NR]> = bias.try_into().ok();
        for (i, acc) in acc.iter().take(mr).enumerate() {
            let row_start = (r0 + i) * n + cols.start;
            // SAFETY: the caller's task alone owns these rows and columns of `y` (and
            // `part_ptr` checks that they lie inside it).
            let out = unsafe { y.part_ptr(row_start, cols.len()) };
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
///
/// # Safety
/// The CPU must have AVX-512 F; `out` must be valid for writes of `NR` floats, start on
/// a 64-byte boundary, and be this caller's alone until an `sfence`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn stream_row(out: *mut f32, row: &[f32; NR]) {
    use std::arch::x86_64::*;
    _mm512_stream_ps(out, _mm512_loadu_ps(row.as_ptr()));
    _mm512_stream_ps(out.add(16), _mm512_loadu_ps(row.as_ptr().add(16)));
}
