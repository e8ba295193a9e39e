//! Configuration: each stage owns its config type; this module renders them for
//! `--show-config` (and will compose them into the Recipe that `distill run` reads).

use serde::Serialize;

/// Errors of configuration handling.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot render the [{table}] configuration as TOML: {msg}")]
    Render { table: String, msg: String },
    #[error("recipe {path}: {msg}")]
    Read { path: String, msg: String },
    #[error("recipe {path}: not TOML at line {line}: {msg}")]
    Syntax { path: String, line: usize, msg: String },
    #[error("recipe {path} has no [{table}] table; add one (`--show-config` prints the settings as such a table)")]
    NoTable { path: String, table: String },
    #[error("recipe {path}:{line}: [{table}]: {msg}; fix the key (`--show-config` prints every known key)")]
    Table { path: String, line: usize, table: String, msg: String },
}

/// Reads the `[table]` of a recipe file as a stage's config type (missing keys take the
/// type's defaults; unknown keys are refused), and returns the table's raw keys too.
pub fn load_table<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    table: &str,
) -> Result<(T, toml::Table), ConfigError> {
    let shown = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigError::Read { path: shown.clone(), msg: e.to_string() })?;
    let line_at = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Syntax {
        path: shown.clone(),
        line: e.span().map_or(1, |s| line_at(s.start)),
        msg: e.message().to_string(),
    })?;
    let Some(toml::Value::Table(raw)) = doc.get(table) else {
        return Err(ConfigError::NoTable { path: shown, table: table.to_string() });
    };
    let cfg = T::deserialize(toml::Value::Table(raw.clone())).map_err(|e| {
        let msg = e.message().to_string();
        // The line of the key the message names (serde quotes it in backticks), else the table's.
        let key = msg.split('`').nth(1).unwrap_or("");
        let line = key_line(&text, key).or_else(|| key_line(&text, &format!("[{table}]"))).unwrap_or(1);
        ConfigError::Table { path: shown.clone(), line, table: table.to_string(), msg }
    })?;
    Ok((cfg, raw.clone()))
}

/// The first line that starts with `key` (a key before `=`, or a table header).
fn key_line(text: &str, key: &str) -> Option<usize> {
    if key.is_empty() {
        return None;
    }
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key).is_some_and(|rest| key.starts_with('[') || rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
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
