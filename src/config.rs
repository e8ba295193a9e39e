//! Settings: each stage owns its config type (serde, `Default` = the one place a default
//! lives); this module resolves it from layers and renders it for `--show-config`.
//!
//! Resolution, lowest to highest precedence (as uv does it):
//!
//! 1. the config type's `Default`;
//! 2. the stage's table of a recipe (`--recipe FILE`, e.g. `[finetune]`);
//! 3. `--set key=value` (repeatable; `key` is a dotted path inside the table, optionally
//!    prefixed with the table's name: `lr=1e-4`, `finetune.loader.batch=4`);
//! 4. the typed flags actually given on the command line (a flag left out never overrides).
//!
//! The layers are merged as TOML tables, key by key, then deserialised once into the config type
//! (unknown keys and wrong types are one error naming the file, line and key), and finally
//! [`Settings::derive`] fills values that depend on others when no layer set them (LoRA alpha =
//! 2 × rank, a LoRA learning rate). [`Resolved::show`] prints the result as a recipe table,
//! each value that is not a default followed by a comment saying where it came from.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

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
    #[error("--set {given}: expected KEY=VALUE, e.g. --set lr=1e-4 (keys as `--show-config` prints them)")]
    SetSyntax { given: String },
    #[error("[{table}] {key} (from {origin}): {msg}; `--show-config` prints every known key")]
    Value { table: String, key: String, origin: Origin, msg: String },
    #[error("[{table}]: {msg}")]
    Invalid { table: String, msg: String },
}

/// Where a resolved value came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    Default,
    /// Computed from other settings (e.g. LoRA alpha from the rank).
    Derived(&'static str),
    Recipe {
        path: PathBuf,
        line: usize,
    },
    Set,
    /// A typed flag, as spelled on the command line (`--lr`).
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => write!(f, "default"),
            Origin::Derived(why) => write!(f, "derived: {why}"),
            Origin::Recipe { path, line } => write!(f, "recipe {}:{line}", path.display()),
            Origin::Set => write!(f, "--set"),
            Origin::Flag(flag) => write!(f, "{flag}"),
        }
    }
}

/// The origin of every value a layer above the defaults set, by dotted key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Origins(BTreeMap<String, Origin>);

impl Origins {
    /// Where `key` came from (`Default` when no layer set it).
    pub fn get(&self, key: &str) -> Origin {
        let mut k = key;
        loop {
            if let Some(o) = self.0.get(k) {
                return o.clone();
            }
            match k.rsplit_once('.') {
                Some((parent, _)) => k = parent,
                None => return Origin::Default,
            }
        }
    }

    /// Whether a recipe, `--set` or a flag set `key` (or a key under it).
    pub fn is_set(&self, key: &str) -> bool {
        self.0.iter().any(|(k, o)| {
            (k == key || k.strip_prefix(key).is_some_and(|r| r.starts_with('.'))) && !matches!(o, Origin::Derived(_))
        })
    }

    /// Whether a recipe or `--set` (not a flag) set `key` or a key under it.
    pub fn set_by_file_or_set(&self, key: &str) -> bool {
        self.0.iter().any(|(k, o)| {
            (k == key || k.strip_prefix(key).is_some_and(|r| r.starts_with('.')))
                && matches!(o, Origin::Recipe { .. } | Origin::Set)
        })
    }

    /// Records that `key` was computed from other settings.
    pub fn derived(&mut self, key: &str, why: &'static str) {
        self.0.insert(key.to_string(), Origin::Derived(why));
    }

    fn insert(&mut self, key: String, origin: Origin) {
        self.0.insert(key, origin);
    }
}

/// A stage's settings type.
pub trait Settings: Serialize + DeserializeOwned + Default {
    /// The recipe table it is read from (`finetune`, `collect`, …).
    const TABLE: &'static str;

    /// Other names a recipe or `--set` may use for a key, as (alias, dotted key): the names
    /// practitioners bring from transformers/TRL/axolotl (`learning_rate` for `lr`, `lora_r`
    /// for `lora.rank`). `--show-config` always prints the key's own name.
    const ALIASES: &'static [(&'static str, &'static str)] = &[];

    /// Fills values that depend on other settings when no layer set them, and records them in
    /// `origins` as derived.
    fn derive(&mut self, _origins: &mut Origins) {}

    /// Checks what the types cannot (required paths, ranges). The message names the key; the
    /// command line adds the flag's spelling.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// One typed flag given on the command line, as the key it sets.
#[derive(Debug, Clone)]
pub struct FlagValue {
    pub key: &'static str,
    pub value: toml::Value,
    pub flag: &'static str,
}

/// The layers above the defaults.
#[derive(Debug, Clone, Default)]
pub struct Layers {
    pub recipe: Option<PathBuf>,
    pub sets: Vec<String>,
    pub flags: Vec<FlagValue>,
}

/// Collects the flags of a command that were given (`Some`): `flags.push("optim.beta1", "--beta1", self.beta1)`.
#[derive(Debug, Default)]
pub struct Flags(pub Vec<FlagValue>);

impl Flags {
    /// Adds `key = value` when the flag was given.
    pub fn opt<T: Serialize>(&mut self, key: &'static str, flag: &'static str, value: Option<T>) {
        if let Some(v) = value
            && let Ok(v) = toml::Value::try_from(v)
        {
            self.0.push(FlagValue { key, value: v, flag });
        }
    }

    /// Adds `key = value` when a switch was given (`--json`, or `--no-progress` setting false).
    pub fn switch(&mut self, key: &'static str, flag: &'static str, given: bool, value: bool) {
        if given {
            self.0.push(FlagValue { key, value: toml::Value::Boolean(value), flag });
        }
    }

    /// Adds a list when it is not empty.
    pub fn list<T: Serialize>(&mut self, key: &'static str, flag: &'static str, values: Vec<T>) {
        if !values.is_empty() {
            self.opt(key, flag, Some(values));
        }
    }
}

/// Resolved settings and where each value came from.
#[derive(Debug, Clone)]
pub struct Resolved<T> {
    pub value: T,
    pub origins: Origins,
}

/// Resolves a stage's settings: default < recipe table < `--set` < flags given, and checks
/// them ([`Settings::validate`]).
pub fn resolve<T: Settings>(layers: &Layers) -> Result<Resolved<T>, ConfigError> {
    let r = resolve_unchecked::<T>(layers)?;
    r.value.validate().map_err(|msg| ConfigError::Invalid { table: T::TABLE.into(), msg })?;
    Ok(r)
}

/// [`resolve`] without the final check, for callers with checks of their own to run first.
pub fn resolve_unchecked<T: Settings>(layers: &Layers) -> Result<Resolved<T>, ConfigError> {
    let table = T::TABLE;
    let mut merged = match toml::Value::try_from(T::default()) {
        Ok(toml::Value::Table(t)) => t,
        Ok(_) => toml::Table::new(),
        Err(e) => return Err(ConfigError::Render { table: table.into(), msg: e.to_string() }),
    };
    let mut origins = Origins::default();
    let mut recipe_text = None;
    if let Some(path) = &layers.recipe {
        let (mut raw, text) = read_table(path, table)?;
        let spelled = rename_aliases::<T>(&mut raw).map_err(|msg| ConfigError::Table {
            path: path.display().to_string(),
            line: key_line(&text, &format!("[{table}]")).unwrap_or(1),
            table: table.into(),
            msg,
        })?;
        let mut leaves = Vec::new();
        leaf_keys(&raw, "", &mut leaves);
        for key in leaves {
            let name = spelled.get(&key).map_or_else(|| key.rsplit('.').next().unwrap_or(&key), String::as_str);
            // The key's line inside its table (`[table]` or `[table.sub]`), else the header's.
            let header = key_line(&text, &format!("[{table}]")).unwrap_or(1);
            let sub = key.rsplit_once('.').map(|(parent, _)| format!("[{table}.{parent}]"));
            let from = sub.as_deref().and_then(|h| key_line(&text, h)).unwrap_or(header);
            let after: String = text.lines().skip(from).collect::<Vec<_>>().join("\n");
            let line = key_line(&after, name).map(|l| l + from).unwrap_or(header);
            origins.insert(key, Origin::Recipe { path: path.clone(), line });
        }
        merge(&mut merged, raw);
        recipe_text = Some(text);
    }
    for given in &layers.sets {
        let (key, text) = given.split_once('=').ok_or_else(|| ConfigError::SetSyntax { given: given.clone() })?;
        let key = key.trim();
        let key = key.strip_prefix(table).and_then(|k| k.strip_prefix('.')).unwrap_or(key);
        let key = T::ALIASES.iter().find(|(alias, _)| *alias == key).map_or(key, |(_, k)| *k);
        if key.is_empty() {
            return Err(ConfigError::SetSyntax { given: given.clone() });
        }
        let value = parse_set_value(text.trim(), lookup(&merged, key));
        set_path(&mut merged, key, value);
        origins.insert(key.to_string(), Origin::Set);
    }
    for f in &layers.flags {
        set_path(&mut merged, f.key, f.value.clone());
        origins.insert(f.key.to_string(), Origin::Flag(f.flag.to_string()));
    }
    let base = match toml::Value::try_from(T::default()) {
        Ok(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    let mut value: T = T::deserialize(toml::Value::Table(merged.clone())).map_err(|e| {
        let msg = e.message().to_string();
        // The key serde names (in backticks), else the one key that fails on its own.
        let named = msg.split('`').nth(1).unwrap_or("").to_string();
        let culprit = origins.0.keys().find(|k| {
            if !named.is_empty() {
                return k.rsplit('.').next() == Some(named.as_str());
            }
            let mut alone = base.clone();
            lookup(&merged, k).is_some_and(|v| {
                set_path(&mut alone, k, v.clone());
                T::deserialize(toml::Value::Table(alone)).is_err()
            })
        });
        let key = culprit.cloned().unwrap_or(named);
        let origin = culprit.map(|k| origins.get(k));
        // serde names no key for a wrong type: say which one.
        let msg = if !key.is_empty() && !msg.contains(&format!("`{key}`")) { format!("`{key}`: {msg}") } else { msg };
        match (origin, &layers.recipe, &recipe_text) {
            (Some(Origin::Recipe { path, line }), _, _) => {
                ConfigError::Table { path: path.display().to_string(), line, table: table.into(), msg }
            }
            (Some(origin), _, _) => ConfigError::Value { table: table.into(), key, origin, msg },
            (None, Some(path), Some(text)) => ConfigError::Table {
                path: path.display().to_string(),
                line: key_line(text, &format!("[{table}]")).unwrap_or(1),
                table: table.into(),
                msg,
            },
            (None, _, _) => ConfigError::Invalid { table: table.into(), msg },
        }
    })?;
    // Keys no field took (serde's `deny_unknown_fields` cannot see through flattened tables):
    // every key a layer set must be found again in the settings written back.
    let back = match toml::Value::try_from(&value) {
        Ok(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    if let Some((key, origin)) = origins.0.iter().find(|(k, _)| lookup(&back, k).is_none()) {
        let msg = format!("unknown field `{key}`");
        return Err(match origin.clone() {
            Origin::Recipe { path, line } => {
                ConfigError::Table { path: path.display().to_string(), line, table: table.into(), msg }
            }
            origin => ConfigError::Value { table: table.into(), key: key.clone(), origin, msg },
        });
    }
    value.derive(&mut origins);
    Ok(Resolved { value, origins })
}

impl<T: Settings> Resolved<T> {
    /// The settings as a recipe table, each value not at its default followed by a comment
    /// naming where it came from. The text reads back as a recipe giving the same settings.
    pub fn show(&self) -> Result<String, ConfigError> {
        let plain = to_toml(T::TABLE, &self.value)?;
        Ok(annotate(&plain, T::TABLE, &self.origins))
    }
}

/// Adds `# origin` comments to the key lines of a rendered table.
fn annotate(text: &str, table: &str, origins: &Origins) -> String {
    let mut out = String::with_capacity(text.len() + 256);
    let mut prefix = String::new();
    let mut in_multiline = false;
    for line in text.lines() {
        let t = line.trim_start();
        let toggles = line.matches("\"\"\"").count() + line.matches("'''").count();
        let was_in = in_multiline;
        if toggles % 2 == 1 {
            in_multiline = !in_multiline;
        }
        out.push_str(line);
        if !was_in {
            if let Some(h) = t.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
                prefix = h
                    .trim_matches('[')
                    .trim_matches(']')
                    .strip_prefix(table)
                    .unwrap_or("")
                    .trim_start_matches('.')
                    .to_string();
            } else if let Some((k, _)) = t.split_once(" = ")
                && !k.contains(' ')
                && !t.starts_with('#')
            {
                let key = if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") };
                let origin = origins.get(&key);
                if origin != Origin::Default && toggles % 2 == 0 {
                    out.push_str("  # ");
                    out.push_str(&origin.to_string());
                }
            }
        }
        out.push('\n');
    }
    out
}

/// A `--set` value: TOML (`4`, `1e-4`, `true`, `"text"`, `[1, 2]`), or the text itself where
/// TOML does not parse or where the setting is a string (so `--set model=7b` stays text).
fn parse_set_value(text: &str, current: Option<&toml::Value>) -> toml::Value {
    let parsed = format!("v = {text}").parse::<toml::Table>().ok().and_then(|mut t| t.remove("v"));
    match (parsed, current) {
        (Some(v @ toml::Value::String(_)), _) => v,
        (Some(_), Some(toml::Value::String(_))) => toml::Value::String(text.to_string()),
        (Some(v), _) => v,
        (None, _) => toml::Value::String(text.to_string()),
    }
}

fn lookup<'a>(table: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    let mut parts = key.split('.');
    let first = parts.next()?;
    let mut cur = table.get(first)?;
    for p in parts {
        cur = cur.as_table()?.get(p)?;
    }
    Some(cur)
}

fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) {
    match key.split_once('.') {
        None => {
            table.insert(key.to_string(), value);
        }
        Some((head, rest)) => {
            let entry = table.entry(head.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            if let toml::Value::Table(t) = entry {
                set_path(t, rest, value);
            }
        }
    }
}

/// Moves the keys of a recipe table spelled by an alias of `T` to their own names; returns,
/// by key, the alias it was spelled with (to find its line).
fn rename_aliases<T: Settings>(raw: &mut toml::Table) -> Result<BTreeMap<String, String>, String> {
    let mut spelled = BTreeMap::new();
    for (alias, key) in T::ALIASES {
        let Some(v) = raw.remove(*alias) else { continue };
        if lookup(raw, key).is_some() {
            return Err(format!("`{alias}` and `{key}` name the same setting; keep one"));
        }
        set_path(raw, key, v.clone());
        let mut leaves = Vec::new();
        match &v {
            toml::Value::Table(t) => leaf_keys(t, key, &mut leaves),
            _ => leaves.push(key.to_string()),
        }
        for l in leaves {
            spelled.insert(l, alias.to_string());
        }
    }
    Ok(spelled)
}

/// Lays `over` onto `base`, table by table.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn leaf_keys(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in table {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            toml::Value::Table(t) if !t.is_empty() => leaf_keys(t, &key, out),
            _ => out.push(key),
        }
    }
}

/// Reads a recipe and returns its `[table]` and the file's text.
fn read_table(path: &Path, table: &str) -> Result<(toml::Table, String), ConfigError> {
    let shown = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigError::Read { path: shown.clone(), msg: e.to_string() })?;
    let line_at = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let mut doc: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Syntax {
        path: shown.clone(),
        line: e.span().map_or(1, |s| line_at(s.start)),
        msg: e.message().to_string(),
    })?;
    match doc.remove(table) {
        Some(toml::Value::Table(raw)) => Ok((raw, text)),
        _ => Err(ConfigError::NoTable { path: shown, table: table.to_string() }),
    }
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
        inner: BTreeMap<&'a str, &'a T>,
    }
    let mut inner = BTreeMap::new();
    inner.insert(table, cfg);
    toml::to_string_pretty(&Wrap { inner })
        .map_err(|e| ConfigError::Render { table: table.to_string(), msg: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Inner {
        batch: usize,
        packing: bool,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Demo {
        path: PathBuf,
        n: u32,
        name: String,
        rank: Option<usize>,
        alpha: Option<f64>,
        inner: Inner,
    }

    impl Default for Demo {
        fn default() -> Self {
            Demo {
                path: PathBuf::new(),
                n: 1,
                name: "x".into(),
                rank: None,
                alpha: None,
                inner: Inner { batch: 1, packing: true },
            }
        }
    }

    impl Settings for Demo {
        const TABLE: &'static str = "demo";
        fn derive(&mut self, origins: &mut Origins) {
            if let (Some(r), false) = (self.rank, origins.is_set("alpha")) {
                self.alpha = Some(2.0 * r as f64);
                origins.derived("alpha", "2 x rank");
            }
        }
    }

    fn recipe(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().expect("temp file");
        std::io::Write::write_all(&mut f, text.as_bytes()).expect("write");
        f
    }

    #[test]
    fn precedence_is_default_recipe_set_flag() {
        let r = recipe("[demo]\nn = 2\nname = \"r\"\n[demo.inner]\nbatch = 2\n");
        let flag = |key, v: i64| FlagValue { key, value: toml::Value::Integer(v), flag: "--n" };
        type Case<'a> = (Option<&'a Path>, Vec<&'a str>, Vec<FlagValue>, u32, usize);
        let cases: Vec<Case> = vec![
            (None, vec![], vec![], 1, 1),
            (Some(r.path()), vec![], vec![], 2, 2),
            (Some(r.path()), vec!["n=3", "demo.inner.batch=5"], vec![], 3, 5),
            (Some(r.path()), vec!["n=3"], vec![flag("n", 4)], 4, 2),
            (None, vec![], vec![flag("n", 4)], 4, 1),
        ];
        for (path, sets, flags, n, batch) in cases {
            let layers = Layers {
                recipe: path.map(Path::to_path_buf),
                sets: sets.iter().map(|s| s.to_string()).collect(),
                flags,
            };
            let got = resolve::<Demo>(&layers).expect("resolves");
            assert_eq!((got.value.n, got.value.inner.batch), (n, batch), "{sets:?}");
            assert!(got.value.inner.packing, "untouched nested keys keep their defaults");
        }
    }

    #[test]
    fn derived_values_and_their_origins() {
        let r = recipe("[demo]\nrank = 8\n");
        let got = resolve::<Demo>(&Layers { recipe: Some(r.path().into()), ..Layers::default() }).expect("ok");
        assert_eq!(got.value.alpha, Some(16.0));
        let shown = got.show().expect("renders");
        assert!(shown.contains("alpha = 16.0  # derived: 2 x rank"), "{shown}");
        assert!(shown.contains(&format!("rank = 8  # recipe {}:2", r.path().display())), "{shown}");
        // What --show-config prints reads back as the same settings.
        let back = recipe(&shown);
        let again = resolve::<Demo>(&Layers { recipe: Some(back.path().into()), ..Layers::default() }).expect("ok");
        assert_eq!(again.value, got.value);
        let r = recipe("[demo]\nrank = 8\nalpha = 4.0\n");
        let got = resolve::<Demo>(&Layers { recipe: Some(r.path().into()), ..Layers::default() }).expect("ok");
        assert_eq!(got.value.alpha, Some(4.0));
    }

    #[test]
    fn errors_name_the_layer_and_key() {
        let r = recipe("[demo]\nn = 2\nlearning_rate = 3\n");
        let e =
            resolve::<Demo>(&Layers { recipe: Some(r.path().into()), ..Layers::default() }).unwrap_err().to_string();
        assert!(e.contains(":3: [demo]") && e.contains("learning_rate"), "{e}");
        let e = resolve::<Demo>(&Layers { sets: vec!["n=many".into()], ..Layers::default() }).unwrap_err().to_string();
        assert!(e.contains("[demo] n (from --set)"), "{e}");
        let e = resolve::<Demo>(&Layers { sets: vec!["n".into()], ..Layers::default() }).unwrap_err().to_string();
        assert!(e.contains("KEY=VALUE"), "{e}");
        let r = recipe("[other]\nn = 2\n");
        let e =
            resolve::<Demo>(&Layers { recipe: Some(r.path().into()), ..Layers::default() }).unwrap_err().to_string();
        assert!(e.contains("has no [demo] table"), "{e}");
    }

    #[test]
    fn set_values_keep_string_settings_as_text() {
        let got =
            resolve::<Demo>(&Layers { sets: vec!["name=7".into(), "path=a b.jsonl".into()], ..Layers::default() })
                .expect("ok");
        assert_eq!(got.value.name, "7");
        assert_eq!(got.value.path, PathBuf::from("a b.jsonl"));
    }

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
