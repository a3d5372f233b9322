//! Hand-written CPU kernels, behind a safe API of tensors in and tensors out.
//!
//! Tensors in and out are f32 on the CPU (bf16 and int8 layers round their operands
//! inside and sum in f32 or i32). The layers above choose, once at load, whether a model
//! runs on these kernels or on candle's ops; inside, a kernel may still pick its own
//! instruction set (AVX-512, AVX2 with FMA, or portable code), always with the same
//! results; only the bf16 layer's AMX tiles have no portable twin.
//!
//! - `gemm` packs a dense layer's weight once and multiplies by it (`microkernel` holds
//!   the register tile, `store` the pass that adds bias, residual or GELU as it writes);
//! - `amx` is the bf16 dense layer of `--dtype bf16` on CPUs with AMX tiles;
//! - `q8` is the int8 dense layer of `--quantize q8`;
//! - `attention` is multi-head attention in one task per (sequence, head), and
//!   `cls_attention` the last layer's first-token query with keys and values folded in;
//! - `elementwise` holds exp, GELU, softmax and LayerNorm rows; `embedding` the lookup
//!   and sum of the embedding tables;
//! - `tensor` is the one bridge between candle tensors and slices, `par` the parallel
//!   loop and the one way tasks write disjoint parts of an output.

/// Runs `body` compiled for the widest vector unit the CPU has (decided at run time, so
/// the binary still runs on any x86-64). No fast-math: every path gives the same numbers.
macro_rules! dispatch_simd {
    ($vis:vis $name:ident, |$($arg:ident: $ty:ty),*| $(-> $ret:ty)? $body:block) => {
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn generic($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                /// # Safety
                /// The CPU must have AVX-512 F.
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? { generic($($arg),*) }
                /// # Safety
                /// The CPU must have AVX2 and FMA.
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { generic($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has just been checked for the enabled features.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    };
}

mod amx;
mod attention;
mod cls_attention;
mod elementwise;
mod embedding;
mod gemm;
mod microkernel;
mod par;
mod q8;
mod store;
mod tensor;

pub use amx::AmxLinear;
pub use attention::{
    attention, attention_with_positions, real_length, PositionTerms, Queries, SeqRows, Shape,
};
pub use cls_attention::ClsAttention;
pub use elementwise::{gelu_in_place, layer_norm_in_place, masked_softmax};
pub use embedding::embedding_sum;
pub use gemm::{Epilogue, PackedLinear};
pub use q8::{raise_input_range, Q8Linear};

/// Whether the packed f32 GEMM and fused attention run at full speed here: an x86-64 CPU
/// with AVX-512 F, or AVX2 and FMA, and `BERT_CLI_PORTABLE` unset. Without them they
/// still give the same results through the portable micro-kernel, only slower than
/// candle's matmul.
pub fn fast_kernels() -> bool {
    avx512() || avx2()
}

/// Whether `--dtype bf16` dense layers run on AMX tiles here (AMX-BF16, the tile state
/// granted by Linux, `BERT_CLI_PORTABLE` and `BERT_CLI_NO_AMX` unset). Checked once.
pub fn amx() -> bool {
    amx::available()
}

/// Whether the micro-kernel's AVX2 + FMA tile can run here (and `BERT_CLI_PORTABLE` is
/// unset); CPUs with AVX-512 take the wider tile. Checked once.
pub fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && !portable_only()
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the AVX-512 kernels run here: an x86-64 CPU with AVX-512 F, and
/// `BERT_CLI_PORTABLE` unset. Checked once.
pub fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f") && !portable_only())
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `BERT_CLI_PORTABLE=1` turns off every SIMD kernel (the packed f32 layers and fused
/// attention above, the int8 kernels), so the portable path that CPUs without AVX2 take
/// can be checked, or chosen, on any machine. Read when a kernel is first chosen.
pub fn portable_only() -> bool {
    env_flag("BERT_CLI_PORTABLE")
}

/// Whether the environment variable `name` is set to something other than empty or "0".
pub fn env_flag(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Whether the int8 layers have their VNNI kernel here (AVX-512 F, BW and VNNI).
/// Checked once.
pub fn vnni() -> bool {
    q8::vnni_available()
}

/// Whether the int8 layers have a SIMD kernel here (VNNI, or AVX2); other CPUs run the
/// same integer arithmetic, to the same bits, in portable code.
pub fn int8_simd() -> bool {
    q8::vnni_available() || q8::avx2_available()
}

/// A seeded xorshift source of values in [-1, 1) for the kernels' unit tests.
#[cfg(test)]
pub(crate) fn test_values(mut seed: u32) -> impl FnMut() -> f32 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        (seed as f32 / u32::MAX as f32) * 2.0 - 1.0
    }
}

/// For unit tests whose subject does not run on this CPU: prints why the test checks
/// nothing, so a pass is never mistaken for a check. Written to stderr directly, past the
/// test harness's capture, so it shows in a plain `cargo test` run.
#[cfg(test)]
pub(crate) fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {why}");
}
