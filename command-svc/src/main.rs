/// jemalloc instead of glibc's malloc, which under load was a fifth of command-svc's CPU, and
/// instead of mimalloc, which the other services use: with a million pending jobs in the write
/// model, jemalloc holds each job's slot in its size class where mimalloc's resident set grew
/// as for the next one (docs/performance.md, "Memory per pending job").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use clap::Parser;
use command_svc::{Application, Config};

#[tokio::main]
async fn main() {
    let config = Config::parse();
    let _telemetry = config.log.init("command-svc");
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("command-svc: {e:#}");
            std::process::exit(1);
        }
    };
    if let Err(e) = app
        .run_until_stopped(common::server::shutdown_signal())
        .await
    {
        eprintln!("command-svc: {e:#}");
        std::process::exit(1);
    }
}
