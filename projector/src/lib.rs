//! projector: builds the Postgres read model from `JOBS_EVENTS`.
//!
//! A durable pull consumer delivers events in stream order; each batch is folded with
//! `events::apply` and written in one transaction together with the checkpoint (the last
//! applied stream sequence), then acknowledged. A crash at any point neither loses nor
//! double-applies an event: on start the consumer is repositioned at checkpoint + 1.

pub mod config;
pub mod consumer;
pub mod copy;
pub mod maintenance;
pub mod projection;
pub mod rebuild;
pub mod rollups;
pub mod schedules;
pub mod startup;

pub use config::Config;
pub use startup::Application;
