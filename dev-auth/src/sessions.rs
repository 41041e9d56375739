//! Refresh tokens, in memory: opaque random strings grouped in families (one family per login).
//!
//! Invariants: a refresh token is good for one refresh — it is rotated, and the answer carries
//! its successor; presenting a token that was already rotated is taken as theft (one of two
//! parties holds a copy) and revokes its whole family, so the successor stops working too
//! (refresh-token reuse detection). A token expires `ttl` seconds after it was issued. A
//! refresh token is never a JWT, so it cannot pass as a bearer token. Nothing here outlives the
//! process: a restart logs everybody out.

use std::collections::{HashMap, HashSet};

use rand::RngCore;
use uuid::Uuid;

use crate::users::UserId;

/// Why a refresh token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Never issued, or expired.
    Unknown,
    /// Already rotated: its family is now revoked.
    Reused,
    /// Its family was revoked earlier (a token of it was reused).
    Revoked,
}

impl Refused {
    pub fn message(self) -> &'static str {
        match self {
            Refused::Unknown => "unknown or expired refresh token: log in again",
            Refused::Reused => {
                "this refresh token was already used: its session is revoked, log in again"
            }
            Refused::Revoked => {
                "this session was revoked (a refresh token was reused): log in again"
            }
        }
    }
}

struct Issued {
    family: Uuid,
    expires_at: i64,
    rotated: bool,
}

struct Family {
    user: UserId,
    revoked: bool,
}

pub struct Sessions {
    ttl: i64,
    tokens: HashMap<String, Issued>,
    families: HashMap<Uuid, Family>,
    last_sweep: i64,
}

/// How often (seconds) expired tokens are dropped.
const SWEEP_EVERY: i64 = 60;

fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("devrt_{hex}")
}

impl Sessions {
    /// Refresh tokens valid for `ttl_seconds` each.
    pub fn new(ttl_seconds: i64) -> Self {
        Self {
            ttl: ttl_seconds,
            tokens: HashMap::new(),
            families: HashMap::new(),
            last_sweep: i64::MIN,
        }
    }

    /// A new session (family) for `user`: its first refresh token.
    pub fn start(&mut self, user: UserId, now: i64) -> String {
        self.sweep(now);
        let family = Uuid::new_v4();
        self.families.insert(
            family,
            Family {
                user,
                revoked: false,
            },
        );
        self.issue(family, now)
    }

    /// Spends `token`: its user and the token that replaces it, or why not. Reusing a rotated
    /// token revokes its family.
    pub fn rotate(&mut self, token: &str, now: i64) -> Result<(UserId, String), Refused> {
        self.sweep(now);
        let issued = self
            .tokens
            .get_mut(token)
            .filter(|t| t.expires_at > now)
            .ok_or(Refused::Unknown)?;
        let family = self
            .families
            .get_mut(&issued.family)
            .ok_or(Refused::Unknown)?;
        if family.revoked {
            return Err(Refused::Revoked);
        }
        if issued.rotated {
            family.revoked = true;
            tracing::warn!(family = %issued.family, "a rotated refresh token was reused; session revoked");
            return Err(Refused::Reused);
        }
        issued.rotated = true;
        let (family_id, user) = (issued.family, family.user);
        Ok((user, self.issue(family_id, now)))
    }

    /// Tokens held (for tests and logs).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    fn issue(&mut self, family: Uuid, now: i64) -> String {
        let token = new_token();
        self.tokens.insert(
            token.clone(),
            Issued {
                family,
                expires_at: now.saturating_add(self.ttl),
                rotated: false,
            },
        );
        token
    }

    /// Drops expired tokens, and families none of whose tokens are left.
    fn sweep(&mut self, now: i64) {
        if now.saturating_sub(self.last_sweep) < SWEEP_EVERY {
            return;
        }
        self.last_sweep = now;
        self.tokens.retain(|_, t| t.expires_at > now);
        let live: HashSet<Uuid> = self.tokens.values().map(|t| t.family).collect();
        self.families.retain(|id, _| live.contains(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: UserId = UserId::from_index(0);
    const BOB: UserId = UserId::from_index(1);

    #[test]
    fn each_refresh_rotates_the_token_and_keeps_the_user() {
        let mut s = Sessions::new(600);
        let t1 = s.start(ALICE, 1000);
        assert!(
            t1.starts_with("devrt_") && !t1.contains('.'),
            "opaque, not a JWT: {t1}"
        );
        let (user, t2) = s.rotate(&t1, 1001).unwrap();
        assert_eq!(user, ALICE);
        assert_ne!(t1, t2);
        let (user, t3) = s.rotate(&t2, 1002).unwrap();
        assert_eq!(user, ALICE);
        assert_ne!(t2, t3);
    }

    #[test]
    fn reusing_a_rotated_token_revokes_its_whole_family_and_nothing_else() {
        let mut s = Sessions::new(600);
        let t1 = s.start(ALICE, 1000);
        let other = s.start(BOB, 1000);
        let (_, t2) = s.rotate(&t1, 1001).unwrap();
        assert_eq!(s.rotate(&t1, 1002), Err(Refused::Reused));
        assert_eq!(s.rotate(&t2, 1003), Err(Refused::Revoked));
        assert_eq!(s.rotate(&t1, 1004), Err(Refused::Revoked));
        let (user, _) = s
            .rotate(&other, 1005)
            .expect("another session is untouched");
        assert_eq!(user, BOB);
        let again = s.start(ALICE, 1006);
        assert!(s.rotate(&again, 1007).is_ok(), "a new login starts afresh");
    }

    #[test]
    fn unknown_and_expired_tokens_are_refused_and_expired_ones_are_forgotten() {
        let mut s = Sessions::new(60);
        assert_eq!(s.rotate("devrt_nope", 1000), Err(Refused::Unknown));
        let t = s.start(ALICE, 1000);
        assert_eq!(s.rotate(&t, 1060), Err(Refused::Unknown));
        let fresh = s.start(BOB, 1100);
        assert_eq!(s.len(), 1, "the expired token was swept");
        assert!(s.rotate(&fresh, 1101).is_ok());
    }
}
