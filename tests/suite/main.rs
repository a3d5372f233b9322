//! The integration tests, one crate (one link of candle and tokenizers instead of one per
//! file), a module per subject. Tests that choose a backend through a process-wide
//! variable run their body in a process of their own (`common::in_own_process`).

mod common;

mod attention_view;
mod candle_ops;
mod cli;
mod data_io;
mod families;
mod fuzz;
mod hub;
mod kernels;
mod parity;
mod portable;
mod reliability;
mod tasks;
