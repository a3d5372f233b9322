//! The one bridge between candle tensors and the kernels' slices: a kernel borrows a
//! contiguous f32 CPU tensor's data in place (`read`), overwrites a tensor that nothing
//! else holds (`update`), or hands its result over without a copy (`from_vec`,
//! `from_aligned`).

use candle_core::{bail, CpuStorage, Device, InplaceOp1, Layout, Result, Shape, Storage, Tensor};

/// Runs `f` on the data of a contiguous f32 CPU tensor (no copy); `what` names the
/// caller in the error otherwise.
pub(crate) fn read<T>(t: &Tensor, what: &str, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(storage) = &*storage else {
        bail!("{what}: expected a CPU tensor");
    };
    Ok(f(contiguous(storage, layout, what)?))
}

/// Runs `f` over the data of `x` and of `residual`, which must be `[m, n]` (the output's
/// shape): the input and residual of a dense layer that adds the residual as it stores.
pub(crate) fn read_with_residual<T>(
    x: &Tensor,
    residual: &Tensor,
    (m, n): (usize, usize),
    what: &str,
    f: impl FnOnce(&[f32], &[f32]) -> T,
) -> Result<T> {
    if residual.dims() != [m, n] {
        bail!(
            "{what}: residual {:?} does not match the output [{m}, {n}]",
            residual.dims()
        );
    }
    let residual = residual.contiguous()?;
    read(&residual, what, |r| read(x, what, |x| f(x, r)))?
}

/// Runs `f` over the data of `t`, a contiguous f32 CPU tensor, in place. Every tensor
/// sharing `t`'s storage sees the change: callers pass a fresh result that nothing else
/// holds (a layer's own output), which saves a buffer the size of it.
pub(crate) fn update(t: &Tensor, what: &str, f: impl Fn(&mut [f32])) -> Result<()> {
    t.inplace_op1(&Update { what, f })
}

/// `data` as a CPU tensor of `shape`, without a copy.
pub(crate) fn from_vec(data: Vec<f32>, shape: impl Into<Shape>) -> Result<Tensor> {
    Tensor::from_vec(data, shape, &Device::Cpu)
}

/// `buf[offset..]` as an `[m, n]` CPU tensor, without a copy: for outputs that start
/// past the front of their allocation (on a cache line, say).
pub(crate) fn from_aligned(buf: Vec<f32>, offset: usize, m: usize, n: usize) -> Result<Tensor> {
    let len = buf.len();
    from_vec(buf, len)?
        .narrow(0, offset, m * n)?
        .reshape((m, n))
}

fn contiguous<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        bail!("{what}: expected f32");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{what}: expected a contiguous tensor"),
    }
}

/// `update` as candle's in-place op (the only way to reach a tensor's data mutably).
struct Update<'a, F> {
    what: &'a str,
    f: F,
}

impl<F: Fn(&mut [f32])> InplaceOp1 for Update<'_, F> {
    fn name(&self) -> &'static str {
        "bert-cli-cpu-kernel"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let CpuStorage::F32(data) = storage else {
            bail!("{}: expected f32", self.what);
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("{}: expected a contiguous tensor", self.what);
        };
        (self.f)(&mut data[start..end]);
        Ok(())
    }
}
