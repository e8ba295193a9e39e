//! Requests-per-minute and tokens-per-minute token buckets, and the endpoint balancer: each
//! request goes to the healthy endpoint with the fewest requests in flight; an endpoint that
//! keeps failing is backed off while the others carry on.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A token bucket refilled continuously at `per_minute / 60` tokens per second, holding at
/// most one second's worth (at least one token). Balances may go negative after a true-up.
pub struct TokenBucket {
    per_s: f64,
    capacity: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// `None` when `per_minute` is 0 (unlimited).
    pub fn new(per_minute: u64) -> Option<TokenBucket> {
        if per_minute == 0 {
            return None;
        }
        let per_s = per_minute as f64 / 60.0;
        let capacity = per_s.max(1.0);
        Some(TokenBucket { per_s, capacity, state: Mutex::new((capacity, Instant::now())) })
    }

    /// Takes `n` tokens, waiting until the bucket holds `min(n, capacity)` of them.
    pub async fn acquire(&self, n: f64) {
        loop {
            let wait = {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                st.0 = (st.0 + now.duration_since(st.1).as_secs_f64() * self.per_s).min(self.capacity);
                st.1 = now;
                let need = n.min(self.capacity);
                if st.0 >= need {
                    st.0 -= n;
                    return;
                }
                (need - st.0) / self.per_s
            };
            tokio::time::sleep(Duration::from_secs_f64(wait.clamp(0.001, 60.0))).await;
        }
    }

    /// Corrects an earlier estimate: takes `delta` more tokens (gives back when negative).
    pub fn adjust(&self, delta: f64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.0 = (st.0 - delta).min(self.capacity);
    }
}

struct Health {
    consecutive_failures: u32,
    backoff_until: Option<Instant>,
}

struct Endpoint {
    in_flight: AtomicUsize,
    health: Mutex<Health>,
}

/// Picks endpoints by in-flight count, skipping backed-off ones.
pub struct Balancer {
    eps: Vec<Endpoint>,
    pick_lock: Mutex<()>,
}

/// Failures in a row after which an endpoint is backed off.
const FAILURES_BEFORE_BACKOFF: u32 = 3;

impl Balancer {
    pub fn new(n: usize) -> Balancer {
        Balancer {
            eps: (0..n)
                .map(|_| Endpoint {
                    in_flight: AtomicUsize::new(0),
                    health: Mutex::new(Health { consecutive_failures: 0, backoff_until: None }),
                })
                .collect(),
            pick_lock: Mutex::new(()),
        }
    }

    /// The index of the endpoint to use next (its in-flight count is taken); waits while every
    /// endpoint is backed off. Call [`Balancer::release`] when the attempt is over.
    pub async fn pick(&self) -> usize {
        loop {
            let wait = {
                let _g = self.pick_lock.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                let mut best: Option<(usize, usize)> = None;
                let mut earliest: Option<Instant> = None;
                for (i, ep) in self.eps.iter().enumerate() {
                    let until = ep.health.lock().unwrap_or_else(|e| e.into_inner()).backoff_until;
                    match until {
                        Some(t) if t > now => {
                            earliest = Some(earliest.map_or(t, |e: Instant| e.min(t)));
                        }
                        _ => {
                            let load = ep.in_flight.load(Ordering::Relaxed);
                            if best.is_none_or(|(_, l)| load < l) {
                                best = Some((i, load));
                            }
                        }
                    }
                }
                if let Some((i, _)) = best {
                    self.eps[i].in_flight.fetch_add(1, Ordering::Relaxed);
                    return i;
                }
                earliest.map_or(Duration::from_millis(10), |t| t.saturating_duration_since(now))
            };
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }

    /// Ends an attempt on endpoint `i`; `healthy` false when it failed in a way that says
    /// something about the endpoint (connection, timeout, 5xx). Returns true when this failure
    /// started a backoff of the endpoint.
    pub fn release(&self, i: usize, healthy: bool) -> bool {
        let ep = &self.eps[i];
        ep.in_flight.fetch_sub(1, Ordering::Relaxed);
        let mut h = ep.health.lock().unwrap_or_else(|e| e.into_inner());
        if healthy {
            h.consecutive_failures = 0;
            h.backoff_until = None;
            return false;
        }
        h.consecutive_failures += 1;
        if h.consecutive_failures >= FAILURES_BEFORE_BACKOFF && self.eps.len() > 1 {
            let exp = (h.consecutive_failures - FAILURES_BEFORE_BACKOFF).min(6);
            let d = Duration::from_millis(500 << exp).min(Duration::from_secs(30));
            h.backoff_until = Some(Instant::now() + d);
            return true;
        }
        false
    }

    pub fn in_flight(&self, i: usize) -> usize {
        self.eps[i].in_flight.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn balancer_prefers_idle_and_skips_failing() {
        let b = Balancer::new(2);
        let a = b.pick().await;
        let c = b.pick().await;
        assert_ne!(a, c, "second pick goes to the idle endpoint");
        b.release(a, true);
        b.release(c, true);
        let mut started = false;
        for _ in 0..FAILURES_BEFORE_BACKOFF {
            b.eps[0].in_flight.fetch_add(1, Ordering::Relaxed);
            started = b.release(0, false);
        }
        assert!(started);
        for _ in 0..5 {
            let i = b.pick().await;
            assert_eq!(i, 1, "endpoint 0 is backed off");
            b.release(i, true);
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bucket_limits_rate() {
        let tb = TokenBucket::new(600).expect("limited"); // 10/s, burst 10
        let t = Instant::now();
        for _ in 0..15 {
            tb.acquire(1.0).await;
        }
        let el = t.elapsed();
        assert!(el >= Duration::from_millis(400) && el < Duration::from_secs(2), "{el:?}");
        assert!(TokenBucket::new(0).is_none());
    }
}
