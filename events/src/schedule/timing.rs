//! When a schedule fires: the slots of a cron expression in a time zone or of a fixed interval,
//! and which slots are due at an instant under the schedule's catch-up policy.
//!
//! Pure: the time always comes in as an argument. Slots are instants in UTC with millisecond
//! precision (cron slots fall on whole seconds), so a slot written into a job's metadata as
//! RFC 3339 with milliseconds reads back as the same instant.

use std::str::FromStr;

use chrono::{DateTime, Duration, SubsecRound, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;

use super::{CatchUp, Schedule};

/// How many missed slots `catch_up: all` fires at most, the most recent ones (older ones are
/// skipped); also the most slots one pass fires for one schedule.
pub const MAX_CATCH_UP: usize = 1000;

/// A schedule's clock: a cron expression read in a time zone, or a fixed interval counted from
/// an anchor.
#[derive(Debug, Clone)]
pub enum Timing {
    Cron {
        cron: Box<Cron>,
        zone: Tz,
    },
    Interval {
        every_ms: i64,
        anchor: DateTime<Utc>,
    },
}

/// Parses a cron expression: five fields (minute to day of week), or six with seconds first;
/// `@hourly`-style nicknames too.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    Cron::from_str(expr).map_err(|e| e.to_string())
}

/// Parses an IANA time zone name (`Europe/Paris`, `UTC`).
pub fn parse_zone(name: &str) -> Result<Tz, String> {
    Tz::from_str(name).map_err(|_| format!("{name:?} is not an IANA time zone name"))
}

const MS: Duration = Duration::milliseconds(1);

impl Timing {
    /// The first slot strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Cron { cron, zone } => {
                // Cron slots are whole seconds: searching from the whole second at or before
                // `t`, exclusively, gives the first slot after `t`.
                let from = zone.from_utc_datetime(&t.trunc_subsecs(0).naive_utc());
                cron.find_next_occurrence(&from, false)
                    .ok()
                    .map(|d| d.with_timezone(&Utc))
            }
            Self::Interval { every_ms, anchor } => {
                if t < *anchor {
                    return Some(*anchor);
                }
                let k = (t - *anchor).num_milliseconds().div_euclid(*every_ms) + 1;
                anchor.checked_add_signed(Duration::milliseconds(k.checked_mul(*every_ms)?))
            }
        }
    }

    /// The last slot at or before `t`.
    pub fn last_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Cron { cron, zone } => {
                let from = zone.from_utc_datetime(&t.trunc_subsecs(0).naive_utc());
                cron.find_previous_occurrence(&from, true)
                    .ok()
                    .map(|d| d.with_timezone(&Utc))
            }
            Self::Interval { every_ms, anchor } => {
                if t < *anchor {
                    return None;
                }
                let k = (t - *anchor).num_milliseconds().div_euclid(*every_ms);
                anchor.checked_add_signed(Duration::milliseconds(k.checked_mul(*every_ms)?))
            }
        }
    }
}

impl Schedule {
    /// The schedule's clock; None if its stored definition no longer parses (it then never
    /// fires, and says so in the logs of whoever asks).
    pub fn timing(&self) -> Option<Timing> {
        match (&self.cron, self.interval_seconds) {
            (Some(expr), _) => Some(Timing::Cron {
                cron: Box::new(parse_cron(expr).ok()?),
                zone: parse_zone(self.timezone.as_deref().unwrap_or("UTC")).ok()?,
            }),
            (None, Some(every)) => Some(Timing::Interval {
                every_ms: i64::try_from(every).ok()?.checked_mul(1000)?,
                anchor: self.anchor(),
            }),
            (None, None) => None,
        }
    }

    /// Where interval slots are counted from: `start_at`, else the creation time on the second.
    pub fn anchor(&self) -> DateTime<Utc> {
        self.start_at
            .unwrap_or_else(|| self.created_at.trunc_subsecs(0))
    }

    /// A slot may fire when it is after `counting_from` and within `[start_at, end_at]`.
    fn eligible(&self, s: DateTime<Utc>) -> bool {
        s > self.counting_from
            && self.start_at.is_none_or(|a| s >= a)
            && self.end_at.is_none_or(|e| s <= e)
    }

    /// The first slot the schedule may fire strictly after `t`.
    pub fn first_slot_after(&self, timing: &Timing, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut from = t.max(self.counting_from);
        if let Some(a) = self.start_at {
            if a > from {
                // `start_at` itself is a slot when the clock has one there.
                from = a - MS;
            }
        }
        timing.next_after(from).filter(|s| self.eligible(*s))
    }

    /// The last slot the schedule may fire in `(after, upto]`.
    pub fn last_slot_in(
        &self,
        timing: &Timing,
        after: DateTime<Utc>,
        upto: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let upto = self.end_at.map_or(upto, |e| upto.min(e));
        timing
            .last_at_or_before(upto)
            .filter(|s| *s > after && self.eligible(*s))
    }

    /// When the schedule fires next, as the API shows it: the first slot after `now` and after
    /// the last firing; None while paused or once `end_at` has passed.
    pub fn next_run_at(
        &self,
        last_fired: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        if !self.enabled {
            return None;
        }
        let after = last_fired.map_or(now, |l| l.max(now));
        self.first_slot_after(&self.timing()?, after)
    }
}

/// What one pass of the scheduler does for one schedule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Due {
    /// The slots to fire, oldest first.
    pub fire: Vec<DateTime<Utc>>,
    /// Missed slots that the catch-up policy (or the cap) leaves unfired.
    pub skipped_missed: bool,
}

/// The slots `schedule` should fire at `now`.
///
/// - `done_through`: every slot at or before it is settled (fired, seen fired, refused or
///   skipped).
/// - `missed_before`: a slot at or before it that is not settled was missed (it came while no
///   instance was watching, or could not be fired for long): the catch-up policy decides —
///   `skip` fires none of them, `one` the latest, `all` every one (the latest [`MAX_CATCH_UP`]).
///   Later slots up to `now` are on time and all fire.
pub fn due(
    schedule: &Schedule,
    timing: &Timing,
    done_through: Option<DateTime<Utc>>,
    missed_before: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Due {
    let mut out = Due::default();
    if !schedule.enabled {
        return out;
    }
    let lower = done_through.map_or(schedule.counting_from, |d| d.max(schedule.counting_from));
    let cut = missed_before.min(now);
    if cut > lower {
        match schedule.catch_up {
            CatchUp::Skip => {
                out.skipped_missed = schedule.last_slot_in(timing, lower, cut).is_some();
            }
            CatchUp::One => {
                if let Some(s) = schedule.last_slot_in(timing, lower, cut) {
                    out.skipped_missed = schedule.last_slot_in(timing, lower, s - MS).is_some();
                    out.fire.push(s);
                }
            }
            CatchUp::All => {
                let mut upto = cut;
                while out.fire.len() < MAX_CATCH_UP {
                    match schedule.last_slot_in(timing, lower, upto) {
                        Some(s) => {
                            out.fire.push(s);
                            upto = s - MS;
                        }
                        None => break,
                    }
                }
                if out.fire.len() == MAX_CATCH_UP {
                    out.skipped_missed = schedule.last_slot_in(timing, lower, upto).is_some();
                }
                out.fire.reverse();
            }
        }
    }
    let mut t = lower.max(cut);
    let on_time_cap = out.fire.len() + MAX_CATCH_UP;
    while out.fire.len() < on_time_cap {
        match schedule.first_slot_after(timing, t) {
            Some(s) if s <= now => {
                out.fire.push(s);
                t = s;
            }
            _ => break,
        }
    }
    out
}
