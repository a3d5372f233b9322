//! The path GPUs and Metal take (candle's ops alone, `Backend::Candle`), run on the CPU
//! with `BERT_CLI_CANDLE_OPS=1`, against PyTorch: the MiniLM fixture and every family on
//! a subset of cases, and their attention. The variable is set in a process of its own,
//! before any backend is chosen.

use crate::common;

use bert_cli::engine::EngineOptions;
use bert_cli::layers::Backend;
use common::*;

#[test]
fn candle_ops_path_matches_pytorch() {
    in_own_process(
        "candle_ops::candle_ops_path_alone",
        &[("BERT_CLI_CANDLE_OPS", "1")],
    );
}

#[test]
#[ignore = "runs in its own process, from candle_ops_path_matches_pytorch"]
fn candle_ops_path_alone() {
    expect_own_process(
        "BERT_CLI_CANDLE_OPS",
        "candle_ops::candle_ops_path_matches_pytorch",
    );
    let engine = engine_with(&minilm_sst2(), &EngineOptions::default()).unwrap();
    assert_eq!(engine.backend, Backend::Candle);
    assert_attention_matches_pytorch(&engine);
    for name in FAMILIES {
        let engine = family_engine(name);
        assert_eq!(engine.backend, Backend::Candle);
        let worst = assert_family_matches_pytorch(name, &engine, Some(96));
        let attention = assert_family_attention_matches_pytorch(name, &engine);
        say(&format!(
            "candle ops: {name}: worst logit difference {worst:e}, attention {attention:e}"
        ));
    }
}
