//! The OpenAI-compatible client shared by `collect` (teacher samples) and `eval` (scoring a
//! served model): `POST {endpoint}/chat/completions` with streaming or not (`http`), which
//! servers it trusts and which proxy it takes (`tls`), request and token rate limits and the
//! endpoint balancer (`limiter`), and the retry policy (`retry`). It imports no stage.
//!
//! In: request bodies and endpoints. Out: parsed chat completions (reasoning split from the
//! answer) or a classified attempt error that says whether to retry.

pub mod http;
pub mod limiter;
pub mod retry;
pub mod tls;

pub use http::{Client, extract};
pub use reqwest::Url;
pub use tls::{ClientError, proxy_for};
