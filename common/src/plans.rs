//! Plan tiers and their default limits (`deploy/plans.toml`, built in as the default), and how a
//! tenant's effective limits come out of its tier and an admin's overrides.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context};
use events::platform::LimitOverrides;
use serde::{Deserialize, Serialize};

/// The built-in plans, the same file deploy/ ships.
pub const DEFAULT_PLANS: &str = include_str!("../../deploy/plans.toml");
/// The tier of a token whose `planTier` is missing or unknown: the most restrictive.
pub const FALLBACK_TIER: &str = "free";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_payload_bytes: u64,
    pub enqueue_per_second: u64,
    pub enqueue_burst: u64,
    pub max_active_jobs: u64,
    pub max_concurrent_leases: u64,
}

impl Limits {
    /// These limits with `o` laid over them.
    pub fn with(mut self, o: &LimitOverrides) -> Self {
        if let Some(v) = o.max_payload_bytes {
            self.max_payload_bytes = v;
        }
        if let Some(v) = o.enqueue_per_second {
            // The burst follows the rate: twice a second's worth, as in the shipped plans.
            self.enqueue_per_second = v;
            self.enqueue_burst = v.saturating_mul(2).max(1);
        }
        if let Some(v) = o.max_active_jobs {
            self.max_active_jobs = v;
        }
        if let Some(v) = o.max_concurrent_leases {
            self.max_concurrent_leases = v;
        }
        self
    }
}

#[derive(Debug, Clone)]
pub struct Plans {
    tiers: HashMap<String, Limits>,
}

impl Plans {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let tiers: HashMap<String, Limits> =
            toml::from_str(text).context("parsing the plans file")?;
        if !tiers.contains_key(FALLBACK_TIER) {
            bail!("the plans file must define the `{FALLBACK_TIER}` tier");
        }
        Ok(Self { tiers })
    }

    /// From `path`, or the built-in plans.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("JOBS_PLANS_FILE: reading {}", p.display()))?;
                Self::parse(&text).context("JOBS_PLANS_FILE")
            }
            None => Self::parse(DEFAULT_PLANS),
        }
    }

    /// The tier a token's `planTier` names (the fallback when missing or unknown) and its limits.
    pub fn tier(&self, plan_tier: Option<&str>) -> (&str, Limits) {
        match plan_tier.and_then(|t| self.tiers.get_key_value(t)) {
            Some((name, limits)) => (name.as_str(), *limits),
            None => (FALLBACK_TIER, self.tiers[FALLBACK_TIER]),
        }
    }

    /// The tenant's effective limits.
    pub fn effective(&self, plan_tier: Option<&str>, overrides: Option<&LimitOverrides>) -> Limits {
        let (_, limits) = self.tier(plan_tier);
        overrides.map_or(limits, |o| limits.with(o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_tiers_get_the_most_restrictive_plan_and_overrides_lay_over_it() {
        let p = Plans::load(None).unwrap();
        let (name, free) = p.tier(Some("platinum"));
        assert_eq!(name, "free");
        assert_eq!(p.tier(None).1, free);
        let pro = p.tier(Some("professional")).1;
        assert!(pro.max_active_jobs > free.max_active_jobs);
        let o = LimitOverrides {
            max_active_jobs: Some(3),
            enqueue_per_second: Some(7),
            ..Default::default()
        };
        let e = p.effective(Some("professional"), Some(&o));
        assert_eq!(
            (e.max_active_jobs, e.enqueue_per_second, e.enqueue_burst),
            (3, 7, 14)
        );
        assert_eq!(e.max_payload_bytes, pro.max_payload_bytes);
        assert!(Plans::parse("[pro]\nmax_payload_bytes = 1").is_err());
    }
}
