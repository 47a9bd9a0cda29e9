//! The corpus readers on damaged files: a small prepared corpus (built once per process) is
//! copied, one of its files is replaced by the input (the first byte chooses which: the cache
//! index, the cache metadata, a token shard, the schedule, the deduplicated schedule, the
//! manifest), and the corpus is opened, its schedules read and every document decoded. Any
//! outcome but an error or a clean read (a panic, an abort, a hang) is a failure.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use memsinks_data::{DataConfig, PreparedCorpus, ScheduleKind};

const DATA: &str = r#"(
    source: Synthetic(stories: 60, seed: 1),
    tokenizer: Train(vocab_size: 300),
    repeated: (docs: 3, repetitions: 2),
    canary: (docs: 1, repetitions: 2, length: 8),
    unique: 10,
    validation: 5,
    context: 16,
    ordering: Shuffled,
    packing: false,
    seed: 0,
)"#;

const FILES: [&str; 7] = [
    "cache/index.bin",
    "cache/cache.json",
    "cache/tokens-00000.bin",
    "schedule.bin",
    "schedule_dedup.bin",
    "schedule_dedup_fresh.bin",
    "manifest.json",
];

fn prepared() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let cfg: DataConfig = memsinks_core::overrides::parse_ron(DATA, Path::new("fuzz")).unwrap();
        let out = dir.path().join("corpus");
        memsinks_data::prepare(&cfg, &out, false).unwrap();
        (dir, out)
    })
    .1
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, body)) = data.split_first() else { return };
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("corpus");
    copy_dir(prepared(), &dir);
    std::fs::write(dir.join(FILES[choice as usize % FILES.len()]), body).unwrap();
    let Ok(corpus) = PreparedCorpus::open(&dir) else { return };
    for kind in [ScheduleKind::Full, ScheduleKind::Dedup, ScheduleKind::DedupFresh] {
        if let Ok(schedule) = corpus.schedule(kind) {
            for &doc in schedule.iter().take(1 << 12) {
                let _ = corpus.cache.doc(doc as usize);
            }
        }
    }
    for d in 0..corpus.cache.num_docs().min(1 << 12) {
        let _ = corpus.cache.doc(d);
    }
});
