/// mimalloc instead of glibc's malloc: under load glibc's allocator was a fifth of
/// command-svc's CPU (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
