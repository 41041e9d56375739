//! The contract between the processes of the Jobs Service.
//!
//! This crate owns the job events and their JSON form (`envelope`, `event`), the stream and
//! subject names (`stream`), the job's state as every read model shows it (`job`), and the two
//! pure functions the whole system agrees on: [`apply`] folds an event into a job, [`decide`]
//! turns a command into events. It does no I/O and reads no clock: time comes in with the
//! command or the event. Invariant: whatever `decide` emits, `apply` accepts.

pub mod apply;
pub mod canonical;
pub mod decide;
pub mod envelope;
pub mod event;
pub mod job;
pub mod json;
pub mod name;
pub mod platform;
pub mod schedule;
pub mod stream;
pub mod validate;

pub use apply::{apply, ApplyError};
pub use decide::{decide, Command, EnqueueSpec, Rejection};
pub use envelope::{Actor, ActorKind, Envelope, EventHash, Recorded, SCHEMA_VERSION};
pub use event::{ErrorInfo, JobEvent};
pub use job::{
    Backoff, ConcurrencyLimit, DependencyFailure, Extras, Job, JobError, Lease, Status, UniqueSpec,
};
pub use json::Json;
pub use name::Name;
