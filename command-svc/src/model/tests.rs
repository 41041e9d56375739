use chrono::{Duration, TimeZone};
use events::validate::EnqueueRequest;
use events::{decide, Actor, Command, Envelope};
use serde_json::json;

use super::*;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

struct World {
    model: WriteModel,
    seq: u64,
}

impl World {
    fn new() -> Self {
        Self {
            model: WriteModel::default(),
            seq: 0,
        }
    }

    fn record(&mut self, tenant: Uuid, job_id: Uuid, cmd: &Command, now: DateTime<Utc>) -> Job {
        let events = decide(self.model.job(&job_id), cmd, now).expect("decide");
        for e in events {
            self.seq += 1;
            let rec = Recorded {
                seq: self.seq,
                envelope: Envelope {
                    event_id: Uuid::now_v7(),
                    schema_version: 1,
                    tenant_id: tenant,
                    job_id,
                    at: now,
                    actor: Actor::system("t"),
                    prev_hash: None,
                    event: e,
                },
            };
            self.model.fold(&rec, now).expect("fold");
        }
        self.model
            .job(&job_id)
            .cloned()
            .unwrap_or_else(|| panic!("job {job_id} gone"))
    }

    fn enqueue(&mut self, tenant: Uuid, body: serde_json::Value, now: DateTime<Utc>) -> Uuid {
        let req: EnqueueRequest = serde_json::from_value(body).unwrap();
        let id = Uuid::now_v7();
        self.record(
            tenant,
            id,
            &Command::Enqueue(req.validate(now, "").unwrap()),
            now,
        );
        id
    }

    fn lease_next(&mut self, types: &[&str], now: DateTime<Utc>) -> Option<Job> {
        let types: Vec<String> = types.iter().map(|s| s.to_string()).collect();
        let job = self.model.take(&types, None, |_, _| u64::MAX)?;
        Some(self.record(
            job.tenant_id,
            job.id,
            &Command::Lease {
                worker_id: "w".into(),
                lease_seconds: 30,
            },
            now,
        ))
    }
}

#[test]
fn higher_priority_first_then_fifo_within_a_priority() {
    let mut w = World::new();
    let t = Uuid::new_v4();
    let low = w.enqueue(t, json!({"type": "a", "payload": {}, "priority": 1}), t0());
    let first = w.enqueue(t, json!({"type": "a", "payload": {}, "priority": 7}), t0());
    let second = w.enqueue(
        t,
        json!({"type": "a", "payload": {}, "priority": 7}),
        t0() + Duration::milliseconds(1),
    );
    let order: Vec<Uuid> = (0..3)
        .map(|_| w.lease_next(&["a"], t0()).unwrap().id)
        .collect();
    assert_eq!(order, vec![first, second, low]);
    assert!(w.lease_next(&["a"], t0()).is_none());
}

#[test]
fn a_scheduled_job_is_not_leasable_before_its_time() {
    let mut w = World::new();
    let t = Uuid::new_v4();
    let id = w.enqueue(
        t,
        json!({"type": "a", "payload": {}, "delay_seconds": 60}),
        t0(),
    );
    assert!(w.lease_next(&["a"], t0()).is_none());
    let (made, due, next) = w.model.tick(t0() + Duration::seconds(59));
    assert_eq!(
        (made, due.len(), next),
        (0, 0, Some(t0() + Duration::seconds(60)))
    );
    let (made, _, _) = w.model.tick(t0() + Duration::seconds(60));
    assert_eq!(made, 1);
    assert_eq!(
        w.lease_next(&["a"], t0() + Duration::seconds(60))
            .unwrap()
            .id,
        id
    );
}

#[test]
fn tenants_at_one_priority_take_turns() {
    let mut w = World::new();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    for _ in 0..1000 {
        w.enqueue(a, json!({"type": "a", "payload": {}}), t0());
    }
    let bs: Vec<Uuid> = (0..5)
        .map(|_| {
            w.enqueue(
                b,
                json!({"type": "a", "payload": {}}),
                t0() + Duration::seconds(1),
            )
        })
        .collect();
    let first20: Vec<Job> = (0..20)
        .map(|_| w.lease_next(&["a"], t0() + Duration::seconds(2)).unwrap())
        .collect();
    let got: Vec<Uuid> = first20
        .iter()
        .filter(|j| j.tenant_id == b)
        .map(|j| j.id)
        .collect();
    assert_eq!(
        got, bs,
        "all of B's jobs, in order, within the first 20 leases"
    );
}

#[test]
fn an_expired_lease_is_reported_once_due() {
    let mut w = World::new();
    let t = Uuid::new_v4();
    let id = w.enqueue(t, json!({"type": "a", "payload": {}}), t0());
    let job = w.lease_next(&["a"], t0()).unwrap();
    let lease_id = job.lease.as_ref().unwrap().lease_id;
    assert_eq!(w.model.tick(t0() + Duration::seconds(29)).1, vec![]);
    assert_eq!(
        w.model.tick(t0() + Duration::seconds(30)).1,
        vec![Due::LeaseExpired {
            job_id: id,
            lease_id
        }]
    );
    w.record(
        t,
        id,
        &Command::ExpireLease { lease_id },
        t0() + Duration::seconds(30),
    );
    assert_eq!(w.model.job(&id).unwrap().status, Status::Scheduled);
}

#[test]
fn a_taken_job_goes_back_when_its_lease_fails_and_finished_jobs_leave() {
    let mut w = World::new();
    let t = Uuid::new_v4();
    let id = w.enqueue(t, json!({"type": "a", "payload": {}}), t0());
    let taken = w
        .model
        .take(&["a".to_string()], None, |_, _| u64::MAX)
        .unwrap();
    assert!(w
        .model
        .take(&["a".to_string()], None, |_, _| u64::MAX)
        .is_none());
    assert!(w.model.release(&taken.id, t0()));
    let job = w.lease_next(&["a"], t0()).unwrap();
    let lease_id = job.lease.unwrap().lease_id;
    let events = decide(
        w.model.job(&id),
        &Command::Complete {
            worker_id: "w".into(),
            lease_id,
            result: None,
        },
        t0(),
    )
    .unwrap();
    assert_eq!(events.len(), 1);
    w.seq += 1;
    let rec = Recorded {
        seq: w.seq,
        envelope: Envelope {
            event_id: Uuid::now_v7(),
            schema_version: 1,
            tenant_id: t,
            job_id: id,
            at: t0(),
            actor: Actor::worker("w"),
            prev_hash: None,
            event: events[0].clone(),
        },
    };
    assert_eq!(
        w.model.fold(&rec, t0()).unwrap(),
        Folded::Applied { ready: false }
    );
    assert!(
        w.model.job(&id).is_none(),
        "a finished job leaves the write model"
    );
    assert_eq!(w.model.fold(&rec, t0()).unwrap(), Folded::Unknown);
    assert_eq!(w.model.live_jobs(), 0);
}

#[test]
fn queues_filter_what_a_lease_takes() {
    let mut w = World::new();
    let t = Uuid::new_v4();
    w.enqueue(
        t,
        json!({"type": "a", "payload": {}, "queue": "bulk"}),
        t0(),
    );
    let crit = w.enqueue(
        t,
        json!({"type": "a", "payload": {}, "queue": "critical"}),
        t0(),
    );
    let got = w
        .model
        .take(
            &["a".to_string()],
            Some(&["critical".to_string()]),
            |_, _| u64::MAX,
        )
        .unwrap();
    assert_eq!(got.id, crit);
    assert!(w
        .model
        .take(
            &["a".to_string()],
            Some(&["critical".to_string()]),
            |_, _| u64::MAX
        )
        .is_none());
    assert_eq!(w.model.ready_depth()["a"], 1);
}

#[test]
fn a_tenant_at_its_lease_limit_waits_while_others_are_served() {
    let mut w = World::new();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    for _ in 0..5 {
        w.enqueue(a, json!({"type": "a", "payload": {}}), t0());
        w.enqueue(b, json!({"type": "a", "payload": {}}), t0());
    }
    let limit = |_: &WriteModel, t: Uuid| if t == a { 2 } else { 100 };
    let mut got = Vec::new();
    while let Some(job) = w.model.take(&["a".to_string()], None, limit) {
        let leased = w.record(
            job.tenant_id,
            job.id,
            &Command::Lease {
                worker_id: "w".into(),
                lease_seconds: 30,
            },
            t0(),
        );
        got.push(leased.tenant_id);
    }
    assert_eq!(
        got.iter().filter(|t| **t == a).count(),
        2,
        "A is capped at 2 leases"
    );
    assert_eq!(
        got.iter().filter(|t| **t == b).count(),
        5,
        "B gets all of its jobs"
    );
    assert_eq!(
        w.model.counts(&a),
        TenantCounts {
            active: 5,
            leased: 2
        }
    );
}
