//! # memsinks-core
//!
//! The foundation under the domain crates, with no burn dependency: file safety (atomic writes,
//! locks, checksums, temporary names) in [`files`], RON configuration files with `--set`
//! overrides in [`overrides`], enums spelled by name in result files in [`named`], the shared hash
//! functions in [`hash`], and catching a library's panic. Every crate of the workspace writes files and reads configurations through it;
//! their errors wrap [`FileError`] and [`ConfigError`].
//!
//! Guide (reliability): `docs/reliability.md` in the repository.

pub mod files;
pub mod hash;
pub mod named;
pub mod overrides;

pub use files::FileError;
pub use overrides::ConfigError;

/// Runs `f`, turning a panic inside it into `None` without printing the panic message: for
/// library calls that report bad input (or a missing device) by panicking. The process-wide panic
/// hook is silenced while `f` runs, so call it only where no other thread's panic must be seen.
pub fn catch_library_panic<T>(f: impl FnOnce() -> T) -> Option<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    result.ok()
}
