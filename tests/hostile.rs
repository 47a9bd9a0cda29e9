//! The second round of hostile-user probes (a module of the reliability suite): symlinked lock
//! files, studies that must not be deleted, token data the fingerprint must cover, damaged
//! indices, a full disk, undecodable checkpoint records, impossible model shapes, paths that are
//! not UTF-8, a tokenizer with nothing to draw canaries from, diverging unlearning, edited study
//! stages, the small silent results, memory and benchmark limits, and the litter of killed or
//! failed commands. Each test names the numbered probe it reproduces.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use super::{bin, kill_when_exists, memsinks, ok, refused, sha, smoke, snapshot, text, train};

/// A finished smoke run in `dir/name`, trained for `steps` steps.
fn finished_run(dir: &Path, name: &str, steps: usize) -> PathBuf {
    let run = dir.join(name);
    ok(train(&run, &[&format!("train.steps={steps}")]).output().unwrap());
    run
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Runs `cmd` with `limit` applied in the child before it starts (`setrlimit`), and SIGXFSZ
/// ignored so that a file-size limit shows as a write error (`EFBIG`), as a full disk would.
fn with_limit(mut cmd: std::process::Command, resource: libc::__rlimit_resource_t, limit: u64) -> Output {
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let r = libc::rlimit { rlim_cur: limit, rlim_max: limit };
            if libc::setrlimit(resource, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    cmd.output().unwrap()
}

#[test]
fn probe_1_a_symlinked_lock_file_is_never_written_through() {
    let dir = tempfile::tempdir().unwrap();
    let run = finished_run(dir.path(), "run", 10);
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, "precious").unwrap();
    let plant = |d: &Path| {
        std::fs::create_dir_all(d).unwrap();
        let lock = d.join(memsinks_core::files::LOCK_FILE);
        let _ = std::fs::remove_file(&lock);
        std::os::unix::fs::symlink(&victim, &lock).unwrap();
    };
    let r = s(&run);
    let empty = |name: &str| {
        let d = dir.path().join(name);
        plant(&d);
        d
    };
    let (t, st, prep, exp) = (empty("train-out"), empty("study-out"), empty("prep-out"), empty("export-out"));
    let cfg = smoke();
    let commands: Vec<Vec<String>> = vec![
        vec!["eval".into(), "--max-docs".into(), "4".into(), "--k".into(), "8".into(), "--m".into(), "8".into()],
        vec!["unlearn".into(), "--method".into(), "drop-sinks".into()],
    ];
    for args in commands {
        plant(&run);
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend(["--run", r]);
        refused(memsinks(&all), &["symbolic link"]);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious", "{all:?} wrote through the link");
    }
    refused(train(&t, &[]).output().unwrap(), &["symbolic link"]);
    refused(memsinks(&["reproduce", s(&cfg), "--out", s(&st)]), &["symbolic link"]);
    refused(memsinks(&["data", "prepare", "--config", s(&cfg), "--out", s(&prep)]), &["symbolic link"]);
    refused(memsinks(&["export", "--run", r, "--out", s(&exp), "--force"]), &["symbolic link"]);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    // A FIFO under the lock's name is refused too (and does not hang the command).
    let fifo_dir = dir.path().join("fifo");
    std::fs::create_dir_all(&fifo_dir).unwrap();
    let fifo = std::ffi::CString::new(fifo_dir.join(memsinks_core::files::LOCK_FILE).as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid C string; mkfifo only creates the node.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    refused(train(&fifo_dir, &[]).output().unwrap(), &["not a regular file"]);
}

#[test]
fn probe_2_3_12_13_a_study_keeps_its_runs_and_its_stages_stay_honest() {
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("study");
    let cfg = smoke();
    let reproduce = |sets: &[&str]| {
        let mut args = vec!["reproduce", s(&cfg), "--out", s(&st)];
        for set in sets {
            args.extend(["--set", set]);
        }
        memsinks(&args)
    };
    // Probe 15 (last item): a post-hoc typo fails before any training.
    refused(reproduce(&["study.posthoc=[\"gradient-ascnt\"]"]), &["gradient-ascnt"]);
    assert!(!st.join("runs").exists(), "models were trained before the bad post-hoc entry was found");
    // Probe 3: a seed listed twice is refused.
    refused(reproduce(&["study.seeds=[0,0]"]), &["twice"]);

    ok(reproduce(&[]));
    let results = results_without_timings(&st);
    let runs = snapshot(&st.join("runs"));
    // Probe 2: a changed setting names the key and deletes nothing.
    refused(reproduce(&["train.lr=0.002"]), &["train.lr", "nothing was deleted", "--force"]);
    assert_eq!(snapshot(&st.join("runs")), runs, "a changed --set touched the finished runs");
    // ... nor does a run whose config cannot be read.
    let config = st.join("runs/standard-s0/config.ron");
    let good = std::fs::read(&config).unwrap();
    std::fs::write(&config, "(not a config").unwrap();
    refused(reproduce(&[]), &["cannot be read"]);
    assert!(st.join("runs/standard-s0/final").exists(), "an unreadable run was removed");
    std::fs::write(&config, &good).unwrap();

    // Probe 13 (cached rerun): every number is read back to the last bit.
    ok(reproduce(&[]));
    assert_eq!(results_without_timings(&st), results, "a fully cached rerun changed results.json");

    // Probe 12: an edited stage file is recomputed, not reported.
    let stage = st.join("runs/memsinks-s0/eval-stage.json");
    let edited = std::fs::read_to_string(&stage).unwrap().replacen("\"nll\": ", "\"nll\": 1.234", 1);
    std::fs::write(&stage, edited).unwrap();
    let out = reproduce(&[]);
    assert!(text(&out.stderr).contains("does not match its checksum"), "{}", text(&out.stderr));
    ok(out);
    assert_eq!(results_without_timings(&st), results, "the edited stage reached the results");
    // A deleted model or an edited train.json is named, not used.
    let model = st.join("runs/dedup-s0/final/model.mpk");
    let weights = std::fs::read(&model).unwrap();
    std::fs::remove_file(&model).unwrap();
    refused(reproduce(&[]), &["model.mpk", "--force"]);
    std::fs::write(&model, &weights).unwrap();
    let summary = st.join("runs/dedup-s0/train.json");
    let original = std::fs::read_to_string(&summary).unwrap();
    let real = original.lines().find(|l| l.contains("\"real_tokens\"")).unwrap().to_string();
    std::fs::write(&summary, original.replace(&real, "  \"real_tokens\": 1,")).unwrap();
    refused(memsinks(&["eval", "--force", "--run", s(&st.join("runs/dedup-s0"))]), &["train.json", "checksum"]);
    std::fs::write(&summary, &original).unwrap();
}

/// A study's `results.json` but its stage timings (which say which stages were cached).
fn results_without_timings(study: &Path) -> serde_json::Value {
    let mut results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(study.join("results.json")).unwrap()).unwrap();
    results.as_object_mut().unwrap().remove("timings");
    results
}

#[test]
fn probe_2_force_retrains_a_changed_study() {
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("study");
    let cfg = smoke();
    let base = ["reproduce", s(&cfg), "--out", s(&st), "--set", r#"study.methods=["Standard"]"#];
    ok(memsinks(&base));
    let before = sha(&st.join("runs/standard-s0/final/model.mpk"));
    let mut changed = base.to_vec();
    changed.extend(["--set", "train.lr=0.002"]);
    refused(memsinks(&changed), &["train.lr"]);
    changed.push("--force");
    ok(memsinks(&changed));
    assert_ne!(sha(&st.join("runs/standard-s0/final/model.mpk")), before, "--force did not retrain");
}

#[test]
fn probe_4_5_the_fingerprint_covers_the_token_data_and_ranges_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let run = finished_run(dir.path(), "run", 10);
    let r = s(&run);
    let eval = ["eval", "--force", "--max-docs", "4", "--k", "8", "--m", "8", "--run", r];
    ok(memsinks(&eval));
    // Probe 4: token values changed in place (same size) are named.
    let shard = run.join("data/cache/tokens-00000.bin");
    let clean = std::fs::read(&shard).unwrap();
    let mut bytes = clean.clone();
    bytes[100] ^= 0x01;
    std::fs::write(&shard, &bytes).unwrap();
    refused(memsinks(&eval), &["not the one", "tokens-00000.bin"]);
    std::fs::write(&shard, &clean).unwrap();
    ok(memsinks(&eval));
    // ... and so is the schedule.
    let schedule = run.join("data/schedule.bin");
    let clean_schedule = std::fs::read(&schedule).unwrap();
    let mut bytes = clean_schedule.clone();
    bytes[..4].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    std::fs::write(&schedule, &bytes).unwrap();
    refused(memsinks(&eval), &["schedule.bin"]);
    std::fs::write(&schedule, &clean_schedule).unwrap();

    // Probe 5: a corpus (no run to check it against) with an index entry out of range.
    let corpus = dir.path().join("corpus");
    ok(memsinks(&["data", "prepare", "--config", s(&smoke()), "--out", s(&corpus)]));
    let index = corpus.join("cache/index.bin");
    let mut bytes = std::fs::read(&index).unwrap();
    bytes[17] = 0xff;
    std::fs::write(&index, &bytes).unwrap();
    refused(memsinks(&["data", "stats", s(&corpus)]), &["index.bin", "corrupt cache"]);
}

#[test]
fn probe_6_7_a_full_disk_and_an_undecodable_record_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    ok(memsinks(&["data", "prepare", "--config", s(&smoke()), "--out", s(&data)]));
    // Probe 6: files may grow to 64 KiB only (the model record is larger): the write error stops
    // training with one clear error, and no record lies truncated under its final name.
    let run = dir.path().join("full");
    let mut cmd = train(&run, &["train.steps=20"]);
    cmd.arg("--data").arg(&data);
    let out = with_limit(cmd, libc::RLIMIT_FSIZE, 64 << 10);
    refused(out, &["checkpoint could not be written"]);
    // Records small enough to fit (the scheduler's) may be complete; the model record may not.
    for entry in std::fs::read_dir(run.join("checkpoint")).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "mpk") {
            let complete = memsinks_core::files::check_checksum(&path, None).unwrap()
                == memsinks_core::files::ChecksumCheck::Matches;
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(!(complete && name.starts_with("model-")), "{name} is complete although its write failed");
            let len = entry.metadata().unwrap().len();
            assert!(!complete || len < 64 << 10, "{name} is marked complete at the size limit ({len} bytes)");
        }
    }

    // Probe 7: a record that matches its rewritten checksum but does not decode falls back.
    let killed = dir.path().join("killed");
    let sets = ["train.steps=60", "train.eval_every=10", "train.keep_checkpoints=3"];
    let mut cmd = train(&killed, &sets);
    cmd.arg("--data").arg(&data);
    // Killed once round 5 has trained: round 4's records are finished (training waits for them).
    assert!(kill_when_exists(cmd, &killed.join("checkpoint/cursor-5.json.sha256")), "finished before the kill");
    let checkpoint = killed.join("checkpoint");
    for entry in std::fs::read_dir(&checkpoint).unwrap().flatten() {
        if entry.file_name().to_string_lossy().contains("-5.") {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
    let record = checkpoint.join("scheduler-4.mpk");
    assert!(memsinks_core::files::checksum_path(&record).exists(), "round 4 is not complete");
    std::fs::write(&record, b"").unwrap();
    memsinks_core::files::write_checksum(&record, &memsinks_core::files::sha256_hex(b"")).unwrap();
    let out = bin().arg("train").arg("--resume").arg(&killed).output().unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(killed.join("train.json")).unwrap()).unwrap();
    assert_eq!(summary["resumed_from"].as_u64(), Some(3), "did not fall back past the undecodable round: {summary}");
}

#[test]
fn probe_8_9_10_14_impossible_shapes_paths_tokenizers_and_sizes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = smoke();
    let out = dir.path().join("x");
    // Probe 8: no general neuron.
    refused(train(&out, &["model.p_gen=0.01"]).output().unwrap(), &["no general neuron"]);
    assert!(!out.exists());
    // Probe 9: paths that are not UTF-8 are refused before anything is written.
    let bad = std::ffi::OsStr::from_bytes(b"bad\xffname");
    let bad_path = dir.path().join(bad);
    let os = std::ffi::OsStr::new;
    let (c, b) = (cfg.as_os_str(), bad_path.as_os_str());
    for args in [
        vec![os("train"), os("--config"), c, os("--out"), b],
        vec![os("data"), os("prepare"), os("--config"), c, os("--out"), b],
        vec![os("reproduce"), c, os("--out"), b],
    ] {
        refused(bin().args(&args).output().unwrap(), &["not valid UTF-8"]);
        assert!(!bad_path.exists(), "{args:?} wrote {}", bad_path.display());
    }
    // Probe 10: a tokenizer with nothing but the end-of-text token: an error, within a minute.
    let prepared = dir.path().join("prepared");
    ok(memsinks(&["data", "prepare", "--config", s(&cfg), "--out", s(&prepared)]));
    let mut tok: serde_json::Value =
        serde_json::from_slice(&std::fs::read(prepared.join("tokenizer.json")).unwrap()).unwrap();
    tok["model"]["vocab"] = serde_json::json!({ "<|endoftext|>": 0 });
    tok["model"]["merges"] = serde_json::json!([]);
    tok["added_tokens"] = serde_json::json!([{
        "id": 0, "content": "<|endoftext|>", "single_word": false, "lstrip": false, "rstrip": false,
        "normalized": false, "special": true
    }]);
    let tok_path = dir.path().join("eos-only.json");
    std::fs::write(&tok_path, serde_json::to_vec(&tok).unwrap()).unwrap();
    let set = format!("data.tokenizer={{\"File\": {{\"path\": \"{}\"}}}}", tok_path.display());
    let mut cmd = bin();
    cmd.args(["data", "prepare", "--config", s(&cfg), "--out", s(&dir.path().join("eos")), "--set", &set]);
    let mut child = cmd.spawn().unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(60), "data prepare hangs on a tokenizer of one token");
        std::thread::sleep(Duration::from_millis(50));
    }
    refused(child.wait_with_output().unwrap(), &[]);

    // Probe 14: memory and benchmark sizes are checked before anything is allocated.
    let mut big = bin();
    big.args(["bench", "train", "--preset", "ts-paper", "--steps", "1"]);
    refused(with_limit(big, libc::RLIMIT_AS, 2_000_000_000), &["needs about", "GiB"]);
    refused(memsinks(&["bench", "matmul", "--size", "100000"]), &["--size"]);
    refused(memsinks(&["bench", "train", "--preset", "tiny", "--batch", "0"]), &["--batch"]);
    refused(memsinks(&["bench", "train", "--preset", "tiny", "--seq", "0"]), &["--seq"]);
}

#[test]
fn probe_11_13_15_silent_results_and_litter() {
    let dir = tempfile::tempdir().unwrap();
    let run = finished_run(dir.path(), "run", 10);
    let r = s(&run);
    // Probe 11: unlearning that diverges is a failed run, and nothing is recorded.
    refused(memsinks(&["unlearn", "--run", r, "--method", "gradient-ascent", "--set", "lr=1e30"]), &["diverged"]);
    assert!(!run.join("unlearn-gradient-ascent-repeated.json").exists());

    // Probe 13: the small silent results.
    let out = dir.path().join("x");
    refused(train(&out, &["data.validation=0"]).output().unwrap(), &["data.validation"]);
    refused(train(&out, &["train.grad_accumulation=1000"]).output().unwrap(), &["grad_accumulation", "passes"]);
    ok(memsinks(&["eval", "--max-docs", "4", "--k", "8", "--m", "8", "--run", r]));
    let eval = ["eval", "--force", "--max-docs", "4", "--k", "8", "--m", "8", "--run", r];
    let mut itself = eval.to_vec();
    itself.extend(["--reference", r]);
    refused(memsinks(&itself), &["--reference", "itself"]);
    let other = finished_run(dir.path(), "other", 10);
    ok(memsinks(&["eval", "--max-docs", "4", "--k", "8", "--m", "8", "--run", s(&other)]));
    let mut with_sinks = eval.to_vec();
    with_sinks.extend(["--reference", s(&other)]);
    refused(memsinks(&with_sinks), &["without sinks"]);
    let mut unknown = eval.to_vec();
    unknown.extend(["--exclude", "12345"]);
    refused(memsinks(&unknown), &["12345", "no document"]);

    // Probe 15: a moved run reads its own corpus (recorded relative to the run).
    let moved = dir.path().join("moved");
    std::fs::rename(&run, &moved).unwrap();
    ok(memsinks(&["eval", "--force", "--max-docs", "4", "--k", "8", "--m", "8", "--run", s(&moved)]));
    // A killed export's temporary file is removed by the next export; a failed export leaves no
    // lock file in the user's directory.
    let export = dir.path().join("export");
    std::fs::create_dir_all(&export).unwrap();
    std::fs::write(export.join(".model.safetensors.tmp-99999"), vec![0u8; 1000]).unwrap();
    ok(memsinks(&["export", "--run", s(&moved), "--out", s(&export), "--force", "--drop-sinks"]));
    assert!(!export.join(".model.safetensors.tmp-99999").exists(), "the killed export's file was left");
    let user = dir.path().join("user");
    std::fs::create_dir_all(&user).unwrap();
    std::fs::write(user.join("mine.txt"), "mine").unwrap();
    std::fs::write(moved.join("final/model.mpk"), b"damaged").unwrap();
    refused(memsinks(&["export", "--run", s(&moved), "--out", s(&user), "--force", "--drop-sinks"]), &["model.mpk"]);
    assert!(!user.join(memsinks_core::files::LOCK_FILE).exists(), "a failed export left its lock file");

    // A long run's checkpoint/ holds the kept rounds' files only, not one per round trained.
    let long = dir.path().join("long");
    let sets = ["train.steps=200", "train.eval_every=5", "train.keep_checkpoints=1"];
    let mut cmd = train(&long, &sets);
    cmd.arg("--data").arg(moved.join("data"));
    assert!(kill_when_exists(cmd, &long.join("checkpoint/cursor-30.json.sha256")), "finished before the kill");
    let files = std::fs::read_dir(long.join("checkpoint")).unwrap().count();
    // keep 1 (+1 being written, +1 pruned a save later): 3 rounds of 3 records, 3 checksums and
    // a cursor with its checksum each, plus the round in progress.
    assert!(files <= 4 * 8, "checkpoint/ holds {files} files after 30 rounds");
}
