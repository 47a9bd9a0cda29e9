//! End-to-end: build corpora from the synthetic generator (and from real TinyStories text when
//! `../shared/data/tinystories/valid-sample.txt` exists) and check the manifest invariants, the
//! cache and the batchers.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memsinks_data::corpus::{
    sequence_id, CanaryConfig, Ordering, RepeatConfig, SourceConfig, TokenizerConfig, SCHEDULE_FILE,
};
use memsinks_data::{prepare, Batcher, Cursor, DataConfig, PreparedCorpus, Split};

fn config(source: SourceConfig) -> DataConfig {
    DataConfig {
        source,
        repeated_source: None,
        tokenizer: TokenizerConfig::Train { vocab_size: 512 },
        repeated: RepeatConfig { docs: 10, repetitions: 8 },
        canary: CanaryConfig { docs: 5, repetitions: 8, length: 24 },
        unique: 120,
        validation: 30,
        context: 64,
        ordering: Ordering::Shuffled,
        packing: false,
        seed: 3,
        invalid_utf8: Default::default(),
    }
}

fn synthetic() -> SourceConfig {
    SourceConfig::Synthetic { stories: 400, seed: 11 }
}

fn check_invariants(corpus: &PreparedCorpus, cfg: &DataConfig) {
    let m = &corpus.manifest;
    let counts = m.counts();
    assert_eq!(counts[&Split::Repeated], cfg.repeated.docs);
    assert_eq!(counts[&Split::Canary], cfg.canary.docs);
    assert_eq!(counts[&Split::Unique], cfg.unique);
    assert_eq!(counts[&Split::Validation], cfg.validation);
    // IDs: non-zero, distinct per document, the hash of the cached tokens.
    let ids: HashSet<i64> = (0..m.num_docs()).map(|i| sequence_id(&corpus.cache.doc(i))).collect();
    assert_eq!(ids.len(), m.num_docs());
    assert!(!ids.contains(&0));
    for (i, d) in m.documents.iter().enumerate() {
        let tokens = corpus.cache.doc(i);
        assert_eq!(tokens.len(), d.tokens as usize);
        assert_eq!(sequence_id(&tokens), d.id, "ID of {} is not the hash of its tokens", d.origin);
    }
    let unique_tokens: u64 = m.indices(Split::Unique).iter().map(|&i| corpus.cache.doc_len(i) as u64).sum();
    assert_eq!(unique_tokens, m.unique_tokens);
    // Validation is disjoint in content from every training document.
    let text = |i: usize| corpus.tokenizer.decode(&corpus.cache.doc(i)).unwrap();
    let train_texts: HashSet<String> =
        (0..m.num_docs()).filter(|&i| m.split_of(i) != Split::Validation).map(text).collect();
    for i in m.indices(Split::Validation) {
        assert!(!train_texts.contains(&text(i)), "validation document {i} also in training");
    }
    // The schedule holds each document as often as its repetitions; positions agree with it.
    let schedule = corpus.schedule(false).unwrap();
    let mut seen: HashMap<u32, u32> = HashMap::new();
    for (pos, &d) in schedule.iter().enumerate() {
        *seen.entry(d).or_default() += 1;
        if let Some(entry) = m.documents.get(d as usize) {
            assert!(entry.positions.contains(&(pos as u64)));
        }
    }
    for i in 0..m.num_docs() {
        let expected = m.documents.get(i).map_or(1, |d| d.repetitions);
        assert_eq!(seen.get(&(i as u32)).copied().unwrap_or(0), expected, "document {i}");
    }
    // Dedup keeps every training document exactly once.
    let dedup = corpus.schedule(true).unwrap();
    let dedup_set: HashSet<u32> = dedup.iter().copied().collect();
    assert_eq!(dedup.len(), dedup_set.len());
    assert_eq!(dedup.len(), cfg.repeated.docs + cfg.canary.docs + cfg.unique);
    assert_eq!(m.occurrences as usize, schedule.len());
}

#[test]
fn synthetic_corpus_invariants_cache_reuse_and_batches() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(synthetic());
    let corpus = prepare(&cfg, dir.path(), false).unwrap();
    check_invariants(&corpus, &cfg);
    // Canaries are random tokens of the configured length.
    for i in corpus.manifest.indices(Split::Canary) {
        assert_eq!(corpus.cache.doc(i).len(), cfg.canary.length);
    }
    // Reopening returns the same data; preparing again reuses it (the schedule file is untouched).
    let stamp = std::fs::metadata(dir.path().join(SCHEDULE_FILE)).unwrap().modified().unwrap();
    let again = prepare(&cfg, dir.path(), false).unwrap();
    assert_eq!(again.manifest, corpus.manifest);
    assert_eq!(std::fs::metadata(dir.path().join(SCHEDULE_FILE)).unwrap().modified().unwrap(), stamp);
    // A changed config never rebuilds a directory that holds another corpus: it is refused,
    // naming the key that differs, and the corpus is left as it was.
    let mut other = cfg.clone();
    other.seed = 4;
    let err = prepare(&other, dir.path(), false).err().unwrap().to_string();
    assert!(err.contains("another data configuration") && err.contains("data.seed"), "{err}");
    assert_eq!(PreparedCorpus::open(dir.path()).unwrap().manifest, corpus.manifest);
    let fresh = tempfile::tempdir().unwrap();
    let rebuilt = prepare(&other, fresh.path(), false).unwrap();
    assert_ne!(rebuilt.manifest.config_hash, corpus.manifest.config_hash);
    // A user's own non-empty directory is refused before anything is written into it.
    let user = tempfile::tempdir().unwrap();
    std::fs::write(user.path().join("notes.txt"), "mine").unwrap();
    let err = prepare(&cfg, user.path(), false).err().unwrap().to_string();
    assert!(err.contains("holds no memsinks corpus"), "{err}");
    let names: Vec<_> = std::fs::read_dir(user.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["notes.txt"]);

    // One document per row: every batch row starts with its document and masks the padding.
    let cache = Arc::new(rebuilt.cache);
    let schedule = Arc::new(PreparedCorpus::open(fresh.path()).unwrap().schedule(false).unwrap());
    let eot = rebuilt.manifest.end_of_text;
    let batcher = Batcher::new(cache.clone(), schedule.clone(), 64, 8, eot, false);
    let mut cursor = Cursor::default();
    let first = batcher.next_batch(&mut cursor).unwrap();
    assert_eq!(first.rows.len(), 8);
    for (r, (pos, doc)) in first.started.iter().enumerate() {
        assert_eq!(*pos as usize, r);
        let tokens = cache.doc(*doc as usize);
        let n = tokens.len().min(64);
        assert_eq!(&first.rows[r][..n], &tokens[..n]);
        let kept = first.weights[r].iter().filter(|&&w| w > 0.0).count();
        assert_eq!(kept, tokens.len().min(64), "targets up to and including end-of-text");
        let id = sequence_id(&tokens);
        assert!(first.layout.seq_ids[r * 64..(r + 1) * 64].iter().all(|&x| x == id));
    }
    // Saving and restoring the cursor continues identically.
    let saved = cursor;
    let second = batcher.next_batch(&mut cursor).unwrap();
    let mut restored = saved;
    assert_eq!(batcher.next_batch(&mut restored).unwrap(), second);
    // A full pass visits the schedule once, then the epoch advances.
    let mut c = Cursor::default();
    let mut rows = 0;
    while let Some(b) = batcher.next_batch(&mut c) {
        rows += b.rows.len();
    }
    assert_eq!(rows, schedule.len());
    assert_eq!(c, Cursor { epoch: 1, position: 0, offset: 0 });
}

#[test]
fn packed_batches_cover_the_token_stream_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(synthetic());
    cfg.packing = true;
    cfg.context = 32;
    let corpus = prepare(&cfg, dir.path(), false).unwrap();
    let schedule = Arc::new(corpus.schedule(false).unwrap());
    let eot = corpus.manifest.end_of_text;
    let cache = Arc::new(corpus.cache);
    let batcher = Batcher::new(cache.clone(), schedule.clone(), 32, 4, eot, true);
    // The expected stream: every scheduled document followed by end-of-text.
    let stream: Vec<(u32, i64)> = schedule
        .iter()
        .flat_map(|&d| {
            let tokens = cache.doc(d as usize);
            let id = sequence_id(&tokens);
            tokens.into_iter().chain([eot]).map(move |t| (t, id))
        })
        .collect();
    let mut cursor = Cursor::default();
    let mut inputs: Vec<(u32, i64)> = Vec::new();
    let mut started = 0;
    while let Some(b) = batcher.next_batch(&mut cursor) {
        started += b.started.len();
        for (r, row) in b.rows.iter().enumerate() {
            // Inputs that have a target: a row's last real token is the next row's first input.
            let with_target = b.weights[r].iter().filter(|&&w| w > 0.0).count();
            for (t, &token) in row.iter().enumerate().take(with_target) {
                inputs.push((token, b.layout.seq_ids[r * 32 + t]));
            }
            // Segments never decrease along a row, and tokens of one segment share an ID.
            let seg = &b.layout.segments.as_ref().unwrap()[r * 32..(r + 1) * 32];
            assert!(seg.windows(2).all(|w| w[0] <= w[1]));
        }
    }
    // Inputs tile the stream: each row advances by `context` tokens, so every token but the very
    // last is an input exactly once, with its own document's ID.
    assert_eq!(inputs.len(), stream.len() - 1);
    assert_eq!(inputs[..], stream[..stream.len() - 1]);
    assert_eq!(started, schedule.len());
}

#[test]
fn bad_inputs_fail_clearly_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // Too few documents for the requested splits.
    let mut cfg = config(SourceConfig::Synthetic { stories: 30, seed: 1 });
    let err = prepare(&cfg, &out, false).err().unwrap().to_string();
    assert!(err.contains("too few"), "{err}");
    assert!(!out.join("manifest.json").exists());
    // A missing file.
    cfg.source = SourceConfig::TinyStories { path: dir.path().join("missing.txt") };
    let err = prepare(&cfg, &out, false).err().unwrap().to_string();
    assert!(err.contains("missing.txt"), "{err}");
    // An empty corpus.
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "\n<|endoftext|>\n").unwrap();
    cfg.source = SourceConfig::TinyStories { path: empty };
    assert!(prepare(&cfg, &out, false).err().unwrap().to_string().contains("too few"));
    // Invalid UTF-8 names the byte offset.
    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, b"Fine story.\n<|endoftext|>\nBroken \xfe story\n<|endoftext|>\n").unwrap();
    cfg.source = SourceConfig::TinyStories { path: bad.clone() };
    let err = prepare(&cfg, &out, false).err().unwrap().to_string();
    assert!(err.contains("bad.txt") && err.contains("offset 33"), "{err}");
    // Bad values.
    let mut zero = config(synthetic());
    zero.context = 1;
    assert!(prepare(&zero, &out, false).err().unwrap().to_string().contains("context"));
    // A truncated cache is reported when the corpus is opened.
    let good = config(synthetic());
    prepare(&good, &out, false).unwrap();
    let shard = out.join("cache").join("tokens-00000.bin");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 2]).unwrap();
    let err = PreparedCorpus::open(&out).err().unwrap().to_string();
    assert!(err.contains("tokens-00000.bin") && err.contains("truncated"), "{err}");
    // Preparing again repairs it.
    prepare(&good, &out, false).unwrap();
    assert!(PreparedCorpus::open(&out).is_ok());
}

fn shared_sample() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/tinystories/valid-sample.txt");
    p.exists().then_some(p)
}

#[test]
fn real_tinystories_sample_when_available() {
    let Some(sample) = shared_sample() else {
        eprintln!("skipped: ../shared/data/tinystories/valid-sample.txt not found");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(SourceConfig::TinyStories { path: sample });
    cfg.tokenizer = TokenizerConfig::Train { vocab_size: 2048 };
    cfg.repeated = RepeatConfig { docs: 40, repetitions: 32 };
    cfg.unique = 700;
    cfg.validation = 100;
    cfg.context = 256;
    let started = std::time::Instant::now();
    let corpus = prepare(&cfg, dir.path(), false).unwrap();
    let took = started.elapsed();
    check_invariants(&corpus, &cfg);
    assert_eq!(corpus.tokenizer.vocab_size(), 2048);
    let first = corpus.manifest.indices(Split::Repeated)[0];
    let text = corpus.tokenizer.decode(&corpus.cache.doc(first)).unwrap();
    assert!(text.split_whitespace().count() > 20, "{text}");
    eprintln!("prepared the real sample in {took:?}");
}
