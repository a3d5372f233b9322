//! The CPU kernel path (packed GEMM, fused attention, the folded first-token attention,
//! padding-free rows, int8 on top) against PyTorch, on any x86-64 CPU:
//! `BERT_CLI_FORCE_KERNELS=1` takes it even without AVX2, through the portable
//! micro-kernel (same sums, slower). On CPUs with AVX-512, or AVX2 and FMA, it is the
//! default path and tests/suite/parity.rs covers it too. The variable is set in a process
//! of its own.

use crate::common;

use bert_cli::engine::Engine;
use bert_cli::layers::Backend;
use common::*;

/// Cases from the reference: the first `dev` dev sentences and every edge case (the
/// portable micro-kernel in a test build is slow; with AVX-512 or AVX2 every case runs).
fn cases(reference: &serde_json::Value) -> Vec<serde_json::Value> {
    let all = reference["cases"].as_array().unwrap();
    let dev = if bert_cli::kernels::cpu::fast_kernels() {
        usize::MAX
    } else {
        96
    };
    let mut picked: Vec<_> = all
        .iter()
        .filter(|c| c["name"].as_str().unwrap().starts_with("dev-"))
        .take(dev)
        .cloned()
        .collect();
    picked.extend(
        all.iter()
            .filter(|c| !c["name"].as_str().unwrap().starts_with("dev-"))
            .cloned(),
    );
    picked
}

fn engine(quantize_q8: bool) -> Engine {
    let engine = minilm_engine(quantize_q8);
    assert_eq!(engine.backend, Backend::Kernels);
    engine
}

#[test]
fn kernel_path_matches_pytorch_and_ignores_batching() {
    in_own_process(
        "kernels::kernel_path_alone",
        &[("BERT_CLI_FORCE_KERNELS", "1")],
    );
}

#[test]
#[ignore = "runs in its own process, from kernel_path_matches_pytorch_and_ignores_batching"]
fn kernel_path_alone() {
    expect_own_process(
        "BERT_CLI_FORCE_KERNELS",
        "kernels::kernel_path_matches_pytorch_and_ignores_batching",
    );
    if !bert_cli::kernels::cpu::fast_kernels() {
        say("note: no AVX-512 or AVX2 here: the kernels run their portable micro-kernel");
    }
    let reference = reference("minilm-sst2");
    let cases = cases(&reference);
    let f32 = engine(false);
    let q8 = engine(true);

    // Token ids, logits and labels against PyTorch, in padded batches of 32; each text
    // gets the same bits alone as in its batch, in f32 and q8.
    let mut worst = 0f32;
    let mut q8_agree = 0;
    for (engine, name) in [(&f32, "f32"), (&q8, "q8")] {
        let batched = predict_in_batches(engine, &cases, 32);
        for (c, b) in cases.iter().zip(&batched) {
            let e = engine.encode(c["text"].as_str().unwrap()).unwrap();
            assert_eq!(e.ids, ids(&c["ids"]), "case {}", c["name"]);
            let alone = engine.predict(&[&e], false).unwrap().remove(0);
            assert_eq!(
                alone.logits, b.logits,
                "{name} case {}: batching changed the logits",
                c["name"]
            );
            let label = c["label"].as_u64().unwrap();
            if name == "f32" {
                let d = max_diff(&b.logits, &floats(&c["logits"]));
                worst = worst.max(d);
                assert!(d < 1e-4, "case {}: off by {d}", c["name"]);
                assert_eq!(b.top as u64, label, "case {}", c["name"]);
            } else {
                let same = b.top as u64 == label;
                q8_agree += usize::from(same);
                let want = floats(&c["logits"]);
                if (want[0] - want[1]).abs() > 0.5 {
                    assert!(same, "q8 flipped a confident case {}", c["name"]);
                }
            }
        }
    }
    say(&format!(
        "kernel path: worst logit difference {worst:e} over {} cases; q8 agrees with \
         PyTorch f32 on {q8_agree}",
        cases.len()
    ));
    // The same bar as tests/parity.rs's q8 test: 98% of labels, no confident flip.
    assert!(
        q8_agree * 100 >= cases.len() * 98,
        "q8 agreed on {q8_agree} of {}",
        cases.len()
    );

    assert_attention_matches_pytorch(&f32);

    // Every family through the same kernels (on this CPU's default path only where it
    // has AVX-512 or AVX2; tests/families.rs runs them whole there).
    for name in FAMILIES {
        let engine = family_engine(name);
        assert_eq!(engine.backend, bert_cli::layers::Backend::Kernels);
        let worst = assert_family_matches_pytorch(name, &engine, Some(96));
        let attention = assert_family_attention_matches_pytorch(name, &engine);
        say(&format!(
            "kernel path: {name}: worst logit difference {worst:e}, attention {attention:e}"
        ));
    }
}
