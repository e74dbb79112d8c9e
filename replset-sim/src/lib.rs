//! A wire-level MongoDB replica-set simulator for tests.
//!
//! [`Cluster::start`] opens one loopback listener per member. Each speaks
//! enough of the MongoDB wire protocol (OP_MSG, plus the legacy OP_QUERY
//! handshake) that the official driver discovers them as a replica set,
//! monitors them with the streaming `hello` protocol, and runs the store's
//! commands against them. Tests then inject faults: [`Cluster::kill`],
//! [`Cluster::restart`], [`Cluster::step_down`], [`Cluster::partition`],
//! [`Cluster::drop_replies`] and [`Cluster::hold_change_streams`].
//!
//! The model is deliberately simple and is described, with every known
//! difference from mongod, in `FIDELITY.md` next to this crate's manifest:
//! one shared, majority-committed log; elections that happen
//! `election_delay` after the primary is lost; secondaries that see the log
//! `secondary_lag` late.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let cluster = replset_sim::Cluster::start(Default::default()).await?;
//! let uri = cluster.uri("simplechat");
//! // mongodb::Client::with_uri_str(&uri) ...
//! cluster.kill(0).await; // member 1 or 2 becomes primary after election_delay
//! # let _ = uri;
//! # Ok(())
//! # }
//! ```

mod auth;
mod changestream;
mod commands;
mod error;
mod matcher;
mod raw_strings;
mod server;
mod state;
mod wire;

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bson::oid::ObjectId;
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::{Handle, Runtime};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};

use state::{Config, ConfigMember, State};

/// Where a command [`Cluster::hold_next`] holds waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldPoint {
    /// Before it runs: it has read or written nothing yet.
    BeforeRunning,
    /// After it ran, before its reply is sent: what it wrote is committed,
    /// seen by every read and change stream, and its client hears nothing
    /// yet.
    BeforeReplying,
}

/// How to shape a simulated replica set.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Replica set name (`--replSet`), checked against the driver's
    /// `replicaSet=` and against `replSetInitiate`'s `_id`.
    pub set_name: String,
    /// Number of members (data-bearing, one vote each).
    pub members: usize,
    /// `true`: start as an initiated set with member 0 primary (term 1).
    /// `false`: every member is uninitiated (an RSGhost to the driver) until
    /// a `replSetInitiate` arrives.
    pub initiated: bool,
    /// Time from losing the primary (kill, step-down, partition) or from
    /// `replSetInitiate` until a reachable majority elects a new one.
    pub election_delay: Duration,
    /// How long after the primary applies a write secondaries see it. Writes
    /// with `w: "majority"` (or `w >= 2`) are acknowledged only after this.
    pub secondary_lag: Duration,
    /// Loopback ports, one per member; empty: ports the system picks.
    pub ports: Vec<u16>,
    /// The contents of mongod's `security.keyFile`. With a key, access
    /// control is on as in mongod: commands need an authenticated user
    /// (SCRAM-SHA-256) with the right roles, except the handshake and what
    /// the localhost exception allows while no user exists; `__system@local`
    /// authenticates with the key. Without one, nothing is enforced.
    pub key_file: Option<String>,
    /// Treat every client as connecting from another host, so that the
    /// localhost exception never applies (the listeners are on loopback,
    /// which would otherwise always qualify).
    pub remote_clients: bool,
    /// With `initiated`: how many of the first members the initial config
    /// names (`None`: all). The others run empty and uninitiated, ready to
    /// be added with `replSetReconfig`.
    pub initial_config: Option<usize>,
    /// How long a member added by `replSetReconfig` spends in initial sync
    /// (STARTUP2) before it is SECONDARY with the whole log; it needs a
    /// reachable member with the data meanwhile.
    pub initial_sync: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            set_name: "rs".to_string(),
            members: 3,
            initiated: true,
            election_delay: Duration::from_millis(500),
            secondary_lag: Duration::ZERO,
            ports: Vec::new(),
            key_file: None,
            remote_clients: false,
            initial_config: None,
            initial_sync: Duration::from_millis(200),
        }
    }
}

/// A member's network presence: its listener and every open connection.
struct Net {
    /// The port it listens on, kept while it is stopped.
    port: Option<u16>,
    listener: JoinHandle<()>,
    conns: Arc<Mutex<JoinSet<()>>>,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    /// Bumped on every log append or topology change; waiters (awaitable
    /// hello, change-stream getMore, write concern) re-check on each bump.
    changed: watch::Sender<u64>,
    timers: Mutex<Vec<AbortHandle>>,
    nets: Vec<Mutex<Option<Net>>>,
    /// A stopped member's port, bound but not listening: connections to it
    /// are refused, as to a killed mongod, and nothing else on the machine
    /// (another test's ephemeral port) can take it before the member comes
    /// back and listens on this same socket.
    reserved: Vec<Mutex<Option<TcpSocket>>>,
    /// Where every simulator task runs, whichever runtime the caller is on.
    rt: Handle,
}

fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in one connection task must not wedge the whole cluster.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        relock(&self.state)
    }

    pub(crate) fn notify(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Arms the election timer unless one is pending or a primary exists.
    pub(crate) fn schedule_election(self: &Arc<Self>, st: &mut State) {
        if st.election_scheduled || st.primary.is_some() || st.config.is_none() {
            return;
        }
        st.election_scheduled = true;
        let delay = st.election_delay;
        let me = Arc::clone(self);
        let handle = self.rt.spawn(async move {
            tokio::time::sleep(delay).await;
            let elected = {
                let mut st = me.lock();
                st.election_scheduled = false;
                st.try_elect()
            };
            if elected {
                me.notify();
            }
        });
        let mut timers = relock(&self.timers);
        timers.retain(|h| !h.is_finished());
        timers.push(handle.abort_handle());
    }

    /// Starts `member`'s initial sync unless it has the data or one runs:
    /// every `initial_sync` it checks whether it is reachable and some
    /// reachable member of the config holds the data to copy; then it is a
    /// SECONDARY with the whole log and the primary clears its
    /// `newlyAdded`. Stops when the member leaves the config.
    pub(crate) fn schedule_sync(self: &Arc<Self>, st: &mut State, member: usize) {
        let m = &mut st.members[member];
        if m.synced || m.syncing {
            return;
        }
        m.syncing = true;
        let every = st.initial_sync;
        let me = Arc::clone(self);
        let handle = self.rt.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let mut st = me.lock();
                let Some(config) = st.config.clone() else {
                    st.members[member].syncing = false;
                    return;
                };
                if config.entry(member).is_none() {
                    st.members[member].syncing = false;
                    return;
                }
                let source = config.members.iter().any(|m| {
                    m.member != member && st.members[m.member].synced && st.reachable(m.member)
                });
                if st.reachable(member) && source {
                    st.members[member].synced = true;
                    st.members[member].syncing = false;
                    st.bump_topology();
                    st.clear_newly_added();
                    if st.check_quorum() {
                        me.schedule_election(&mut st);
                    }
                    drop(st);
                    me.notify();
                    return;
                }
            }
        });
        let mut timers = relock(&self.timers);
        timers.retain(|h| !h.is_finished());
        timers.push(handle.abort_handle());
    }

    fn start_net(self: &Arc<Self>, member: usize, listener: TcpListener) {
        let port = listener.local_addr().ok().map(|a| a.port());
        let conns = Arc::new(Mutex::new(JoinSet::new()));
        let accept_conns = Arc::clone(&conns);
        let shared = Arc::clone(self);
        let listener = self.rt.spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((sock, _)) => {
                        let _ = sock.set_nodelay(true);
                        let mut set = relock(&accept_conns);
                        while set.try_join_next().is_some() {}
                        set.spawn(server::serve(Arc::clone(&shared), member, sock));
                    }
                    // Out of descriptors or similar: back off instead of spinning.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        });
        *relock(&self.nets[member]) = Some(Net {
            port,
            listener,
            conns,
        });
    }

    /// Listens on the member's fixed port, on the simulator's own runtime,
    /// so the socket belongs to the reactor that will serve it: on the
    /// socket that kept the port while the member was stopped, if any.
    async fn bind(&self, member: usize, port: u16) -> io::Result<TcpListener> {
        let reserved = relock(&self.reserved[member]).take();
        self.rt
            .spawn(async move {
                match reserved {
                    Some(socket) => socket.listen(1024),
                    None => TcpListener::bind(("127.0.0.1", port)).await,
                }
            })
            .await
            .map_err(io::Error::other)?
    }

    /// Keeps a stopped member's port (see [`Shared::reserved`]); best
    /// effort: if it cannot be bound, the member rebinds it by number.
    fn reserve(&self, member: usize, port: u16) {
        let socket = TcpSocket::new_v4().and_then(|socket| {
            socket.set_reuseaddr(true)?;
            socket.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
            Ok(socket)
        });
        *relock(&self.reserved[member]) = socket.ok();
    }

    /// Closes the listener first (so nothing new sneaks in), then every
    /// connection, and waits until all sockets are really gone.
    async fn stop_net(&self, member: usize) {
        let net = relock(&self.nets[member]).take();
        if let Some(net) = net {
            net.listener.abort();
            let _ = net.listener.await;
            if let Some(port) = net.port {
                self.reserve(member, port);
            }
            let mut set = std::mem::take(&mut *relock(&net.conns));
            set.shutdown().await;
        }
    }
}

/// A running simulated replica set. Dropping it closes every listener and
/// connection.
pub struct Cluster {
    shared: Arc<Shared>,
    ports: Vec<u16>,
    set_name: String,
    /// Present when started with [`Cluster::start_blocking`].
    own_runtime: Option<Runtime>,
}

impl Cluster {
    /// Starts `opts.members` members on 127.0.0.1 ephemeral ports. Must be
    /// called inside a Tokio runtime; the simulator's tasks run on it.
    pub async fn start(opts: ClusterOptions) -> io::Result<Cluster> {
        if opts.members == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a replica set needs at least one member",
            ));
        }
        if !opts.ports.is_empty() && opts.ports.len() != opts.members {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} ports for {} members: give one port per member",
                    opts.ports.len(),
                    opts.members
                ),
            ));
        }
        let mut listeners = Vec::new();
        for member in 0..opts.members {
            let port = opts.ports.get(member).copied().unwrap_or(0);
            listeners.push(TcpListener::bind(("127.0.0.1", port)).await?);
        }
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<io::Result<_>>()?;
        let mut st = State::new(
            opts.set_name.clone(),
            &ports,
            opts.election_delay,
            opts.secondary_lag,
        );
        st.users = auth::Users::new(opts.key_file.as_deref());
        st.remote_clients = opts.remote_clients;
        st.initial_sync = opts.initial_sync;
        if opts.initiated {
            let named = opts
                .initial_config
                .unwrap_or(opts.members)
                .clamp(1, opts.members);
            for spare in &mut st.members[named..] {
                spare.synced = false;
            }
            st.install_config(Config {
                version: 1,
                term: 0,
                members: ports[..named]
                    .iter()
                    .enumerate()
                    .map(|(i, p)| ConfigMember::new(i as i32, format!("127.0.0.1:{p}"), i))
                    .collect(),
            });
            st.preferred_candidate = Some(0);
            st.try_elect();
        }
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(st),
            changed,
            timers: Mutex::new(Vec::new()),
            nets: (0..opts.members).map(|_| Mutex::new(None)).collect(),
            reserved: (0..opts.members).map(|_| Mutex::new(None)).collect(),
            rt: Handle::current(),
        });
        for (i, l) in listeners.into_iter().enumerate() {
            shared.start_net(i, l);
        }
        Ok(Cluster {
            shared,
            ports,
            set_name: opts.set_name,
            own_runtime: None,
        })
    }

    /// Starts the cluster on a dedicated background runtime, for synchronous
    /// tests (for example ones that run the CLI as a subprocess). Drive the
    /// async fault methods with `cluster.handle().block_on(cluster.kill(0))`.
    pub fn start_blocking(opts: ClusterOptions) -> io::Result<Cluster> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("replset-sim")
            .enable_all()
            .build()?;
        let mut cluster = rt.block_on(Cluster::start(opts))?;
        cluster.own_runtime = Some(rt);
        Ok(cluster)
    }

    /// The runtime the simulator's tasks run on.
    pub fn handle(&self) -> &Handle {
        &self.shared.rt
    }

    /// `"127.0.0.1:PORT"` per member, in member order. Ports survive restarts.
    pub fn hosts(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }

    /// `mongodb://h1,h2,h3/<database>?replicaSet=<name>`.
    pub fn uri(&self, database: &str) -> String {
        format!(
            "mongodb://{}/{}?replicaSet={}",
            self.hosts().join(","),
            database,
            self.set_name
        )
    }

    /// A direct connection to one member (what `replset init` uses).
    pub fn direct_uri(&self, member: usize) -> String {
        format!("mongodb://{}/?directConnection=true", self.hosts()[member])
    }

    /// The member currently acting as primary, if any.
    pub fn primary(&self) -> Option<usize> {
        self.shared.lock().primary
    }

    /// Waits (bounded by `timeout`) until some member is primary.
    pub async fn wait_for_primary(&self, timeout: Duration) -> Option<usize> {
        let deadline = Instant::now() + timeout;
        let mut rx = self.shared.changed.subscribe();
        loop {
            rx.borrow_and_update();
            if let Some(p) = self.primary() {
                return Some(p);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            let _ = tokio::time::timeout(left, rx.changed()).await;
        }
    }

    /// Crashes `member`: its listener and every connection close at once,
    /// in-flight operations see network errors, its cursors are lost. If it
    /// was primary, or the primary loses its majority, an election follows
    /// after `election_delay`.
    pub async fn kill(&self, member: usize) {
        if self.crash(member) {
            self.shared.notify();
        }
        // Also after [`Cluster::vanish`]: its sockets close now.
        self.shared.stop_net(member).await;
        self.shared.lock().members[member].silent = false;
    }

    /// Crashes `member` as a machine that vanishes does (powered off, its
    /// network gone): for the set, as [`Cluster::kill`]; for clients, no
    /// connection closes or is refused, and nothing more is ever sent on
    /// one: operations in flight (a `getMore` waiting, a write waiting for
    /// its write concern) and new requests wait without end, as on a
    /// socket whose peer is gone without a FIN or a reset, until the
    /// client gives up on it. New connections are accepted and never
    /// answered (a vanished host does not complete the TCP handshake:
    /// there, the client's connect times out). [`Cluster::restart`] (or
    /// `kill`) closes the sockets and brings it back.
    pub fn vanish(&self, member: usize) {
        self.shared.lock().members[member].silent = true;
        self.crash(member);
        self.shared.notify();
    }

    /// Marks `member` dead for the set; false if it was already.
    fn crash(&self, member: usize) -> bool {
        let mut st = self.shared.lock();
        let m = &mut st.members[member];
        if !m.alive {
            return false;
        }
        m.alive = false;
        m.cursors.clear();
        st.bump_topology();
        if st.check_quorum() {
            self.shared.schedule_election(&mut st);
        }
        true
    }

    /// Starts a killed member again on the same port (a running member is
    /// killed first). It rejoins as SECONDARY with the whole log, and takes
    /// part in the next election if there is no primary.
    pub async fn restart(&self, member: usize) -> io::Result<()> {
        self.kill(member).await;
        let partitioned = self.shared.lock().members[member].partitioned;
        let listener = if partitioned {
            None
        } else {
            Some(self.shared.bind(member, self.ports[member]).await?)
        };
        {
            let mut st = self.shared.lock();
            let m = &mut st.members[member];
            m.alive = true;
            m.process_id = ObjectId::new();
            m.started = Instant::now();
            m.cursors.clear();
            st.bump_topology();
            if st.check_quorum() {
                self.shared.schedule_election(&mut st);
            }
        }
        if let Some(l) = listener {
            self.shared.start_net(member, l);
        }
        self.shared.notify();
        Ok(())
    }

    /// The primary steps down (as `replSetStepDown` does); after
    /// `election_delay` another reachable member is preferred as the new
    /// primary, falling back to the old one if it is the only candidate.
    pub async fn step_down(&self) {
        {
            let mut st = self.shared.lock();
            st.step_down();
            self.shared.schedule_election(&mut st);
        }
        self.shared.notify();
    }

    /// Cuts `member` off from clients and peers (`true`) or heals it
    /// (`false`). While cut off its connections are reset and new ones are
    /// refused; a cut-off primary loses its role and the majority side
    /// elects a new one. Healing rejoins it as SECONDARY.
    ///
    /// Panics if healing cannot rebind the member's port (another process
    /// took it meanwhile), since the test could not continue meaningfully.
    pub async fn partition(&self, member: usize, partitioned: bool) {
        let was = {
            let mut st = self.shared.lock();
            let was = st.members[member].partitioned;
            st.members[member].partitioned = partitioned;
            was
        };
        if was == partitioned {
            return;
        }
        if partitioned {
            self.reconsider_primary();
            self.shared.stop_net(member).await;
        } else {
            let alive = self.shared.lock().members[member].alive;
            if alive {
                let l = self
                    .shared
                    .bind(member, self.ports[member])
                    .await
                    .unwrap_or_else(|e| {
                        panic!("replset-sim: cannot rebind member {member}'s port: {e}")
                    });
                self.shared.start_net(member, l);
            }
            self.reconsider_primary();
        }
    }

    /// After membership changes: a primary without a majority steps down,
    /// and an election is armed if there is no primary.
    fn reconsider_primary(&self) {
        {
            let mut st = self.shared.lock();
            st.bump_topology();
            if st.check_quorum() {
                self.shared.schedule_election(&mut st);
            }
        }
        self.shared.notify();
    }

    /// Whether `member` vanished ([`Cluster::vanish`]) and was not
    /// restarted since.
    pub fn is_silent(&self, member: usize) -> bool {
        self.shared.lock().members[member].silent
    }

    /// Whether `member` is currently cut off by [`Cluster::partition`].
    pub fn is_partitioned(&self, member: usize) -> bool {
        self.shared.lock().members[member].partitioned
    }

    /// `"PRIMARY"`, `"SECONDARY"`, `"DOWN"` (killed), `"STARTUP"` (no
    /// replica set config yet), `"STARTUP2"` (added, in initial sync) or
    /// `"REMOVED"` (left the config). A partitioned member reports its own view
    /// (see [`Cluster::is_partitioned`]).
    pub fn member_state(&self, member: usize) -> &'static str {
        self.shared.lock().role(member).state_str()
    }

    /// Fault injection for retry tests: the next `times` commands named
    /// `command` (on any member) are executed, but the connection is then
    /// closed instead of replying, as if the network failed between the
    /// server's commit and the client's read. `times` 0 cancels the drops
    /// still pending for `command` (after a test gave more than it
    /// needed, to outlast a client's retries).
    pub fn drop_replies(&self, command: &str, times: u32) {
        let mut st = self.shared.lock();
        st.drop_replies
            .retain(|(c, n)| *n > 0 && (times > 0 || c != command));
        if times > 0 {
            st.drop_replies.push((command.to_string(), times));
        }
    }

    /// Fault injection: the next `times` commands named `command` (on any
    /// member) are refused unapplied with `NotWritablePrimary` (10107), as
    /// by a primary that steps down as it reads them. A write that is not
    /// retryable (a multi-document update) fails with it.
    pub fn refuse_next(&self, command: &str, times: u32) {
        let mut st = self.shared.lock();
        st.refuse_commands.retain(|(c, n)| *n > 0 && c != command);
        if times > 0 {
            st.refuse_commands.push((command.to_string(), times));
        }
    }

    /// Every entry of the log so far leaves the oplog, as when a busy set's
    /// oplog rolls over while a client is away: a change stream resuming
    /// from before now, or an open one that has not read that far, gets
    /// `ChangeStreamHistoryLost` 286. Documents stay.
    pub fn truncate_history(&self) {
        let mut st = self.shared.lock();
        st.history_floor = st.log.len();
    }

    /// Fault injection for tests of a change stream that trails the
    /// writes: while `held`, every change stream on every member delivers
    /// no event (an `aggregate` opens, a `getMore` waits out its
    /// `maxTimeMS` and returns an empty batch, and the resume token stays
    /// where the stream had read); released, each delivers what it was
    /// held back from, in log order. Writes, their write concern and reads
    /// are not held.
    pub fn hold_change_streams(&self, held: bool) {
        self.shared.lock().change_streams_held = held;
        // Wakes the getMores waiting, so a release delivers at once.
        self.shared.notify();
    }

    /// Test control: the next command named `command` (on any member) for
    /// which `matching` is true of its document waits at `at` until
    /// [`Cluster::release`] of `command` ([`Cluster::held`] says when it
    /// waits). mongod has no such knob; it stands for what a slow member or
    /// network does to one operation: a read that takes long to run, a
    /// reply that takes long to arrive after the write it answers was
    /// committed. Once per call; several may be armed.
    pub fn hold_next(
        &self,
        command: &str,
        at: HoldPoint,
        matching: impl Fn(&bson::Document) -> bool + Send + Sync + 'static,
    ) {
        self.hold_next_as(command, command, at, matching);
    }

    /// [`Cluster::hold_next`], released by [`Cluster::release`] of `label`
    /// and counted by [`Cluster::held`] of `label` instead of the command's
    /// name: two commands of one name (two reads) held at once can then be
    /// let go one at a time, in the order a test stages. No mongod
    /// counterpart either.
    pub fn hold_next_as(
        &self,
        label: &str,
        command: &str,
        at: HoldPoint,
        matching: impl Fn(&bson::Document) -> bool + Send + Sync + 'static,
    ) {
        let mut st = self.shared.lock();
        let gate = st
            .hold_gates
            .entry(label.to_owned())
            .or_insert_with(|| watch::channel(false).0)
            .subscribe();
        st.holds.push(state::Hold {
            label: label.to_owned(),
            command: command.to_owned(),
            at,
            matching: Arc::new(matching),
            gate,
        });
    }

    /// Lets every command held under `label` (a command's name, or the
    /// label of [`Cluster::hold_next_as`]) go on, and disarms the holds
    /// under it not taken yet.
    pub fn release(&self, label: &str) {
        let mut st = self.shared.lock();
        st.holds.retain(|h| h.label != label);
        if let Some(gate) = st.hold_gates.remove(label) {
            gate.send_replace(true);
        }
    }

    /// How many commands wait now at a hold under `label` (a command's
    /// name, or the label of [`Cluster::hold_next_as`]).
    pub fn held(&self, label: &str) -> usize {
        self.shared.lock().held_now.get(label).copied().unwrap_or(0)
    }

    /// Stages a race mongod has and this simulator otherwise never runs:
    /// the `insert` of the document whose `_id` is `id` takes its
    /// documents' empty timestamps (`Timestamp(0, 0)` replaced with the
    /// cluster time), then waits `wait` before it commits (its oplog entry,
    /// its change event). An insert sent meanwhile takes a later timestamp
    /// and commits first ([`Cluster::stalled_inserts`] says when the
    /// timestamps are taken). mongod takes a document's timestamp when it
    /// checks the document (`fixDocumentForInsert`,
    /// `VectorClockMutable::tickClusterTime`) and the oplog entry's later,
    /// when it writes it, so two inserts on two connections can take their
    /// timestamps in one order and commit in the other (FIDELITY.md,
    /// "Writes"). Once: the next such insert, on the primary.
    pub fn stall_insert_of(&self, id: impl Into<bson::Bson>, wait: std::time::Duration) {
        self.shared.lock().insert_stall = Some((id.into(), wait));
    }

    /// The set's cluster time jumps `secs` ahead of its clock, as mongod's
    /// does when a member or a client gossips a `$clusterTime` from a clock
    /// that runs fast (mongod takes the greatest signed cluster time it
    /// sees, up to `maxAcceptableLogicalClockDriftSecs`, a year by
    /// default). Timestamps taken after it (an insert's empty timestamps,
    /// oplog entries, change events' `clusterTime`) continue from there;
    /// wall clocks (`wallTime`) do not move.
    pub fn advance_cluster_time(&self, secs: u32) {
        let mut st = self.shared.lock();
        st.last_ts.time = st.last_ts.time.saturating_add(secs);
    }

    /// How many inserts [`Cluster::stall_insert_of`] holds between their
    /// timestamps and their commit now.
    pub fn stalled_inserts(&self) -> usize {
        self.shared.lock().stalled_inserts
    }

    /// How many commands named `command` the members ran (or refused, or
    /// dropped the reply of) since the start.
    pub fn commands_run(&self, command: &str) -> u64 {
        self.shared
            .lock()
            .commands_run
            .get(command)
            .copied()
            .unwrap_or(0)
    }

    /// Every document of `database.collection` as committed (the primary's
    /// view), in insertion order. For assertions such as "stored once".
    pub fn documents(&self, database: &str, collection: &str) -> Vec<bson::Document> {
        let st = self.shared.lock();
        let ns = format!("{database}.{collection}");
        st.colls
            .get(&ns)
            .map(|c| {
                c.docs
                    .iter()
                    .filter(|d| d.del.is_none())
                    .map(|d| d.doc.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether an election is armed and has not run yet: true from losing
    /// the primary (kill, step-down, partition, loss of majority) or from
    /// `replSetInitiate` until `election_delay` later, when the timer either
    /// elects a primary or, with no reachable majority, gives up until the
    /// next membership change. Once it is false again, any election that
    /// could have happened has happened.
    pub fn election_pending(&self) -> bool {
        self.shared.lock().election_scheduled
    }

    /// The most writes that have waited for their write concern at the same
    /// time since the cluster started: above 1, a client had several
    /// majority writes in flight at once.
    pub fn peak_write_concern_waits(&self) -> usize {
        self.shared.lock().peak_write_concern_waiting
    }

    /// Current term (0 before the first election).
    pub fn term(&self) -> i64 {
        self.shared.lock().term
    }

    /// The current config's version (`None` before initiation).
    pub fn config_version(&self) -> Option<i32> {
        self.shared.lock().config.as_ref().map(|c| c.version)
    }

    /// Hosts the current config names, in config order.
    pub fn config_hosts(&self) -> Vec<String> {
        let st = self.shared.lock();
        st.config
            .as_ref()
            .map(|c| c.members.iter().map(|m| m.host.clone()).collect())
            .unwrap_or_default()
    }

    /// Hosts of the members that vote now (newly added ones do not).
    pub fn voting_hosts(&self) -> Vec<String> {
        let st = self.shared.lock();
        st.config
            .as_ref()
            .map(|c| c.voters().map(|m| m.host.clone()).collect())
            .unwrap_or_default()
    }

    /// Whether `member` holds the data: a member of the first config, or
    /// one whose initial sync finished.
    pub fn has_data(&self, member: usize) -> bool {
        self.shared.lock().members[member].synced
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for h in relock(&self.shared.timers).drain(..) {
            h.abort();
        }
        for net in &self.shared.nets {
            if let Some(net) = relock(net).take() {
                net.listener.abort();
                relock(&net.conns).abort_all();
            }
        }
        if let Some(rt) = self.own_runtime.take() {
            // Allowed even when dropped from inside another runtime.
            rt.shutdown_background();
        }
    }
}
