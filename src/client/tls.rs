//! Which servers the client trusts, and which proxy a request goes through.
//!
//! Trust: the bundled web-PKI roots (`webpki-roots`), the system's root store
//! (`rustls-native-certs`: the distribution's bundle, or `SSL_CERT_FILE`/`SSL_CERT_DIR` when set,
//! as OpenSSL reads them), and the PEM roots of `--ca-cert FILE` and `SSL_CERT_FILE` (a private
//! CA: a self-hosted server, a TLS-inspecting corporate proxy). rustls with the ring provider;
//! ALPN offers HTTP/2 and HTTP/1.1.
//!
//! Proxies come from the environment as curl reads them (`HTTP_PROXY`, `HTTPS_PROXY`,
//! `ALL_PROXY`, `NO_PROXY`, or their lowercase forms); [`proxy_for`] says which one a URL uses.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

/// Errors building the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{origin} {path}: {msg}; give the private CA's certificate as a PEM file (-----BEGIN CERTIFICATE-----)")]
    CaCert { origin: &'static str, path: PathBuf, msg: String },
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

/// Reads every certificate of a PEM file (`origin` names where the path came from).
pub fn read_pem_certs(origin: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let err = |msg: String| ClientError::CaCert { origin, path: path.to_path_buf(), msg };
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read it ({e})")))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("not a valid PEM file ({e})")))?;
    if certs.is_empty() {
        return Err(err("holds no certificate".into()));
    }
    Ok(certs)
}

/// The root store: bundled roots, the system's, `SSL_CERT_FILE`'s and `ca_cert`'s.
pub fn root_store(ca_cert: Option<&Path>) -> Result<rustls::RootCertStore, ClientError> {
    let mut store = rustls::RootCertStore::empty();
    store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // Unreadable system stores are not an error: the bundled roots remain.
    let native = rustls_native_certs::load_native_certs();
    store.add_parsable_certificates(native.certs);
    let env_file = std::env::var_os("SSL_CERT_FILE").filter(|v| !v.is_empty()).map(PathBuf::from);
    let extra = [("SSL_CERT_FILE", env_file.as_deref()), ("--ca-cert", ca_cert)];
    for (origin, path) in extra {
        let Some(path) = path else { continue };
        for cert in read_pem_certs(origin, path)? {
            store.add(cert).map_err(|e| ClientError::CaCert {
                origin,
                path: path.to_path_buf(),
                msg: format!("a certificate in it is not usable as a root ({e})"),
            })?;
        }
    }
    Ok(store)
}

/// The rustls configuration of the client: ring, TLS 1.2 and 1.3, [`root_store`], ALPN h2 and
/// http/1.1.
pub fn client_config(ca_cert: Option<&Path>) -> Result<rustls::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(root_store(ca_cert)?)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The proxy (`scheme://host:port`, never its credentials) a request to `url` goes through,
/// from the environment; `None`: direct.
pub fn proxy_for(url: &reqwest::Url) -> Option<String> {
    let uri: hyper::Uri = url.as_str().parse().ok()?;
    let hit = hyper_util::client::proxy::matcher::Matcher::from_env().intercept(&uri)?;
    let p = hit.uri();
    let host = p.host()?;
    Some(match p.port_u16() {
        Some(port) => format!("{}://{host}:{port}", p.scheme_str().unwrap_or("http")),
        None => format!("{}://{host}", p.scheme_str().unwrap_or("http")),
    })
}

/// The rejected certificate, if that is why a request failed: a
/// `rustls::Error::InvalidCertificate` anywhere in the error's chain, including inside the
/// `io::Error`s the TLS layers wrap it in (whose `source()` skips the wrapped error).
pub fn certificate_error(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    fn find(err: &(dyn std::error::Error + 'static), depth: usize) -> Option<String> {
        if depth > 16 {
            return None;
        }
        if let Some(t @ rustls::Error::InvalidCertificate(_)) = err.downcast_ref::<rustls::Error>() {
            return Some(t.to_string());
        }
        if let Some(inner) = err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref())
            && let Some(found) = find(inner, depth + 1)
        {
            return Some(found);
        }
        err.source().and_then(|s| find(s, depth + 1))
    }
    find(e, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_ca_files_name_the_file_and_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "just text\n").expect("write");
        let garbled = dir.path().join("garbled.pem");
        std::fs::write(&garbled, "-----BEGIN CERTIFICATE-----\n@@@\n-----END CERTIFICATE-----\n").expect("write");
        let missing = dir.path().join("missing.pem");
        for (path, want) in [(&empty, "holds no certificate"), (&garbled, "not a valid PEM"), (&missing, "cannot read")]
        {
            let e = client_config(Some(path)).expect_err("refused").to_string();
            assert!(e.contains(&path.display().to_string()) && e.contains(want) && e.contains("PEM file"), "{e}");
            assert!(e.starts_with("--ca-cert "), "{e}");
        }
    }

    #[test]
    fn certificate_errors_are_found_inside_wrapped_io_errors() {
        use std::io::{Error, ErrorKind};
        let cert = || rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let twice = Error::other(Error::new(ErrorKind::InvalidData, cert()));
        let found = certificate_error(&twice).expect("found");
        assert!(found.contains("UnknownIssuer"), "{found}");
        assert!(certificate_error(&Error::new(ErrorKind::InvalidData, cert())).is_some());
        let other = Error::new(ErrorKind::InvalidData, rustls::Error::DecryptError);
        assert_eq!(certificate_error(&other), None);
        assert_eq!(certificate_error(&Error::from(ErrorKind::ConnectionRefused)), None);
    }

    #[test]
    fn bundled_roots_are_trusted() {
        let store = root_store(None).expect("roots");
        assert!(store.len() >= webpki_roots::TLS_SERVER_ROOTS.len(), "{}", store.len());
    }
}
