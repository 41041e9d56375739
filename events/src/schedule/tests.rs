use chrono::{DateTime, Duration, Utc};
use serde_json::json;
use uuid::Uuid;

use super::*;

fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn request(v: serde_json::Value) -> ScheduleRequest {
    serde_json::from_value(v).unwrap()
}

fn template() -> serde_json::Value {
    json!({"type": "report.build", "payload": {"kind": "daily"}})
}

/// A schedule created at `at` from `body`, folded from its event.
fn created(body: serde_json::Value, at: DateTime<Utc>) -> Schedule {
    let spec = request(body).validate(at).unwrap();
    let id = Uuid::now_v7();
    let events = decide_schedule(None, id, &ScheduleCommand::Create(Box::new(spec)), at).unwrap();
    fold(None, events, at).unwrap()
}

fn fold(
    state: Option<&Schedule>,
    events: Vec<ScheduleEvent>,
    at: DateTime<Utc>,
) -> Option<Schedule> {
    let mut s = state.cloned();
    for (i, event) in events.into_iter().enumerate() {
        let tenant = s.as_ref().map_or(Uuid::from_u128(7), |s| s.tenant_id);
        let rec = ScheduleRecorded {
            seq: s.as_ref().map_or(1, |s| s.last_seq + 1) + i as u64,
            envelope: ScheduleEnvelope {
                event_id: Uuid::now_v7(),
                schema_version: SCHEMA_VERSION,
                tenant_id: tenant,
                at,
                actor: Actor::user("u"),
                event,
            },
        };
        s = apply_schedule(s.as_ref(), &rec).unwrap();
    }
    s
}

fn next(s: &Schedule, after: &str) -> DateTime<Utc> {
    s.first_slot_after(&s.timing().unwrap(), t(after)).unwrap()
}

#[test]
fn a_cron_is_read_in_its_time_zone_winter_and_summer() {
    let s = created(
        json!({"cron": "0 9 * * *", "timezone": "Europe/Paris", "template": template()}),
        t("2025-01-01T00:00:00Z"),
    );
    // 09:00 in Paris is 08:00Z in winter (CET) and 07:00Z in summer (CEST).
    assert_eq!(next(&s, "2025-01-15T10:00:00Z"), t("2025-01-16T08:00:00Z"));
    assert_eq!(next(&s, "2025-07-15T10:00:00Z"), t("2025-07-16T07:00:00Z"));
    // Across the spring change (30 March 2025): the 30th is already summer time.
    assert_eq!(next(&s, "2025-03-29T09:00:00Z"), t("2025-03-30T07:00:00Z"));
}

#[test]
fn a_slot_in_the_spring_gap_runs_right_after_it_and_a_repeated_hour_runs_once() {
    let s = created(
        json!({"cron": "30 2 * * *", "timezone": "America/New_York", "template": template()}),
        t("2025-01-01T00:00:00Z"),
    );
    // 9 March 2025: 02:00 EST jumps to 03:00 EDT; 02:30 does not exist: 03:00 EDT = 07:00Z.
    assert_eq!(next(&s, "2025-03-09T05:00:00Z"), t("2025-03-09T07:00:00Z"));
    assert_eq!(next(&s, "2025-03-09T07:00:00Z"), t("2025-03-10T06:30:00Z"));
    let s = created(
        json!({"cron": "30 1 * * *", "timezone": "America/New_York", "template": template()}),
        t("2025-01-01T00:00:00Z"),
    );
    // 2 November 2025: 01:30 happens at 05:30Z (EDT) and again at 06:30Z (EST); once only.
    assert_eq!(next(&s, "2025-11-02T04:00:00Z"), t("2025-11-02T05:30:00Z"));
    assert_eq!(next(&s, "2025-11-02T05:30:00Z"), t("2025-11-03T06:30:00Z"));
}

#[test]
fn the_api_shows_the_next_run_in_utc_and_none_while_paused() {
    let at = t("2025-06-01T12:00:00Z");
    let s = created(
        json!({"cron": "0 0 * * MON", "timezone": "Asia/Tokyo", "template": template()}),
        at,
    );
    // Monday 00:00 in Tokyo (UTC+9) is Sunday 15:00Z; 1 June 2025 is a Sunday.
    let view = s.view(None, at);
    assert_eq!(view.next_run_at, Some(t("2025-06-01T15:00:00Z")));
    assert_eq!(view.template["type"], "report.build");
    assert!(view.template.get("priority").is_none(), "nulls left out");
    let paused = fold(
        Some(&s),
        decide_schedule(Some(&s), s.id, &ScheduleCommand::Pause, at).unwrap(),
        at,
    )
    .unwrap();
    assert_eq!(paused.view(None, at).next_run_at, None);
}

#[test]
fn interval_slots_count_from_start_at_and_stop_at_end_at() {
    let at = t("2025-06-01T12:00:00.250Z");
    let s = created(
        json!({"interval_seconds": 10, "start_at": "2025-06-01T12:01:00Z",
               "end_at": "2025-06-01T12:01:30Z", "template": template()}),
        at,
    );
    let timing = s.timing().unwrap();
    let mut slots = vec![];
    let mut cur = at;
    while let Some(n) = s.first_slot_after(&timing, cur) {
        slots.push(n);
        cur = n;
    }
    let want: Vec<_> = (0..4)
        .map(|k| t("2025-06-01T12:01:00Z") + Duration::seconds(10 * k))
        .collect();
    assert_eq!(slots, want);
    // Without start_at: from the creation time on the second, the creation instant excluded.
    let s = created(json!({"interval_seconds": 5, "template": template()}), at);
    assert_eq!(
        next(&s, "2025-06-01T12:00:00.250Z"),
        t("2025-06-01T12:00:05Z")
    );
}

fn every_second(catch_up: &str, at: DateTime<Utc>) -> Schedule {
    created(
        json!({"interval_seconds": 1, "catch_up": catch_up, "template": template()}),
        at,
    )
}

#[test]
fn missed_slots_follow_the_catch_up_policy_and_on_time_ones_all_fire() {
    let at = t("2025-06-01T12:00:00Z");
    let last = t("2025-06-01T12:00:03Z");
    let started = t("2025-06-01T12:00:10.500Z");
    let now = t("2025-06-01T12:00:12.100Z");
    let on_time = vec![t("2025-06-01T12:00:11Z"), t("2025-06-01T12:00:12Z")];
    for (policy, missed) in [
        ("skip", vec![]),
        ("one", vec![t("2025-06-01T12:00:10Z")]),
        (
            "all",
            (4..=10)
                .map(|k| at + Duration::seconds(k))
                .collect::<Vec<_>>(),
        ),
    ] {
        let s = every_second(policy, at);
        let d = due(&s, &s.timing().unwrap(), Some(last), started, now);
        let mut want = missed.clone();
        want.extend(on_time.clone());
        assert_eq!(d.fire, want, "{policy}");
        assert_eq!(d.skipped_missed, policy != "all", "{policy}");
    }
}

#[test]
fn catching_up_all_fires_at_most_the_latest_thousand() {
    let at = t("2025-06-01T00:00:00Z");
    let s = every_second("all", at);
    let now = at + Duration::seconds(5000);
    let d = due(&s, &s.timing().unwrap(), None, now, now);
    assert_eq!(d.fire.len(), MAX_CATCH_UP);
    assert_eq!(d.fire.first(), Some(&(now - Duration::seconds(999))));
    assert_eq!(d.fire.last(), Some(&now));
    assert!(d.skipped_missed);
}

#[test]
fn a_paused_schedule_fires_nothing_and_a_resume_does_not_bring_back_the_pause() {
    let at = t("2025-06-01T00:00:00Z");
    let s = every_second("all", at);
    let pause = decide_schedule(Some(&s), s.id, &ScheduleCommand::Pause, at).unwrap();
    let paused = fold(Some(&s), pause, at + Duration::seconds(2)).unwrap();
    assert!(
        decide_schedule(Some(&paused), s.id, &ScheduleCommand::Pause, at)
            .unwrap()
            .is_empty()
    );
    let now = at + Duration::seconds(10);
    assert!(due(&paused, &s.timing().unwrap(), None, now, now)
        .fire
        .is_empty());
    let resume = decide_schedule(Some(&paused), s.id, &ScheduleCommand::Resume, now).unwrap();
    let resumed = fold(Some(&paused), resume, now).unwrap();
    let later = now + Duration::seconds(2);
    assert_eq!(
        due(&resumed, &s.timing().unwrap(), None, later, later).fire,
        vec![now + Duration::seconds(1), later]
    );
}

#[test]
fn a_firing_is_recognised_only_by_its_derived_job_id() {
    let (tenant, schedule) = (Uuid::new_v4(), Uuid::new_v4());
    let slot = t("2025-06-01T12:00:05Z");
    let id = fire_job_id(tenant, schedule, slot);
    assert_eq!(id, fire_job_id(tenant, schedule, slot));
    assert_ne!(
        id,
        fire_job_id(tenant, schedule, slot + Duration::seconds(1))
    );
    assert_ne!(id, fire_job_id(Uuid::new_v4(), schedule, slot));
    assert_eq!(id.get_version_num(), 7);
    let spec: crate::validate::EnqueueRequest = serde_json::from_value(json!({
        "type": "x", "payload": {},
        "metadata": {"schedule_id": schedule, "fire_time": format_fire_time(slot)}
    }))
    .unwrap();
    let spec = spec.validate(slot, "").unwrap();
    let event = crate::decide(None, &crate::Command::Enqueue(spec), slot)
        .unwrap()
        .remove(0);
    let enqueued = |job_id| Envelope {
        event_id: Uuid::now_v7(),
        schema_version: SCHEMA_VERSION,
        tenant_id: tenant,
        job_id,
        at: slot,
        actor: Actor::system("scheduler"),
        prev_hash: None,
        event: event.clone(),
    };
    assert_eq!(fired_slot(&enqueued(id)), Some((schedule, slot)));
    // The same metadata on any other job (a hand-made enqueue) is not a firing.
    assert_eq!(fired_slot(&enqueued(Uuid::now_v7())), None);
}

#[test]
fn every_bad_field_of_a_schedule_is_named() {
    let now = t("2025-06-01T00:00:00Z");
    let fields = |v: serde_json::Value| -> Vec<String> {
        request(v)
            .validate(now)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect()
    };
    assert_eq!(
        fields(json!({"cron": "* * *", "template": template()})),
        ["cron"]
    );
    assert_eq!(
        fields(json!({"cron": "0 * * * *", "timezone": "Mars/Olympus", "template": template()})),
        ["timezone"]
    );
    assert_eq!(
        fields(json!({"cron": "0 * * * *", "interval_seconds": 5, "template": template()})),
        ["interval_seconds"]
    );
    assert_eq!(fields(json!({"template": template()})), ["cron"]);
    assert_eq!(
        fields(json!({"interval_seconds": 0, "template": template()})),
        ["interval_seconds"]
    );
    assert_eq!(
        fields(json!({"interval_seconds": 5, "timezone": "UTC", "template": template()})),
        ["timezone"]
    );
    assert_eq!(
        fields(
            json!({"interval_seconds": 5, "start_at": "2025-06-02T00:00:00Z",
                      "end_at": "2025-06-01T00:00:00Z", "template": template()})
        ),
        ["end_at"]
    );
    assert_eq!(
        fields(
            json!({"interval_seconds": 5, "template": {"type": "bad type!", "payload": {},
                      "priority": 11, "run_at": "2025-06-01T00:00:00Z"}})
        ),
        ["template.run_at", "template.type", "template.priority"]
    );
    assert_eq!(
        fields(json!({"cron": "0 0 30 2 *", "template": template()})),
        ["cron"],
        "30 February never comes"
    );
    let unknown: Result<ScheduleRequest, _> =
        serde_json::from_value(json!({"interval_seconds": 5, "template": template(), "x": 1}));
    assert!(unknown.is_err());
}

#[test]
fn a_patch_is_checked_against_the_merged_schedule() {
    let at = t("2025-06-01T00:00:00Z");
    let s = created(json!({"interval_seconds": 5, "template": template()}), at);
    let patch = |v: serde_json::Value| {
        let changes: ScheduleUpdateRequest = serde_json::from_value(v).unwrap();
        let changes = changes.validate(at).unwrap();
        decide_schedule(
            Some(&s),
            s.id,
            &ScheduleCommand::Update(Box::new(changes)),
            at,
        )
    };
    assert!(matches!(
        patch(json!({"timezone": "Europe/Paris"})),
        Err(ScheduleRejection::Validation(f)) if f[0].field == "timezone"
    ));
    assert!(matches!(
        patch(json!({})),
        Err(ScheduleRejection::Validation(f)) if f[0].field == "body"
    ));
    // Switching to a cron replaces the interval and moves the counting on.
    let later = at + Duration::seconds(30);
    let events = patch(json!({"cron": "0 * * * *", "end_at": null})).unwrap();
    let s2 = fold(Some(&s), events, later).unwrap();
    assert_eq!(
        (
            s2.cron.as_deref(),
            s2.timezone.as_deref(),
            s2.interval_seconds
        ),
        (Some("0 * * * *"), Some("UTC"), None)
    );
    assert_eq!(s2.counting_from, later);
    assert_eq!(s2.version, 2);
    // A template change leaves the slots alone.
    let events = patch(json!({"template": {"type": "other", "payload": 1}})).unwrap();
    let s3 = fold(Some(&s), events, later).unwrap();
    assert_eq!(s3.counting_from, s.counting_from);
    assert_eq!(s3.template.0.job_type, "other");
}

#[test]
fn schedule_events_round_trip_and_a_deleted_schedule_is_gone() {
    let at = t("2025-06-01T00:00:00Z");
    let s = created(
        json!({"name": "n", "cron": "*/5 * * * * *", "timezone": "UTC", "catch_up": "one",
               "template": template(), "enabled": false}),
        at,
    );
    assert!(!s.enabled);
    assert_eq!(s.catch_up, CatchUp::One);
    let env = ScheduleEnvelope {
        event_id: Uuid::now_v7(),
        schema_version: SCHEMA_VERSION,
        tenant_id: s.tenant_id,
        at,
        actor: Actor::user("u"),
        event: ScheduleEvent::Updated {
            schedule_id: s.id,
            name: Some(None),
            cron: None,
            timezone: None,
            interval_seconds: None,
            start_at: None,
            end_at: Some(Some(at)),
            catch_up: None,
            template: None,
            plan_tier: None,
        },
    };
    let json: serde_json::Value = serde_json::from_slice(&env.to_json()).unwrap();
    assert_eq!(json["type"], "ScheduleUpdated");
    assert_eq!(json["data"]["name"], serde_json::Value::Null);
    assert!(json["data"].get("start_at").is_none());
    assert_eq!(ScheduleEnvelope::from_json(&env.to_json()).unwrap(), env);
    assert_eq!(
        parse_schedule_subject(&env.subject()),
        Some((s.tenant_id, s.id))
    );
    let deleted = decide_schedule(Some(&s), s.id, &ScheduleCommand::Delete, at).unwrap();
    assert_eq!(fold(Some(&s), deleted, at), None);
}
