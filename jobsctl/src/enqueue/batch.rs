//! `jobsctl enqueue --file`: an NDJSON file of enqueue requests, checked line by line and sent
//! in batches; every line ends with an outcome reported by its number (see the parent module).

use std::collections::{BTreeMap, VecDeque};
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use events::validate::EnqueueRequest;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::api::{field_errors, Api, Call, Failure};

/// Batches stay well under the service's 16 MiB body limit.
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Tries of one batch while the service answers "not now" (rate, quota, unavailable).
const MAX_TRIES: u32 = 8;

/// A line of the file that is to be sent.
#[derive(Debug, Clone)]
struct Line {
    no: usize,
    value: Value,
    bytes: usize,
}

/// What became of one line.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Enqueued(Value),
    Failed {
        code: String,
        message: String,
        details: Value,
        /// The words for people.
        plain: String,
        sent: bool,
    },
}

impl Outcome {
    fn local(code: &str, message: String, details: Value) -> Self {
        Outcome::Failed {
            code: code.into(),
            plain: format!("{message} ({code}; not sent)"),
            message,
            details,
            sent: false,
        }
    }

    fn from_failure(f: &Failure, sent: bool) -> Self {
        // A refused connection carried nothing.
        let sent = sent && !matches!(f, Failure::Unreachable { .. } | Failure::BadUrl { .. });
        let plain = if sent {
            f.to_string()
        } else {
            format!("not sent: {f}")
        };
        match f.api() {
            Some(e) => Outcome::Failed {
                code: e.code.clone(),
                message: e.message.clone(),
                details: e.details.clone(),
                plain,
                sent,
            },
            None => Outcome::Failed {
                code: "UNREACHABLE".into(),
                message: f.to_string(),
                details: Value::Null,
                plain,
                sent,
            },
        }
    }

    /// The line's NDJSON record: the envelope's shape, plus its line number.
    fn record(&self, no: usize) -> Value {
        match self {
            Outcome::Enqueued(job) => json!({ "line": no, "data": job, "error": null }),
            Outcome::Failed {
                code,
                message,
                details,
                sent,
                ..
            } => {
                let mut error = json!({ "code": code, "message": message });
                if !details.is_null() {
                    error["details"] = details.clone();
                }
                json!({ "line": no, "data": null, "error": error, "sent": sent })
            }
        }
    }
}

/// Parses and checks every line: what to send, and the outcome of the lines that cannot be.
fn parse(text: &str, now: DateTime<Utc>) -> (Vec<Line>, BTreeMap<usize, Outcome>) {
    let mut send = Vec::new();
    let mut failed = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let no = i + 1;
        let raw = raw.trim();
        if raw.is_empty() {
            continue;
        }
        let value: Value = match serde_json::from_str(raw) {
            Ok(v) => v,
            Err(e) => {
                failed.insert(
                    no,
                    Outcome::local("INVALID_JSON", format!("not JSON: {e}"), Value::Null),
                );
                continue;
            }
        };
        let req: EnqueueRequest = match serde_json::from_value(value.clone()) {
            Ok(r) => r,
            Err(e) => {
                failed.insert(
                    no,
                    Outcome::local(
                        "VALIDATION_FAILED",
                        format!("not an enqueue request: {e}"),
                        Value::Null,
                    ),
                );
                continue;
            }
        };
        if let Err(fields) = req.validate(now, "") {
            let details = json!({ "fields": fields });
            let message = field_errors(&details).unwrap_or_default();
            failed.insert(no, Outcome::local("VALIDATION_FAILED", message, details));
            continue;
        }
        send.push(Line {
            no,
            bytes: raw.len(),
            value,
        });
    }
    (send, failed)
}

/// Cuts the lines into batches of at most `size` jobs and [`MAX_BATCH_BYTES`].
fn batches(lines: Vec<Line>, size: usize) -> VecDeque<Vec<Line>> {
    let mut out = VecDeque::new();
    let mut cur: Vec<Line> = Vec::new();
    let mut bytes = 0;
    for l in lines {
        if !cur.is_empty() && (cur.len() >= size || bytes + l.bytes > MAX_BATCH_BYTES) {
            out.push_back(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += l.bytes + 1;
        cur.push(l);
    }
    if !cur.is_empty() {
        out.push_back(cur);
    }
    out
}

/// The batch indexes a VALIDATION_FAILED answer names (`jobs[3].payload`), with their messages.
fn named_lines(details: &Value) -> BTreeMap<usize, Vec<String>> {
    let mut out: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for f in details["fields"].as_array().into_iter().flatten() {
        let field = f["field"].as_str().unwrap_or_default();
        let Some(rest) = field.strip_prefix("jobs[") else {
            continue;
        };
        let Some((index, name)) = rest.split_once(']') else {
            continue;
        };
        let Ok(index) = index.parse::<usize>() else {
            continue;
        };
        let name = name.trim_start_matches('.');
        let message = f["message"].as_str().unwrap_or("is invalid");
        out.entry(index)
            .or_default()
            .push(format!("{name} {message}").trim().to_string());
    }
    out
}

fn read_input(path: &PathBuf) -> anyhow::Result<String> {
    use anyhow::Context;
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the jobs from stdin")?;
        return Ok(s);
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn progress(total: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} lines {per_sec} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

pub async fn file(
    api: &Api,
    path: &PathBuf,
    batch_size: usize,
    key: Option<String>,
) -> anyhow::Result<()> {
    let input = read_input(path)?;
    let (send, mut outcomes) = parse(&input, Utc::now());
    let total = send.len() + outcomes.len();
    let bar = progress(total as u64);
    bar.inc(outcomes.len() as u64);
    let key_base = key.unwrap_or_else(|| Uuid::new_v4().to_string());
    let mut queue = batches(send, batch_size);
    let mut sent_batches = 0usize;
    let mut last_seq = None;
    while let Some(batch) = queue.pop_front() {
        sent_batches += 1;
        let call = Call::post(
            "/jobs/v1/enqueue/batch",
            json!({ "jobs": batch.iter().map(|l| &l.value).collect::<Vec<_>>() }),
        )
        .header(
            "idempotency-key",
            Some(format!("{key_base}:{sent_batches}")),
        );
        match send_batch(api, &call).await {
            Ok(reply) => {
                last_seq = reply.event_seq.max(last_seq);
                let jobs = reply.data()["jobs"].as_array().cloned().unwrap_or_default();
                for (l, job) in batch.iter().zip(jobs) {
                    outcomes.insert(l.no, Outcome::Enqueued(job));
                }
                bar.inc(batch.len() as u64);
            }
            Err(f) => {
                let named = f
                    .api()
                    .filter(|e| e.code == "VALIDATION_FAILED")
                    .map(|e| named_lines(&e.details))
                    .unwrap_or_default();
                let content = f.api().is_some_and(|e| matches!(e.status, 400 | 413 | 422));
                if !named.is_empty() {
                    // The batch was refused for these lines: they fail, the others go again.
                    let mut rest = Vec::new();
                    for (i, l) in batch.into_iter().enumerate() {
                        match named.get(&i) {
                            Some(msgs) => {
                                let message = msgs.join("; ");
                                outcomes.insert(
                                    l.no,
                                    Outcome::Failed {
                                        code: "VALIDATION_FAILED".into(),
                                        plain: format!(
                                            "the request is invalid: {message} (VALIDATION_FAILED)"
                                        ),
                                        message,
                                        details: Value::Null,
                                        sent: true,
                                    },
                                );
                                bar.inc(1);
                            }
                            None => rest.push(l),
                        }
                    }
                    if !rest.is_empty() {
                        queue.push_front(rest);
                    }
                } else if content && batch.len() > 1 && f.api().is_some_and(|e| e.status != 422) {
                    // Refused for a line it does not name: halve until it is alone.
                    let mut first = batch;
                    let second = first.split_off(first.len() / 2);
                    queue.push_front(second);
                    queue.push_front(first);
                } else {
                    for l in &batch {
                        outcomes.insert(l.no, Outcome::from_failure(&f, true));
                    }
                    bar.inc(batch.len() as u64);
                    if !content {
                        // Not about these lines (unreachable, refused token, over quota for
                        // good): the batches after it would fare the same.
                        for l in queue.drain(..).flatten() {
                            outcomes.insert(l.no, Outcome::from_failure(&f, false));
                            bar.inc(1);
                        }
                    }
                }
            }
        }
    }
    bar.finish_and_clear();
    report(api.json(), &outcomes, last_seq)
}

/// Sends one batch, again while the service says "not now".
async fn send_batch(api: &Api, call: &Call) -> Result<crate::api::Reply, Failure> {
    let mut wait = Duration::from_millis(500);
    let mut tries = 0;
    loop {
        tries += 1;
        match api.send(call).await {
            Err(f) if f.is_transient() && tries < MAX_TRIES => {
                tokio::time::sleep(f.retry_after(wait).min(Duration::from_secs(30))).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
            other => return other,
        }
    }
}

/// The failures, lines with the same words together: `("lines 3-5, 9", words)`, in the order
/// of their first line.
fn grouped(outcomes: &BTreeMap<usize, Outcome>) -> Vec<(String, String)> {
    let mut groups: Vec<(String, Vec<(usize, usize)>)> = Vec::new();
    for (no, o) in outcomes {
        let Outcome::Failed { plain, .. } = o else {
            continue;
        };
        let ranges = match groups.iter_mut().find(|(p, _)| p == plain) {
            Some((_, r)) => r,
            None => {
                groups.push((plain.clone(), Vec::new()));
                &mut groups.last_mut().expect("just pushed").1
            }
        };
        // Lines in between that succeeded (or were blank) still break a range.
        match ranges.last_mut() {
            Some((_, end)) if outcomes.range(*end + 1..*no).next().is_none() => *end = *no,
            _ => ranges.push((*no, *no)),
        }
    }
    groups
        .into_iter()
        .map(|(plain, ranges)| {
            let single = ranges.len() == 1 && ranges[0].0 == ranges[0].1;
            let list: Vec<String> = ranges
                .iter()
                .map(|(a, b)| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}-{b}")
                    }
                })
                .collect();
            let noun = if single { "line" } else { "lines" };
            (format!("{noun} {}", list.join(", ")), plain)
        })
        .collect()
}

fn report(
    json_out: bool,
    outcomes: &BTreeMap<usize, Outcome>,
    last_seq: Option<u64>,
) -> anyhow::Result<()> {
    let failed = outcomes
        .values()
        .filter(|o| matches!(o, Outcome::Failed { .. }))
        .count();
    let total = outcomes.len();
    if json_out {
        for (no, o) in outcomes {
            crate::output::print_ndjson(&o.record(*no));
        }
    } else {
        for (lines, plain) in grouped(outcomes) {
            println!("{lines}: {plain}");
        }
        let seq = last_seq
            .map(|s| format!(" (last event seq {s})"))
            .unwrap_or_default();
        println!(
            "{} of {total} jobs enqueued, {failed} failed{seq}",
            total - failed
        );
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {total} lines were not enqueued");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_that_do_not_parse_or_validate_are_not_sent() {
        let text = "{\"type\":\"a\",\"payload\":{}}\n\nnot json\n{\"type\":\"a\",\"payload\":{},\"colour\":1}\n{\"type\":\"a b\",\"payload\":{}}\n{\"type\":\"b\",\"payload\":1}\n";
        let (send, failed) = parse(text, Utc::now());
        assert_eq!(send.iter().map(|l| l.no).collect::<Vec<_>>(), vec![1, 6]);
        assert_eq!(failed.keys().copied().collect::<Vec<_>>(), vec![3, 4, 5]);
        let Outcome::Failed { code, plain, .. } = &failed[&3] else {
            panic!()
        };
        assert_eq!(code, "INVALID_JSON");
        assert!(plain.ends_with("(INVALID_JSON; not sent)"), "{plain}");
        let Outcome::Failed { code, message, .. } = &failed[&5] else {
            panic!()
        };
        assert_eq!(code, "VALIDATION_FAILED");
        assert!(message.starts_with("type "), "{message}");
    }

    #[test]
    fn lines_failing_alike_are_reported_together() {
        let fail = |p: &str| Outcome::Failed {
            code: "X".into(),
            message: String::new(),
            details: Value::Null,
            plain: p.into(),
            sent: false,
        };
        let outcomes: BTreeMap<usize, Outcome> = [
            (1, Outcome::Enqueued(json!({}))),
            (2, fail("bad")),
            (3, fail("down")),
            (4, fail("down")),
            (5, Outcome::Enqueued(json!({}))),
            (6, fail("down")),
            (8, fail("down")),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            grouped(&outcomes),
            vec![
                ("line 2".to_string(), "bad".to_string()),
                ("lines 3-4, 6-8".to_string(), "down".to_string()),
            ]
        );
    }

    #[test]
    fn batches_hold_at_most_the_size() {
        let lines: Vec<Line> = (1..=250)
            .map(|no| Line {
                no,
                value: json!({}),
                bytes: 2,
            })
            .collect();
        let b = batches(lines, 100);
        assert_eq!(
            b.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![100, 100, 50]
        );
    }

    #[test]
    fn a_refusal_names_lines_by_their_index_in_the_batch() {
        let details = json!({"fields": [
            {"field": "jobs[3].payload", "message": "too large"},
            {"field": "jobs[3].priority", "message": "must be 0 to 10"},
            {"field": "jobs", "message": "whatever"},
        ]});
        let named = named_lines(&details);
        assert_eq!(named.len(), 1);
        assert_eq!(
            named[&3],
            vec!["payload too large", "priority must be 0 to 10"]
        );
    }
}
