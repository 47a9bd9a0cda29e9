//! Enums that result files spell by name (`"memsinks"`, `"drop-sinks"`), so that the files stay
//! readable by people and by other tools while the code reading and writing them handles the
//! enum itself: a field declared `#[serde(with = "memsinks_core::named::by_name")]` is the
//! enum in Rust and its [`Named::name`] in JSON.

/// An enum with one spelling per value, as the CLI and the result files write it.
pub trait Named: Sized {
    /// What the values are, for error messages (`"training method"`).
    const WHAT: &'static str;

    /// The spelling of this value.
    fn name(&self) -> &'static str;

    /// The value spelled `name`, if any.
    fn from_name(name: &str) -> Option<Self>;
}

/// `serde(with)` functions writing a [`Named`] value as its name and reading it back.
pub mod by_name {
    use super::Named;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    /// Writes `value` as its name.
    pub fn serialize<T: Named, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(value.name())
    }

    /// Reads a name back, failing with the unknown name and what was expected.
    pub fn deserialize<'de, T: Named, D: Deserializer<'de>>(deserializer: D) -> Result<T, D::Error> {
        let name = String::deserialize(deserializer)?;
        T::from_name(&name).ok_or_else(|| D::Error::custom(format!("unknown {} `{name}`", T::WHAT)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    enum Mode {
        On,
        Off,
    }

    impl Named for Mode {
        const WHAT: &'static str = "mode";
        fn name(&self) -> &'static str {
            match self {
                Mode::On => "on",
                Mode::Off => "off",
            }
        }
        fn from_name(name: &str) -> Option<Self> {
            [Mode::On, Mode::Off].into_iter().find(|m| m.name() == name)
        }
    }

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Row {
        #[serde(with = "by_name")]
        mode: Mode,
    }

    #[test]
    fn values_round_trip_by_name_and_unknown_names_are_refused() {
        for mode in [Mode::On, Mode::Off] {
            let json = serde_json::to_string(&Row { mode: mode.clone() }).unwrap();
            assert_eq!(json, format!("{{\"mode\":\"{}\"}}", mode.name()));
            assert_eq!(serde_json::from_str::<Row>(&json).unwrap(), Row { mode });
        }
        let err = serde_json::from_str::<Row>("{\"mode\":\"sideways\"}").unwrap_err().to_string();
        assert!(err.contains("unknown mode `sideways`"), "{err}");
    }
}
