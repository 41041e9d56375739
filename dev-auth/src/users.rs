//! The development users: a TOML file of `[[users]]` with **plaintext** passwords (development
//! only), checked when loaded (unique e-mails, a password, at least one role) and looked up by
//! e-mail, case-insensitively.
//!
//! Invariant: a wrong e-mail and a wrong password are indistinguishable to the caller — the
//! same answer, and the same work: the given password is compared in constant time with the
//! user's, or with a random stand-in when the e-mail is unknown.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context};
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    users: Vec<UserEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    email: String,
    password: String,
    sub: String,
    tenant_id: Uuid,
    roles: Vec<String>,
    #[serde(default)]
    plan_tier: Option<String>,
}

/// A user as its tokens describe it.
#[derive(Debug, Clone)]
pub struct User {
    pub email: String,
    pub sub: String,
    pub tenant_id: Uuid,
    pub roles: Vec<String>,
    pub plan_tier: Option<String>,
    password_sha256: [u8; 32],
}

/// Which user: an index into [`Users`], stable for the process's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserId(usize);

impl UserId {
    #[cfg(test)]
    pub(crate) const fn from_index(i: usize) -> Self {
        Self(i)
    }
}

pub struct Users {
    users: Vec<User>,
    by_email: HashMap<String, UserId>,
    /// Compared with when the e-mail is unknown; matches no password.
    stand_in: [u8; 32],
}

fn normalize(email: &str) -> String {
    email.trim().to_lowercase()
}

fn sha256(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// Equal digests, in time that does not depend on where they differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| std::hint::black_box(acc | (x ^ y)));
    diff == 0
}

impl Users {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the users file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("the users file {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let file: UsersFile = toml::from_str(text).map_err(|e| {
            // toml's own rendering spans several lines; one is enough.
            let line = e.span().map(|s| text[..s.start].matches('\n').count() + 1);
            match line {
                Some(n) => anyhow::anyhow!("line {n}: {}", e.message()),
                None => anyhow::anyhow!("{}", e.message()),
            }
        })?;
        if file.users.is_empty() {
            bail!("it lists no [[users]]");
        }
        let mut users = Vec::with_capacity(file.users.len());
        let mut by_email = HashMap::new();
        for (i, u) in file.users.into_iter().enumerate() {
            let email = normalize(&u.email);
            if !email.contains('@') {
                bail!("users[{i}]: email {:?} is not an e-mail address", u.email);
            }
            if u.password.is_empty() {
                bail!("users[{i}] ({email}): the password is empty");
            }
            if u.sub.trim().is_empty() {
                bail!("users[{i}] ({email}): sub is empty");
            }
            if u.roles.is_empty() {
                bail!("users[{i}] ({email}): no roles (a token without one is refused everywhere)");
            }
            if by_email.insert(email.clone(), UserId(i)).is_some() {
                bail!("users[{i}]: {email} is listed twice");
            }
            users.push(User {
                email,
                sub: u.sub,
                tenant_id: u.tenant_id,
                roles: u.roles,
                plan_tier: u.plan_tier,
                password_sha256: sha256(&u.password),
            });
        }
        let mut stand_in = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut stand_in);
        Ok(Self {
            users,
            by_email,
            stand_in,
        })
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn get(&self, id: UserId) -> &User {
        &self.users[id.0]
    }

    /// The user with this e-mail and password; `None` for a wrong e-mail or a wrong password
    /// alike.
    pub fn authenticate(&self, email: &str, password: &str) -> Option<UserId> {
        let given = sha256(password);
        let id = self.by_email.get(&normalize(email)).copied();
        let expected = id.map_or(&self.stand_in, |id| &self.get(id).password_sha256);
        let matches = constant_time_eq(&given, expected);
        id.filter(|_| matches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = r#"
        [[users]]
        email = "Dev@Example.com"
        password = "secret"
        sub = "s-1"
        tenant_id = "10000000-0000-4000-8000-000000000004"
        roles = ["member"]
        plan_tier = "professional"

        [[users]]
        email = "admin@example.com"
        password = "other"
        sub = "s-2"
        tenant_id = "10000000-0000-4000-8000-000000000001"
        roles = ["admin", "member"]
    "#;

    #[test]
    fn the_right_password_finds_the_user_whatever_the_case_of_the_email() {
        let users = Users::parse(TWO).unwrap();
        let id = users.authenticate(" dev@example.COM ", "secret").unwrap();
        let u = users.get(id);
        assert_eq!(
            (u.sub.as_str(), u.email.as_str()),
            ("s-1", "dev@example.com")
        );
        assert_eq!(u.plan_tier.as_deref(), Some("professional"));
        let admin = users.authenticate("admin@example.com", "other").unwrap();
        assert_eq!(users.get(admin).roles, ["admin", "member"]);
        assert_eq!(users.get(admin).plan_tier, None);
    }

    #[test]
    fn a_wrong_password_or_an_unknown_email_finds_nobody() {
        let users = Users::parse(TWO).unwrap();
        assert_eq!(users.authenticate("dev@example.com", "Secret"), None);
        assert_eq!(users.authenticate("dev@example.com", ""), None);
        assert_eq!(users.authenticate("dev@example.com", "other"), None);
        assert_eq!(users.authenticate("nobody@example.com", "secret"), None);
    }

    #[test]
    fn a_bad_users_file_is_refused_with_the_reason() {
        let cases = [
            ("", "no [[users]]"),
            (
                &TWO.replace("admin@example.com", "dev@example.com"),
                "listed twice",
            ),
            (&TWO.replace("\"other\"", "\"\""), "password is empty"),
            (&TWO.replace("[\"admin\", \"member\"]", "[]"), "no roles"),
            (
                &TWO.replace("plan_tier", "plan"),
                "line 8: unknown field `plan`",
            ),
            (&TWO.replace("admin@example.com", "admin"), "not an e-mail"),
        ];
        for (text, why) in cases {
            let err = format!("{:#}", Users::parse(text).err().expect(why));
            assert!(err.contains(why), "{why}: {err}");
        }
    }

    #[test]
    fn the_committed_dev_users_file_holds_the_seed_pages_users() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/dev-users.toml");
        let users = Users::load(&path).unwrap();
        let dev = users
            .authenticate("dev@eventzr.com", "Password123!")
            .unwrap();
        let dev = users.get(dev);
        assert_eq!(
            dev.tenant_id.to_string(),
            "10000000-0000-4000-8000-000000000004"
        );
        assert_eq!(dev.sub, "20000000-0000-4000-8000-000000000004");
        assert_eq!(dev.roles, ["member"]);
        let admin = users
            .authenticate("admin@eventzr.com", "Password123!")
            .unwrap();
        let admin = users.get(admin);
        assert_eq!(
            admin.tenant_id.to_string(),
            "10000000-0000-4000-8000-000000000001"
        );
        assert_eq!(admin.roles, ["admin", "member"]);
    }
}
