//! The record schema, version 1 (DESIGN.md "Records").
//!
//! Every stage reads and writes these as one JSON object per line (or as Parquet columns of the
//! same names). Each struct keeps the fields it does not know in `extra`, so a record passes
//! through any stage with its unknown fields untouched.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// The schema version written into manifests.
pub const SCHEMA_VERSION: u32 = 1;

/// Fields a record type does not know, carried through untouched.
pub type Extra = Map<String, Value>;

/// What a prompt asks for; decides which verifier judges its samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Math,
    Code,
    Open,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Math => "math",
            Task::Code => "code",
            Task::Open => "open",
        }
    }
}

/// A problem to send to the teacher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prompt {
    pub id: String,
    pub task: Task,
    pub prompt: String,
    /// Gold answer (math). Numbers in the source file are kept as their JSON text.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "string_or_number")]
    pub answer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<CodeTests>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Value>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// How a code problem's tests are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TestKind {
    /// A test program (`check(candidate)` or bare asserts): HumanEval, MBPP.
    Assert,
    /// Feed `input` on stdin, compare stdout with `output`: APPS, TACO, Codeforces.
    Stdio,
    /// Call `fn_name` with JSON inputs, compare with JSON outputs: LeetCode style.
    Call,
}

fn default_language() -> String {
    "python".to_string()
}

/// The tests of a code prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeTests {
    pub kind: TestKind,
    #[serde(default = "default_language")]
    pub language: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_point: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cases: Option<Vec<TestCase>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fn_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// One input/output pair: strings for `stdio`, JSON values for `call`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestCase {
    pub input: Value,
    pub output: Value,
    #[serde(flatten)]
    pub extra: Extra,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Message { role: role.to_string(), content: content.into(), extra: Extra::new() }
    }
}

/// Token counts reported by the teacher.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

/// Which teacher produced a sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Teacher {
    pub model: String,
    pub endpoint: String,
}

/// Sampling parameters sent with the request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Params {
    pub temperature: f64,
    pub top_p: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// One teacher answer to one prompt: the prompt's fields plus the generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// `{prompt_id}/{k}`.
    pub id: String,
    pub prompt_id: String,
    /// k: which of the prompt's samples this is.
    pub sample: u32,
    pub task: Task,
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "string_or_number")]
    pub answer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<CodeTests>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Value>,
    /// Exactly what was sent.
    pub messages: Vec<Message>,
    /// The thinking, without the `<think>` tags.
    #[serde(default)]
    pub reasoning: String,
    /// The part after the thinking.
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    // Provenance: written by `collect` for every sample, absent from samples made elsewhere
    // (public datasets), so optional when read and left out when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<Teacher>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Params>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Sample {
    /// The id of sample `k` of prompt `prompt_id`.
    pub fn make_id(prompt_id: &str, k: u32) -> String {
        format!("{prompt_id}/{k}")
    }
}

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub pass: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A verifier's or filter's judgement of a sample.
///
/// `verify` fills `pass`, `extracted` and `reason`; `filter` fills `checks` and `kept`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extracted: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<String, Check>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Per-example statistics of the corpus.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SftMeta {
    /// Fraction of the prompt's samples that passed verification.
    #[serde(default)]
    pub pass_rate: f64,
    #[serde(default)]
    pub n_samples: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_tokens: Option<u64>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// One training example of the corpus, in the `messages` layout TRL and `datasets` read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftExample {
    pub id: String,
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub task: Task,
    pub prompt_id: String,
    #[serde(default)]
    pub meta: SftMeta,
    #[serde(flatten)]
    pub extra: Extra,
}

/// The DeepSeek-R1 recommendation for math prompts.
pub const DEFAULT_MATH_INSTRUCTION: &str = "Please reason step by step, and put your final answer within \\boxed{}.";

/// The messages a prompt is asked with: an optional system message, then the prompt with its
/// task's instruction appended after a blank line (none for `open`). `collect` asks the teacher
/// with these and `eval` asks the student the same, so a student is asked what it was taught.
pub fn prompt_messages(
    p: &Prompt,
    system: Option<&str>,
    math_instruction: &str,
    code_instruction: &str,
) -> Vec<Message> {
    let mut msgs = Vec::with_capacity(2);
    if let Some(sys) = system.filter(|s| !s.is_empty()) {
        msgs.push(Message::new("system", sys));
    }
    let instr = match p.task {
        Task::Math => math_instruction,
        Task::Code => code_instruction,
        Task::Open => "",
    };
    let text = if instr.is_empty() { p.prompt.clone() } else { format!("{}\n\n{instr}", p.prompt) };
    msgs.push(Message::new("user", text));
    msgs
}

/// The assistant turn of an SFT example: `<think>\n{reasoning}\n</think>\n\n{content}`.
pub fn assistant_turn(reasoning: &str, content: &str) -> String {
    // Sized once (`format!` would grow the buffer a doubling at a time through a long trace).
    let mut s = String::with_capacity(reasoning.len() + content.len() + 20);
    for part in ["<think>\n", reasoning, "\n</think>\n\n", content] {
        s.push_str(part);
    }
    s
}

/// Splits a response into (reasoning, answer): the text inside `<think>…</think>` and the text
/// after it. A response with no `</think>` has no reasoning; one whose opening `<think>` was
/// prefilled (missing) still splits at `</think>`.
pub fn split_thinking(text: &str) -> (&str, &str) {
    match text.find("</think>") {
        Some(end) => {
            let head = &text[..end];
            let reasoning = match head.find("<think>") {
                Some(start) => &head[start + "<think>".len()..],
                None => head,
            };
            (reasoning.trim(), text[end + "</think>".len()..].trim_start())
        }
        None => ("", text),
    }
}

/// The chat a record trains on (and is scored on): its `messages`, plus the assistant turn
/// built from `reasoning` and `content` when the messages end without one (a sample, whose
/// `messages` are what was sent). `None` when the record has no `messages` list.
pub fn training_messages(record: &Map<String, Value>) -> Option<std::borrow::Cow<'_, [Value]>> {
    let msgs = record.get("messages")?.as_array()?;
    let ends_with_answer = msgs.last().and_then(|m| m.get("role")).and_then(Value::as_str) == Some("assistant");
    match record.get("content").and_then(Value::as_str) {
        Some(content) if !ends_with_answer => {
            let reasoning = record.get("reasoning").and_then(Value::as_str).unwrap_or("");
            let mut chat = msgs.clone();
            chat.push(serde_json::json!({"role": "assistant", "content": assistant_turn(reasoning, content)}));
            Some(std::borrow::Cow::Owned(chat))
        }
        _ => Some(std::borrow::Cow::Borrowed(msgs)),
    }
}

/// Accepts a string, a number (kept as its JSON text) or null.
fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v = Option::<Value>::deserialize(d)?;
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(serde::de::Error::custom(format!("expected a string or a number, found {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn roundtrip<T: Serialize + for<'de> Deserialize<'de>>(v: Value) -> Value {
        let t: T = serde_json::from_value(v).expect("parses");
        serde_json::to_value(&t).expect("serialises")
    }

    #[test]
    fn prompt_keeps_unknown_fields() {
        let v = json!({"id": "p1", "task": "math", "prompt": "1+1?", "answer": "2",
                       "difficulty": 3, "nested": {"a": [1, 2]}});
        assert_eq!(roundtrip::<Prompt>(v.clone()), v);
    }

    #[test]
    fn numeric_answer_is_kept_as_text() {
        let p: Prompt =
            serde_json::from_value(json!({"id": "p", "task": "math", "prompt": "?", "answer": 42})).expect("parses");
        assert_eq!(p.answer.as_deref(), Some("42"));
    }

    #[test]
    fn code_tests_round_trip() {
        let v = json!({"id": "c1", "task": "code", "prompt": "write f",
            "tests": {"kind": "stdio", "language": "python",
                      "cases": [{"input": "1\n", "output": "2\n"}], "timeout_s": 2.0,
                      "custom": true}});
        assert_eq!(roundtrip::<Prompt>(v.clone()), v);
    }

    #[test]
    fn sample_and_sft_keep_unknown_fields() {
        let s = json!({"id": "p1/0", "prompt_id": "p1", "sample": 0, "task": "math",
            "prompt": "1+1?", "answer": "2",
            "messages": [{"role": "user", "content": "1+1?"}],
            "reasoning": "one plus one", "content": "\\boxed{2}", "finish_reason": "stop",
            "usage": {"prompt_tokens": 5, "completion_tokens": 7},
            "teacher": {"model": "r1", "endpoint": "http://127.0.0.1:1"},
            "params": {"temperature": 0.6, "top_p": 0.95, "max_tokens": 100},
            "latency_ms": 12, "request_sha256": "ab",
            "verdict": {"pass": true, "extracted": "2", "custom_check": 1},
            "shard_hint": "x"});
        assert_eq!(roundtrip::<Sample>(s.clone()), s);
        let e = json!({"id": "p1/0", "messages": [{"role": "user", "content": "q"},
            {"role": "assistant", "content": "<think>\nr\n</think>\n\na", "weight": 1}],
            "source": "gen", "task": "math", "prompt_id": "p1",
            "meta": {"pass_rate": 0.5, "n_samples": 4, "difficulty": "hard"}, "lang": "en"});
        assert_eq!(roundtrip::<SftExample>(e.clone()), e);
    }

    #[test]
    fn sample_without_provenance_parses_and_adds_none() {
        let s = json!({"id": "p1/0", "prompt_id": "p1", "sample": 0, "task": "math", "prompt": "1+1?",
            "messages": [{"role": "user", "content": "1+1?"}], "reasoning": "r", "content": "\\boxed{2}"});
        assert_eq!(roundtrip::<Sample>(s.clone()), s);
    }

    #[test]
    fn training_messages_of_each_kind() {
        let user = json!({"role": "user", "content": "q"});
        let turn = json!({"role": "assistant", "content": assistant_turn("r", "a")});
        let cases = [
            (json!({"messages": [user, turn]}), Some(json!([user, turn]))),
            (json!({"messages": [user], "reasoning": "r", "content": "a"}), Some(json!([user, turn]))),
            (json!({"messages": [user, turn], "reasoning": "x", "content": "y"}), Some(json!([user, turn]))),
            (json!({"messages": [user]}), Some(json!([user]))),
            (json!({"prompt": "q", "content": "a"}), None),
        ];
        for (v, want) in cases {
            let got = training_messages(v.as_object().expect("object")).map(|c| Value::Array(c.into_owned()));
            assert_eq!(got, want, "{v}");
        }
    }

    #[test]
    fn unknown_task_is_an_error() {
        let r: Result<Prompt, _> = serde_json::from_value(json!({"id": "p", "task": "poetry", "prompt": "?"}));
        let msg = r.expect_err("must fail").to_string();
        assert!(msg.contains("poetry"), "{msg}");
    }

    #[test]
    fn split_thinking_cases() {
        let cases = [
            ("<think>\nabc\n</think>\n\nanswer", "abc", "answer"),
            ("abc\n</think>\nanswer", "abc", "answer"),
            ("no thinking here", "", "no thinking here"),
            ("<think>unclosed", "", "<think>unclosed"),
        ];
        for (text, r, a) in cases {
            assert_eq!(split_thinking(text), (r, a), "{text:?}");
        }
        assert_eq!(split_thinking(&assistant_turn("r", "a")), ("r", "a"));
    }
}
