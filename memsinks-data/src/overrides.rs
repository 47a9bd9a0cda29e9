//! Configuration files (RON) with `--set key=value` overrides. Overrides act on the typed
//! configuration's serialised form, so an unknown key or a bad value fails with the key's name and
//! what is allowed there.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::DataError;

/// Reads a RON file into `T`, reporting the file and position of any error.
pub fn read_ron<T: DeserializeOwned>(path: &Path) -> Result<T, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    ron::from_str(&text)
        .map_err(|e| DataError::Format { path: path.to_path_buf(), message: format!("invalid config: {e}") })
}

/// Applies `key=value` overrides (dotted keys, e.g. `data.unique=500`, `train.lr=3e-4`) to a
/// configuration. A value is read as JSON when it parses as JSON (`500`, `true`, `"x"`,
/// `{"Train": {"vocab_size": 512}}`), otherwise as a string. Keys may skip the variant name of an
/// enum (`data.source.path=...` reaches `source: TinyStories(path: ...)`).
pub fn apply_overrides<T: Serialize + DeserializeOwned>(config: &T, sets: &[String]) -> Result<T, DataError> {
    if sets.is_empty() {
        return serde_json::from_value(serde_json::to_value(config).expect("serialises"))
            .map_err(|e| DataError::Config(e.to_string()));
    }
    let mut value = serde_json::to_value(config).expect("config serialises");
    for set in sets {
        let (key, raw) =
            set.split_once('=').ok_or_else(|| DataError::Config(format!("--set `{set}` must look like key=value")))?;
        let new: Value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
        let slot = locate(&mut value, key)?;
        *slot = new;
        serde_json::from_value::<T>(value.clone())
            .map_err(|e| DataError::Config(format!("--set {key}: bad value `{raw}`: {e}")))?;
    }
    serde_json::from_value(value).map_err(|e| DataError::Config(e.to_string()))
}

fn locate<'a>(mut node: &'a mut Value, key: &str) -> Result<&'a mut Value, DataError> {
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
            return Err(DataError::Config(format!("--set {key}: `{walked}` is a value, not a section")));
        };
        if !map.contains_key(part) {
            let mut allowed: Vec<&String> = map.keys().collect();
            allowed.sort();
            let allowed: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
            let at = if walked.is_empty() { "the top level".to_string() } else { format!("`{walked}`") };
            return Err(DataError::Config(format!(
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
    use crate::corpus::SourceConfig;
    use serde::Deserialize;

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
        assert_eq!(whole.source, SourceConfig::Synthetic { stories: 5, seed: 2 });
    }
}
