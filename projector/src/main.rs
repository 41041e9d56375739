/// mimalloc instead of glibc's malloc: under load glibc's allocator was a fifth of
/// command-svc's CPU (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use projector::{Application, Config};

#[tokio::main]
async fn main() {
    let config = Config::parse();
    let _telemetry = config.log.init("projector");
    if let Some(projector::config::Subcommand::Rebuild) = config.command {
        match rebuild(&config).await {
            Ok(r) => {
                println!(
                    "rebuilt the read model: {} events in {:.2} s ({:.0} events/s) up to the swap, checkpoint {}, old tables dropped {:.2} s after it, {} jobs read back",
                    r.events,
                    r.seconds,
                    r.events as f64 / r.seconds.max(1e-9),
                    r.checkpoint,
                    r.drop_seconds,
                    r.read_back
                );
                return;
            }
            Err(e) => {
                eprintln!("projector rebuild: {e:#}");
                std::process::exit(1);
            }
        }
    }
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("projector: {e:#}");
            std::process::exit(1);
        }
    };
    if let Err(e) = app
        .run_until_stopped(common::server::shutdown_signal())
        .await
    {
        eprintln!("projector: {e:#}");
        std::process::exit(1);
    }
}

async fn rebuild(config: &Config) -> anyhow::Result<projector::rebuild::Report> {
    let wait = std::time::Duration::from_secs(config.nats.nats_connect_wait_seconds);
    let client = common::nats::connect_with_ca(
        &config.nats.nats_url,
        config.nats.nats_ca.as_deref(),
        "projector-rebuild",
        wait,
    )
    .await?;
    let js = common::nats::jetstream(&client);
    let tuning = projector::rebuild::Tuning::new(config.rebuild_batch, config.rebuild_cache_jobs);
    projector::rebuild::rebuild(&config.database_url, &js, tuning).await
}
