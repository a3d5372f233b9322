//! Hand-written compute kernels, below the layers. Only the CPU has any today; GPUs run
//! candle's own.

pub mod cpu;
