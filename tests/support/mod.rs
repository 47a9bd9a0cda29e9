//! Helpers shared by the end-to-end test files (`e2e.rs`, `gpu.rs`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `cmd` and SIGKILLs it as soon as `file` exists; returns whether it was still running
/// then. Keyed to a file the run writes (a round's data cursor or checkpoint record) rather than
/// to a time, so the kill lands at the same stage of the run however loaded the machine is (a
/// kill timed from another run's length finished before it in CI) and however long a GPU spends
/// compiling kernels first.
pub fn kill_when_exists(mut cmd: Command, file: &Path) -> bool {
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    while !file.exists() && Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    true
}
