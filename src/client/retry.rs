//! What can go wrong with one HTTP attempt, which failures are worth retrying, and how long to
//! wait before the next attempt (exponential backoff with jitter, never less than the server's
//! `Retry-After`).

use std::time::Duration;

/// The failure of one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptError {
    /// A non-2xx answer.
    Status { code: u16, retry_after: Option<Duration>, body: String },
    /// No answer within the per-request timeout.
    Timeout,
    /// Could not connect (refused, unreachable, proxy tunnel refused, TLS handshake broke off).
    Connect(String),
    /// The server's TLS certificate was rejected (unknown issuer, wrong name, expired): asking
    /// again cannot help, so this is not retried.
    Tls(String),
    /// The connection broke before the answer was complete.
    Dropped(String),
    /// A 2xx answer that is not a chat completion (not JSON, no choices, error object).
    InvalidResponse(String),
}

impl AttemptError {
    /// 429, 408, 409, 5xx, timeouts, connection failures and broken or garbled answers are
    /// retried; any other 4xx is the request's fault and is not, nor is a rejected certificate.
    pub fn retryable(&self) -> bool {
        match self {
            AttemptError::Status { code, .. } => matches!(code, 408 | 409 | 429) || *code >= 500,
            AttemptError::Tls(_) => false,
            _ => true,
        }
    }

    /// Whether this says something about the endpoint's health (used to back it off).
    pub fn endpoint_failure(&self) -> bool {
        match self {
            AttemptError::Status { code, .. } => *code >= 500,
            AttemptError::Timeout | AttemptError::Connect(_) | AttemptError::Tls(_) | AttemptError::Dropped(_) => true,
            AttemptError::InvalidResponse(_) => false,
        }
    }

    /// The failure's category, as counted in `summary.json`.
    pub fn reason(&self) -> String {
        match self {
            AttemptError::Status { code, .. } => format!("http_{code}"),
            AttemptError::Timeout => "timeout".into(),
            AttemptError::Connect(_) => "connect".into(),
            AttemptError::Tls(_) => "tls".into(),
            AttemptError::Dropped(_) => "dropped".into(),
            AttemptError::InvalidResponse(_) => "invalid_response".into(),
        }
    }

    /// A one-line description.
    pub fn detail(&self) -> String {
        match self {
            AttemptError::Status { code, body, .. } => format!("HTTP {code}: {body}"),
            AttemptError::Timeout => "no complete answer within the per-request timeout".into(),
            AttemptError::Connect(m) => format!("cannot connect: {m}"),
            AttemptError::Tls(m) => format!(
                "TLS certificate rejected: {m}; if the server's certificate comes from a private CA \
                 (self-hosted server, TLS-inspecting proxy), give that CA with --ca-cert FILE (PEM) or SSL_CERT_FILE"
            ),
            AttemptError::Dropped(m) => format!("connection dropped mid-answer: {m}"),
            AttemptError::InvalidResponse(m) => format!("invalid answer: {m}"),
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AttemptError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Parses a `Retry-After` value given in seconds (integer or decimal). HTTP-date values are
/// not understood and fall back to the backoff.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let s: f64 = v.trim().parse().ok()?;
    (s.is_finite() && s >= 0.0).then(|| Duration::from_secs_f64(s.min(3600.0)))
}

/// Exponential backoff with jitter.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The wait before retry number `retry` (0-based): uniformly in [d/2, d] with
    /// d = min(base * 2^retry, max), and never less than `retry_after`.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>, rng: &mut fastrand::Rng) -> Duration {
        let d = self.base.saturating_mul(1u32 << retry.min(20)).min(self.max);
        let half = d / 2;
        let jittered = half + half.mul_f64(rng.f64());
        jittered.max(retry_after.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let st = |code| AttemptError::Status { code, retry_after: None, body: String::new() };
        let cases = [
            (st(429), true, "http_429"),
            (st(500), true, "http_500"),
            (st(503), true, "http_503"),
            (st(400), false, "http_400"),
            (st(401), false, "http_401"),
            (st(404), false, "http_404"),
            (AttemptError::Timeout, true, "timeout"),
            (AttemptError::Dropped("x".into()), true, "dropped"),
            (AttemptError::InvalidResponse("x".into()), true, "invalid_response"),
            (AttemptError::Connect("x".into()), true, "connect"),
            (AttemptError::Tls("x".into()), false, "tls"),
        ];
        for (e, retry, reason) in cases {
            assert_eq!((e.retryable(), e.reason().as_str()), (retry, reason), "{e:?}");
        }
    }

    #[test]
    fn retry_after_values() {
        let cases = [
            ("2", Some(Duration::from_secs(2))),
            (" 0.5 ", Some(Duration::from_millis(500))),
            ("0", Some(Duration::ZERO)),
            ("-1", None),
            ("Wed, 21 Oct 2015 07:28:00 GMT", None),
        ];
        for (v, want) in cases {
            assert_eq!(parse_retry_after(v), want, "{v}");
        }
    }

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        let b = Backoff { base: Duration::from_millis(100), max: Duration::from_secs(2) };
        let mut rng = fastrand::Rng::with_seed(1);
        for retry in 0..10 {
            let d = b.delay(retry, None, &mut rng);
            let cap = Duration::from_millis(100 * (1 << retry)).min(Duration::from_secs(2));
            assert!(d >= cap / 2 && d <= cap, "{retry}: {d:?}");
        }
        assert_eq!(b.delay(0, Some(Duration::from_secs(5)), &mut rng), Duration::from_secs(5));
    }
}
