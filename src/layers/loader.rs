//! What a layer loads from: the checkpoint's tensors under a prefix, and the backend the
//! model runs on, carried together as candle's `VarBuilder` carries device and dtype.
//! Model files walk the checkpoint's names with `pp` and hand the result to a layer's
//! `load`; only the layers read which backend it is.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::Backend;

/// The checkpoint under one prefix, and the backend its layers take.
#[derive(Clone)]
pub struct Loader<'a> {
    vb: VarBuilder<'a>,
    pub(super) backend: Backend,
    /// Dense layers round their weights (and, on AMX tiles, their inputs) to bf16 and
    /// sum in f32: `--dtype bf16` on the CPU, where the model is otherwise f32.
    pub(super) bf16_dense: bool,
}

impl<'a> Loader<'a> {
    /// The checkpoint's root, its layers on `backend`.
    pub fn new(vb: VarBuilder<'a>, backend: Backend) -> Self {
        Self {
            vb,
            backend,
            bf16_dense: false,
        }
    }

    /// The same, its dense layers in bf16 over an f32 model (`Loader::bf16_dense`).
    pub fn with_bf16_dense(self, bf16_dense: bool) -> Self {
        Self { bf16_dense, ..self }
    }

    /// The tensors under `name.` (a name may hold dots: `pp("pooler.dense")`).
    pub fn pp<S: ToString>(&self, name: S) -> Self {
        Self {
            vb: self.vb.pp(name),
            backend: self.backend,
            bf16_dense: self.bf16_dense,
        }
    }

    /// Tensor `name` under this prefix, its shape checked.
    pub fn get<S: Into<candle_core::Shape>>(&self, shape: S, name: &str) -> Result<Tensor> {
        Ok(self.vb.get(shape, name)?)
    }

    /// Tensor `name` under this prefix, whatever its shape (the caller checks it).
    pub fn get_unchecked(&self, name: &str) -> Result<Tensor> {
        Ok(self.vb.get_unchecked(name)?)
    }

    /// Whether the checkpoint has tensor `name` under this prefix.
    pub fn contains_tensor(&self, name: &str) -> bool {
        self.vb.contains_tensor(name)
    }

    /// This prefix, dotted, for messages.
    pub fn prefix(&self) -> String {
        self.vb.prefix()
    }

    /// Where the model's tensors live.
    pub fn device(&self) -> &Device {
        self.vb.device()
    }

    /// The dtype the model computes in.
    pub fn dtype(&self) -> DType {
        self.vb.dtype()
    }

    /// The same tensors, for layers that run once at load on a constant (a table
    /// normalised ahead of time): they take candle's ops, which leave their input as it
    /// is, where the CPU kernels would overwrite the loaded tensor in place.
    pub fn for_constants(&self) -> Self {
        Self {
            vb: self.vb.clone(),
            backend: Backend::Candle,
            bf16_dense: false,
        }
    }
}
