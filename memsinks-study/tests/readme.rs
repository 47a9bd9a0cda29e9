//! Every number in the table of the default study (`experiments/README.md`, linked from the
//! README) comes from the shipped `experiments/reports/ts-quick/results.json`: the table must be
//! exactly what `memsinks report` prints for that file.

use std::path::Path;

use memsinks_study::report::{load_results, main_table};

#[test]
fn the_experiments_main_table_is_the_shipped_results() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("experiments/README.md")).unwrap();
    let results = load_results(&root.join("experiments/reports/ts-quick")).expect("the shipped ts-quick results");
    let table = main_table(&results);
    assert!(
        readme.contains(&table),
        "experiments/README.md's ts-quick table differs from experiments/reports/ts-quick/results.json; paste the output of \
         `memsinks report experiments/reports/ts-quick`:\n{table}"
    );
}

/// The README stays a front page (at most 200 lines) and every page it and the docs link to
/// exists, so a moved or renamed page is noticed.
#[test]
fn the_readme_is_short_and_every_relative_link_resolves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(readme.lines().count() <= 200, "README.md has {} lines", readme.lines().count());
    let mut pages = vec![root.join("README.md"), root.join("experiments/README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        pages.push(entry.unwrap().path());
    }
    let mut links = 0;
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for target in text.split("](").skip(1).filter_map(|rest| rest.split(')').next()) {
            if target.contains("://") || target.starts_with('#') {
                continue;
            }
            let file = target.split('#').next().unwrap();
            let path = page.parent().unwrap().join(file);
            assert!(path.exists(), "{} links to {target}, which does not exist", page.display());
            links += 1;
        }
    }
    assert!(links >= 9, "only {links} relative links found: the README must link every docs page");
}
