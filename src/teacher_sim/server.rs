//! The HTTP side of the simulator: hyper 1 over tokio, HTTP/1.1 with keep-alive; with
//! `--tls-cert`/`--tls-key`, HTTPS (rustls, ring) offering HTTP/2 and HTTP/1.1 by ALPN.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::Write as _;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::trace::{self, Rendered, pieces};
use super::{SimConfig, SimError};
use crate::store;

/// A response body that can break off mid-way (the `drop` fault).
pub struct SimBody {
    chunks: VecDeque<Bytes>,
    /// After the chunks, fail instead of ending: hyper then aborts the connection.
    fail: bool,
    len: Option<u64>,
}

impl SimBody {
    fn full(bytes: impl Into<Bytes>) -> Self {
        let b: Bytes = bytes.into();
        let len = Some(b.len() as u64);
        SimBody { chunks: VecDeque::from([b]), fail: false, len }
    }
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.chunks.pop_front() {
            Some(c) => Poll::Ready(Some(Ok(Frame::data(c)))),
            None if self.fail => {
                self.fail = false;
                Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "teacher-sim: drop fault",
                ))))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && !self.fail
    }

    fn size_hint(&self) -> SizeHint {
        match self.len {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

struct State {
    cfg: SimConfig,
    /// HTTPS, when a certificate was given.
    tls: Option<tokio_rustls::TlsAcceptor>,
    attempts: AtomicU64,
    /// `--faults-log`: one JSON line per generated choice with the content faults injected.
    faults_log: Option<std::sync::Mutex<std::fs::File>>,
}

impl State {
    fn new(cfg: SimConfig) -> Result<State, SimError> {
        let faults_log = match &cfg.faults_log {
            Some(p) => Some(std::sync::Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| SimError::FaultsLog { path: p.clone(), source: e })?,
            )),
            None => None,
        };
        let tls = tls_acceptor(&cfg)?;
        Ok(State { cfg, tls, attempts: AtomicU64::new(0), faults_log })
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// Appends `{"request_sha256", "choice", "faults"}` lines (whole lines, one write each).
    fn log_faults(&self, sha: &str, gens: &[trace::Generation]) {
        let Some(f) = &self.faults_log else { return };
        let mut buf = Vec::new();
        for (i, g) in gens.iter().enumerate() {
            let line = json!({"request_sha256": sha, "choice": i, "faults": g.faults});
            buf.extend_from_slice(line.to_string().as_bytes());
            buf.push(b'\n');
        }
        let mut f = f.lock().unwrap_or_else(|e| e.into_inner());
        let _ = f.write_all(&buf);
    }
}

/// The TLS acceptor of `--tls-cert`/`--tls-key` (both or neither).
fn tls_acceptor(cfg: &SimConfig) -> Result<Option<tokio_rustls::TlsAcceptor>, SimError> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = match (&cfg.tls_cert, &cfg.tls_key) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        _ => {
            return Err(SimError::Tls(
                "--tls-cert and --tls-key go together: give both for HTTPS, or neither for HTTP".into(),
            ));
        }
    };
    let bytes = std::fs::read(cert).map_err(|e| SimError::Tls(format!("--tls-cert {}: {e}", cert.display())))?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SimError::Tls(format!("--tls-cert {}: not a valid PEM file ({e})", cert.display())))?;
    if chain.is_empty() {
        return Err(SimError::Tls(format!(
            "--tls-cert {}: holds no certificate; give the server's chain as PEM (-----BEGIN CERTIFICATE-----)",
            cert.display()
        )));
    }
    let bytes = std::fs::read(key).map_err(|e| SimError::Tls(format!("--tls-key {}: {e}", key.display())))?;
    let key_der = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        SimError::Tls(format!(
            "--tls-key {}: no PEM private key in it ({e}); give the certificate's key",
            key.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut sc = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SimError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            SimError::Tls(format!(
                "--tls-cert {} with --tls-key {}: {e}; the key must be the certificate's",
                cert.display(),
                key.display()
            ))
        })?;
    sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(sc))))
}

/// Runs the simulator until the process is killed. Prints
/// `teacher-sim listening on http://ADDR/v1` (`https://` with a certificate) as the first line
/// of stdout.
pub fn serve(cfg: SimConfig) -> Result<(), SimError> {
    let rt = runtime(cfg.threads)?;
    let state = Arc::new(State::new(cfg.clone())?);
    rt.block_on(async move {
        let listener = bind(&cfg).await?;
        let addr = listener.local_addr().map_err(|source| SimError::Bind { addr: addr_text(&cfg), source })?;
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "teacher-sim listening on {}://{addr}/v1", state.scheme());
            let _ = out.flush();
        }
        accept_loop(listener, state, std::future::pending()).await;
        Ok(())
    })
}

/// A simulator running on a background thread of this process (for `distill run` and tests);
/// it stops when dropped.
pub struct RunningSim {
    /// Base URL, `http://127.0.0.1:PORT/v1` (`https://` with a certificate).
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the simulator on a background thread and returns once it listens.
pub fn spawn(cfg: SimConfig) -> Result<RunningSim, SimError> {
    let rt = runtime(cfg.threads)?;
    let listener = rt.block_on(bind(&cfg))?;
    let addr = listener.local_addr().map_err(|source| SimError::Bind { addr: addr_text(&cfg), source })?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let state = Arc::new(State::new(cfg)?);
    let url = format!("{}://{addr}/v1", state.scheme());
    let thread = std::thread::spawn(move || {
        rt.block_on(async move {
            accept_loop(listener, state, async move {
                let _ = stopped.await;
            })
            .await;
        });
    });
    Ok(RunningSim { url, stop: Some(stop), thread: Some(thread) })
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, SimError> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        b.worker_threads(threads);
    }
    b.enable_all().build().map_err(SimError::Runtime)
}

fn addr_text(cfg: &SimConfig) -> String {
    format!("{}:{}", cfg.host, cfg.port)
}

async fn bind(cfg: &SimConfig) -> Result<tokio::net::TcpListener, SimError> {
    let ip: IpAddr = cfg.host.parse().map_err(|_| SimError::Host(cfg.host.clone()))?;
    tokio::net::TcpListener::bind((ip, cfg.port))
        .await
        .map_err(|source| SimError::Bind { addr: addr_text(cfg), source })
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return,
            a = listener.accept() => a,
        };
        let (stream, _) = match accepted {
            Ok(x) => x,
            Err(e) => {
                eprintln!("teacher-sim: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let st = state.clone();
        tokio::spawn(async move {
            let tls = st.tls.clone();
            let svc = service_fn(move |req| {
                let st = st.clone();
                async move { Ok::<_, Infallible>(handle(req, &st).await) }
            });
            let Some(acceptor) = tls else {
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                return;
            };
            let stream = match acceptor.accept(stream).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("teacher-sim: TLS handshake failed: {e}");
                    return;
                }
            };
            if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            } else {
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            }
        });
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response<SimBody> {
    let mut r = Response::new(SimBody::full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, kind: &str, msg: &str) -> Response<SimBody> {
    json_response(status, &json!({"error": {"message": msg, "type": kind, "code": status.as_u16()}}))
}

async fn handle(req: Request<Incoming>, st: &State) -> Response<SimBody> {
    let path = req.uri().path().to_string();
    match *req.method() {
        Method::GET if path == "/health" => json_response(StatusCode::OK, &json!({"status": "ok"})),
        Method::GET if path.ends_with("/models") => json_response(
            StatusCode::OK,
            &json!({"object": "list", "data": [{"id": "teacher-sim", "object": "model", "owned_by": "distill"}]}),
        ),
        Method::POST if path.ends_with("/chat/completions") => chat(req, st).await,
        _ => error(StatusCode::NOT_FOUND, "not_found", &format!("no route for {} {path}", req.method())),
    }
}

/// Text of a message's `content`: a string, or the text parts of a list.
fn content_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            Some(parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join(""))
        }
        _ => None,
    }
}

async fn chat(req: Request<Incoming>, st: &State) -> Response<SimBody> {
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_request_error", &format!("cannot read body: {e}")),
    };
    let mut v: Map<String, Value> = match serde_json::from_slice(&body) {
        Ok(Value::Object(m)) => m,
        _ => return error(StatusCode::BAD_REQUEST, "invalid_request_error", "the request body must be a JSON object"),
    };
    let Some(model) = v.get("model").and_then(Value::as_str).map(str::to_string) else {
        return error(StatusCode::BAD_REQUEST, "invalid_request_error", "missing `model`");
    };
    let Some(messages) = v.get("messages").and_then(Value::as_array).filter(|m| !m.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "invalid_request_error", "`messages` must be a non-empty list");
    };
    let mut prompt_tokens = 0u64;
    let mut question = None;
    for m in messages {
        let (Some(role), Some(text)) = (m.get("role").and_then(Value::as_str), m.get("content").and_then(content_text))
        else {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "each message needs a `role` and a `content`",
            );
        };
        prompt_tokens += pieces(&text).len() as u64 + 4;
        if role == "user" {
            question = Some(text);
        }
    }
    let Some(question) = question else {
        return error(StatusCode::BAD_REQUEST, "invalid_request_error", "no user message");
    };
    let n = v.get("n").and_then(Value::as_u64).unwrap_or(1);
    if !(1..=16).contains(&n) {
        return error(StatusCode::BAD_REQUEST, "invalid_request_error", "`n` must be between 1 and 16");
    }
    let max_tokens = v.get("max_tokens").or_else(|| v.get("max_completion_tokens")).and_then(Value::as_u64);
    let stream = v.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage =
        v.get("stream_options").and_then(|o| o.get("include_usage")).and_then(Value::as_bool).unwrap_or(false);

    // Transport faults: per attempt.
    let cfg = &st.cfg;
    let attempt = st.attempts.fetch_add(1, Ordering::Relaxed);
    let mut trng = fastrand::Rng::with_seed(cfg.seed ^ 0x5EED_FA17 ^ attempt.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let x = trng.f64();
    let f = &cfg.faults;
    let mut drop = false;
    let mut acc = f.http429;
    if x < acc {
        let mut r = error(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "rate limit exceeded (teacher-sim fault)");
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(cfg.retry_after_s));
        return r;
    }
    acc += f.http500;
    if x < acc {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal error (teacher-sim fault)");
    }
    acc += f.nonjson;
    if x < acc {
        let mut r = Response::new(SimBody::full("<html><body><h1>502 Bad Gateway</h1></body></html>"));
        r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
        return r;
    }
    acc += f.drop;
    if x < acc {
        drop = true;
    }
    acc += f.slow;
    if x >= acc - f.slow && x < acc {
        tokio::time::sleep(Duration::from_millis(cfg.slow_ms)).await;
    }
    if cfg.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(cfg.latency_ms)).await;
    }

    // Content: a function of (seed, request minus transport fields, choice index).
    v.remove("stream");
    v.remove("stream_options");
    let body_bytes = serde_json::to_vec(&v).unwrap_or_default();
    // The sha256 of this body is collect's `request_sha256` of the samples it answers.
    let digest_body = Sha256::digest(&body_bytes);
    let mut h = Sha256::new();
    h.update(cfg.seed.to_le_bytes());
    h.update(&body_bytes);
    let digest = h.finalize();
    let mut key = [0u8; 8];
    key.copy_from_slice(&digest[..8]);
    let key = u64::from_le_bytes(key);
    let content_faults = f.content();
    let gens: Vec<trace::Generation> = (0..n)
        .map(|i| {
            let mut rng = fastrand::Rng::with_seed(key ^ i.wrapping_mul(0xD1B5_4A32_D192_ED03));
            trace::generate_words(&question, &mut rng, &content_faults, cfg.words)
        })
        .collect();
    if st.faults_log.is_some() {
        st.log_faults(&store::hex(&digest_body), &gens);
    }
    let choices: Vec<Rendered> = gens.iter().map(|g| trace::render(g, cfg.shape, max_tokens)).collect();
    let completion_tokens: u64 = choices.iter().map(|c| c.completion_tokens).sum();
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                       "total_tokens": prompt_tokens + completion_tokens});
    let id = format!("chatcmpl-{key:016x}");
    let created = 1_700_000_000u64;

    if !stream {
        let choices: Vec<Value> = choices
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut msg = json!({"role": "assistant", "content": c.content});
                if let Some(rc) = &c.reasoning_content {
                    msg["reasoning_content"] = Value::String(rc.clone());
                }
                json!({"index": i, "message": msg, "finish_reason": c.finish_reason, "logprobs": null})
            })
            .collect();
        let body = json!({"id": id, "object": "chat.completion", "created": created, "model": model,
                          "choices": choices, "usage": usage})
        .to_string();
        let mut r = json_response(StatusCode::OK, &Value::Null);
        let len = body.len();
        let mut b = SimBody::full(body);
        if drop {
            let first = b.chunks.pop_front().unwrap_or_default();
            b.chunks.push_back(first.slice(..len / 2));
            b.fail = true;
        }
        *r.body_mut() = b;
        return r;
    }

    let mut events: VecDeque<Bytes> = VecDeque::new();
    let chunk = |delta: Value, idx: usize, finish: Option<&str>| -> Bytes {
        let c = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                       "choices": [{"index": idx, "delta": delta, "finish_reason": finish}]});
        Bytes::from(format!("data: {c}\n\n"))
    };
    const PER_CHUNK: usize = 8;
    for (i, c) in choices.iter().enumerate() {
        events.push_back(chunk(json!({"role": "assistant", "content": ""}), i, None));
        if let Some(rc) = &c.reasoning_content {
            for part in pieces(rc).chunks(PER_CHUNK) {
                events.push_back(chunk(json!({"reasoning_content": part.concat()}), i, None));
            }
        }
        for part in pieces(&c.content).chunks(PER_CHUNK) {
            events.push_back(chunk(json!({"content": part.concat()}), i, None));
        }
        events.push_back(chunk(json!({}), i, Some(c.finish_reason)));
    }
    if include_usage {
        let c = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                       "choices": [], "usage": usage});
        events.push_back(Bytes::from(format!("data: {c}\n\n")));
    }
    events.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
    if drop {
        let keep = events.len() / 2;
        events.truncate(keep);
    }
    let mut r = Response::new(SimBody { chunks: events, fail: drop, len: None });
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r
}
