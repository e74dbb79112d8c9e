//! `simplechat replset plan` and `apply`: read the running configuration
//! from the primary, plan the safe steps to the declared members
//! ([`super::plan`]), and take them one at a time, each followed by a
//! bounded wait that says what it waits for.
//!
//! Every step is planned afresh from what the primary reports, so an apply
//! that was interrupted, or that runs again, continues from where the set
//! is (idempotent), and a member that failed meanwhile is seen before the
//! next step.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use mongodb::bson::{doc, Bson, Document};
use mongodb::options::{ClientOptions, ReadPreference, SelectionCriteria, ServerAddress};
use mongodb::Database;
use tokio::time::Instant;

use super::config;
use super::plan::{self, Declared, Running, RunningMember, Step};
use crate::mongo::errors::{codes, command_code as code, user_database_hint, Signals};

/// mongod's `ExceededTimeLimit`: `replSetStepDown` found no electable
/// secondary caught up within `secondaryCatchUpPeriodSecs`.
const EXCEEDED_TIME_LIMIT: i32 = 262;
use crate::mongo::{
    bound_waits, connect, lookup, none_resolves, options, reason, Connection, Login, Lookup,
    Purpose, Unusable,
};
use crate::retry::{poll_until, Check, PollError};

/// What `replset plan` / `apply` are asked to converge to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembersRequest {
    /// The replica set's name; it must be the running set's.
    pub name: String,
    /// Every member, as `host:port` (the seed list, too).
    pub members: Vec<String>,
    /// Connection string for credentials and options (hosts ignored).
    pub uri: Option<String>,
    /// The members' key file: authenticate as `__system@local` with it (what
    /// the initiating member's unit does once access control is on).
    pub key_file: Option<std::path::PathBuf>,
    /// Accept an even number of voting members.
    pub allow_even: bool,
    /// Accept one or two voting members.
    pub allow_fewer: bool,
    /// Bound, in seconds, on each wait (a new member's initial sync, a
    /// configuration's commitment, an election after a step-down).
    pub wait_secs: u64,
}

/// The set as it was found and the steps that lead to the declared members.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// What the primary reported.
    pub running: Running,
    /// Empty when the set already has the declared members.
    pub steps: Vec<Step>,
}

/// Reads the running set and plans; changes nothing. A wait for new
/// members that does not end at once is said through `progress`, which
/// the command line prints apart from the plan. Errors: one line.
pub async fn plan(
    request: &MembersRequest,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Planned, String> {
    let session = Session::open(request).await?;
    // A plan is a preview: it waits for new members briefly.
    let result = session
        .reachable(session.plan(request, Duration::from_secs(5).min(session.wait), progress))
        .await;
    session.close().await;
    result
}

/// What `apply` reports while it works: each step as it is taken, and
/// lines on what it waits for. Its `Display` is the line printed.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// Step `number` (from 1) begins.
    Step {
        /// Its place among the steps this run took.
        number: usize,
        /// The step.
        step: &'a plan::Step,
    },
    /// A line on a wait or a check within a step, indented.
    Detail(&'a str),
}

impl fmt::Display for Progress<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Progress::Step { number, step } => write!(f, "step {number}: {step}"),
            Progress::Detail(line) => f.write_str(line),
        }
    }
}

/// Plans and takes the steps, reporting through `progress` each step as
/// it begins and what it waits for. Returns the last line of the
/// summary; errors are one line.
pub async fn apply(
    request: &MembersRequest,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<String, String> {
    let session = Session::open(request).await?;
    let result = session.apply(request, progress).await;
    session.close().await;
    result
}

/// `members a, b, c (configuration version V, term T)`.
pub fn describe(running: &Running) -> String {
    let hosts: Vec<&str> = running.members.iter().map(|m| m.host.as_str()).collect();
    format!(
        "members {} (configuration version {}, term {})",
        hosts.join(", "),
        running.version,
        running.term
    )
}

/// What a wait for the set to settle waits for, shown after "waiting up
/// to N s" and "gave up after N s waiting".
enum Awaited {
    /// A change still pending, as `unsettled` words it.
    Pending(String),
    /// A primary: no server could be selected, for these causes.
    Primary(String),
    /// The set answered with an error, shown as it is.
    Error(String),
}

impl std::fmt::Display for Awaited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Awaited::Pending(what) => write!(f, " for {what}"),
            Awaited::Primary(why) => write!(f, " for a primary to answer ({why})"),
            Awaited::Error(why) => write!(f, ": {why}"),
        }
    }
}

/// Why a step was not taken.
enum StepError {
    /// The configuration changed between the plan and the step: another
    /// reconfiguration ran meanwhile.
    Overtaken(String),
    /// Anything else, as one line.
    Failed(String),
}

impl From<String> for StepError {
    fn from(why: String) -> Self {
        StepError::Failed(why)
    }
}

impl From<&str> for StepError {
    fn from(why: &str) -> Self {
        StepError::Failed(why.to_owned())
    }
}

/// How long after one new member's refusal the others' verdicts are still
/// taken ([`Session::check_new`]).
const REFUSALS_TOGETHER: Duration = Duration::from_millis(500);

struct Session {
    conn: Connection,
    /// The connection string's options, for the connections to new
    /// members, which sign in as it says (not with the key file).
    base: ClientOptions,
    /// What signs in to the set (the key file's user when one is given).
    login: Login,
    /// What signs in with `base`: the connection string's password, to
    /// keep out of errors.
    base_login: Login,
    wait: Duration,
}

impl Session {
    async fn open(request: &MembersRequest) -> Result<Session, String> {
        config::check_name(&request.name)?;
        let members = config::normalize_members(&request.members)?;
        // The number of voting members is checked by the plan, and only
        // when the set must change: a set that already has the declared
        // members is left alone, whatever their number.
        let wait = Duration::from_secs(request.wait_secs.max(1));
        let (mut base, login) = match &request.uri {
            Some(uri) => options(uri).await?,
            None => (ClientOptions::default(), Login::default()),
        };
        // The driver's own waits (5 s by default) must not outlast ours.
        bound_waits(&mut base, wait);
        let mut o = base.clone();
        o.hosts = members
            .iter()
            .map(|h| {
                ServerAddress::parse(h)
                    .map_err(|e| format!("member {h}: {}", reason(&e, login.secret.as_deref())))
            })
            .collect::<Result<_, _>>()?;
        // The set is read through any declared member that answers; when
        // the resolver says none of their names exists here, none ever
        // will answer, and waiting out the bound would only hide that.
        let named: Vec<(String, ServerAddress)> = request
            .members
            .iter()
            .map(|written| written.trim().to_owned())
            .zip(o.hosts.iter().cloned())
            .collect();
        if let Some(which) = none_resolves(&named).await {
            return Err(format!(
                "no --member resolves from this machine: {which}; the set is reached through \
                 them, so at least one must resolve here: check their spelling, and /etc/hosts \
                 or DNS on this machine; nothing changed"
            ));
        }
        // The driver learns the set's name from the members, so that a name
        // that differs from the declared one is reported by the plan (one
        // line) rather than as servers that cannot be selected.
        o.repl_set_name = None;
        o.direct_connection = None;
        // mongod's internal user `__system@local` accepts the key file's
        // content (white space removed) as its password over SCRAM-SHA-256;
        // newer servers refuse SCRAM-SHA-1 for it (mongod's own jstests
        // authenticate `__system` so; key files:
        // <https://www.mongodb.com/docs/manual/core/security-internal-authentication/#keyfiles>).
        let base_login = login.clone();
        let login = match &request.key_file {
            Some(path) => {
                let key = super::user::read_key_file(path)?;
                o.credential = Some(
                    mongodb::options::Credential::builder()
                        .username("__system".to_owned())
                        .password(key.clone())
                        .source("local".to_owned())
                        .mechanism(mongodb::options::AuthMechanism::ScramSha256)
                        .build(),
                );
                Login {
                    secret: Some(key),
                    user_database: None,
                }
            }
            None => login,
        };
        let conn = connect(o, login.clone(), Purpose::Store)?;
        Ok(Session {
            conn,
            base,
            login,
            base_login,
            wait,
        })
    }

    async fn close(self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.conn.client.shutdown().immediate(true),
        )
        .await;
    }

    /// `reading`, a read of the set through the declared members, or, as
    /// soon as every one of them answers as no wait cures (another program
    /// on its port, connections closed without a reply:
    /// [`Connection::none_usable`]), the error that names each and how.
    /// The driver would wait out its server selection, and apply its whole
    /// bound, for a member that never comes.
    async fn reachable<T>(
        &self,
        reading: impl std::future::Future<Output = Result<T, String>>,
    ) -> Result<T, String> {
        tokio::select! {
            result = reading => result,
            every = self.conn.found_none_usable(|_, _| {}) => {
                let each: Vec<String> = every
                    .iter()
                    .map(|(address, how)| format!("{address}: {}", self.unusable(how)))
                    .collect();
                Err(format!(
                    "no --member answers as MongoDB: {}; the set is read through them; nothing \
                     changed",
                    each.join("; ")
                ))
            }
        }
    }

    /// How a server answers that no wait cures, in words, with what to
    /// check.
    fn unusable(&self, how: &Unusable) -> String {
        match how {
            Unusable::NotMongoDb(what) => format!(
                "answered, but not as MongoDB ({what}): another program listens on that port \
                 (an HTTP server, sshd?); check its port (mongod's default is 27017)"
            ),
            Unusable::ClosesUnanswered(closes) => self.conn.closes_unanswered(closes, "--uri"),
        }
    }

    fn admin(&self) -> Database {
        self.conn.client.database("admin")
    }

    fn reason(&self, e: &mongodb::error::Error) -> String {
        reason(e, self.conn.secret.as_deref())
    }

    /// For refused credentials, where the user was looked up when the
    /// connection string left that to its path (with a leading space);
    /// otherwise nothing.
    fn refusal_hint(&self, e: &mongodb::error::Error) -> String {
        match self.login.user_database.as_deref() {
            Some(db) if Signals::of(e).authentication => format!(" {}", user_database_hint(db)),
            _ => String::new(),
        }
    }

    /// Why the set did not answer: for a server selection timeout, whose
    /// text only says "No available servers", the causes the driver saw
    /// (as `replset status` names them).
    fn why(&self, e: &mongodb::error::Error) -> String {
        if Signals::of(e).server_selection {
            if let Some(why) = self.conn.not_initiated() {
                return why;
            }
            if let Some(why) = self.conn.why_unreachable() {
                return format!("no primary answers: {why}");
            }
        }
        format!("{}{}", self.reason(e), self.refusal_hint(e))
    }

    /// The configuration (from the primary, with `commitmentStatus`) and
    /// each member's state.
    async fn running(&self) -> Result<(Running, Document, bool), String> {
        let reply = self
            .admin()
            .run_command(doc! { "replSetGetConfig": 1, "commitmentStatus": true })
            .await
            .map_err(|e| {
                format!(
                    "cannot read the configuration from the primary: {}",
                    self.why(&e)
                )
            })?;
        let cfg = reply
            .get_document("config")
            .map_err(|_| "replSetGetConfig answered without a config".to_owned())?
            .clone();
        let committed = reply.get_bool("commitmentStatus").unwrap_or(false);
        let status = self
            .admin()
            .run_command(doc! { "replSetGetStatus": 1 })
            .await
            .map_err(|e| format!("cannot read the replica set's status: {}", self.why(&e)))?;
        Ok((parse_running(&cfg, &status)?, cfg, committed))
    }

    /// Whether each new host answers as a replica-set member that belongs
    /// to no other set and is not a member of this one under another name,
    /// waiting up to `bound` for it to start: all at once, so that the
    /// whole check takes at most one `bound`, and only until one is
    /// refused, as one refusal stops the plan: the hosts not checked by
    /// then are left out, except those refused within [`REFUSALS_TOGETHER`]
    /// of it (checks that time out end together, at the bound, and the
    /// plan names the first refused host in declared order).
    /// `configured`: the members' hosts as the configuration writes them.
    async fn check_new(
        &self,
        name: &str,
        hosts: Vec<String>,
        configured: &[String],
        bound: Duration,
    ) -> BTreeMap<String, Result<(), String>> {
        use futures::StreamExt;
        let mut checks: futures::stream::FuturesUnordered<_> = hosts
            .into_iter()
            .map(|host| async move {
                let verdict = self.check_one(name, &host, configured, bound).await;
                (host, verdict)
            })
            .collect();
        let mut out = BTreeMap::new();
        while let Some((host, verdict)) = checks.next().await {
            let refused = verdict.is_err();
            out.insert(host, verdict);
            if refused {
                let together = Instant::now() + REFUSALS_TOGETHER;
                while let Ok(Some((host, verdict))) =
                    tokio::time::timeout_at(together, checks.next()).await
                {
                    out.insert(host, verdict);
                }
                break;
            }
        }
        out
    }

    /// One new host, as [`Session::check_new`] says. A name the resolver
    /// says does not exist here is refused at once: unlike
    /// `replSetInitiate`, whose quorum check needs every member to answer
    /// the initiating mongod, `replSetReconfig` needs only a majority of
    /// the voting members, and a new member joins without a vote
    /// (<https://www.mongodb.com/docs/manual/reference/command/replSetReconfig/>),
    /// so mongod would add a member nobody can reach. This check is what
    /// keeps such a member out, and it cannot be made from a machine where
    /// the name does not resolve.
    async fn check_one(
        &self,
        name: &str,
        host: &str,
        configured: &[String],
        bound: Duration,
    ) -> Result<(), String> {
        let address = ServerAddress::parse(host).map_err(|e| self.reason(&e))?;
        let no_such_name = |why: String| {
            format!(
                "its name does not resolve from this machine ({why}), so it cannot be checked to \
                 run, empty, with --replSet {name} before it is added: check its spelling, and \
                 /etc/hosts or DNS here (on a member, where mongod resolves it)"
            )
        };
        if let Lookup::NoSuchName(why) = lookup(&address).await {
            return Err(no_such_name(why));
        }
        let mut o = self.base.clone();
        o.hosts = vec![address.clone()];
        let conn = connect(o, self.base_login.clone(), Purpose::Direct)?;
        let admin = conn.client.database("admin");
        let deadline = Instant::now() + bound;
        let unusable = |how: &Unusable| match how {
            Unusable::NotMongoDb(_) => format!("it {}", self.unusable(how)),
            Unusable::ClosesUnanswered(closes) => conn.closes_unanswered(closes, "--uri"),
        };
        let result = poll_until(deadline, Duration::from_millis(500), || async {
            let reply = tokio::select! {
                reply = admin.run_command(doc! { "hello": 1 }) => reply,
                (_, how) = conn.found_unusable() => return Check::Failed(unusable(&how)),
            };
            match reply {
                Ok(hello) => match hello.get_str("setName") {
                    Ok(other) if other != name => Check::Failed(format!("it already belongs to replica set {other:?}")),
                    // A member answers `hello` with `me`, its host as the
                    // configuration names it
                    // (<https://www.mongodb.com/docs/manual/reference/command/hello/#mongodb-data-hello.me>):
                    // one the configuration has is this set's member,
                    // declared under another name (`127.0.0.1` for
                    // `localhost`), which adding would name twice.
                    Ok(_) => match hello.get_str("me") {
                        Ok(me) if configured.iter().any(|c| norm(c) == norm(me)) => {
                            Check::Failed(another_name(me, configured))
                        }
                        _ => Check::Done(()),
                    },
                    Err(_) if hello.get_bool("isreplicaset").unwrap_or(false) => Check::Done(()),
                    Err(_) => Check::Failed(format!(
                        "mongod at {host} is not running as a replica-set member: start it with --replSet {name}"
                    )),
                },
                Err(e) => match (lookup(&address).await, conn.unusable()) {
                    (Lookup::NoSuchName(why), _) => Check::Failed(no_such_name(why)),
                    (_, Some((_, how))) => Check::Failed(unusable(&how)),
                    _ if Signals::of(&e).server_selection => Check::NotYet(conn.why_silent()),
                    _ => Check::NotYet(reason(&e, conn.secret.as_deref())),
                },
            }
        })
        .await
        .map_err(|e| match e {
            PollError::Failed(why) => why,
            PollError::TimedOut(last) => format!(
                "it does not answer ({}): start it, with the same replica set name, before adding it",
                last.unwrap_or_else(|| conn.why_silent())
            ),
        });
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            conn.client.shutdown().immediate(true),
        )
        .await;
        result
    }

    /// The steps from the set as the primary reports it now, after
    /// checking each new member, for up to `new_bound`; a check that does
    /// not end at once is said through `progress`.
    async fn plan(
        &self,
        request: &MembersRequest,
        new_bound: Duration,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<Planned, String> {
        let members = config::normalize_members(&request.members)?;
        let (running, cfg, _) = self.running().await?;
        let known: Vec<&str> = running.members.iter().map(|m| m.host.as_str()).collect();
        let new: Vec<String> = members
            .iter()
            .filter(|h| !known.contains(&h.as_str()))
            .cloned()
            .collect();
        let configured: Vec<String> = config::member_hosts(&cfg)
            .into_iter()
            .map(str::to_owned)
            .collect();
        let waiting = format!(
            "  waiting up to {} s for {} to answer (a member to be added must run, empty, with \
             --replSet {})",
            new_bound.as_secs(),
            new.join(", "),
            request.name
        );
        let checked = super::announced(
            self.check_new(&request.name, new, &configured, new_bound),
            || progress(Progress::Detail(&waiting)),
        )
        .await;
        let declared = Declared {
            name: &request.name,
            members: &members,
            allow_even: request.allow_even,
            allow_fewer: request.allow_fewer,
        };
        let steps = plan::plan(&running, &declared, &checked)?;
        Ok(Planned { running, steps })
    }

    async fn apply(
        &self,
        request: &MembersRequest,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<String, String> {
        // Reaching the set counts towards the first wait.
        let settled_by = Instant::now() + self.wait;
        self.reachable(async {
            self.check_access().await?;
            self.wait_settled(settled_by, progress).await
        })
        .await?;
        let mut taken = 0;
        loop {
            let planned = self.plan(request, self.wait, progress).await.map_err(|e| {
                if taken == 0 {
                    format!("{e}; nothing changed")
                } else {
                    format!("{e}; {taken} step(s) were taken before this")
                }
            })?;
            let Some(step) = planned.steps.first().cloned() else {
                let now = describe(&planned.running);
                return Ok(if taken == 0 {
                    format!(
                        "replica set {} already has the declared {now}; nothing changed",
                        request.name
                    )
                } else {
                    format!("replica set {} now has {now}", request.name)
                });
            };
            taken += 1;
            progress(Progress::Step {
                number: taken,
                step: &step,
            });
            match self.take(&step, &planned.running, progress).await {
                Ok(()) => {}
                Err(StepError::Failed(e)) => return Err(e),
                Err(StepError::Overtaken(why)) => {
                    return self.overtaken(request, &why, progress).await
                }
            }
            self.wait_settled(Instant::now() + self.wait, progress)
                .await?;
        }
    }

    /// After another reconfiguration changed the set under a step: success
    /// if the set, once settled, has the declared members (another apply of
    /// the same declaration got there first), else an error saying so.
    /// Planning on from what the other run left could undo its steps, and
    /// two runs with different declarations would then take turns forever.
    async fn overtaken(
        &self,
        request: &MembersRequest,
        why: &str,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<String, String> {
        progress(Progress::Detail(&format!(
            "  another reconfiguration changed the set meanwhile ({why}); checking it against the declared members"
        )));
        self.wait_settled(Instant::now() + self.wait, progress)
            .await?;
        let (running, _, _) = self.running().await?;
        let declared: BTreeSet<String> = config::normalize_members(&request.members)?
            .into_iter()
            .collect();
        let have: BTreeSet<String> = running.members.iter().map(|m| m.host.clone()).collect();
        if have == declared {
            Ok(format!(
                "replica set {} now has the declared {} (another reconfiguration made the last change)",
                request.name,
                describe(&running)
            ))
        } else {
            Err(format!(
                "another reconfiguration ran at the same time as this one ({why}); the set now has {}: \
                 run apply again to continue from there",
                describe(&running)
            ))
        }
    }

    /// Before any step: the current configuration is committed and no
    /// member is still joining (a newly added member votes only once it
    /// has caught up; mongod refuses the next reconfig until the current
    /// one is committed). Says once what it waits for; gives up at
    /// `deadline`.
    async fn wait_settled(
        &self,
        deadline: Instant,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<(), String> {
        let first = match tokio::time::timeout_at(deadline, self.unsettled()).await {
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(pending))) => Awaited::Pending(pending),
            failed => {
                // No wait makes a primary of a set nobody initiated.
                if let Some(why) = self.conn.not_initiated() {
                    return Err(why);
                }
                match failed {
                    Ok(Err(why)) => why,
                    _ => Awaited::Primary(self.conn.why_silent()),
                }
            }
        };
        progress(Progress::Detail(&format!(
            "  waiting up to {} s{first}",
            self.wait.as_secs()
        )));
        poll_until(deadline, Duration::from_millis(250), || async {
            match self.unsettled().await {
                Ok(None) => Check::Done(()),
                Ok(Some(pending)) => Check::NotYet(Awaited::Pending(pending).to_string()),
                Err(why) => Check::NotYet(why.to_string()),
            }
        })
        .await
        .map_err(|e| match e {
            PollError::Failed(why) => why,
            PollError::TimedOut(last) => format!(
                "gave up after {} s waiting{}",
                self.wait.as_secs(),
                last.unwrap_or_else(|| first.to_string())
            ),
        })
    }

    /// What a failed read of the set leaves to wait for: a primary when no
    /// server could be selected (with the causes the driver saw), else the
    /// error as it is, prefixed by `what` was read.
    fn awaited(&self, what: &str, e: &mongodb::error::Error) -> Awaited {
        if Signals::of(e).server_selection {
            Awaited::Primary(
                self.conn
                    .why_unreachable()
                    .unwrap_or_else(|| self.reason(e)),
            )
        } else {
            Awaited::Error(format!("{what}: {}", self.reason(e)))
        }
    }

    /// Refuses at once when the set will not let these credentials read its
    /// configuration: the waits below retry what may pass (no primary yet,
    /// an election), and a refused authentication never passes.
    async fn check_access(&self) -> Result<(), String> {
        let Err(e) = self
            .admin()
            .run_command(doc! { "replSetGetConfig": 1 })
            .await
        else {
            return Ok(());
        };
        let signals = Signals::of(&e);
        if signals.authentication || signals.codes.contains(&codes::UNAUTHORIZED) {
            return Err(format!(
                "the replica set refused access ({}): give the members' key with --key-file, or a --uri whose user has the clusterManager role{}; nothing changed",
                self.reason(&e),
                self.refusal_hint(&e)
            ));
        }
        Ok(())
    }

    /// What the set still has to finish before the next step, if anything.
    async fn unsettled(&self) -> Result<Option<String>, Awaited> {
        let reply = self
            .admin()
            .run_command(doc! { "replSetGetConfig": 1, "commitmentStatus": true })
            .await
            .map_err(|e| self.awaited("cannot read the configuration from the primary", &e))?;
        let committed = reply.get_bool("commitmentStatus").unwrap_or(false);
        let cfg = reply
            .get_document("config")
            .map_err(|_| Awaited::Error("replSetGetConfig answered without a config".to_owned()))?;
        let status = self
            .admin()
            .run_command(doc! { "replSetGetStatus": 1 })
            .await
            .map_err(|e| self.awaited("cannot read the replica set's status", &e))?;
        let running = parse_running(cfg, &status).map_err(Awaited::Error)?;
        if !committed {
            return Ok(Some(format!(
                "configuration version {} to be committed (installed on a majority of the voting members)",
                running.version
            )));
        }
        let voting = status.get_i32("votingMembersCount").unwrap_or(0);
        let configured = running.members.iter().filter(|m| m.votes > 0).count() as i32;
        if voting >= configured {
            return Ok(None);
        }
        let joining: Vec<&str> = running
            .members
            .iter()
            .filter(|m| m.votes > 0 && !m.up)
            .map(|m| m.host.as_str())
            .collect();
        Ok(Some(format!(
            "{} to finish copying the data and vote ({voting} of {configured} vote now)",
            if joining.is_empty() {
                "a new member".to_owned()
            } else {
                joining.join(", ")
            }
        )))
    }

    async fn take(
        &self,
        step: &Step,
        running: &Running,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<(), StepError> {
        let bound = self.wait.as_secs();
        match step {
            Step::Add(host) => {
                let version = self
                    .reconfig(running.version, |members| {
                        let next = members
                            .iter()
                            .filter_map(|m| m.as_document().and_then(member_id))
                            .max()
                            .map_or(0, |id| id + 1);
                        members.push(Bson::Document(doc! { "_id": next, "host": host }));
                    })
                    .await?;
                progress(Progress::Detail(&format!(
                    "  configuration version {version}: waiting up to {bound} s for {host} to copy the data and vote"
                )));
                Ok(self.wait_voting(host).await?)
            }
            Step::StepDown(host) => {
                // The primary may drop connections as it steps down; the
                // outcome is checked by waiting for another primary.
                let stepped = self
                    .admin()
                    .run_command(doc! { "replSetStepDown": 60, "secondaryCatchUpPeriodSecs": 15 })
                    .await;
                if let Err(e) = stepped {
                    if code(&e) == Some(EXCEEDED_TIME_LIMIT) {
                        return Err(format!(
                            "{host} did not step down: no electable secondary caught up within 15 s ({})",
                            self.reason(&e)
                        )
                        .into());
                    }
                }
                progress(Progress::Detail(&format!(
                    "  waiting up to {bound} s for a primary other than {host}"
                )));
                Ok(self.wait_primary_other_than(host).await?)
            }
            Step::Remove(host) => {
                if running.primary.as_deref() == Some(host.as_str()) {
                    return Err(format!("{host} is still the primary; it was not removed").into());
                }
                let version = self
                    .reconfig(running.version, |members| {
                        members.retain(|m| {
                            m.as_document()
                                .and_then(|d| d.get_str("host").ok())
                                .map(|h| {
                                    config::normalize_member(h)
                                        .unwrap_or_else(|_| h.to_ascii_lowercase())
                                })
                                .as_deref()
                                != Some(host.as_str())
                        })
                    })
                    .await?;
                progress(Progress::Detail(&format!(
                    "  configuration version {version}: {host} removed"
                )));
                Ok(())
            }
        }
    }

    /// Sends the configuration `planned` (the version the step was planned
    /// from), changed by `edit`, with the next version. Returns that
    /// version. A configuration that is no longer `planned`, before or
    /// after a failure, is another reconfiguration's doing, unless it is
    /// the very version and members sent (a lost reply): mongod takes
    /// one configuration per version and refuses a version that is not
    /// greater than the installed one
    /// (<https://www.mongodb.com/docs/manual/reference/command/replSetReconfig/>),
    /// so a refusal's own text ("version 7 is not greater than version 7")
    /// would not say that.
    async fn reconfig(
        &self,
        planned: i64,
        edit: impl FnOnce(&mut Vec<Bson>),
    ) -> Result<i64, StepError> {
        let (_, mut cfg, _) = self.running().await?;
        let installed = version_of(&cfg).ok_or("the configuration has no version")?;
        if installed != planned {
            return Err(StepError::Overtaken(format!(
                "its configuration is at version {installed}, not {planned} as planned"
            )));
        }
        let version = installed + 1;
        let mut members = cfg
            .get_array("members")
            .map_err(|_| "the configuration has no members")?
            .clone();
        edit(&mut members);
        let sent = member_hosts(&members);
        cfg.insert("members", members);
        cfg.insert("version", version);
        cfg.remove("term");
        let wait_ms = i64::try_from(self.wait.as_millis()).unwrap_or(i64::MAX);
        let Err(e) = self
            .admin()
            .run_command(doc! { "replSetReconfig": cfg, "maxTimeMS": wait_ms })
            .await
        else {
            return Ok(version);
        };
        let failed = format!(
            "replSetReconfig to version {version} failed: {}",
            self.reason(&e)
        );
        // The reply may be lost (a dropped connection, maxTimeMS) after the
        // primary installed this very configuration: then it is ours, and
        // the wait for the set to settle that follows covers its commitment.
        match self.running().await {
            Ok((_, now, _))
                if version_of(&now) == Some(version)
                    && now.get_array("members").map(|m| member_hosts(m)).ok()
                        == Some(sent.clone()) =>
            {
                Ok(version)
            }
            Ok((_, now, _)) if version_of(&now) != Some(installed) => {
                Err(StepError::Overtaken(format!(
                    "version {version} was refused and the configuration is at version {} now",
                    version_of(&now).map_or_else(|| "?".to_owned(), |v| v.to_string())
                )))
            }
            _ => Err(StepError::Failed(failed)),
        }
    }

    async fn wait_voting(&self, host: &str) -> Result<(), String> {
        let deadline = Instant::now() + self.wait;
        poll_until(deadline, Duration::from_millis(250), || async {
            let status = match self.admin().run_command(doc! { "replSetGetStatus": 1 }).await {
                Ok(s) => s,
                Err(e) => return Check::NotYet(self.reason(&e)),
            };
            let state = member_state(&status, host).unwrap_or_else(|| "(not in the status)".into());
            let voting = status.get_i32("votingMembersCount").unwrap_or(0);
            let configured = match self.running().await {
                Ok((r, _, _)) => r.members.iter().filter(|m| m.votes > 0).count() as i32,
                Err(e) => return Check::NotYet(e),
            };
            if matches!(state.as_str(), "SECONDARY" | "PRIMARY") && voting >= configured {
                Check::Done(())
            } else {
                Check::NotYet(format!("{host} is {state}; {voting} of {configured} members vote"))
            }
        })
        .await
        .map_err(|e| match e {
            PollError::Failed(why) => why,
            PollError::TimedOut(last) => format!(
                "{host} was added but did not catch up and vote within {} s ({}); run apply again to continue",
                self.wait.as_secs(),
                last.unwrap_or_else(|| self.conn.why_silent())
            ),
        })
    }

    async fn wait_primary_other_than(&self, host: &str) -> Result<(), String> {
        let deadline = Instant::now() + self.wait;
        poll_until(deadline, Duration::from_millis(250), || async {
            let status = self
                .admin()
                .run_command(doc! { "replSetGetStatus": 1 })
                .selection_criteria(SelectionCriteria::ReadPreference(
                    ReadPreference::PrimaryPreferred { options: None },
                ))
                .await;
            match status {
                Ok(s) => match primary_of(&s) {
                    Some(p) if p != host => Check::Done(()),
                    Some(_) => Check::NotYet(format!("{host} is still primary")),
                    None => Check::NotYet("no primary yet".into()),
                },
                Err(e) => Check::NotYet(self.reason(&e)),
            }
        })
        .await
        .map_err(|e| match e {
            PollError::Failed(why) => why,
            PollError::TimedOut(last) => format!(
                "no other primary than {host} within {} s ({})",
                self.wait.as_secs(),
                last.unwrap_or_else(|| self.conn.why_silent())
            ),
        })
    }
}

fn member_id(d: &Document) -> Option<i64> {
    match d.get("_id")? {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        Bson::Double(f) => Some(*f as i64),
        _ => None,
    }
}

/// Each member's `_id` and normalized host, sorted: what tells one
/// configuration's members from another's (mongod adds fields of its own,
/// such as `newlyAdded` and defaults, to the members it installs).
fn member_hosts(members: &[Bson]) -> Vec<(Option<i64>, String)> {
    let mut out: Vec<(Option<i64>, String)> = members
        .iter()
        .filter_map(Bson::as_document)
        .map(|m| (member_id(m), norm(m.get_str("host").unwrap_or("?"))))
        .collect();
    out.sort();
    out
}

fn version_of(cfg: &Document) -> Option<i64> {
    match cfg.get("version")? {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        Bson::Double(f) => Some(*f as i64),
        _ => None,
    }
}

fn status_members(status: &Document) -> impl Iterator<Item = &Document> {
    status
        .get_array("members")
        .into_iter()
        .flatten()
        .filter_map(Bson::as_document)
}

/// Why a new host cannot be added: it answers as `me`, a member the
/// configuration already has under that name.
fn another_name(me: &str, configured: &[String]) -> String {
    format!(
        "it is the member the configuration names {me}, declared under another name; name each \
         member as the configuration does ({})",
        configured.join(", ")
    )
}

fn norm(host: &str) -> String {
    config::comparable(host)
}

fn member_state(status: &Document, host: &str) -> Option<String> {
    status_members(status)
        .find(|m| m.get_str("name").map(norm).as_deref() == Ok(host))
        .and_then(|m| m.get_str("stateStr").ok())
        .map(str::to_owned)
}

fn primary_of(status: &Document) -> Option<String> {
    status_members(status)
        .find(|m| m.get_str("stateStr") == Ok("PRIMARY"))
        .and_then(|m| m.get_str("name").ok())
        .map(norm)
}

/// The running set from a `replSetGetConfig` config and a
/// `replSetGetStatus` reply.
pub fn parse_running(cfg: &Document, status: &Document) -> Result<Running, String> {
    let name = cfg
        .get_str("_id")
        .map_err(|_| "the configuration has no _id".to_owned())?
        .to_owned();
    let version = version_of(cfg).ok_or("the configuration has no version")?;
    let term = match status.get("term") {
        Some(Bson::Int64(t)) => *t,
        Some(Bson::Int32(t)) => i64::from(*t),
        _ => 0,
    };
    let members = cfg
        .get_array("members")
        .map_err(|_| "the configuration has no members".to_owned())?
        .iter()
        .filter_map(Bson::as_document)
        .map(|m| {
            let host = norm(m.get_str("host").unwrap_or("?"));
            let votes = match m.get("votes") {
                Some(Bson::Int32(v)) => *v,
                Some(Bson::Int64(v)) => i32::from(*v != 0),
                Some(Bson::Double(v)) => i32::from(*v != 0.0),
                _ => 1,
            };
            let up =
                member_state(status, &host).is_some_and(|s| s == "PRIMARY" || s == "SECONDARY");
            RunningMember {
                id: member_id(m)
                    .and_then(|i| i32::try_from(i).ok())
                    .unwrap_or(-1),
                host,
                votes,
                up,
            }
        })
        .collect();
    Ok(Running {
        name,
        version,
        term,
        primary: primary_of(status),
        members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_names_a_primary_only_when_none_could_be_selected() {
        let line = |a: Awaited| format!("waiting up to 2 s{a}");
        assert_eq!(
            line(Awaited::Pending(
                "configuration version 3 to be committed".into()
            )),
            "waiting up to 2 s for configuration version 3 to be committed"
        );
        assert_eq!(
            line(Awaited::Primary("127.0.0.1:1: Connection refused".into())),
            "waiting up to 2 s for a primary to answer (127.0.0.1:1: Connection refused)"
        );
        assert_eq!(
            line(Awaited::Error(
                "cannot read the replica set's status: NotYetInitialized (94)".into()
            )),
            "waiting up to 2 s: cannot read the replica set's status: NotYetInitialized (94)"
        );
    }
}
