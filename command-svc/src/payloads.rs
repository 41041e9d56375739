//! Which waiting jobs keep their payload in memory.
//!
//! The write model holds every live job, and a payload is usually the largest part of one (the
//! bench's 180-byte payload is 208 of the 782 bytes a pending job costs). A deep backlog does
//! not need its payloads until its jobs are leased, and the stream keeps each payload anyway,
//! in the event that set it (`Job::payload_seq`). So the payloads of the waiting jobs stored
//! last stay in memory up to a budget of bytes (`JOBS_PAYLOAD_MEMORY_BYTES`); older waiting
//! jobs keep only a marker ([`is_dropped`]), and the engine reads their payload back from the
//! stream when it hands such a job out (`Engine::with_payloads`).
//!
//! Dropped payloads are chosen by the order their jobs were stored in while waiting, oldest
//! first, which is close to the order workers lease them in. A job stored again while waiting
//! (updated, retried) is counted again; its older entry, when it comes up, may drop the payload
//! early. That only costs a read.

use std::collections::VecDeque;
use std::sync::LazyLock;

use events::Json;
use uuid::Uuid;

/// What a job's payload is replaced with when it leaves memory: a `Json` of its own (compared
/// by identity, so no payload a client sent can pass for it; a payload cannot be `null`).
static DROPPED: LazyLock<Json> = LazyLock::new(|| Json::from(serde_json::Value::Null));

/// The marker of a payload out of memory.
pub fn dropped() -> Json {
    DROPPED.clone()
}

/// Whether this payload is out of memory (to be read back from the stream).
pub fn is_dropped(payload: &Json) -> bool {
    Json::same(payload, &DROPPED)
}

/// Whether `job`'s payload may leave memory: it is waiting, and the event holding its
/// payload is known.
pub fn may_leave(job: &events::Job) -> bool {
    matches!(
        job.status,
        events::Status::Scheduled | events::Status::Pending
    ) && job.payload_seq != 0
}

/// Memory counted for one kept payload beside its text: the header of its shared allocation
/// (two counts, the text's pointer and length: 32 bytes) and its entry here (24).
const OVERHEAD: usize = 56;

/// The payloads kept in memory, in the order their jobs were stored, within a budget.
#[derive(Debug)]
pub struct Kept {
    budget: usize,
    order: VecDeque<(Uuid, u32)>,
    bytes: usize,
}

impl Default for Kept {
    /// No budget: every payload stays in memory.
    fn default() -> Self {
        Self::with_budget(usize::MAX)
    }
}

impl Kept {
    pub fn with_budget(budget: usize) -> Self {
        Self {
            budget,
            order: VecDeque::new(),
            bytes: 0,
        }
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Whether payloads ever leave memory.
    pub fn is_bounded(&self) -> bool {
        self.budget != usize::MAX
    }

    /// A waiting job was stored with its payload of `len` bytes.
    pub fn note(&mut self, id: Uuid, len: usize) {
        let cost = len.saturating_add(OVERHEAD);
        self.order
            .push_back((id, u32::try_from(cost).unwrap_or(u32::MAX)));
        self.bytes = self.bytes.saturating_add(cost);
    }

    /// While the kept payloads exceed the budget: the job whose payload leaves memory next.
    pub fn next_to_drop(&mut self) -> Option<Uuid> {
        if self.bytes <= self.budget {
            return None;
        }
        let (id, cost) = self.order.pop_front()?;
        self.bytes = self.bytes.saturating_sub(cost as usize);
        Some(id)
    }

    /// The bytes counted for the payloads kept.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_is_known_by_identity_not_by_value() {
        assert!(is_dropped(&dropped()));
        assert!(!is_dropped(&Json::from(serde_json::Value::Null)));
        assert_eq!(dropped().as_str(), "null");
    }

    #[test]
    fn the_oldest_payloads_leave_first_and_only_over_the_budget() {
        let mut kept = Kept::with_budget(3 * (100 + OVERHEAD));
        let ids: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
        for id in &ids[..3] {
            kept.note(*id, 100);
        }
        assert_eq!(kept.next_to_drop(), None);
        kept.note(ids[3], 100);
        kept.note(ids[4], 100);
        assert_eq!(kept.next_to_drop(), Some(ids[0]));
        assert_eq!(kept.next_to_drop(), Some(ids[1]));
        assert_eq!(kept.next_to_drop(), None);
        assert_eq!(kept.bytes(), 3 * (100 + OVERHEAD));
        assert!(!Kept::default().is_bounded());
    }
}
