//! End-to-end tests of the `memsinks` binary: kill-and-resume bit-identity, CLI errors, masks.
//! (Declared as a test of `memsinks-cli`, which gives it the built binary.)

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod support;

use burn::backend::Flex;
use memsinks_model::io::{load_model, named_tensors};
use memsinks_study::report::load_results;
use memsinks_study::StudyDir;
use memsinks_train::metric_log::read_evals;
use memsinks_train::RunDir;
use memsinks_unlearn::load_eval;
use memsinks_unlearn::ForgetSet;
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
    let (model, _) = load_model::<Flex>(&RunDir::new(run).final_model(), &Default::default()).unwrap();
    named_tensors(&model)
        .into_iter()
        .map(|(name, t, _)| (name, t.into_data().convert::<f32>().to_vec().unwrap()))
        .collect()
}

fn eval_losses(run: &Path) -> Vec<f64> {
    read_evals(&RunDir::new(run).metrics()).unwrap().iter().map(|e| e.val_loss.unwrap()).collect()
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
    let eval = load_eval(&run).unwrap();
    let modes: Vec<&str> = eval.modes.iter().map(|m| m.mode.name()).collect();
    assert_eq!(modes, ["activate-seq", "all", "drop-sinks", "drop-sinks-plain", "drop-sinks-matched"]);
    assert!(eval.gap_closure_vs_sinks_on.unwrap().is_finite());
    assert_eq!(eval.exclusion_specificity.len(), 8);
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
        load_eval(&run).unwrap().modes[0].repeated_docs.iter().map(|d| d.nll).collect::<Vec<f64>>()
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
    // Self-contained: the tokenizer, its configuration, the generation settings and a model card.
    for file in ["tokenizer.json", "tokenizer_config.json", "generation_config.json", "README.md"] {
        assert!(folded.join(file).is_file(), "the export lacks {file}");
    }
    let card = std::fs::read_to_string(folded.join("README.md")).unwrap();
    assert!(card.contains("sinks dropped") && card.contains("the 20 sink neurons were removed"), "{card}");
    transformers_continues_like_generate(&run, &folded);
}

/// With a Python that has transformers (`MEMSINKS_PYTHON`, default `python3`), the exported folder
/// loads from its path alone, with no missing or unexpected weights, and continues a prompt
/// greedily exactly as `memsinks generate --mode drop-sinks --greedy` does. Skips with one line
/// otherwise.
fn transformers_continues_like_generate(run: &Path, folded: &Path) {
    let python = std::env::var("MEMSINKS_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments/export/check_transformers.py");
    let prompt = "Once upon a time";
    let out =
        Command::new(&python).arg(&script).arg(folded).args(["--prompt", prompt, "--max-new-tokens", "12"]).output();
    let out = match out {
        Ok(o) if o.status.code() == Some(3) || o.status.code().is_none() => {
            eprintln!("skipping the transformers check: {python} has no transformers (set MEMSINKS_PYTHON)");
            return;
        }
        Ok(o) => o,
        Err(e) => {
            eprintln!("skipping the transformers check: cannot run {python}: {e}");
            return;
        }
    };
    assert!(out.status.success(), "transformers failed on the export: {}", String::from_utf8_lossy(&out.stderr));
    let hf: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(hf["missing_keys"], serde_json::json!([]), "{hf}");
    assert_eq!(hf["unexpected_keys"], serde_json::json!([]), "{hf}");
    let ours = run_ok(
        bin()
            .args(["generate", "--mode", "drop-sinks", "--greedy", "--max-tokens", "12", "--prompt", prompt, "--run"])
            .arg(run),
    );
    let continuation = ours.trim_end_matches('\n').split_once('\u{2192}').expect("prompt→continuation").1;
    assert_eq!(hf["continuation"].as_str().unwrap(), continuation, "transformers vs memsinks generate");
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
    let length = r#"study.training_length={"BestDevStep":{"max_l_val_ratio":2.0}}"#;
    let stdout = run_ok(
        bin()
            .arg("reproduce")
            .arg(smoke())
            .arg("--out")
            .arg(&out)
            .args(["--set", posthoc, "--set", seeds, "--set", length]),
    );
    // The terminal gets the findings with a verdict and where the report is, not the wide table.
    assert!(stdout.contains("findings with a verdict") && stdout.contains("report.md"), "{stdout}");
    assert!(!stdout.contains("| model |"), "{stdout}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("| memsinks, sinks dropped (rescaled) |"), "{report}");
    assert!(report.contains("| memsinks, sinks dropped (activity-matched) |"), "{report}");
    // The dev half chose the drop-sinks scale, and the findings say which among what.
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["deployed"]["candidates"].as_array().map(Vec::len), Some(3), "{}", results["deployed"]);
    let choice = report.lines().find(|l| l.starts_with("- The sinks are dropped in mode")).expect("the choice");
    assert!(choice.contains("`drop-sinks-plain`") && choice.contains("`drop-sinks-matched`"), "{choice}");
    // Two seeds: every number of the main table is a mean ± its 95 % interval (the two closures:
    // none for the standard model itself).
    let standard = report.lines().find(|l| l.starts_with("| standard |")).unwrap();
    assert_eq!(standard.matches(" ± ").count(), 13, "{standard}");
    let header = report.lines().find(|l| l.starts_with("| model |")).expect("main table");
    for column in [
        "L_rep (natural)",
        "L_rep (canary)",
        "L_val",
        "L_val ÷ standard",
        "gap",
        "gap closure vs standard",
        "closure, dev / test half",
        "canary gap closure",
        "extraction",
        "verbatim",
        "MIA AUC",
        "real tokens",
        "passes",
        "views per repeated doc",
        "wall (s)",
    ] {
        assert!(header.contains(column), "main table lacks {column}: {header}");
    }
    for label in [
        "standard",
        "dedup",
        "dedup + fresh data",
        "gradient masking, sinks on",
        "gradient masking, sinks dropped",
        "memsinks, sinks on",
        "memsinks, sinks dropped (plain)",
    ] {
        assert!(report.contains(&format!("| {label} |")), "no row {label}");
    }
    assert!(report.contains("| gradient-ascent | canary |") && report.contains("| prune-activations | repeated |"));
    // Findings call a claim only from its interval over the two seeds.
    let verdict = report.lines().find(|l| l.starts_with("- Natural text:")).expect("the natural-text finding");
    assert!(verdict.contains("95 % interval"), "{verdict}");
    assert!(["**holds**", "**does not hold**", "**inconclusive"].iter().any(|v| verdict.contains(v)), "{verdict}");
    assert!(report.lines().any(|l| l.starts_with("- Canaries: dropping the sinks closed")), "no canary finding");
    assert!(report.lines().any(|l| l.starts_with("- Training length chosen on the dev half")), "no length finding");
    for plot in ["dynamics", "tradeoff", "forgetting-standard", "forgetting-memsinks", "closure"] {
        for ext in ["svg", "png"] {
            let len = std::fs::metadata(out.join("plots").join(format!("{plot}.{ext}"))).unwrap().len();
            assert!(len > 1000, "{plot}.{ext} is {len} bytes");
        }
    }
    let results = load_results(&out).unwrap();
    assert_eq!(results.posthoc.len(), 8, "2 methods x natural and canary x 2 seeds");
    assert!(results.forgetting[0].docs[0].seen_at.len() >= 8, "8 repetitions of each");
    // In every seed, post-hoc relearning starts where the method forgot as much as dropping the
    // sinks did in that seed, and is measured against a control fine-tuned on held-out documents.
    for (seed, forget) in [0, 1].into_iter().flat_map(|s| [(s, ForgetSet::Repeated), (s, ForgetSet::Canary)]) {
        let of = |ms: &[memsinks_unlearn::MethodResult], name: &str| {
            ms.iter().find(|m| m.method == name && m.forget == forget && m.seed == Some(seed)).cloned().unwrap()
        };
        let dropped = of(&results.by_design, "drop-sinks").curve.last().unwrap().delta_forget;
        let ga = of(&results.posthoc, "gradient-ascent");
        let start = ga.relearn_start.as_ref().unwrap();
        assert_eq!(start.target_delta_forget, Some(dropped));
        assert!(ga.relearn.iter().all(|r| r.others_control.is_some()), "{:?}", ga.relearn);
    }
    // The length rule chose one evaluation step per seed, on the dev half, within the L_val bound.
    assert_eq!(results.selected_steps.iter().map(|s| s.seed).collect::<Vec<_>>(), vec![0, 1]);
    assert!(results.selected_steps.iter().all(|s| s.l_val_ratio <= 2.0 && s.step > 0), "{:?}", results.selected_steps);
    // Both deduplicated models train the standard model's optimizer steps (the paper's rule); the
    // paper's dedup passes over its shorter schedule more often than the one with fresh data.
    let steps = |run: &str| {
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("runs").join(run).join("train.json")).unwrap()).unwrap();
        summary["steps"].as_u64().unwrap()
    };
    for seed in [0, 1] {
        for method in ["dedup", "dedup-fresh"] {
            assert_eq!(
                steps(&format!("{method}-s{seed}")),
                steps(&format!("standard-s{seed}")),
                "{method} seed {seed}"
            );
        }
    }
    let row = |label: &str| results.rows.iter().find(|r| r.label == label).unwrap().values.clone();
    for (paper, fresh) in row("dedup").iter().zip(row("dedup + fresh data")) {
        assert!(paper.passes.unwrap() > fresh.passes.unwrap(), "{:?} vs {:?} passes", paper.passes, fresh.passes);
    }

    // `report` from results.json alone (the runs removed) gives the same report.md.
    std::fs::remove_dir_all(out.join("runs")).unwrap();
    let report_path = StudyDir::new(&out).report();
    std::fs::remove_file(&report_path).unwrap();
    run_ok(bin().arg("report").arg(&out));
    assert_eq!(std::fs::read_to_string(&report_path).unwrap(), report);
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
        load_results(out).unwrap().timings.into_iter().map(|t| (t.stage, t.cached)).collect()
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
        "prune-weight-norm",
        "prune-random",
    ] {
        assert!(list.contains(name), "{list}");
    }
}

/// Overrides that turn `smoke` into a corpus of 8 authors, 2 of them held out whole.
const AUTHORS: [&str; 4] = [
    r#"data.source={"Synthetic":{"stories":900,"seed":1,"authors":8}}"#,
    r#"data.source_key={"Field":"author"}"#,
    "data.held_out_sources=2",
    "data.validation=30",
];

fn with_sets<'a>(cmd: &'a mut Command, sets: &[&str]) -> &'a mut Command {
    for s in sets {
        cmd.args(["--set", s]);
    }
    cmd
}

/// Sinks per source (NULLs): with per-source IDs a source's documents share one subset, and
/// switching it off raises that source's loss far more than the retained sources'; the registry's
/// `drop-source-sinks` and `eval --exclude-source` agree; a sweep compares per-document and
/// per-source IDs on the same data in one report.
#[test]
fn removing_a_source_by_its_sinks_and_a_sweep_of_id_schemes() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("per-source");
    let per_source: Vec<&str> =
        AUTHORS.iter().copied().chain(["data.sequence_ids=PerSource", "train.steps=120"]).collect();
    run_ok(with_sets(bin().arg("train").arg("--config").arg(smoke()).arg("--out").arg(&run), &per_source));
    let manifest: memsinks_data::Manifest =
        serde_json::from_slice(&std::fs::read(run.join("data").join("manifest.json")).unwrap()).unwrap();
    let key = manifest.sources.iter().find(|s| !s.held_out).unwrap().key.clone();
    let held_out = manifest.sources.iter().find(|s| s.held_out).unwrap().key.clone();

    let stdout = run_ok(bin().arg("eval").arg("--run").arg(&run).args(["--exclude-source", &key, "--max-docs", "24"]));
    assert!(stdout.contains(&format!("removing {key} (1 sequence IDs switched off)")), "{stdout}");
    let eval = load_eval(&run).unwrap();
    let removal = eval.source_removal.unwrap();
    let forgotten = removal.forgotten.after - removal.forgotten.before;
    let retained = removal.retained.after - removal.retained.before;
    eprintln!("removing {key}: its loss {forgotten:+.3}, retained sources {retained:+.3}");
    assert!(forgotten > 0.05 && forgotten > 5.0 * retained.abs().max(1e-3), "{forgotten} vs {retained}");
    assert!(removal.held_out.is_some());

    let stdout = run_ok(bin().arg("unlearn").arg("--run").arg(&run).args([
        "--method",
        "drop-source-sinks",
        "--forget",
        &format!("source:{key}"),
    ]));
    assert!(stdout.contains("dL_retain"), "{stdout}");
    let result_file = run.join(format!("unlearn-drop-source-sinks-source_{key}.json"));
    let result: memsinks_unlearn::MethodResult = serde_json::from_slice(&std::fs::read(&result_file).unwrap()).unwrap();
    let after = result.curve.last().unwrap();
    assert!(after.delta_forget > 5.0 * after.delta_retain.unwrap().abs().max(1e-3), "{after:?}");
    // A held-out source was never trained on; an unknown one does not exist: one clear line each.
    for (forget, words) in [(format!("source:{held_out}"), "held out"), ("source:nobody".into(), "no source `nobody`")]
    {
        let out = bin()
            .arg("unlearn")
            .arg("--run")
            .arg(&run)
            .args(["--method", "drop-source-sinks", "--forget", &forget, "--out"])
            .arg(dir.path().join("x.json"))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(words) && !stderr.contains("panicked"), "{stderr}");
    }

    // The sweep: both ID schemes, one seed each, the source removal in each variant's study.
    let out = dir.path().join("sweep");
    let variants = r#"study.variants=[{"name":"per-document","set":[]},{"name":"per-source","set":["data.sequence_ids=PerSource"]}]"#;
    let study = [
        variants,
        "study.methods=[\"Standard\",\"Memsinks\"]",
        "study.posthoc=[]",
        "study.forget_sources=1",
        r#"study.source_posthoc=["gradient-ascent steps=6 eval_every=2"]"#,
        "train.steps=60",
    ];
    let sets: Vec<&str> = AUTHORS.iter().copied().chain(study).collect();
    let stdout = run_ok(with_sets(bin().arg("reproduce").arg(smoke()).arg("--out").arg(&out), &sets));
    assert!(stdout.contains("| per-document |") && stdout.contains("| per-source |"), "{stdout}");
    let sweep = memsinks_study::sweep::load_sweep(&out).unwrap();
    assert_eq!(sweep.variants.len(), 2);
    for v in &sweep.variants {
        assert_eq!(v.results.sources.len(), 2, "{}: drop-source-sinks and gradient ascent", v.name);
        assert!(out.join("variants").join(&v.name).join("report.md").exists());
        let report = std::fs::read_to_string(out.join("variants").join(&v.name).join("report.md")).unwrap();
        assert!(report.contains("## Removing a source"), "{}", v.name);
    }
    // The same data in both variants: the same documents of the same splits.
    let docs = |v: &str| {
        let m: memsinks_data::Manifest =
            serde_json::from_slice(&std::fs::read(out.join("variants").join(v).join("data/manifest.json")).unwrap())
                .unwrap();
        m.documents.iter().map(|d| (d.origin.clone(), d.split)).collect::<Vec<_>>()
    };
    assert_eq!(docs("per-document"), docs("per-source"));
    // The report redraws from sweep.json alone.
    let before = std::fs::read_to_string(out.join("report.md")).unwrap();
    std::fs::remove_dir_all(out.join("variants")).unwrap();
    run_ok(bin().arg("report").arg(&out));
    assert_eq!(std::fs::read_to_string(out.join("report.md")).unwrap(), before);
    assert!(out.join("variants/per-source/report.md").exists());
}
