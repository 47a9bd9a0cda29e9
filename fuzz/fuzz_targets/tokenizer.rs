//! Loading a `tokenizer.json`: arbitrary bytes, then (when it loads) encoding a text must give IDs
//! inside the vocabulary, which is what the model's embedding is indexed with.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memsinks_data::TextTokenizer;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, data).unwrap();
    if let Ok(tok) = TextTokenizer::load(&path) {
        assert!((tok.end_of_text() as usize) < tok.vocab_size());
        if let Ok(ids) = tok.encode("Once upon a time, a cat <|endoftext|> sat.") {
            assert!(ids.iter().all(|&id| (id as usize) < tok.vocab_size()), "an ID outside the vocabulary");
        }
    }
});
