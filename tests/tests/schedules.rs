//! Periodic jobs (`/jobs/v1/schedules`): each slot enqueues exactly one job whatever the number
//! of command-svc instances and restarts; missed slots follow the catch-up policy; a cron is
//! read in its time zone; pause, resume and delete stop and restart firing; bad input is named
//! field by field and another tenant's schedule is a 404.
//!
//! Windows are made deterministic with `start_at`/`end_at` on whole seconds: a test counts the
//! slots of a window it chose, never what wall-clock luck produced.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use reqwest::Method;
use serde_json::{json, Value};
use tests::{event_seq, TestApp};
use uuid::Uuid;

fn template() -> Value {
    json!({"type": "report.build", "payload": {"kind": "tick"}})
}

async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value, u64) {
    let mut req = app.request(method, path, token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.expect("sent");
    let status = res.status().as_u16();
    let seq = res
        .headers()
        .get("x-event-seq")
        .map(|_| event_seq(&res))
        .unwrap_or(0);
    (status, res.json().await.unwrap_or(Value::Null), seq)
}

/// Creates a schedule as the app's tenant; returns its id and view.
async fn create(app: &TestApp, body: Value) -> (Uuid, Value) {
    let (status, v, _) = send(
        app,
        Method::POST,
        "/jobs/v1/schedules",
        &app.token,
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let id = v["data"]["id"].as_str().expect("id").parse().expect("uuid");
    (id, v["data"].clone())
}

/// A whole second at least `secs` seconds from now.
fn whole_second_in(secs: i64) -> DateTime<Utc> {
    (Utc::now() + chrono::Duration::seconds(secs + 1)).trunc_subsecs(0)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Every job the stream holds for `schedule`, by fire time: the job ids enqueued for each slot.
/// Counts any `JobEnqueued` whose metadata names the schedule, so a duplicate under another id
/// would show too.
async fn fired(nats_url: &str, schedule: Uuid) -> BTreeMap<DateTime<Utc>, Vec<Uuid>> {
    let mut out: BTreeMap<DateTime<Utc>, Vec<Uuid>> = BTreeMap::new();
    for rec in tests::all_events(nats_url).await {
        let env = &rec.envelope;
        let events::JobEvent::Enqueued { metadata, .. } = &env.event else {
            continue;
        };
        if metadata["schedule_id"] != json!(schedule.to_string()) {
            continue;
        }
        let slot: DateTime<Utc> = metadata["fire_time"]
            .as_str()
            .expect("fire_time")
            .parse()
            .expect("an instant");
        assert_eq!(
            events::schedule::fired_slot(env),
            Some((schedule, slot)),
            "a firing's job id is derived from its schedule and slot"
        );
        out.entry(slot).or_default().push(env.job_id);
    }
    out
}

/// Waits until `f` holds for the schedule's firings; returns them.
async fn fired_until(
    nats_url: &str,
    schedule: Uuid,
    timeout: Duration,
    what: &str,
    f: impl Fn(&BTreeMap<DateTime<Utc>, Vec<Uuid>>) -> bool,
) -> BTreeMap<DateTime<Utc>, Vec<Uuid>> {
    let f = &f;
    tests::eventually(timeout, what, || async move {
        let got = fired(nats_url, schedule).await;
        f(&got).then_some(got)
    })
    .await
}

async fn sleep_until(t: DateTime<Utc>) {
    if let Ok(d) = (t - Utc::now()).to_std() {
        tokio::time::sleep(d).await;
    }
}

fn slots(from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let mut out = vec![];
    let mut t = from;
    while t <= to {
        out.push(t);
        t += chrono::Duration::seconds(1);
    }
    out
}

#[tokio::test]
async fn every_second_for_ten_seconds_on_two_instances_enqueues_ten_jobs_across_a_restart() {
    let app = TestApp::spawn().await;
    let second = tests::start_command(&app.nats.url(), &app.keys)
        .await
        .expect("second command-svc starts");
    tests::wait_ready(&second).await;
    // Ten slots, from a whole second a little ahead: start, start + 1 s, ..., start + 9 s.
    let start = whole_second_in(3);
    let end = start + chrono::Duration::seconds(9);
    let (id, view) = create(
        &app,
        json!({"name": "ticker", "interval_seconds": 1, "start_at": rfc3339(start),
               "end_at": rfc3339(end), "template": template()}),
    )
    .await;
    assert!(
        at(&view["created_at"]).is_some_and(|c| c < start),
        "created before its first slot"
    );
    assert_eq!(at(&view["next_run_at"]), Some(start));
    assert_eq!(view["catch_up"], "skip");
    let url = app.nats.url();

    // In the middle of the window, one instance goes away and a new one comes.
    fired_until(&url, id, Duration::from_secs(30), "four firings", |f| {
        f.len() >= 4
    })
    .await;
    second.stop().await;
    let third = tests::start_command(&url, &app.keys)
        .await
        .expect("third command-svc starts");
    tests::wait_ready(&third).await;

    let all = fired_until(&url, id, Duration::from_secs(40), "the tenth firing", |f| {
        f.contains_key(&end)
    })
    .await;
    // Past the window, with both instances still running: nothing more comes.
    sleep_until(end + chrono::Duration::seconds(2)).await;
    let all_after = fired(&url, id).await;
    assert_eq!(all, all_after, "nothing fires after end_at");
    assert_eq!(
        all.keys().copied().collect::<Vec<_>>(),
        slots(start, end),
        "exactly the ten slots of the window"
    );
    for (slot, jobs) in &all {
        assert_eq!(jobs.len(), 1, "slot {slot} enqueued {} jobs", jobs.len());
    }

    // The read model: ten jobs for the tenant, the last run, no next run.
    let last_seq = tests::all_events(&url).await.last().expect("events").seq;
    let (status, v) = app.get(&format!("/jobs/v1/schedules/{id}"), last_seq).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(at(&v["data"]["last_run"]["fire_time"]), Some(end));
    assert_eq!(
        v["data"]["last_run"]["job_id"],
        json!(all[&end][0].to_string())
    );
    assert_eq!(v["data"]["next_run_at"], Value::Null);
    let (status, jobs) = app
        .get("/jobs/v1/jobs?type=report.build&limit=100", last_seq)
        .await;
    assert_eq!(status, 200);
    let jobs = jobs["data"].as_array().expect("jobs").clone();
    assert_eq!(jobs.len(), 10);
    assert!(jobs
        .iter()
        .all(|j| j["metadata"]["schedule_id"] == json!(id.to_string())));
    third.stop().await;
}

#[tokio::test]
async fn missed_slots_follow_the_catch_up_policy_after_an_outage() {
    let mut app = TestApp::spawn().await;
    // Ten slots each; the only instance stops after the first firings and is back after the
    // window has closed, so every slot after the last one fired was missed.
    let start = whole_second_in(3);
    let end = start + chrono::Duration::seconds(9);
    let mut ids = BTreeMap::new();
    for policy in ["skip", "one", "all"] {
        let (id, _) = create(
            &app,
            json!({"interval_seconds": 1, "start_at": rfc3339(start), "end_at": rfc3339(end),
                   "catch_up": policy, "template": template()}),
        )
        .await;
        ids.insert(policy, id);
    }
    let url = app.nats.url();
    for id in ids.values() {
        fired_until(&url, *id, Duration::from_secs(30), "a first firing", |f| {
            !f.is_empty()
        })
        .await;
    }
    app.command.stop().await;
    let mut before = BTreeMap::new();
    for (policy, id) in &ids {
        let f = fired(&url, *id).await;
        let last = *f.keys().last().expect("fired before the outage");
        assert!(
            last < end - chrono::Duration::seconds(1),
            "the outage must leave missed slots ({policy}: last fired {last}, window ends {end})"
        );
        before.insert(*policy, f);
    }
    sleep_until(end + chrono::Duration::milliseconds(1500)).await;
    app.command = tests::start_command(&url, &app.keys)
        .await
        .expect("command-svc restarts");
    tests::wait_ready(&app.command).await;

    let last_before = |p: &str| *before[p].keys().last().expect("fired");
    let one = fired_until(
        &url,
        ids["one"],
        Duration::from_secs(20),
        "one catch-up",
        |f| f.len() > before["one"].len(),
    )
    .await;
    let all = fired_until(
        &url,
        ids["all"],
        Duration::from_secs(20),
        "every catch-up",
        |f| f.contains_key(&end),
    )
    .await;
    // The pass that caught those up decided for `skip` too; give any stray firing a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let skip = fired(&url, ids["skip"]).await;
    assert_eq!(skip, before["skip"], "skip fires none of the missed slots");
    let one_new: Vec<_> = one
        .keys()
        .filter(|s| **s > last_before("one"))
        .copied()
        .collect();
    assert_eq!(one_new, vec![end], "one fires the latest missed slot only");
    let all_new: Vec<_> = all
        .keys()
        .filter(|s| **s > last_before("all"))
        .copied()
        .collect();
    assert_eq!(
        all_new,
        slots(last_before("all") + chrono::Duration::seconds(1), end),
        "all fires every missed slot"
    );
    for f in [&one, &all, &skip] {
        assert!(
            f.values().all(|jobs| jobs.len() == 1),
            "one job per slot: {f:?}"
        );
    }
    assert_eq!(fired(&url, ids["one"]).await, one, "nothing more");
    assert_eq!(fired(&url, ids["all"]).await, all, "nothing more");
}

#[tokio::test]
async fn a_cron_is_read_in_its_time_zone() {
    let app = TestApp::spawn().await;
    // 30 March 2031: Paris springs from 02:00 CET to 03:00 CEST; 02:30 does not exist that
    // day, so the run is at 03:00 CEST (01:00Z), and the next day at 02:30 CEST (00:30Z).
    let (id, view) = create(
        &app,
        json!({"cron": "30 2 * * *", "timezone": "Europe/Paris",
               "start_at": "2031-03-30T00:00:00Z", "template": template()}),
    )
    .await;
    assert_eq!(at(&view["next_run_at"]), Some(t("2031-03-30T01:00:00Z")));
    assert_eq!(view["timezone"], "Europe/Paris");
    let path = format!("/jobs/v1/schedules/{id}");
    let patch = |body: Value| {
        let (app, path) = (&app, &path);
        async move {
            let (status, v, seq) = send(app, Method::PATCH, path, &app.token, Some(body)).await;
            assert_eq!(status, 200, "{v}");
            (v["data"].clone(), seq)
        }
    };
    let (v, _) = patch(json!({"start_at": "2031-03-31T00:00:00Z"})).await;
    assert_eq!(at(&v["next_run_at"]), Some(t("2031-03-31T00:30:00Z")));
    // 09:00 in New York is 13:00Z in July (EDT) and 14:00Z in January (EST).
    let (v, seq) = patch(json!({"cron": "0 9 * * *", "timezone": "America/New_York",
                                "start_at": "2031-07-01T00:00:00Z"}))
    .await;
    assert_eq!(v["version"], 3);
    assert_eq!(at(&v["next_run_at"]), Some(t("2031-07-01T13:00:00Z")));
    // The same through query-svc, once it has the change.
    let (status, got) = app.get(&path, seq).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["data"]["version"], 3);
    assert_eq!(got["data"]["cron"], "0 9 * * *");
    assert_eq!(
        at(&got["data"]["next_run_at"]),
        Some(t("2031-07-01T13:00:00Z"))
    );
    let (v, _) = patch(json!({"start_at": "2032-01-01T00:00:00Z"})).await;
    assert_eq!(at(&v["next_run_at"]), Some(t("2032-01-01T14:00:00Z")));
    // The autumn change (26 October 2031 in Paris): 02:30 comes twice, the run happens once.
    let (v, _) = patch(json!({"cron": "30 2 * * *", "timezone": "Europe/Paris",
                              "start_at": "2031-10-26T00:00:00Z"}))
    .await;
    assert_eq!(at(&v["next_run_at"]), Some(t("2031-10-26T00:30:00Z")));
}

fn t(s: &str) -> DateTime<Utc> {
    s.parse().expect("an instant")
}

fn at(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str().and_then(|s| s.parse().ok())
}

#[tokio::test]
async fn bad_input_is_named_and_another_tenants_schedule_is_not_found() {
    let app = TestApp::spawn().await;
    let post = |body: Value| {
        let app = &app;
        async move {
            let (status, v, _) = send(
                app,
                Method::POST,
                "/jobs/v1/schedules",
                &app.token,
                Some(body),
            )
            .await;
            let fields: Vec<String> = v["error"]["details"]["fields"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|f| f["field"].as_str().unwrap_or("").to_string())
                        .collect()
                })
                .unwrap_or_default();
            (status, fields)
        }
    };
    let cases = [
        (
            json!({"cron": "61 * * * *", "template": template()}),
            vec!["cron"],
        ),
        (
            json!({"cron": "0 * * * *", "timezone": "Europe/Atlantis", "template": template()}),
            vec!["timezone"],
        ),
        (
            json!({"cron": "0 * * * *", "interval_seconds": 60, "template": template()}),
            vec!["interval_seconds"],
        ),
        (
            json!({"interval_seconds": 0, "template": template()}),
            vec!["interval_seconds"],
        ),
        (json!({"template": template()}), vec!["cron"]),
        (
            json!({"interval_seconds": 60, "template": {"type": "a", "payload": {}, "priority": 99}}),
            vec!["template.priority"],
        ),
        (
            json!({"interval_seconds": 60, "catch_up": "sometimes", "template": template()}),
            vec![],
        ),
        (json!({"interval_seconds": 60}), vec![]),
    ];
    for (body, want) in cases {
        let (status, fields) = post(body.clone()).await;
        assert_eq!(status, 400, "{body}");
        if !want.is_empty() {
            assert_eq!(fields, want, "{body}");
        }
    }

    let (id, _) = create(
        &app,
        json!({"interval_seconds": 3600, "template": template()}),
    )
    .await;
    let other = app.keys.token(Uuid::new_v4(), &["admin"]);
    let path = format!("/jobs/v1/schedules/{id}");
    for (method, path, body) in [
        (Method::GET, path.clone(), None),
        (
            Method::PATCH,
            path.clone(),
            Some(json!({"name": "mine now"})),
        ),
        (Method::POST, format!("{path}/pause"), None),
        (Method::POST, format!("{path}/resume"), None),
        (Method::DELETE, path.clone(), None),
        (
            Method::GET,
            format!("/jobs/v1/schedules/{}", Uuid::now_v7()),
            None,
        ),
        (Method::DELETE, "/jobs/v1/schedules/not-a-uuid".into(), None),
    ] {
        let (status, v, _) = send(&app, method.clone(), &path, &other, body).await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (404, Some("NOT_FOUND")),
            "{method} {path}"
        );
    }
    let (_, list) = app.get("/jobs/v1/schedules", 0).await;
    assert!(list["data"].as_array().is_some());
    let res = app
        .request(Method::GET, "/jobs/v1/schedules", &other)
        .send()
        .await
        .expect("sent");
    let theirs: Value = res.json().await.expect("json");
    assert_eq!(
        theirs["data"],
        json!([]),
        "another tenant lists none of ours"
    );
    // The owner still has it, unchanged.
    let (_, v, _) = send(
        &app,
        Method::POST,
        &format!("{path}/pause"),
        &app.token,
        None,
    )
    .await;
    assert_eq!(v["data"]["version"], 2, "{v}");
    assert_eq!(v["data"]["name"], Value::Null);

    // A replayed create (same Idempotency-Key) is the same schedule.
    let body = json!({"interval_seconds": 3600, "template": template()});
    let mut ids = vec![];
    for _ in 0..2 {
        let res = app
            .request(Method::POST, "/jobs/v1/schedules", &app.token)
            .header("Idempotency-Key", "schedule-once")
            .json(&body)
            .send()
            .await
            .expect("sent");
        assert_eq!(res.status(), 201);
        let v: Value = res.json().await.expect("json");
        ids.push(v["data"]["id"].clone());
    }
    assert_eq!(ids[0], ids[1]);
}

#[tokio::test]
async fn pause_resume_and_delete_stop_and_restart_firing() {
    let app = TestApp::spawn().await;
    let url = app.nats.url();
    let (id, _) = create(&app, json!({"interval_seconds": 1, "template": template()})).await;
    let path = format!("/jobs/v1/schedules/{id}");
    fired_until(&url, id, Duration::from_secs(20), "two firings", |f| {
        f.len() >= 2
    })
    .await;

    let (status, v, _) = send(
        &app,
        Method::POST,
        &format!("{path}/pause"),
        &app.token,
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["enabled"], false);
    assert_eq!(v["data"]["next_run_at"], Value::Null);
    // Once the pause is answered, this instance fires no slot after it.
    let paused_at = Utc::now();
    // Pausing again changes nothing.
    let (status, again, seq) = send(
        &app,
        Method::POST,
        &format!("{path}/pause"),
        &app.token,
        None,
    )
    .await;
    assert_eq!((status, seq), (200, 0));
    assert_eq!(again["data"]["version"], v["data"]["version"]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let during = fired(&url, id).await;
    assert!(
        during.keys().all(|s| *s <= paused_at),
        "nothing fires after the pause: {during:?}"
    );

    let (status, v, _) = send(
        &app,
        Method::POST,
        &format!("{path}/resume"),
        &app.token,
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["enabled"], true);
    let resumed_at: DateTime<Utc> = v["data"]["updated_at"]
        .as_str()
        .expect("at")
        .parse()
        .expect("t");
    let after = fired_until(
        &url,
        id,
        Duration::from_secs(20),
        "a firing after the resume",
        |f| f.keys().any(|s| *s > resumed_at),
    )
    .await;
    assert!(
        after.keys().all(|s| *s <= paused_at || *s > resumed_at),
        "the slots of the pause are not caught up: {after:?}"
    );

    // A change of interval applies from now on.
    let (status, v, _) = send(
        &app,
        Method::PATCH,
        &path,
        &app.token,
        Some(json!({"interval_seconds": 3600, "name": "hourly"})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["interval_seconds"], 3600);
    assert_eq!(v["data"]["name"], "hourly");

    let (status, v, deleted_seq) = send(&app, Method::DELETE, &path, &app.token, None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["deleted"], true);
    let deleted_at = Utc::now();
    let (status, _, _) = send(&app, Method::DELETE, &path, &app.token, None).await;
    assert_eq!(status, 404, "a deleted schedule is gone");
    let (status, _) = app.get(&path, deleted_seq).await;
    assert_eq!(status, 404);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let end = fired(&url, id).await;
    assert!(
        end.keys().all(|s| *s <= deleted_at),
        "nothing fires after the delete"
    );
    assert!(end.values().all(|jobs| jobs.len() == 1));
}

#[tokio::test]
async fn a_stream_made_before_schedules_gains_their_subject() {
    let nats = tests::NatsServer::start()
        .await
        .expect("nats-server starts");
    let js =
        async_nats::jetstream::new(common::nats::connect_once(&nats.url()).await.expect("nats"));
    let mut old = common::nats::stream_config(1);
    old.subjects.retain(|s| s.as_str() != "jobs.schedules.>");
    js.create_stream(old).await.expect("the old stream");
    let command = tests::start_command(&nats.url(), &tests::Keys::get())
        .await
        .expect("command-svc starts on the old stream");
    let mut stream = js.get_stream("JOBS_EVENTS").await.expect("stream");
    let subjects = stream.info().await.expect("info").config.subjects.clone();
    assert!(
        subjects.iter().any(|s| s == "jobs.schedules.>"),
        "{subjects:?}"
    );
    assert!(
        subjects.iter().any(|s| s == "jobs.events.>"),
        "{subjects:?}"
    );
    command.stop().await;
}
