//! Every number in the README's table of the default study comes from the shipped
//! `experiments/reports/ts-quick/results.json`: the table must be exactly what `memsinks report`
//! prints for that file.

use std::path::Path;

use memsinks_study::report::{load_results, main_table};

#[test]
fn the_readme_main_table_is_the_shipped_results() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let results = load_results(&root.join("experiments/reports/ts-quick")).expect("the shipped ts-quick results");
    let table = main_table(&results);
    assert!(
        readme.contains(&table),
        "README.md's ts-quick table differs from experiments/reports/ts-quick/results.json; paste the output of \
         `memsinks report experiments/reports/ts-quick`:\n{table}"
    );
}
