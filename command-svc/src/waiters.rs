//! Long-polling leases waiting for a job, woken one per job that became ready.
//!
//! Waking every waiting lease for each ready job (a `Notify::notify_waiters`) made 16 workers
//! race for one job: the 15 losers each took the model lock and searched the index on the same
//! runtime threads as the winner, which doubled the lease latency at 100 jobs/s (see
//! docs/performance.md). Here each ready job wakes the longest-waiting lease whose types (and
//! queues) match it, and no other.
//!
//! No job is left waiting while a lease that could take it sleeps:
//! - a lease registers before it looks in the ready index, so a job made ready after its look
//!   wakes it (a job made ready before is found by the look);
//! - a woken lease is taken off the list at once, so the next ready job wakes another;
//! - a lease that goes away with a wake it did not use (it returned with other jobs, or its
//!   request was dropped) passes the wake on to another matching lease.
//!
//! Changes that may make many jobs leasable at once without saying which (a resumed queue, a
//! model that caught up) wake every waiting lease.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use events::Name;
use tokio::sync::Notify;

/// A job that became ready: its type and queue.
pub type ReadyKey = (Name, Name);

/// Jobs that became ready since the last look: their keys, or that there were too many to
/// list (wake everyone).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Woken {
    pub keys: Vec<ReadyKey>,
    pub all: bool,
}

impl Woken {
    /// At most this many keys are kept between two looks; beyond, every lease is woken.
    pub const MAX_KEYS: usize = 1024;

    pub fn push(&mut self, key: ReadyKey) {
        if self.all {
            return;
        }
        if self.keys.len() >= Self::MAX_KEYS {
            self.keys = Vec::new();
            self.all = true;
        } else {
            self.keys.push(key);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && !self.all
    }

    /// Every waiting lease is to look (what became leasable is not known by type).
    pub fn wake_all(&mut self) {
        self.keys = Vec::new();
        self.all = true;
    }
}

struct Signal {
    notify: Notify,
    /// The ready job this lease was woken for, until it uses the wake or passes it on.
    woken_for: Mutex<Option<ReadyKey>>,
}

struct Entry {
    id: u64,
    types: Vec<String>,
    queues: Option<Vec<String>>,
    signal: Arc<Signal>,
}

impl Entry {
    fn matches(&self, (job_type, queue): &ReadyKey) -> bool {
        self.types.iter().any(|t| *job_type == *t)
            && self
                .queues
                .as_ref()
                .is_none_or(|qs| qs.iter().any(|q| *queue == *q))
    }
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    /// Oldest first.
    waiting: VecDeque<Entry>,
}

/// The leases waiting for a job.
#[derive(Default)]
pub struct Waiters {
    inner: Mutex<Inner>,
    /// How many wait (`jobs_leases_waiting`).
    gauge: Option<prometheus::IntGauge>,
}

impl Waiters {
    /// Keeps `gauge` at the number of waiting leases.
    pub fn with_gauge(gauge: prometheus::IntGauge) -> Self {
        Self {
            inner: Default::default(),
            gauge: Some(gauge),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .expect("the waiters lock is never poisoned")
    }

    fn count(&self, inner: &Inner) {
        if let Some(g) = &self.gauge {
            g.set(inner.waiting.len() as i64);
        }
    }

    /// Registers a lease of `types` (and `queues`): until the registration is dropped, a job
    /// of theirs that becomes ready may wake it.
    pub fn register(&self, types: &[String], queues: Option<&[String]>) -> Registration<'_> {
        let signal = Arc::new(Signal {
            notify: Notify::new(),
            woken_for: Mutex::new(None),
        });
        let mut inner = self.inner();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.waiting.push_back(Entry {
            id,
            types: types.to_vec(),
            queues: queues.map(<[String]>::to_vec),
            signal: signal.clone(),
        });
        self.count(&inner);
        Registration {
            waiters: self,
            id,
            signal,
        }
    }

    /// Wakes one waiting lease per ready job (every one when there were too many to list).
    pub fn wake(&self, woken: Woken) {
        if woken.all {
            self.wake_all();
            return;
        }
        for key in woken.keys {
            self.wake_one(key);
        }
    }

    /// Wakes the longest-waiting lease that takes jobs like this one; none when no lease
    /// waits for it (a lease that registers later looks in the index first).
    pub fn wake_one(&self, key: ReadyKey) {
        let entry = {
            let mut inner = self.inner();
            let Some(at) = inner.waiting.iter().position(|e| e.matches(&key)) else {
                return;
            };
            let entry = inner.waiting.remove(at);
            self.count(&inner);
            entry
        };
        if let Some(entry) = entry {
            *entry
                .signal
                .woken_for
                .lock()
                .expect("the woken lock is never poisoned") = Some(key);
            entry.signal.notify.notify_one();
        }
    }

    /// Wakes every waiting lease.
    pub fn wake_all(&self) {
        let all = {
            let mut inner = self.inner();
            let all = std::mem::take(&mut inner.waiting);
            self.count(&inner);
            all
        };
        for entry in all {
            entry.signal.notify.notify_one();
        }
    }

    /// How many leases wait now.
    pub fn len(&self) -> usize {
        self.inner().waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A lease's place among the waiters; dropping it passes an unused wake on.
pub struct Registration<'a> {
    waiters: &'a Waiters,
    id: u64,
    signal: Arc<Signal>,
}

impl Registration<'_> {
    /// Waits until a job this lease takes may have become ready, and uses the wake.
    pub async fn woken(&self) {
        self.signal.notify.notified().await;
        self.signal
            .woken_for
            .lock()
            .expect("the woken lock is never poisoned")
            .take();
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        {
            let mut inner = self.waiters.inner();
            if let Some(at) = inner.waiting.iter().position(|e| e.id == self.id) {
                inner.waiting.remove(at);
                self.waiters.count(&inner);
            }
        }
        let unused = self
            .signal
            .woken_for
            .lock()
            .expect("the woken lock is never poisoned")
            .take();
        if let Some(key) = unused {
            self.waiters.wake_one(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(t: &str, q: &str) -> ReadyKey {
        (Name::new(t), Name::new(q))
    }

    fn types(ts: &[&str]) -> Vec<String> {
        ts.iter().map(|t| t.to_string()).collect()
    }

    async fn is_woken(r: &Registration<'_>) -> bool {
        tokio::time::timeout(Duration::from_millis(50), r.woken())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn one_ready_job_wakes_only_the_oldest_matching_lease() {
        let w = Waiters::default();
        let other = w.register(&types(&["resize"]), None);
        let first = w.register(&types(&["email"]), None);
        let second = w.register(&types(&["email"]), None);
        w.wake_one(key("email", "default"));
        assert!(is_woken(&first).await);
        assert!(!is_woken(&second).await);
        assert!(!is_woken(&other).await);
        // The woken one left the list: the next job wakes the next lease.
        assert_eq!(w.len(), 2);
        w.wake_one(key("email", "default"));
        assert!(is_woken(&second).await);
        assert!(!is_woken(&other).await);
    }

    #[tokio::test]
    async fn a_lease_of_other_queues_is_not_woken() {
        let w = Waiters::default();
        let q = [String::from("critical")];
        let critical = w.register(&types(&["email"]), Some(&q));
        let any = w.register(&types(&["email"]), None);
        w.wake_one(key("email", "default"));
        assert!(is_woken(&any).await);
        assert!(!is_woken(&critical).await);
        w.wake_one(key("email", "critical"));
        assert!(is_woken(&critical).await);
    }

    #[tokio::test]
    async fn a_wake_before_the_wait_is_kept() {
        let w = Waiters::default();
        let r = w.register(&types(&["email"]), None);
        w.wake_one(key("email", "default"));
        // The lease was still looking in the index when the job came: its wait ends at once.
        assert!(is_woken(&r).await);
    }

    #[tokio::test]
    async fn an_unused_wake_is_passed_on_when_the_lease_goes_away() {
        let w = Waiters::default();
        let gone = w.register(&types(&["email"]), None);
        let next = w.register(&types(&["email"]), None);
        w.wake_one(key("email", "default"));
        drop(gone);
        assert!(is_woken(&next).await);
        assert!(w.is_empty());
    }

    #[tokio::test]
    async fn a_used_wake_is_not_passed_on() {
        let w = Waiters::default();
        let used = w.register(&types(&["email"]), None);
        let next = w.register(&types(&["email"]), None);
        w.wake_one(key("email", "default"));
        assert!(is_woken(&used).await);
        drop(used);
        assert!(!is_woken(&next).await);
    }

    #[tokio::test]
    async fn too_many_ready_jobs_wake_everyone() {
        let w = Waiters::default();
        let a = w.register(&types(&["email"]), None);
        let b = w.register(&types(&["resize"]), None);
        let mut woken = Woken::default();
        for _ in 0..=Woken::MAX_KEYS {
            woken.push(key("other", "default"));
        }
        assert!(woken.all && woken.keys.is_empty());
        w.wake(woken);
        assert!(is_woken(&a).await);
        assert!(is_woken(&b).await);
        assert!(w.is_empty());
    }
}
