//! The names of the Byzantine behaviours `pbft-node --byzantine` takes (in a
//! build with the `byzantine` feature, `crate::byzantine`), always
//! compiled so that tools driving such replicas (`pbft chaos`) use the same
//! list as the node that parses it.

/// One behaviour of `pbft-node --byzantine`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Behaviour {
    /// Its `--byzantine` name.
    pub name: &'static str,
    /// Whether it shows only (or mostly) while the replica is the primary:
    /// a fault-injection tool makes the primary Byzantine for these, a
    /// backup for the others.
    pub as_primary: bool,
    /// What the replica does, in a few words.
    pub what: &'static str,
}

const fn b(name: &'static str, as_primary: bool, what: &'static str) -> Behaviour {
    Behaviour {
        name,
        as_primary,
        what,
    }
}

/// Every behaviour `--byzantine` accepts, in the order tools list them.
pub static BEHAVIOURS: [Behaviour; 12] = [
    b("silent", true, "sends nothing"),
    b(
        "equivocate",
        true,
        "as primary, different batches for one (view, seq) to different backups",
    ),
    b(
        "conflict",
        false,
        "prepares/commits with wrong digests, lying replies",
    ),
    b("badsig", true, "corrupts signatures, nested ones too"),
    b("replay", false, "replays old messages to random replicas"),
    b(
        "slow-primary",
        true,
        "as primary, delays pre-prepares to just under the timeout",
    ),
    b(
        "checkpoint",
        false,
        "wrong checkpoint digests, corrupted state snapshots",
    ),
    b(
        "viewchange",
        true,
        "drops its pre-prepares as primary, forges view-change and new-view proofs",
    ),
    b(
        "forget",
        false,
        "view changes that hide prepared certificates; as new primary the NEW-VIEW that hides the most",
    ),
    b(
        "censor",
        true,
        "as primary, never orders one client's requests",
    ),
    b(
        "flood",
        false,
        "the simulator's flood (far-view votes, stale view changes, fetches, PROGRESS, made-up clients' requests), rate-bounded",
    ),
    b(
        "wrong-state",
        false,
        "applies writes wrongly and reports a wrong state digest",
    ),
];

/// The behaviour called `name`.
pub fn find(name: &str) -> Option<&'static Behaviour> {
    BEHAVIOURS.iter().find(|b| b.name == name)
}

/// The names, comma-separated (for messages).
pub fn names() -> String {
    BEHAVIOURS
        .iter()
        .map(|b| b.name)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_found() {
        for (i, b) in BEHAVIOURS.iter().enumerate() {
            assert_eq!(find(b.name), Some(b));
            assert!(
                BEHAVIOURS[..i].iter().all(|o| o.name != b.name),
                "{}",
                b.name
            );
        }
        assert_eq!(find("nice"), None);
        assert!(names().starts_with("silent, equivocate"));
    }
}
