//! Group commit (`command_svc::group`) against a real NATS server: appends that meet in the
//! committer leave as one atomic batch, every one is answered with its own stream sequence,
//! and a group holding a lost race falls back to one-by-one so exactly the winner is stored.

use bytes::Bytes;
use command_svc::group::{GroupCommit, Written};
use command_svc::store::AppendError;
use tests::procs::NatsServer;

fn headers(expected: u64) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    h.insert(
        "Nats-Expected-Last-Subject-Sequence",
        expected.to_string().as_str(),
    );
    h
}

fn group_size() -> prometheus::Histogram {
    prometheus::Histogram::with_opts(
        prometheus::HistogramOpts::new("g", "group size").buckets(vec![1.0, 2.0, 64.0, 256.0]),
    )
    .unwrap()
}

async fn setup() -> (
    NatsServer,
    async_nats::jetstream::Context,
    GroupCommit,
    prometheus::Histogram,
) {
    let nats = NatsServer::start().await.unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = common::nats::jetstream(&client);
    common::nats::ensure_stream(&js, 1).await.unwrap();
    let sizes = group_size();
    let group = GroupCommit::start(js.clone(), sizes.clone(), true);
    (nats, js, group, sizes)
}

fn subject(i: usize) -> String {
    format!(
        "jobs.tenants.{}.jobs.{}",
        uuid::Uuid::nil(),
        uuid::Uuid::from_u128(i as u128 + 1)
    )
}

/// The last event stored on the first job's subject (sequence, payload) and how many events
/// the stream holds.
async fn stored(js: &async_nats::jetstream::Context) -> (u64, Bytes, u64) {
    let stream = js.get_stream(events::stream::STREAM_NAME).await.unwrap();
    let last = stream
        .get_last_raw_message_by_subject(&subject(0))
        .await
        .unwrap();
    let messages = stream.get_info().await.unwrap().state.messages;
    (last.sequence, last.payload, messages)
}

// One thread: every write below is queued before the committer runs, so they form groups.
#[tokio::test(flavor = "current_thread")]
async fn appends_that_meet_leave_as_one_batch_and_each_gets_its_own_sequence() {
    let (_nats, js, group, sizes) = setup().await;
    let writes = (0..300).map(|i| {
        group.write(
            subject(i),
            Bytes::from(format!("event {i}")),
            headers(0),
            format!("id-{i}"),
        )
    });
    let answers: Vec<Written> = futures::future::join_all(writes)
        .await
        .into_iter()
        .map(|r| r.expect("every append is stored"))
        .collect();
    // Every event is in the stream, on its own subject, at the sequence it was answered with.
    let stream = js.get_stream(events::stream::STREAM_NAME).await.unwrap();
    for (i, w) in answers.iter().enumerate() {
        assert!(!w.duplicate);
        let m = stream.get_raw_message(w.seq).await.unwrap();
        assert_eq!(m.subject.as_str(), subject(i));
        assert_eq!(&m.payload[..], format!("event {i}").as_bytes());
    }
    let mut seqs: Vec<u64> = answers.iter().map(|w| w.seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 300);
    // 300 appends were written in far fewer store writes: at most 256 per batch.
    let writes = sizes.get_sample_count();
    assert!(
        (2..=10).contains(&writes),
        "{writes} store writes for 300 appends"
    );
    assert_eq!(sizes.get_sample_sum(), 300.0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_group_with_a_lost_race_stores_the_winner_and_everyone_else() {
    let (_nats, js, group, _) = setup().await;
    // Two appends create the same job (both expect an empty subject); ten others are innocent.
    let mut writes = Vec::new();
    writes.push(group.write(subject(0), Bytes::from("first"), headers(0), "a".into()));
    for i in 1..=10 {
        writes.push(group.write(
            subject(i),
            Bytes::from("other"),
            headers(0),
            format!("o{i}"),
        ));
    }
    writes.push(group.write(subject(0), Bytes::from("second"), headers(0), "b".into()));
    let answers = futures::future::join_all(writes).await;
    let first = answers[0].as_ref().expect("the first to the subject wins");
    assert!(
        matches!(answers[11], Err(AppendError::Conflict)),
        "the loser is told it lost: {:?}",
        answers[11]
    );
    for a in &answers[1..=10] {
        assert!(a.is_ok(), "{a:?}");
    }
    let (seq, payload, messages) = stored(&js).await;
    assert_eq!(seq, first.seq);
    assert_eq!(&payload[..], b"first");
    assert_eq!(messages, 11);
}

#[tokio::test]
async fn a_retried_append_is_never_stored_twice() {
    let (_nats, js, group, sizes) = setup().await;
    let once = group
        .write(subject(0), Bytes::from("x"), headers(0), "same-id".into())
        .await
        .unwrap();
    // The same event again (a retried request): its expectation no longer holds, so the store
    // refuses it (JetStream checks the expected sequence before its de-duplication window);
    // the engine then reloads the job and finds its own event there.
    let again = group
        .write(subject(0), Bytes::from("x"), headers(0), "same-id".into())
        .await;
    assert!(matches!(again, Err(AppendError::Conflict)), "{again:?}");
    let (seq, _, messages) = stored(&js).await;
    assert_eq!(seq, once.seq);
    assert_eq!(messages, 1);
    assert_eq!(sizes.get_sample_sum(), 2.0);
}
