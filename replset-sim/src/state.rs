//! The replicated state every member shares: one log, the collections
//! materialised from it, the retryable-write table, and who is primary.
//!
//! Everything here is synchronous and guarded by one mutex; the network layer
//! never holds it across an await.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bson::{doc, oid::ObjectId, Bson, DateTime, Document, Timestamp};

use crate::error::CmdError;

pub(crate) const MAX_WIRE_VERSION: i32 = 25; // MongoDB 8.0
pub(crate) const MAX_BSON_OBJECT_SIZE: i32 = 16 * 1024 * 1024;
pub(crate) const MAX_MESSAGE_SIZE_BYTES: i32 = 48_000_000;
pub(crate) const MAX_WRITE_BATCH_SIZE: i32 = 100_000;
pub(crate) const LOGICAL_SESSION_TIMEOUT_MINUTES: i32 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Process not running.
    Down,
    /// Running but without a config that names it, and never named by one
    /// (uninitiated).
    Ghost,
    /// Running, named by an earlier config but not by the current one.
    Removed,
    /// In the config but still copying the data (initial sync).
    Startup2,
    Primary,
    Secondary,
}

impl Role {
    pub fn state_code(self) -> i32 {
        match self {
            Role::Down => 8,
            Role::Ghost => 0,
            Role::Removed => 10,
            Role::Startup2 => 5,
            Role::Primary => 1,
            Role::Secondary => 2,
        }
    }

    pub fn state_str(self) -> &'static str {
        match self {
            Role::Down => "DOWN",
            Role::Ghost => "STARTUP",
            Role::Removed => "REMOVED",
            Role::Startup2 => "STARTUP2",
            Role::Primary => "PRIMARY",
            Role::Secondary => "SECONDARY",
        }
    }
}

pub(crate) struct Member {
    pub port: u16,
    pub alive: bool,
    pub partitioned: bool,
    /// Crashed without closing anything ([`crate::Cluster::vanish`]): its
    /// connections stay open and nothing more is sent on them.
    pub silent: bool,
    pub process_id: ObjectId,
    pub started: Instant,
    pub cursors: HashMap<i64, Cursor>,
    pub next_connection_id: i64,
    /// Holds the data: a member of the first config, or one whose initial
    /// sync finished. A member added later starts empty.
    pub synced: bool,
    /// An initial-sync task is running for it.
    pub syncing: bool,
    /// Some installed config has named it (so leaving the config makes it
    /// REMOVED rather than uninitiated).
    pub was_member: bool,
}

#[derive(Clone)]
pub(crate) struct ConfigMember {
    pub id: i32,
    pub host: String,
    pub member: usize,
    /// As configured: 0 or 1.
    pub votes: i32,
    /// As configured; 0 means never primary.
    pub priority: f64,
    /// Set by the server for a new voting member until it has caught up:
    /// it does not vote and cannot be elected meanwhile (mongod 4.4+).
    pub newly_added: bool,
}

impl ConfigMember {
    /// A voting, electable member, as `replSetInitiate` and
    /// `rs.add(host)` make them.
    pub fn new(id: i32, host: String, member: usize) -> Self {
        ConfigMember {
            id,
            host,
            member,
            votes: 1,
            priority: 1.0,
            newly_added: false,
        }
    }

    /// mongod's `MemberConfig::isVoter`: votes, and not newly added.
    pub fn is_voter(&self) -> bool {
        self.votes > 0 && !self.newly_added
    }

    /// Electable: priority above 0 and not newly added (whose priority
    /// mongod treats as 0 meanwhile).
    pub fn is_electable(&self) -> bool {
        self.priority > 0.0 && !self.newly_added
    }
}

#[derive(Clone)]
pub(crate) struct Config {
    pub version: i32,
    /// The term of the primary that installed it (mongod 4.4+); a new
    /// primary bumps it when it steps up.
    pub term: i64,
    pub members: Vec<ConfigMember>,
}

impl Config {
    /// Votes needed for an election or a `w: "majority"` write: a majority
    /// of the voting members (newly added members do not count).
    pub fn majority(&self) -> usize {
        self.voters().count() / 2 + 1
    }

    pub fn voters(&self) -> impl Iterator<Item = &ConfigMember> {
        self.members.iter().filter(|m| m.is_voter())
    }

    pub fn entry(&self, member: usize) -> Option<&ConfigMember> {
        self.members.iter().find(|m| m.member == member)
    }
}

pub(crate) enum Op {
    Insert {
        ns: String,
        doc: Document,
    },
    /// One document replaced by its updated version; `updated` holds the
    /// fields the update set, for the change event's `updateDescription`.
    Update {
        ns: String,
        id: Bson,
        updated: Document,
    },
    /// One document removed by `delete`.
    Delete {
        ns: String,
        id: Bson,
    },
    Drop {
        ns: String,
    },
    DropDatabase {
        db: String,
    },
}

pub(crate) struct LogEntry {
    pub ts: Timestamp,
    pub term: i64,
    pub wall: DateTime,
    /// When the primary applied it; secondaries see it `secondary_lag` later.
    pub at: Instant,
    pub op: Op,
}

pub(crate) struct StoredDoc {
    pub doc: Document,
    /// 1-based log positions: visible to a member whose applied length is in
    /// `ins..del`.
    pub ins: usize,
    pub del: Option<usize>,
}

#[derive(Clone)]
pub(crate) struct IndexSpec {
    pub name: String,
    pub key: Document,
    pub unique: bool,
}

/// The name mongod gives the index on `_id`, which only dropping the
/// collection removes.
pub(crate) const ID_INDEX: &str = "_id_";

/// The indexes a `dropIndexes` names.
pub(crate) enum IndexTarget {
    /// `"*"`: every index but `_id`'s.
    All,
    /// One name, or a list of names.
    Names(Vec<String>),
    /// The index with this key pattern.
    Key(Document),
}

/// Whether two key patterns are the same, as mongod compares them: the
/// same fields in the same order, with numerically equal directions
/// (`{a: 1}` is `{a: 1.0}`).
fn same_key(a: &Document, b: &Document) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|((ka, va), (kb, vb))| ka == kb && crate::matcher::compare(va, vb).is_eq())
}

#[derive(Default)]
pub(crate) struct Coll {
    pub docs: Vec<StoredDoc>,
    pub indexes: Vec<IndexSpec>,
}

impl Coll {
    pub fn exists(&self) -> bool {
        !self.indexes.is_empty()
    }

    fn ensure_created(&mut self) -> bool {
        if self.indexes.is_empty() {
            self.indexes.push(IndexSpec {
                name: ID_INDEX.into(),
                key: doc! {"_id": 1},
                unique: true,
            });
            true
        } else {
            false
        }
    }
}

/// What a retryable write's session remembers, as mongod's
/// `config.transactions` does: which statements of the latest txnNumber
/// already ran.
pub(crate) struct TxnRecord {
    pub txn_number: i64,
    pub done: HashSet<i32>,
}

pub(crate) enum Cursor {
    Find {
        ns: String,
        docs: VecDeque<Document>,
    },
    Change(ChangeCursor),
}

pub(crate) enum NsFilter {
    Collection(String),
    Database(String),
    Cluster,
}

pub(crate) struct ChangeCursor {
    /// Namespace reported in cursor replies (`db.coll` or `db.$cmd.aggregate`).
    pub cursor_ns: String,
    pub filter: NsFilter,
    /// Stages after `$changeStream`, applied to each event.
    pub stages: Vec<Document>,
    /// Next 0-based log position to scan.
    pub next: usize,
    pub batch_size: Option<usize>,
    pub invalidated: bool,
    /// Set when resuming right after a drop event whose invalidate is still
    /// owed to the client.
    pub invalidate_only_at: Option<usize>,
}

pub(crate) struct State {
    pub set_name: String,
    pub election_delay: Duration,
    pub secondary_lag: Duration,
    pub members: Vec<Member>,
    pub config: Option<Config>,
    /// Members that have installed the current config (heartbeats bring it
    /// to every reachable member at once).
    pub config_installed: HashSet<usize>,
    /// How long a member added by a reconfig takes to copy the data.
    pub initial_sync: Duration,
    pub replica_set_id: ObjectId,
    pub term: i64,
    pub primary: Option<usize>,
    pub election_ts: Timestamp,
    pub election_wall: DateTime,
    pub topology_counter: i64,
    pub election_scheduled: bool,
    /// Writes waiting for their write concern now, and the most at once
    /// (what shows whether a client pipelines its majority writes).
    pub write_concern_waiting: usize,
    pub peak_write_concern_waiting: usize,
    pub preferred_candidate: Option<usize>,
    pub avoid_candidate: Option<usize>,
    pub log: Vec<LogEntry>,
    /// Log entries before this one have left the oplog
    /// ([`crate::Cluster::truncate_history`]): change streams cannot resume
    /// from them.
    pub history_floor: usize,
    /// Change streams deliver nothing past where each has read while set
    /// ([`crate::Cluster::hold_change_streams`]).
    pub change_streams_held: bool,
    /// [`crate::Cluster::stall_insert_of`]: the `_id` whose insert waits,
    /// and how long, between taking its documents' timestamps and
    /// committing.
    pub insert_stall: Option<(Bson, std::time::Duration)>,
    /// Inserts waiting so now ([`crate::Cluster::stalled_inserts`]).
    pub stalled_inserts: usize,
    /// How many commands of each name ran ([`crate::Cluster::commands_run`]).
    pub commands_run: HashMap<String, u64>,
    pub colls: BTreeMap<String, Coll>,
    pub sessions: HashMap<Vec<u8>, TxnRecord>,
    pub next_cursor_id: i64,
    pub drop_replies: Vec<(String, u32)>,
    /// [`crate::Cluster::refuse_next`]: commands to refuse unapplied, and
    /// how many more times.
    pub refuse_commands: Vec<(String, u32)>,
    pub last_ts: Timestamp,
    /// Users (`admin.system.users` and friends) and the member key.
    pub users: crate::auth::Users,
    /// `ClusterOptions::remote_clients`.
    pub remote_clients: bool,
    /// [`crate::Cluster::hold_next`]: holds armed and not yet taken.
    pub holds: Vec<Hold>,
    /// The gate of each label's holds (a command's name, unless
    /// [`crate::Cluster::hold_next_as`] names another), opened by
    /// [`crate::Cluster::release`].
    pub hold_gates: HashMap<String, tokio::sync::watch::Sender<bool>>,
    /// Commands waiting at a hold now, by the hold's label
    /// ([`crate::Cluster::held`]).
    pub held_now: HashMap<String, usize>,
}

/// One armed [`crate::Cluster::hold_next`].
pub(crate) struct Hold {
    /// What releases it and counts it.
    pub label: String,
    pub command: String,
    pub at: crate::HoldPoint,
    pub matching: std::sync::Arc<dyn Fn(&Document) -> bool + Send + Sync>,
    pub gate: tokio::sync::watch::Receiver<bool>,
}

fn unix_secs() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

/// mongod's electionId layout: a fixed marker followed by the term, so that
/// ObjectId ordering equals term ordering (the driver compares them).
pub(crate) fn election_id(term: i64) -> ObjectId {
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(&[0x7f, 0xff, 0xff, 0xff]);
    b[4..].copy_from_slice(&term.to_be_bytes());
    ObjectId::from_bytes(b)
}

pub(crate) fn optime(ts: Timestamp, t: i64) -> Document {
    doc! {"ts": ts, "t": t}
}

impl State {
    pub fn new(
        set_name: String,
        ports: &[u16],
        election_delay: Duration,
        secondary_lag: Duration,
    ) -> Self {
        State {
            set_name,
            election_delay,
            secondary_lag,
            members: ports
                .iter()
                .map(|p| Member {
                    port: *p,
                    alive: true,
                    partitioned: false,
                    silent: false,
                    process_id: ObjectId::new(),
                    started: Instant::now(),
                    cursors: HashMap::new(),
                    next_connection_id: 1,
                    synced: true,
                    syncing: false,
                    was_member: false,
                })
                .collect(),
            config: None,
            config_installed: HashSet::new(),
            initial_sync: Duration::from_millis(200),
            replica_set_id: ObjectId::new(),
            term: 0,
            primary: None,
            election_ts: Timestamp {
                time: 0,
                increment: 0,
            },
            election_wall: DateTime::from_millis(0),
            topology_counter: 0,
            election_scheduled: false,
            write_concern_waiting: 0,
            peak_write_concern_waiting: 0,
            preferred_candidate: None,
            avoid_candidate: None,
            log: Vec::new(),
            history_floor: 0,
            change_streams_held: false,
            insert_stall: None,
            stalled_inserts: 0,
            commands_run: HashMap::new(),
            colls: BTreeMap::new(),
            sessions: HashMap::new(),
            next_cursor_id: 0x1000,
            drop_replies: Vec::new(),
            refuse_commands: Vec::new(),
            last_ts: Timestamp {
                time: 0,
                increment: 0,
            },
            users: crate::auth::Users::default(),
            remote_clients: false,
            holds: Vec::new(),
            hold_gates: HashMap::new(),
            held_now: HashMap::new(),
        }
    }

    pub fn host(&self, member: usize) -> String {
        match self.config.as_ref().and_then(|c| c.entry(member)) {
            Some(e) => e.host.clone(),
            None => format!("127.0.0.1:{}", self.members[member].port),
        }
    }

    pub fn role(&self, member: usize) -> Role {
        let m = &self.members[member];
        if !m.alive {
            Role::Down
        } else if self.config.as_ref().and_then(|c| c.entry(member)).is_none() {
            if m.was_member {
                Role::Removed
            } else {
                Role::Ghost
            }
        } else if !m.synced {
            Role::Startup2
        } else if self.primary == Some(member) {
            Role::Primary
        } else {
            Role::Secondary
        }
    }

    pub fn reachable(&self, member: usize) -> bool {
        let m = &self.members[member];
        m.alive && !m.partitioned
    }

    fn reachable_voters(&self) -> Vec<usize> {
        match &self.config {
            Some(c) => c
                .voters()
                .map(|e| e.member)
                .filter(|m| self.reachable(*m))
                .collect(),
            None => Vec::new(),
        }
    }

    pub fn bump_topology(&mut self) {
        self.topology_counter += 1;
    }

    /// A primary that can no longer see a majority (or that is itself cut
    /// off) steps down. mongod does this after an election timeout; here it
    /// is immediate. Returns true when an election should be scheduled.
    pub fn check_quorum(&mut self) -> bool {
        self.refresh_installed();
        let Some(config) = &self.config else {
            return false;
        };
        let majority = config.majority();
        if let Some(p) = self.primary {
            if !self.reachable(p) || self.reachable_voters().len() < majority {
                self.primary = None;
                self.bump_topology();
            }
        }
        self.primary.is_none()
    }

    /// Elects a reachable member if a majority of voters is reachable. New
    /// term, new electionId, new topologyVersion everywhere.
    pub fn try_elect(&mut self) -> bool {
        if self.primary.is_some() {
            return false;
        }
        let Some(config) = &self.config else {
            return false;
        };
        let voters = self.reachable_voters();
        if voters.len() < config.majority() {
            return false;
        }
        let electable: Vec<usize> = voters
            .iter()
            .copied()
            .filter(|m| {
                self.members[*m].synced && config.entry(*m).is_some_and(ConfigMember::is_electable)
            })
            .collect();
        let Some(first) = electable.first().copied() else {
            return false;
        };
        let winner = self
            .preferred_candidate
            .filter(|c| electable.contains(c))
            .or_else(|| {
                electable
                    .iter()
                    .copied()
                    .find(|m| Some(*m) != self.avoid_candidate)
            })
            .unwrap_or(first);
        self.preferred_candidate = None;
        self.avoid_candidate = None;
        self.term += 1;
        self.primary = Some(winner);
        self.election_ts = self.next_ts();
        self.election_wall = DateTime::now();
        // A new primary bumps the config term (mongod 4.4+ step-up reconfig).
        let term = self.term;
        if let Some(c) = self.config.as_mut() {
            c.term = term;
        }
        self.config_installed.clear();
        self.refresh_installed();
        self.bump_topology();
        self.clear_newly_added();
        true
    }

    /// Installs `config` on every reachable member it names.
    pub fn install_config(&mut self, config: Config) {
        for m in &config.members {
            self.members[m.member].was_member = true;
        }
        self.config = Some(config);
        self.config_installed.clear();
        self.refresh_installed();
        self.bump_topology();
    }

    /// Reachable members of the config learn it (through heartbeats).
    pub fn refresh_installed(&mut self) {
        let Some(config) = &self.config else {
            return;
        };
        let reachable: Vec<usize> = config
            .members
            .iter()
            .map(|m| m.member)
            .filter(|m| self.reachable(*m))
            .collect();
        self.config_installed.extend(reachable);
    }

    /// `commitmentStatus`: a majority of the voting members have installed
    /// the current config. (The oplog half of mongod's condition always
    /// holds here: the log is shared and majority-committed.)
    pub fn config_committed(&self) -> bool {
        match &self.config {
            Some(c) => {
                c.voters()
                    .filter(|m| self.config_installed.contains(&m.member))
                    .count()
                    >= c.majority()
            }
            None => false,
        }
    }

    /// The primary's automatic reconfig: a newly added member that has
    /// finished its initial sync and is SECONDARY loses `newlyAdded` and
    /// votes; each removal is its own config version, as in mongod.
    pub fn clear_newly_added(&mut self) -> bool {
        if self.primary.is_none() {
            return false;
        }
        let mut changed = false;
        loop {
            let Some(config) = self.config.clone() else {
                return changed;
            };
            let ready = config.members.iter().position(|m| {
                m.newly_added && self.members[m.member].synced && self.reachable(m.member)
            });
            let Some(i) = ready else {
                return changed;
            };
            let mut next = config;
            next.members[i].newly_added = false;
            next.version += 1;
            next.term = self.term;
            self.install_config(next);
            changed = true;
        }
    }

    /// The primary gives up its role; the next election prefers someone
    /// else, as a stepped-down mongod refuses to stand for a while.
    pub fn step_down(&mut self) {
        if let Some(p) = self.primary.take() {
            self.avoid_candidate = Some(p);
            self.bump_topology();
        }
    }

    pub fn next_ts(&mut self) -> Timestamp {
        let now = unix_secs();
        self.last_ts = if now > self.last_ts.time {
            Timestamp {
                time: now,
                increment: 1,
            }
        } else {
            Timestamp {
                time: self.last_ts.time,
                increment: self.last_ts.increment + 1,
            }
        };
        self.last_ts
    }

    /// How many log entries `member` has applied by `now`.
    pub fn visible_len(&self, member: usize, now: Instant) -> usize {
        if !self.members[member].synced {
            return 0;
        }
        if self.primary == Some(member) || self.secondary_lag.is_zero() {
            return self.log.len();
        }
        let lag = self.secondary_lag;
        self.log.partition_point(|e| e.at + lag <= now)
    }

    /// When the next entry secondaries have not applied yet becomes visible
    /// to them (the same instant for every secondary).
    pub fn next_visibility(&self, now: Instant) -> Option<Instant> {
        if self.secondary_lag.is_zero() {
            return None;
        }
        let lag = self.secondary_lag;
        let n = self.log.partition_point(|e| e.at + lag <= now);
        self.log.get(n).map(|e| e.at + lag)
    }

    pub fn last_optime(&self, len: usize) -> (Timestamp, i64, DateTime) {
        match len.checked_sub(1).and_then(|i| self.log.get(i)) {
            Some(e) => (e.ts, e.term, e.wall),
            None => (
                Timestamp {
                    time: 0,
                    increment: 0,
                },
                -1,
                DateTime::from_millis(0),
            ),
        }
    }

    pub fn cluster_time_fields(&self, out: &mut Document, operation_time: Timestamp) {
        out.insert(
            "$clusterTime",
            doc! {
                "clusterTime": self.last_ts,
                "signature": {
                    "hash": Bson::Binary(bson::Binary {
                        subtype: bson::spec::BinarySubtype::Generic,
                        bytes: vec![0u8; 20],
                    }),
                    "keyId": 0i64,
                },
            },
        );
        out.insert("operationTime", operation_time);
    }

    pub fn topology_version(&self, member: usize) -> Document {
        doc! {
            "processId": self.members[member].process_id,
            "counter": self.topology_counter,
        }
    }

    pub fn hello(&self, member: usize, legacy: bool, hello_ok: bool, conn_id: i64) -> Document {
        let writable_key = if legacy {
            "ismaster"
        } else {
            "isWritablePrimary"
        };
        let role = self.role(member);
        let mut d = doc! {"topologyVersion": self.topology_version(member)};
        match (&self.config, role) {
            (Some(config), Role::Primary | Role::Secondary | Role::Startup2) => {
                // mongod lists priority-0 members (newly added ones count as
                // such) under `passives`, not `hosts`.
                let (hosts, passives): (Vec<&ConfigMember>, Vec<&ConfigMember>) =
                    config.members.iter().partition(|m| m.is_electable());
                let names = |v: Vec<&ConfigMember>| -> Vec<Bson> {
                    v.iter().map(|m| Bson::String(m.host.clone())).collect()
                };
                d.insert("hosts", names(hosts));
                if !passives.is_empty() {
                    d.insert("passives", names(passives));
                }
                if config.entry(member).is_some_and(|m| !m.is_electable()) {
                    d.insert("passive", true);
                }
                d.insert("setName", self.set_name.clone());
                d.insert("setVersion", config.version);
                d.insert(writable_key, role == Role::Primary);
                d.insert("secondary", role == Role::Secondary);
                if let Some(p) = self.primary {
                    d.insert("primary", self.host(p));
                }
                d.insert("me", self.host(member));
                if role == Role::Primary {
                    d.insert("electionId", election_id(self.term));
                }
                let (ts, t, wall) = self.last_optime(self.visible_len(member, Instant::now()));
                d.insert(
                    "lastWrite",
                    doc! {
                        "opTime": optime(ts, t),
                        "lastWriteDate": wall,
                        "majorityOpTime": optime(ts, t),
                        "majorityWriteDate": wall,
                    },
                );
            }
            _ => {
                d.insert(writable_key, false);
                d.insert("secondary", false);
                d.insert("info", "Does not have a valid replica set config");
                d.insert("isreplicaset", true);
            }
        }
        d.insert("maxBsonObjectSize", MAX_BSON_OBJECT_SIZE);
        d.insert("maxMessageSizeBytes", MAX_MESSAGE_SIZE_BYTES);
        d.insert("maxWriteBatchSize", MAX_WRITE_BATCH_SIZE);
        d.insert("localTime", DateTime::now());
        d.insert(
            "logicalSessionTimeoutMinutes",
            LOGICAL_SESSION_TIMEOUT_MINUTES,
        );
        d.insert("connectionId", conn_id);
        d.insert("minWireVersion", 0);
        d.insert("maxWireVersion", MAX_WIRE_VERSION);
        d.insert("readOnly", false);
        if hello_ok {
            d.insert("helloOk", true);
        }
        d.insert("ok", 1.0);
        d
    }

    pub fn new_cursor_id(&mut self) -> i64 {
        self.next_cursor_id += 1;
        self.next_cursor_id
    }

    /// Appends to the shared log; the entry is majority-committed by
    /// construction (see FIDELITY.md).
    pub fn append(&mut self, op: Op) -> usize {
        let ts = self.next_ts();
        self.log.push(LogEntry {
            ts,
            term: self.term,
            wall: DateTime::now(),
            at: Instant::now(),
            op,
        });
        self.log.len()
    }

    /// Inserts one document (already carrying `_id`) into `ns`, enforcing
    /// unique indexes. Returns the log position.
    pub fn insert_doc(&mut self, ns: &str, doc: Document) -> Result<usize, CmdError> {
        let coll = self.colls.entry(ns.to_string()).or_default();
        coll.ensure_created();
        for idx in &coll.indexes {
            if !idx.unique {
                continue;
            }
            let key_of = |d: &Document| -> Vec<Bson> {
                idx.key
                    .keys()
                    .map(|k| crate::matcher::sort_value(d, k).clone())
                    .collect()
            };
            let new_key = key_of(&doc);
            let clash = coll.docs.iter().filter(|s| s.del.is_none()).any(|s| {
                key_of(&s.doc)
                    .iter()
                    .zip(new_key.iter())
                    .all(|(a, b)| crate::matcher::values_equal(a, b))
            });
            if clash {
                let dup: Document = idx
                    .key
                    .keys()
                    .zip(new_key.iter())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let dup_shown = dup
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let mut e = CmdError::new(
                    11000,
                    "DuplicateKey",
                    format!(
                        "E11000 duplicate key error collection: {ns} index: {} dup key: {{ {dup_shown} }}",
                        idx.name
                    ),
                );
                e.extra = Some(Box::new(
                    doc! {"keyPattern": idx.key.clone(), "keyValue": dup},
                ));
                return Err(e);
            }
        }
        let pos = self.append(Op::Insert {
            ns: ns.to_string(),
            doc: doc.clone(),
        });
        let coll = self.colls.get_mut(ns).expect("created above");
        coll.docs.push(StoredDoc {
            doc,
            ins: pos,
            del: None,
        });
        Ok(pos)
    }

    /// Applies an update to the current version of the document with `_id`
    /// `id`: the old version ends at the new log entry, the new one starts
    /// there. `None` when no such document exists.
    /// Sets `updated`'s fields in the document with `_id` `id`. `Ok(None)`
    /// when there is no such document, or when every field already has its
    /// value: mongod writes no oplog entry for an update that changes
    /// nothing, so no change event either, and counts it in `n` but not in
    /// `nModified`
    /// (<https://www.mongodb.com/docs/manual/reference/command/update/#output>).
    /// A result larger than 16 MiB is refused as mongod refuses it (17419).
    pub fn update_doc(
        &mut self,
        ns: &str,
        id: &Bson,
        updated: Document,
    ) -> Result<Option<usize>, CmdError> {
        let Some(coll) = self.colls.get(ns) else {
            return Ok(None);
        };
        let Some(index) = coll.docs.iter().position(|d| {
            d.del.is_none()
                && d.doc
                    .get("_id")
                    .is_some_and(|v| crate::matcher::values_equal(v, id))
        }) else {
            return Ok(None);
        };
        let mut doc = coll.docs[index].doc.clone();
        if updated.iter().all(|(k, v)| doc.get(k) == Some(v)) {
            return Ok(None);
        }
        for (k, v) in updated.iter() {
            doc.insert(k.clone(), v.clone());
        }
        let size = bson::to_vec(&doc).map_or(usize::MAX, |b| b.len());
        if size > MAX_BSON_OBJECT_SIZE as usize {
            return Err(CmdError::new(
                17419,
                "Location17419",
                format!("Resulting document after update is larger than {MAX_BSON_OBJECT_SIZE}"),
            ));
        }
        let pos = self.append(Op::Update {
            ns: ns.to_string(),
            id: id.clone(),
            updated,
        });
        let Some(coll) = self.colls.get_mut(ns) else {
            return Ok(None);
        };
        coll.docs[index].del = Some(pos);
        coll.docs.push(StoredDoc {
            doc,
            ins: pos,
            del: None,
        });
        Ok(Some(pos))
    }

    /// Removes the document whose `_id` is `id`: its own log entry (and
    /// change event). `None` when no such document is there.
    pub fn delete_doc(&mut self, ns: &str, id: &Bson) -> Option<usize> {
        let index = self.colls.get(ns)?.docs.iter().position(|d| {
            d.del.is_none()
                && d.doc
                    .get("_id")
                    .is_some_and(|v| crate::matcher::values_equal(v, id))
        })?;
        let pos = self.append(Op::Delete {
            ns: ns.to_string(),
            id: id.clone(),
        });
        self.colls.get_mut(ns)?.docs[index].del = Some(pos);
        Some(pos)
    }

    pub fn create_collection(&mut self, ns: &str) {
        self.colls
            .entry(ns.to_string())
            .or_default()
            .ensure_created();
    }

    pub fn drop_collection(&mut self, ns: &str) -> bool {
        let exists = self.colls.get(ns).is_some_and(|c| c.exists());
        if !exists {
            return false;
        }
        let pos = self.append(Op::Drop { ns: ns.to_string() });
        if let Some(c) = self.colls.get_mut(ns) {
            for d in c.docs.iter_mut().filter(|d| d.del.is_none()) {
                d.del = Some(pos);
            }
            c.indexes.clear();
        }
        true
    }

    pub fn drop_database(&mut self, db: &str) {
        let prefix = format!("{db}.");
        let names: Vec<String> = self
            .colls
            .iter()
            .filter(|(k, c)| k.starts_with(&prefix) && c.exists())
            .map(|(k, _)| k.clone())
            .collect();
        for ns in &names {
            self.drop_collection(ns);
        }
        self.append(Op::DropDatabase { db: db.to_string() });
    }

    pub fn create_index(
        &mut self,
        ns: &str,
        spec: IndexSpec,
    ) -> Result<(usize, usize, bool), CmdError> {
        let coll = self.colls.entry(ns.to_string()).or_default();
        let created = coll.ensure_created();
        let before = coll.indexes.len();
        if let Some(existing) = coll.indexes.iter().find(|i| i.name == spec.name) {
            if existing.key != spec.key {
                return Err(CmdError::new(
                    86,
                    "IndexKeySpecsConflict",
                    format!(
                        "An existing index has the same name as the requested index but a \
                         different key. Requested index: {}, existing index: {}",
                        spec.key, existing.key
                    ),
                ));
            }
            if existing.unique != spec.unique {
                return Err(CmdError::new(
                    85,
                    "IndexOptionsConflict",
                    format!(
                        "An equivalent index already exists with the same name but different \
                         options. Requested index: {}",
                        spec.name
                    ),
                ));
            }
        } else if let Some(existing) = coll.indexes.iter().find(|i| i.key == spec.key) {
            if existing.unique != spec.unique || existing.name != spec.name {
                return Err(CmdError::new(
                    85,
                    "IndexOptionsConflict",
                    format!(
                        "An equivalent index already exists with a different name and options. \
                         Requested index: {}, existing index: {}",
                        spec.name, existing.name
                    ),
                ));
            }
        } else {
            coll.indexes.push(spec);
        }
        let after = coll.indexes.len();
        Ok((if created { 1 } else { before }, after, created))
    }

    /// Drops the indexes `which` names from `ns`, all of them or none
    /// (mongod drops a list in one write unit, so a name it cannot find
    /// leaves every index in place). Returns how many indexes the
    /// collection had (`nIndexesWas`). Errors as mongod's
    /// (`src/mongo/db/catalog/drop_indexes.cpp`): `NamespaceNotFound` (26)
    /// for a collection that does not exist, `IndexNotFound` (27) for a
    /// name or key pattern no index has, `InvalidOptions` (72) for the
    /// `_id` index.
    pub fn drop_indexes(&mut self, ns: &str, which: &IndexTarget) -> Result<usize, CmdError> {
        let Some(coll) = self.colls.get_mut(ns).filter(|c| c.exists()) else {
            return Err(CmdError::new(
                26,
                "NamespaceNotFound",
                format!("ns not found {ns}"),
            ));
        };
        let was = coll.indexes.len();
        let id_index = || CmdError::new(72, "InvalidOptions", "cannot drop _id index");
        let names: Vec<String> = match which {
            IndexTarget::All => {
                coll.indexes.retain(|i| i.name == ID_INDEX);
                return Ok(was);
            }
            IndexTarget::Key(key) => {
                let Some(found) = coll.indexes.iter().find(|i| same_key(&i.key, key)) else {
                    return Err(CmdError::new(
                        27,
                        "IndexNotFound",
                        format!("can't find index with key: {key}"),
                    ));
                };
                vec![found.name.clone()]
            }
            IndexTarget::Names(names) => names.clone(),
        };
        for name in &names {
            if !coll.indexes.iter().any(|i| i.name == *name) {
                return Err(CmdError::new(
                    27,
                    "IndexNotFound",
                    format!("index not found with name [{name}]"),
                ));
            }
            if name == ID_INDEX {
                return Err(id_index());
            }
        }
        coll.indexes.retain(|i| !names.contains(&i.name));
        Ok(was)
    }

    /// Documents of `ns` as `member` sees them now.
    pub fn visible_docs(&self, ns: &str, member: usize, now: Instant) -> Vec<&Document> {
        let len = self.visible_len(member, now);
        match self.colls.get(ns) {
            Some(c) => c
                .docs
                .iter()
                .filter(|d| d.ins <= len && d.del.is_none_or(|x| x > len))
                .map(|d| &d.doc)
                .collect(),
            None => Vec::new(),
        }
    }

    /// Whether the next `command` is refused ([`crate::Cluster::refuse_next`]),
    /// counting it.
    pub fn take_refusal(&mut self, command: &str) -> bool {
        take_one(&mut self.refuse_commands, command)
    }

    pub fn take_drop_reply(&mut self, command: &str) -> bool {
        take_one(&mut self.drop_replies, command)
    }

    /// The label and gate `body` (a command named `command`) waits at, at
    /// `at`, if a hold armed for it matches; the hold is used up.
    pub fn take_hold(
        &mut self,
        command: &str,
        at: crate::HoldPoint,
        body: &Document,
    ) -> Option<(String, tokio::sync::watch::Receiver<bool>)> {
        let i = self
            .holds
            .iter()
            .position(|h| h.command == command && h.at == at && (h.matching)(body))?;
        let hold = self.holds.remove(i);
        Some((hold.label, hold.gate))
    }
}

/// Counts one use of a fault injected for `command` (`(command, uses
/// left)`); false when none is left.
fn take_one(faults: &mut [(String, u32)], command: &str) -> bool {
    match faults.iter_mut().find(|(c, n)| c == command && *n > 0) {
        Some(slot) => {
            slot.1 -= 1;
            true
        }
        None => false,
    }
}
