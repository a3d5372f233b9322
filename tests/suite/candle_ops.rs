//! The path GPUs and Metal take (candle's ops alone, `Backend::Candle`), run on the CPU
//! with `BERT_CLI_CANDLE_OPS=1`, against PyTorch: the MiniLM fixture and every family on
//! a subset of cases, and their attention. One test, so that the variable is set in this
//! process before any backend is chosen.

mod common;

use bert_cli::engine::EngineOptions;
use bert_cli::layers::Backend;
use common::*;

#[test]
fn candle_ops_path_matches_pytorch() {
    std::env::set_var("BERT_CLI_CANDLE_OPS", "1");
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
