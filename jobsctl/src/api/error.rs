//! What a call that did not succeed says, in plain words: the API's error envelope as one line
//! with its code (naming the job and what was asked of it), and transport failures (the service
//! unreachable, too slow, a URL that is none).

use std::fmt;
use std::time::Duration;

use serde_json::Value;

use super::About;

/// The service answered, but not with a 2xx.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub details: Value,
    pub request_id: Option<String>,
    pub retry_after: Option<u64>,
    /// The body as it came (printed on stdout under `--json`).
    pub body: String,
    pub json_out: bool,
    pub(super) had_token: bool,
    pub(super) about: About,
}

/// Why a call did not succeed.
#[derive(Debug)]
pub enum Failure {
    Api(Box<ApiError>),
    Unreachable { url: String },
    TimedOut { url: String },
    BadUrl { url: String },
    Transport { url: String, message: String },
}

impl Failure {
    /// Worth sending again (with the same Idempotency-Key): over a rate or quota for now, the
    /// service or the gateway briefly unavailable, the same request still in flight.
    pub fn is_transient(&self) -> bool {
        match self {
            Failure::Api(e) => {
                matches!(e.status, 429 | 502 | 503 | 504) || e.code == "IDEMPOTENCY_IN_PROGRESS"
            }
            Failure::TimedOut { .. } | Failure::Transport { .. } => true,
            Failure::Unreachable { .. } | Failure::BadUrl { .. } => false,
        }
    }

    /// How long to wait before trying again: the service's `Retry-After`, else `fallback`.
    pub fn retry_after(&self, fallback: Duration) -> Duration {
        match self {
            Failure::Api(e) => e.retry_after.map_or(fallback, Duration::from_secs),
            _ => fallback,
        }
    }

    pub fn api(&self) -> Option<&ApiError> {
        match self {
            Failure::Api(e) => Some(e),
            _ => None,
        }
    }
}

impl std::error::Error for Failure {}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Api(e) => write!(f, "{e}"),
            Failure::Unreachable { url } => write!(
                f,
                "cannot reach the Jobs Service at {url}: is it running? (deploy/up)"
            ),
            Failure::TimedOut { url } => {
                write!(f, "the Jobs Service at {url} did not answer in time")
            }
            Failure::BadUrl { url } => write!(
                f,
                "{url:?} is not a URL the Jobs Service can be reached at (--url, JOBS_URL or `url` in the config file)"
            ),
            Failure::Transport { url, message } => {
                write!(f, "calling the Jobs Service at {url} failed: {message}")
            }
        }
    }
}

/// The `fields` of a VALIDATION_FAILED answer as `field message; ...`.
pub fn field_errors(details: &Value) -> Option<String> {
    let fields = details["fields"].as_array()?;
    let parts: Vec<String> = fields
        .iter()
        .map(|f| {
            format!(
                "{} {}",
                f["field"].as_str().unwrap_or("?"),
                f["message"].as_str().unwrap_or("is invalid")
            )
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let about = &self.about;
        let has_subject = !about.subject.is_empty();
        match self.code.as_str() {
            "NOT_FOUND" if has_subject => write!(f, "{} not found", about.subject)?,
            "INVALID_STATE" if has_subject && !about.action.is_empty() => {
                match self.details["status"].as_str() {
                    Some(s) => write!(f, "cannot {} {}: it is {s}", about.action, about.subject)?,
                    None => write!(
                        f,
                        "cannot {} {}: {}",
                        about.action, about.subject, self.message
                    )?,
                }
            }
            "PRECONDITION_FAILED" if has_subject => write!(
                f,
                "{} changed meanwhile: its version is now {}",
                about.subject, self.details["version"]
            )?,
            "VALIDATION_FAILED" => match field_errors(&self.details) {
                Some(fields) => write!(f, "the request is invalid: {fields}")?,
                None => write!(f, "the request is invalid: {}", self.message)?,
            },
            "UNAUTHENTICATED" if !self.had_token => write!(f, "no token was sent")?,
            "UNAUTHENTICATED" => write!(f, "the service refused the token: {}", self.message)?,
            _ => write!(f, "{}", self.message)?,
        }
        if let Some(s) = self.retry_after {
            write!(f, "; retry in {s} s")?;
        }
        write!(f, " ({}", self.code)?;
        if self.status >= 500 {
            if let Some(id) = &self.request_id {
                write!(f, ", request {id}")?;
            }
        }
        write!(f, ")")?;
        if self.code == "UNAUTHENTICATED" {
            write!(f, ": run `jobsctl login`, or pass --token (or JOBS_TOKEN)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(code: &str, message: &str, details: Value, about: About) -> ApiError {
        ApiError {
            status: 404,
            code: code.into(),
            message: message.into(),
            details,
            request_id: None,
            retry_after: None,
            body: String::new(),
            json_out: false,
            had_token: true,
            about,
        }
    }

    fn about(action: &str, subject: &str) -> About {
        About {
            action: action.into(),
            subject: subject.into(),
        }
    }

    #[test]
    fn an_unknown_job_is_named() {
        let e = err(
            "NOT_FOUND",
            "job not found",
            Value::Null,
            about("get", "job 0190"),
        );
        assert_eq!(e.to_string(), "job 0190 not found (NOT_FOUND)");
    }

    #[test]
    fn a_refused_transition_says_what_and_why() {
        let e = err(
            "INVALID_STATE",
            "the job is completed",
            json!({"status": "completed"}),
            about("cancel", "job 7"),
        );
        assert_eq!(
            e.to_string(),
            "cannot cancel job 7: it is completed (INVALID_STATE)"
        );
    }

    #[test]
    fn validation_names_every_field() {
        let e = err(
            "VALIDATION_FAILED",
            "validation failed",
            json!({"fields": [{"field": "priority", "message": "must be 0 to 10"}, {"field": "type", "message": "is required"}]}),
            About::default(),
        );
        assert_eq!(
            e.to_string(),
            "the request is invalid: priority must be 0 to 10; type is required (VALIDATION_FAILED)"
        );
    }

    #[test]
    fn a_refused_token_says_how_to_get_one() {
        let e = err(
            "UNAUTHENTICATED",
            "token expired",
            Value::Null,
            About::default(),
        );
        let s = e.to_string();
        assert!(
            s.starts_with("the service refused the token: token expired (UNAUTHENTICATED)")
                && s.contains("jobsctl login")
                && s.contains("--token"),
            "{s}"
        );
    }
}
