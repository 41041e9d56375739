//! What the three services share, so that none of them copies it: the request context and
//! response envelope (`context`, `error`), the JSON body extractor (`json`), JWT authentication
//! and the route-to-roles table (`auth`), NATS set-up (`nats`), Prometheus metrics (`metrics`),
//! logging (`telemetry`), readiness (`health`) and serving (`server`); and signing development
//! tokens (`signing`) for `jobsctl token` and the development login.

pub mod auth;
pub mod config;
pub mod context;
pub mod db;
pub mod error;
pub mod health;
pub mod json;
pub mod metrics;
pub mod nats;
pub mod openapi;
pub mod plans;
pub mod server;
pub mod signing;
pub mod telemetry;

pub use error::{ApiError, ApiResult};

/// The service clock: UTC now, to the millisecond (what events record as `at`).
pub fn now() -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    chrono::Utc::now().trunc_subsecs(3)
}
