//! Configuration files (RON) with `--set key=value` overrides. Overrides act on the typed
//! configuration's serialised form, so an unknown key or a bad value fails with the key's name and
//! what is allowed there.

use std::cell::Cell;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// A configuration file or `--set` override that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// The file is not a valid configuration (with the position and what is wrong).
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
    /// A `--set` override that names no key or carries a bad value.
    #[error("{0}")]
    Override(String),
    /// A setting whose value is out of range: the key and what it must be, in words.
    #[error("{0}")]
    Invalid(String),
}

/// Reads a RON file into `T`, reporting the file and position of any error.
pub fn read_ron<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Io { path: path.to_path_buf(), cause })?;
    parse_ron(&text, path)
}

/// Parses RON `text` into `T`; errors name `origin` (the file it came from) and the position.
pub fn parse_ron<T: DeserializeOwned>(text: &str, origin: &Path) -> Result<T, ConfigError> {
    let path = origin;
    if let Some((line, key, word)) = non_finite_number(text) {
        return Err(ConfigError::Format {
            path: path.to_path_buf(),
            message: format!("line {line}: `{key}` is `{word}`: every number in a config must be finite"),
        });
    }
    ron::from_str(text)
        .map_err(|e| ConfigError::Format { path: path.to_path_buf(), message: format!("invalid config: {e}") })
}

/// The first non-finite float literal of a RON text (`NaN`, `inf`, `-inf`), outside strings and
/// comments: its line, the key before it and the word. serde's JSON form (which the overrides act
/// on) has no such numbers, so they are reported here, where the file and line are known.
fn non_finite_number(text: &str) -> Option<(usize, String, String)> {
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut in_string = false;
        let mut cleaned = String::with_capacity(code.len());
        for c in code.chars() {
            if c == '"' {
                in_string = !in_string;
            }
            cleaned.push(if in_string || c == '"' { ' ' } else { c });
        }
        let words = cleaned.split(|c: char| !(c.is_alphanumeric() || c == '_'));
        if let Some(word) = words.into_iter().find(|w| matches!(*w, "NaN" | "inf" | "infinity")) {
            let key = cleaned.split(':').next().map(str::trim).unwrap_or("").trim_start_matches('(').to_string();
            return Some((n + 1, key, word.to_string()));
        }
    }
    None
}

thread_local! {
    /// Set while [`apply_overrides`] serialises a configuration: every field is written then.
    static WRITE_ALL: Cell<bool> = const { Cell::new(false) };
}

/// serde's `skip_serializing_if` for configuration fields added after configurations were first
/// hashed: a field at its default is left out of the written form, so the hashes of existing
/// corpora and runs (and so their directories and caches) stay as they were; while overrides are
/// applied every field is written, so `--set` reaches it like any other.
pub fn omitted<T: Default + PartialEq>(value: &T) -> bool {
    !WRITE_ALL.with(Cell::get) && *value == T::default()
}

/// Applies `key=value` overrides (dotted keys, e.g. `data.unique=500`, `train.lr=3e-4`) to a
/// configuration. A value is read as JSON when it parses as JSON (`500`, `true`, `"x"`,
/// `{"Train": {"vocab_size": 512}}`), otherwise as a string. Keys may skip the variant name of an
/// enum (`data.source.path=...` reaches `source: TinyStories(path: ...)`).
pub fn apply_overrides<T: Serialize + DeserializeOwned + Clone>(config: &T, sets: &[String]) -> Result<T, ConfigError> {
    if sets.is_empty() {
        return Ok(config.clone());
    }
    WRITE_ALL.with(|w| w.set(true));
    let value = serde_json::to_value(config);
    WRITE_ALL.with(|w| w.set(false));
    let mut value = value.expect("config serialises");
    for set in sets {
        let (key, raw) = set
            .split_once('=')
            .ok_or_else(|| ConfigError::Override(format!("--set `{set}` must look like key=value")))?;
        let new: Value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
        let slot = locate(&mut value, key)?;
        *slot = new;
        serde_json::from_value::<T>(value.clone())
            .map_err(|e| ConfigError::Override(format!("--set {key}: bad value `{raw}`: {e}")))?;
    }
    serde_json::from_value(value).map_err(|e| ConfigError::Override(e.to_string()))
}

/// The dotted keys (under `prefix`, e.g. `data`) whose values differ between two configurations,
/// down to the leaves: what a user changed, named the way `--set` names it. Every field is
/// compared, also those [`omitted`] at their default in the written form.
pub fn changed_keys<T: Serialize>(old: &T, new: &T, prefix: &str) -> Vec<String> {
    WRITE_ALL.with(|w| w.set(true));
    let (a, b) = (serde_json::to_value(old), serde_json::to_value(new));
    WRITE_ALL.with(|w| w.set(false));
    let mut out = Vec::new();
    if let (Ok(a), Ok(b)) = (a, b) {
        diff_values(&a, &b, prefix, &mut out);
    }
    out
}

fn diff_values(a: &Value, b: &Value, at: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for key in keys {
                let path = if at.is_empty() { key.clone() } else { format!("{at}.{key}") };
                match (x.get(key), y.get(key)) {
                    (Some(u), Some(v)) => diff_values(u, v, &path, out),
                    _ => out.push(path),
                }
            }
        }
        _ if a != b => out.push(at.to_string()),
        _ => {}
    }
}

fn locate<'a>(mut node: &'a mut Value, key: &str) -> Result<&'a mut Value, ConfigError> {
    let mut walked = String::new();
    for part in key.split('.') {
        // Step through a one-key object (an enum variant) when the key is not its own.
        let variant = match &*node {
            Value::Object(map) if !map.contains_key(part) && map.len() == 1 => {
                map.keys().next().filter(|v| v.chars().next().is_some_and(char::is_uppercase)).cloned()
            }
            _ => None,
        };
        if let Some(variant) = variant {
            node = node.get_mut(&variant).expect("present");
        }
        let Value::Object(map) = node else {
            return Err(ConfigError::Override(format!("--set {key}: `{walked}` is a value, not a section")));
        };
        if !map.contains_key(part) {
            let mut allowed: Vec<&String> = map.keys().collect();
            allowed.sort();
            let allowed: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
            let at = if walked.is_empty() { "the top level".to_string() } else { format!("`{walked}`") };
            return Err(ConfigError::Override(format!(
                "unknown key `{part}` in --set {key}; allowed at {at}: {}",
                allowed.join(", ")
            )));
        }
        if !walked.is_empty() {
            walked.push('.');
        }
        walked.push_str(part);
        node = map.get_mut(part).expect("checked");
    }
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    /// An enum of the shape of the data sources: variants with named fields, one defaulted.
    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    enum SourceConfig {
        TinyStories {
            path: String,
        },
        Synthetic {
            stories: usize,
            seed: u64,
            #[serde(default)]
            authors: usize,
        },
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        n: usize,
        source: SourceConfig,
        inner: Inner,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        lr: f64,
    }

    #[test]
    fn sets_values_through_sections_and_enum_variants() {
        let c = Cfg { n: 1, source: SourceConfig::TinyStories { path: "a.txt".into() }, inner: Inner { lr: 0.1 } };
        let out = apply_overrides(&c, &["n=5".into(), "inner.lr=3e-4".into(), "source.path=b.txt".into()]).unwrap();
        assert_eq!(out.n, 5);
        assert_eq!(out.inner.lr, 3e-4);
        assert_eq!(out.source, SourceConfig::TinyStories { path: "b.txt".into() });
        let err = apply_overrides(&c, &["inner.lrr=1".into()]).unwrap_err().to_string();
        assert!(err.contains("lrr") && err.contains("lr"), "{err}");
        let err = apply_overrides(&c, &["n=-3".into()]).unwrap_err().to_string();
        assert!(err.contains("--set n"), "{err}");
        assert!(apply_overrides(&c, &["n".into()]).is_err());
        let whole = apply_overrides(&c, &[r#"source={"Synthetic": {"stories": 5, "seed": 2}}"#.into()]).unwrap();
        assert_eq!(whole.source, SourceConfig::Synthetic { stories: 5, seed: 2, authors: 0 });
    }

    /// Fields added later are left out of the written form at their default (so existing
    /// configurations keep their hashes) and still reachable by `--set`.
    #[test]
    fn omitted_defaults_keep_the_written_form_and_take_overrides() {
        #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
        #[serde(deny_unknown_fields)]
        struct Grown {
            n: usize,
            #[serde(default, skip_serializing_if = "omitted")]
            later: Option<Inner>,
            #[serde(default, skip_serializing_if = "omitted")]
            count: usize,
        }
        let old = Grown { n: 1, later: None, count: 0 };
        assert_eq!(ron::to_string(&old).unwrap(), "(n:1)");
        let set = apply_overrides(&old, &["count=3".into(), r#"later={"lr": 0.5}"#.into()]).unwrap();
        assert_eq!(set, Grown { n: 1, later: Some(Inner { lr: 0.5 }), count: 3 });
        assert_eq!(ron::to_string(&set).unwrap(), "(n:1,later:Some((lr:0.5)),count:3)");
        assert_eq!(ron::to_string(&old).unwrap(), "(n:1)", "the written form is back to normal after overrides");
    }

    #[test]
    fn changed_keys_names_each_leaf_that_differs() {
        let a = Cfg { n: 1, source: SourceConfig::TinyStories { path: "a.txt".into() }, inner: Inner { lr: 0.1 } };
        let mut b = a.clone();
        assert!(changed_keys(&a, &b, "x").is_empty());
        b.inner.lr = 0.2;
        b.source = SourceConfig::TinyStories { path: "b.txt".into() };
        assert_eq!(changed_keys(&a, &b, "x"), ["x.inner.lr", "x.source.TinyStories.path"]);
        b.source = SourceConfig::Synthetic { stories: 5, seed: 2, authors: 0 };
        assert_eq!(changed_keys(&a, &b, ""), ["inner.lr", "source.Synthetic", "source.TinyStories"]);
    }

    #[test]
    fn non_finite_numbers_are_named_with_their_line_and_key() {
        let found = non_finite_number("(\n  n: 1,\n  inner: (lr: NaN),\n)");
        assert_eq!(found, Some((3, "inner".into(), "NaN".into())));
        assert_eq!(non_finite_number("(\n  lr: -inf,\n)").map(|f| f.1), Some("lr".into()));
        // Not in strings or comments, and not inside longer words.
        assert_eq!(non_finite_number("(name: \"NaN inf\", // inf\n info: 1, NaNa: 2)"), None);
    }
}
