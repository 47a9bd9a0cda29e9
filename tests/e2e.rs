//! End-to-end tests of the `memsinks` binary: kill-and-resume bit-identity, CLI errors, masks.
//! (Declared as a test of `memsinks-cli`, which gives it the built binary.)

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod support;

use burn::backend::Flex;
use memsinks_model::io::{load_model, named_tensors};
use support::kill_when_exists;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_memsinks"));
    c.env("RAYON_NUM_THREADS", "2").stdout(Stdio::null()).stderr(Stdio::null());
    c
}

fn smoke() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments/smoke.ron")
}

fn train_cmd(out: &Path) -> Command {
    let mut c = bin();
    c.arg("train").arg("--config").arg(smoke()).arg("--out").arg(out);
    c.args(["--set", "train.steps=150", "--set", "train.eval_every=10"]);
    c
}

fn resume_cmd(run: &Path) -> Command {
    let mut c = bin();
    c.arg("train").arg("--resume").arg(run);
    c
}

fn weights(run: &Path) -> Vec<(String, Vec<f32>)> {
    let (model, _) = load_model::<Flex>(&run.join("final"), &Default::default()).unwrap();
    named_tensors(&model)
        .into_iter()
        .map(|(name, t, _)| (name, t.into_data().convert::<f32>().to_vec().unwrap()))
        .collect()
}

fn eval_losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "eval")
        .map(|v| v["val_loss"].as_f64().unwrap())
        .collect()
}

#[test]
fn killed_and_resumed_runs_end_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let (whole, broken) = (dir.path().join("whole"), dir.path().join("broken"));
    assert!(train_cmd(&whole).status().unwrap().success());

    // Kill twice at different stages (the second time during a resumed run), then finish: first as
    // round 6 of 15 ends (its data cursor written, its checkpoint not yet), then as round 10's
    // checkpoint is being written (its model record exists, its optimizer record may not).
    let checkpoint = broken.join("checkpoint");
    let first = kill_when_exists(train_cmd(&broken), &checkpoint.join("cursor-6.json"));
    let second = kill_when_exists(resume_cmd(&broken), &checkpoint.join("model-10.mpk"));
    assert!(resume_cmd(&broken).status().unwrap().success(), "the final resume failed");
    assert!(first && second, "a run finished before it was killed");

    let (a, b) = (weights(&whole), weights(&broken));
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()), "{name} differs after kill and resume");
    }
    // The metric log continues without gaps or duplicates.
    assert_eq!(eval_losses(&whole), eval_losses(&broken));
}

#[test]
fn cli_errors_are_one_clear_line_and_nonzero() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_memsinks")).args(args).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let cfg = smoke().display().to_string();
    let (ok, err) = run(&["train", "--config", &cfg, "--set", "train.lrr=1", "--out", "/nonexistent/x"]);
    assert!(!ok && err.contains("lrr") && err.contains("allowed"), "{err}");
    let (ok, err) = run(&["train", "--config", "/no/such.ron"]);
    assert!(!ok && err.contains("/no/such.ron"), "{err}");
    let (ok, err) = run(&["train", "--resume", "/no/such/run"]);
    assert!(!ok && err.contains("/no/such/run"), "{err}");
    let (ok, err) = run(&["bench", "train", "--preset", "tiny", "--backend", "tpu"]);
    assert!(!ok && err.contains("allowed"), "{err}");
    let (ok, err) = run(&["data", "stats", "/no/such/dir"]);
    assert!(!ok && err.contains("manifest.json"), "{err}");
}

#[test]
fn mask_command_prints_reference_masks() {
    let out = Command::new(env!("CARGO_BIN_EXE_memsinks"))
        .args(["mask", "--seq-ids", "1,7,42", "--sink-neurons", "32", "--p-mem", "0.3"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "10000000010001010110100001100011\n10000000010101110010110001001011\n10101110000010010000100100001010\n"
    );
}

#[test]
fn train_eval_and_export_a_folded_model() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut train = bin();
    train.arg("train").arg("--config").arg(smoke()).arg("--out").arg(&run).args(["--set", "train.steps=20"]);
    assert!(train.status().unwrap().success());
    let out = Command::new(env!("CARGO_BIN_EXE_memsinks"))
        .args(["eval", "--max-docs", "8", "--k", "8", "--m", "8", "--run"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let eval: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("eval.json")).unwrap()).unwrap();
    let modes: Vec<&str> = eval["modes"].as_array().unwrap().iter().map(|m| m["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, ["activate-seq", "all", "drop-sinks", "drop-sinks-plain"]);
    assert!(eval["gap_closure_vs_sinks_on"].as_f64().unwrap().is_finite());
    assert_eq!(eval["exclusion_specificity"].as_array().unwrap().len(), 8);
    // Excluding one repeated document's sinks raises its own loss more than the others'.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("data").join("manifest.json")).expect("the run's corpus"))
            .unwrap();
    let id = manifest["documents"][0]["id"].as_i64().unwrap();
    let doc_loss = |exclude: Option<i64>| {
        let mut cmd = bin();
        cmd.args(["eval", "--force", "--mode", "activate-seq", "--max-docs", "8", "--k", "8", "--m", "8", "--run"])
            .arg(&run);
        if let Some(id) = exclude {
            cmd.arg("--exclude").arg(id.to_string());
        }
        assert!(cmd.status().unwrap().success());
        let eval: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("eval.json")).unwrap()).unwrap();
        let docs = eval["modes"][0]["repeated_docs"].as_array().unwrap().clone();
        docs.iter().map(|d| d["nll"].as_f64().unwrap()).collect::<Vec<f64>>()
    };
    let (before, after) = (doc_loss(None), doc_loss(Some(id)));
    let others = |v: &[f64]| v[1..].iter().sum::<f64>() / (v.len() - 1) as f64;
    assert!(after[0] - before[0] > (others(&after) - others(&before)).abs(), "{before:?} -> {after:?}");
    // A model with sinks exports only folded; the folded export has no sink neurons.
    let plain = bin().arg("export").arg("--run").arg(&run).arg("--out").arg(dir.path().join("x")).status().unwrap();
    assert!(!plain.success());
    let folded = dir.path().join("folded");
    let ok = bin().arg("export").arg("--run").arg(&run).arg("--drop-sinks").arg("--out").arg(&folded).status().unwrap();
    assert!(ok.success());
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folded.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["intermediate_size"], 44); // floor(64 * 0.7)
    assert!(std::fs::metadata(folded.join("model.safetensors")).unwrap().len() > 0);
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).output().unwrap();
    assert!(out.status.success(), "{:?} failed: {}", cmd, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `reproduce` on `smoke` writes the whole report; `report` redraws an identical report.md from
/// results.json alone; a rerun reuses every stage; a changed post-hoc setting redoes only that stage.
#[test]
fn reproduce_writes_the_report_and_report_regenerates_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("study");
    let posthoc = r#"study.posthoc=["gradient-ascent steps=10 eval_every=5", "prune-activations"]"#;
    let seeds = "study.seeds=[0,1]";
    let stdout =
        run_ok(bin().arg("reproduce").arg(smoke()).arg("--out").arg(&out).args(["--set", posthoc, "--set", seeds]));
    assert!(stdout.contains("| memsinks, sinks dropped (rescaled) |"), "{stdout}");
    // Two seeds: every number of the main table is a mean ± std.
    let standard = stdout.lines().find(|l| l.starts_with("| standard |")).unwrap();
    assert_eq!(standard.matches(" ± ").count(), 10, "{standard}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    let header = report.lines().find(|l| l.starts_with("| model |")).expect("main table");
    for column in [
        "L_rep (natural)",
        "L_rep (canary)",
        "L_val",
        "gap",
        "gap closure vs standard",
        "extraction",
        "verbatim",
        "MIA AUC",
        "tokens",
        "wall (s)",
    ] {
        assert!(header.contains(column), "main table lacks {column}: {header}");
    }
    for label in [
        "standard",
        "dedup",
        "gradient masking, sinks dropped",
        "memsinks, sinks on",
        "memsinks, sinks dropped (plain)",
    ] {
        assert!(report.contains(&format!("| {label} |")), "no row {label}");
    }
    assert!(report.contains("| gradient-ascent | canary |") && report.contains("| prune-activations | repeated |"));
    for plot in ["dynamics", "tradeoff", "forgetting-standard", "forgetting-memsinks"] {
        for ext in ["svg", "png"] {
            let len = std::fs::metadata(out.join("plots").join(format!("{plot}.{ext}"))).unwrap().len();
            assert!(len > 1000, "{plot}.{ext} is {len} bytes");
        }
    }
    let results: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["posthoc"].as_array().unwrap().len(), 4, "2 methods x natural and canary");
    assert!(results["forgetting"][0]["docs"][0]["seen_at"].as_array().unwrap().len() >= 8, "8 repetitions of each");

    // `report` from results.json alone (the runs removed) gives the same report.md.
    std::fs::remove_dir_all(out.join("runs")).unwrap();
    std::fs::remove_file(out.join("report.md")).unwrap();
    run_ok(bin().arg("report").arg(&out));
    assert_eq!(std::fs::read_to_string(out.join("report.md")).unwrap(), report);
}

#[test]
fn reproduce_reuses_cached_stages_and_redoes_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("study");
    let sets = |steps: u32| {
        vec![
            "--set".to_string(),
            "study.methods=[\"Standard\"]".to_string(),
            "--set".to_string(),
            format!("study.posthoc=[\"gradient-ascent steps={steps} eval_every=5\"]"),
        ]
    };
    run_ok(bin().arg("reproduce").arg(smoke()).arg("--out").arg(&out).args(sets(5)));
    let cached = |out: &Path| -> Vec<(String, bool)> {
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
        r["timings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["stage"].as_str().unwrap().to_string(), t["cached"].as_bool().unwrap()))
            .collect()
    };
    let first = cached(&out);
    assert!(first.iter().all(|(s, c)| !c || s == "prepare corpus"), "{first:?}");
    run_ok(bin().arg("reproduce").arg(smoke()).arg("--out").arg(&out).args(sets(10)));
    for (stage, was_cached) in cached(&out) {
        let expect = stage.starts_with("train") || stage.starts_with("eval");
        if stage != "prepare corpus" {
            assert_eq!(was_cached, expect, "{stage}");
        }
    }
}

/// `generate` continues a prompt in each mode; `unlearn --list` names the registry.
#[test]
fn generate_and_list_methods() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    run_ok(bin().arg("train").arg("--config").arg(smoke()).arg("--out").arg(&run).args(["--set", "train.steps=10"]));
    for mode in ["drop-sinks", "activate-seq"] {
        let text = run_ok(
            bin().args(["generate", "--mode", mode, "--max-tokens", "12", "--greedy", "--doc", "0", "--run"]).arg(&run),
        );
        assert!(text.contains("[the document continues]"), "{text}");
    }
    let text = run_ok(
        bin()
            .args(["generate", "--prompt", "Once upon a time", "--max-tokens", "8", "--top-k", "5", "--run"])
            .arg(&run),
    );
    assert!(text.starts_with("Once upon a time"), "{text}");
    let list = run_ok(bin().args(["unlearn", "--list"]));
    for name in [
        "drop-sinks",
        "gradient-ascent",
        "npo",
        "prune-zero-out",
        "prune-integrated-gradients",
        "prune-slimming",
        "prune-hard-concrete",
        "prune-random",
    ] {
        assert!(list.contains(name), "{list}");
    }
}
