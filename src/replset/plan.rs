//! The safe steps from a running replica set to the declared members,
//! decided without any I/O so that every rule is unit-tested.
//!
//! The rules are MongoDB 4.4+'s for a non-force `replSetReconfig`
//! (<https://www.mongodb.com/docs/manual/reference/command/replSetReconfig/>):
//! at most one voting member added or removed per reconfiguration; a new
//! member joins without a vote (`newlyAdded`) and votes once it has caught
//! up; and ours on top: a member is removed only when the voting members
//! left still have a majority up, the primary steps down before it is
//! removed, and a set never grows past MongoDB's 7 voting members.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// MongoDB's limit on voting members.
pub const MAX_VOTING_MEMBERS: usize = 7;

/// A member of the running configuration, as `replSetGetConfig` and
/// `replSetGetStatus` describe it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningMember {
    /// `members[]._id`.
    pub id: i32,
    /// `host:port`, normalized like the declared members.
    pub host: String,
    /// Configured votes (0 or 1; `newlyAdded` is not visible here).
    pub votes: i32,
    /// PRIMARY or SECONDARY now: it holds the data and answers.
    pub up: bool,
}

/// The running set, read from its primary.
#[derive(Debug, Clone, PartialEq)]
pub struct Running {
    /// The set's name (`_id`).
    pub name: String,
    /// `version` of the installed configuration.
    pub version: i64,
    /// The current term (from `replSetGetStatus`).
    pub term: i64,
    /// `host:port` of the primary.
    pub primary: Option<String>,
    /// In configuration order.
    pub members: Vec<RunningMember>,
}

/// What the cluster file asks for.
#[derive(Debug, Clone)]
pub struct Declared<'a> {
    /// The set's name.
    pub name: &'a str,
    /// Normalized `host:port`s, no duplicates (see `config::normalize_members`).
    pub members: &'a [String],
    /// The operator accepts an even number of voting members.
    pub allow_even: bool,
    /// The operator accepts one or two voting members.
    pub allow_fewer: bool,
}

/// One reconfiguration step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Add a member with one vote; mongod keeps it `newlyAdded` (no vote)
    /// until it has caught up.
    Add(String),
    /// `replSetStepDown` on this primary, which is about to be removed.
    StepDown(String),
    /// Remove this member.
    Remove(String),
}

impl Step {
    /// What the step does, in a few words: `add h:27017`.
    pub fn action(&self) -> String {
        match self {
            Step::Add(h) => format!("add {h}"),
            Step::StepDown(h) => format!("step down the primary {h}"),
            Step::Remove(h) => format!("remove {h}"),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = self.action();
        match self {
            Step::Add(_) => write!(
                f,
                "{action}: it joins without a vote, copies the data, then votes"
            ),
            Step::StepDown(_) => write!(
                f,
                "{action}, so that another member takes over before it is removed"
            ),
            Step::Remove(_) => f.write_str(&action),
        }
    }
}

/// Refuses a declared count of voting members that weakens the set unless
/// the operator accepted it: fewer than three (`allow_fewer`), or an even
/// number (`allow_even`). `replset init` and `plan`/`apply` share these
/// rules so that a set cannot be built in a shape it may not be changed to.
/// One line, without "nothing changed" (the caller knows whether it is so).
pub fn check_voters(count: usize, allow_even: bool, allow_fewer: bool) -> Result<(), String> {
    // Two is also even; --allow-fewer-than-three is the one decision to ask
    // for, as a pair has exactly the weakness that flag names.
    if count < 3 {
        if allow_fewer {
            return Ok(());
        }
        let (declared, down) = if count == 1 {
            ("1 voting member is declared", "when it is down")
        } else {
            ("2 voting members are declared", "when either is down")
        };
        return Err(format!(
            "{declared}: fewer than three survive no member failure ({down} there is no majority, \
             so no primary and no writes, and fewer copies of the data); declare at least three, \
             or accept it with --allow-fewer-than-three"
        ));
    }
    if count.is_multiple_of(2) && !allow_even {
        return Err(format!(
            "{count} voting members are declared: an even number survives no more failures than one member fewer \
             and can split its votes evenly; declare an odd number, or accept it with --allow-even-voters"
        ));
    }
    Ok(())
}

fn majority(voters: usize) -> usize {
    voters / 2 + 1
}

/// The steps from `running` to `declared`, in order, or why none may be
/// taken (one line). `new_members` says, for each declared host that is not
/// in the running configuration yet, whether it answers as an empty
/// replica-set member (`Err` with why not).
pub fn plan(
    running: &Running,
    declared: &Declared<'_>,
    new_members: &BTreeMap<String, Result<(), String>>,
) -> Result<Vec<Step>, String> {
    if running.name != declared.name {
        return Err(format!(
            "the running replica set is named {:?} but the members declare {:?}: a replica set cannot be renamed",
            running.name, declared.name
        ));
    }
    let mut seen = BTreeSet::new();
    if let Some(dup) = declared.members.iter().find(|m| !seen.insert(m.as_str())) {
        return Err(format!("member {dup} is declared twice"));
    }
    let running_hosts: BTreeSet<&str> = running.members.iter().map(|m| m.host.as_str()).collect();
    let wanted: BTreeSet<&str> = declared.members.iter().map(String::as_str).collect();
    // A set that already has the declared members is left as it is, so
    // that plan and apply stay idempotent for a set built before these
    // rules, or with the flags once: only a change must follow them.
    if running_hosts != wanted {
        check_voters(
            declared.members.len(),
            declared.allow_even,
            declared.allow_fewer,
        )?;
    }
    if declared.members.len() > MAX_VOTING_MEMBERS {
        return Err(format!(
            "{} members are declared but MongoDB allows at most {MAX_VOTING_MEMBERS} voting members",
            declared.members.len()
        ));
    }
    let adds: Vec<&String> = declared
        .members
        .iter()
        .filter(|h| !running_hosts.contains(h.as_str()))
        .collect();
    // A refusal first: the checks stop at the first one, leaving others
    // unchecked.
    let refused = adds
        .iter()
        .find_map(|host| match new_members.get(host.as_str()) {
            Some(Err(why)) => Some((host, why)),
            _ => None,
        });
    if let Some((host, why)) = refused {
        return Err(format!("cannot add {host}: {why}"));
    }
    if let Some(host) = adds.iter().find(|h| !new_members.contains_key(h.as_str())) {
        return Err(format!("cannot add {host}: it was not checked"));
    }
    let mut voters: BTreeSet<String> = running
        .members
        .iter()
        .filter(|m| m.votes > 0)
        .map(|m| m.host.clone())
        .collect();
    let mut up: BTreeSet<String> = running
        .members
        .iter()
        .filter(|m| m.up)
        .map(|m| m.host.clone())
        .collect();
    up.extend(adds.iter().map(|h| (*h).clone()));
    // Dead members first (they serve nobody), then live ones, the primary last.
    let mut removes: Vec<&RunningMember> = running
        .members
        .iter()
        .filter(|m| !wanted.contains(m.host.as_str()))
        .collect();
    removes.sort_by_key(|m| (m.up, running.primary.as_deref() == Some(m.host.as_str())));

    // No check of the whole change up front: a majority of the voting
    // members may be replaced, even with one of them down, as long as each
    // step keeps a majority of the voting members up (checked per removal
    // below). The primary answering shows that a majority answers now, and
    // the new members join, and vote, before any live member leaves.

    let mut steps = Vec::new();
    let mut primary = running.primary.clone();
    let mut adds = adds.into_iter().peekable();
    let mut removes = removes.into_iter().peekable();
    loop {
        if let Some(host) = adds.peek() {
            if voters.len() < MAX_VOTING_MEMBERS {
                steps.push(Step::Add((*host).clone()));
                voters.insert((*host).clone());
                adds.next();
                continue;
            }
        }
        if let Some(m) = removes.next() {
            if m.votes > 0 {
                let left: BTreeSet<&String> = voters.iter().filter(|v| **v != m.host).collect();
                let left_up = left.iter().filter(|v| up.contains(v.as_str())).count();
                if left_up < majority(left.len()) {
                    let down: Vec<&str> = left
                        .iter()
                        .filter(|v| !up.contains(v.as_str()))
                        .map(|v| v.as_str())
                        .collect();
                    return Err(format!(
                        "removing {} would leave {left_up} of {} voting members up, not a majority, \
                         so no primary could be elected; bring {} back first, or declare members \
                         that keep a majority of the voting members up",
                        m.host,
                        left.len(),
                        down.join(", ")
                    ));
                }
            }
            if primary.as_deref() == Some(m.host.as_str()) {
                steps.push(Step::StepDown(m.host.clone()));
                primary = None;
            }
            steps.push(Step::Remove(m.host.clone()));
            voters.remove(&m.host);
            up.remove(&m.host);
            continue;
        }
        if let Some(host) = adds.peek() {
            return Err(format!(
                "adding {host} would make more than {MAX_VOTING_MEMBERS} voting members"
            ));
        }
        return Ok(steps);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(hosts: &[(&str, bool)], primary: &str) -> Running {
        Running {
            name: "rs".into(),
            version: 1,
            term: 1,
            primary: Some(primary.into()),
            members: hosts
                .iter()
                .enumerate()
                .map(|(i, (h, up))| RunningMember {
                    id: i as i32,
                    host: (*h).into(),
                    votes: 1,
                    up: *up,
                })
                .collect(),
        }
    }

    fn declared(members: &[String]) -> Declared<'_> {
        Declared {
            name: "rs",
            members,
            allow_even: false,
            allow_fewer: false,
        }
    }

    fn hosts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn answering(v: &[&str]) -> BTreeMap<String, Result<(), String>> {
        v.iter().map(|h| (h.to_string(), Ok(()))).collect()
    }

    #[test]
    fn nothing_to_do_when_the_members_match() {
        let r = running(&[("a:1", true), ("b:1", true), ("c:1", true)], "a:1");
        let d = hosts(&["c:1", "a:1", "b:1"]);
        assert_eq!(plan(&r, &declared(&d), &BTreeMap::new()), Ok(vec![]));
    }

    #[test]
    fn a_set_that_has_the_declared_members_needs_no_flag() {
        for have in [
            &["a:1"][..],
            &["a:1", "b:1"][..],
            &["a:1", "b:1", "c:1", "d:1"][..],
        ] {
            let r = running(&have.iter().map(|h| (*h, true)).collect::<Vec<_>>(), "a:1");
            let d = hosts(have);
            assert_eq!(plan(&r, &declared(&d), &BTreeMap::new()), Ok(vec![]));
        }
        // A change to one or two members still needs it.
        let r = running(&[("a:1", true), ("b:1", true)], "a:1");
        let e = plan(&r, &declared(&hosts(&["a:1"])), &BTreeMap::new()).unwrap_err();
        assert!(e.contains("--allow-fewer-than-three"), "{e}");
    }

    #[test]
    fn grows_one_voter_at_a_time_and_shrinks_with_a_step_down_last() {
        let r = running(&[("a:1", true), ("b:1", true), ("c:1", true)], "a:1");
        let five = hosts(&["a:1", "b:1", "c:1", "d:1", "e:1"]);
        assert_eq!(
            plan(&r, &declared(&five), &answering(&["d:1", "e:1"])),
            Ok(vec![Step::Add("d:1".into()), Step::Add("e:1".into())])
        );
        let r = running(
            &[
                ("a:1", true),
                ("b:1", true),
                ("c:1", true),
                ("d:1", true),
                ("e:1", true),
            ],
            "a:1",
        );
        let three = hosts(&["c:1", "d:1", "e:1"]);
        assert_eq!(
            plan(&r, &declared(&three), &BTreeMap::new()),
            Ok(vec![
                Step::Remove("b:1".into()),
                Step::StepDown("a:1".into()),
                Step::Remove("a:1".into()),
            ])
        );
    }

    #[test]
    fn a_dead_member_is_replaced_by_adding_first() {
        let r = running(&[("a:1", true), ("b:1", true), ("c:1", false)], "a:1");
        let d = hosts(&["a:1", "b:1", "d:1"]);
        assert_eq!(
            plan(&r, &declared(&d), &answering(&["d:1"])),
            Ok(vec![Step::Add("d:1".into()), Step::Remove("c:1".into())])
        );
    }

    #[test]
    fn a_majority_is_replaced_in_steps_while_a_member_is_down() {
        // a and c answer, a majority of three: every step keeps one up.
        let r = running(&[("a:1", true), ("b:1", false), ("c:1", true)], "a:1");
        let d = hosts(&["d:1", "c:1", "e:1"]);
        assert_eq!(
            plan(&r, &declared(&d), &answering(&["d:1", "e:1"])),
            Ok(vec![
                Step::Add("d:1".into()),
                Step::Add("e:1".into()),
                Step::Remove("b:1".into()),
                Step::StepDown("a:1".into()),
                Step::Remove("a:1".into()),
            ])
        );
    }

    #[test]
    fn at_seven_voters_a_member_leaves_before_the_next_joins() {
        let seven: Vec<(&str, bool)> = ["a:1", "b:1", "c:1", "d:1", "e:1", "f:1", "g:1"]
            .iter()
            .map(|h| (*h, *h != "g:1"))
            .collect();
        let r = running(&seven, "a:1");
        let d = hosts(&["a:1", "b:1", "c:1", "d:1", "e:1", "f:1", "h:1"]);
        assert_eq!(
            plan(&r, &declared(&d), &answering(&["h:1"])),
            Ok(vec![Step::Remove("g:1".into()), Step::Add("h:1".into())])
        );
    }

    #[test]
    fn unsafe_requests_are_refused_in_one_line() {
        let r = running(&[("a:1", true), ("b:1", true), ("c:1", true)], "a:1");
        let renamed = Declared {
            name: "other",
            members: &hosts(&["a:1", "b:1", "c:1"]),
            allow_even: false,
            allow_fewer: false,
        };
        let e = plan(&r, &renamed, &BTreeMap::new()).unwrap_err();
        assert!(e.contains("cannot be renamed"), "{e}");

        let four = hosts(&["a:1", "b:1", "c:1", "d:1"]);
        let e = plan(&r, &declared(&four), &answering(&["d:1"])).unwrap_err();
        assert!(e.contains("--allow-even-voters"), "{e}");
        let even_ok = Declared {
            allow_even: true,
            ..declared(&four)
        };
        assert_eq!(
            plan(&r, &even_ok, &answering(&["d:1"])),
            Ok(vec![Step::Add("d:1".into())])
        );

        for few in [hosts(&["a:1"]), hosts(&["a:1", "b:1"])] {
            let e = plan(&r, &declared(&few), &BTreeMap::new()).unwrap_err();
            assert!(e.contains("--allow-fewer-than-three"), "{e}");
            assert!(e.contains("no majority"), "{e}");
            assert_eq!(e.lines().count(), 1, "{e}");
            let accepted = Declared {
                allow_fewer: true,
                ..declared(&few)
            };
            assert!(plan(&r, &accepted, &BTreeMap::new()).is_ok());
        }

        let twice = hosts(&["a:1", "b:1", "b:1"]);
        let e = plan(&r, &declared(&twice), &BTreeMap::new()).unwrap_err();
        assert!(e.contains("declared twice"), "{e}");

        let silent = hosts(&["a:1", "b:1", "c:1", "d:1", "e:1"]);
        let mut new = answering(&["d:1"]);
        new.insert("e:1".into(), Err("e:1 does not answer".into()));
        let e = plan(&r, &declared(&silent), &new).unwrap_err();
        assert!(e.starts_with("cannot add e:1: e:1 does not answer"), "{e}");

        for e in [
            plan(&r, &renamed, &BTreeMap::new()).unwrap_err(),
            plan(&r, &declared(&four), &BTreeMap::new()).unwrap_err(),
        ] {
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }

    #[test]
    fn a_removal_that_leaves_no_majority_up_is_refused() {
        // One of five down: shrinking to one member is safe at every step.
        let r = running(
            &[
                ("a:1", true),
                ("b:1", true),
                ("c:1", true),
                ("d:1", true),
                ("e:1", false),
            ],
            "a:1",
        );
        let one = hosts(&["a:1"]);
        let one = Declared {
            allow_fewer: true,
            ..declared(&one)
        };
        assert_eq!(
            plan(&r, &one, &BTreeMap::new()),
            Ok(["e:1", "b:1", "c:1", "d:1"]
                .map(|h| Step::Remove(h.into()))
                .to_vec())
        );

        // Two of five down, and the live ones are the ones to go.
        let r = running(
            &[
                ("a:1", true),
                ("b:1", true),
                ("c:1", false),
                ("d:1", false),
                ("e:1", true),
            ],
            "a:1",
        );
        let d = hosts(&["a:1", "c:1", "d:1"]);
        let e = plan(&r, &declared(&d), &BTreeMap::new()).unwrap_err();
        assert!(
            e.contains("removing b:1 would leave 2 of 4 voting members up, not a majority"),
            "{e}"
        );
        assert!(e.contains("bring c:1, d:1 back first"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}
