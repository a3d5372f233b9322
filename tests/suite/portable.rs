//! The portable path, which CPUs without AVX2 take (candle's matmul and split-head
//! attention, portable int8 code), against PyTorch. `BERT_CLI_PORTABLE=1` forces it, set
//! in a process of its own before any kernel is chosen.

use crate::common;

use bert_cli::engine::EngineOptions;
use bert_cli::layers::Backend;
use common::*;

#[test]
fn portable_path_matches_pytorch() {
    in_own_process(
        "portable::portable_path_alone",
        &[("BERT_CLI_PORTABLE", "1")],
    );
}

#[test]
#[ignore = "runs in its own process, from portable_path_matches_pytorch"]
fn portable_path_alone() {
    expect_own_process(
        "BERT_CLI_PORTABLE",
        "portable::portable_path_matches_pytorch",
    );
    let engine = engine_with(&minilm_sst2(), &EngineOptions::default()).unwrap();
    assert_eq!(engine.backend, Backend::CandleCpu { model_f32: true });
    assert!(!bert_cli::kernels::cpu::int8_simd());
    #[cfg(target_arch = "x86_64")]
    if !std::arch::is_x86_feature_detected!("avx2") {
        say(
            "note: this CPU has no AVX2, so the portable path is its default and \
             tests/parity.rs already ran it; tests/kernels.rs covers the kernel path",
        );
    }

    // Logits and labels of every case, in padded batches of 32.
    let reference = reference("minilm-sst2");
    let cases = reference["cases"].as_array().unwrap();
    let mut worst = 0f32;
    for (p, c) in predict_in_batches(&engine, cases, 32).iter().zip(cases) {
        let d = max_diff(&p.logits, &floats(&c["logits"]));
        worst = worst.max(d);
        assert!(d < 1e-4, "case {}: off by {d}", c["name"]);
        assert_eq!(
            p.top as u64,
            c["label"].as_u64().unwrap(),
            "case {}",
            c["name"]
        );
    }
    eprintln!(
        "portable path: worst logit difference {worst:e} over {} cases",
        cases.len()
    );

    assert_attention_matches_pytorch(&engine);

    for name in FAMILIES {
        let engine = family_engine(name);
        assert_eq!(engine.backend, Backend::CandleCpu { model_f32: true });
        let worst = assert_family_matches_pytorch(name, &engine, Some(96));
        let attention = assert_family_attention_matches_pytorch(name, &engine);
        say(&format!(
            "portable path: {name}: worst logit difference {worst:e}, attention {attention:e}"
        ));
    }
}
