//! `distill collect` behind proxies and private CAs, end to end on loopback: a small forward
//! proxy (absolute-form requests) and a CONNECT tunnel in this test, `distill teacher-sim` over
//! HTTP and over HTTPS with a certificate from a CA generated here (rcgen). Proxy settings go
//! to the child processes only; ambient ones are removed from them.

mod common;
use common::{Sim, stderr};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_distill");
const PROXY_VARS: [&str; 8] =
    ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy", "no_proxy"];
const PROMPTS: usize = 12;

/// A forward proxy and CONNECT tunnel on 127.0.0.1, counting what it served.
struct Proxy {
    url: String,
    /// Absolute-form requests forwarded (plain HTTP through the proxy).
    forwarded: Arc<AtomicUsize>,
    /// CONNECT tunnels opened (HTTPS through the proxy).
    tunnels: Arc<AtomicUsize>,
}

impl Proxy {
    fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (forwarded, tunnels) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (f, t) = (forwarded.clone(), tunnels.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (f, t) = (f.clone(), t.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &f, &t);
                });
            }
        });
        Proxy { url, forwarded, tunnels }
    }

    fn counts(&self) -> (usize, usize) {
        (self.forwarded.load(Ordering::SeqCst), self.tunnels.load(Ordering::SeqCst))
    }
}

/// One client connection: a CONNECT tunnel, or one forwarded request (answered with
/// `connection: close`, so the client opens a new connection for the next).
fn serve(client: TcpStream, forwarded: &AtomicUsize, tunnels: &AtomicUsize) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let (method, target) = (words.next().unwrap_or("").to_string(), words.next().unwrap_or("").to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        headers.push(h);
    }
    let mut client_w = client.try_clone()?;
    if method == "CONNECT" {
        let mut upstream = TcpStream::connect(&target)?;
        tunnels.fetch_add(1, Ordering::SeqCst);
        client_w.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")?;
        upstream.write_all(reader.buffer())?;
        let (mut up_r, mut cl_r) = (upstream.try_clone()?, client.try_clone()?);
        let back = std::thread::spawn(move || {
            let _ = std::io::copy(&mut up_r, &mut client_w);
            let _ = client_w.shutdown(Shutdown::Write);
        });
        let _ = std::io::copy(&mut cl_r, &mut upstream);
        let _ = upstream.shutdown(Shutdown::Write);
        let _ = back.join();
        return Ok(());
    }
    let Some(rest) = target.strip_prefix("http://") else {
        client_w.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")?;
        return Ok(());
    };
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut upstream = TcpStream::connect(host)?;
    forwarded.fetch_add(1, Ordering::SeqCst);
    let mut head = format!("{method} {} HTTP/1.1\r\n", if path.is_empty() { "/" } else { path });
    let mut len = 0usize;
    for h in &headers {
        let name = h.split(':').next().unwrap_or("").trim().to_ascii_lowercase();
        if name == "content-length" {
            len = h.split(':').nth(1).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
        }
        if !matches!(name.as_str(), "connection" | "proxy-connection" | "keep-alive") {
            head.push_str(h);
        }
    }
    head.push_str("connection: close\r\n\r\n");
    upstream.write_all(head.as_bytes())?;
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    upstream.write_all(&body)?;
    std::io::copy(&mut upstream, &mut client_w)?;
    client_w.shutdown(Shutdown::Write)?;
    Ok(())
}

/// A private CA and a certificate it signed for localhost and 127.0.0.1, as PEM files in `dir`:
/// (ca.pem, server.pem, server-key.pem).
fn private_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "distill test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("key")).expect("CA");
    let key = KeyPair::generate().expect("key");
    let mut leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("params");
    leaf.distinguished_name.push(DnType::CommonName, "teacher-sim");
    let leaf = leaf.signed_by(&key, &ca).expect("leaf");
    let paths = (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server-key.pem"));
    std::fs::write(&paths.0, ca.pem()).expect("write");
    std::fs::write(&paths.1, leaf.pem()).expect("write");
    std::fs::write(&paths.2, key.serialize_pem()).expect("write");
    (paths.0, paths.1, paths.2)
}

fn https_sim(ca: &(PathBuf, PathBuf, PathBuf), extra: &[&str]) -> Sim {
    let mut args = vec!["--tls-cert", ca.1.to_str().expect("utf-8"), "--tls-key", ca.2.to_str().expect("utf-8")];
    args.extend_from_slice(extra);
    let sim = Sim::start(&args);
    assert!(sim.url.starts_with("https://"), "{}", sim.url);
    sim
}

/// Runs `distill collect` in `dir` with `env` (and no ambient proxy settings); fails the test
/// instead of hanging.
fn collect(dir: &Path, endpoint: &str, out: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut args = vec!["collect", "--prompts", "p.jsonl", "--endpoint", endpoint, "--model", "r1-sim", "--out", out];
    args.extend(["--concurrency", "4", "--max-retries", "3", "--backoff-base-ms", "1", "--backoff-max-ms", "10"]);
    args.extend_from_slice(extra);
    run(dir, &args, env)
}

/// Runs distill in `dir` with `args` and `env` (and no ambient proxy settings); fails the test
/// instead of hanging.
fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).current_dir(dir).env_remove("SSL_CERT_FILE").stdout(Stdio::piped()).stderr(Stdio::piped());
    for v in PROXY_VARS {
        cmd.env_remove(v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("runs distill");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("waits").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("distill {args:?} did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn summary(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("summary.json")).expect("summary.json")).expect("json")
}

fn assert_complete(dir: &Path, out: &str, o: &Output) -> Value {
    assert!(o.status.success(), "{out}: {}", stderr(o));
    let s = summary(&dir.join(out));
    assert_eq!((s["samples_written"].as_u64(), s["failures"].as_u64()), (Some(PROMPTS as u64), Some(0)), "{s}");
    s
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = Command::new(BIN)
        .args(["problems", "--kind", "math", "--count", &PROMPTS.to_string(), "--out", "p.jsonl"])
        .current_dir(dir.path())
        .output()
        .expect("runs distill");
    assert!(o.status.success(), "{}", stderr(&o));
    dir
}

#[test]
fn plain_http_goes_through_http_proxy_unless_no_proxy_names_the_host() {
    let dir = setup();
    let d = dir.path();
    let sim = Sim::start(&[]);
    let proxy = Proxy::start();

    // (a) HTTP_PROXY: every request is forwarded by the proxy.
    let o = collect(d, &sim.url, "via", &[], &[("HTTP_PROXY", &proxy.url), ("NO_PROXY", "")]);
    let s = assert_complete(d, "via", &o);
    let (fwd, tun) = proxy.counts();
    assert!(fwd >= PROMPTS && tun == 0, "forwarded {fwd}, tunnels {tun}");
    assert_eq!(s["proxies"][sim.url.as_str()], proxy.url.as_str(), "{s}");
    assert!(stderr(&o).contains(&format!("via proxy {}", proxy.url)), "{}", stderr(&o));

    // The lowercase form works too; the records are the same as direct ones.
    let o = collect(d, &sim.url, "via-lower", &[], &[("http_proxy", &proxy.url)]);
    assert_complete(d, "via-lower", &o);
    assert!(proxy.counts().0 >= 2 * PROMPTS);

    // (c) NO_PROXY naming the host: direct, the proxy sees nothing.
    let before = proxy.counts();
    let o = collect(d, &sim.url, "direct", &[], &[("HTTP_PROXY", &proxy.url), ("NO_PROXY", "example.com, 127.0.0.1")]);
    let s = assert_complete(d, "direct", &o);
    assert_eq!(proxy.counts(), before, "NO_PROXY=127.0.0.1 must bypass the proxy");
    assert!(s.get("proxies").is_none(), "{s}");
    assert!(!stderr(&o).contains("via proxy"), "{}", stderr(&o));

    // An HTTPS proxy setting does not apply to http:// endpoints.
    let o = collect(d, &sim.url, "https-only", &[], &[("HTTPS_PROXY", &proxy.url)]);
    assert_complete(d, "https-only", &o);
    assert_eq!(proxy.counts(), before);
}

#[test]
fn https_with_a_private_ca_through_a_connect_proxy() {
    let dir = setup();
    let d = dir.path();
    let ca = private_ca(d);
    let sim = https_sim(&ca, &[]);
    let proxy = Proxy::start();
    let ca_path = ca.0.to_str().expect("utf-8");

    // (b) HTTPS_PROXY + --ca-cert: tunnelled with CONNECT, the teacher's certificate trusted.
    let o = collect(d, &sim.url, "tunnel", &["--ca-cert", ca_path], &[("HTTPS_PROXY", &proxy.url), ("NO_PROXY", "")]);
    let s = assert_complete(d, "tunnel", &o);
    let (fwd, tun) = proxy.counts();
    assert!(tun >= 1 && fwd == 0, "forwarded {fwd}, tunnels {tun}");
    assert_eq!(s["proxies"][sim.url.as_str()], proxy.url.as_str(), "{s}");

    // SSL_CERT_FILE names the CA as well as --ca-cert does; streaming over the tunnel.
    let o = collect(
        d,
        &sim.url,
        "ssl-cert-file",
        &["--stream"],
        &[("https_proxy", &proxy.url), ("SSL_CERT_FILE", ca_path)],
    );
    assert_complete(d, "ssl-cert-file", &o);
    assert!(proxy.counts().1 > tun);

    // (c) NO_PROXY naming the host (by name here): direct.
    let before = proxy.counts();
    let by_name = sim.url.replace("127.0.0.1", "localhost");
    let o = collect(
        d,
        &by_name,
        "direct",
        &["--ca-cert", ca_path, "--stream"],
        &[("HTTPS_PROXY", &proxy.url), ("NO_PROXY", "localhost")],
    );
    assert_complete(d, "direct", &o);
    assert_eq!(proxy.counts(), before, "NO_PROXY=localhost must bypass the proxy");

    // (d) Without the CA: every request fails at once on the certificate, with the fix named.
    let o = collect(d, &sim.url, "untrusted", &[], &[("HTTPS_PROXY", &proxy.url)]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let s = summary(&d.join("untrusted"));
    assert_eq!(s["failures_by_reason"]["tls"].as_u64(), Some(PROMPTS as u64), "{s}");
    assert_eq!(s["retries"].as_u64(), Some(0), "a rejected certificate is not retried: {s}");
    let e = stderr(&o);
    assert!(e.contains("UnknownIssuer") && e.contains("--ca-cert FILE") && e.contains("SSL_CERT_FILE"), "{e}");
    let rejects = std::fs::read_to_string(d.join("untrusted/rejects-requests.jsonl")).expect("rejects");
    assert!(rejects.lines().all(|l| l.contains("\"tls\"") && l.contains("\"attempts\":1")), "{rejects}");

    // eval --endpoint shares the client: the same proxy and --ca-cert.
    let before = proxy.counts();
    let args = ["eval", "--endpoint", &sim.url, "--model", "sim", "--problems", "p.jsonl", "--out", "eval.json"];
    let o = run(d, &[&args[..], &["--ca-cert", ca_path, "--no-progress"]].concat(), &[("HTTPS_PROXY", &proxy.url)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e: Value = serde_json::from_slice(&std::fs::read(d.join("eval.json")).expect("eval.json")).expect("json");
    let got = (e["scored_problems"].as_u64(), e["failed_generations"].as_u64());
    assert_eq!(got, (Some(PROMPTS as u64), Some(0)), "{e}");
    assert!(proxy.counts().1 > before.1, "eval tunnelled through the proxy");

    // The same without a proxy.
    let o = collect(d, &sim.url, "untrusted-direct", &[], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let s = summary(&d.join("untrusted-direct"));
    assert_eq!(s["failures_by_reason"]["tls"].as_u64(), Some(PROMPTS as u64), "{s}");
    assert!(stderr(&o).contains("UnknownIssuer"), "{}", stderr(&o));
}

#[test]
fn unusable_ca_files_are_one_line_errors() {
    let dir = setup();
    let d = dir.path();
    let sim = Sim::start(&[]);
    std::fs::write(d.join("not-a-cert.pem"), "hello\n").expect("write");
    for (file, want) in [("missing.pem", "cannot read it"), ("not-a-cert.pem", "holds no certificate")] {
        let o = collect(d, &sim.url, "o", &["--ca-cert", file], &[]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains(&format!("--ca-cert {file}")) && e.contains(want) && e.contains("PEM file"), "{e}");
        assert!(!e.contains("panicked"), "{e}");
    }
    let o = collect(d, &sim.url, "o", &[], &[("SSL_CERT_FILE", "missing.pem")]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("SSL_CERT_FILE missing.pem: cannot read it"), "{}", stderr(&o));
}

#[test]
fn teacher_sim_tls_offers_http2_and_the_client_takes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = private_ca(dir.path());
    let sim = https_sim(&ca, &[]);
    let tls = distill::client::tls::client_config(Some(&ca.0)).expect("tls config");
    let client = reqwest::Client::builder().tls_backend_preconfigured(tls).no_proxy().build().expect("client");
    let health = sim.url.replace("/v1", "/health");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let resp = rt.block_on(client.get(&health).send()).expect("answers");
    assert_eq!((resp.status().as_u16(), resp.version()), (200, reqwest::Version::HTTP_2));

    // Mismatched or missing key files are refused with the flag named.
    let o =
        Command::new(BIN).args(["teacher-sim", "--port", "0", "--tls-cert"]).arg(&ca.1).output().expect("runs distill");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--tls-cert and --tls-key go together"), "{}", stderr(&o));
}
