//! Tenant limits at enqueue: payload size, active jobs, and the enqueue rate.
//!
//! How they hold across several command-svc instances: every instance follows the whole
//! stream, so each sees every tenant's active jobs and every enqueue, whichever instance took
//! it. Active jobs are counted in the write model. The rate is a token bucket per tenant that
//! this instance's requests take from directly and that every other instance's enqueues (seen
//! through the follower) drain too — so the rate holds across instances, up to the follower's
//! lag (milliseconds) and the requests in flight at the same moment.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use common::plans::Limits;
use uuid::Uuid;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.at = now;
    }
}

#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<Uuid, Bucket>>,
}

impl RateLimiter {
    /// Takes `n` tokens for `tenant` at its `limits`, or says how many whole seconds until they
    /// are there. A batch larger than the burst is let through when the bucket is full and
    /// leaves it in debt, so it is never refused forever.
    pub fn take(&self, tenant: Uuid, n: u64, limits: &Limits, now: Instant) -> Result<(), u64> {
        let rate = limits.enqueue_per_second.max(1) as f64;
        let burst = limits.enqueue_burst.max(1) as f64;
        let mut buckets = self
            .buckets
            .lock()
            .expect("the rate limiter lock is never poisoned");
        let b = buckets.entry(tenant).or_insert(Bucket {
            tokens: burst,
            rate,
            burst,
            at: now,
        });
        b.refill(now);
        b.rate = rate;
        b.burst = burst;
        b.tokens = b.tokens.min(burst);
        let need = (n as f64).min(burst);
        if b.tokens + 1e-9 >= need {
            b.tokens -= n as f64;
            return Ok(());
        }
        Err(((need - b.tokens) / rate).ceil().max(1.0) as u64)
    }

    /// Gives back `n` tokens taken for an enqueue that appended nothing (a schedule's firing
    /// that another instance made first).
    pub fn refund(&self, tenant: Uuid, n: u64) {
        let mut buckets = self
            .buckets
            .lock()
            .expect("the rate limiter lock is never poisoned");
        if let Some(b) = buckets.get_mut(&tenant) {
            b.tokens = (b.tokens + n as f64).min(b.burst);
        }
    }

    /// Another instance enqueued `n` jobs for `tenant`.
    pub fn observe(&self, tenant: Uuid, n: u64, now: Instant) {
        let mut buckets = self
            .buckets
            .lock()
            .expect("the rate limiter lock is never poisoned");
        if let Some(b) = buckets.get_mut(&tenant) {
            b.refill(now);
            b.tokens = (b.tokens - n as f64).max(-b.burst);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits(rate: u64, burst: u64) -> Limits {
        Limits {
            max_payload_bytes: 1,
            enqueue_per_second: rate,
            enqueue_burst: burst,
            max_active_jobs: 1,
            max_concurrent_leases: 1,
        }
    }

    #[test]
    fn a_burst_then_the_rate_and_an_honest_wait() {
        let r = RateLimiter::default();
        let (t, l, t0) = (Uuid::new_v4(), limits(2, 4), Instant::now());
        for _ in 0..4 {
            assert_eq!(r.take(t, 1, &l, t0), Ok(()));
        }
        let wait = r.take(t, 1, &l, t0).unwrap_err();
        assert_eq!(wait, 1);
        assert_eq!(
            r.take(t, 1, &l, t0 + Duration::from_secs(wait)),
            Ok(()),
            "a retry after Retry-After succeeds"
        );
        r.observe(t, 10, t0 + Duration::from_secs(wait));
        assert!(
            r.take(t, 1, &l, t0 + Duration::from_secs(wait)).is_err(),
            "other instances' enqueues count"
        );
        assert_eq!(
            r.take(t, 100, &limits(2, 4), t0 + Duration::from_secs(60)),
            Ok(()),
            "a batch over the burst passes a full bucket"
        );
    }
}
