//! given(events).when(command).then(events | rejection), plus the property tests.

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::json;
use uuid::Uuid;

use super::*;
use crate::apply::apply;
use crate::envelope::{Actor, Envelope, Recorded};
use crate::validate::EnqueueRequest;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

/// Folds the events `decide` gives for each command, as the services do, asserting that
/// `apply` accepts every one of them.
struct Given {
    job: Option<Job>,
    seq: u64,
    id: Uuid,
}

impl Given {
    fn new() -> Self {
        Self {
            job: None,
            seq: 0,
            id: Uuid::now_v7(),
        }
    }

    fn when(&mut self, cmd: &Command, now: DateTime<Utc>) -> Result<Vec<JobEvent>, Rejection> {
        let events = decide(self.job.as_ref(), cmd, now)?;
        for e in &events {
            self.seq += 1 + self.seq % 3;
            let rec = Recorded {
                seq: self.seq,
                envelope: Envelope {
                    event_id: Uuid::now_v7(),
                    schema_version: crate::SCHEMA_VERSION,
                    tenant_id: Uuid::nil(),
                    job_id: self.id,
                    at: now,
                    actor: Actor::system("test"),
                    prev_hash: self
                        .job
                        .as_ref()
                        .and_then(|j| j.last_event_hash.map(|h| h.to_string())),
                    event: e.clone(),
                },
            };
            assert_eq!(
                direct_canonical(&rec.envelope),
                value_canonical(&rec.envelope),
                "the digest's bytes written straight differ from the Value path's"
            );
            let next = apply(self.job.as_ref(), &rec);
            assert!(
                next.is_ok(),
                "apply refused what decide emitted: {next:?} for {e:?}"
            );
            self.job = next.ok();
        }
        Ok(events)
    }

    fn job(&self) -> &Job {
        self.job.as_ref().unwrap()
    }
}

/// An envelope's canonical JSON through `serde_json::Value`, as the first implementation
/// wrote every stored hash chain.
fn value_canonical(env: &Envelope) -> String {
    let mut out = Vec::new();
    crate::envelope::canonical(&serde_json::to_value(env).unwrap(), &mut out);
    String::from_utf8(out).unwrap()
}

/// The same, written straight from the envelope (what `Envelope::digest` hashes).
fn direct_canonical(env: &Envelope) -> String {
    let mut out = Vec::new();
    crate::canonical::write(env, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

/// Any JSON value: strings with escapes and non-ASCII text, numbers at their edges, nesting.
fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        "[a-z\\\"\n\u{0}-\u{1f}é😀 ]{0,8}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::from),
            proptest::collection::btree_map("[a-zA-Z_é\\\" ]{0,6}", inner, 0..5)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn enqueue(max_attempts: i64) -> Command {
    let req: EnqueueRequest = serde_json::from_value(
        json!({"type": "email.send", "payload": {"to": "a@b.c"}, "max_attempts": max_attempts}),
    )
    .unwrap();
    Command::Enqueue(req.validate(t0(), "").unwrap())
}

fn lease(worker: &str) -> Command {
    Command::Lease {
        worker_id: worker.into(),
        lease_seconds: 30,
    }
}

#[test]
fn an_enqueued_job_is_pending_at_version_one() {
    let mut g = Given::new();
    g.when(&enqueue(3), t0()).unwrap();
    assert_eq!(g.job().status, Status::Pending);
    assert_eq!(g.job().version, 1);
    assert_eq!(g.job().attempts, 0);
}

#[test]
fn enqueueing_an_existing_job_is_refused() {
    let mut g = Given::new();
    g.when(&enqueue(3), t0()).unwrap();
    assert_eq!(g.when(&enqueue(3), t0()), Err(Rejection::AlreadyExists));
}

#[test]
fn a_lease_of_another_worker_is_lost() {
    let mut g = Given::new();
    g.when(&enqueue(3), t0()).unwrap();
    g.when(&lease("w1"), t0()).unwrap();
    let lease_id = g.job().lease.as_ref().unwrap().lease_id;
    let complete = Command::Complete {
        worker_id: "w2".into(),
        lease_id,
        result: None,
    };
    assert_eq!(g.when(&complete, t0()), Err(Rejection::LeaseLost));
    let complete = Command::Complete {
        worker_id: "w1".into(),
        lease_id,
        result: Some(json!(1)),
    };
    g.when(&complete, t0()).unwrap();
    assert_eq!(g.job().status, Status::Completed);
    assert_eq!(g.when(&complete, t0()), Err(Rejection::LeaseLost));
}

#[test]
fn failures_back_off_then_dead_letter_when_attempts_run_out() {
    let mut g = Given::new();
    g.when(&enqueue(2), t0()).unwrap();
    let mut now = t0();
    for attempt in 1..=2 {
        g.when(&lease("w1"), now).unwrap();
        let lease_id = g.job().lease.as_ref().unwrap().lease_id;
        let fail = Command::Fail {
            worker_id: "w1".into(),
            lease_id,
            error: ErrorInfo {
                message: "boom".into(),
                code: Some("E1".into()),
            },
            retryable: true,
            retry_after_seconds: None,
        };
        g.when(&fail, now).unwrap();
        assert_eq!(g.job().extras().errors.len(), attempt);
        if attempt == 1 {
            assert_eq!(g.job().status, Status::Scheduled);
            let wait = g.job().run_at - now;
            assert!(
                wait >= Duration::milliseconds(2500) && wait <= Duration::seconds(5),
                "{wait}"
            );
            assert_eq!(
                g.when(&lease("w1"), now),
                Err(Rejection::InvalidState(Status::Scheduled))
            );
            now = g.job().run_at;
        }
    }
    assert_eq!(g.job().status, Status::DeadLettered);
    g.when(&Command::Retry, now).unwrap();
    assert_eq!((g.job().status, g.job().attempts), (Status::Pending, 0));
    assert_eq!(
        g.job().extras().errors.len(),
        2,
        "failed attempts stay visible after a retry"
    );
}

#[test]
fn an_expired_lease_counts_as_a_failed_attempt() {
    let mut g = Given::new();
    g.when(&enqueue(3), t0()).unwrap();
    g.when(&lease("w1"), t0()).unwrap();
    let lease_id = g.job().lease.as_ref().unwrap().lease_id;
    let expire = Command::ExpireLease { lease_id };
    assert!(
        g.when(&expire, t0()).is_err(),
        "a lease cannot expire early"
    );
    g.when(&expire, t0() + Duration::seconds(31)).unwrap();
    assert_eq!(g.job().status, Status::Scheduled);
    assert_eq!(
        g.job()
            .extras()
            .last_error
            .as_ref()
            .unwrap()
            .code
            .as_deref(),
        Some("LEASE_EXPIRED")
    );
}

#[test]
fn a_heartbeat_extends_the_lease_but_never_past_the_timeout() {
    let mut g = Given::new();
    let req: EnqueueRequest =
        serde_json::from_value(json!({"type": "t", "payload": {}, "timeout_seconds": 60})).unwrap();
    g.when(&Command::Enqueue(req.validate(t0(), "").unwrap()), t0())
        .unwrap();
    g.when(
        &Command::Lease {
            worker_id: "w1".into(),
            lease_seconds: 3600,
        },
        t0(),
    )
    .unwrap();
    let lease = g.job().lease.clone().unwrap();
    assert_eq!(
        lease.expires_at,
        t0() + Duration::seconds(60),
        "a lease is capped by timeout_seconds"
    );
    let hb = |extend| Command::Heartbeat {
        worker_id: "w1".into(),
        lease_id: lease.lease_id,
        progress: None,
        extend_seconds: extend,
    };
    g.when(&hb(Some(30)), t0() + Duration::seconds(40)).unwrap();
    assert_eq!(
        g.job().lease.as_ref().unwrap().expires_at,
        t0() + Duration::seconds(60)
    );
    assert_eq!(
        g.when(&hb(None), t0() + Duration::seconds(61)),
        Err(Rejection::LeaseLost),
        "an expired lease is lost"
    );
}

#[test]
fn cancelling_a_leased_job_waits_for_the_worker() {
    let mut g = Given::new();
    g.when(&enqueue(3), t0()).unwrap();
    g.when(&lease("w1"), t0()).unwrap();
    let lease_id = g.job().lease.as_ref().unwrap().lease_id;
    g.when(&Command::Cancel { reason: None }, t0()).unwrap();
    assert!(g.job().cancel_requested);
    assert_eq!(g.when(&Command::Cancel { reason: None }, t0()), Ok(vec![]));
    let complete = Command::Complete {
        worker_id: "w1".into(),
        lease_id,
        result: None,
    };
    assert_eq!(g.when(&complete, t0()), Err(Rejection::LeaseLost));
    g.when(
        &Command::ExpireLease { lease_id },
        t0() + Duration::hours(1),
    )
    .unwrap();
    assert_eq!(g.job().status, Status::Cancelled);
    assert_eq!(
        g.when(&Command::Cancel { reason: None }, t0()),
        Err(Rejection::InvalidState(Status::Cancelled))
    );
}

fn arb_command() -> impl Strategy<Value = Command> {
    let worker = prop_oneof![Just("w1".to_string()), Just("w2".to_string())];
    prop_oneof![
        (1i64..4).prop_map(enqueue),
        (worker.clone(), 5u32..60).prop_map(|(w, s)| Command::Lease {
            worker_id: w,
            lease_seconds: s
        }),
        (worker.clone(), 0u64..40, 1u32..60).prop_map(|(w, l, s)| Command::Heartbeat {
            worker_id: w,
            lease_id: l,
            progress: Some(json!(l)),
            extend_seconds: Some(s)
        }),
        (worker.clone(), 0u64..40).prop_map(|(w, l)| Command::Complete {
            worker_id: w,
            lease_id: l,
            result: None
        }),
        (
            worker,
            0u64..40,
            any::<bool>(),
            proptest::option::of(0u32..100)
        )
            .prop_map(|(w, l, r, after)| {
                Command::Fail {
                    worker_id: w,
                    lease_id: l,
                    error: ErrorInfo {
                        message: "x".into(),
                        code: None,
                    },
                    retryable: r,
                    retry_after_seconds: after,
                }
            }),
        (0u64..40).prop_map(|l| Command::ExpireLease { lease_id: l }),
        Just(Command::Cancel { reason: None }),
        (
            proptest::option::of(0u8..=10),
            proptest::option::of(1u32..5)
        )
            .prop_map(|(p, m)| {
                Command::Update(UpdateSpec {
                    priority: p,
                    max_attempts: m,
                    ..Default::default()
                })
            }),
        Just(Command::Retry),
        Just(Command::Redrive),
        Just(Command::Purge),
    ]
}

/// Commands aimed at the current lease, so that sequences reach deep states often.
fn aim(cmd: Command, job: Option<&Job>) -> Command {
    let current = job
        .and_then(|j| j.lease.as_ref())
        .map(|l| (l.lease_id, l.worker_id.clone()));
    match (cmd, current) {
        (
            Command::Heartbeat {
                progress,
                extend_seconds,
                lease_id,
                ..
            },
            Some((id, w)),
        ) if lease_id % 2 == 0 => Command::Heartbeat {
            worker_id: w,
            lease_id: id,
            progress,
            extend_seconds,
        },
        (
            Command::Complete {
                result, lease_id, ..
            },
            Some((id, w)),
        ) if lease_id % 2 == 0 => Command::Complete {
            worker_id: w,
            lease_id: id,
            result,
        },
        (
            Command::Fail {
                error,
                retryable,
                retry_after_seconds,
                lease_id,
                ..
            },
            Some((id, w)),
        ) if lease_id % 4 != 0 => Command::Fail {
            worker_id: w,
            lease_id: id,
            error,
            retryable,
            retry_after_seconds,
        },
        (Command::ExpireLease { lease_id }, Some((id, _))) if lease_id % 2 == 0 => {
            Command::ExpireLease { lease_id: id }
        }
        (c, _) => c,
    }
}

proptest! {
    #[test]
    fn decide_never_emits_an_event_apply_rejects(
        cmds in proptest::collection::vec((arb_command(), 0i64..7200), 1..60)
    ) {
        let mut g = Given::new();
        let mut now = t0();
        let mut completions = 0;
        for (cmd, step) in cmds {
            now += Duration::seconds(step);
            let cmd = aim(cmd, g.job.as_ref());
            let before = g.job.clone();
            match g.when(&cmd, now) {
                Ok(events) => {
                    if let (Some(b), Some(a)) = (&before, &g.job) {
                        prop_assert_eq!(a.version, b.version + events.len() as u32);
                    }
                }
                Err(_) => prop_assert_eq!(&before, &g.job, "a refused command changes nothing"),
            }
            if let (Some(b), Some(a)) = (&before, &g.job) {
                // Terminal states stay terminal, except through a retry (or redrive).
                if b.status.is_terminal() && !a.status.is_terminal() {
                    prop_assert!(matches!(cmd, Command::Retry | Command::Redrive), "{:?} left {:?}", cmd, b.status);
                }
                if a.status == Status::Completed && b.status != Status::Completed {
                    completions += 1;
                }
                if matches!(cmd, Command::Retry | Command::Redrive) && a.version > b.version {
                    completions = 0;
                }
            }
            if let Some(j) = &g.job {
                prop_assert!(j.attempts <= j.max_attempts, "attempts {} > max_attempts {}", j.attempts, j.max_attempts);
                prop_assert!(completions <= 1, "completed twice without a retry");
                prop_assert_eq!(j.lease.is_some(), j.status == Status::Leased);
                prop_assert_eq!(j.extras().errors.last(), j.extras().last_error.as_deref());
            }
        }
    }

    #[test]
    fn folding_any_event_sequence_never_panics(
        cmds in proptest::collection::vec((arb_command(), 0i64..7200, 0u64..3), 1..60)
    ) {
        // Arbitrary events, in arbitrary order, with arbitrary sequence gaps: apply may refuse
        // them, but it must never panic, and a refusal leaves the state as it was.
        let mut job: Option<Job> = None;
        let mut seq = 0;
        let mut now = t0();
        let id = Uuid::now_v7();
        for (cmd, step, skip) in cmds {
            now += Duration::seconds(step);
            seq += skip;
            let events = match decide(None, &cmd, now) {
                Ok(e) => e,
                Err(_) => {
                    let probe = Job { ..sample_job(id, now) };
                    decide(Some(&probe), &aim(cmd, Some(&probe)), now).unwrap_or_default()
                }
            };
            for e in events {
                let rec = Recorded { seq, envelope: Envelope {
                    event_id: Uuid::now_v7(), schema_version: 1, tenant_id: Uuid::nil(), job_id: id,
                    at: now, actor: Actor::user("u"), prev_hash: None, event: e,
                }};
                if let Ok(next) = apply(job.as_ref(), &rec) { job = Some(next) }
            }
        }
        prop_assert!(job.as_ref().is_none_or(|j| j.version >= 1));
    }

    #[test]
    fn every_event_survives_its_json_form(cmds in proptest::collection::vec(arb_command(), 1..20)) {
        let probe = sample_job(Uuid::now_v7(), t0());
        for cmd in cmds {
            let events = decide(Some(&probe), &cmd, t0()).or_else(|_| decide(None, &cmd, t0())).unwrap_or_default();
            for e in events {
                let env = Envelope {
                    event_id: Uuid::now_v7(), schema_version: 1, tenant_id: Uuid::now_v7(),
                    job_id: probe.id, at: t0(), actor: Actor::worker("w"), prev_hash: None, event: e,
                };
                let back = Envelope::from_json(&env.to_json()).unwrap();
                prop_assert_eq!(direct_canonical(&back), value_canonical(&back));
                prop_assert_eq!(&back, &env);
                // Keys sorted (`data` before `type`), and through a `Value`: the same event.
                let sorted = serde_json::to_vec(&serde_json::to_value(&env).unwrap()).unwrap();
                prop_assert_eq!(&Envelope::from_json(&sorted).unwrap(), &env);
                let value = serde_json::to_value(&env).unwrap();
                prop_assert_eq!(serde_json::from_value::<Envelope>(value).unwrap(), env);
            }
        }
    }
}

proptest! {
    /// Whatever a job carries (payload, metadata, a result, a progress), the digest's bytes
    /// written straight are the `Value` path's.
    #[test]
    fn the_canonical_form_written_straight_is_the_value_paths(
        payload in arb_json(), metadata in arb_json(), result in arb_json(), actor in "[a-z\"é]{0,5}"
    ) {
        let mut body = json!({"type": "email.send", "payload": payload.clone()});
        if metadata.is_object() {
            body["metadata"] = metadata;
        }
        let req: EnqueueRequest = serde_json::from_value(body).unwrap();
        let Ok(spec) = req.validate(t0(), "") else {
            return Ok(());
        };
        let mut events = decide(None, &Command::Enqueue(spec), t0()).unwrap();
        let probe = sample_job(Uuid::now_v7(), t0());
        let lease_id = probe.lease.as_ref().unwrap().lease_id;
        events.extend(decide(Some(&probe), &Command::Heartbeat {
            worker_id: "w1".into(), lease_id, progress: Some(payload), extend_seconds: None,
        }, t0()).unwrap());
        events.extend(decide(Some(&probe), &Command::Complete {
            worker_id: "w1".into(), lease_id, result: Some(result),
        }, t0()).unwrap());
        for e in events {
            let env = Envelope {
                event_id: Uuid::now_v7(), schema_version: crate::SCHEMA_VERSION,
                tenant_id: Uuid::now_v7(), job_id: probe.id, at: t0(), actor: Actor::user(actor.clone()),
                prev_hash: Some("ab".repeat(32)), event: e,
            };
            prop_assert_eq!(direct_canonical(&env), value_canonical(&env));
        }
    }
}

/// A leased job, a useful state to aim arbitrary commands at.
fn sample_job(id: Uuid, now: DateTime<Utc>) -> Job {
    let mut g = Given {
        job: None,
        seq: 0,
        id,
    };
    g.when(&enqueue(3), now).unwrap();
    g.when(&lease("w1"), now).unwrap();
    g.job.unwrap()
}

#[test]
fn the_wire_form_is_the_documented_one() {
    let env = Envelope {
        event_id: Uuid::nil(),
        schema_version: 1,
        tenant_id: Uuid::nil(),
        job_id: Uuid::nil(),
        at: t0(),
        actor: Actor::user("u1"),
        prev_hash: None,
        event: JobEvent::Cancelled {
            reason: Some("no longer needed".into()),
            error: None,
        },
    };
    let v: serde_json::Value = serde_json::from_slice(&env.to_json()).unwrap();
    assert_eq!(
        v,
        json!({
            "event_id": Uuid::nil(), "type": "JobCancelled", "schema_version": 1,
            "tenant_id": Uuid::nil(), "job_id": Uuid::nil(), "at": "2026-01-01T00:00:00Z",
            "actor": {"kind": "user", "id": "u1"}, "prev_hash": null, "data": {"reason": "no longer needed"}
        })
    );
}

/// The stored v1 events (`fixtures/v1/`, one job's whole history, file order = stream order)
/// must keep decoding — upcast to the current shape — and folding, forever.
#[test]
fn the_golden_v1_events_keep_decoding_and_folding() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/v1");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 12, "a fixture for every kind of event");
    let mut job: Option<Job> = None;
    let mut types = std::collections::BTreeSet::new();
    for (i, f) in files.iter().enumerate() {
        let text = std::fs::read_to_string(f).unwrap();
        let env =
            Envelope::from_json(text.as_bytes()).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert_eq!(
            (env.schema_version, env.prev_hash.as_deref()),
            (1, None),
            "upcast to v2, outside any chain"
        );
        types.insert(env.type_name());
        // Stream sequences are the file numbers (the fixtures' lease ids follow them).
        let seq = i as u64 + 1;
        job = Some(
            apply(job.as_ref(), &Recorded { seq, envelope: env })
                .unwrap_or_else(|e| panic!("{}: {e}", f.display())),
        );
        let newer = text.replace("\"schema_version\": 1", "\"schema_version\": 99");
        assert!(
            Envelope::from_json(newer.as_bytes()).is_err(),
            "a newer version is refused, not misread"
        );
    }
    let job = job.unwrap();
    assert_eq!(job.status, Status::Completed);
    assert_eq!(job.extras().errors.len(), 4);
    assert_eq!(
        types.len(),
        11,
        "every v1 event type but JobPurged: {types:?}"
    );
}

#[test]
fn every_event_links_to_the_hash_of_the_one_before_and_a_broken_link_is_refused() {
    let mut g = Given::new();
    g.when(&enqueue(3), t0()).unwrap();
    let first = g.job().last_event_hash.unwrap();
    g.when(&lease("w1"), t0()).unwrap();
    assert_ne!(g.job().last_event_hash, Some(first));
    // An event whose prev_hash is not the job's last hash does not apply.
    let forged = Recorded {
        seq: 1000,
        envelope: Envelope {
            event_id: Uuid::now_v7(),
            schema_version: crate::SCHEMA_VERSION,
            tenant_id: Uuid::nil(),
            job_id: g.id,
            at: t0(),
            actor: Actor::system("forger"),
            prev_hash: Some(first.to_string()),
            event: JobEvent::Cancelled {
                reason: None,
                error: None,
            },
        },
    };
    assert!(apply(g.job.as_ref(), &forged).is_err());
    // The hash covers every byte that matters: change one and it differs.
    let mut altered = forged.envelope.clone();
    altered.actor = Actor::system("forgeR");
    assert_ne!(altered.hash(), forged.envelope.hash());
    assert_eq!(
        forged.envelope.hash(),
        Envelope::from_json(&forged.envelope.to_json())
            .unwrap()
            .hash()
    );
}
