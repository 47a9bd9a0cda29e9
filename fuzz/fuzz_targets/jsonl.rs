//! The JSON Lines reader on arbitrary bytes, plain and as a zstd stream (the first byte chooses),
//! and the JSON array reader.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memsinks_data::source::{read_json_array, InvalidUtf8, JsonlReader};

fuzz_target!(|data: &[u8]| {
    let Some((&choice, body)) = data.split_first() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (name, bytes) = match choice % 3 {
        0 => ("x.jsonl", body.to_vec()),
        // Compressed, so the decoder sees a valid frame holding the fuzzed text.
        1 => ("x.jsonl.zst", zstd::encode_all(body, 1).unwrap()),
        // Raw bytes given to the decoder.
        _ => ("x.jsonl.zst", body.to_vec()),
    };
    let path = dir.path().join(name);
    std::fs::write(&path, &bytes).unwrap();
    let set = if choice & 4 == 0 { None } else { Some("RedPajamaBook") };
    let mode = if choice & 8 == 0 { InvalidUtf8::Fail } else { InvalidUtf8::Skip };
    if let Ok(reader) = JsonlReader::open(&path, "text", set, mode) {
        for doc in reader.take(10_000) {
            let _ = doc;
        }
    }
    let array = dir.path().join("x.json");
    std::fs::write(&array, body).unwrap();
    let _ = read_json_array(&array, "text", None);
});
