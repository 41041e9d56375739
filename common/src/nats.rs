//! NATS set-up every service does the same way: connect (refusing a server older than 2.12),
//! make sure the `JOBS_EVENTS` stream exists with the configuration we rely on, and build the
//! headers an event is published with.

use std::time::Duration;

use anyhow::{bail, Context};
use async_nats::connection::State;
use async_nats::jetstream::{self, stream};
use async_nats::{Client, HeaderMap};
use events::stream::{EVENT_TYPE_HEADER, MIN_NATS_VERSION, STREAM_NAME, STREAM_SUBJECTS};
use events::Envelope;

/// How long a JetStream request (publish ack, API call) may take before we answer 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Parses `major.minor.patch` (ignoring any suffix) and checks it against the minimum.
pub fn check_server_version(version: &str) -> anyhow::Result<()> {
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u64>().unwrap_or(0));
    let v = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    if v < MIN_NATS_VERSION {
        let (a, b, c) = MIN_NATS_VERSION;
        bail!("the NATS server is {version}, older than {a}.{b}.{c}: run nats-server 2.12 or newer with JetStream (deploy/install-nats)");
    }
    Ok(())
}

/// The servers of a `JOBS_NATS_URL`: one URL, or several separated by commas (a cluster's nodes).
pub fn servers(url: &str) -> Vec<String> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect()
}

/// Connect options carrying the user and password of `url` (`nats://user:password@host`), which
/// the client does not take from the URL by itself.
pub fn credentials(url: &str, options: async_nats::ConnectOptions) -> async_nats::ConnectOptions {
    let first = servers(url).into_iter().next().unwrap_or_default();
    match first.parse::<async_nats::ServerAddr>() {
        Ok(addr) if addr.has_user_pass() => options.user_and_password(
            addr.username().unwrap_or_default().to_string(),
            addr.password().unwrap_or_default().to_string(),
        ),
        _ => options,
    }
}

/// Connects to `url` (servers and credentials as in `JOBS_NATS_URL`) once, for tools and tests.
pub async fn connect_once(url: &str) -> Result<Client, async_nats::ConnectError> {
    credentials(url, async_nats::ConnectOptions::new())
        .connect(servers(url))
        .await
}

/// Connects to NATS, retrying for up to `wait`, and refuses a server that is too old.
/// Once connected the client reconnects by itself, forever.
pub async fn connect(url: &str, name: &str, wait: Duration) -> anyhow::Result<Client> {
    connect_with_ca(url, None, name, wait).await
}

/// As `connect`, over TLS verified against `ca` when given (`JOBS_NATS_CA`).
pub async fn connect_with_ca(
    url: &str,
    ca: Option<&std::path::Path>,
    name: &str,
    wait: Duration,
) -> anyhow::Result<Client> {
    let deadline = tokio::time::Instant::now() + wait;
    let client = loop {
        let mut options = credentials(url, async_nats::ConnectOptions::new());
        if let Some(ca) = ca {
            options = options
                .add_root_certificates(ca.to_path_buf())
                .require_tls(true);
        }
        let attempt = options
            .name(name)
            .connection_timeout(Duration::from_secs(2))
            .request_timeout(Some(REQUEST_TIMEOUT))
            .max_reconnects(None)
            .connect(servers(url))
            .await;
        match attempt {
            Ok(c) => break c,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, url, "NATS not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to NATS at {url}")),
        }
    };
    check_server_version(&client.server_info().version)?;
    Ok(client)
}

/// A JetStream context with our request timeout.
pub fn jetstream(client: &Client) -> jetstream::Context {
    let mut js = jetstream::new(client.clone());
    js.set_timeout(REQUEST_TIMEOUT);
    js
}

/// The configuration of `JOBS_EVENTS`: file storage, every subject we write, atomic batches.
pub fn stream_config(replicas: usize) -> stream::Config {
    stream::Config {
        num_replicas: replicas.max(1),
        name: STREAM_NAME.to_string(),
        subjects: STREAM_SUBJECTS.iter().map(|s| s.to_string()).collect(),
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        duplicate_window: Duration::from_secs(120),
        allow_atomic_publish: true,
        allow_direct: true,
        ..Default::default()
    }
}

/// Creates `JOBS_EVENTS` if absent (never deleting anything), and returns it.
pub async fn ensure_stream(
    js: &jetstream::Context,
    replicas: usize,
) -> anyhow::Result<stream::Stream> {
    let wanted = stream_config(replicas);
    let mut stream = js
        .get_or_create_stream(wanted.clone())
        .await
        .context("creating the JOBS_EVENTS stream (is JetStream enabled on the server?)")?;
    let info = stream.info().await.context("reading JOBS_EVENTS")?;
    // A stream made by an older version lacks the subjects added since (e.g. schedules).
    let missing: Vec<String> = wanted
        .subjects
        .iter()
        .filter(|s| !info.config.subjects.contains(s))
        .cloned()
        .collect();
    let flags = !info.config.allow_atomic_publish || !info.config.allow_direct;
    if flags || !missing.is_empty() {
        let mut cfg = info.config.clone();
        cfg.allow_atomic_publish = true;
        cfg.allow_direct = true;
        cfg.subjects.extend(missing.iter().cloned());
        match js.update_stream(cfg).await {
            Ok(_) => {}
            // A reader (the projector) may lack the right to change the stream; command-svc
            // adds the subjects when it starts.
            Err(e) if !flags => {
                tracing::warn!(error = %e, ?missing, "JOBS_EVENTS lacks subjects this version writes; not added here")
            }
            Err(e) => {
                return Err(e).context("enabling atomic publish on JOBS_EVENTS");
            }
        }
        stream = js
            .get_stream(STREAM_NAME)
            .await
            .context("reading JOBS_EVENTS")?;
    }
    Ok(stream)
}

/// Readiness of NATS: connected, and the stream answers.
pub async fn check_ready(client: &Client, js: &jetstream::Context) -> Result<(), String> {
    if client.connection_state() != State::Connected {
        return Err("nats: not connected".into());
    }
    match tokio::time::timeout(Duration::from_secs(2), js.get_stream(STREAM_NAME)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("nats: stream {STREAM_NAME}: {e}")),
        Err(_) => Err("nats: timed out".into()),
    }
}

/// Headers of an event message. `Nats-Msg-Id` is added separately: atomic batches refuse it.
pub fn event_headers(
    env: &Envelope,
    traceparent: &str,
    expected_subject_seq: Option<u64>,
) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(EVENT_TYPE_HEADER, env.type_name());
    h.insert("traceparent", traceparent);
    if let Some(seq) = expected_subject_seq {
        h.insert(
            "Nats-Expected-Last-Subject-Sequence",
            seq.to_string().as_str(),
        );
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_older_than_2_12_are_refused() {
        assert!(check_server_version("2.9.10").is_err());
        assert!(check_server_version("2.11.9").is_err());
        assert!(check_server_version("2.12.0").is_ok());
        assert!(check_server_version("2.15.1").is_ok());
        assert!(check_server_version("3.0.0-beta").is_ok());
    }
}
