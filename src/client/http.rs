//! The HTTP client for `POST {endpoint}/chat/completions`: reqwest (hyper underneath) with a
//! keep-alive pool, HTTP/2 where the server offers it, gzip, proxies from the environment, and
//! rustls (ring) trusting the roots [`super::tls`] assembles; non-streaming and SSE streaming
//! answers, and reasoning extraction from `reasoning_content` (or `reasoning`) or inline
//! `<think>…</think>`.

use std::borrow::Cow;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use reqwest::Url;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use serde::Deserialize;

use super::retry::{AttemptError, parse_retry_after};
use super::tls::{self, ClientError};
use crate::record::split_thinking;

/// One completion choice as received.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Choice {
    pub content: String,
    pub reasoning_content: Option<String>,
    pub finish_reason: Option<String>,
}

/// A parsed chat completion.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Completion {
    /// By choice index (0..n).
    pub choices: Vec<Choice>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
}

/// A pooled client shared by all requests.
pub struct Client {
    inner: reqwest::Client,
    auth: Option<HeaderValue>,
    /// The key itself, to scrub it from any text an error carries.
    secret: Option<String>,
    timeout: Duration,
}

impl Client {
    /// A client sending `api_key` as a bearer token, giving each attempt `timeout`, keeping up to
    /// `pool` idle connections per host, and trusting `ca_cert`'s roots besides the bundled and
    /// the system's ones. Proxies come from the environment (`HTTPS_PROXY`, `NO_PROXY`, ...).
    pub fn new(
        api_key: Option<String>,
        timeout: Duration,
        pool: usize,
        ca_cert: Option<&Path>,
    ) -> Result<Client, ClientError> {
        let inner = reqwest::Client::builder()
            .tls_backend_preconfigured(tls::client_config(ca_cert)?)
            .user_agent(concat!("distill/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(pool.max(1))
            .pool_idle_timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(20))
            .tcp_nodelay(true)
            .http2_adaptive_window(true)
            // A redirect is answered as what it is (a non-2xx status), as before.
            .redirect(reqwest::redirect::Policy::none())
            // Retries are the caller's (`retry`); this also spares reqwest cloning every
            // request's headers in case of a retry of its own.
            .retry(reqwest::retry::never().max_retries_per_request(0))
            .build()
            .map_err(|e| ClientError::Build(error_chain(&e)))?;
        let auth = api_key.as_ref().and_then(|k| {
            let mut v = HeaderValue::from_str(&format!("Bearer {k}")).ok()?;
            v.set_sensitive(true);
            Some(v)
        });
        Ok(Client { inner, auth, secret: api_key.filter(|k| !k.is_empty()), timeout })
    }

    /// Removes the API key from text that came from the network or from error values.
    pub fn scrub(&self, text: &str) -> String {
        match &self.secret {
            Some(k) if text.contains(k.as_str()) => text.replace(k.as_str(), "[redacted]"),
            _ => text.to_string(),
        }
    }

    /// Classifies a transport error of one attempt.
    fn transport_error(&self, e: reqwest::Error) -> AttemptError {
        let e = e.without_url();
        if let Some(cert) = tls::certificate_error(&e) {
            return AttemptError::Tls(self.scrub(&cert));
        }
        let msg = self.scrub(&error_chain(&e));
        // rustls' text, should a layer carry the error only as text.
        if let Some(i) = msg.find("invalid peer certificate") {
            return AttemptError::Tls(msg[i..].to_string());
        }
        if e.is_connect() {
            AttemptError::Connect(msg)
        } else if e.is_timeout() {
            AttemptError::Timeout
        } else {
            AttemptError::Dropped(msg)
        }
    }

    /// One attempt: sends `body` to `url` and reads the whole answer.
    pub async fn complete(&self, url: &Url, body: Bytes, stream: bool) -> Result<Completion, AttemptError> {
        let mut req = self
            .inner
            .post(url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, if stream { "text/event-stream" } else { "application/json" })
            .body(body);
        if let Some(a) = &self.auth {
            req = req.header(AUTHORIZATION, a.clone());
        }
        let resp = match tokio::time::timeout(self.timeout, req.send()).await {
            Err(_) => return Err(AttemptError::Timeout),
            Ok(Err(e)) => return Err(self.transport_error(e)),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        if !status.is_success() {
            let retry_after = resp.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
            let text = match tokio::time::timeout(self.timeout, resp.bytes()).await {
                Ok(Ok(b)) => snippet(&b),
                _ => String::new(),
            };
            return Err(AttemptError::Status { code: status.as_u16(), retry_after, body: self.scrub(&text) });
        }
        if stream {
            self.read_sse(resp).await
        } else {
            let bytes = match tokio::time::timeout(self.timeout, resp.bytes()).await {
                Err(_) => return Err(AttemptError::Timeout),
                Ok(Err(e)) => return Err(AttemptError::Dropped(self.scrub(&error_chain(&e.without_url())))),
                Ok(Ok(b)) => b,
            };
            parse_completion(&bytes).map_err(|m| AttemptError::InvalidResponse(self.scrub(&m)))
        }
    }

    /// Reads an SSE answer; the timeout applies to the gap between events.
    async fn read_sse(&self, mut resp: reqwest::Response) -> Result<Completion, AttemptError> {
        let mut acc = SseAccumulator::default();
        let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
        loop {
            let data = match tokio::time::timeout(self.timeout, resp.chunk()).await {
                Err(_) => return Err(AttemptError::Timeout),
                Ok(Ok(None)) => break,
                Ok(Err(e)) => return Err(AttemptError::Dropped(self.scrub(&error_chain(&e.without_url())))),
                Ok(Ok(Some(d))) => d,
            };
            buf.extend_from_slice(&data);
            let mut start = 0;
            while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
                let line = &buf[start..start + nl];
                start += nl + 1;
                acc.line(line).map_err(|m| AttemptError::InvalidResponse(self.scrub(&m)))?;
            }
            buf.drain(..start);
            if acc.done {
                break;
            }
        }
        if !buf.is_empty() {
            let rest = std::mem::take(&mut buf);
            acc.line(&rest).map_err(|m| AttemptError::InvalidResponse(self.scrub(&m)))?;
        }
        acc.finish()
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let text = c.to_string();
        // reqwest and hyper repeat their source's text in their own.
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        src = c.source();
    }
    s
}

/// The first 300 characters of a body, on one line.
fn snippet(b: &[u8]) -> String {
    let text = String::from_utf8_lossy(b);
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    one_line.chars().take(300).collect()
}

#[derive(Deserialize)]
struct UsageIn {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct MessageIn {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
}

#[derive(Deserialize)]
struct ChoiceIn {
    #[serde(default)]
    index: u32,
    message: MessageIn,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct CompletionIn {
    choices: Vec<ChoiceIn>,
    #[serde(default)]
    usage: Option<UsageIn>,
}

/// Parses a non-streaming chat completion.
pub fn parse_completion(bytes: &[u8]) -> Result<Completion, String> {
    let c: CompletionIn =
        serde_json::from_slice(bytes).map_err(|e| match serde_json::from_slice::<serde_json::Value>(bytes) {
            Ok(v) if v.get("error").is_some() => {
                format!("error object: {}", snippet(v["error"].to_string().as_bytes()))
            }
            Ok(_) => format!("not a chat completion ({e}): {}", snippet(bytes)),
            Err(_) => format!("not JSON: {}", snippet(bytes)),
        })?;
    if c.choices.is_empty() {
        return Err("the answer has no choices".to_string());
    }
    let mut chs = c.choices;
    chs.sort_by_key(|c| c.index);
    let usage = c.usage;
    Ok(Completion {
        choices: chs
            .into_iter()
            .map(|ch| Choice {
                content: ch.message.content.unwrap_or_default(),
                reasoning_content: ch.message.reasoning_content.or(ch.message.reasoning),
                finish_reason: ch.finish_reason,
            })
            .collect(),
        prompt_tokens: usage.as_ref().and_then(|u| u.prompt_tokens),
        completion_tokens: usage.as_ref().and_then(|u| u.completion_tokens),
    })
}

#[derive(Deserialize)]
struct DeltaIn<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ChunkChoiceIn<'a> {
    #[serde(default)]
    index: u32,
    #[serde(default, borrow)]
    delta: Option<DeltaIn<'a>>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChunkIn<'a> {
    #[serde(default, borrow)]
    choices: Vec<ChunkChoiceIn<'a>>,
    #[serde(default)]
    usage: Option<UsageIn>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Default)]
struct ChoiceAcc {
    content: String,
    reasoning: String,
    saw_reasoning: bool,
    finish_reason: Option<String>,
}

/// More choices than any server sends: a guard against garbage indices.
const MAX_CHOICES: usize = 128;

/// Accumulates the events of an SSE chat completion (every choice index).
#[derive(Default)]
pub struct SseAccumulator {
    choices: Vec<ChoiceAcc>,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    events: u64,
    pub done: bool,
}

impl SseAccumulator {
    /// Feeds one line (without its newline).
    pub fn line(&mut self, line: &[u8]) -> Result<(), String> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else { return Ok(()) };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        if data == b"[DONE]" {
            self.done = true;
            return Ok(());
        }
        let chunk: ChunkIn<'_> =
            serde_json::from_slice(data).map_err(|e| format!("bad stream event ({e}): {}", snippet(data)))?;
        if let Some(err) = chunk.error {
            return Err(format!("error event: {}", snippet(err.to_string().as_bytes())));
        }
        self.events += 1;
        if let Some(u) = chunk.usage {
            self.prompt_tokens = u.prompt_tokens.or(self.prompt_tokens);
            self.completion_tokens = u.completion_tokens.or(self.completion_tokens);
        }
        for c in chunk.choices {
            let i = c.index as usize;
            if i >= MAX_CHOICES {
                return Err(format!("choice index {i} is out of range"));
            }
            if self.choices.len() <= i {
                self.choices.resize_with(i + 1, ChoiceAcc::default);
            }
            let acc = &mut self.choices[i];
            if let Some(d) = c.delta {
                if let Some(t) = d.content {
                    acc.content.push_str(&t);
                }
                if let Some(t) = d.reasoning_content.or(d.reasoning) {
                    acc.saw_reasoning = true;
                    acc.reasoning.push_str(&t);
                }
            }
            if c.finish_reason.is_some() {
                acc.finish_reason = c.finish_reason;
            }
        }
        Ok(())
    }

    /// The completion, if the stream ended properly.
    pub fn finish(self) -> Result<Completion, AttemptError> {
        if self.choices.is_empty() {
            return Err(if self.events == 0 {
                AttemptError::InvalidResponse("the stream carried no completion events".into())
            } else {
                AttemptError::Dropped("the stream ended before any choice".into())
            });
        }
        if self.choices.iter().any(|c| c.finish_reason.is_none()) {
            return Err(AttemptError::Dropped("the stream ended before a finish_reason".into()));
        }
        Ok(Completion {
            choices: self
                .choices
                .into_iter()
                .map(|c| Choice {
                    content: c.content,
                    reasoning_content: c.saw_reasoning.then_some(c.reasoning),
                    finish_reason: c.finish_reason,
                })
                .collect(),
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
        })
    }
}

/// Splits a choice into (reasoning, content). With `reasoning_content`, that is the reasoning
/// (trimmed) and `content` the answer (leading whitespace removed). Inline: the text inside
/// `<think>…</think>` (the opening tag may have been prefilled and be missing) and the text after
/// it; a `<think>` never closed makes everything reasoning with an empty answer (as the vLLM and
/// SGLang reasoning parsers do); text without tags is all answer.
pub fn extract(choice: &Choice) -> (String, String) {
    if let Some(rc) = choice.reasoning_content.as_deref().filter(|r| !r.trim().is_empty()) {
        return (rc.trim().to_string(), choice.content.trim_start().to_string());
    }
    let content = choice.content.as_str();
    if content.contains("</think>") {
        let (r, a) = split_thinking(content);
        return (r.to_string(), a.to_string());
    }
    if let Some(rest) = content.trim_start().strip_prefix("<think>") {
        return (rest.trim().to_string(), String::new());
    }
    (String::new(), content.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(content: &str, rc: Option<&str>) -> Choice {
        Choice { content: content.into(), reasoning_content: rc.map(str::to_string), finish_reason: None }
    }

    #[test]
    fn extraction_cases() {
        let cases = [
            (ch("<think>\nabc\n</think>\n\nThe answer", None), ("abc", "The answer")),
            (ch("abc\n</think>\n\nThe answer", None), ("abc", "The answer")),
            (ch("The answer", Some("\nabc\n")), ("abc", "The answer")),
            (ch("\n\nThe answer", Some("abc")), ("abc", "The answer")),
            (ch("<think>\nabc unfinished", None), ("abc unfinished", "")),
            (ch("", Some("abc unfinished")), ("abc unfinished", "")),
            (ch("plain answer", None), ("", "plain answer")),
            (ch("plain answer", Some("")), ("", "plain answer")),
        ];
        for (c, (r, a)) in cases {
            assert_eq!(extract(&c), (r.to_string(), a.to_string()), "{c:?}");
        }
    }

    #[test]
    fn parses_completions() {
        let ok = br#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"hi","reasoning_content":"r"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
        let c = parse_completion(ok).expect("parses");
        assert_eq!((c.choices[0].content.as_str(), c.choices[0].reasoning_content.as_deref()), ("hi", Some("r")));
        assert_eq!((c.prompt_tokens, c.completion_tokens), (Some(3), Some(4)));
        let cases: [(&[u8], &str); 4] = [
            (b"<html>502</html>", "not JSON"),
            (br#"{"error":{"message":"bad"}}"#, "error object"),
            (br#"{"choices":[]}"#, "no choices"),
            (br#"{"object":"list"}"#, "not a chat completion"),
        ];
        for (body, want) in cases {
            let e = parse_completion(body).expect_err("fails");
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn sse_accumulates() {
        let mut a = SseAccumulator::default();
        let lines = [
            r#"data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
            "",
            r#"data: {"choices":[{"index":0,"delta":{"reasoning_content":"think \"hard\""}}]}"#,
            ": keep-alive comment",
            r#"data: {"choices":[{"index":0,"delta":{"content":"ans"}}]}"#,
            r#"data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#,
            r#"data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":6}}"#,
            "data: [DONE]",
        ];
        for l in lines {
            a.line(l.as_bytes()).expect("line");
        }
        assert!(a.done);
        let c = a.finish().expect("complete");
        assert_eq!(c.choices[0].reasoning_content.as_deref(), Some("think \"hard\""));
        assert_eq!((c.choices[0].content.as_str(), c.choices[0].finish_reason.as_deref()), ("ans", Some("length")));
        assert_eq!(c.completion_tokens, Some(6));
        let mut cut = SseAccumulator::default();
        cut.line(lines[2].as_bytes()).expect("line");
        assert_eq!(cut.finish().expect_err("cut").reason(), "dropped");
        let mut two = SseAccumulator::default();
        for l in [
            r#"data: {"choices":[{"index":1,"delta":{"content":"b"}}]}"#,
            r#"data: {"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":"stop"}]}"#,
            r#"data: {"choices":[{"index":1,"delta":{},"finish_reason":"length"}]}"#,
        ] {
            two.line(l.as_bytes()).expect("line");
        }
        let c = two.finish().expect("two choices");
        let got: Vec<(&str, Option<&str>)> =
            c.choices.iter().map(|c| (c.content.as_str(), c.finish_reason.as_deref())).collect();
        assert_eq!(got, [("a", Some("stop")), ("b", Some("length"))]);
        let mut bad = SseAccumulator::default();
        assert!(bad.line(b"data: {not json").is_err());
    }
}
