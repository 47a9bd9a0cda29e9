//! Embeds every method file of `methods/` into the registry: adding a method is adding a file.

use std::fmt::Write;

fn main() {
    let dir = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("methods");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("memsinks-unlearn/methods exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "ron"))
        .collect();
    files.sort();
    let mut out = String::from(
        "/// Built-in method files: `(name, RON text)`, sorted by name.\npub const BUILTIN: &[(&str, &str)] = &[\n",
    );
    for path in files {
        println!("cargo:rerun-if-changed={}", path.display());
        let name = path.file_stem().expect("file name").to_string_lossy().to_string();
        writeln!(out, "    ({name:?}, include_str!({:?})),", path.display().to_string()).expect("string");
    }
    out.push_str("];\n");
    let target = std::path::Path::new(&std::env::var("OUT_DIR").expect("cargo sets it")).join("builtin_methods.rs");
    std::fs::write(target, out).expect("OUT_DIR is writable");
}
