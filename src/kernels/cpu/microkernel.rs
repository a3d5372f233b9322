//! The packed GEMM's register tile: up to `MR` rows times one panel of `NR` columns, on
//! AVX-512 or AVX2 with FMA where the CPU has them and in portable code (same sums, same
//! order) elsewhere.
//! Also the building block of the fused attention.

/// Columns per packed panel: two 16-lane vectors.
pub(super) const NR: usize = 32;
/// Rows per register tile: 8 x 2 accumulators, 2 weight registers and the broadcasts fit
/// the 32 vector registers with room for the loads in flight.
pub(super) const MR: usize = 8;
/// Rows an AVX2 tile takes at most: 12 accumulators, 2 weight registers and a
/// broadcast fill its 16 vector registers.
pub(super) const AVX2_ROWS: usize = 6;

/// Rows per tile at most: `MR` for the AVX-512 tile; `AVX2_ROWS` elsewhere. With tiles
/// of up to 8 rows on AVX2, 7 and 8 ran as two passes of 4 and 3 or 4; MiniLM on AMD EPYC Zen 1, 6-row tiles against 8, alternating pairs: 300 SST-2
/// dev sentences one at a time, wall A/B median 0.979 (8 pairs, all under 1); all 872 in
/// batches of 32, 0.963 (6 pairs).
pub(super) fn tile_height() -> usize {
    if super::avx512() {
        MR
    } else {
        AVX2_ROWS
    }
}

/// How many tiles `row_tiles` cuts `rows` rows into.
pub(super) fn tile_count(rows: usize) -> usize {
    rows.div_ceil(tile_height())
}

/// The row tiles over `rows`, as (first row, row count): `tile_count(rows.len())`
/// tiles whose sizes differ by at most one. A tile of one row has two FMA chains, too
/// few to hide their latency, so 25 rows run as 7 + 6 + 6 + 6 rather than
/// 8 + 8 + 8 + 1. Each row's sums do not depend on its tile, so the split changes no
/// result.
pub(super) fn row_tiles(rows: std::ops::Range<usize>) -> impl Iterator<Item = (usize, usize)> {
    let tiles = tile_count(rows.len());
    let (base, extra) = (rows.len() / tiles.max(1), rows.len() % tiles.max(1));
    (0..tiles).map(move |tile| {
        (
            rows.start + tile * base + tile.min(extra),
            base + usize::from(tile < extra),
        )
    })
}

// The same product in plain Rust: the reference for the kernel's tests, and what runs
// where the packed layout is used without AVX2 (`BERT_CLI_FORCE_KERNELS=1`, to check
// the kernel path on any CPU). FMAs round once on every path, so the sums are the same.
dispatch_simd!(
    tile_portable,
    |x: &[f32],
     stride: usize,
     ks: std::ops::Range<usize>,
     mr: usize,
     panel: &[f32],
     acc: &mut [[f32; NR]; MR],
     accumulate: bool| {
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
);

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
    if super::avx512() {
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
    // `row_tiles` cuts tiles of at most `AVX2_ROWS` rows wherever this tile runs.
    #[cfg(target_arch = "x86_64")]
    if super::avx2() && mr <= AVX2_ROWS {
        let a = x[ks.start..].as_ptr();
        let (b, kc, pf) = (panel.as_ptr(), ks.len(), prefetch.as_ptr());
        // SAFETY: AVX2 and FMA were detected; the asserts above bound every read.
        unsafe { tile_avx2(a, stride, kc, mr, b, acc, accumulate, pf, lines) };
        return;
    }
    tile_portable(x, stride, ks, mr, panel, acc, accumulate);
}

/// The tile on AVX2 and FMA: 16 vector registers hold at most `AVX2_ROWS` rows of one
/// half-panel, so the tile runs as two half-panels of 16 columns. The same FMAs in the
/// same order per value as the AVX-512 tile: the same sums.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `mr <= AVX2_ROWS`; the reads are bounded as for
/// `tile_avx512` with `mr` rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx2(
    a: *const f32,
    lda: usize,
    kc: usize,
    mr: usize,
    b: *const f32,
    acc: &mut [[f32; NR]; MR],
    accumulate: bool,
    pf: *const f32,
    lines: usize,
) {
    for half in 0..2 {
        let b = b.add(half * 16);
        // Prefetches go with the first half only: it alone reads the weights from L2.
        let lines = if half == 0 { lines } else { 0 };
        match mr {
            6 => half_avx2::<6>(a, lda, kc, b, acc, half, accumulate, pf, lines),
            5 => half_avx2::<5>(a, lda, kc, b, acc, half, accumulate, pf, lines),
            4 => half_avx2::<4>(a, lda, kc, b, acc, half, accumulate, pf, lines),
            3 => half_avx2::<3>(a, lda, kc, b, acc, half, accumulate, pf, lines),
            2 => half_avx2::<2>(a, lda, kc, b, acc, half, accumulate, pf, lines),
            _ => half_avx2::<1>(a, lda, kc, b, acc, half, accumulate, pf, lines),
        }
    }
}

/// `R` rows (at most `AVX2_ROWS`) times the 16 columns of a panel from `b` on (row stride `NR`),
/// into `acc[i][half * 16..][..16]`.
///
/// # Safety
/// As `tile_avx2`, for `R` rows from `a`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn half_avx2<const R: usize>(
    a: *const f32,
    lda: usize,
    kc: usize,
    b: *const f32,
    acc: &mut [[f32; NR]; MR],
    half: usize,
    accumulate: bool,
    pf: *const f32,
    lines: usize,
) {
    use std::arch::x86_64::*;
    let mut c = [[_mm256_setzero_ps(); 2]; R];
    if accumulate {
        for (c, acc) in c.iter_mut().zip(acc.iter()) {
            c[0] = _mm256_loadu_ps(acc.as_ptr().add(half * 16));
            c[1] = _mm256_loadu_ps(acc.as_ptr().add(half * 16 + 8));
        }
    }
    // As in `tile_avx512`: chunks of steps, each led by its share of the prefetches.
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
            let b0 = _mm256_loadu_ps(b.add(step * NR));
            let b1 = _mm256_loadu_ps(b.add(step * NR + 8));
            for (i, c) in c.iter_mut().enumerate() {
                let x = _mm256_broadcast_ss(&*a.add(i * lda + step));
                c[0] = _mm256_fmadd_ps(x, b0, c[0]);
                c[1] = _mm256_fmadd_ps(x, b1, c[1]);
            }
        }
        start = end;
    }
    for (c, acc) in c.iter().zip(acc.iter_mut()) {
        _mm256_storeu_ps(acc.as_mut_ptr().add(half * 16), c[0]);
        _mm256_storeu_ps(acc.as_mut_ptr().add(half * 16 + 8), c[1]);
    }
}

/// f32 values per cache line.
pub(super) const LINE: usize = 16;

/// `R` rows of `a` (row stride `lda`, `kc` channels) times a `kc x NR` panel slice,
/// prefetching `lines` cache lines from `pf` along the way.
///
/// # Safety
/// The CPU must have AVX-512 F. `a` must be readable at `i * lda + step` for every row
/// `i < R` and `step < kc`, `b` for `kc * NR` floats; `pf` is only prefetched (a hint
/// that never faults) `lines` lines on, so it may point anywhere.
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

    /// Every SIMD tile this CPU has, against the portable code, on every row count it
    /// takes, fresh and accumulating.
    #[test]
    fn kernels_and_portable_code_agree() {
        let (k, kc) = (40, 37);
        let mut rand = super::super::test_values(0x2545_f491);
        let x: Vec<f32> = (0..MR * k).map(|_| rand()).collect();
        let panel: Vec<f32> = (0..kc * NR).map(|_| rand()).collect();
        let mut checked = 0;
        for (name, available) in [
            ("AVX-512", super::super::avx512()),
            ("AVX2", super::super::avx2()),
        ] {
            if !available {
                super::super::skip(
                    "kernels_and_portable_code_agree",
                    &format!("this CPU has no {name} (or BERT_CLI_PORTABLE is set)"),
                );
                continue;
            }
            let rows = if name == "AVX2" { AVX2_ROWS } else { MR };
            for mr in 1..=rows {
                for accumulate in [false, true] {
                    let mut want = [[0.5f32; NR]; MR];
                    tile_portable(&x, k, 2..2 + kc, mr, &panel, &mut want, accumulate);
                    let mut got = [[0.5f32; NR]; MR];
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: the feature was detected; x holds MR rows of k >= 2 + kc
                    // values and panel kc steps.
                    unsafe {
                        let (a, b) = (x[2..].as_ptr(), panel.as_ptr());
                        if name == "AVX2" {
                            tile_avx2(a, k, kc, mr, b, &mut got, accumulate, b, 4);
                        } else {
                            tile_product(&x, k, 2..2 + kc, mr, &panel, &mut got, accumulate, &[]);
                        }
                    }
                    // Same FMAs in the same order: the same bits, and rows past `mr`
                    // untouched.
                    assert_eq!(got, want, "{name}, mr {mr}, accumulate {accumulate}");
                    checked += 1;
                }
            }
        }
        eprintln!("kernels_and_portable_code_agree: {checked} tiles checked");
    }
}
