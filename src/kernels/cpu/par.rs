//! The parallel loop every kernel uses, and the one way its tasks write disjoint parts
//! of a shared output.

use std::marker::PhantomData;

use rayon::prelude::*;

/// Runs `task(0..n)` on the rayon pool, one task per job.
///
/// Left to itself rayon stops splitting a range at about a quarter of it, so a thread
/// that ran out of work found nothing to steal while the other ran a 27-task chunk alone:
/// in a bert-base profile the second worker slept 14% of the run, most of it in the GEMM
/// and attention loops that now call this.
pub(crate) fn par_tasks(n: usize, task: impl Fn(usize) + Send + Sync) {
    (0..n).into_par_iter().with_max_len(1).for_each(task);
}

/// An output buffer of f32 that parallel tasks fill in disjoint parts. The parts of one
/// task often interleave with another's in memory (a block of rows and columns of a
/// row-major matrix), which slices cannot express; each part is bounds-checked here, and
/// the callers' `SAFETY` comments say why no two tasks touch the same float.
#[derive(Clone, Copy)]
pub(crate) struct Disjoint<'a> {
    ptr: *mut f32,
    len: usize,
    _buf: PhantomData<&'a mut [f32]>,
}

// SAFETY: a `Disjoint` only hands out parts under the contract of `part`/`part_ptr`
// (no two holders touch the same float), so sharing it across threads is sharing
// disjoint `&mut` slices.
unsafe impl Send for Disjoint<'_> {}
// SAFETY: as above.
unsafe impl Sync for Disjoint<'_> {}

impl<'a> Disjoint<'a> {
    /// Over an initialised buffer.
    pub fn new(buf: &'a mut [f32]) -> Self {
        Self {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            _buf: PhantomData,
        }
    }

    /// Over `len` floats at `ptr` that may not be initialised yet: fill them through
    /// `part_ptr` only.
    ///
    /// # Safety
    /// `ptr` must be valid for writes of `len` floats for `'a`, and nothing else may
    /// access them meanwhile.
    pub unsafe fn uninit(ptr: *mut f32, len: usize) -> Self {
        Self {
            ptr,
            len,
            _buf: PhantomData,
        }
    }

    /// `len` floats from `start`, to read and write.
    ///
    /// # Safety
    /// No other task may access any of these floats while the slice lives, and the
    /// buffer must be initialised (made by `new`). Out-of-bounds parts panic.
    #[allow(clippy::mut_from_ref)] // the point of the type; exclusivity is the contract
    pub unsafe fn part(&self, start: usize, len: usize) -> &'a mut [f32] {
        assert!(
            start <= self.len && len <= self.len - start,
            "part {start}+{len} of {}",
            self.len
        );
        std::slice::from_raw_parts_mut(self.ptr.add(start), len)
    }

    /// The first of `len` floats from `start`, to be written (never read) through the
    /// pointer: for buffers that may still be uninitialised, and for streaming stores.
    ///
    /// # Safety
    /// No other task may access any of these floats until the caller's tasks are joined.
    /// Out-of-bounds parts panic.
    pub unsafe fn part_ptr(&self, start: usize, len: usize) -> *mut f32 {
        assert!(
            start <= self.len && len <= self.len - start,
            "part {start}+{len} of {}",
            self.len
        );
        self.ptr.add(start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_fill_disjoint_parts_and_a_part_past_the_end_panics() {
        let mut buf = vec![0f32; 12];
        let out = Disjoint::new(&mut buf);
        // Three tasks, each owning every third float (parts that interleave).
        par_tasks(3, |t| {
            for i in (t..12).step_by(3) {
                // SAFETY: float i belongs to task i % 3 alone.
                unsafe { out.part(i, 1)[0] = t as f32 + 1.0 };
            }
        });
        assert_eq!(buf, [1., 2., 3., 1., 2., 3., 1., 2., 3., 1., 2., 3.]);
        let out = Disjoint::new(&mut buf);
        // SAFETY: nothing else holds `buf`; the part is out of bounds and must panic
        // before any access.
        let past = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe {
            out.part(10, 3).len()
        }));
        assert!(past.is_err(), "a part past the end must panic");
    }
}
