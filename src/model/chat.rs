//! Chat templates and assistant-only loss masks.
//!
//! In: an SFT example's `messages` (`[{role, content}, ...]`) and a model directory's
//! tokenizer files (`tokenizer.json`, `tokenizer_config.json` or `chat_template.jinja`,
//! `generation_config.json`). Out: token ids and a mask covering exactly the assistant turns,
//! each including its end-of-turn token (so the student learns to stop).
//!
//! The template is rendered with minijinja configured as transformers configures Jinja2
//! (trim_blocks, lstrip_blocks, Python string methods, a `tojson` like `json.dumps`,
//! `raise_exception`), so the text and ids equal `apply_chat_template`'s.

use std::path::{Path, PathBuf};

use minijinja::value::{Kwargs, Serde, Value as JValue};
use minijinja::{Environment, ErrorKind};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("chat template: {0}")]
    Template(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{0}")]
    Eos(String),
    #[error("messages: {0}")]
    Messages(String),
}

fn file_err(path: &Path, msg: impl Into<String>) -> TokenizeError {
    TokenizeError::File { path: path.to_path_buf(), msg: msg.into() }
}

fn read_json(path: &Path) -> Result<Option<Value>, TokenizeError> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| TokenizeError::Io { path: path.to_path_buf(), source: e })?;
    serde_json::from_str(&text).map(Some).map_err(|e| file_err(path, format!("not valid JSON: {e}")))
}

/// A special token in `tokenizer_config.json`: a string or an AddedToken object.
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

fn ids_of(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_u64().map(|x| x as u32)).collect(),
        _ => vec![],
    }
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=..., sort_keys=...)`.
pub fn py_json_dumps(v: &Value, indent: Option<usize>, sort_keys: bool) -> String {
    fn esc(s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{08}' => out.push_str("\\b"),
                '\u{0c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    fn num(n: &serde_json::Number) -> String {
        if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
            if f.is_finite() && f == f.trunc() && f.abs() < 1e16 {
                return format!("{f:.1}");
            }
            // Python's repr(float): shortest round-trip, exponent as e+XX / e-XX.
            let s = format!("{f:?}");
            if let Some((m, e)) = s.split_once('e') {
                let e: i32 = e.parse().unwrap_or(0);
                return format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
            }
            return s;
        }
        n.to_string()
    }
    fn go(v: &Value, indent: Option<usize>, sort: bool, depth: usize, out: &mut String) {
        let nl = |out: &mut String, d: usize| {
            if let Some(i) = indent {
                out.push('\n');
                out.push_str(&" ".repeat(i * d));
            }
        };
        let item_sep = if indent.is_some() { "," } else { ", " };
        match v {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Number(n) => out.push_str(&num(n)),
            Value::String(s) => esc(s, out),
            Value::Array(a) => {
                if a.is_empty() {
                    out.push_str("[]");
                    return;
                }
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push_str(item_sep);
                    }
                    nl(out, depth + 1);
                    go(x, indent, sort, depth + 1, out);
                }
                nl(out, depth);
                out.push(']');
            }
            Value::Object(m) => {
                if m.is_empty() {
                    out.push_str("{}");
                    return;
                }
                out.push('{');
                let mut entries: Vec<(&String, &Value)> = m.iter().collect();
                if sort {
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                }
                for (i, (k, x)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push_str(item_sep);
                    }
                    nl(out, depth + 1);
                    esc(k, out);
                    out.push_str(": ");
                    go(x, indent, sort, depth + 1, out);
                }
                nl(out, depth);
                out.push('}');
            }
        }
    }
    let mut out = String::new();
    go(v, indent, sort_keys, 0, &mut out);
    out
}

fn tojson(v: JValue, kwargs: Kwargs) -> Result<JValue, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&v)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    Ok(JValue::from_safe_string(py_json_dumps(&json, indent, sort_keys.unwrap_or(false))))
}

fn raise_exception(msg: String) -> Result<JValue, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

fn strftime_now(fmt: String) -> String {
    // Templates use it for "Today Date" lines; a fixed clock keeps rendering deterministic.
    let _ = fmt;
    "26 Jul 2024".to_string()
}

/// Token ids with the assistant mask (1 = the model is trained to produce this token).
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub assistant_mask: Vec<u8>,
}

impl Encoded {
    /// Next-token targets and weights for the loss: position `t` predicts `ids[t+1]`, with
    /// weight 1 when that token is an assistant token.
    pub fn targets(&self) -> (Vec<u32>, Vec<f32>) {
        let n = self.ids.len();
        let targets = (0..n).map(|t| if t + 1 < n { self.ids[t + 1] } else { 0 }).collect();
        let weights = (0..n).map(|t| if t + 1 < n && self.assistant_mask[t + 1] == 1 { 1.0 } else { 0.0 }).collect();
        (targets, weights)
    }
}

/// A tokenizer with its chat template and special tokens.
pub struct ChatTokenizer {
    pub tokenizer: tokenizers::Tokenizer,
    env: Environment<'static>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub unk_token: Option<String>,
    /// `eos_token_id` from `generation_config.json` (int or list), if present.
    pub generation_eos_ids: Vec<u32>,
    source: PathBuf,
}

impl ChatTokenizer {
    /// Reads `DIR/tokenizer.json`, the chat template (`chat_template.jinja`, or
    /// `tokenizer_config.json`'s `chat_template`), special tokens and `generation_config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizeError> {
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| file_err(&tok_path, e.to_string()))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg = read_json(&cfg_path)?.unwrap_or(Value::Null);
        let jinja = dir.join("chat_template.jinja");
        let template = if jinja.is_file() {
            std::fs::read_to_string(&jinja).map_err(|e| TokenizeError::Io { path: jinja.clone(), source: e })?
        } else {
            match cfg.get("chat_template") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .and_then(|t| t.get("template").and_then(Value::as_str))
                    .map(str::to_string)
                    .ok_or_else(|| file_err(&cfg_path, "chat_template list has no `default` entry"))?,
                _ => {
                    return Err(file_err(
                        dir,
                        "no chat template (neither chat_template.jinja nor tokenizer_config.json's chat_template); \
                         copy the instruct model's template into the directory",
                    ));
                }
            }
        };
        let gen_eos =
            read_json(&dir.join("generation_config.json"))?.map(|g| ids_of(g.get("eos_token_id"))).unwrap_or_default();
        let mut t = Self::new(tokenizer, &template, dir)?;
        t.bos_token = token_text(cfg.get("bos_token"));
        t.eos_token = token_text(cfg.get("eos_token"));
        t.pad_token = token_text(cfg.get("pad_token"));
        t.unk_token = token_text(cfg.get("unk_token"));
        t.generation_eos_ids = gen_eos;
        Ok(t)
    }

    /// A chat tokenizer from parts (special tokens unset; set the public fields).
    pub fn new(tokenizer: tokenizers::Tokenizer, template: &str, source: &Path) -> Result<Self, TokenizeError> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| TokenizeError::Template(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned("chat", template.to_string())
            .map_err(|e| TokenizeError::Template(format!("{}: {e}", source.display())))?;
        Ok(ChatTokenizer {
            tokenizer,
            env,
            bos_token: None,
            eos_token: None,
            pad_token: None,
            unk_token: None,
            generation_eos_ids: vec![],
            source: source.to_path_buf(),
        })
    }

    /// Renders the template like `apply_chat_template(messages, tokenize=False, ...)`.
    pub fn render(
        &self,
        messages: &[Value],
        tools: Option<&Value>,
        add_generation_prompt: bool,
    ) -> Result<String, TokenizeError> {
        let tmpl = self.env.get_template("chat").map_err(|e| TokenizeError::Template(e.to_string()))?;
        let ctx = minijinja::context! {
            messages => JValue::from(Serde(messages)),
            tools => tools.map(|t| JValue::from(Serde(t))),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
            pad_token => self.pad_token.clone(),
            unk_token => self.unk_token.clone(),
        };
        tmpl.render(ctx).map_err(|e| {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            TokenizeError::Template(format!("{} ({})", msg, self.source.display()))
        })
    }

    /// Encodes text without adding special tokens (the template already contains them).
    pub fn encode(&self, text: &str) -> Result<tokenizers::Encoding, TokenizeError> {
        self.tokenizer.encode(text, false).map_err(|e| TokenizeError::Tokenizer(e.to_string()))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// The token the template closes an assistant turn with (found by rendering a probe).
    pub fn end_of_turn_token(&self) -> Result<u32, TokenizeError> {
        let user = serde_json::json!({"role": "user", "content": "Hi"});
        let content = "Hello there";
        let asst = serde_json::json!({"role": "assistant", "content": content});
        let prompt = self.render(std::slice::from_ref(&user), None, true)?;
        let full = self.render(&[user, asst], None, false)?;
        let Some(tail) = full.strip_prefix(&prompt) else {
            return Err(TokenizeError::Template(
                "rendering with add_generation_prompt is not a prefix of the rendered conversation".into(),
            ));
        };
        let Some(at) = tail.find(content) else {
            return Err(TokenizeError::Template("the template drops assistant content".into()));
        };
        let content_end = prompt.len() + at + content.len();
        let enc = self.encode(&full)?;
        enc.get_offsets().iter().zip(enc.get_ids()).find(|((s, _), _)| *s >= content_end).map(|(_, &id)| id).ok_or_else(
            || {
                TokenizeError::Template(
                    "the template adds no token after an assistant turn, so a model could never learn to stop".into(),
                )
            },
        )
    }

    /// Checks that the template's end-of-turn token is one generation stops at: the
    /// tokenizer's EOS or listed in `generation_config.json`. Refuses otherwise (a model
    /// trained so never stops generating). Returns the end-of-turn token id.
    pub fn check_eos(&self) -> Result<u32, TokenizeError> {
        let end = self.end_of_turn_token()?;
        let end_text = self.tokenizer.id_to_token(end).unwrap_or_default();
        let eos_id = self.eos_token.as_deref().and_then(|t| self.token_to_id(t));
        if eos_id == Some(end) || self.generation_eos_ids.contains(&end) {
            return Ok(end);
        }
        Err(TokenizeError::Eos(format!(
            "{}: the chat template ends assistant turns with {end_text:?} (id {end}), but generation stops at the \
             tokenizer's eos_token {:?} (id {}) and generation_config.json's eos_token_id {:?}; a model trained on \
             this would never stop generating. Add {end} to eos_token_id in generation_config.json (or set eos_token \
             to {end_text:?} in tokenizer_config.json).",
            self.source.display(),
            self.eos_token.as_deref().unwrap_or("(none)"),
            eos_id.map(|i| i.to_string()).unwrap_or_else(|| "none".into()),
            self.generation_eos_ids,
        )))
    }

    /// Renders `messages` and returns ids with the assistant mask: each assistant turn's
    /// tokens from its content through the template's end-of-turn token, inclusive.
    pub fn encode_chat(&self, messages: &[Value], tools: Option<&Value>) -> Result<Encoded, TokenizeError> {
        for (i, m) in messages.iter().enumerate() {
            if m.get("role").and_then(Value::as_str).is_none() {
                return Err(TokenizeError::Messages(format!("message {i} has no string `role`")));
            }
        }
        let end = self.end_of_turn_token()?;
        let text = self.render(messages, tools, false)?;
        let mut spans = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if m.get("role").and_then(Value::as_str) != Some("assistant") {
                continue;
            }
            let prefix = self.render(&messages[..i], tools, true)?;
            let upto = self.render(&messages[..=i], tools, false)?;
            if !upto.starts_with(&prefix) || !text.starts_with(&upto) {
                return Err(TokenizeError::Messages(format!(
                    "assistant message {i}: the template renders earlier turns differently once later turns follow \
                     (e.g. it strips their reasoning), so its tokens cannot be located; train on single-turn examples"
                )));
            }
            spans.push((prefix.len(), upto.len(), i));
        }
        let enc = self.encode(&text)?;
        let ids = enc.get_ids().to_vec();
        let offsets = enc.get_offsets();
        let mut mask = vec![0u8; ids.len()];
        for (start, stop, i) in spans {
            let mut closed = false;
            for (k, &(s, _)) in offsets.iter().enumerate() {
                if s >= start && s < stop {
                    mask[k] = 1;
                    if ids[k] == end {
                        closed = true;
                        break;
                    }
                }
            }
            if !closed {
                return Err(TokenizeError::Messages(format!(
                    "assistant message {i}: the end-of-turn token (id {end}) was not found after its content"
                )));
            }
        }
        Ok(Encoded { ids, assistant_mask: mask })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_dumps_like_python() {
        let cases = vec![
            (
                json!({"a": 1, "b": [1.5, true, null], "c": "é\"\n"}),
                None,
                "{\"a\": 1, \"b\": [1.5, true, null], \"c\": \"é\\\"\\n\"}",
            ),
            (json!({"x": 2.0, "y": {}}), None, "{\"x\": 2.0, \"y\": {}}"),
            (json!([1, {"k": []}]), Some(2), "[\n  1,\n  {\n    \"k\": []\n  }\n]"),
            (json!({"tab": "\t\u{1}"}), None, "{\"tab\": \"\\t\\u0001\"}"),
            (json!(1e-7), None, "1e-07"),
            (json!(1.0e20), None, "1e+20"),
        ];
        for (v, indent, want) in cases {
            assert_eq!(py_json_dumps(&v, indent, false), want, "{v}");
        }
        assert_eq!(py_json_dumps(&json!({"b": 1, "a": 2}), None, true), "{\"a\": 2, \"b\": 1}");
    }
}
