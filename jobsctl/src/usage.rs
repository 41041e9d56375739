//! `jobsctl metrics` and `jobsctl quota`: the caller's tenant at a glance — jobs by status and
//! type, throughput and latency over a window; the plan's limits and how much of them is used.

use serde_json::Value;

use crate::api::{Api, Call};
use crate::config::ApiArgs;
use crate::jobs::Fresh;
use crate::output::{fields, numeric, print_raw, print_table, table, text};

const STATUSES: [&str; 6] = [
    "scheduled",
    "pending",
    "leased",
    "completed",
    "dead_lettered",
    "cancelled",
];

#[derive(clap::Args)]
pub struct MetricsArgs {
    /// The window for throughput and latency, in seconds.
    #[arg(long, default_value = "300", value_parser = ["60", "300", "3600"])]
    window: String,
    #[command(flatten)]
    fresh: Fresh,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(clap::Args)]
pub struct QuotaArgs {
    #[command(flatten)]
    fresh: Fresh,
    #[command(flatten)]
    pub api: ApiArgs,
}

fn counts_row(label: String, counts: &Value) -> Vec<String> {
    let mut row = vec![label];
    row.extend(STATUSES.iter().map(|s| text(&counts[*s])));
    row
}

pub async fn metrics(api: &Api, a: MetricsArgs) -> anyhow::Result<()> {
    let call = Call::get("/jobs/v1/metrics")
        .query("window", Some(a.window))
        .header("x-min-event-seq", a.fresh.min_event_seq);
    let reply = api.send(&call).await?;
    if api.json() {
        print_raw(&reply.text);
        return Ok(());
    }
    let d = reply.data();
    let mut header = vec!["type"];
    header.extend(STATUSES);
    let mut t = table(&header);
    t.add_row(counts_row("(all)".into(), &d["counts"]));
    for by in d["by_type"].as_array().into_iter().flatten() {
        t.add_row(counts_row(text(&by["type"]), &by["counts"]));
    }
    numeric(&mut t, &[1, 2, 3, 4, 5, 6]);
    print_table(&t);
    let tp = &d["throughput"];
    println!(
        "\nlast {} s: {} enqueued, {} completed, {} failed, {} dead-lettered",
        text(&tp["window_seconds"]),
        text(&tp["enqueued"]),
        text(&tp["completed"]),
        text(&tp["failed"]),
        text(&tp["dead_lettered"]),
    );
    let l = &d["latency_ms"];
    let mut t = table(&["latency (ms)", "p50", "p95", "p99"]);
    for kind in ["wait", "run"] {
        t.add_row(vec![
            kind.to_string(),
            text(&l[format!("{kind}_p50")]),
            text(&l[format!("{kind}_p95")]),
            text(&l[format!("{kind}_p99")]),
        ]);
    }
    numeric(&mut t, &[1, 2, 3]);
    println!();
    print_table(&t);
    Ok(())
}

pub async fn quota(api: &Api, a: QuotaArgs) -> anyhow::Result<()> {
    let call = Call::get("/jobs/v1/quota").header("x-min-event-seq", a.fresh.min_event_seq);
    let reply = api.send(&call).await?;
    if api.json() {
        print_raw(&reply.text);
        return Ok(());
    }
    let d = reply.data();
    let (l, u) = (&d["limits"], &d["usage"]);
    let overridden = if d["overridden"] == Value::Bool(true) {
        " (with an override for this tenant)"
    } else {
        ""
    };
    println!("plan: {}{overridden}", text(&d["plan_tier"]));
    print_table(&fields(&[
        (
            "active jobs",
            format!(
                "{} of {}",
                text(&u["active_jobs"]),
                text(&l["max_active_jobs"])
            ),
        ),
        (
            "leased jobs",
            format!(
                "{} of {}",
                text(&u["leased_jobs"]),
                text(&l["max_concurrent_leases"])
            ),
        ),
        (
            "enqueue rate",
            format!(
                "{}/s (bursts of {})",
                text(&l["enqueue_per_second"]),
                text(&l["enqueue_burst"])
            ),
        ),
        (
            "largest payload",
            format!("{} bytes", text(&l["max_payload_bytes"])),
        ),
    ]));
    Ok(())
}
