use events::validate::EnqueueRequest;
use events::{decide, Actor, Command, Envelope, Recorded};
use serde_json::json;
use uuid::Uuid;

use super::*;

/// A model holding `n` pending jobs of two tenants and one leased job.
fn model(n: usize) -> WriteModel {
    model_with(n, usize::MAX)
}

/// The same, keeping payloads in memory up to `payload_budget` bytes.
fn model_with(n: usize, payload_budget: usize) -> WriteModel {
    let now = common::now();
    let mut m = WriteModel::default();
    m.set_payload_budget(payload_budget);
    let tenants = [Uuid::new_v4(), Uuid::new_v4()];
    let mut seq = 0;
    let mut record = |m: &mut WriteModel, tenant: Uuid, id: Uuid, cmd: Command| {
        for event in decide(m.job(&id), &cmd, now).expect("decide") {
            seq += 1;
            let envelope = Envelope {
                event_id: Uuid::now_v7(),
                // Version 1 has no hash chain to keep.
                schema_version: 1,
                tenant_id: tenant,
                job_id: id,
                at: now,
                actor: Actor::system("t"),
                prev_hash: None,
                event,
            };
            m.fold(&Recorded { seq, envelope }, now).expect("fold");
        }
    };
    for i in 0..=n {
        let req: EnqueueRequest = serde_json::from_value(
            json!({"type": if i == n { "lease-me" } else { "t" }, "payload": {"i": i, "pad": "x".repeat(100)}, "metadata": {"m": i}}),
        )
        .unwrap();
        let spec = req.validate(now, "").unwrap();
        record(
            &mut m,
            tenants[i % 2],
            Uuid::now_v7(),
            Command::Enqueue(spec),
        );
    }
    let job = m.take(&["lease-me".into()], None, |_, _| u64::MAX).unwrap();
    record(
        &mut m,
        job.tenant_id,
        job.id,
        Command::Lease {
            worker_id: "w".into(),
            lease_seconds: 30,
        },
    );
    m
}

fn sorted_jobs(m: &WriteModel) -> Vec<Job> {
    let mut jobs: Vec<Job> = m.jobs().cloned().collect();
    jobs.sort_by_key(|j| j.id);
    jobs
}

const STREAM: StreamId = StreamId {
    created_unix_nanos: 1_700_000_000_123_456_789,
};

fn state(first_seq: u64, last_seq: u64) -> StreamState {
    StreamState {
        id: STREAM,
        first_seq,
        last_seq,
    }
}

#[test]
fn a_written_snapshot_reads_back_as_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    // More than one chunk, and not a multiple of it.
    let m = model(2 * CHUNK + 17);
    let size = write(dir.path(), STREAM, 500, &m, ScheduleImage::default()).unwrap();
    assert_eq!(std::fs::metadata(path_in(dir.path())).unwrap().len(), size);
    let r = read(dir.path(), state(1, 600), common::now(), usize::MAX)
        .unwrap()
        .expect("a snapshot");
    assert_eq!(r.position, 500);
    assert_eq!(r.jobs, 2 * CHUNK + 18);
    assert_eq!(sorted_jobs(&r.model), sorted_jobs(&m));
    assert_eq!(r.model.image(), m.image());
    assert_eq!(r.model.ready_depth(), m.ready_depth());
    assert_eq!(r.model.live_jobs(), m.live_jobs());
}

#[test]
fn payloads_out_of_memory_stay_out_and_keep_the_sequence_to_read_them_from() {
    let dir = tempfile::tempdir().unwrap();
    // Room for about 20 of the 200 payloads (each about 120 bytes).
    let m = model_with(200, 20 * 160);
    let dropped = |m: &WriteModel| {
        m.jobs()
            .filter(|j| crate::payloads::is_dropped(&j.payload))
            .map(|j| j.id)
            .collect::<std::collections::BTreeSet<_>>()
    };
    let out = dropped(&m);
    assert!(
        (150..190).contains(&out.len()),
        "{} of 201 payloads out of memory",
        out.len()
    );
    assert!(m.jobs().all(|j| j.payload_seq != 0));
    write(dir.path(), STREAM, 500, &m, ScheduleImage::default()).unwrap();
    let r = read(dir.path(), state(1, 600), common::now(), 20 * 160)
        .unwrap()
        .expect("a snapshot");
    assert_eq!(dropped(&r.model), out);
    assert_eq!(sorted_jobs(&r.model), sorted_jobs(&m));
    let seqs = |m: &WriteModel| {
        sorted_jobs(m)
            .iter()
            .map(|j| j.payload_seq)
            .collect::<Vec<_>>()
    };
    assert_eq!(seqs(&r.model), seqs(&m));
    // Restored with a smaller budget, more payloads leave memory; none comes back.
    let r = read(dir.path(), state(1, 600), common::now(), 5 * 160)
        .unwrap()
        .expect("a snapshot");
    let fewer = dropped(&r.model);
    assert!(fewer.is_superset(&out) && fewer.len() > out.len());
}

#[test]
fn no_snapshot_is_none_and_one_that_does_not_fit_the_stream_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert!(read(dir.path(), state(1, 10), common::now(), usize::MAX)
        .unwrap()
        .is_none());
    let m = model(3);
    write(dir.path(), STREAM, 5, &m, ScheduleImage::default()).unwrap();
    let refused = |s: StreamState| match read(dir.path(), s, common::now(), usize::MAX) {
        Ok(_) => panic!("{s:?} was accepted"),
        Err(e) => format!("{e:#}"),
    };
    let other = StreamState {
        id: StreamId {
            created_unix_nanos: STREAM.created_unix_nanos + 1,
        },
        ..state(1, 10)
    };
    assert!(refused(other).contains("another stream"));
    assert!(refused(state(1, 4)).contains("beyond the stream's last"));
    assert!(refused(state(7, 10)).contains("no longer holds"));
    // Exactly at the edges it fits.
    assert!(read(dir.path(), state(6, 5), common::now(), usize::MAX)
        .unwrap()
        .is_some());
}

#[test]
fn a_torn_or_foreign_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(CHUNK + 5);
    write(dir.path(), STREAM, 9, &m, ScheduleImage::default()).unwrap();
    let path = path_in(dir.path());
    let whole = std::fs::read(&path).unwrap();
    for cut in [4, 20, whole.len() / 2, whole.len() - 3] {
        std::fs::write(&path, &whole[..cut]).unwrap();
        let e = read(dir.path(), state(1, 9), common::now(), usize::MAX)
            .err()
            .unwrap_or_else(|| panic!("a file cut at {cut} was accepted"));
        assert!(!format!("{e:#}").is_empty());
    }
    let mut foreign = whole.clone();
    foreign[8..12].copy_from_slice(&(FORMAT + 1).to_le_bytes());
    std::fs::write(&path, &foreign).unwrap();
    let e = read(dir.path(), state(1, 9), common::now(), usize::MAX)
        .err()
        .unwrap();
    assert!(format!("{e:#}").contains("format"), "{e:#}");
    std::fs::write(&path, b"something else entirely").unwrap();
    assert!(read(dir.path(), state(1, 9), common::now(), usize::MAX).is_err());
}
