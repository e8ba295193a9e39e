//! `distill run RECIPE`: the whole loop in one command. The only module that imports every
//! stage; no stage imports it.
//!
//! In: a recipe ([`recipe::Recipe`]). Out, under the recipe's `out_dir`: one directory per
//! stage (`problems/`, `collect/`, `filter/`, `dedup/`, `student/`, `eval-before/`,
//! `finetune/`, `eval-after/`), each with a `stage.json` (the sha256 of its settings and of its
//! inputs, the sha256 of every output file, counts and wall time), then `report.json` and
//! `report.md`. A stage whose `stage.json` matches its settings and inputs and whose outputs are
//! intact is skipped; an interrupted one runs again (collect and finetune resume where they
//! stopped).

pub mod recipe;
pub mod student;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::collect::{self, CollectConfig};
use crate::dedup::{self, DedupConfig};
use crate::eval::score::{self, ScoreConfig};
use crate::eval::{self, EvalConfig};
use crate::filter::{self, FilterConfig};
use crate::problems::{self, ProblemsConfig};
use crate::store;
use crate::teacher_sim::{self, SimConfig};
use crate::train::{
    checkpoint,
    finetune::{self, FinetuneConfig},
};
use crate::verify::Verifiers;

use recipe::{Recipe, RunConfig, STAGES, Teacher};
use student::StudentConfig;

/// `OUT/<stage>/stage.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StageRecord {
    pub stage: String,
    /// sha256 of the stage's settings (paths between stages and display-only keys left out).
    pub settings_sha256: String,
    /// sha256 of the upstream stages' `outputs_sha256`.
    pub inputs_sha256: String,
    /// sha256 of every output file, by path relative to the stage directory.
    pub outputs: BTreeMap<String, String>,
    pub outputs_sha256: String,
    pub counts: Value,
    pub wall_s: f64,
}

/// What a finished run did, stage by stage.
#[derive(Debug, Default)]
pub struct RunReport {
    pub ran: Vec<String>,
    pub skipped: Vec<String>,
    pub out_dir: PathBuf,
}

fn sha_hex(bytes: &[u8]) -> String {
    store::hex(&Sha256::digest(bytes))
}

/// Files under `dir` (recursively, `stage.json`, lock and temporary files excepted) with their
/// sha256.
fn hash_outputs(dir: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) -> anyhow::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("{}", dir.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if name == "stage.json" || name.starts_with('.') || name.ends_with(".lock") {
                continue;
            }
            if p.is_dir() {
                walk(root, &p, out)?;
            } else {
                let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
                out.insert(rel, store::sha256_file(&p)?);
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    if dir.is_dir() {
        walk(dir, dir, &mut out)?;
    }
    Ok(out)
}

fn outputs_sha(outputs: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (k, v) in outputs {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    store::hex(&h.finalize())
}

/// The sha256 of a stage's settings, without the keys that do not change its outputs.
fn settings_sha<T: Serialize>(cfg: &T, drop: &[&str]) -> String {
    let mut v = serde_json::to_value(cfg).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        for k in drop {
            m.remove(*k);
        }
    }
    sha_hex(v.to_string().as_bytes())
}

fn read_record(dir: &Path) -> Option<StageRecord> {
    let text = std::fs::read(dir.join("stage.json")).ok()?;
    serde_json::from_slice(&text).ok()
}

/// One run of a recipe.
struct Runner {
    recipe: Recipe,
    run: RunConfig,
    out: PathBuf,
    wanted: Vec<String>,
    /// The latest `outputs_sha256` of each stage (run, skipped, or from an earlier run).
    done: BTreeMap<String, StageRecord>,
    sim: Option<teacher_sim::RunningSim>,
    report: RunReport,
}

impl Runner {
    fn dir(&self, stage: &str) -> PathBuf {
        self.out.join(stage)
    }

    fn path(&self, rel: &str) -> toml::Value {
        toml::Value::String(self.out.join(rel).display().to_string())
    }

    /// The upstream record a stage needs, from this run or an earlier one.
    fn upstream(&mut self, stage: &str) -> anyhow::Result<StageRecord> {
        if let Some(r) = self.done.get(stage) {
            return Ok(r.clone());
        }
        match read_record(&self.dir(stage)) {
            Some(r) => {
                self.done.insert(stage.to_string(), r.clone());
                Ok(r)
            }
            None => bail!(
                "stage `{stage}` has not run in {} yet; run it first (--stages {stage}) or run the whole recipe",
                self.out.display()
            ),
        }
    }

    /// Runs `body` unless the stage's record shows the same settings and inputs and its
    /// outputs are intact; writes the record afterwards.
    fn stage(
        &mut self,
        stage: &str,
        settings_sha256: String,
        inputs: &[&str],
        body: impl FnOnce(&mut Self) -> anyhow::Result<Value>,
    ) -> anyhow::Result<()> {
        let mut h = Sha256::new();
        for i in inputs {
            let r = self.upstream(i)?;
            h.update(i.as_bytes());
            h.update(r.outputs_sha256.as_bytes());
        }
        let inputs_sha256 = store::hex(&h.finalize());
        let dir = self.dir(stage);
        if let Some(prev) = read_record(&dir)
            && prev.settings_sha256 == settings_sha256
            && prev.inputs_sha256 == inputs_sha256
            && hash_outputs(&dir)? == prev.outputs
        {
            eprintln!("run: [{stage}] up to date (inputs, settings and outputs unchanged): skipped");
            self.report.skipped.push(stage.to_string());
            self.done.insert(stage.to_string(), prev);
            return Ok(());
        }
        eprintln!("run: [{stage}] running ...");
        let t0 = Instant::now();
        std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
        let counts = body(self).with_context(|| format!("stage {stage} (output in {})", dir.display()))?;
        let outputs = hash_outputs(&dir)?;
        let rec = StageRecord {
            stage: stage.into(),
            settings_sha256,
            inputs_sha256,
            outputs_sha256: outputs_sha(&outputs),
            outputs,
            counts,
            wall_s: t0.elapsed().as_secs_f64(),
        };
        let bytes = serde_json::to_vec_pretty(&rec)?;
        store::write_atomic(&dir.join("stage.json"), &bytes)?;
        eprintln!("run: [{stage}] done in {:.1} s", rec.wall_s);
        self.report.ran.push(stage.to_string());
        self.done.insert(stage.to_string(), rec);
        Ok(())
    }

    fn wants(&self, stage: &str) -> bool {
        self.wanted.iter().any(|s| s == stage)
    }

    fn problems(&mut self) -> anyhow::Result<()> {
        let cfg = self.recipe.resolve::<ProblemsConfig>(&recipe::problems_fill(&self.out))?.value;
        let heldout = self.run.heldout.clone();
        let sha = settings_sha(&(&cfg, &heldout), &[]);
        self.stage("problems", sha, &[], move |r| {
            let train = cfg.out.clone();
            let n = problems::generate(&cfg).with_context(|| format!("problems out = {}", train.display()))?;
            let mut counts = json!({"train": n});
            if heldout.count > 0 {
                if heldout.seed == cfg.seed {
                    bail!("[run.heldout] seed {} equals [problems] seed: held-out problems need another seed", cfg.seed);
                }
                let seen: std::collections::HashSet<String> = store::open(&train)?
                    .filter_map(Result::ok)
                    .filter_map(|rec| rec.value.get("prompt").and_then(Value::as_str).map(str::to_string))
                    .collect();
                let path = r.dir("problems").join("heldout.jsonl");
                let tmp = r.dir("problems").join("heldout.all.jsonl");
                let hcfg = ProblemsConfig { seed: heldout.seed, count: heldout.count * 2 + 16, out: tmp.clone(), ..cfg.clone() };
                problems::generate(&hcfg)?;
                let mut sink = store::create(&path)?;
                let (mut kept, mut overlap) = (0u64, 0u64);
                for rec in store::open(&tmp)? {
                    let rec = rec?;
                    if kept == heldout.count {
                        break;
                    }
                    let prompt = rec.value.get("prompt").and_then(Value::as_str).unwrap_or("");
                    if seen.contains(prompt) {
                        overlap += 1;
                        continue;
                    }
                    sink.write_value(&Value::Object(rec.value))?;
                    kept += 1;
                }
                sink.finish()?;
                std::fs::remove_file(&tmp).ok();
                eprintln!(
                    "run: problems: {n} training prompts, {kept} held-out (seed {}), {overlap} held-out candidates dropped as training prompts",
                    heldout.seed
                );
                counts = json!({"train": n, "heldout": kept, "heldout_dropped_overlap": overlap});
            }
            Ok(counts)
        })
    }

    fn collect(&mut self) -> anyhow::Result<()> {
        let mut fill = vec![("prompts", self.path("problems/train.jsonl")), ("out", self.path("collect"))];
        if self.run.teacher == Teacher::Sim {
            if self.sim.is_none() {
                let sim_cfg = self.recipe.resolve::<SimConfig>(&[])?.value;
                let sim = teacher_sim::spawn(sim_cfg).context("starting teacher-sim in process")?;
                eprintln!("run: teacher-sim listening on {}", sim.url);
                self.sim = Some(sim);
            }
            let url = self.sim.as_ref().map(|s| s.url.clone()).unwrap_or_default();
            fill.push(("endpoints", toml::Value::Array(vec![toml::Value::String(url)])));
            fill.push(("model", toml::Value::String("teacher-sim".into())));
        }
        fill.push(("progress", toml::Value::Boolean(self.run.progress)));
        let cfg = self.recipe.resolve::<CollectConfig>(&fill)?.value;
        if !cfg.prompts.exists() {
            bail!("[collect] prompts = {:?} does not exist; fix the key or run the problems stage", cfg.prompts);
        }
        let mut sha = settings_sha(&cfg, &["endpoints", "progress", "threads", "concurrency", "prompts", "out"]);
        if self.run.teacher == Teacher::Sim {
            let sim_cfg = self.recipe.resolve::<SimConfig>(&[])?.value;
            sha = sha_hex(format!("{sha}{}", settings_sha(&sim_cfg, &["port", "threads", "host"])).as_bytes());
        }
        let own_prompts = self.recipe.sets_key::<CollectConfig>("prompts")?;
        if own_prompts && cfg.prompts.is_file() {
            // The recipe's own prompt file is an input too.
            sha = sha_hex(format!("{sha}{}", store::sha256_file(&cfg.prompts)?).as_bytes());
        }
        let inputs: &[&str] = if own_prompts { &[] } else { &["problems"] };
        self.stage("collect", sha, inputs, move |_| {
            let report = collect::run(cfg).map_err(anyhow::Error::from)?;
            eprint!("{}", report.summary.to_text());
            let s = &report.summary;
            Ok(json!({
                "prompts": s.prompts_read, "samples_wanted": s.samples_wanted, "samples_written": s.samples_written,
                "samples_already_done": s.samples_already_done, "failures": s.failures, "retries": s.retries,
                "prompt_tokens": s.prompt_tokens, "completion_tokens": s.completion_tokens, "cost_usd": s.cost_usd,
            }))
        })
    }

    fn filter(&mut self) -> anyhow::Result<()> {
        let fill = [
            ("input", self.path("collect")),
            ("out", self.path("filter")),
            ("progress", toml::Value::Boolean(self.run.progress)),
        ];
        let cfg = self.recipe.resolve::<FilterConfig>(&fill)?.value;
        let sha = settings_sha(&cfg, &["input", "out", "progress", "chunk", "memory_mb"]);
        self.stage("filter", sha, &["collect"], move |_| {
            // A re-run starts from an empty directory (filter writes its shards afresh).
            for sub in ["kept", "rejects"] {
                let _ = std::fs::remove_dir_all(cfg.out.join(sub));
            }
            let report = filter::run(&cfg, &Verifiers::standard()).map_err(anyhow::Error::from)?;
            eprint!("{}", report.funnel.to_text());
            Ok(serde_json::to_value(&report.funnel)?)
        })
    }

    /// The corpus: `distill dedup` (exact and near-duplicate prompts, decontamination against
    /// the held-out problems, a validation split of prompt clusters) into Parquet shards.
    fn dedup(&mut self) -> anyhow::Result<()> {
        let heldout = self.dir("problems").join("heldout.jsonl");
        let mut fill = vec![
            ("input", self.path("filter/kept")),
            ("out", self.path("dedup")),
            ("validation_fraction", toml::Value::Float(self.run.validation_share)),
        ];
        if heldout.is_file() {
            let spec = format!("{}:prompt", heldout.display());
            fill.push(("decontam", toml::Value::Array(vec![toml::Value::String(spec)])));
        }
        let cfg = self.recipe.resolve::<DedupConfig>(&fill)?.value;
        let sha = settings_sha(&cfg, &["input", "out", "decontam"]);
        let inputs: &[&str] = if heldout.is_file() { &["filter", "problems"] } else { &["filter"] };
        self.stage("dedup", sha, inputs, move |_| {
            let _ = std::fs::remove_dir_all(cfg.out.join("data"));
            let report = dedup::run(&cfg).map_err(anyhow::Error::from)?;
            eprint!("{}", report.to_text());
            Ok(serde_json::to_value(&report.funnel)?)
        })
    }

    fn student(&mut self) -> anyhow::Result<()> {
        let cfg = self.recipe.resolve::<StudentConfig>(&[])?.value;
        let cfg_file = std::fs::read(&cfg.config).unwrap_or_default();
        let sha = sha_hex(format!("{}{}", settings_sha(&cfg, &[]), sha_hex(&cfg_file)).as_bytes());
        let inputs: &[&str] = if cfg.model.is_some() { &[] } else { &["dedup"] };
        self.stage("student", sha, inputs, move |r| {
            let dir = r.dir("student");
            if let Some(model) = &cfg.model {
                if !model.exists() {
                    bail!(
                        "[student] model = {:?} does not exist; point it at a Hugging Face model directory or a .gguf",
                        model
                    );
                }
                if model.extension().is_some_and(|e| e == "gguf") {
                    let rep = crate::model::gguf::convert(model, &dir, candle_core::DType::F32)
                        .with_context(|| format!("[student] model = {}", model.display()))?;
                    return Ok(
                        json!({"source": model.display().to_string(), "params": rep.params, "layers": rep.layers}),
                    );
                }
                return Ok(json!({"source": model.display().to_string()}));
            }
            let mut texts = Vec::new();
            for rec in store::open(&r.dir("dedup").join("data"))? {
                let rec = rec?;
                if let Some(Value::Array(msgs)) = rec.value.get("messages") {
                    for m in msgs {
                        if let Some(c) = m.get("content").and_then(Value::as_str) {
                            texts.push(c.to_string());
                        }
                    }
                }
            }
            let t = student::make_tiny(&cfg, &texts, &dir).map_err(anyhow::Error::msg)?;
            eprintln!(
                "run: student: tiny qwen2 ({} layers, hidden {}, {} parameters), BPE vocabulary {} trained on {} texts",
                t.layers,
                t.hidden_size,
                t.params,
                t.vocab_size,
                texts.len()
            );
            Ok(serde_json::to_value(&t)?)
        })
    }

    /// The student model directory the finetune stage starts from.
    fn student_dir(&self) -> anyhow::Result<PathBuf> {
        let cfg = self.recipe.resolve::<StudentConfig>(&[])?.value;
        Ok(match cfg.model {
            Some(m) if m.extension().is_none_or(|e| e != "gguf") => m,
            _ => self.dir("student"),
        })
    }

    /// A model before or after fine-tuning: `distill eval` on the held-out problems (pass@1,
    /// format rate, truncation and EOS rates, from generations judged by the verifiers) and
    /// `distill score` on the corpus's validation split (held-out loss).
    fn eval(&mut self, stage: &str, model: PathBuf, after: &str) -> anyhow::Result<()> {
        let dir = self.dir(stage);
        let val = self.dir("dedup").join("data");
        let fill = recipe::score_fill(&model, &val, &dir.join("rejects.jsonl"));
        let mut score_cfg = self.recipe.resolve::<ScoreConfig>(&fill)?.value;
        let heldout = self.dir("problems").join("heldout.jsonl");
        let eval_cfg = if heldout.is_file() {
            let s = |p: &Path| toml::Value::String(p.display().to_string());
            let fill = [
                ("model", s(&model)),
                ("problems", s(&heldout)),
                ("samples", s(&dir.join("samples.jsonl"))),
                ("rejects", s(&dir.join("rejects.jsonl"))),
                ("progress", toml::Value::Boolean(self.run.progress)),
            ];
            Some(self.recipe.resolve::<EvalConfig>(&fill)?.value)
        } else {
            None
        };
        let sha = sha_hex(
            format!(
                "{}{}",
                settings_sha(&score_cfg, &["rejects", "json"]),
                settings_sha(&eval_cfg, &["model", "problems", "samples", "rejects", "out", "progress", "concurrency"])
            )
            .as_bytes(),
        );
        let inputs: &[&str] = if heldout.is_file() { &["dedup", "problems", after] } else { &["dedup", after] };
        self.stage(stage, sha, inputs, move |_| {
            let mut v = serde_json::Map::new();
            if let Some(cfg) = &eval_cfg {
                let rep = eval::run(cfg).map_err(anyhow::Error::from)?;
                let j = &rep.json;
                eprintln!(
                    "run: {stage}: distill eval on {} held-out problems x {}: pass@1 {}, format rate {}, truncated {}, EOS {}",
                    j["problems"],
                    j["n"],
                    num(j, &["pass_at_1"]),
                    num(j, &["format_rate"]),
                    num(j, &["truncated_rate"]),
                    num(j, &["eos_rate"]),
                );
                for key in ["pass_at_1", "pass_at_1_stderr", "format_rate", "truncated_rate", "eos_rate", "mean_tokens"] {
                    v.insert(key.into(), j.get(key).cloned().unwrap_or(Value::Null));
                }
                v.insert("eval".into(), j.clone());
            } else {
                v.insert("pass_at_1".into(), Value::Null);
                v.insert("format_rate".into(), Value::Null);
                v.insert("note".into(), json!("no held-out problems ([run.heldout] count = 0): pass@1 not measured"));
            }
            // Only the validation split: score reads every file it is given.
            let files = crate::train::data::splits(&val)?.validation;
            if let Some(first) = files.first() {
                score_cfg.path = first.clone();
                let rep = score::run(&score_cfg).map_err(anyhow::Error::from)?;
                eprintln!(
                    "run: {stage}: held-out loss {:.4} nats/token over {} tokens ({} examples)",
                    rep.loss, rep.tokens, rep.examples
                );
                v.insert("heldout_loss".into(), json!(rep.loss));
                v.insert("perplexity".into(), json!(rep.perplexity));
                v.insert("loss_tokens".into(), json!(rep.tokens));
                v.insert("loss_examples".into(), json!(rep.examples));
            } else {
                v.insert("heldout_loss".into(), Value::Null);
            }
            let v = Value::Object(v);
            store::write_atomic(&dir.join("eval.json"), serde_json::to_string_pretty(&v)?.as_bytes())?;
            Ok(v)
        })
    }

    fn finetune(&mut self) -> anyhow::Result<()> {
        let student = self.student_dir()?;
        let fill = [
            ("model", toml::Value::String(student.display().to_string())),
            ("data", self.path("dedup/data")),
            ("out", self.path("finetune")),
            ("progress", toml::Value::Boolean(self.run.progress)),
        ];
        let mut cfg = self.recipe.resolve::<FinetuneConfig>(&fill)?.value;
        if !cfg.model.exists() {
            bail!("[finetune] model = {:?} does not exist; fix the key or run the student stage", cfg.model);
        }
        let sha = settings_sha(&cfg, &["model", "data", "out", "progress", "resume", "device"]);
        let inputs: &[&str] = &["dedup", "student"];
        self.stage("finetune", sha, inputs, move |_| {
            // An interrupted run left checkpoints: continue from the newest.
            if checkpoint::latest(&cfg.train.out).ok().flatten().is_some() {
                eprintln!("run: finetune: resuming from the newest checkpoint in {}", cfg.train.out.display());
                cfg.train.resume = true;
            }
            let rep = finetune::run(&cfg).map_err(anyhow::Error::from)?;
            eprintln!("{}", rep.summary());
            Ok(json!({"steps": rep.steps, "resumed_from": rep.resumed_from, "tokens_seen": rep.tokens_seen,
                      "first_loss": rep.losses.first().map(|x| x.1), "last_loss": rep.losses.last().map(|x| x.1),
                      "eval_losses": rep.eval_losses, "final_dir": rep.final_dir.display().to_string()}))
        })
    }

    fn report(&mut self) -> anyhow::Result<()> {
        let mut stages = serde_json::Map::new();
        let mut wall = serde_json::Map::new();
        for s in STAGES {
            if let Some(r) = self.done.get(*s).cloned().or_else(|| read_record(&self.dir(s))) {
                stages.insert(s.to_string(), r.counts.clone());
                wall.insert(s.to_string(), json!(r.wall_s));
            }
        }
        let ev = |s: &str| stages.get(s).cloned().unwrap_or(Value::Null);
        let pick = |v: Value| {
            let g = |k: &str| v.get(k).cloned().unwrap_or(Value::Null);
            json!({"pass_at_1": g("pass_at_1"), "pass_at_1_stderr": g("pass_at_1_stderr"),
                   "format_rate": g("format_rate"), "truncated_rate": g("truncated_rate"),
                   "eos_rate": g("eos_rate"), "mean_tokens": g("mean_tokens"), "heldout_loss": g("heldout_loss")})
        };
        let report = json!({
            "recipe": self.recipe.path.display().to_string(),
            "name": self.run.name,
            "stages": stages,
            "eval": {"before": pick(ev("eval-before")), "after": pick(ev("eval-after")),
                     "note": "pass_at_1, format_rate, truncated_rate and eos_rate from distill eval on the held-out problems; heldout_loss from distill score on the corpus's validation split"},
            "wall_s": wall,
        });
        let md = render_md(&report, &self.out);
        store::write_atomic(&self.out.join("report.json"), serde_json::to_string_pretty(&report)?.as_bytes())?;
        store::write_atomic(&self.out.join("report.md"), md.as_bytes())?;
        print!("{md}");
        Ok(())
    }
}

fn num(v: &Value, path: &[&str]) -> String {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(x) => cur = x,
            None => return "-".into(),
        }
    }
    match cur {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.4}"),
            _ => n.to_string(),
        },
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn render_md(r: &Value, out: &Path) -> String {
    let mut s = format!(
        "# distill run: {}\n\nRecipe `{}`, outputs in `{}`.\n\n",
        num(r, &["name"]).trim_matches('"'),
        num(r, &["recipe"]).trim_matches('"'),
        out.display()
    );
    s.push_str("## Funnel\n\n| step | count |\n|---|---|\n");
    let st = &r["stages"];
    for (label, path) in [
        ("training prompts", &["problems", "train"][..]),
        ("held-out prompts", &["problems", "heldout"]),
        ("samples collected", &["collect", "samples_written"]),
        ("collect failures", &["collect", "failures"]),
        ("samples into filter", &["filter", "samples_in"]),
        ("samples kept by filter", &["filter", "samples_out"]),
        ("prompts kept by filter", &["filter", "prompts_out"]),
        ("exact duplicates removed", &["dedup", "exact_duplicates"]),
        ("near duplicates removed", &["dedup", "near_duplicates"]),
        ("contaminated (held-out) removed", &["dedup", "contaminated"]),
        ("corpus train examples", &["dedup", "train"]),
        ("corpus validation examples", &["dedup", "validation"]),
    ] {
        s.push_str(&format!("| {label} | {} |\n", num(st, path)));
    }
    if let Some(checks) = st.get("filter").and_then(|f| f.get("checks")).and_then(Value::as_array) {
        s.push_str("\nFilter checks (samples removed):\n\n");
        for c in checks {
            s.push_str(&format!("- {}: {}\n", num(c, &["name"]).trim_matches('"'), num(c, &["removed_samples"])));
        }
    }
    s.push_str("\n## Corpus and student\n\n");
    s.push_str(&format!(
        "Completion tokens collected: {}. Student: {} parameters, vocabulary {}.\n",
        num(st, &["collect", "completion_tokens"]),
        num(st, &["student", "params"]),
        num(st, &["student", "vocab_size"])
    ));
    s.push_str(&format!(
        "Fine-tuning: {} steps, train loss {} → {}. Loss curve: [finetune/loss.png](finetune/loss.png).\n",
        num(st, &["finetune", "steps"]),
        num(st, &["finetune", "first_loss"]),
        num(st, &["finetune", "last_loss"])
    ));
    s.push_str("\n## Scores on held-out data\n\n| | before | after |\n|---|---|---|\n");
    for (label, key) in [
        ("pass@1 (distill eval)", "pass_at_1"),
        ("pass@1 standard error", "pass_at_1_stderr"),
        ("format rate: closed </think> + extractable answer (distill eval)", "format_rate"),
        ("hit the token limit", "truncated_rate"),
        ("ended with EOS", "eos_rate"),
        ("mean response tokens", "mean_tokens"),
        ("held-out loss, nats/token (distill score)", "heldout_loss"),
    ] {
        s.push_str(&format!(
            "| {label} | {} | {} |\n",
            num(&r["eval"], &["before", key]),
            num(&r["eval"], &["after", key])
        ));
    }
    s.push_str(&format!(
        "\nGenerations: {} held-out problems x {} samples, temperature {}; samples with verdicts in \
         `eval-before/samples.jsonl` and `eval-after/samples.jsonl`. `-`: not measured in this run.\n",
        num(&r["stages"], &["eval-after", "eval", "problems"]),
        num(&r["stages"], &["eval-after", "eval", "n"]),
        num(&r["stages"], &["eval-after", "eval", "params", "temperature"]),
    ));
    s.push_str("\n## Wall time\n\n| stage | seconds |\n|---|---|\n");
    if let Some(w) = r["wall_s"].as_object() {
        for (k, v) in w {
            s.push_str(&format!("| {k} | {:.1} |\n", v.as_f64().unwrap_or(0.0)));
        }
    }
    s
}

/// Runs a recipe: `stages` (empty: the recipe's `[run] stages`), `sets` as `TABLE.KEY=VALUE`.
pub fn run(path: &Path, stages: &[String], sets: &[String]) -> anyhow::Result<RunReport> {
    let recipe = Recipe::open(path, sets)?;
    let run = recipe.run_config()?.value;
    let wanted: Vec<String> = if stages.is_empty() { run.stages.clone() } else { stages.to_vec() };
    for s in &wanted {
        if !STAGES.contains(&s.as_str()) {
            bail!("--stages {s}: unknown stage; stages are {}", STAGES.join(", "));
        }
    }
    let out = run.out_dir.clone();
    std::fs::create_dir_all(&out).with_context(|| format!("[run] out_dir = {}", out.display()))?;
    eprintln!("run: recipe {} -> {} (stages: {})", path.display(), out.display(), wanted.join(", "));
    let mut r = Runner {
        recipe,
        run,
        out: out.clone(),
        wanted,
        done: BTreeMap::new(),
        sim: None,
        report: RunReport { out_dir: out, ..RunReport::default() },
    };
    let t0 = Instant::now();
    for stage in STAGES {
        if !r.wants(stage) {
            continue;
        }
        match *stage {
            "problems" => r.problems()?,
            "collect" => r.collect()?,
            "filter" => r.filter()?,
            "dedup" => r.dedup()?,
            "student" => r.student()?,
            "eval-before" => {
                let m = r.student_dir()?;
                r.eval("eval-before", m, "student")?
            }
            "finetune" => r.finetune()?,
            "eval-after" => {
                let m = r.dir("finetune").join("final");
                r.eval("eval-after", m, "finetune")?
            }
            "report" => r.report()?,
            _ => {}
        }
    }
    // The in-process teacher stops here.
    r.sim.take();
    eprintln!(
        "run: finished in {:.1} s ({} stages ran, {} up to date)",
        t0.elapsed().as_secs_f64(),
        r.report.ran.len(),
        r.report.skipped.len()
    );
    Ok(r.report)
}

/// `--show-config` of `distill run`: every table resolved, annotated with its origin.
pub fn show_config(path: &Path, sets: &[String]) -> anyhow::Result<String> {
    let recipe = Recipe::open(path, sets)?;
    Ok(recipe.show()?)
}
