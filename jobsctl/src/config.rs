//! Where the HTTP commands find the service and the token: a flag, else its environment
//! variable, else the config file (`$JOBS_CONFIG`, else `$XDG_CONFIG_HOME/jobs/config.toml`, else
//! `~/.config/jobs/config.toml`), else the default URL. The flags and variables are parsed by clap
//! ([`ApiArgs`]); this module reads and writes the file, which holds secrets and so is only ever
//! written with mode 0600.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The gateway `deploy/up` starts.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8000";

/// Options every command that talks to the HTTP API takes.
#[derive(clap::Args, Clone, Debug)]
pub struct ApiArgs {
    /// Base URL of the Jobs Service gateway [default: `url` in the config file, else
    /// http://127.0.0.1:8000].
    #[arg(long, env = "JOBS_URL")]
    pub url: Option<String>,
    /// Bearer token [default: `token` in the config file, written by `jobsctl login`].
    #[arg(long, env = "JOBS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Machine output: the API's JSON as it came (NDJSON when there are several documents).
    #[arg(long)]
    pub json: bool,
}

/// The keys of the config file this CLI uses; other keys are kept as they are.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FileConfig {
    pub url: Option<String>,
    pub token: Option<String>,
    pub refresh_token: Option<String>,
}

/// Where a setting came from (a refresh only ever replaces a token the file holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `--token`/`--url` or `JOBS_TOKEN`/`JOBS_URL`.
    Given,
    File,
    Default,
}

/// What a command runs with, after precedence.
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: String,
    pub token: Option<String>,
    pub token_source: Source,
    pub refresh_token: Option<String>,
    pub path: PathBuf,
    pub json: bool,
}

/// The config file's path.
pub fn path() -> anyhow::Result<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(p) = var("JOBS_CONFIG") {
        return Ok(PathBuf::from(p));
    }
    if let Some(x) = var("XDG_CONFIG_HOME") {
        return Ok(PathBuf::from(x).join("jobs/config.toml"));
    }
    let home = var("HOME").context("HOME is not set: set JOBS_CONFIG to the config file's path")?;
    Ok(PathBuf::from(home).join(".config/jobs/config.toml"))
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// The file's table (empty when there is no file).
fn read_table(path: &Path) -> anyhow::Result<toml::Table> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .parse::<toml::Table>()
            .with_context(|| format!("the config file {} is not valid TOML", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(toml::Table::new()),
        Err(e) => Err(e).with_context(|| format!("reading the config file {}", path.display())),
    }
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let table = read_table(path)?;
        let get = |k: &str| -> anyhow::Result<Option<String>> {
            match table.get(k) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(non_empty(Some(s.clone()))),
                Some(_) => anyhow::bail!("{k} in {} must be a string", path.display()),
            }
        };
        Ok(Self {
            url: get("url")?,
            token: get("token")?,
            refresh_token: get("refresh_token")?,
        })
    }

    /// Writes these keys into the file (creating it and its folder), keeping any other keys;
    /// the file is replaced atomically and is readable by its owner only.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut table = read_table(path)?;
        for (k, v) in [
            ("url", &self.url),
            ("token", &self.token),
            ("refresh_token", &self.refresh_token),
        ] {
            match v {
                Some(v) => table.insert(k.to_string(), toml::Value::String(v.clone())),
                None => table.remove(k),
            };
        }
        let text = toml::to_string(&table).context("writing the config as TOML")?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir)?;
        }
        let tmp = path.with_extension("toml.tmp");
        write_private(&tmp, text.as_bytes())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
        Ok(())
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let mut f = options.open(path)?;
        // An existing file keeps its mode on open: make sure of it.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)?;
        f.sync_all()
    }
    #[cfg(not(unix))]
    {
        let mut f = options.open(path)?;
        f.write_all(bytes)?;
        f.sync_all()
    }
}

/// Flag or variable over the file, the file over the default.
pub fn resolve(args: &ApiArgs, file: FileConfig, path: PathBuf) -> Settings {
    let (url, _) = match (non_empty(args.url.clone()), file.url) {
        (Some(u), _) => (u, Source::Given),
        (None, Some(u)) => (u, Source::File),
        (None, None) => (DEFAULT_URL.to_string(), Source::Default),
    };
    let (token, token_source) = match (non_empty(args.token.clone()), file.token) {
        (Some(t), _) => (Some(t), Source::Given),
        (None, Some(t)) => (Some(t), Source::File),
        (None, None) => (None, Source::Default),
    };
    Settings {
        url: url.trim_end_matches('/').to_string(),
        token,
        token_source,
        refresh_token: file.refresh_token,
        path,
        json: args.json,
    }
}

/// The settings for `args`: reads the config file.
pub fn settings(args: &ApiArgs) -> anyhow::Result<Settings> {
    let path = path()?;
    let file = FileConfig::load(&path)?;
    Ok(resolve(args, file, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(url: Option<&str>, token: Option<&str>) -> ApiArgs {
        ApiArgs {
            url: url.map(String::from),
            token: token.map(String::from),
            json: false,
        }
    }

    fn file(url: &str, token: &str) -> FileConfig {
        FileConfig {
            url: Some(url.into()),
            token: Some(token.into()),
            refresh_token: Some("r".into()),
        }
    }

    #[test]
    fn a_flag_or_variable_beats_the_file_and_the_file_beats_the_default() {
        let p = PathBuf::from("c.toml");
        let s = resolve(
            &args(Some("http://flag/"), Some("ft")),
            file("http://file", "t"),
            p.clone(),
        );
        assert_eq!(
            (s.url.as_str(), s.token.as_deref()),
            ("http://flag", Some("ft"))
        );
        assert_eq!(s.token_source, Source::Given);
        let s = resolve(&args(None, None), file("http://file", "t"), p.clone());
        assert_eq!(
            (s.url.as_str(), s.token.as_deref()),
            ("http://file", Some("t"))
        );
        assert_eq!(s.token_source, Source::File);
        let s = resolve(&args(Some(" "), None), FileConfig::default(), p);
        assert_eq!((s.url.as_str(), s.token), (DEFAULT_URL, None));
    }

    #[test]
    fn saving_keeps_other_keys_and_leaves_the_file_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.toml");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "colour = \"blue\"\ntoken = \"old\"\n").unwrap();
        let c = FileConfig {
            url: Some("http://x".into()),
            token: Some("new".into()),
            refresh_token: None,
        };
        c.save(&path).unwrap();
        assert_eq!(FileConfig::load(&path).unwrap(), c);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("colour = \"blue\""), "{text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_missing_file_is_empty_and_a_broken_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.toml");
        assert_eq!(FileConfig::load(&path).unwrap(), FileConfig::default());
        std::fs::write(&path, "url = [").unwrap();
        let e = FileConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("none.toml"), "{e}");
    }
}
