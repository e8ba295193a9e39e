//! Configuration: each stage owns its config type; this module renders them for
//! `--show-config` (and will compose them into the Recipe that `distill run` reads).

use serde::Serialize;

/// Errors of configuration handling.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot render the [{table}] configuration as TOML: {msg}")]
    Render { table: String, msg: String },
}

/// The resolved configuration of one stage as a TOML table, as `--show-config` prints it.
pub fn to_toml<T: Serialize>(table: &str, cfg: &T) -> Result<String, ConfigError> {
    #[derive(Serialize)]
    struct Wrap<'a, T: Serialize> {
        #[serde(flatten)]
        inner: std::collections::BTreeMap<&'a str, &'a T>,
    }
    let mut inner = std::collections::BTreeMap::new();
    inner.insert(table, cfg);
    toml::to_string_pretty(&Wrap { inner })
        .map_err(|e| ConfigError::Render { table: table.to_string(), msg: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_table() {
        #[derive(Serialize)]
        struct C {
            path: std::path::PathBuf,
            n: u32,
            opt: Option<String>,
        }
        let s = to_toml("inspect", &C { path: "a.jsonl".into(), n: 3, opt: None }).expect("renders");
        assert!(s.contains("[inspect]") && s.contains("path = \"a.jsonl\"") && s.contains("n = 3"), "{s}");
    }
}
