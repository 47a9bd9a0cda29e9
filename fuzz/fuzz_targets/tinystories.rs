//! The TinyStories text reader on arbitrary bytes, in both UTF-8 modes.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use memsinks_data::source::{InvalidUtf8, TinyStoriesReader};

fuzz_target!(|data: &[u8]| {
    for mode in [InvalidUtf8::Fail, InvalidUtf8::Skip] {
        for doc in TinyStoriesReader::new(data, Path::new("fuzz.txt"), mode).flatten() {
            // Documents come trimmed and never empty (blank stories are skipped).
            assert!(!doc.text.is_empty() && doc.text.trim() == doc.text, "{:?}", doc.text);
        }
    }
});
