//! bert-cli: a BERT text classifier built from candle-nn ops.
//!
//! Data flows one way: `cli` (flags) → `pipeline` (batching, order, streaming) →
//! `engine` (tokenizer + `model`) → `output`. `hub` finds the files and `device` the
//! hardware before the pipeline starts.

pub mod cli;
pub mod device;
pub mod engine;
pub mod hub;
pub mod model;
pub mod output;
pub mod pipeline;
pub mod tokenize;
