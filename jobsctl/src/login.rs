//! `jobsctl login`: signs in at the service's login endpoint (`POST /auth/v1/login`, the dev
//! login of the seed: `{"email", "password"}` answered with `{"data": {"accessToken",
//! "refreshToken", "expiresIn"}}`) and stores the URL and both tokens in the config file (mode
//! 0600), where every other command finds them. When a call later answers 401, the client
//! renews the session with the stored refresh token once (see `api`).

use std::io::{BufRead, IsTerminal};

use anyhow::Context;
use serde_json::json;

use crate::api::Api;
use crate::config::{ApiArgs, FileConfig};

#[derive(clap::Args)]
pub struct LoginArgs {
    /// The account's e-mail address.
    #[arg(long)]
    email: String,
    /// The password [default: asked for on the terminal, or read as one line from stdin].
    #[arg(long, env = "JOBS_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// The password from the terminal without echo, or the first line of stdin when it is not one.
fn read_password() -> anyhow::Result<String> {
    let password = if std::io::stdin().is_terminal() {
        rpassword::prompt_password("password: ").context("reading the password")?
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    if password.is_empty() {
        anyhow::bail!("no password: pass --password, or type it when asked");
    }
    Ok(password)
}

pub async fn run(api: &Api, a: LoginArgs) -> anyhow::Result<()> {
    let password = match a.password {
        Some(p) => p,
        None => read_password()?,
    };
    let tokens = api.login(&a.email, &password).await.map_err(|f| {
        match f.api() {
            Some(e) if e.status == 404 || e.status == 405 => anyhow::anyhow!(
                "{} has no login endpoint (POST /auth/v1/login): is the dev login service running behind the gateway? Or pass --token",
                api.url()
            ),
            Some(e) if e.status == 401 || e.status == 403 => {
                anyhow::anyhow!("the e-mail or the password is wrong ({})", e.code)
            }
            _ => anyhow::Error::new(f),
        }
    })?;
    let path = &api.settings.path;
    let mut file = FileConfig::load(path)?;
    file.url = Some(api.url().to_string());
    file.token = Some(tokens.access);
    file.refresh_token = tokens.refresh;
    file.save(path)?;
    if api.json() {
        // Not the login answer: the tokens stay in the file.
        let out = json!({
            "data": { "email": a.email, "url": api.url(), "config": path, "expiresIn": tokens.expires_in },
            "error": null,
        });
        println!("{out}");
    } else {
        let expiry = tokens
            .expires_in
            .map(|s| format!("; the token expires in {s} s"))
            .unwrap_or_default();
        println!(
            "logged in to {} as {}; tokens saved in {}{expiry}",
            api.url(),
            a.email,
            path.display()
        );
    }
    Ok(())
}
