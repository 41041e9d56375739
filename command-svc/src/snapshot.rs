//! The write model's snapshot: written at graceful shutdown, read at start, so that a restart
//! folds only the events after it instead of replaying the whole stream.
//!
//! A snapshot is a cache, never the truth. It records the last stream sequence the model
//! reflects (its position) and the stream's identity (its creation time), and it is used only
//! when that stream is still there with every event after the position; otherwise, or when the
//! file is unreadable, torn or from another format, the instance replays the whole stream as
//! it would without one. The model it restores is the one a replay up to the position builds
//! (`model::tests` checks this against a full replay), and the follower then folds the rest.
//!
//! The file (`write-model.snapshot` in `JOBS_SNAPSHOT_DIR`): `MAGIC`, the format (u32 LE), the
//! header's length (u64 LE) and the header as MessagePack; the jobs in chunks (each: its length
//! as u64 LE, then its jobs as MessagePack maps) and an empty chunk; the footer (the model's
//! state beside the jobs, MessagePack), its length, the number of jobs, and `MAGIC` again. The
//! chunks are decoded on every core. It is written to a temporary file, synced and renamed, so
//! a crash while writing leaves the previous snapshot (or none).

use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, ensure, Context};
use chrono::{DateTime, Utc};
use events::stream::STREAM_NAME;
use events::{Job, SCHEMA_VERSION};
use serde::{Deserialize, Serialize};

use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::model::{Image, WriteModel};
use crate::scheduler::ScheduleImage;

/// The snapshot's file name inside its directory.
pub const FILE_NAME: &str = "write-model.snapshot";
const MAGIC: &[u8; 8] = b"JOBSSNAP";
/// The file's layout and what `WriteModel::restore` expects of it. Bump it whenever either
/// changes, or the fold of events changes what a model holds: an instance ignores a snapshot
/// of another format and replays the stream.
///
/// 3: a job's payload, metadata, progress and result are strings of JSON text (`events::Json`),
/// no longer MessagePack maps.
/// 4: each job is a pair: the sequence of its payload's event (`Job::payload_seq`) and the
/// job, whose payload is `null` when it was out of memory (`crate::payloads`).
const FORMAT: u32 = 4;
/// Jobs per chunk: the unit of parallel encoding and decoding.
const CHUNK: usize = 8192;
/// Jobs per chunk of a snapshot written while serving: the model's lock is held while one is
/// copied (measured with 1 M jobs: with 8,192, enqueues stalled up to 160 ms).
const LIVE_CHUNK: usize = 1024;
/// A header larger than this is not one of ours.
const MAX_HEADER: u64 = 1 << 30;

/// Which stream a snapshot was taken from: its creation time, in nanoseconds since the epoch.
/// A stream deleted and created again under the same name has another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamId {
    pub created_unix_nanos: i64,
}

/// What the stream holds now, to check a snapshot against.
#[derive(Debug, Clone, Copy)]
pub struct StreamState {
    pub id: StreamId,
    pub first_seq: u64,
    pub last_seq: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    schema_version: u32,
    stream: StreamId,
    /// The last stream sequence the model reflects.
    position: u64,
    written_at: DateTime<Utc>,
    /// How many jobs the model held when the writing began (the count is at the end).
    jobs_hint: u64,
}

/// What follows the jobs: the model's state beside them, taken after them (see
/// [`write_live`]).
#[derive(Debug, Serialize, Deserialize)]
struct Footer {
    model: Image,
    schedules: ScheduleImage,
}

/// A snapshot read back: the model restored, ready to follow the stream after `position`.
pub struct Restored {
    pub position: u64,
    pub model: WriteModel,
    pub schedules: ScheduleImage,
    pub jobs: usize,
    pub written_at: DateTime<Utc>,
}

/// At start, before the follower: restores the engine from the snapshot in `dir` when there
/// is one that fits `stream`. Otherwise the follower replays the whole stream.
pub async fn restore(engine: &Engine, dir: &Path, stream: StreamState) {
    let started = std::time::Instant::now();
    let dir = dir.to_path_buf();
    let shown = dir.display().to_string();
    let budget = engine.model().payload_budget();
    match tokio::task::spawn_blocking(move || read(&dir, stream, common::now(), budget)).await {
        Ok(Ok(Some(r))) => {
            engine.schedules.restore(r.schedules);
            engine.install(r.model, r.position);
            engine.metrics.snapshot_position.set(r.position as i64);
            tracing::info!(
                position = r.position,
                stream_last = stream.last_seq,
                jobs = r.jobs,
                written_at = %r.written_at,
                seconds = started.elapsed().as_secs_f64(),
                "write model restored from its snapshot; following the stream after it"
            );
        }
        Ok(Ok(None)) => tracing::info!(dir = shown, "no snapshot yet: replaying the whole stream"),
        Ok(Err(e)) => tracing::warn!(
            dir = shown,
            error = format!("{e:#}"),
            "the snapshot is not used: replaying the whole stream"
        ),
        Err(e) => {
            tracing::error!(error = %e, "reading the snapshot failed: replaying the whole stream")
        }
    }
}

/// How long a stopping instance waits for its follower to reach the stream's end before it
/// writes the snapshot anyway (from wherever the follower is: the next start replays the rest).
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(60);

/// At graceful shutdown, once nothing appends here any more: waits (at most [`CATCH_UP`]) for
/// the follower to fold what the stream holds, so that the snapshot's position is the stream's
/// end and the next start has (almost) nothing to replay. Under load the follower can be far
/// behind: most of what it reads is the echo of this instance's own appends.
pub async fn catch_up(engine: &Engine) {
    let started = std::time::Instant::now();
    let last = async {
        let mut stream = engine.js.get_stream(STREAM_NAME).await.ok()?;
        Some(stream.info().await.ok()?.state.last_sequence)
    };
    let Ok(Some(last)) = tokio::time::timeout(std::time::Duration::from_secs(5), last).await else {
        tracing::warn!("the stream's end is unknown: the snapshot is taken where the follower is");
        return;
    };
    let mut position = engine.position.subscribe();
    let reached = tokio::time::timeout(CATCH_UP, position.wait_for(|p| *p >= last)).await;
    let at = *engine.position.borrow();
    match reached {
        Ok(Ok(_)) => tracing::info!(
            position = at,
            seconds = started.elapsed().as_secs_f64(),
            "the follower reached the stream's end before the snapshot"
        ),
        _ => tracing::warn!(
            position = at,
            stream_last = last,
            "the follower did not reach the stream's end in time: the snapshot is taken where it is"
        ),
    }
}

/// While the instance runs: a snapshot every `every`, once the follower has caught up and
/// when the stream has moved since the last one, so that after a crash a start replays at most
/// about that long's events. Returns when `stop` is cancelled, never in the middle of a write.
pub async fn run_periodic(
    engine: Arc<Engine>,
    dir: PathBuf,
    stream: StreamId,
    every: std::time::Duration,
    stop: CancellationToken,
) {
    let mut last = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        let position = *engine.position.borrow();
        if !engine.is_caught_up() || last == Some(position) {
            continue;
        }
        let started = std::time::Instant::now();
        let (e, d) = (engine.clone(), dir.clone());
        match tokio::task::spawn_blocking(move || write_live(&d, stream, &e)).await {
            Ok(Ok((position, jobs, bytes))) => {
                last = Some(position);
                engine
                    .metrics
                    .snapshot_written_position
                    .set(position as i64);
                tracing::info!(
                    position,
                    jobs,
                    bytes,
                    seconds = started.elapsed().as_secs_f64(),
                    "periodic write model snapshot written"
                );
            }
            Ok(Err(e)) => tracing::warn!(
                error = format!("{e:#}"),
                "writing the periodic snapshot failed; the previous one stays"
            ),
            Err(e) => tracing::warn!(error = %e, "writing the periodic snapshot failed"),
        }
    }
}

/// At graceful shutdown, once the follower has stopped: writes the model to `dir`.
pub async fn save(engine: Arc<Engine>, dir: PathBuf, stream: StreamId) {
    let started = std::time::Instant::now();
    let written = tokio::task::spawn_blocking(move || {
        let position = *engine.position.borrow();
        let schedules = engine.schedules.image();
        let model = engine.model();
        write(&dir, stream, position, &model, schedules)
            .map(|size| (position, model.live_jobs(), size))
    })
    .await;
    match written {
        Ok(Ok((position, jobs, bytes))) => tracing::info!(
            position,
            jobs,
            bytes,
            seconds = started.elapsed().as_secs_f64(),
            "write model snapshot written at shutdown"
        ),
        Ok(Err(e)) => tracing::error!(
            error = format!("{e:#}"),
            "writing the snapshot failed: the next start replays from the previous one, or the whole stream"
        ),
        Err(e) => tracing::error!(error = %e, "writing the snapshot failed"),
    }
}

pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Writes the model (at `position`, taken from `stream`) and the schedule table to `dir`,
/// replacing the snapshot there. Returns the file's size.
pub fn write(
    dir: &Path,
    stream: StreamId,
    position: u64,
    model: &WriteModel,
    schedules: ScheduleImage,
) -> anyhow::Result<u64> {
    let jobs: Vec<&Job> = model.jobs().collect();
    let mut out = Writer::create(dir, stream, position, jobs.len(), cores())?;
    let chunks: Vec<&[&Job]> = jobs.chunks(CHUNK).collect();
    for group in chunks.chunks(cores() * 4) {
        out.chunks(group)?;
    }
    let footer = Footer {
        model: model.image(),
        schedules,
    };
    out.finish(&footer).map(|(_, size)| size)
}

/// Writes a snapshot while the instance runs: the jobs are copied a chunk at a time, each
/// under the model's lock for one chunk only, so leases and appends go on meanwhile, and
/// written before the next is copied.
///
/// Such a snapshot is not the model at one instant, and it need not be: its position is taken
/// first, and every job with an event at or before it is in the model from then on (or has
/// finished). Each job copied reflects its events up to some later sequence, which the fold
/// skips on replay (it folds only events after a job's last sequence); a job that finished
/// before it was copied is simply absent, and its later events fold into nothing. The same
/// holds for the tenant and worker state, taken after the jobs: each of its events sets a
/// value, so folding it again gives the same. The tombstones must come after the jobs
/// (`model::tests::a_snapshot_and_the_events_after_it_give_what_a_full_replay_gives` shows a
/// dependent left blocked the other way round). Returns (position, jobs, bytes).
pub fn write_live(
    dir: &Path,
    stream: StreamId,
    engine: &Engine,
) -> anyhow::Result<(u64, u64, u64)> {
    let position = *engine.position.borrow();
    let expected = engine.model().live_jobs();
    // One encoding thread: the other core keeps serving.
    let mut out = Writer::create(dir, stream, position, expected, 1)?;
    for shard in 0..crate::model::JOB_SHARDS {
        // One table's ids at a time: collecting a million at once held the lock for them all.
        let ids: Vec<_> = engine.model().jobs_in_shard(shard).map(|j| j.id).collect();
        for part in ids.chunks(LIVE_CHUNK) {
            let copies: Vec<Job> = {
                let model = engine.model();
                part.iter()
                    .filter_map(|id| model.job(id).cloned())
                    .collect()
            };
            let refs: Vec<&Job> = copies.iter().collect();
            out.chunks(&[&refs])?;
        }
    }
    // The tombstones after the jobs: a job that finished before it was copied is then known
    // to have finished, and its dependents are not held back by it.
    let footer = Footer {
        model: engine.model().image(),
        schedules: engine.schedules.image(),
    };
    let (jobs, size) = out.finish(&footer)?;
    Ok((position, jobs, size))
}

/// A snapshot being written: to a temporary file, renamed over the old one when finished.
struct Writer {
    dir: PathBuf,
    tmp: PathBuf,
    out: BufWriter<std::fs::File>,
    jobs: u64,
    /// Threads that encode: every core at shutdown, one while the instance serves.
    threads: usize,
    /// Bytes written since the last sync.
    unsynced: u64,
}

/// A running instance syncs its snapshot every this many bytes: one sync of a whole
/// 700 MB file at the end stalled NATS's own fsyncs on the same disk (an enqueue took 244 ms).
const SYNC_EVERY: u64 = 32 << 20;

impl Writer {
    fn create(
        dir: &Path,
        stream: StreamId,
        position: u64,
        jobs_hint: usize,
        threads: usize,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let header = Header {
            schema_version: SCHEMA_VERSION,
            stream,
            position,
            written_at: common::now(),
            jobs_hint: jobs_hint as u64,
        };
        let tmp = dir.join(format!("{FILE_NAME}.tmp"));
        let file =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(MAGIC)?;
        out.write_all(&FORMAT.to_le_bytes())?;
        let head = rmp_serde::to_vec_named(&header).context("encoding the header")?;
        out.write_all(&(head.len() as u64).to_le_bytes())?;
        out.write_all(&head)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            tmp,
            out,
            jobs: 0,
            threads,
            unsynced: 0,
        })
    }

    /// Encodes the chunks on every core and writes them in order.
    fn chunks(&mut self, chunks: &[&[&Job]]) -> anyhow::Result<()> {
        let encoded = parallel(chunks, self.threads, |chunk: &&[&Job]| {
            let mut buf = Vec::with_capacity(chunk.len() * 768);
            for job in chunk.iter() {
                rmp_serde::encode::write_named(&mut buf, &(job.payload_seq, job))?;
            }
            Ok::<_, rmp_serde::encode::Error>(buf)
        });
        for (buf, chunk) in encoded.into_iter().zip(chunks) {
            let buf = buf.context("encoding jobs")?;
            if buf.is_empty() {
                continue;
            }
            self.out.write_all(&(buf.len() as u64).to_le_bytes())?;
            self.out.write_all(&buf)?;
            self.jobs += chunk.len() as u64;
            self.unsynced += buf.len() as u64 + 8;
        }
        if self.threads == 1 && self.unsynced >= SYNC_EVERY {
            self.out.flush()?;
            self.out
                .get_ref()
                .sync_data()
                .context("syncing the snapshot")?;
            self.unsynced = 0;
        }
        Ok(())
    }

    /// Ends the chunks (an empty frame), writes the footer, its length, the job count and the
    /// end mark, syncs and renames. Returns (jobs, bytes).
    fn finish(mut self, footer: &Footer) -> anyhow::Result<(u64, u64)> {
        self.out.write_all(&0u64.to_le_bytes())?;
        let foot = rmp_serde::to_vec_named(footer).context("encoding the footer")?;
        self.out.write_all(&foot)?;
        self.out.write_all(&(foot.len() as u64).to_le_bytes())?;
        self.out.write_all(&self.jobs.to_le_bytes())?;
        self.out.write_all(MAGIC)?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all().context("syncing the snapshot")?;
        let size = file.metadata()?.len();
        drop(file);
        let path = path_in(&self.dir);
        std::fs::rename(&self.tmp, &path)
            .with_context(|| format!("renaming to {}", path.display()))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", self.dir.display()))?;
        Ok((self.jobs, size))
    }
}

/// Reads the snapshot in `dir` if it fits `stream`: the same stream, which still holds every
/// event after the snapshot's position. `Ok(None)`: there is none. An error says why one was
/// not used (the caller replays the whole stream).
/// Payloads beyond `payload_budget` stay out of memory (`WriteModel::set_payload_budget`).
pub fn read(
    dir: &Path,
    stream: StreamState,
    now: DateTime<Utc>,
    payload_budget: usize,
) -> anyhow::Result<Option<Restored>> {
    let path = path_in(dir);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic).context("reading the magic")?;
    ensure!(&magic == MAGIC, "not a write-model snapshot");
    let format = u32::from_le_bytes(read_array(&mut input)?);
    ensure!(
        format == FORMAT,
        "format {format}, this build reads {FORMAT}"
    );
    let header: Header = rmp_serde::from_slice(&read_frame(&mut input, MAX_HEADER)?)
        .context("decoding the header")?;
    check(&header, stream)?;
    // The footer first: the tombstones go in before the jobs are placed.
    let chunks_at = input.stream_position()?;
    let end = input.seek(SeekFrom::End(-24)).context("the file is torn")?;
    let foot_len = u64::from_le_bytes(read_array(&mut input)?);
    let written = u64::from_le_bytes(read_array(&mut input)?);
    let mut end_mark = [0u8; 8];
    input.read_exact(&mut end_mark)?;
    ensure!(&end_mark == MAGIC, "no end mark: the file is torn");
    ensure!(
        foot_len <= end.saturating_sub(chunks_at),
        "a footer of {foot_len} bytes: the file is torn"
    );
    let foot_at = end - foot_len;
    input.seek(SeekFrom::Start(foot_at))?;
    let footer: Footer = rmp_serde::from_slice(&read_exact_vec(&mut input, foot_len)?)
        .context("decoding the footer")?;
    input.seek(SeekFrom::Start(chunks_at))?;
    // One thread reads the chunks in order, every core decodes them, and this thread places
    // the jobs as they come.
    let cores = cores();
    let (raw_tx, raw_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(cores * 2);
    // Shared by the decoders alone: when the last one stops, the reader's sends fail.
    let raw_rx = Arc::new(Mutex::new(raw_rx));
    let (jobs_tx, jobs_rx) = std::sync::mpsc::sync_channel::<anyhow::Result<Vec<Job>>>(cores * 2);
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || -> anyhow::Result<()> {
            loop {
                let chunk = read_frame(&mut input, foot_at)?;
                if chunk.is_empty() {
                    break;
                }
                if raw_tx.send(chunk).is_err() {
                    return Ok(());
                }
            }
            ensure!(
                input.stream_position()? == foot_at,
                "the jobs do not end where the footer begins: the file is torn"
            );
            Ok(())
        });
        for _ in 0..cores {
            let (raw_rx, jobs_tx) = (raw_rx.clone(), jobs_tx.clone());
            scope.spawn(move || loop {
                let next = raw_rx.lock().expect("never poisoned").recv();
                let Ok(chunk) = next else { return };
                if jobs_tx.send(decode_chunk(&chunk)).is_err() {
                    return;
                }
            });
        }
        drop((jobs_tx, raw_rx));
        let mut count = 0usize;
        let mut failed = None;
        let jobs = jobs_rx.iter().map_while(|r| match r {
            Ok(jobs) => Some(jobs),
            Err(e) => {
                failed = Some(e);
                None
            }
        });
        let jobs = jobs.flatten().inspect(|_| count += 1);
        let model = WriteModel::restore(
            footer.model,
            header.jobs_hint as usize,
            jobs,
            now,
            payload_budget,
        );
        // If the jobs stopped early, this ends the decoders, and with them the reader.
        drop(jobs_rx);
        let read = reader.join().expect("the snapshot reader does not panic");
        if let Some(e) = failed {
            return Err(e);
        }
        read?;
        ensure!(
            count as u64 == written,
            "{count} jobs read of {written}: the file is torn"
        );
        Ok(Some(Restored {
            position: header.position,
            model,
            schedules: footer.schedules,
            jobs: count,
            written_at: header.written_at,
        }))
    })
}

/// Whether a snapshot with `header` may stand for the first `position` events of `stream`.
fn check(header: &Header, stream: StreamState) -> anyhow::Result<()> {
    ensure!(
        header.schema_version == SCHEMA_VERSION,
        "written for event schema {}, this build is {SCHEMA_VERSION}",
        header.schema_version
    );
    ensure!(
        header.stream == stream.id,
        "taken from another stream of the same name (created at {} ns, this one at {} ns)",
        header.stream.created_unix_nanos,
        stream.id.created_unix_nanos
    );
    if header.position > stream.last_seq {
        bail!(
            "taken at sequence {}, beyond the stream's last ({})",
            header.position,
            stream.last_seq
        );
    }
    if stream.first_seq > header.position + 1 {
        bail!(
            "the stream no longer holds the events after sequence {} (its first is {})",
            header.position,
            stream.first_seq
        );
    }
    Ok(())
}

fn decode_chunk(mut bytes: &[u8]) -> anyhow::Result<Vec<Job>> {
    let mut jobs = Vec::with_capacity(CHUNK);
    while !bytes.is_empty() {
        let (payload_seq, mut job): (u64, Job) =
            rmp_serde::from_read(&mut bytes).context("decoding a job")?;
        job.payload_seq = payload_seq;
        // A payload that was out of memory (a payload itself is never `null`).
        if payload_seq != 0 && job.payload.as_str() == "null" {
            job.payload = crate::payloads::dropped();
        }
        jobs.push(job);
    }
    Ok(jobs)
}

fn read_array<const N: usize>(input: &mut impl Read) -> anyhow::Result<[u8; N]> {
    let mut buf = [0u8; N];
    input.read_exact(&mut buf).context("the file is torn")?;
    Ok(buf)
}

/// A length (u64 LE) and that many bytes.
fn read_frame(input: &mut impl Read, max: u64) -> anyhow::Result<Vec<u8>> {
    let len = u64::from_le_bytes(read_array(input)?);
    ensure!(len <= max, "a frame of {len} bytes: not one of ours");
    read_exact_vec(input, len)
}

/// Exactly `len` bytes.
fn read_exact_vec(input: &mut impl Read, len: u64) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let read = input
        .take(len)
        .read_to_end(&mut buf)
        .context("reading the file")?;
    ensure!(read as u64 == len, "the file is torn");
    Ok(buf)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// `f` over `items` on up to `threads` threads; results in the items' order.
fn parallel<T: Sync, R: Send>(items: &[T], threads: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let per = items.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(per)
            .map(|part| scope.spawn(|| part.iter().map(&f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("an encoder does not panic"))
            .collect()
    })
}

#[cfg(test)]
mod tests;
