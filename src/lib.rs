//! bert-cli: text classification with transformer encoders built from candle ops.
//!
//! Data flows one way: `cli` (flags) → `options` (settings) → `commands` → `pipeline`
//! (batching, order, streaming) → `engine` (tokenizer + model) → `models` (architectures)
//! → `layers` (building blocks, backend chosen once at load) → `kernels` (hand-written
//! CPU code). `hub` finds the files, `weights` reads them, `device` picks the hardware,
//! and `output` writes the results.

pub mod cli;
pub mod device;
pub mod engine;
pub mod hub;
pub mod input;
pub mod kernels;
pub mod layers;
pub mod models;
pub mod options;
pub mod output;
pub mod pipeline;
pub mod progress;
pub mod task;
pub mod tokenize;
pub mod weights;
