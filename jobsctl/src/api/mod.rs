//! The HTTP client of the management commands. It sends the token, turns the API's error
//! envelope (`{"error": {"code", "message", "details"}}`) and transport failures into one line in
//! plain words, and, when a call answers 401 and the config file holds a refresh token, renews
//! the session once (`POST /auth/v1/refresh`), saves the new tokens and sends the call again.

use std::sync::Mutex;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::config::{FileConfig, Settings, Source};

mod error;

pub use error::{field_errors, ApiError, Failure};

/// One request: what, where, and what it is about (for the error message).
#[derive(Debug, Clone)]
pub struct Call {
    method: Method,
    path: String,
    query: Vec<(&'static str, String)>,
    headers: Vec<(&'static str, String)>,
    body: Option<Value>,
    about: About,
}

/// What a call acts on, so an error can say "cannot cancel job X: it is completed".
#[derive(Debug, Clone, Default)]
pub struct About {
    pub action: String,
    pub subject: String,
}

impl Call {
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        Self {
            method,
            path: path.into(),
            query: Vec::new(),
            headers: Vec::new(),
            body: None,
            about: About::default(),
        }
    }

    pub fn get(path: impl Into<String>) -> Self {
        Self::new(Method::GET, path)
    }

    pub fn post(path: impl Into<String>, body: Value) -> Self {
        Self::new(Method::POST, path).body(body)
    }

    pub fn body(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }

    /// Adds a query parameter when it has a value.
    pub fn query(mut self, key: &'static str, value: Option<impl ToString>) -> Self {
        if let Some(v) = value {
            self.query.push((key, v.to_string()));
        }
        self
    }

    pub fn header(mut self, key: &'static str, value: Option<impl ToString>) -> Self {
        if let Some(v) = value {
            self.headers.push((key, v.to_string()));
        }
        self
    }

    pub fn about(mut self, action: &str, subject: impl Into<String>) -> Self {
        self.about = About {
            action: action.to_string(),
            subject: subject.into(),
        };
        self
    }
}

/// A 2xx answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The body as it came.
    pub text: String,
    pub body: Value,
    /// `x-event-seq` of a command's answer.
    pub event_seq: Option<u64>,
}

impl Reply {
    pub fn data(&self) -> &Value {
        &self.body["data"]
    }
}

/// Access and refresh tokens as the login service answers them.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access: String,
    pub refresh: Option<String>,
    pub expires_in: Option<u64>,
}

impl Tokens {
    /// `{"data": {"accessToken", "refreshToken", "expiresIn"}}`.
    pub fn from_reply(reply: &Reply) -> Option<Self> {
        let d = reply.data();
        Some(Self {
            access: d["accessToken"].as_str()?.to_string(),
            refresh: d["refreshToken"].as_str().map(String::from),
            expires_in: d["expiresIn"].as_u64(),
        })
    }
}

/// What became of a try to renew the session.
enum Renewal {
    Renewed,
    Failed,
    /// No refresh token (or one already used by this process).
    NotTried,
}

/// A client of the HTTP API with the resolved settings.
pub struct Api {
    http: reqwest::Client,
    pub settings: Settings,
    token: Mutex<Option<String>>,
    refresh: Mutex<Option<String>>,
}

fn header_u64(res: &reqwest::Response, name: &str) -> Option<u64> {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

impl Api {
    pub fn new(settings: Settings) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("jobsctl/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .build()?;
        // A refresh token only renews the token stored beside it.
        let refresh = match settings.token_source {
            Source::Given => None,
            Source::File | Source::Default => settings.refresh_token.clone(),
        };
        Ok(Self {
            http,
            token: Mutex::new(settings.token.clone()),
            refresh: Mutex::new(refresh),
            settings,
        })
    }

    pub fn json(&self) -> bool {
        self.settings.json
    }

    pub fn url(&self) -> &str {
        &self.settings.url
    }

    fn token(&self) -> Option<String> {
        self.token.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Sends `call`; a 2xx is a [`Reply`], anything else a [`Failure`] in plain words.
    pub async fn send(&self, call: &Call) -> Result<Reply, Failure> {
        let token = self.token();
        let (status, reply, mut res_err) = self.once(call, token.as_deref()).await?;
        if status == 401 {
            match self.renew().await {
                Renewal::Renewed => {
                    let token = self.token();
                    let (_, reply, res_err) = self.once(call, token.as_deref()).await?;
                    return res_err.map_or(Ok(reply), Err);
                }
                Renewal::Failed => {
                    if let Some(Failure::Api(e)) = &mut res_err {
                        e.message
                            .push_str(", and the stored session could not be renewed");
                    }
                }
                Renewal::NotTried => {}
            }
        }
        res_err.map_or(Ok(reply), Err)
    }

    /// One round trip: the status, the reply, and the failure when it is not a 2xx.
    async fn once(
        &self,
        call: &Call,
        token: Option<&str>,
    ) -> Result<(u16, Reply, Option<Failure>), Failure> {
        let url = format!("{}{}", self.settings.url, call.path);
        let mut req = self.http.request(call.method.clone(), &url);
        if !call.query.is_empty() {
            req = req.query(&call.query);
        }
        for (k, v) in &call.headers {
            req = req.header(*k, v);
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = &call.body {
            req = req.json(b);
        }
        let base = self.settings.url.clone();
        let res = req.send().await.map_err(|e| transport(e, &base))?;
        let status = res.status().as_u16();
        let event_seq = header_u64(&res, "x-event-seq");
        let retry_after = header_u64(&res, "retry-after");
        let text = res.text().await.map_err(|e| transport(e, &base))?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let reply = Reply {
            text,
            body,
            event_seq,
        };
        if (200..300).contains(&status) {
            return Ok((status, reply, None));
        }
        let err = &reply.body["error"];
        let (code, message) = match (err["code"].as_str(), err["message"].as_str()) {
            (Some(c), m) => (c.to_string(), m.unwrap_or_default().to_string()),
            _ => (
                format!("HTTP_{status}"),
                format!("{url} answered HTTP {status}, not as the Jobs Service does: is {base} its gateway?"),
            ),
        };
        let failure = Failure::Api(Box::new(ApiError {
            status,
            code,
            message,
            details: err["details"].clone(),
            request_id: reply.body["meta"]["request_id"].as_str().map(String::from),
            retry_after: retry_after.or_else(|| err["details"]["retry_after_seconds"].as_u64()),
            body: reply.text.clone(),
            json_out: self.settings.json,
            had_token: token.is_some(),
            about: call.about.clone(),
        }));
        Ok((status, reply, Some(failure)))
    }

    /// Renews the session with the stored refresh token, once per process; saves the new tokens.
    async fn renew(&self) -> Renewal {
        let Some(refresh) = self.refresh.lock().ok().and_then(|mut r| r.take()) else {
            return Renewal::NotTried;
        };
        let call = Call::post("/auth/v1/refresh", json!({ "refreshToken": refresh }));
        let Ok((_, reply, None)) = self.once(&call, None).await else {
            return Renewal::Failed;
        };
        let Some(tokens) = Tokens::from_reply(&reply) else {
            return Renewal::Failed;
        };
        let path = &self.settings.path;
        let saved = FileConfig::load(path).and_then(|mut file| {
            file.token = Some(tokens.access.clone());
            if let Some(r) = &tokens.refresh {
                file.refresh_token = Some(r.clone());
            }
            file.save(path)
        });
        if let Err(e) = saved {
            eprintln!("warning: the session was renewed but not saved: {e:#}");
        }
        if let Ok(mut t) = self.token.lock() {
            *t = Some(tokens.access);
        }
        Renewal::Renewed
    }

    /// `POST /auth/v1/login`: the dev login of the seed.
    pub async fn login(&self, email: &str, password: &str) -> Result<Tokens, Failure> {
        let call = Call::post(
            "/auth/v1/login",
            json!({ "email": email, "password": password }),
        );
        let (_, reply, failure) = self.once(&call, None).await?;
        if let Some(f) = failure {
            return Err(f);
        }
        Tokens::from_reply(&reply).ok_or_else(|| Failure::Transport {
            url: self.settings.url.clone(),
            message: "the login answer has no data.accessToken".into(),
        })
    }
}

fn transport(e: reqwest::Error, url: &str) -> Failure {
    let url = url.to_string();
    if e.is_builder() {
        Failure::BadUrl { url }
    } else if e.is_connect() {
        Failure::Unreachable { url }
    } else if e.is_timeout() {
        Failure::TimedOut { url }
    } else {
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message = format!("{message}: {s}");
            source = s.source();
        }
        Failure::Transport { url, message }
    }
}
