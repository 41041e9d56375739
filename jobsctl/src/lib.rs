//! The library half of jobsctl: what the CLI does, reusable by tests (the invariant checker).

pub mod check;
