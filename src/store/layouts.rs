//! The public reasoning-dataset layouts, read as distill's records.
//!
//! Every record the store reads passes through [`normalize`]: distill's own records come out
//! untouched, and rows of the layouts practitioners already have come out as the records of
//! [`crate::record`], so no stage parses a layout itself. Recognised, per record:
//!
//! - **messages** (TRL, Mixture-of-Thoughts, NuminaMath-CoT): `messages: [{role, content}]`
//!   without distill's `id`/`task`/`prompt_id`. Missing fields are inferred: `id` =
//!   `{file stem}-{line}`, `task` = `code` with `tests`, `math` with a gold `answer`, else
//!   `open`, `prompt_id` = `id`. With an assistant turn the record also gets a sample view:
//!   `sample: 0`, `prompt` (first user turn), `reasoning` and `content` (the last assistant turn
//!   split at `</think>`).
//! - **sharegpt** (OpenThoughts, Bespoke-Stratos): `conversations: [{from, value}]` with `from`
//!   = `human`/`gpt`/`system` (and a top-level `system` prompt) become `messages`, then as above.
//! - **generations** (OpenR1-Math): `problem`, `answer`, `generations: [..]` → one Sample per
//!   generation `k`: id `{uuid or stem-line}/{k}`, `finish_reason` from `finish_reasons[k]`,
//!   `verdict {pass: correctness_math_verify[k], reason: "correctness_math_verify"}`, and the
//!   k-th element of the other per-generation labels (`correctness_llama`,
//!   `is_reasoning_complete`) under the same name.
//! - **problem** (NuminaMath): `problem` (+ `solution`, `answer`) with no generations → a Prompt.
//! - **pair**: `prompt`+`response`/`completion`, `instruction`(+`input`)+`output`,
//!   `question`+`answer`/`response`, `query`+`response`, `input`+`output` → a Sample.
//!
//! In any assistant text, OpenThoughts' `<|begin_of_thought|>…<|end_of_thought|>` and
//! `<|begin_of_solution|>…<|end_of_solution|>` are read as thinking and answer (the assistant
//! turn is rewritten as `<think>\n…\n</think>\n\n…`). Before recognition, `--map field=column`
//! renames columns (`map = {prompt = "question_text"}`).
//!
//! A record with `id` and `task` is distill's own and never changed: a native record with a
//! mistake (no `task`, say) is reported by the stage that parses it, not guessed at.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{IdSuffix, Loc, RawRecord, StoreError};
use crate::record::{assistant_turn, split_thinking};

/// How records are read: column renames applied before the layouts are recognised.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layouts {
    /// `field = "column"`: the value of `column` is read as distill's `field`.
    pub map: BTreeMap<String, String>,
}

impl Layouts {
    pub fn with_map(map: BTreeMap<String, String>) -> Self {
        Layouts { map }
    }
}

/// The layouts recognised, named as `--help`, the README and `inspect` say them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Layout {
    /// distill's own records (and anything not recognised: the stage's parse names what is missing).
    Native,
    Messages,
    ShareGpt,
    Generations,
    Problem,
    Pair,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Native => "distill",
            Layout::Messages => "messages",
            Layout::ShareGpt => "sharegpt",
            Layout::Generations => "generations",
            Layout::Problem => "problem",
            Layout::Pair => "pair",
        }
    }
}

/// One line for `--help`.
pub const HELP: &str = "Besides distill's own records, every reading command accepts: TRL/Mixture-of-Thoughts \
    `messages`, ShareGPT `conversations: [{from, value}]` (OpenThoughts, Bespoke-Stratos; \
    <|begin_of_thought|> markers read as thinking), NuminaMath/OpenR1-Math rows (`problem`, `answer`, \
    `generations` → one sample per generation), and prompt/response pairs (prompt+response, \
    instruction+output, question+answer, …); `--map field=column` renames other columns.";

/// Which column names a prompt, in order of preference.
const PROMPT_KEYS: [&str; 6] = ["prompt", "instruction", "question", "query", "problem", "input"];
/// Which column names a response, in order of preference (`answer` only after `question`/`query`).
const RESPONSE_KEYS: [&str; 5] = ["response", "completion", "output", "generation", "answer"];
/// Per-generation label lists of OpenR1-Math, carried into each sample as their k-th element.
const PER_GENERATION: [&str; 3] = ["correctness_math_verify", "correctness_llama", "is_reasoning_complete"];

fn has(m: &Map<String, Value>, k: &str) -> bool {
    m.get(k).is_some_and(|v| !v.is_null())
}

/// The pair a record's columns form: (prompt column, response column).
fn pair_keys(m: &Map<String, Value>) -> Option<(&'static str, &'static str)> {
    let p = PROMPT_KEYS.into_iter().find(|k| has(m, k))?;
    let r = RESPONSE_KEYS
        .into_iter()
        .find(|&k| k != p && has(m, k) && (k != "answer" || matches!(p, "question" | "query")))?;
    // `instruction` + `input` + `output` (Alpaca): `input` is part of the prompt.
    Some((p, r))
}

/// Recognises a record's layout (after `--map`).
pub fn detect(m: &Map<String, Value>) -> Layout {
    let arr = |k: &str| m.get(k).is_some_and(Value::is_array);
    if arr("generations") && PROMPT_KEYS.iter().any(|k| has(m, k)) {
        return Layout::Generations;
    }
    if arr("conversations") && !m.contains_key("messages") {
        return Layout::ShareGpt;
    }
    if has(m, "id") && has(m, "task") {
        let foreign_response = pair_keys(m).is_some_and(|(_, r)| r != "answer") && !m.contains_key("content");
        if !foreign_response {
            return Layout::Native;
        }
    }
    if arr("messages") {
        let native = has(m, "id") && has(m, "task") && has(m, "prompt_id");
        return if native { Layout::Native } else { Layout::Messages };
    }
    if has(m, "id") && has(m, "task") {
        return Layout::Pair;
    }
    if pair_keys(m).is_some() {
        return Layout::Pair;
    }
    if has(m, "problem") && !has(m, "prompt") {
        return Layout::Problem;
    }
    Layout::Native
}

/// A file's stem for ids: its name without the record extensions.
fn stem(loc: &Loc) -> String {
    if loc.file.as_os_str() == "-" {
        return "stdin".into();
    }
    let name = loc.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    for ext in [".jsonl.zst", ".json.zst", ".jsonl", ".ndjson", ".parquet"] {
        if let Some(s) = name.strip_suffix(ext) {
            return s.to_string();
        }
    }
    name
}

/// The id a row has (`id`, else `uuid`), or one made from file and row.
fn row_id(m: &Map<String, Value>, loc: &Loc) -> String {
    for k in ["id", "uuid"] {
        match m.get(k) {
            Some(Value::String(s)) if !s.is_empty() => return s.clone(),
            Some(Value::Number(n)) => return n.to_string(),
            _ => {}
        }
    }
    format!("{}-{}", stem(loc), loc.line)
}

/// `code` with tests, `math` with a gold answer, else `open`.
fn infer_task(m: &Map<String, Value>) -> &'static str {
    if m.get("tests").is_some_and(Value::is_object) {
        "code"
    } else if m.get("answer").is_some_and(|a| a.as_str().map_or(!a.is_null(), |s| !s.trim().is_empty())) {
        "math"
    } else {
        "open"
    }
}

/// Reads OpenThoughts' markers: `(thinking, answer)` when the text has them.
pub fn thought_markers(text: &str) -> Option<(&str, &str)> {
    const BT: &str = "<|begin_of_thought|>";
    const ET: &str = "<|end_of_thought|>";
    const BS: &str = "<|begin_of_solution|>";
    const ES: &str = "<|end_of_solution|>";
    if !text.contains(BT) && !text.contains(BS) {
        return None;
    }
    let thought = match text.find(BT) {
        Some(b) => {
            let rest = &text[b + BT.len()..];
            let end = rest.find(ET).or_else(|| rest.find(BS)).unwrap_or(rest.len());
            &rest[..end]
        }
        None => "",
    };
    let solution = match text.find(BS) {
        Some(b) => {
            let rest = &text[b + BS.len()..];
            &rest[..rest.find(ES).unwrap_or(rest.len())]
        }
        None => match text.find(ET) {
            Some(e) => &text[e + ET.len()..],
            None => "",
        },
    };
    Some((thought.trim(), solution.trim()))
}

/// A response as (reasoning, content): OpenThoughts markers, else `<think>` tags.
pub fn split_response(text: &str) -> (String, String) {
    match thought_markers(text) {
        Some((r, a)) => (r.to_string(), a.to_string()),
        None => {
            let (r, a) = split_thinking(text);
            (r.to_string(), a.to_string())
        }
    }
}

fn role_of(m: &Value) -> Option<&str> {
    m.get("role").and_then(Value::as_str)
}

fn content_of(m: &Value) -> Option<&str> {
    m.get("content").and_then(Value::as_str)
}

/// ShareGPT's speaker names as chat roles.
fn sharegpt_role(from: &str) -> String {
    match from {
        "human" | "user" => "user".into(),
        "gpt" | "assistant" | "chatgpt" | "bard" | "model" => "assistant".into(),
        other => other.into(),
    }
}

/// What went wrong with a recognised record: an error naming file, line and id, with the record.
struct Bad(String);

fn conversations_to_messages(m: &mut Map<String, Value>) -> Result<(), Bad> {
    let Some(Value::Array(conv)) = m.remove("conversations") else {
        return Err(Bad("`conversations` is not a list".into()));
    };
    let mut msgs = Vec::with_capacity(conv.len() + 1);
    if let Some(Value::String(sys)) = m.get("system")
        && !sys.is_empty()
    {
        msgs.push(json!({"role": "system", "content": sys}));
        m.remove("system");
    }
    for (i, turn) in conv.into_iter().enumerate() {
        let Value::Object(mut t) = turn else {
            return Err(Bad(format!("conversations[{i}] is not an object {{from, value}}")));
        };
        let role = match (t.remove("from"), t.remove("role")) {
            (Some(Value::String(f)), _) | (None, Some(Value::String(f))) => sharegpt_role(&f),
            _ => return Err(Bad(format!("conversations[{i}] has no `from` (human, gpt or system)"))),
        };
        let content = match (t.remove("value"), t.remove("content")) {
            (Some(Value::String(v)), _) | (None, Some(Value::String(v))) => v,
            _ => return Err(Bad(format!("conversations[{i}] has no `value` text"))),
        };
        let mut msg = Map::new();
        msg.insert("role".into(), role.into());
        msg.insert("content".into(), content.into());
        msg.extend(t);
        msgs.push(Value::Object(msg));
    }
    m.insert("messages".into(), Value::Array(msgs));
    Ok(())
}

/// Rewrites OpenThoughts-marked assistant turns as `<think>…</think>` turns.
fn rewrite_markers(msgs: &mut [Value]) {
    for msg in msgs.iter_mut() {
        if role_of(msg) != Some("assistant") {
            continue;
        }
        let Some((r, a)) = content_of(msg).and_then(thought_markers) else { continue };
        let turn = assistant_turn(r, a);
        if let Some(o) = msg.as_object_mut() {
            o.insert("content".into(), turn.into());
        }
    }
}

/// Fills `id`, `task`, `prompt_id` and, when there is an assistant turn, the sample view.
fn complete_messages(m: &mut Map<String, Value>, loc: &Loc) -> Result<(), Bad> {
    let Some(Value::Array(msgs)) = m.get_mut("messages") else {
        return Err(Bad("`messages` is not a list".into()));
    };
    rewrite_markers(msgs);
    let user = msgs.iter().find(|x| role_of(x) == Some("user")).and_then(content_of).map(str::to_string);
    let assistant =
        msgs.iter().rev().find(|x| role_of(x) == Some("assistant")).and_then(content_of).map(str::to_string);
    let Some(user) = user else {
        return Err(Bad("`messages` has no user turn with text content; each example needs one".into()));
    };
    let id = row_id(m, loc);
    m.insert("id".into(), id.clone().into());
    if !has(m, "task") {
        m.insert("task".into(), infer_task(m).into());
    }
    if !has(m, "prompt_id") {
        m.insert("prompt_id".into(), id.into());
    }
    if let Some(turn) = assistant {
        m.entry("sample").or_insert(0.into());
        m.entry("prompt").or_insert(user.into());
        if !has(m, "content") {
            let (r, a) = split_response(&turn);
            m.entry("reasoning").or_insert(r.into());
            m.insert("content".into(), a.into());
        }
    }
    Ok(())
}

/// The prompt text of a row, and the messages it was sent as.
fn prompt_of(m: &mut Map<String, Value>, key: &str) -> Result<(String, Vec<Value>), Bad> {
    let system = match m.get("system") {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    let value = if key == "prompt" { m.get(key).cloned() } else { m.remove(key) };
    match value {
        Some(Value::String(mut text)) => {
            if key == "instruction"
                && let Some(Value::String(input)) = m.remove("input")
                && !input.trim().is_empty()
            {
                text = format!("{text}\n\n{input}");
            }
            let mut msgs = Vec::new();
            if let Some(s) = system {
                msgs.push(json!({"role": "system", "content": s}));
                m.remove("system");
            }
            msgs.push(json!({"role": "user", "content": text}));
            Ok((text, msgs))
        }
        // TRL's conversational prompt: a list of messages.
        Some(Value::Array(msgs)) => {
            let text = msgs.iter().find(|x| role_of(x) == Some("user")).and_then(content_of).map(str::to_string);
            match text {
                Some(t) => Ok((t, msgs)),
                None => Err(Bad(format!("`{key}` is a message list without a user turn"))),
            }
        }
        Some(other) => Err(Bad(format!("`{key}` is {}, expected text", kind(&other)))),
        None => Err(Bad(format!("no `{key}`"))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A response value as text: a string, or TRL's conversational completion (assistant messages).
fn response_text(key: &str, v: Value) -> Result<String, Bad> {
    match v {
        Value::String(s) => Ok(s),
        Value::Array(msgs) => {
            let parts: Vec<&str> =
                msgs.iter().filter(|x| role_of(x).is_none_or(|r| r == "assistant")).filter_map(content_of).collect();
            if parts.is_empty() {
                Err(Bad(format!("`{key}` is a list without assistant text")))
            } else {
                Ok(parts.join("\n"))
            }
        }
        other => Err(Bad(format!("`{key}` is {}, expected text", kind(&other)))),
    }
}

/// Puts the sample fields into `m`.
fn set_sample(
    m: &mut Map<String, Value>,
    id: &str,
    prompt_id: &str,
    k: u64,
    prompt: &str,
    msgs: Vec<Value>,
    response: &str,
) {
    let (reasoning, content) = split_response(response);
    m.insert("id".into(), id.into());
    m.insert("prompt_id".into(), prompt_id.into());
    m.insert("sample".into(), k.into());
    if !has(m, "task") {
        m.insert("task".into(), infer_task(m).into());
    }
    m.insert("prompt".into(), prompt.into());
    m.insert("messages".into(), Value::Array(msgs));
    m.insert("reasoning".into(), reasoning.into());
    m.insert("content".into(), content.into());
}

fn pair(m: &mut Map<String, Value>, loc: &Loc) -> Result<(), Bad> {
    let Some((pk, rk)) = pair_keys(m) else {
        return Err(Bad("no prompt/response columns (prompt+response, instruction+output, question+answer, …); name them with --map prompt=COLUMN --map response=COLUMN".into()));
    };
    let id = row_id(m, loc);
    let prompt_id = match m.get("prompt_id") {
        Some(Value::String(s)) => s.clone(),
        _ => id.clone(),
    };
    let (text, msgs) = prompt_of(m, pk)?;
    let response = response_text(rk, m.remove(rk).unwrap_or(Value::Null))?;
    let k = m.get("sample").and_then(Value::as_u64).unwrap_or(0);
    set_sample(m, &id, &prompt_id, k, &text, msgs, &response);
    Ok(())
}

fn problem(m: &mut Map<String, Value>, loc: &Loc) -> Result<(), Bad> {
    let id = row_id(m, loc);
    let text = match m.remove("problem") {
        Some(Value::String(s)) => s,
        Some(other) => return Err(Bad(format!("`problem` is {}, expected text", kind(&other)))),
        None => return Err(Bad("no `problem`".into())),
    };
    m.insert("id".into(), id.into());
    if !has(m, "task") {
        m.insert("task".into(), infer_task(m).into());
    }
    m.insert("prompt".into(), text.into());
    Ok(())
}

/// One Sample per generation of an OpenR1-Math row (a Prompt when the list is empty).
fn generations(mut m: Map<String, Value>, loc: &Loc, out: &mut VecDeque<RawRecord>) -> Result<(), Bad> {
    let Some(Value::Array(gens)) = m.remove("generations") else {
        return Err(Bad("`generations` is not a list".into()));
    };
    let pk = PROMPT_KEYS.into_iter().find(|k| has(&m, k)).unwrap_or("problem");
    let base = row_id(&m, loc);
    if gens.is_empty() {
        if pk == "problem" {
            problem(&mut m, loc)?;
        } else {
            m.insert("id".into(), base.into());
            if !has(&m, "task") {
                m.insert("task".into(), infer_task(&m).into());
            }
        }
        out.push_back(RawRecord { value: m, loc: loc.clone(), span: None });
        return Ok(());
    }
    let (text, msgs) = prompt_of(&mut m, pk)?;
    // The row's own `messages` is one of its generations as a chat; each sample has its own.
    m.remove("messages");
    let finish = m.remove("finish_reasons");
    let labels: Vec<(&str, Option<Value>)> = PER_GENERATION.iter().map(|&k| (k, m.remove(k))).collect();
    let nth = |v: &Option<Value>, k: usize| match v {
        Some(Value::Array(a)) => a.get(k).cloned(),
        _ => None,
    };
    let mut samples = Vec::with_capacity(gens.len());
    for (k, g) in gens.into_iter().enumerate() {
        let Value::String(g) = g else {
            return Err(Bad(format!("generations[{k}] is {}, expected text", kind(&g))));
        };
        let mut s = m.clone();
        for (name, v) in &labels {
            if let Some(x) = nth(v, k) {
                s.insert(name.to_string(), x);
            }
        }
        if let Some(Value::String(f)) = nth(&finish, k) {
            s.insert("finish_reason".into(), f.into());
        }
        if let Some(Value::Bool(pass)) = nth(&labels[0].1, k) {
            s.insert("verdict".into(), json!({"pass": pass, "reason": "correctness_math_verify"}));
        }
        set_sample(&mut s, &format!("{base}/{k}"), &base, k as u64, &text, msgs.clone(), &g);
        samples.push(RawRecord { value: s, loc: loc.clone(), span: None });
    }
    out.extend(samples);
    Ok(())
}

/// Applies `--map field=column`.
fn apply_map(m: &mut Map<String, Value>, map: &BTreeMap<String, String>) {
    for (field, column) in map {
        if field != column
            && let Some(v) = m.remove(column)
        {
            m.insert(field.clone(), v);
        }
    }
}

/// Normalises one record into `out`: distill's own records unchanged, public layouts
/// converted (a `generations` row into several samples). Returns the layout recognised.
pub fn normalize(rec: RawRecord, layouts: &Layouts, out: &mut VecDeque<RawRecord>) -> Result<Layout, StoreError> {
    let RawRecord { mut value, loc, span } = rec;
    // The line as written is the record only when nothing below changes it.
    let span = span.filter(|_| layouts.map.is_empty());
    if !layouts.map.is_empty() {
        apply_map(&mut value, &layouts.map);
    }
    let layout = detect(&value);
    let original = (layout != Layout::Native).then(|| value.clone());
    let done = match layout {
        Layout::Native => Ok(()),
        Layout::Messages => complete_messages(&mut value, &loc),
        Layout::ShareGpt => conversations_to_messages(&mut value).and_then(|()| complete_messages(&mut value, &loc)),
        Layout::Pair => pair(&mut value, &loc),
        Layout::Problem => problem(&mut value, &loc),
        Layout::Generations => return conv_err(generations(value, &loc, out), original, &loc).map(|()| layout),
    };
    conv_err(done, original, &loc)?;
    let span = span.filter(|_| layout == Layout::Native);
    out.push_back(RawRecord { value, loc, span });
    Ok(layout)
}

fn conv_err(r: Result<(), Bad>, original: Option<Map<String, Value>>, loc: &Loc) -> Result<(), StoreError> {
    r.map_err(|Bad(msg)| {
        let record = original.unwrap_or_default();
        let id = ["id", "uuid"].iter().find_map(|k| match record.get(*k) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        });
        StoreError::Layout { loc: loc.clone(), id: IdSuffix(id), msg, record: Box::new(record) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::Arc;

    fn loc() -> Loc {
        Loc { file: Arc::new(PathBuf::from("data/train-00000-of-00001.parquet")), line: 7 }
    }

    fn run(v: Value, map: &[(&str, &str)]) -> (Layout, Vec<Value>) {
        let layouts = Layouts::with_map(map.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect());
        let rec = RawRecord { value: v.as_object().cloned().expect("object"), loc: loc(), span: None };
        let mut out = VecDeque::new();
        let layout = normalize(rec, &layouts, &mut out).unwrap_or_else(|e| panic!("{e}"));
        (layout, out.into_iter().map(|r| Value::Object(r.value)).collect())
    }

    fn pick(v: &Value, keys: &[&str]) -> Value {
        Value::Object(keys.iter().map(|k| (k.to_string(), v.get(*k).cloned().unwrap_or(Value::Null))).collect())
    }

    #[test]
    fn native_records_are_untouched() {
        let cases = [
            json!({"id": "p", "task": "math", "prompt": "q", "answer": "2"}),
            json!({"id": "p/0", "prompt_id": "p", "sample": 0, "task": "open", "prompt": "q",
                   "messages": [{"role": "user", "content": "q"}], "content": "a"}),
            json!({"id": "p/0", "task": "math", "prompt_id": "p", "messages": [{"role": "user", "content": "q"}]}),
            // Not recognised: left for the stage's parse to name what is missing.
            json!({"id": "p9", "prompt": "q"}),
            json!({"task": "math", "prompt": "q"}),
            json!({"id": "x"}),
        ];
        for v in cases {
            let (layout, out) = run(v.clone(), &[]);
            assert_eq!((layout, out), (Layout::Native, vec![v.clone()]), "{v}");
        }
    }

    #[test]
    fn layouts_become_distill_records() {
        let think = "<think>\nadd them\n</think>\n\nSo \\boxed{4}";
        let ot = "<|begin_of_thought|>\n\nadd them\n\n<|end_of_thought|>\n\n<|begin_of_solution|>\n\n\\boxed{4}\n\n<|end_of_solution|>";
        let keys = ["id", "prompt_id", "sample", "task", "prompt", "reasoning", "content"];
        // (input, map, layout, fields wanted of the single output)
        type Case = (Value, &'static [(&'static str, &'static str)], Layout, Value);
        let cases: Vec<Case> = vec![
            (
                json!({"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": think}]}),
                &[],
                Layout::Messages,
                json!({"id": "train-00000-of-00001-7", "prompt_id": "train-00000-of-00001-7", "sample": 0,
                       "task": "open", "prompt": "2+2?", "reasoning": "add them", "content": "So \\boxed{4}"}),
            ),
            (
                json!({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"},
                       {"role": "assistant", "content": think}], "answer": 4, "id": "m1"}),
                &[],
                Layout::Messages,
                json!({"id": "m1", "prompt_id": "m1", "sample": 0, "task": "math", "prompt": "2+2?",
                       "reasoning": "add them", "content": "So \\boxed{4}"}),
            ),
            (
                json!({"system": "Your role as an assistant…", "conversations": [
                    {"from": "human", "value": "2+2?"}, {"from": "gpt", "value": ot}]}),
                &[],
                Layout::ShareGpt,
                json!({"id": "train-00000-of-00001-7", "prompt_id": "train-00000-of-00001-7", "sample": 0,
                       "task": "open", "prompt": "2+2?", "reasoning": "add them", "content": "\\boxed{4}"}),
            ),
            (
                json!({"prompt": "2+2?", "response": think}),
                &[],
                Layout::Pair,
                json!({"id": "train-00000-of-00001-7", "prompt_id": "train-00000-of-00001-7", "sample": 0,
                       "task": "open", "prompt": "2+2?", "reasoning": "add them", "content": "So \\boxed{4}"}),
            ),
            (
                json!({"instruction": "Add.", "input": "2 and 2", "output": "4"}),
                &[],
                Layout::Pair,
                json!({"id": "train-00000-of-00001-7", "prompt_id": "train-00000-of-00001-7", "sample": 0,
                       "task": "open", "prompt": "Add.\n\n2 and 2", "reasoning": "", "content": "4"}),
            ),
            (
                json!({"question": "2+2?", "answer": "It is 4.", "id": 12}),
                &[],
                Layout::Pair,
                json!({"id": "12", "prompt_id": "12", "sample": 0, "task": "open", "prompt": "2+2?",
                       "reasoning": "", "content": "It is 4."}),
            ),
            (
                json!({"prompt": [{"role": "user", "content": "2+2?"}],
                       "completion": [{"role": "assistant", "content": think}], "answer": "4"}),
                &[],
                Layout::Pair,
                json!({"id": "train-00000-of-00001-7", "prompt_id": "train-00000-of-00001-7", "sample": 0,
                       "task": "math", "prompt": "2+2?", "reasoning": "add them", "content": "So \\boxed{4}"}),
            ),
            (
                json!({"problem": "2+2?", "solution": "2+2=4", "answer": "4", "uuid": "u-1", "generations": []}),
                &[],
                Layout::Generations,
                json!({"id": "u-1", "prompt_id": null, "sample": null, "task": "math", "prompt": "2+2?",
                       "reasoning": null, "content": null}),
            ),
            (
                json!({"problem": "2+2?", "solution": "2+2=4", "source": "olympiads"}),
                &[],
                Layout::Problem,
                json!({"id": "train-00000-of-00001-7", "prompt_id": null, "sample": null, "task": "open",
                       "prompt": "2+2?", "reasoning": null, "content": null}),
            ),
            (
                json!({"q_text": "2+2?", "gold": "4", "trace": think, "qid": "a"}),
                &[("prompt", "q_text"), ("answer", "gold"), ("response", "trace"), ("id", "qid")],
                Layout::Pair,
                json!({"id": "a", "prompt_id": "a", "sample": 0, "task": "math", "prompt": "2+2?",
                       "reasoning": "add them", "content": "So \\boxed{4}"}),
            ),
        ];
        for (input, map, want_layout, want) in cases {
            let (layout, out) = run(input.clone(), map);
            assert_eq!(layout, want_layout, "{input}");
            assert_eq!(out.len(), 1, "{input}");
            assert_eq!(pick(&out[0], &keys), want, "{input}");
        }
    }

    #[test]
    fn sharegpt_turns_become_messages() {
        let (_, out) = run(
            json!({"system": "sys", "conversations": [{"from": "human", "value": "q"},
                   {"from": "gpt", "value": "<|begin_of_thought|>t<|end_of_thought|><|begin_of_solution|>a<|end_of_solution|>"}]}),
            &[],
        );
        assert_eq!(
            out[0]["messages"],
            json!([{"role": "system", "content": "sys"}, {"role": "user", "content": "q"},
                   {"role": "assistant", "content": "<think>\nt\n</think>\n\na"}])
        );
        assert!(out[0].get("conversations").is_none() && out[0].get("system").is_none());
    }

    #[test]
    fn generations_expand_with_their_labels() {
        let row = json!({"problem": "2+2?", "solution": "2+2=4", "answer": "4", "uuid": "u-1",
            "source": "olympiads", "problem_type": "Algebra",
            "generations": ["<think>\nadd\n</think>\n\n\\boxed{4}", "<think>\nguess\n</think>\n\n\\boxed{5}", "no think \\boxed{4}"],
            "correctness_math_verify": [true, false, true], "correctness_llama": null,
            "is_reasoning_complete": [true, true, false], "finish_reasons": ["stop", "stop", "length"],
            "messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "…"}]});
        let (layout, out) = run(row, &[]);
        assert_eq!(layout, Layout::Generations);
        let got: Vec<Value> = out
            .iter()
            .map(|s| {
                pick(
                    s,
                    &[
                        "id",
                        "prompt_id",
                        "sample",
                        "task",
                        "reasoning",
                        "content",
                        "finish_reason",
                        "verdict",
                        "is_reasoning_complete",
                    ],
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                json!({"id": "u-1/0", "prompt_id": "u-1", "sample": 0, "task": "math", "reasoning": "add",
                       "content": "\\boxed{4}", "finish_reason": "stop", "is_reasoning_complete": true,
                       "verdict": {"pass": true, "reason": "correctness_math_verify"}}),
                json!({"id": "u-1/1", "prompt_id": "u-1", "sample": 1, "task": "math", "reasoning": "guess",
                       "content": "\\boxed{5}", "finish_reason": "stop", "is_reasoning_complete": true,
                       "verdict": {"pass": false, "reason": "correctness_math_verify"}}),
                json!({"id": "u-1/2", "prompt_id": "u-1", "sample": 2, "task": "math", "reasoning": "",
                       "content": "no think \\boxed{4}", "finish_reason": "length", "is_reasoning_complete": false,
                       "verdict": {"pass": true, "reason": "correctness_math_verify"}}),
            ]
        );
        for s in &out {
            assert_eq!(s["messages"], json!([{"role": "user", "content": "2+2?"}]));
            assert_eq!(
                (s["prompt"].as_str(), s["solution"].as_str(), s["source"].as_str()),
                (Some("2+2?"), Some("2+2=4"), Some("olympiads"))
            );
            assert!(s.get("generations").is_none() && s.get("problem").is_none() && s.get("finish_reasons").is_none());
        }
    }

    #[test]
    fn broken_rows_are_errors_naming_line_and_fix() {
        let cases = [
            (json!({"messages": [{"role": "assistant", "content": "a"}]}), "no user turn"),
            (json!({"conversations": [{"speaker": "x"}]}), "conversations[0] has no `from`"),
            (json!({"problem": "q", "generations": ["a", 3], "uuid": "u"}), "(id u): generations[1] is a number"),
            (json!({"prompt": "q", "response": {"a": 1}}), "`response` is an object"),
        ];
        for (v, want) in cases {
            let rec = RawRecord { value: v.as_object().cloned().expect("object"), loc: loc(), span: None };
            let mut out = VecDeque::new();
            let e = normalize(rec, &Layouts::default(), &mut out).expect_err("must fail");
            let msg = e.to_string();
            assert!(msg.starts_with("data/train-00000-of-00001.parquet:7") && msg.contains(want), "{v}: {msg}");
            assert!(out.is_empty());
        }
    }

    #[test]
    fn markers() {
        let cases = [
            ("<|begin_of_thought|> t <|end_of_thought|> <|begin_of_solution|> a <|end_of_solution|>", Some(("t", "a"))),
            ("<|begin_of_thought|> t <|end_of_thought|> a", Some(("t", "a"))),
            ("<|begin_of_thought|> t <|begin_of_solution|> a", Some(("t", "a"))),
            ("<|begin_of_solution|> a <|end_of_solution|>", Some(("", "a"))),
            ("plain", None),
        ];
        for (text, want) in cases {
            assert_eq!(thought_markers(text), want, "{text}");
        }
    }
}
