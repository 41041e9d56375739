/// mimalloc instead of glibc's malloc: under load glibc's allocator was a fifth of
/// command-svc's CPU (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use query_svc::{Application, Config};

#[tokio::main]
async fn main() {
    // `query-svc openapi`: print the service's OpenAPI document (docs/openapi.json) and exit.
    if std::env::args().nth(1).as_deref() == Some("openapi") {
        println!(
            "{}",
            common::openapi::to_json(&query_svc::routes::docs::document())
        );
        return;
    }
    let config = Config::parse();
    let _telemetry = config.log.init("query-svc");
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("query-svc: {e:#}");
            std::process::exit(1);
        }
    };
    if let Err(e) = app
        .run_until_stopped(common::server::shutdown_signal())
        .await
    {
        eprintln!("query-svc: {e:#}");
        std::process::exit(1);
    }
}
