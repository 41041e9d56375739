//! query-svc: the read side. Serves jobs and their event history from the Postgres read model
//! with keyset cursor pagination, and read-your-writes through `x-min-event-seq` (woken by
//! the projector's NOTIFY, never by polling).

pub mod config;
pub mod cursor;
pub mod freshness;
pub mod routes;
pub mod startup;

pub use config::Config;
pub use startup::Application;
