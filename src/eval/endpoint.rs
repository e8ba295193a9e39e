//! Generation by an OpenAI-compatible endpoint (a teacher, or the student served by vLLM),
//! with the client collect uses: one request per sample (seed `sample_seed`), retries with
//! backoff, a bounded number in flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::{EvalConfig, EvalError, Gen, Problem, sample_seed};
use crate::client::retry::Backoff;
use crate::client::{Client, Url};

/// `{base}/chat/completions` of an endpoint URL.
pub fn chat_url(raw: &str) -> Result<Url, EvalError> {
    let base = raw.trim().trim_end_matches('/');
    let url = Url::parse(&format!("{base}/chat/completions"))
        .map_err(|e| EvalError::Config(format!("--endpoint {raw}: not a URL ({e})")))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        _ => Err(EvalError::Config(format!("--endpoint {raw}: the URL must start with http:// or https://"))),
    }
}

fn body(cfg: &EvalConfig, p: &Problem, seed: u64) -> Bytes {
    let mut b = Map::new();
    b.insert("model".into(), json!(cfg.model));
    b.insert("messages".into(), serde_json::to_value(&p.messages).unwrap_or(Value::Null));
    b.insert("temperature".into(), json!(cfg.temperature));
    b.insert("top_p".into(), json!(cfg.top_p));
    if cfg.top_k > 0 {
        b.insert("top_k".into(), json!(cfg.top_k));
    }
    b.insert("max_tokens".into(), json!(cfg.max_new_tokens));
    b.insert("seed".into(), json!(seed));
    if !cfg.stop.is_empty() {
        b.insert("stop".into(), json!(cfg.stop));
    }
    Bytes::from(serde_json::to_vec(&Value::Object(b)).unwrap_or_default())
}

/// Generates every sample by the endpoint; `on_gens` gets them in groups as they come. Returns
/// the number of samples per problem that failed after their retries.
pub fn generate(
    cfg: &EvalConfig,
    url: &str,
    problems: &[Problem],
    on_gens: &mut dyn FnMut(Vec<Gen>, f64) -> Result<(), EvalError>,
) -> Result<Vec<(usize, u64)>, EvalError> {
    let uri = chat_url(url)?;
    let key = std::env::var(&cfg.api_key_env).ok().filter(|k| !k.is_empty());
    let timeout = Duration::from_secs_f64(cfg.timeout_s.max(1.0));
    let client = Arc::new(Client::new(key, timeout, cfg.concurrency, cfg.ca_cert.as_deref())?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| EvalError::Config(format!("cannot start the async runtime: {e}")))?;
    let backoff = Backoff { base: Duration::from_millis(500), max: Duration::from_secs(30) };
    let pb = super::progress_bar(cfg.progress, problems.len() as u64);
    let mut failed = vec![0u64; problems.len()];
    let mut remaining = vec![cfg.n; problems.len()];
    let mut reported = 0;
    let result: Result<(), EvalError> = rt.block_on(async {
        let sem = Arc::new(tokio::sync::Semaphore::new(cfg.concurrency.max(1)));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<Gen, (usize, String)>>();
        for (i, p) in problems.iter().enumerate() {
            for k in 0..cfg.n {
                let seed = sample_seed(cfg.seed, &p.prompt.id, k);
                let bytes = body(cfg, p, seed);
                let (client, uri, sem, tx) = (client.clone(), uri.clone(), sem.clone(), tx.clone());
                let (max_retries, label) = (cfg.max_retries, url.to_string());
                tokio::spawn(async move {
                    let Ok(_permit) = sem.acquire_owned().await else { return };
                    let mut rng = fastrand::Rng::with_seed(seed);
                    let mut retry = 0u32;
                    loop {
                        let t0 = Instant::now();
                        match client.complete(&uri, bytes.clone(), false).await {
                            Ok(c) if !c.choices.is_empty() => {
                                let ch = &c.choices[0];
                                let g = Gen {
                                    problem: i,
                                    sample: k,
                                    text: ch.content.clone(),
                                    reasoning_content: ch.reasoning_content.clone(),
                                    finish_reason: ch.finish_reason.clone(),
                                    eos: ch.finish_reason.as_deref() == Some("stop"),
                                    tokens: c.completion_tokens.unwrap_or(0),
                                    prompt_tokens: c.prompt_tokens.unwrap_or(0),
                                    latency_ms: t0.elapsed().as_millis() as u64,
                                    seed: Some(seed),
                                    endpoint: label,
                                };
                                let _ = tx.send(Ok(g));
                                return;
                            }
                            Ok(_) if retry < max_retries => {}
                            Err(e) if e.retryable() && retry < max_retries => {
                                tokio::time::sleep(backoff.delay(retry, e.retry_after(), &mut rng)).await;
                            }
                            Ok(_) => {
                                let _ = tx.send(Err((i, "the answer had no choices".into())));
                                return;
                            }
                            Err(e) => {
                                let _ = tx.send(Err((i, client.scrub(&format!("{}: {}", e.reason(), e.detail())))));
                                return;
                            }
                        }
                        retry += 1;
                    }
                });
            }
        }
        drop(tx);
        let mut batch = Vec::new();
        let mut last = Instant::now();
        while let Some(msg) = rx.recv().await {
            let i = match msg {
                Ok(g) => {
                    let i = g.problem;
                    batch.push(g);
                    i
                }
                Err((i, why)) => {
                    failed[i] += 1;
                    if reported < 5 {
                        eprintln!("warning: problem {}: a sample failed after retries: {why}", problems[i].prompt.id);
                        reported += 1;
                    }
                    i
                }
            };
            remaining[i] -= 1;
            if remaining[i] == 0 {
                pb.inc(1);
            }
            if batch.len() >= 64 {
                let t = last.elapsed().as_secs_f64();
                last = Instant::now();
                on_gens(std::mem::take(&mut batch), t)?;
            }
        }
        if !batch.is_empty() {
            on_gens(batch, last.elapsed().as_secs_f64())?;
        }
        Ok(())
    });
    result?;
    pb.finish_and_clear();
    Ok(failed.into_iter().enumerate().filter(|(_, f)| *f > 0).collect())
}
