//! Smoke tests of the built binaries: `--help` lists the configuration, a missing or bad
//! setting stops the process at start with a one-line error naming it, and a NATS server older
//! than 2.12 is refused.

use std::process::Command;

use tests::procs::bin_path;

fn run(name: &str, args: &[&str], envs: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(bin_path(name))
        .env_clear()
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn help_lists_every_setting() {
    for (name, vars) in [
        (
            "command-svc",
            &[
                "JOBS_NATS_URL",
                "JOBS_JWT_PUBLIC_KEY",
                "JOBS_JWKS_FILE",
                "JOBS_COMMAND_ADDR",
                "JOBS_LOG_FORMAT",
            ][..],
        ),
        (
            "query-svc",
            &[
                "JOBS_NATS_URL",
                "JOBS_DATABASE_URL",
                "JOBS_JWT_PUBLIC_KEY",
                "JOBS_QUERY_ADDR",
                "JOBS_CURSOR_SECRET",
            ][..],
        ),
        (
            "projector",
            &["JOBS_NATS_URL", "JOBS_DATABASE_URL", "JOBS_PROJECTOR_ADDR"][..],
        ),
    ] {
        let (ok, text) = run(name, &["--help"], &[]);
        assert!(ok, "{name} --help: {text}");
        for v in vars {
            assert!(text.contains(v), "{name} --help does not mention {v}");
        }
    }
    let (ok, text) = run("jobsctl", &["token", "--help"], &[]);
    assert!(
        ok && text.contains("--tenant") && text.contains("--roles"),
        "{text}"
    );
}

#[test]
fn a_missing_or_bad_setting_stops_the_process_naming_it() {
    let (ok, text) = run("command-svc", &[], &[]);
    assert!(!ok);
    assert!(text.contains("JOBS_JWT_PUBLIC_KEY"), "{text}");
    assert_eq!(text.trim().lines().count(), 1, "one line: {text}");

    let (ok, text) = run(
        "query-svc",
        &[],
        &[("JOBS_JWT_PUBLIC_KEY", "/nonexistent.pem")],
    );
    assert!(!ok);
    assert!(
        text.contains("JOBS_JWT_PUBLIC_KEY") && text.contains("/nonexistent.pem"),
        "{text}"
    );

    let (ok, text) = run(
        "projector",
        &[],
        &[("JOBS_PROJECTOR_ADDR", "not-an-address")],
    );
    assert!(!ok);
    assert!(
        text.contains("JOBS_PROJECTOR_ADDR") || text.contains("projector-addr"),
        "{text}"
    );
}

#[test]
fn a_nats_server_older_than_2_12_is_refused() {
    // Debian's nats-server package is 2.9; start one on a port of its own.
    let old = std::path::Path::new("/usr/sbin/nats-server");
    if !old.exists() {
        eprintln!("no Debian nats-server 2.9 on this machine: skipped");
        return;
    }
    let port = tests::procs::free_port();
    let store = tempfile::tempdir().unwrap();
    let mut server = Command::new(old)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nats-server 2.9 did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let keys = tests::Keys::get();
    let tls = tests::Tls::get();
    let url = format!("nats://127.0.0.1:{port}");
    let (ok, text) = run(
        "command-svc",
        &[],
        &[
            ("JOBS_JWT_PUBLIC_KEY", keys.rsa_public.to_str().unwrap()),
            ("JOBS_WORKER_TLS_CERT", tls.server_cert.to_str().unwrap()),
            ("JOBS_WORKER_TLS_KEY", tls.server_key.to_str().unwrap()),
            ("JOBS_WORKER_CLIENT_CA", tls.ca.to_str().unwrap()),
            ("JOBS_COMMAND_ADDR", "127.0.0.1:0"),
            ("JOBS_WORKER_ADDR", "127.0.0.1:0"),
            ("JOBS_NATS_URL", &url),
            ("JOBS_NATS_CONNECT_WAIT_SECONDS", "5"),
        ],
    );
    let _ = server.kill();
    let _ = server.wait();
    assert!(!ok);
    let last = text.trim().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("command-svc: JOBS_NATS_URL") && last.contains("older than 2.12"),
        "{text}"
    );
}

#[test]
fn jobsctl_mints_a_token_the_services_accept() {
    let keys = tests::Keys::get();
    let tenant = uuid::Uuid::new_v4();
    let (ok, token) = run(
        "jobsctl",
        &[
            "token",
            "--tenant",
            &tenant.to_string(),
            "--roles",
            "admin,member",
            "--key",
            keys.rsa_private.to_str().unwrap(),
        ],
        &[],
    );
    assert!(ok, "{token}");
    let v = common::auth::JwtVerifier::from_pem_file(&keys.rsa_public, None, None).unwrap();
    let claims = v.verify(token.trim()).unwrap();
    assert_eq!(claims.tenant_id, tenant);
    assert_eq!(
        claims.roles,
        vec!["admin".to_string(), "member".to_string()]
    );
}
