//! An experiment config (RON) followed by `--set` overrides, one per line after a line holding
//! only `--`: parsed, overridden and validated as `memsinks train` does. Errors are fine; a panic
//! is not, and neither is a config that validates but then fails to build its model settings.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use memsinks_train::ExperimentConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (ron, sets) = text.split_once("\n--\n").unwrap_or((text, ""));
    let sets: Vec<String> = sets.lines().map(str::to_string).collect();
    if let Ok(cfg) = ExperimentConfig::parse(ron, Path::new("fuzz.ron"), &sets) {
        // A validated config builds its model settings and serialises back to the same config.
        cfg.model_config(300).expect("validate() accepted a config whose model settings fail");
        let again = ExperimentConfig::parse(&cfg.to_ron(), Path::new("again.ron"), &[]).expect("round trip");
        assert_eq!(again.run_id(), cfg.run_id());
    }
});
