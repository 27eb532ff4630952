//! Why a pass runs: typed reasons, merged into one set while a sandbox waits for its pass.

use std::collections::BTreeSet;
use std::fmt;

/// One reason to reconcile a sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Trigger {
    /// A config commit: what the repo says may have changed (also the first read at start).
    ConfigCommit,
    /// A branch one of its containers runs has a new head.
    BranchMoved,
    /// A SandboxSet's repository has new branches or lost some: the set made this sandbox, or no longer does.
    BranchesListed,
    /// An agent reported a change of the sandbox's objects on its VM: drift, a container that stopped, an action's
    /// effect.
    AgentReport,
    /// An agent (re)connected: what waited for it can go on.
    AgentConnected,
    /// `expireAfter` or the retention period was reached.
    Expiry,
    /// A step failed and its backoff is over.
    RetryAfterError,
    /// Nothing happened for a while: compare again all the same.
    Resync,
    /// Asked for by hand (tests, tools).
    Requested,
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Trigger::ConfigCommit => "config commit",
            Trigger::BranchMoved => "branch moved",
            Trigger::BranchesListed => "branches listed",
            Trigger::AgentReport => "agent report",
            Trigger::AgentConnected => "agent connected",
            Trigger::Expiry => "expiry",
            Trigger::RetryAfterError => "retry after error",
            Trigger::Resync => "resync",
            Trigger::Requested => "requested",
        })
    }
}

/// The reasons a pass runs for, in a fixed order: `config commit, agent report`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Triggers(BTreeSet<Trigger>);

impl Triggers {
    pub fn one(trigger: Trigger) -> Triggers {
        Triggers(BTreeSet::from([trigger]))
    }

    pub fn insert(&mut self, trigger: Trigger) {
        self.0.insert(trigger);
    }

    pub fn extend(&mut self, other: Triggers) {
        self.0.extend(other.0);
    }

    pub fn contains(&self, trigger: Trigger) -> bool {
        self.0.contains(&trigger)
    }
}

impl fmt::Display for Triggers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{t}")?;
        }
        Ok(())
    }
}
