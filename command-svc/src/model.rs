//! The write model: the state of every job that is not finished, the ready index and the timer
//! heap. Pure data, no I/O and no clock (callers pass `now`); the follower and the worker
//! routes share it behind one mutex and never hold it across an await.
//!
//! Ready index, per job type: priority (high first), then within a priority a round-robin over
//! tenants (so a tenant with 100,000 queued jobs cannot starve one with 5), then per tenant
//! earliest `run_at`, then enqueue order. Invariant: a job is in at most one place — the ready
//! index, the timer heap (waiting for `run_at` or watching its lease), or taken by a lease in
//! flight — and its `Slot`'s place says which.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;

use chrono::{DateTime, Utc};
use events::platform::{LimitOverrides, PauseTarget, PlatformEvent};
use events::{apply, ApplyError, Job, Name, Recorded, Status};
use uuid::Uuid;

use crate::payloads::{self, Kept};

mod ready_keys;
use ready_keys::ReadyKeys;

type KeyLeased = HashMap<(Uuid, String), u32>;
type KeyStarts = HashMap<(Uuid, String), VecDeque<DateTime<Utc>>>;

/// Whether a lease of a job with `limit` may start at `now`.
fn key_open(
    leased: &KeyLeased,
    starts: &KeyStarts,
    tenant: Uuid,
    limit: &events::ConcurrencyLimit,
    now: DateTime<Utc>,
) -> bool {
    let key = (tenant, limit.concurrency_key.clone());
    let n = leased.get(&key).copied().unwrap_or(0);
    if limit.max_concurrent.is_some_and(|m| n >= m) {
        return false;
    }
    match limit.max_per_second {
        Some(rate) => {
            let window = now - chrono::Duration::seconds(1);
            let recent = starts
                .get(&key)
                .map_or(0, |s| s.iter().filter(|t| **t > window).count());
            recent < rate as usize
        }
        None => true,
    }
}

/// When a key held back by its rate opens again: a second after the oldest start of the last
/// second.
fn rate_opens(
    starts: &KeyStarts,
    tenant: Uuid,
    limit: &events::ConcurrencyLimit,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let window = now - chrono::Duration::seconds(1);
    starts
        .get(&(tenant, limit.concurrency_key.clone()))?
        .iter()
        .find(|t| **t > window)
        .map(|t| *t + chrono::Duration::seconds(1))
}

/// FIFO key within one tenant at one priority: `run_at`, then `created_at`, then the id. The
/// times are nanoseconds since the epoch (32 bytes a key where two `DateTime`s made 40: a
/// million ready jobs hold a million keys); they order as the times do, saturating outside
/// the years 1677 to 2262.
type Key = (i64, i64, Uuid);

fn nanos(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(if t.timestamp() < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

fn ready_key(job: &Job) -> Key {
    (nanos(job.run_at), nanos(job.created_at), job.id)
}

#[derive(Default)]
struct Level {
    rotation: VecDeque<Uuid>,
    tenants: HashMap<Uuid, ReadyKeys<Key>>,
}

#[derive(Default)]
struct TypeIndex {
    levels: BTreeMap<Reverse<u8>, Level>,
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Place {
    /// In the ready index, under its stored job's type, priority, tenant and [`ready_key`]:
    /// every change to a stored job unplaces it first, so the stored job is the placed one.
    Ready,
    /// In the timer heap, armed for this instant ([`waiting`]; heap entries for other
    /// instants are stale).
    Waiting(i64),
    Taken,
    /// Waiting for the jobs it depends on.
    Blocked,
}

/// A job armed for `at`: its instant as [`nanos`], above the values [`Packed`] keeps for the
/// other places.
fn waiting(at: DateTime<Utc>) -> Place {
    Place::Waiting(nanos(at).max(Packed::FIRST_INSTANT))
}

/// An `Option<Place>` in 8 bytes where the enum takes 16: the armed instant, or one of four
/// values below any instant [`waiting`] gives. A million pending jobs each have one, and the 8
/// bytes are what puts a slot in the 192-byte size class.
#[derive(Clone, Copy, PartialEq)]
struct Packed(i64);

impl Packed {
    const NOWHERE: i64 = i64::MIN;
    const READY: i64 = i64::MIN + 1;
    const TAKEN: i64 = i64::MIN + 2;
    const BLOCKED: i64 = i64::MIN + 3;
    const FIRST_INSTANT: i64 = i64::MIN + 4;

    fn new(place: Option<Place>) -> Self {
        Self(match place {
            None => Self::NOWHERE,
            Some(Place::Ready) => Self::READY,
            Some(Place::Taken) => Self::TAKEN,
            Some(Place::Blocked) => Self::BLOCKED,
            Some(Place::Waiting(at)) => at.max(Self::FIRST_INSTANT),
        })
    }

    fn get(self) -> Option<Place> {
        match self.0 {
            Self::NOWHERE => None,
            Self::READY => Some(Place::Ready),
            Self::TAKEN => Some(Place::Taken),
            Self::BLOCKED => Some(Place::Blocked),
            at => Some(Place::Waiting(at)),
        }
    }
}

/// A job the model holds, and where it is: one allocation of 192 bytes (a table of places cost
/// about 70 bytes per job).
struct Slot {
    job: Job,
    place: Packed,
}

/// The jobs the model holds, each found by its own id: hash tables of pointers to boxed
/// slots. Boxed, because a hash table keeps up to half its entries empty, so inline jobs would
/// cost twice their size in table (measured with 640-byte jobs: 2.6 KB of RSS per pending job);
/// keyed by the slot's own `job.id`, because a map from id to box took 24 bytes an entry where
/// the pointer alone takes 8 (about 35 bytes less per pending job, with the empty entries).
///
/// [`JOB_SHARDS`] tables, each job in the one its id's hash picks, so that no single step
/// under the model's lock walks every job: a table that grows rehashes only its own share
/// (one table of a million reads every job's id from its box to move it), and a snapshot
/// taken while serving collects the ids one table at a time
/// ([`WriteModel::jobs_in_shard`]).
struct Jobs {
    shards: Box<[hashbrown::HashTable<Box<Slot>>]>,
    hasher: std::hash::RandomState,
    len: usize,
}

/// How many tables hold the model's jobs: with a million jobs, about 4,000 each.
pub const JOB_SHARDS: usize = 256;

impl Default for Jobs {
    fn default() -> Self {
        Self {
            shards: (0..JOB_SHARDS)
                .map(|_| hashbrown::HashTable::new())
                .collect(),
            hasher: Default::default(),
            len: 0,
        }
    }
}

impl Jobs {
    fn hash(&self, id: &Uuid) -> u64 {
        self.hasher.hash_one(id)
    }

    /// The table a hash belongs in, from bits the tables' own use of it leaves alone: hashbrown
    /// takes a bucket from the low bits and a tag from the top seven.
    fn shard(hash: u64) -> usize {
        (hash >> 32) as usize % JOB_SHARDS
    }

    fn get(&self, id: &Uuid) -> Option<&Slot> {
        let hash = self.hash(id);
        self.shards[Self::shard(hash)]
            .find(hash, |s| s.job.id == *id)
            .map(|s| &**s)
    }

    fn get_mut(&mut self, id: &Uuid) -> Option<&mut Slot> {
        let hash = self.hash(id);
        self.shards[Self::shard(hash)]
            .find_mut(hash, |s| s.job.id == *id)
            .map(|s| &mut **s)
    }

    /// Adds a slot for a job not held yet.
    fn insert_new(&mut self, slot: Box<Slot>) {
        let hasher = &self.hasher;
        let hash = hasher.hash_one(slot.job.id);
        debug_assert!(self.get(&slot.job.id).is_none());
        self.shards[Self::shard(hash)].insert_unique(hash, slot, |s| hasher.hash_one(s.job.id));
        self.len += 1;
    }

    fn remove(&mut self, id: &Uuid) -> Option<Box<Slot>> {
        let hash = self.hash(id);
        let found = self.shards[Self::shard(hash)]
            .find_entry(hash, |s| s.job.id == *id)
            .ok()?;
        self.len -= 1;
        Some(found.remove().0)
    }

    fn len(&self) -> usize {
        self.len
    }

    /// Room for `additional` more jobs, spread evenly (as the hash spreads them).
    fn reserve(&mut self, additional: usize) {
        let hasher = &self.hasher;
        let each = additional.div_ceil(JOB_SHARDS);
        for shard in self.shards.iter_mut() {
            shard.reserve(each, |s| hasher.hash_one(s.job.id));
        }
    }

    fn values(&self) -> impl Iterator<Item = &Slot> {
        self.shards.iter().flat_map(|t| t.iter()).map(|s| &**s)
    }

    fn values_in_shard(&self, shard: usize) -> impl Iterator<Item = &Slot> {
        self.shards[shard].iter().map(|s| &**s)
    }
}

/// Where a job with dependencies stands.
enum Dependencies {
    /// These have not ended yet (or are not known here yet).
    Waiting(HashSet<Uuid>),
    /// This one ended so, without completing, and the job's policy is `cancel`.
    Failed(Uuid, Status),
    /// Every one completed (or ended, under `run_anyway`).
    Met,
}

/// How many finished jobs' last sequences are remembered, so a late, older state of a job
/// that already finished is not taken back in.
const TOMBSTONES: usize = 100_000;

/// What a timer that came due asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// A lease ran out: append `JobLeaseExpired` (or what `decide` says).
    LeaseExpired { job_id: Uuid, lease_id: u64 },
    /// A waiting job reached its `expires_at`: append `JobExpired`.
    Expired { job_id: Uuid },
    /// A job it depends on ended without completing: cancel it (its policy is `cancel`).
    DependencyFailed {
        job_id: Uuid,
        dependency: Uuid,
        status: Status,
    },
}

#[derive(Default)]
pub struct WriteModel {
    jobs: Jobs,
    ready: HashMap<Name, TypeIndex>,
    timers: BinaryHeap<Reverse<(DateTime<Utc>, Uuid)>>,
    /// Waiting jobs' `expires_at` (entries for jobs that moved on are skipped when due).
    expiries: BinaryHeap<Reverse<(DateTime<Utc>, Uuid)>>,
    finished: HashMap<Uuid, u64>,
    /// How each finished job ended (bounded with `finished`).
    ended: HashMap<Uuid, Status>,
    finished_order: VecDeque<Uuid>,
    /// Jobs waiting for dependencies, with the dependencies not yet ended.
    blocked: HashMap<Uuid, HashSet<Uuid>>,
    /// A dependency → the jobs waiting for it.
    dependents: HashMap<Uuid, HashSet<Uuid>>,
    /// Jobs to cancel because a dependency failed (drained by `tick`).
    dependency_failed: Vec<(Uuid, Uuid, Status)>,
    counts: HashMap<Uuid, TenantCounts>,
    /// Limit overrides per tenant (from `TenantLimitsOverridden` events).
    pub overrides: HashMap<Uuid, LimitOverrides>,
    /// Each tenant's plan tier, as its latest enqueue said.
    pub tiers: HashMap<Uuid, String>,
    /// Workers that get no new leases.
    pub draining: HashSet<String>,
    /// Each tenant's paused queues and job types: their jobs are not leased.
    pub paused: HashMap<Uuid, HashSet<PauseTarget>>,
    /// Leased jobs per (tenant, concurrency key).
    key_leased: KeyLeased,
    /// The last stream sequence of each (tenant, concurrency key)'s slot subject.
    key_seq: HashMap<(Uuid, String), u64>,
    /// Recent lease starts per (tenant, concurrency key) with a rate limit (last second).
    key_starts: KeyStarts,
    /// When a key skipped for its rate opens again (the earliest), for waiting lessees.
    pub rate_opens_at: Option<DateTime<Utc>>,
    /// Jobs placed in the ready index since the engine last looked (`take_woken`): each wakes
    /// one waiting lease.
    woken: crate::waiters::Woken,
    /// Tenants a lease passed over because of a limit (their concurrent leases, or a
    /// concurrency key's): when one of their leases ends, the waiting leases look again.
    starved: HashSet<Uuid>,
    /// Waiting jobs whose payload is still in memory (`crate::payloads`).
    kept: Kept,
}

/// A tenant's jobs that count against its limits.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TenantCounts {
    /// Scheduled, pending or leased.
    pub active: u64,
    pub leased: u64,
}

/// The outcome of folding one event in.
#[derive(Debug, PartialEq, Eq)]
pub enum Folded {
    /// Applied; `ready` when the job is now leasable.
    Applied { ready: bool },
    /// Already reflected (applied locally before the stream delivered it).
    Seen,
    /// An event for a job this model does not hold (finished before, or unknown).
    Unknown,
}

impl WriteModel {
    /// A tenant's counts of active and leased jobs.
    pub fn counts(&self, tenant: &Uuid) -> TenantCounts {
        self.counts.get(tenant).copied().unwrap_or_default()
    }

    /// Stores (or, with None, removes) a job, keeping the tenant counts in step.
    fn store(&mut self, id: Uuid, job: Option<Job>) {
        let still_leased = job.as_ref().is_some_and(|j| j.status == Status::Leased);
        let contribution = |j: &Job| {
            let active = matches!(
                j.status,
                Status::Scheduled | Status::Pending | Status::Leased
            ) as u64;
            (j.tenant_id, active, (j.status == Status::Leased) as u64)
        };
        let keyed = |j: &Job| {
            j.extras()
                .limits
                .as_ref()
                .filter(|_| j.status == Status::Leased)
                .map(|l| (j.tenant_id, l.concurrency_key.clone()))
        };
        let old = match job {
            Some(j) => {
                let new = contribution(&j);
                let c = self.counts.entry(new.0).or_default();
                c.active += new.1;
                c.leased += new.2;
                if let Some(k) = keyed(&j) {
                    *self.key_leased.entry(k).or_default() += 1;
                }
                let started = j.lease.as_ref().filter(|l| {
                    self.job(&id)
                        .and_then(|o| o.lease.as_ref())
                        .map(|o| o.lease_id)
                        != Some(l.lease_id)
                });
                if let (Some(l), Some(limit)) = (started, j.extras().limits.as_ref()) {
                    if limit.max_per_second.is_some() {
                        let starts = self
                            .key_starts
                            .entry((j.tenant_id, limit.concurrency_key.clone()))
                            .or_default();
                        starts.push_back(l.leased_at);
                        // Only the last second matters; keep the deque short.
                        while starts
                            .front()
                            .is_some_and(|t| *t < l.leased_at - chrono::Duration::seconds(1))
                        {
                            starts.pop_front();
                        }
                    }
                }
                let keep = self.kept.is_bounded()
                    && payloads::may_leave(&j)
                    && !payloads::is_dropped(&j.payload);
                if keep {
                    self.kept.note(id, j.payload.as_str().len());
                }
                let old = match self.jobs.get_mut(&id) {
                    Some(slot) => Some(std::mem::replace(&mut slot.job, j)),
                    None => {
                        debug_assert_eq!(j.id, id);
                        self.jobs.insert_new(Box::new(Slot {
                            job: j,
                            place: Packed::new(None),
                        }));
                        None
                    }
                };
                if keep {
                    self.drop_payloads();
                }
                old
            }
            None => self.jobs.remove(&id).map(|slot| slot.job),
        };
        if let Some(old) = old {
            let (tenant, active, leased) = contribution(&old);
            if let Some(c) = self.counts.get_mut(&tenant) {
                c.active -= active;
                c.leased -= leased;
            }
            // A lease ended: a job its tenant's limit held back may be leasable now. Which
            // one is not known here, so every waiting lease looks.
            if leased == 1 && !still_leased && self.starved.remove(&tenant) {
                self.woken.wake_all();
            }
            if let Some(k) = keyed(&old) {
                if let Some(n) = self.key_leased.get_mut(&k) {
                    *n -= 1;
                    if *n == 0 {
                        self.key_leased.remove(&k);
                    }
                }
            }
        }
    }

    /// Takes the payloads of the waiting jobs stored longest ago out of memory, while the
    /// kept ones exceed their budget. A job leased (or finished) since keeps its payload.
    fn drop_payloads(&mut self) {
        while let Some(id) = self.kept.next_to_drop() {
            if let Some(slot) = self.jobs.get_mut(&id) {
                if payloads::may_leave(&slot.job) {
                    slot.job.payload = payloads::dropped();
                }
            }
        }
    }

    /// A payload read back from the stream for a job held here: a leased job keeps it in
    /// memory again (its heartbeats and its completion answer with the job). A waiting job
    /// does not: it stays out of memory as the budget decided.
    pub fn give_back_payload(&mut self, id: &Uuid, payload_seq: u64, payload: &events::Json) {
        if let Some(slot) = self.jobs.get_mut(id) {
            let job = &mut slot.job;
            if job.status == Status::Leased
                && job.payload_seq == payload_seq
                && payloads::is_dropped(&job.payload)
            {
                job.payload = payload.clone();
            }
        }
    }

    /// Keeps the payloads of waiting jobs in memory up to `bytes` (then reads them back from
    /// the stream); unbounded by default.
    pub fn set_payload_budget(&mut self, bytes: usize) {
        self.kept = Kept::with_budget(bytes);
    }

    pub fn payload_budget(&self) -> usize {
        self.kept.budget()
    }

    /// Bytes counted for the waiting jobs' payloads kept in memory.
    pub fn kept_payload_bytes(&self) -> usize {
        self.kept.bytes()
    }

    /// Folds a tenant or worker event in.
    pub fn fold_platform(&mut self, event: &PlatformEvent) {
        match event {
            PlatformEvent::LimitsOverridden {
                tenant_id,
                overrides,
            } => {
                self.overrides.insert(*tenant_id, overrides.clone());
            }
            PlatformEvent::OverridesCleared { tenant_id } => {
                self.overrides.remove(tenant_id);
            }
            PlatformEvent::WorkerDrained { worker_id } => {
                self.draining.insert(worker_id.clone());
            }
            PlatformEvent::WorkerUndrained { worker_id } => {
                self.draining.remove(worker_id);
            }
            // Its sequence is recorded by `note_slot` (the follower knows it).
            PlatformEvent::ConcurrencySlotTaken { .. } => {}
            PlatformEvent::QueuePaused { .. }
            | PlatformEvent::QueueResumed { .. }
            | PlatformEvent::JobTypePaused { .. }
            | PlatformEvent::JobTypeResumed { .. } => {
                if let Some((tenant, target, pause)) = event.pause() {
                    let set = self.paused.entry(tenant).or_default();
                    if pause {
                        set.insert(target);
                    } else {
                        set.remove(&target);
                        if set.is_empty() {
                            self.paused.remove(&tenant);
                        }
                    }
                }
            }
        }
    }

    /// Whether a lease of a job with `limit` may start at `now` (leased count and the last
    /// second's starts under the limits).
    pub fn key_open(
        &self,
        tenant: Uuid,
        limit: &events::ConcurrencyLimit,
        now: DateTime<Utc>,
    ) -> bool {
        key_open(&self.key_leased, &self.key_starts, tenant, limit, now)
    }

    /// The last sequence of the key's slot subject this model has seen (0: none).
    pub fn key_seq(&self, tenant: Uuid, key: &str) -> u64 {
        self.key_seq
            .get(&(tenant, key.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Records a `ConcurrencySlotTaken` at stream sequence `seq`.
    pub fn note_slot(&mut self, tenant: Uuid, key: &str, seq: u64) {
        let e = self.key_seq.entry((tenant, key.to_string())).or_default();
        *e = (*e).max(seq);
    }

    /// Whether the tenant paused this queue or job type.
    pub fn is_paused(&self, tenant: &Uuid, target: &PauseTarget) -> bool {
        self.paused.get(tenant).is_some_and(|s| s.contains(target))
    }

    /// Whether the model already reflects the job's event at `seq` (an echo of this instance's
    /// own append, or a finished job's): folding it would change nothing.
    pub fn reflects(&self, id: &Uuid, seq: u64) -> bool {
        self.job(id)
            .map(|j| j.last_event_seq)
            .or_else(|| self.finished.get(id).copied())
            .is_some_and(|last| last >= seq)
    }

    pub fn job(&self, id: &Uuid) -> Option<&Job> {
        self.jobs.get(id).map(|slot| &slot.job)
    }

    /// Where a job is (None: nowhere, or not held).
    fn place(&self, id: &Uuid) -> Option<Place> {
        self.jobs.get(id).and_then(|slot| slot.place.get())
    }

    /// Records where a held job is (nothing, for a job not held).
    fn set_place(&mut self, id: &Uuid, place: Option<Place>) {
        if let Some(slot) = self.jobs.get_mut(id) {
            slot.place = Packed::new(place);
        }
    }

    pub fn live_jobs(&self) -> usize {
        self.jobs.len()
    }

    /// Jobs ready now, per type (for metrics and `explain`).
    pub fn ready_depth(&self) -> HashMap<String, usize> {
        self.ready
            .iter()
            .map(|(t, idx)| {
                (
                    t.to_string(),
                    idx.levels
                        .values()
                        .flat_map(|l| l.tenants.values())
                        .map(|s| s.len())
                        .sum(),
                )
            })
            .collect()
    }

    /// Folds a recorded event in and re-places the job.
    pub fn fold(&mut self, rec: &Recorded, now: DateTime<Utc>) -> Result<Folded, ApplyError> {
        let id = rec.envelope.job_id;
        // A job that finished is remembered by its last sequence (a tombstone): an older
        // event of it is seen, not folded. Without this, a job's `JobEnqueued` folded late (the
        // enqueue's own fold, or the follower's, after a worker had already leased and
        // completed the job through this instance) brought the finished job back as pending:
        // a ghost that refused its next events and could be leased again.
        if self.reflects(&id, rec.seq) {
            return Ok(Folded::Seen);
        }
        if self.job(&id).is_none()
            && !matches!(rec.envelope.event, events::JobEvent::Enqueued { .. })
        {
            return Ok(Folded::Unknown);
        }
        if let events::JobEvent::Enqueued {
            plan_tier: Some(tier),
            ..
        } = &rec.envelope.event
        {
            self.note_tier(rec.envelope.tenant_id, tier);
        }
        if matches!(rec.envelope.event, events::JobEvent::Purged {}) {
            self.forget(&id);
            return Ok(Folded::Applied { ready: false });
        }
        let job = apply(self.job(&id), rec)?;
        let ready = self.put(job, now);
        Ok(Folded::Applied { ready })
    }

    /// Remembers the plan tier a tenant's latest new job was enqueued under (its limits
    /// when a scheduler or the sweeper acts for it).
    fn note_tier(&mut self, tenant: Uuid, tier: &str) {
        if self.tiers.get(&tenant).map(String::as_str) != Some(tier) {
            self.tiers.insert(tenant, tier.to_string());
        }
    }

    /// Takes a new job this instance has just appended, already folded from its `JobEnqueued`
    /// by the caller, as [`Self::fold`] takes that event: the tenant's tier noted and the job
    /// placed, unless the model already reflects it (the follower was first). Returns whether
    /// it is ready now.
    pub fn enqueued(&mut self, job: Job, tier: &str, now: DateTime<Utc>) -> bool {
        if self.reflects(&job.id, job.last_event_seq) {
            return false;
        }
        self.note_tier(job.tenant_id, tier);
        self.put(job, now)
    }

    /// Stores a job's state unless the model already holds the same or a later one (by its
    /// last event sequence); returns whether it is ready now.
    pub fn offer(&mut self, job: Job, now: DateTime<Utc>) -> bool {
        let held = self.job(&job.id).map(|j| j.last_event_seq);
        let gone = self.finished.get(&job.id).copied();
        if held.or(gone).is_some_and(|seq| seq >= job.last_event_seq) {
            return false;
        }
        self.put(job, now)
    }

    fn bury(&mut self, id: Uuid, seq: u64, status: Status) {
        self.ended.insert(id, status);
        if self.finished.insert(id, seq).is_none() {
            self.finished_order.push_back(id);
            if self.finished_order.len() > TOMBSTONES {
                if let Some(old) = self.finished_order.pop_front() {
                    self.finished.remove(&old);
                    self.ended.remove(&old);
                }
            }
        }
    }

    /// Watches a held job's time (its `run_at`, or its lease's expiry).
    fn arm(&mut self, id: Uuid, at: DateTime<Utc>) {
        self.timers.push(Reverse((at, id)));
        self.set_place(&id, Some(waiting(at)));
    }

    /// Forgets a job (purged).
    pub fn forget(&mut self, id: &Uuid) {
        self.unplace(id);
        self.set_place(id, None);
        if let Some((seq, status)) = self.job(id).map(|j| (j.last_event_seq, j.status)) {
            self.store(*id, None);
            self.bury(*id, seq, status);
        }
        self.unblock(id);
        self.wake_dependents(id, chrono::Utc::now());
    }

    /// A dependency's status as this model knows it (None: not known here).
    fn dependency_status(&self, id: &Uuid) -> Option<Status> {
        self.job(id)
            .map(|j| j.status)
            .or_else(|| self.ended.get(id).copied())
    }

    fn dependencies(&self, job: &Job) -> Dependencies {
        let run_anyway =
            job.extras().on_dependency_failure == Some(events::DependencyFailure::RunAnyway);
        let mut waiting = HashSet::new();
        for dep in &job.extras().depends_on {
            match self.dependency_status(dep) {
                Some(Status::Completed) => {}
                Some(s @ (Status::DeadLettered | Status::Cancelled | Status::Expired)) => {
                    if !run_anyway {
                        return Dependencies::Failed(*dep, s);
                    }
                }
                _ => {
                    waiting.insert(*dep);
                }
            }
        }
        if waiting.is_empty() {
            Dependencies::Met
        } else {
            Dependencies::Waiting(waiting)
        }
    }

    fn unblock(&mut self, id: &Uuid) {
        if let Some(deps) = self.blocked.remove(id) {
            for dep in deps {
                if let Some(set) = self.dependents.get_mut(&dep) {
                    set.remove(id);
                    if set.is_empty() {
                        self.dependents.remove(&dep);
                    }
                }
            }
        }
    }

    /// A job's state changed: the jobs waiting for it look again. Returns whether one became
    /// ready.
    fn wake_dependents(&mut self, id: &Uuid, now: DateTime<Utc>) -> bool {
        let Some(waiting) = self.dependents.get(id).cloned() else {
            return false;
        };
        let mut ready = false;
        for w in waiting {
            if let Some(job) = self.job(&w).cloned() {
                ready |= self.put(job, now);
            }
        }
        ready
    }

    /// Looks at a waiting job's dependencies again (a cancel for a failed one did not go
    /// through, or the model was catching up).
    pub fn recheck(&mut self, id: &Uuid, now: DateTime<Utc>) {
        if let Some(job) = self.job(id).cloned() {
            self.put(job, now);
        }
    }

    /// Stores a job's new state and places it; returns whether it is ready now. Completed and
    /// cancelled jobs leave the model; dead-lettered ones stay (unplaced) for redrives.
    pub fn put(&mut self, job: Job, now: DateTime<Utc>) -> bool {
        self.unplace(&job.id);
        self.unblock(&job.id);
        if job.status.is_terminal() {
            self.set_place(&job.id, None);
            let (id, seq, status) = (job.id, job.last_event_seq, job.status);
            if job.status == Status::DeadLettered {
                self.store(id, Some(job));
            } else {
                self.store(id, None);
                self.bury(id, seq, status);
            }
            return self.wake_dependents(&id, now);
        }
        let id = job.id;
        if matches!(job.status, Status::Scheduled | Status::Pending)
            && !job.extras().depends_on.is_empty()
        {
            match self.dependencies(&job) {
                Dependencies::Met => {}
                Dependencies::Failed(dep, status) => {
                    self.dependency_failed.push((id, dep, status));
                    self.store(id, Some(job));
                    self.set_place(&id, Some(Place::Blocked));
                    return false;
                }
                Dependencies::Waiting(deps) => {
                    for dep in &deps {
                        self.dependents.entry(*dep).or_default().insert(id);
                    }
                    self.blocked.insert(id, deps);
                    self.store(id, Some(job));
                    self.set_place(&id, Some(Place::Blocked));
                    return false;
                }
            }
        }
        if let (Status::Scheduled | Status::Pending, Some(at)) =
            (job.status, job.extras().expires_at)
        {
            self.expiries.push(Reverse((at, id)));
        }
        // Placed once stored: the place lives with the job.
        let (ready, arm) = match job.status {
            Status::Scheduled | Status::Pending if job.run_at <= now && !job.cancel_requested => {
                (true, None)
            }
            Status::Scheduled | Status::Pending => (false, Some(job.run_at)),
            Status::Leased => (
                false,
                Some(job.lease.as_ref().map_or(now, |l| l.expires_at)),
            ),
            _ => (false, None),
        };
        self.store(id, Some(job));
        if ready {
            self.place_ready(&id);
        } else if let Some(at) = arm {
            self.arm(id, at);
        }
        ready
    }

    /// The jobs placed in the ready index since the last call (for waking waiting leases).
    pub fn take_woken(&mut self) -> crate::waiters::Woken {
        std::mem::take(&mut self.woken)
    }

    /// Puts a held job in the ready index.
    fn place_ready(&mut self, id: &Uuid) {
        let Some(slot) = self.jobs.get_mut(id) else {
            return;
        };
        slot.place = Packed::new(Some(Place::Ready));
        let job = &slot.job;
        self.woken.push((job.job_type.clone(), job.queue.clone()));
        let level = self
            .ready
            .entry(job.job_type.clone())
            .or_default()
            .levels
            .entry(Reverse(job.priority))
            .or_default();
        let set = level.tenants.entry(job.tenant_id).or_default();
        if set.is_empty() {
            level.rotation.push_back(job.tenant_id);
        }
        set.insert(ready_key(job));
    }

    fn unplace(&mut self, id: &Uuid) {
        let Some(slot) = self
            .jobs
            .get_mut(id)
            .filter(|s| s.place.get() == Some(Place::Ready))
        else {
            return;
        };
        slot.place = Packed::new(None);
        let job = &slot.job;
        let (priority, tenant, key) = (job.priority, job.tenant_id, ready_key(job));
        let Some(idx) = self.ready.get_mut(&job.job_type) else {
            return;
        };
        let Some(level) = idx.levels.get_mut(&Reverse(priority)) else {
            return;
        };
        if let Some(set) = level.tenants.get_mut(&tenant) {
            set.remove(&key);
            if set.is_empty() {
                level.tenants.remove(&tenant);
                level.rotation.retain(|t| *t != tenant);
            }
        }
        if level.tenants.is_empty() {
            idx.levels.remove(&Reverse(priority));
        }
        if idx.levels.is_empty() {
            self.ready.remove(&job.job_type);
        }
    }

    /// Takes the next job to lease among `types` (and `queues`, when given): highest priority
    /// first; at that priority the next tenant in the rotation; that tenant's oldest job. The
    /// job leaves the index until `put` or `release` places it again.
    pub fn take(
        &mut self,
        types: &[String],
        queues: Option<&[String]>,
        lease_limit: impl Fn(&Self, Uuid) -> u64,
    ) -> Option<Job> {
        self.take_at(types, queues, lease_limit, &HashMap::new(), Utc::now())
    }

    /// `take` at `now` (the instant rate limits are judged at), counting `pending` taken jobs
    /// per tenant against its lease limit.
    pub fn take_at(
        &mut self,
        types: &[String],
        queues: Option<&[String]>,
        lease_limit: impl Fn(&Self, Uuid) -> u64,
        pending: &HashMap<Uuid, u64>,
        now: DateTime<Utc>,
    ) -> Option<Job> {
        let mut opens: Option<DateTime<Utc>> = None;
        let accepts = |j: &Job| queues.is_none_or(|qs| qs.iter().any(|q| *q == j.queue));
        // Tenants at their concurrent-lease limit wait; the others are served. `pending`
        // counts jobs taken for leases not appended yet.
        let full: HashSet<Uuid> = self
            .counts
            .iter()
            .filter(|(t, c)| {
                let held = c.leased + pending.get(t).copied().unwrap_or(0);
                held > 0 && held >= lease_limit(self, **t)
            })
            .map(|(t, _)| *t)
            .collect();
        for priority in (0..=10u8).rev() {
            for t in types {
                let Some(level) = self
                    .ready
                    .get_mut(t.as_str())
                    .and_then(|i| i.levels.get_mut(&Reverse(priority)))
                else {
                    continue;
                };
                for _ in 0..level.rotation.len() {
                    let Some(tenant) = level.rotation.pop_front() else {
                        break;
                    };
                    level.rotation.push_back(tenant);
                    if full.contains(&tenant) {
                        self.starved.insert(tenant);
                        continue;
                    }
                    // A tenant's paused type is skipped whole; its paused queues job by job.
                    let paused = self.paused.get(&tenant);
                    if paused.is_some_and(|p| p.contains(&PauseTarget::JobType(t.clone()))) {
                        continue;
                    }
                    let (key_leased, key_starts) = (&self.key_leased, &self.key_starts);
                    let mut key_closed = false;
                    let mut open = |j: &Job| {
                        paused.is_none_or(|p| !p.contains(&PauseTarget::Queue(j.queue.to_string())))
                            // A key at its limit waits; the tenant's other jobs are served.
                            && j.extras().limits.as_ref().is_none_or(|l| {
                                let ok = key_open(key_leased, key_starts, tenant, l, now);
                                if !ok {
                                    key_closed = true;
                                    if let Some(at) = rate_opens(key_starts, tenant, l, now) {
                                        opens = Some(opens.map_or(at, |o| o.min(at)));
                                    }
                                }
                                ok
                            })
                    };
                    let found = level.tenants.get(&tenant).and_then(|set| {
                        set.iter().map(|k| k.2).find(|id| {
                            self.jobs
                                .get(id)
                                .is_some_and(|slot| accepts(&slot.job) && open(&slot.job))
                        })
                    });
                    if key_closed {
                        self.starved.insert(tenant);
                    }
                    if let Some(id) = found {
                        self.unplace(&id);
                        self.set_place(&id, Some(Place::Taken));
                        return self.job(&id).cloned();
                    }
                }
            }
        }
        self.rate_opens_at = opens;
        None
    }

    /// Puts a taken job back where its state says (its lease append failed).
    pub fn release(&mut self, id: &Uuid, now: DateTime<Utc>) -> bool {
        if self.place(id) != Some(Place::Taken) {
            return false;
        }
        self.set_place(id, None);
        match self.job(id).cloned() {
            Some(job) => self.put(job, now),
            None => false,
        }
    }

    /// Moves every job whose time has come into the ready index, and reports the leases that
    /// ran out. Returns (jobs made ready, leases due, the next deadline).
    pub fn tick(&mut self, now: DateTime<Utc>) -> (usize, Vec<Due>, Option<DateTime<Utc>>) {
        let mut made_ready = 0;
        let mut due = Vec::new();
        while let Some(Reverse((at, id))) = self.timers.peek().cloned() {
            if at > now {
                break;
            }
            self.timers.pop();
            // Only the entry the job is armed for counts; others are stale.
            if self.place(&id) != Some(waiting(at)) {
                continue;
            }
            let Some(job) = self.job(&id) else {
                continue;
            };
            match (&job.status, &job.lease) {
                (Status::Leased, Some(l)) if l.expires_at <= now => {
                    let lease_id = l.lease_id;
                    // Disarmed until the expiry is appended (or re-armed by `rewatch`).
                    self.set_place(&id, None);
                    due.push(Due::LeaseExpired {
                        job_id: id,
                        lease_id,
                    });
                }
                (Status::Leased, Some(l)) => {
                    let at = l.expires_at;
                    self.arm(id, at);
                }
                (Status::Scheduled | Status::Pending, _)
                    if job.run_at <= now && !job.cancel_requested =>
                {
                    self.place_ready(&id);
                    made_ready += 1;
                }
                (Status::Scheduled | Status::Pending, _) if job.run_at > now => {
                    let at = job.run_at;
                    self.arm(id, at);
                }
                _ => {}
            }
        }
        while let Some(Reverse((at, id))) = self.expiries.peek().cloned() {
            if at > now {
                break;
            }
            self.expiries.pop();
            let waiting = self.job(&id).is_some_and(|j| {
                matches!(j.status, Status::Scheduled | Status::Pending)
                    && j.extras().expires_at.is_some_and(|e| e <= now)
            });
            if waiting {
                due.push(Due::Expired { job_id: id });
            }
        }
        for (job_id, dependency, status) in std::mem::take(&mut self.dependency_failed) {
            due.push(Due::DependencyFailed {
                job_id,
                dependency,
                status,
            });
        }
        let next = [self.timers.peek(), self.expiries.peek()]
            .into_iter()
            .flatten()
            .map(|Reverse((at, _))| *at)
            .min();
        (made_ready, due, next)
    }

    /// Watches a waiting job's expiry again at `at` (its `JobExpired` append did not go through).
    pub fn rewatch_expiry(&mut self, id: &Uuid, at: DateTime<Utc>) {
        if let Some(j) = self.job(id) {
            if matches!(j.status, Status::Scheduled | Status::Pending)
                && j.extras().expires_at.is_some()
            {
                self.expiries.push(Reverse((at, *id)));
            }
        }
    }

    /// Re-arms the expiry watch of a leased job whose expiry append did not go through.
    pub fn rewatch(&mut self, id: &Uuid, at: DateTime<Utc>) {
        let leased = self.job(id).is_some_and(|j| j.status == Status::Leased);
        if leased && self.place(id).is_none() {
            self.arm(*id, at);
        }
    }
}

/// What a snapshot keeps of the model beside its jobs: everything not derived from them. The
/// ready index, timers, counts and dependency links are derived again by placing every job
/// (`WriteModel::restore`), exactly as a replay places them.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Image {
    /// Finished jobs, oldest first: (id, last sequence, how it ended).
    tombstones: Vec<(Uuid, u64, Status)>,
    overrides: Vec<(Uuid, LimitOverrides)>,
    tiers: Vec<(Uuid, String)>,
    draining: Vec<String>,
    paused: Vec<(Uuid, Vec<PauseTarget>)>,
    key_seq: Vec<(Uuid, String, u64)>,
}

impl WriteModel {
    /// The model's state beside its jobs (see [`Image`]); the jobs come from [`Self::jobs`].
    pub fn image(&self) -> Image {
        Image {
            tombstones: self
                .finished_order
                .iter()
                .filter_map(|id| Some((*id, *self.finished.get(id)?, *self.ended.get(id)?)))
                .collect(),
            overrides: self
                .overrides
                .iter()
                .map(|(t, o)| (*t, o.clone()))
                .collect(),
            tiers: self.tiers.iter().map(|(t, p)| (*t, p.clone())).collect(),
            draining: self.draining.iter().cloned().collect(),
            paused: self
                .paused
                .iter()
                .map(|(t, set)| (*t, set.iter().cloned().collect()))
                .collect(),
            key_seq: self
                .key_seq
                .iter()
                .map(|((t, k), seq)| (*t, k.clone(), *seq))
                .collect(),
        }
    }

    /// Every job the model holds (unfinished, and dead-lettered ones).
    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values().map(|slot| &slot.job)
    }

    /// The jobs in one of the model's [`JOB_SHARDS`] tables: every job is in exactly one, for
    /// as long as the model holds it. A walk over every job while serving takes the model's
    /// lock for one table at a time, so it holds the lock for a few thousand jobs at most.
    pub fn jobs_in_shard(&self, shard: usize) -> impl Iterator<Item = &Job> {
        self.jobs.values_in_shard(shard).map(|slot| &slot.job)
    }

    /// A model from a snapshot: its image, then every job placed at `now` as a replay would
    /// place it. Folding the events after the snapshot's position then gives the model a full
    /// replay gives (tested in `model::tests`).
    pub fn restore(
        image: Image,
        capacity: usize,
        jobs: impl IntoIterator<Item = Job>,
        now: DateTime<Utc>,
        payload_budget: usize,
    ) -> Self {
        let mut model = WriteModel {
            overrides: image.overrides.into_iter().collect(),
            tiers: image.tiers.into_iter().collect(),
            draining: image.draining.into_iter().collect(),
            paused: image
                .paused
                .into_iter()
                .map(|(t, v)| (t, v.into_iter().collect()))
                .collect(),
            key_seq: image
                .key_seq
                .into_iter()
                .map(|(t, k, seq)| ((t, k), seq))
                .collect(),
            kept: Kept::with_budget(payload_budget),
            ..Default::default()
        };
        for (id, seq, status) in image.tombstones {
            model.bury(id, seq, status);
        }
        model.jobs.reserve(capacity);
        for job in jobs {
            model.put(job, now);
        }
        // The snapshot's order is the job table's, not the ready index's.
        for level in model.ready.values_mut().flat_map(|i| i.levels.values_mut()) {
            level.tenants.values_mut().for_each(ReadyKeys::compact);
        }
        model
    }
}

#[cfg(test)]
mod tests;
