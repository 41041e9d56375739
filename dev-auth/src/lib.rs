//! jobs-dev-auth: a **development-only** login that mirrors the product's auth-svc as the seed
//! page shows it. `POST /auth/v1/login` with `{email, password}` answers
//! `{data: {accessToken, refreshToken, expiresIn}}`; `POST /auth/v1/refresh` with
//! `{refreshToken}` rotates the refresh token and answers a new pair.
//!
//! Access tokens are JWTs signed with the dev private key (`common::signing`), carrying exactly
//! the claims the services verify. Refresh tokens are opaque random strings, never JWTs, so one
//! can never pass as a bearer token. Users come from a TOML file with plaintext passwords
//! (`deploy/dev-users.toml`); sessions live in memory and die with the process. It runs only
//! where the set-up started it (`deploy/up`, unless `--no-dev-login`); nothing in a request can
//! switch it on.

pub mod config;
pub mod routes;
pub mod sessions;
pub mod startup;
pub mod tokens;
pub mod users;

pub use config::Config;
pub use startup::Application;
