//! `distill teacher-sim`: a simulated R1-style teacher behind an OpenAI-compatible HTTP API on
//! loopback, for the offline demo and the tests; HTTPS (HTTP/2 or HTTP/1.1) with `tls_cert` and
//! `tls_key`, for the client's proxy and private-CA tests.
//!
//! In: `POST /v1/chat/completions` (or `/chat/completions`) requests. Out: chat completions
//! whose `<think>` reasoning and `\boxed{}` / fenced-program answers solve the problems of
//! [`crate::problems`] (other prompts get a generic trace), either inline (`<think>…</think>` in
//! `content`) or as `reasoning_content`, streamed (SSE) or not.
//!
//! Determinism: a completion depends only on the simulator's seed, the request body (minus
//! `stream`/`stream_options`) and the choice index, so streaming and non-streaming requests,
//! and both shapes, carry the same text. Content faults (`wrong`, `langmix`, `repeat`,
//! `truncate`, `no_close`) are drawn from that same seed, so a retried request gets the same
//! answer; transport faults (`http429`, `http500`, `drop`, `slow`, `nonjson`) are drawn per
//! attempt, so retries can succeed.

pub mod phrases;
mod server;
pub mod trace;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use server::{RunningSim, serve, spawn};
pub use trace::{ContentFaults, Shape};

/// Fault probabilities, each in [0, 1].
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Faults {
    /// Wrong final answer (or subtly wrong program).
    #[serde(default)]
    pub wrong: f64,
    /// Chinese sentences mixed into the reasoning.
    #[serde(default)]
    pub langmix: f64,
    /// A sentence repeated dozens of times.
    #[serde(default)]
    pub repeat: f64,
    /// Cut mid-reasoning with `finish_reason: length`.
    #[serde(default)]
    pub truncate: f64,
    /// No `</think>`: everything is one unclosed thought.
    #[serde(default)]
    pub no_close: f64,
    /// HTTP 429 with `Retry-After`.
    #[serde(default)]
    pub http429: f64,
    /// HTTP 500.
    #[serde(default)]
    pub http500: f64,
    /// Connection dropped mid-body.
    #[serde(default)]
    pub drop: f64,
    /// Response delayed by `slow_ms`.
    #[serde(default)]
    pub slow: f64,
    /// HTTP 200 with an HTML body instead of JSON.
    #[serde(default)]
    pub nonjson: f64,
}

impl Faults {
    /// Parses `wrong=0.3,http429=0.1,...`.
    pub fn parse(spec: &str) -> Result<Faults, SimError> {
        let mut map = BTreeMap::new();
        for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| SimError::Faults {
                spec: spec.to_string(),
                msg: format!("`{part}` is not NAME=PROBABILITY"),
            })?;
            let p: f64 = v.trim().parse().ok().filter(|p: &f64| (0.0..=1.0).contains(p)).ok_or_else(|| {
                SimError::Faults { spec: spec.to_string(), msg: format!("`{v}` is not a probability in [0, 1]") }
            })?;
            map.insert(k.trim().to_string(), p);
        }
        let mut f = Faults::default();
        for (k, p) in map {
            let slot = match k.as_str() {
                "wrong" => &mut f.wrong,
                "langmix" => &mut f.langmix,
                "repeat" => &mut f.repeat,
                "truncate" => &mut f.truncate,
                "no_close" => &mut f.no_close,
                "http429" => &mut f.http429,
                "http500" => &mut f.http500,
                "drop" => &mut f.drop,
                "slow" => &mut f.slow,
                "nonjson" => &mut f.nonjson,
                other => {
                    return Err(SimError::Faults {
                        spec: spec.to_string(),
                        msg: format!(
                            "unknown fault `{other}`; known: wrong, langmix, repeat, truncate, no_close, http429, http500, drop, slow, nonjson"
                        ),
                    });
                }
            };
            *slot = p;
        }
        if f.http429 + f.http500 + f.drop + f.slow + f.nonjson > 1.0 {
            return Err(SimError::Faults {
                spec: spec.to_string(),
                msg: "http429 + http500 + drop + slow + nonjson must not exceed 1".into(),
            });
        }
        Ok(f)
    }

    pub fn content(&self) -> ContentFaults {
        ContentFaults {
            wrong: self.wrong,
            langmix: self.langmix,
            repeat: self.repeat,
            truncate: self.truncate,
            no_close: self.no_close,
        }
    }
}

/// Settings of `distill teacher-sim`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    pub host: String,
    /// 0 picks a free port; the address is printed on the first line of stdout.
    pub port: u16,
    pub seed: u64,
    pub faults: Faults,
    pub shape: Shape,
    /// Delay of every response, in milliseconds.
    pub latency_ms: u64,
    /// Delay of the `slow` fault, in milliseconds.
    pub slow_ms: u64,
    /// `Retry-After` seconds sent with 429s.
    pub retry_after_s: u64,
    /// Runtime worker threads (0: one per core).
    pub threads: usize,
    /// Reasoning length in words (up to ~4,000); unset: short traces of 60–600 words.
    #[serde(default)]
    pub words: Option<usize>,
    /// Appends one JSON line per generated choice: `{"request_sha256", "choice", "faults"}`.
    /// A sample's line is the one with its `request_sha256` and, for a request with `n` > 1,
    /// `choice` = its index among the request's samples (collect sends one request per sample
    /// by default: `choice` 0).
    #[serde(default)]
    pub faults_log: Option<std::path::PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM, leaf first); needs `tls_key`.
    #[serde(default)]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of `tls_cert` (PEM).
    #[serde(default)]
    pub tls_key: Option<std::path::PathBuf>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            host: "127.0.0.1".into(),
            port: 0,
            seed: 0,
            faults: Faults::default(),
            shape: Shape::Inline,
            latency_ms: 0,
            slow_ms: 3000,
            retry_after_s: 1,
            threads: 0,
            words: None,
            faults_log: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl crate::config::Settings for SimConfig {
    const TABLE: &'static str = "teacher_sim";
}

/// Errors of the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("--faults {spec:?}: {msg}")]
    Faults { spec: String, msg: String },
    #[error("cannot listen on {addr}: {source}; pick another --port (0 picks a free one)")]
    Bind { addr: String, source: std::io::Error },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("--host {0:?} is not an IP address")]
    Host(String),
    #[error("{0}")]
    Tls(String),
    #[error("--faults-log {path}: {source}")]
    FaultsLog { path: std::path::PathBuf, source: std::io::Error },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawned_sim_answers_and_stops() {
        let cfg: SimConfig = toml::from_str("port = 0").expect("config");
        let sim = spawn(cfg).expect("spawns");
        let addr = sim.url.trim_start_matches("http://").trim_end_matches("/v1").to_string();
        let mut s = std::net::TcpStream::connect(&addr).expect("connects");
        use std::io::{Read, Write};
        s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").expect("writes");
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("reads");
        assert!(resp.starts_with("HTTP/1.1 200") && resp.contains("\"ok\""), "{resp}");
        drop(sim);
        assert!(std::net::TcpStream::connect(&addr).is_err(), "stopped");
    }

    #[test]
    fn parses_fault_specs() {
        let f = Faults::parse(
            "wrong=0.3,langmix=0.1,repeat=0.05,truncate=0.05,no_close=0.02,http429=0.1,http500=0.05,drop=0.05",
        )
        .expect("the contract's example parses");
        assert_eq!((f.wrong, f.http429, f.drop, f.slow), (0.3, 0.1, 0.05, 0.0));
        assert_eq!(Faults::parse("").expect("empty"), Faults::default());
        for bad in ["wrong", "wrong=2", "typo=0.1", "http429=0.6,http500=0.6", "wrong=x"] {
            let e = Faults::parse(bad).expect_err(bad).to_string();
            assert!(e.contains("--faults"), "{e}");
        }
    }
}
