//! The run-directory and corpus readers: `train.json`, `corpus.json`, a data cursor driving the
//! batcher over a small corpus, `manifest.json`, and a study's cached stage file holding a
//! removal method's result (the first byte chooses; 0xf0 and up: the stage file).
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use memsinks_data::cache::{CacheKey, TokenCache};
use memsinks_data::{Batcher, Cursor, Manifest, Split};
use memsinks_train::ownership::RunCorpus;
use memsinks_train::run::TrainSummary;

/// A small token cache (5 documents of lengths 1..=9) built once per process.
fn cache() -> &'static TokenCache {
    static CACHE: OnceLock<(tempfile::TempDir, TokenCache)> = OnceLock::new();
    &CACHE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let key = CacheKey { source_hash: "f".into(), tokenizer_hash: "f".into(), config_hash: "f".into() };
            let mut writer = TokenCache::writer(&dir.path().join("cache"), 50, key).unwrap();
            for len in [1usize, 3, 5, 7, 9] {
                writer.push(&(0..len as u32).collect::<Vec<_>>()).unwrap();
            }
            let cache = writer.finish().unwrap();
            (dir, cache)
        })
        .1
}

/// The layout of a study's cached stage file (its key is a `memsinks_study::StageKey`).
#[derive(serde::Deserialize)]
struct Cached<T> {
    #[allow(dead_code)]
    key: serde_json::Value,
    value: T,
    #[allow(dead_code)]
    seconds: f64,
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, body)) = data.split_first() else { return };
    if choice >= 0xf0 {
        if let Ok(stage) = serde_json::from_slice::<Cached<memsinks_unlearn::MethodResult>>(body) {
            let _ = stage.value.check_finite();
        }
        return;
    }
    match choice % 4 {
        0 => {
            let _ = serde_json::from_slice::<TrainSummary>(body);
        }
        1 => {
            let _ = serde_json::from_slice::<RunCorpus>(body);
        }
        2 => {
            // A cursor read from a (damaged or crafted) checkpoint must not crash the batcher.
            let Ok(mut cursor) = serde_json::from_slice::<Cursor>(body) else { return };
            let schedule = Arc::new(vec![0u32, 1, 2, 3, 4, 2, 4]);
            let packing = choice & 4 != 0;
            let batcher = Batcher::new(Arc::new(cache().clone()), schedule, 8, 2, 49, packing);
            for _ in 0..3 {
                let _ = batcher.next_batch(&mut cursor);
            }
        }
        _ => {
            if let Ok(m) = serde_json::from_slice::<Manifest>(body) {
                let _ = (m.num_docs(), m.counts(), m.tokens(Split::Repeated), m.split_of(0));
                let _ = m.indices(Split::Validation).len().min(1 << 20);
            }
        }
    }
});
