//! A recipe: one TOML file naming every stage's settings. Each stage's table is that stage's
//! own config type, resolved by [`crate::config::resolve`] (default < recipe table < `--set` <
//! what the runner fills in: the paths between stages); `[run]` holds the recipe's own keys.
//! `--set TABLE.KEY=VALUE` reaches `[TABLE]` only.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::collect::CollectConfig;
use crate::config::{self, ConfigError, FlagValue, Layers, Resolved, Settings};
use crate::dedup::DedupConfig;
use crate::eval::score::ScoreConfig;
use crate::filter::FilterConfig;
use crate::problems::ProblemsConfig;
use crate::teacher_sim::SimConfig;
use crate::train::finetune::FinetuneConfig;

use super::student::StudentConfig;

/// The pipeline's steps, in order; `--stages` and `[run] stages` name them.
pub const STAGES: &[&str] =
    &["problems", "collect", "filter", "dedup", "student", "eval-before", "finetune", "eval-after", "report"];

/// Where the teacher is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Teacher {
    /// `distill teacher-sim` started in this process on a free 127.0.0.1 port ([teacher_sim]),
    /// stopped at the end.
    Sim,
    /// The `[collect]` table's `endpoints` and `model`.
    Endpoint,
}

/// Held-out evaluation problems: the `[problems]` kind and family, another seed, checked
/// disjoint from the training prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeldOut {
    /// How many (0: none).
    pub count: u64,
    /// Their seed (must differ from `[problems] seed`).
    pub seed: u64,
}

impl Default for HeldOut {
    fn default() -> Self {
        HeldOut { count: 100, seed: 1_000_003 }
    }
}

/// The recipe's `[run]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// The recipe's name (default: the file's stem).
    pub name: String,
    /// Where every stage writes (`OUT_DIR/<stage>/`); default `runs/<name>`.
    pub out_dir: PathBuf,
    /// The stages to run (default: all, in order).
    pub stages: Vec<String>,
    pub teacher: Teacher,
    pub heldout: HeldOut,
    /// Share of the kept prompts held out as the corpus's validation split (the held-out loss
    /// that `eval-before`/`eval-after` report beside `distill eval`'s pass@1).
    pub validation_share: f64,
    /// Show progress bars.
    pub progress: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            name: String::new(),
            out_dir: PathBuf::new(),
            stages: STAGES.iter().map(|s| s.to_string()).collect(),
            teacher: Teacher::Endpoint,
            heldout: HeldOut::default(),
            validation_share: 0.1,
            progress: true,
        }
    }
}

impl Settings for RunConfig {
    const TABLE: &'static str = "run";

    fn validate(&self) -> Result<(), String> {
        for s in &self.stages {
            if !STAGES.contains(&s.as_str()) {
                return Err(format!("run `stages`: unknown stage {s:?}; stages are {}", STAGES.join(", ")));
            }
        }
        if !(0.0..1.0).contains(&self.validation_share) {
            return Err(format!("run `validation_share` {} must be in [0, 1)", self.validation_share));
        }
        Ok(())
    }
}

/// The tables a recipe may hold.
pub const TABLES: &[&str] =
    &["run", "problems", "teacher_sim", "collect", "filter", "dedup", "student", "finetune", "eval", "score"];

/// A recipe file with the `--set`s of the command line.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub path: PathBuf,
    /// Tables present in the file.
    tables: Vec<String>,
    sets: Vec<String>,
}

/// Errors of recipe handling (each names the file and the key).
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("recipe {path}:{line}: unknown table [{table}]; a recipe holds {allowed}")]
    UnknownTable { path: String, line: usize, table: String, allowed: String },
    #[error("recipe {path}:{line}: `{key}` is not inside a table; put it under [run] or a stage's table")]
    TopLevelKey { path: String, line: usize, key: String },
    #[error("--set {given}: name the table, e.g. --set collect.n=4 (tables: {allowed})")]
    SetTable { given: String, allowed: String },
}

impl Recipe {
    /// Reads the file and checks its tables and the `--set` keys' tables.
    pub fn open(path: &Path, sets: &[String]) -> Result<Recipe, RecipeError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: shown.clone(),
            msg: format!("{e}; give the path of a recipe TOML (see recipes/)"),
        })?;
        let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Syntax {
            path: shown.clone(),
            line: e.span().map_or(1, |s| text[..s.start.min(text.len())].matches('\n').count() + 1),
            msg: e.message().to_string(),
        })?;
        let line_of = |needle: &str| text.lines().position(|l| l.trim_start().starts_with(needle)).map_or(1, |i| i + 1);
        let mut tables = Vec::new();
        for (k, v) in &doc {
            if !v.is_table() {
                return Err(RecipeError::TopLevelKey { path: shown, line: line_of(k), key: k.clone() });
            }
            if !TABLES.contains(&k.as_str()) {
                return Err(RecipeError::UnknownTable {
                    path: shown,
                    line: line_of(&format!("[{k}")),
                    table: k.clone(),
                    allowed: TABLES.join(", "),
                });
            }
            tables.push(k.clone());
        }
        for s in sets {
            let table = s.split_once('.').map(|(t, _)| t).unwrap_or("");
            if !TABLES.contains(&table) || !s.contains('=') {
                return Err(RecipeError::SetTable { given: s.clone(), allowed: TABLES.join(", ") });
            }
        }
        Ok(Recipe { path: path.to_path_buf(), tables, sets: sets.to_vec() })
    }

    /// Whether the file has `[table]`.
    pub fn has(&self, table: &str) -> bool {
        self.tables.iter().any(|t| t == table)
    }

    /// The `--set`s aimed at `table`.
    fn sets_for(&self, table: &str) -> Vec<String> {
        self.sets.iter().filter(|s| s.split_once('.').is_some_and(|(t, _)| t == table)).cloned().collect()
    }

    /// Resolves `T` from its table and the `--set`s; `fill` are the runner's values, applied
    /// only to keys no layer set (a recipe naming `[collect] prompts` keeps its own).
    pub fn resolve<T: Settings>(&self, fill: &[(&'static str, toml::Value)]) -> Result<Resolved<T>, ConfigError> {
        self.resolve_checked(fill, true)
    }

    /// [`Recipe::resolve`]; with `check` false, required keys may stay empty (`--show-config`
    /// of a recipe whose stage gets them later). Unknown keys and wrong types fail either way.
    fn resolve_checked<T: Settings>(
        &self,
        fill: &[(&'static str, toml::Value)],
        check: bool,
    ) -> Result<Resolved<T>, ConfigError> {
        let layers = Layers {
            recipe: self.has(T::TABLE).then(|| self.path.clone()),
            sets: self.sets_for(T::TABLE),
            flags: Vec::new(),
        };
        let first = config::resolve_unchecked::<T>(&layers)?;
        let flags: Vec<FlagValue> = fill
            .iter()
            .filter(|(k, _)| !first.origins.is_set(k))
            .map(|(k, v)| FlagValue { key: k, value: v.clone(), flag: "distill run" })
            .collect();
        let r = if flags.is_empty() { first } else { config::resolve_unchecked::<T>(&Layers { flags, ..layers })? };
        if check {
            r.value.validate().map_err(|msg| self.invalid::<T>(msg))?;
        }
        Ok(r)
    }

    /// Whether the recipe or a `--set` gives `key` of `T`'s table.
    pub fn sets_key<T: Settings>(&self, key: &str) -> Result<bool, ConfigError> {
        let layers = Layers {
            recipe: self.has(T::TABLE).then(|| self.path.clone()),
            sets: self.sets_for(T::TABLE),
            flags: Vec::new(),
        };
        Ok(config::resolve_unchecked::<T>(&layers)?.origins.is_set(key))
    }

    fn invalid<T: Settings>(&self, msg: String) -> ConfigError {
        ConfigError::Invalid {
            table: T::TABLE.into(),
            msg: format!(
                "{msg} (recipe {}: add it to [{}] or --set {}.KEY=VALUE)",
                self.path.display(),
                T::TABLE,
                T::TABLE
            ),
        }
    }

    fn show_one<T: Settings>(&self, fill: &[(&'static str, toml::Value)]) -> Result<Resolved<T>, ConfigError> {
        self.resolve_checked(fill, false)
    }

    /// `[run]`, with the name and output directory filled in.
    pub fn run_config(&self) -> Result<Resolved<RunConfig>, ConfigError> {
        let mut r = self.resolve::<RunConfig>(&[])?;
        if r.value.name.is_empty() {
            r.value.name = self.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or("run".into());
        }
        if r.value.out_dir.as_os_str().is_empty() {
            r.value.out_dir = Path::new("runs").join(&r.value.name);
        }
        Ok(r)
    }

    /// Every table resolved with placeholders for the runner's paths, as `--show-config`
    /// prints the recipe (each table annotated with where its values came from).
    pub fn show(&self) -> Result<String, ConfigError> {
        let run = self.run_config()?;
        let out = run.value.out_dir.clone();
        let p = |s: &str| toml::Value::String(out.join(s).display().to_string());
        let mut text = run.show()?;
        text.push('\n');
        text.push_str(&self.show_one::<ProblemsConfig>(&problems_fill(&out))?.show()?);
        text.push('\n');
        if run.value.teacher == Teacher::Sim {
            text.push_str(&self.show_one::<SimConfig>(&[])?.show()?);
            text.push('\n');
        }
        let endpoint = toml::Value::Array(vec![toml::Value::String("http://127.0.0.1:PORT/v1".into())]);
        let collect_fill = if run.value.teacher == Teacher::Sim {
            vec![
                ("prompts", p("problems/train.jsonl")),
                ("out", p("collect")),
                ("endpoints", endpoint),
                ("model", toml::Value::String("teacher-sim".into())),
            ]
        } else {
            vec![("prompts", p("problems/train.jsonl")), ("out", p("collect"))]
        };
        text.push_str(&self.show_one::<CollectConfig>(&collect_fill)?.show()?);
        text.push('\n');
        text.push_str(&self.show_one::<FilterConfig>(&[("input", p("collect")), ("out", p("filter"))])?.show()?);
        text.push('\n');
        text.push_str(
            &self
                .show_one::<DedupConfig>(&[
                    ("input", p("filter/kept")),
                    ("out", p("dedup")),
                    ("validation_fraction", toml::Value::Float(run.value.validation_share)),
                ])?
                .show()?,
        );
        text.push('\n');
        text.push_str(&self.show_one::<StudentConfig>(&[])?.show()?);
        text.push('\n');
        text.push_str(
            &self
                .resolve::<FinetuneConfig>(&[
                    ("model", p("student")),
                    ("data", p("dedup/data")),
                    ("out", p("finetune")),
                ])?
                .show()?,
        );
        Ok(text)
    }
}

/// The runner's values for `[problems]`.
pub fn problems_fill(out: &Path) -> Vec<(&'static str, toml::Value)> {
    vec![
        ("out", toml::Value::String(out.join("problems/train.jsonl").display().to_string())),
        ("kind", toml::Value::String("math".into())),
        ("count", toml::Value::Integer(200)),
    ]
}

/// `[score]` for the held-out loss of a model.
pub fn score_fill(model: &Path, path: &Path, rejects: &Path) -> Vec<(&'static str, toml::Value)> {
    let s = |p: &Path| toml::Value::String(p.display().to_string());
    vec![("model", s(model)), ("path", s(path)), ("rejects", s(rejects))]
}

/// Settings types resolved for `[score]`.
pub type Score = ScoreConfig;
