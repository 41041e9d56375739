//! command-svc: the write side. It authenticates and authorizes callers, checks their input,
//! runs `events::decide` and appends the resulting events to JetStream with optimistic
//! concurrency on the job's subject. The stream is the truth: the only thing it writes itself is
//! a snapshot of its write model (`snapshot`), a cache a restart may start from.

pub mod config;
pub mod engine;
pub mod follower;
pub mod group;
pub mod idempotency;
pub mod ids;
pub mod limits;
pub mod model;
pub mod payloads;
pub mod routes;
pub mod scheduler;
pub mod snapshot;
pub mod startup;
pub mod store;
pub mod tls;
pub mod unique;
pub mod waiters;

pub use config::Config;
pub use startup::Application;
