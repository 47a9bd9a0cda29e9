//! The reliability suite: the probes of a hostile new user (issue 12) through the `memsinks`
//! binary. Each asserts that bad input gets one clear error (exit 1 or 2, never a panic or an
//! abort), that nothing of the user's is overwritten or deleted, and that a run never silently
//! continues on another corpus or from a damaged checkpoint. The kill-and-resume bit-identity
//! tests live in `e2e.rs`; they share `support::kill_when_exists`.
//! (Declared as a test of `memsinks-cli`, which gives it the built binary.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod hostile;
mod support;

use support::kill_when_exists;

fn smoke() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments/smoke.ron")
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_memsinks"));
    c.env("RAYON_NUM_THREADS", "2").stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

fn memsinks(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The command succeeded; returns its stdout.
fn ok(out: Output) -> String {
    assert!(out.status.success(), "failed: {}", text(&out.stderr));
    text(&out.stdout)
}

/// The command failed the way a user should see it: a normal exit with status 1 (our error) or 2
/// (clap's usage error), no panic message, no abort, and a message containing each of `needles`.
fn refused(out: Output, needles: &[&str]) -> String {
    let err = text(&out.stderr);
    let code = out.status.code();
    assert!(matches!(code, Some(1) | Some(2)), "exit {code:?} (a panic is 101, an abort a signal): {err}");
    assert!(!err.contains("panicked"), "a panic reached the user: {err}");
    assert!(!err.contains('\x1b'), "colour codes in a redirected log: {err}");
    for needle in needles {
        assert!(err.contains(needle), "the error does not mention `{needle}`: {err}");
    }
    err
}

/// `memsinks train` of the smoke config into `out` with extra `--set`s.
fn train(out: &Path, sets: &[&str]) -> Command {
    let mut c = bin();
    c.arg("train").arg("--config").arg(smoke()).arg("--out").arg(out);
    for s in sets {
        c.args(["--set", s]);
    }
    c
}

fn sha(path: &Path) -> String {
    memsinks_core::files::file_sha256(path).unwrap()
}

/// Every file under `dir` with its digest, to show that a refused command changed nothing.
fn snapshot(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if !p.ends_with(memsinks_core::files::LOCK_FILE) {
                out.push((p.clone(), sha(&p)));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_run_is_tied_to_its_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared-data");
    let a = dir.path().join("a");
    ok(train(&a, &[]).arg("--data").arg(&shared).output().unwrap());
    let before = snapshot(&shared);

    // Probe 1: a second run on the same --data with another data config is refused, naming the
    // key; the corpus (and so run A) is untouched.
    let c = dir.path().join("c");
    let out = train(&c, &["data.seed=7"]).arg("--data").arg(&shared).output().unwrap();
    refused(out, &["another data configuration", "data.seed"]);
    assert!(!c.exists(), "the refused run left {}", c.display());
    let out = train(&c, &["data.tokenizer.vocab_size=400"]).arg("--data").arg(&shared).output().unwrap();
    refused(out, &["data.tokenizer"]);
    assert_eq!(snapshot(&shared), before, "a refused prepare changed the shared corpus");
    ok(memsinks(&["eval", "--max-docs", "4", "--k", "8", "--m", "8", "--run", a.to_str().unwrap()]));

    // Probe 2: a corpus swapped behind the run's back (another tokenizer in its place) is named
    // by every command that opens the run, instead of numbers with the wrong tokenizer.
    let other = dir.path().join("other-data");
    ok(memsinks(&[
        "data",
        "prepare",
        "--config",
        smoke().to_str().unwrap(),
        "--out",
        other.to_str().unwrap(),
        "--set",
        "data.tokenizer.vocab_size=400",
    ]));
    std::fs::copy(other.join("tokenizer.json"), shared.join("tokenizer.json")).unwrap();
    let run = a.to_str().unwrap();
    let args = ["eval", "--force", "--max-docs", "4", "--k", "8", "--m", "8", "--run", run];
    refused(memsinks(&args), &["not the one", "tokenizer.json"]);
    refused(memsinks(&["generate", "--run", run, "--prompt", "Once"]), &["tokenizer.json"]);
    refused(memsinks(&["unlearn", "--run", run, "--method", "drop-sinks"]), &["tokenizer.json"]);
}

#[test]
fn a_resumed_run_keeps_its_corpus_when_the_source_changes() {
    // Probe 3: a TinyStories source given by a relative path; the run is killed, the file at that
    // path changes, the run is resumed: it continues on its recorded corpus, never a rebuild.
    let dir = tempfile::tempdir().unwrap();
    let stories: String = (0..300)
        .map(|i| {
            format!(
                "Story {i}: the cat number {i} sat on mat {} and looked at bird {}.\n<|endoftext|>\n",
                i * 7,
                i % 13
            )
        })
        .collect();
    std::fs::write(dir.path().join("stories.txt"), &stories).unwrap();
    let run = dir.path().join("run");
    let sets = ["data.source={\"TinyStories\": {\"path\": \"stories.txt\"}}", "train.steps=60", "train.eval_every=10"];
    let mut cmd = train(&run, &sets);
    cmd.current_dir(dir.path());
    assert!(kill_when_exists(cmd, &run.join("checkpoint/cursor-3.json")), "the run finished before the kill");
    let manifest = sha(&run.join("data/manifest.json"));
    std::fs::write(dir.path().join("stories.txt"), stories.replace("cat", "dog")).unwrap();
    let out = bin().arg("train").arg("--resume").arg(&run).current_dir(dir.path()).output().unwrap();
    ok(out);
    assert_eq!(sha(&run.join("data/manifest.json")), manifest, "the corpus was rebuilt from the changed file");
    // A new run from the changed file into the same corpus is refused: the source changed.
    let out =
        train(&dir.path().join("new"), &sets).arg("--data").arg(run.join("data")).current_dir(dir.path()).output();
    refused(out.unwrap(), &["has changed since"]);
}

#[test]
fn resume_falls_back_past_damaged_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let sets = ["train.steps=60", "train.eval_every=10", "train.keep_checkpoints=3"];
    assert!(kill_when_exists(train(&run, &sets), &run.join("checkpoint/cursor-5.json")), "finished before the kill");
    // Probe 4: the newest complete round's model record truncated to half its size.
    let checkpoint = run.join("checkpoint");
    // The newest round whose three records were all finished (the kill may land mid-round).
    let complete = |r: &usize| {
        ["model", "optim", "scheduler"].iter().all(|k| checkpoint.join(format!("{k}-{r}.mpk.sha256")).exists())
    };
    let newest = (1..=5).rev().find(complete).unwrap();
    let model = checkpoint.join(format!("model-{newest}.mpk"));
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    let out = bin().arg("train").arg("--resume").arg(&run).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("model-{newest}.mpk")) && err.contains("checksum"), "no warning naming it: {err}");
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("train.json")).unwrap()).unwrap();
    assert_eq!(summary["resumed_from"].as_u64(), Some(newest as u64 - 1));
    // Stale cursors and temporary files of pruned and killed rounds are gone; the kept rounds
    // remain complete.
    for e in std::fs::read_dir(&checkpoint).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.contains(".tmp"), "a temporary file was left: {name}");
        if let Some(r) = name.strip_prefix("cursor-").and_then(|n| n.strip_suffix(".json")) {
            assert!(checkpoint.join(format!("model-{r}.mpk")).exists(), "a stale {name} was left");
        }
    }

    // Probe 5: with keep_checkpoints 1, a kill while a round is written still leaves a complete
    // round to resume from (burn's own pruning could leave none).
    let one = dir.path().join("one");
    let sets = ["train.steps=60", "train.eval_every=10", "train.keep_checkpoints=1"];
    assert!(kill_when_exists(train(&one, &sets), &one.join("checkpoint/model-4.mpk")), "finished before the kill");
    ok(bin().arg("train").arg("--resume").arg(&one).output().unwrap());
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(one.join("train.json")).unwrap()).unwrap();
    assert!(summary["resumed_from"].as_u64().is_some_and(|r| r >= 3), "restarted from scratch: {summary}");
}

#[test]
fn writers_never_meet_and_nothing_of_the_users_is_overwritten() {
    let dir = tempfile::tempdir().unwrap();

    // Probe 6: two `train` processes on the same --out: one trains, the other is refused (by the
    // lock, naming the holder's PID, or because the directory now holds a run); the log holds
    // each line once.
    let run = dir.path().join("run");
    let first = train(&run, &[]).spawn().unwrap();
    let second = train(&run, &[]).spawn().unwrap();
    let (first, second) = (first.wait_with_output().unwrap(), second.wait_with_output().unwrap());
    assert!(first.status.success() != second.status.success(), "both (or neither) trained");
    let loser = if first.status.success() { second } else { first };
    let err = refused(loser, &[]);
    assert!(err.contains("in use by PID") || err.contains("holds"), "{err}");
    let log = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    let unique: std::collections::HashSet<&&str> = lines.iter().collect();
    assert_eq!(lines.len(), unique.len(), "metrics.jsonl holds lines twice");

    // Probe 7: a finished run is not trained over (its final/ and eval.json stay).
    let r = run.to_str().unwrap();
    ok(memsinks(&["eval", "--max-docs", "4", "--k", "8", "--m", "8", "--run", r]));
    let before = snapshot(&run);
    refused(train(&run, &[]).output().unwrap(), &["finished"]);
    refused(bin().arg("train").arg("--resume").arg(&run).output().unwrap(), &["finished"]);
    // Probe 8: eval and export do not overwrite without --force.
    refused(memsinks(&["eval", "--max-docs", "4", "--k", "8", "--m", "8", "--run", r]), &["eval.json", "--force"]);
    assert_eq!(snapshot(&run), before);
    ok(memsinks(&["eval", "--force", "--max-docs", "4", "--k", "8", "--m", "8", "--run", r]));
    let export = dir.path().join("export");
    std::fs::create_dir_all(&export).unwrap();
    std::fs::write(export.join("notes.txt"), "mine").unwrap();
    let e = export.to_str().unwrap();
    refused(memsinks(&["export", "--run", r, "--drop-sinks", "--out", e]), &["not empty", "--force"]);
    ok(memsinks(&["export", "--run", r, "--drop-sinks", "--out", e, "--force"]));
    assert_eq!(std::fs::read_to_string(export.join("notes.txt")).unwrap(), "mine");

    // Probe 9: `train --out` onto a user's directory: refused before anything is written.
    let user = dir.path().join("user");
    std::fs::create_dir_all(user.join("data/cache")).unwrap();
    std::fs::write(user.join("config.ron"), "my own notes").unwrap();
    std::fs::write(user.join("data/cache/keep.bin"), [1u8, 2, 3]).unwrap();
    let before = snapshot(&user);
    refused(train(&user, &[]).output().unwrap(), &["not empty"]);
    assert_eq!(snapshot(&user), before);
    assert!(!user.join(memsinks_core::files::LOCK_FILE).exists(), "a lock file was left in the user's directory");
    // ... and a reproduction likewise.
    refused(memsinks(&["reproduce", smoke().to_str().unwrap(), "--out", user.to_str().unwrap()]), &["not empty"]);
    assert_eq!(snapshot(&user), before);
}

#[test]
fn bad_values_are_clear_errors_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = smoke().display().to_string();
    let out = dir.path().join("x");
    let o = out.to_str().unwrap();
    let train_with = |set: &str| memsinks(&["train", "--config", &cfg, "--out", o, "--set", set]);
    // Probe 10: values that used to be accepted silently, each named with its allowed range.
    refused(train_with("train.clip_norm=-1"), &["train.clip_norm", "positive"]);
    refused(train_with("train.beta_1=2.0"), &["train.beta_1", "[0, 1)"]);
    refused(train_with("train.steps=0"), &["train.steps"]);
    refused(train_with("model.p_gen=0"), &["p_gen"]);
    refused(train_with("study.extract_prompt=60"), &["study", "memsinks reproduce"]);
    let study = dir.path().join("study");
    let reproduce_with = |set: &str| memsinks(&["reproduce", &cfg, "--out", study.to_str().unwrap(), "--set", set]);
    refused(reproduce_with("study.extract_prompt=60"), &["extract_prompt", "context"]);
    assert!(!study.exists(), "a refused study wrote {}", study.display());
    assert!(!out.exists(), "a refused config wrote {}", out.display());
    // `--set` cannot change a run being resumed; `data prepare` takes data keys only.
    refused(memsinks(&["train", "--resume", o, "--set", "train.lr=1"]), &["--set"]);
    let prep = dir.path().join("prep");
    let p = prep.to_str().unwrap();
    refused(memsinks(&["data", "prepare", "--config", &cfg, "--out", p, "--set", "train.lr=1"]), &["data prepare"]);
    // NaN in a config file names the file, the line and the key.
    let nan = dir.path().join("nan.ron");
    std::fs::write(&nan, std::fs::read_to_string(smoke()).unwrap().replace("lr: 3e-3", "lr: NaN")).unwrap();
    refused(memsinks(&["train", "--config", nan.to_str().unwrap(), "--out", o]), &["nan.ron", "line", "`lr`"]);
    // A micro-batch that cannot fit the stated device memory is refused before training.
    let small = dir.path().join("small-device");
    let refusal = train(&small, &["train.device_memory_gib=0.00001"]).output().unwrap();
    refused(refusal, &["train.device_memory_gib", "not even one row fits"]);
    refused(train_with("train.device_memory_gib=-1"), &["train.device_memory_gib", "positive"]);
    // Sizes that used to abort on allocation.
    refused(memsinks(&["mask", "--seq-ids", "1", "--sink-neurons", "100000000000"]), &["--sink-neurons"]);
    refused(memsinks(&["mask", "--seq-ids", "1-100000000000", "--sink-neurons", "8"]), &["more than"]);

    // Probe 11: a run to evaluate and unlearn with bad settings.
    let run = dir.path().join("run");
    ok(train(&run, &["train.steps=10"]).output().unwrap());
    let r = run.to_str().unwrap();
    refused(memsinks(&["eval", "--k", "60", "--m", "60", "--run", r]), &["k + m", "64"]);
    refused(memsinks(&["unlearn", "--run", r, "--method", "gradient-ascent", "--set", "lr=-1"]), &["lr = -1"]);
    refused(memsinks(&["unlearn", "--run", r, "--method", "prune-random", "--set", "fractions=[2.0]"]), &["fractions"]);
    assert!(!run.join("eval.json").exists() && !run.join("unlearn-gradient-ascent-repeated.json").exists());

    // Probe 12: a tokenizer whose end-of-text ID lies past its vocabulary: an error naming the
    // token, and a rerun meets the same error (no half-made run blocks it).
    let tok: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("data/tokenizer.json")).unwrap()).unwrap();
    let mut bad = tok.clone();
    for t in bad["added_tokens"].as_array_mut().unwrap() {
        if t["content"] == "<|endoftext|>" {
            t["id"] = serde_json::json!(100_000);
        }
    }
    bad["model"]["vocab"]["<|endoftext|>"] = serde_json::json!(100_000);
    let tok_path = dir.path().join("bad-tokenizer.json");
    std::fs::write(&tok_path, serde_json::to_vec(&bad).unwrap()).unwrap();
    let set = format!("data.tokenizer={{\"File\": {{\"path\": \"{}\"}}}}", tok_path.display());
    let bad_run = dir.path().join("bad-run");
    for _ in 0..2 {
        refused(train(&bad_run, &[&set]).output().unwrap(), &["100000", "IDs must run"]);
        assert!(!bad_run.exists(), "a refused run left {}", bad_run.display());
    }

    // Probe 13: an evaluation set that is empty prints n/a, not 0.000.
    let norep = dir.path().join("norep");
    ok(train(&norep, &["train.steps=5", "data.repeated.docs=0"]).output().unwrap());
    let table = ok(memsinks(&["eval", "--max-docs", "4", "--k", "8", "--m", "8", "--run", norep.to_str().unwrap()]));
    for row in table.lines().skip(1).take(4) {
        let cells: Vec<&str> = row.split_whitespace().collect();
        // L_rep, gap, extraction of repeated documents, MIA: no repeated documents, no values.
        assert_eq!([cells[2], cells[4], cells[5], cells[8]], ["n/a"; 4], "{table}");
        assert!(cells[1].parse::<f64>().is_ok(), "L_val is there: {table}");
    }
    assert!(!table.contains("gap closure"), "a closure of no gap: {table}");
}

/// Every file the toolkit writes carries a `schema_version`: files written before versions were
/// recorded are read as they are, a file from a newer version is refused with a message that
/// says so instead of being misread.
#[test]
fn files_from_a_newer_version_are_refused_and_older_ones_read() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments/reports/ts-quick/results.json");
    let mut results: serde_json::Value = serde_json::from_slice(&std::fs::read(shipped).unwrap()).unwrap();
    // A file from before versions were recorded: the same results without the field.
    assert_eq!(results["schema_version"], 1, "the shipped results record their version");
    results.as_object_mut().unwrap().remove("schema_version");
    let old = dir.path().join("old");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("results.json"), serde_json::to_vec(&results).unwrap()).unwrap();
    ok(memsinks(&["report", old.to_str().unwrap()]));
    results["schema_version"] = serde_json::json!(99);
    let newer = dir.path().join("newer");
    std::fs::create_dir_all(&newer).unwrap();
    std::fs::write(newer.join("results.json"), serde_json::to_vec(&results).unwrap()).unwrap();
    refused(memsinks(&["report", newer.to_str().unwrap()]), &["results.json", "newer memsinks", "99"]);
    assert!(!newer.join("report.md").exists(), "a refused file was reported on");

    // A run's train.json and corpus manifest record their versions.
    let run = dir.path().join("run");
    ok(train(&run, &["train.steps=2"]).output().unwrap());
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("train.json")).unwrap()).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("data/manifest.json")).unwrap()).unwrap();
    assert_eq!(summary["schema_version"], 1, "{summary}");
    assert_eq!(manifest["schema_version"], 2, "{manifest}");
}
