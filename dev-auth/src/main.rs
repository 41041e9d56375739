use clap::Parser;
use dev_auth::{Application, Config};

#[tokio::main]
async fn main() {
    let config = Config::parse();
    let _telemetry = config.log.init("jobs-dev-auth");
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("jobs-dev-auth: {e:#}");
            std::process::exit(1);
        }
    };
    if let Err(e) = app
        .run_until_stopped(common::server::shutdown_signal())
        .await
    {
        eprintln!("jobs-dev-auth: {e:#}");
        std::process::exit(1);
    }
}
