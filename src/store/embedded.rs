//! The embedded store: messages in a redb database under `data_dir`.
//!
//! redb because it is pure Rust (nothing to link, so the static build stays
//! simple), crash-safe with ACID transactions, and fast enough that one writer
//! thread committing batches keeps up with the web server.
//!
//! Writes go through one thread that takes every insert waiting at that
//! moment into a single transaction and commits it durably (fsync) before
//! answering any of them: a burst of posts costs one commit, not one each.
//! A task on the runtime then publishes the commit to the cache and answers
//! its inserts, so the thread goes straight on to the next.
//!
//! A 201 says the message will be there after a restart, which reads the
//! file at `data_dir/messages.redb`. The file open is the one that was at
//! that path at start; if it is removed or replaced while the server runs
//! (the directory deleted, a backup copied over it), writes go to a file
//! nobody will read again. So before each batch the writer compares the
//! open file's device and inode with a `stat` of the path, and refuses the
//! batch (503) when they differ; `/readyz` does the same. It compares them
//! again once the commit is on disk: a file removed or replaced between the
//! two checks took the batch with it, so none of its inserts is
//! acknowledged (503: the message may not be kept; it is in the open file,
//! and kept if that file is moved back). A `stat` costs about a
//! microsecond, against the fsync of the commit it guards (a millisecond or
//! more), and is taken twice per batch, not per insert, so it is not worth
//! caching: a check on a timer would let a write through in between. What
//! no check covers: a file removed after the second one, whose 201s were
//! true when given; and a file overwritten in place (the same inode, as
//! `cp backup messages.redb` does), which is the same file to a `stat`.
//!
//! A damaged file (a backup copied over it while the server ran, a page of
//! garbage) is told as such, naming the file, never as a panic: redb
//! reports most damage as `StorageError::Corrupted`, but on some damage
//! it panics (`unreachable!`, or a debug assertion), so every call into it
//! runs in [`contained`]. A clean close skips redb's own check of the
//! file at the next open, so the start checks every page's checksum
//! ([`Database::check_integrity`]) before serving. Damage met later, on a
//! read or a write, stops writes and readiness until an operator acts: the
//! file does not mend itself.

use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redb::backends::FileBackend;
use redb::{Builder, Database, ReadableDatabase, ReadableTable, StorageBackend, TableDefinition};
use time::OffsetDateTime;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use super::{Cursor, Inserted, Refusal, Store, StoreError, StoreStatus};
use crate::cache::{Cache, CACHE_CAPACITY};
use crate::message::{
    now_millis, stamp_millis, ClockBehind, Message, NewMessage, CLOCK_SLACK_MILLIS,
};
use crate::retry::Backoff;

/// Store order: a sequence number given at commit.
const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
/// Message id to sequence number.
const IDS: TableDefinition<&str, u64> = TableDefinition::new("ids");
/// The most inserts one transaction takes.
const MAX_BATCH: usize = 512;
/// How much the probe writes: about what a busy batch of messages needs.
/// Not what redb's file grows by next, though that is at least the file's
/// size (redb 4.6, `PageManager::grow` in
/// `tree_store/page_store/page_manager.rs`: twice the size below one 4 GiB
/// region, then a region or two at a time): it grows the file with
/// `set_len` (`PagedCachedFile::resize`), a sparse file that takes no space
/// until pages are written, so a commit needs room for its pages only. A
/// probe the size of the growth would keep a big database from writing on
/// a disk with ample room for its commits. A commit that fails for space
/// takes what was free, so the probes after it fail too until space is
/// freed: one fault and one reopen, not one per post.
const PROBE_BYTES: usize = 256 * 1024;
/// redb's page cache unless `cache_size_mib` says otherwise (redb's own
/// default is 1 GiB, which a small server cannot spare).
pub const DEFAULT_CACHE_BYTES: usize = 64 * 1024 * 1024;
/// `Retry-After` while the disk is full or the store is reopening.
const FAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Which file a path names: its device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(metadata: &std::fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        FileId {
            dev: metadata.dev(),
            ino: metadata.ino(),
        }
    }
}

/// Why `path` may no longer name the file the store has open.
enum Elsewhere {
    /// Nothing is at the path (the file or its directory removed or moved).
    Removed,
    /// Another file is at the path.
    Replaced,
    /// The path cannot be examined: the system's reason.
    Unknown(std::io::Error),
}

/// `Ok` while `path` names `opened`, the file the store has open, with
/// the file's length in bytes. Read only, never creates anything.
fn locate(path: &Path, opened: FileId) -> Result<u64, Elsewhere> {
    match std::fs::metadata(path) {
        Ok(now) if FileId::of(&now) == opened => Ok(now.len()),
        Ok(_) => Err(Elsewhere::Replaced),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            Err(Elsewhere::Removed)
        }
        Err(e) => Err(Elsewhere::Unknown(e)),
    }
}

/// When [`check_path`] looks at the data file.
#[derive(Clone, Copy)]
enum Moment {
    /// Before a batch of writes: nothing is written yet.
    BeforeWrite,
    /// Once a batch is committed (after the check before it): its
    /// messages are in a file the next start may not read and must not be
    /// acknowledged.
    AfterCommit,
}

/// `Ok` while `path` names `opened`, the file the store has open, with its
/// length in bytes; else why a write to it, at `moment`, is not the
/// durable write a 201 promises.
fn check_path(path: &Path, opened: FileId, moment: Moment) -> Result<u64, String> {
    let (when, consequence, keeps, unsure) = match moment {
        Moment::BeforeWrite => (
            "the server ran",
            "so a message written now would be lost at the next start",
            "",
            "",
        ),
        Moment::AfterCommit => (
            "this message was written",
            "so this message may not be kept: it was written to the file the server has \
             open, which the next start does not read",
            " (which keeps the message)",
            ", so this message may not be kept",
        ),
    };
    let shown = path.display();
    locate(path, opened).map_err(|elsewhere| match elsewhere {
        Elsewhere::Replaced => format!(
            "the data file {shown} was replaced while {when} (another file is at that path \
             now), {consequence}; writes are refused until the original is moved back{keeps}, \
             or the server restarted (it then opens the file now at that path)"
        ),
        Elsewhere::Removed => format!(
            "the data file {shown} was removed (or moved away) while {when}, {consequence}; \
             writes are refused until the file is moved back{keeps}, or the server restarted \
             (with no file at that path, it starts an empty store)"
        ),
        Elsewhere::Unknown(e) => format!(
            "cannot tell whether the data file {shown} is still the one the server has open \
             ({e}){unsure}; writes are refused until it can"
        ),
    })
}

type Reply = oneshot::Sender<Result<Inserted, StoreError>>;

/// Why writes cannot succeed now. redb refuses every operation on a
/// database after an I/O error until it is reopened, so each fault is
/// cleared by reopening, which the writer retries with backoff.
#[derive(Debug, Clone)]
enum Fault {
    /// Out of space (`ENOSPC`, `EDQUOT`): 507.
    Full(String),
    /// Any other I/O error: 503.
    Io(String),
    /// The reopen after a fault found that the data file cannot be opened
    /// for writing (the system's reason): 503 for writes, while reads go
    /// on from the file opened read-only ([`ReadOnlyFile`]).
    ReadOnly(String),
    /// The reopen after a fault cannot open the data file at all, not even
    /// for reading (the system's reason): 503, reads too.
    Unopenable(String),
    /// The data file is damaged ([`damaged`]'s whole sentence): 503 for
    /// reads and writes until an operator restores or moves the file and
    /// restarts; never cleared by the store itself.
    Damaged(String),
}

impl Fault {
    fn reason(&self) -> String {
        match self {
            Fault::Full(e) => format!(
                "the disk holding the embedded store is full ({e}); writes resume by \
                 themselves once space is freed"
            ),
            Fault::Io(e) => {
                format!("the embedded store hit an I/O error ({e}) and is reopening itself")
            }
            Fault::ReadOnly(e) => format!(
                "the embedded store's data file cannot be opened for writing ({e}); stored \
                 messages stay readable, and writes resume by themselves once it can be (see \
                 whether the file or its directory lost write permission or was made \
                 immutable, `lsattr`, or its file system was remounted read-only)"
            ),
            Fault::Unopenable(e) => format!(
                "the embedded store's data file cannot be opened, not even for reading \
                 ({e}); reads and writes resume by themselves once it can be"
            ),
            Fault::Damaged(why) => why.clone(),
        }
    }

    /// Why a read finds no handle: a reopen is under way, or it failed.
    fn read_reason(&self) -> String {
        match self {
            // No reopen has failed yet: one is under way.
            Fault::Full(_) | Fault::Io(_) => format!("{}; reads resume in a moment", self.reason()),
            // A read-only handle served reads until the writer dropped it
            // for the writable reopen it is making now.
            Fault::ReadOnly(_) => format!(
                "{}; the data file can be opened for writing again and is being reopened, \
                 reads resume in a moment",
                self.reason()
            ),
            Fault::Unopenable(_) | Fault::Damaged(_) => self.reason(),
        }
    }

    fn error(&self) -> StoreError {
        match self {
            Fault::Full(_) => StoreError::Full {
                reason: self.reason(),
                retry_after: FAULT_RETRY_AFTER,
            },
            Fault::Io(_) | Fault::ReadOnly(_) | Fault::Unopenable(_) | Fault::Damaged(_) => {
                StoreError::Unavailable {
                    reason: self.reason(),
                    retry_after: FAULT_RETRY_AFTER,
                }
            }
        }
    }
}

/// A failed redb operation, classified: a fault of the disk (reopen), or
/// an error of this one operation.
#[derive(Debug)]
enum Failure {
    Fault(Fault),
    Other(StoreError),
    /// The file is damaged: redb's words (`Corrupted`, or its panic), to
    /// be told with the file's name ([`damaged`]).
    Damaged(String),
    /// At start, the file cannot be opened for writing, and trying again
    /// will not change that ([`Refusal::Unwritable`]): the system's
    /// reason.
    Unwritable(String),
    /// At start, another process holds the file's lock ([`ALREADY_OPEN`]).
    Held,
}

impl Failure {
    /// The error for the request, with the file's name for damage.
    fn into_store_error(self, path: &Path) -> StoreError {
        match self {
            Failure::Fault(f) => f.error(),
            Failure::Other(e) => e,
            Failure::Damaged(detail) => Fault::Damaged(damaged(path, &detail)).error(),
            Failure::Unwritable(why) => StoreError::Internal(why),
            Failure::Held => StoreError::Internal(ALREADY_OPEN.into()),
        }
    }
}

/// What an operator reads about a damaged data file: which, redb's words,
/// and what to do.
fn damaged(path: &Path, detail: &str) -> String {
    format!(
        "the data file {} is damaged ({detail}); stop the server, then restore a backup \
         taken as the README's \"Backups\" says, or move the file aside to start an empty \
         store",
        path.display()
    )
}

thread_local! {
    /// Whether this thread is in [`contained`]: its panics are redb's
    /// answer to a damaged file, caught and told as such, not printed.
    static CONTAINING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, a call into redb, turning a panic in it into
/// [`Failure::Damaged`]. redb 4.6 meets some damage with a panic instead
/// of `StorageError::Corrupted`: a page of garbage reaches
/// `unreachable!()` in `tree_store/btree.rs` (`RawBtree::new`, the walks
/// of `btree_cursor.rs`), and debug builds assert on page contents. The
/// panic hook stays quiet for these, so the log carries one line naming
/// the file rather than a panic message and a backtrace hint; other panics
/// go to the hook that was there. Needs `panic = "unwind"`, the default.
fn contained<T>(f: impl FnOnce() -> Result<T, Failure>) -> Result<T, Failure> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CONTAINING.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let outer = CONTAINING.with(|c| c.replace(true));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    CONTAINING.with(|c| c.set(outer));
    result.unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        Err(Failure::Damaged(format!(
            "the database library failed: {what}"
        )))
    })
}

impl<E: Into<redb::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        match e.into() {
            redb::Error::Io(io) if is_out_of_space(&io) => {
                Failure::Fault(Fault::Full(io.to_string()))
            }
            // redb's own verdict on a file whose header is not its own
            // ("Not a redb database: magic number mismatch", redb 4.6
            // `StorageError::not_a_database`); reading and writing files
            // give no such kind.
            redb::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
                Failure::Damaged(io.to_string())
            }
            // A read past the end of the file: it is shorter than the
            // pages its header describes (cut short), which no retry mends.
            redb::Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                Failure::Damaged(format!(
                    "it ends before the pages its header describes, as a file cut short does \
                     ({io})"
                ))
            }
            redb::Error::Io(io) => Failure::Fault(Fault::Io(io.to_string())),
            redb::Error::PreviousIo => Failure::Fault(Fault::Io("an earlier I/O error".into())),
            redb::Error::Corrupted(why) => Failure::Damaged(why),
            // redb locks the file; the lock is held by another process (or,
            // while the store reopens, by this one's readers).
            redb::Error::DatabaseAlreadyOpen => {
                Failure::Other(StoreError::Internal(ALREADY_OPEN.into()))
            }
            other => Failure::Other(StoreError::Internal(other.to_string())),
        }
    }
}

/// Why redb refuses to open a file whose lock another process holds.
const ALREADY_OPEN: &str = "it is already open, by another simplechat using the same data_dir? \
                            Each instance needs a data_dir of its own";

/// Whether an I/O error opening the data file or creating its directory
/// is one that trying again does not mend: only an operator can (a
/// permission, a read-only mount, a file where a directory should be).
/// A full disk or an I/O error may pass, and stays restartable.
fn lasting(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::PermissionDenied
            | ErrorKind::ReadOnlyFilesystem
            | ErrorKind::NotADirectory
            | ErrorKind::IsADirectory
    )
}

/// A failure opening the data file: [`Failure::Unwritable`] when it is
/// [`lasting`], else as any I/O error.
fn opening(e: std::io::Error) -> Failure {
    if lasting(&e) {
        Failure::Unwritable(e.to_string())
    } else {
        e.into()
    }
}

/// A failure of redb's open: another process holding the file's lock is
/// [`Failure::Held`].
fn locking(e: redb::DatabaseError) -> Failure {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => Failure::Held,
        e => e.into(),
    }
}

/// Why the store cannot start, in the system's words: at start nothing is
/// retried, so not a fault's reason, which says how writes resume.
fn at_start(failure: Failure) -> String {
    match failure {
        Failure::Fault(
            Fault::Io(e)
            | Fault::Full(e)
            | Fault::ReadOnly(e)
            | Fault::Unopenable(e)
            | Fault::Damaged(e),
        ) => e,
        Failure::Other(StoreError::Internal(why)) => why,
        Failure::Other(other) => other.to_string(),
        Failure::Damaged(why) | Failure::Unwritable(why) => why,
        Failure::Held => ALREADY_OPEN.to_owned(),
    }
}

/// Out of space, by the error's kind (not its text).
fn is_out_of_space(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// What the writer thread and the readers share.
struct Shared {
    path: PathBuf,
    /// The file opened at `path` at start; the store never opens another.
    file: FileId,
    cache_bytes: usize,
    /// `None` while closed, or after a fault until the reopen.
    db: Mutex<Option<Arc<Database>>>,
    /// `Some` from a fault until a reopen proved that writes succeed.
    fault: Mutex<Option<Fault>>,
    /// Run by the writer once a batch passed the check of the data file
    /// and before its commit: the moment a unit test removes or replaces
    /// the file in, which no test can otherwise stage.
    #[cfg(test)]
    before_commit: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl Shared {
    fn fault(&self) -> Option<Fault> {
        self.fault.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sets or clears the fault; damage stays, as nothing the store does
    /// mends it.
    fn set_fault(&self, fault: Option<Fault>) {
        let mut now = self.fault.lock().unwrap_or_else(|e| e.into_inner());
        if !matches!(*now, Some(Fault::Damaged(_))) {
            *now = fault;
        }
    }

    fn db(&self) -> Option<Arc<Database>> {
        self.db.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records damage met by a read or a write: logged once, naming the
    /// file, and from then on every read, write and `/readyz` refused with
    /// it. Returns the error for the request that met it.
    fn damage(&self, failure: Failure) -> StoreError {
        let Failure::Damaged(detail) = failure else {
            return failure.into_store_error(&self.path);
        };
        let mut fault = self.fault.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(known @ Fault::Damaged(_)) = &*fault {
            return known.error();
        }
        let known = Fault::Damaged(damaged(&self.path, &detail));
        log::error!("embedded store: {}", known.reason());
        let error = known.error();
        *fault = Some(known);
        error
    }

    /// Lets go of a handle on the database. Dropping the last one closes
    /// it, which writes to the file (redb records its allocator state, and
    /// may shrink the file); a panic there, redb's answer to some damage,
    /// is contained. Once the file is known damaged the handle is leaked
    /// instead, so the database is never closed: nothing is written to the
    /// file from then on, as the damage's reason says (an emptied file
    /// would get a fresh database at the close, a cut one the lengths of
    /// what it lost). Its descriptor closes with the process, which a
    /// damaged store leaves to an operator anyway.
    fn let_go(&self, db: Option<Arc<Database>>) {
        if self.damaged().is_some() {
            std::mem::forget(db);
            return;
        }
        let _ = contained(|| {
            drop(db);
            Ok(())
        });
    }

    /// The damage recorded by [`Shared::damage`], if any.
    fn damaged(&self) -> Option<Fault> {
        self.fault().filter(|f| matches!(f, Fault::Damaged(_)))
    }

    /// [`check_path`] for the store's file: its length.
    fn check_file(&self) -> Result<u64, String> {
        check_path(&self.path, self.file, Moment::BeforeWrite)
    }

    /// [`check_path`] once a batch is committed: the file's length.
    fn check_file_after_commit(&self) -> Result<u64, String> {
        check_path(&self.path, self.file, Moment::AfterCommit)
    }
}

/// The redb store. Its locks are std `Mutex`es held only to clone or take a
/// handle, never across `.await`.
pub struct EmbeddedStore {
    /// How long an insert may wait for its commit.
    write_timeout: Duration,
    shared: Arc<Shared>,
    writer: Mutex<Option<mpsc::Sender<(NewMessage, Reply)>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The task that publishes each commit and answers its inserts.
    publisher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl EmbeddedStore {
    /// [`EmbeddedStore::open_with_cache`] with [`DEFAULT_CACHE_BYTES`].
    pub async fn open(
        data_dir: &Path,
        write_timeout: Duration,
        cache: Arc<Cache>,
    ) -> Result<Self, StoreError> {
        Self::open_with_cache(data_dir, DEFAULT_CACHE_BYTES, write_timeout, cache).await
    }

    /// Opens (or creates) the database in `data_dir` with a page cache of
    /// `cache_bytes`, and fills `cache` with the latest messages. An insert
    /// that waits longer than `write_timeout` for its commit answers
    /// `Unavailable`.
    ///
    /// Errors: `Internal` when the directory or the file cannot be created
    /// or opened (for example another process holds it).
    pub async fn open_with_cache(
        data_dir: &Path,
        cache_bytes: usize,
        write_timeout: Duration,
        cache: Arc<Cache>,
    ) -> Result<Self, StoreError> {
        let dir = data_dir.to_path_buf();
        let refused = |fault, reason| StoreError::Refused { reason, fault };
        if dir.exists() && !dir.is_dir() {
            return Err(refused(
                Refusal::Unwritable,
                format!("data_dir {} is not a directory", dir.display()),
            ));
        }
        std::fs::create_dir_all(&dir).map_err(|e| {
            let reason = format!("cannot create data_dir {}: {e}", dir.display());
            if lasting(&e) {
                refused(Refusal::Unwritable, reason)
            } else {
                StoreError::Internal(reason)
            }
        })?;
        let path = dir.join("messages.redb");
        // redb writes its header as it creates a file, so a store this
        // server made is never empty: an empty one is what a failed copy
        // (or a restore onto a full disk) left, and opened as a new store it
        // would hide that the history is gone.
        if std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == 0) {
            return Err(refused(
                Refusal::Damaged,
                format!(
                    "the data file {} is empty (0 bytes), so it holds no messages: no file this \
                 server writes is empty, so it is what a failed copy left; restore a backup \
                 taken as the README's \"Backups\" says, or remove the empty file to start an \
                 empty store",
                    path.display()
                ),
            ));
        }
        let opening = path.clone();
        let (existed, opened) = tokio::task::spawn_blocking(move || {
            let existed = opening.exists();
            (existed, contained(|| open_db(&opening, cache_bytes)))
        })
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))?;
        let (db, file) = opened.map_err(|failure| {
            if let Failure::Damaged(detail) = &failure {
                return refused(Refusal::Damaged, damaged(&path, detail));
            }
            let action = if existed { "open" } else { "create" };
            // redb opens its file for both: a file this user may only
            // read is refused as any other.
            let also = match &failure {
                Failure::Fault(Fault::Io(_)) | Failure::Unwritable(_) if existed => {
                    " for reading and writing"
                }
                _ => "",
            };
            let lasting = matches!(failure, Failure::Unwritable(_) | Failure::Held);
            let reason = format!(
                "cannot {action} {}{also}: {}",
                path.display(),
                at_start(failure)
            );
            if lasting {
                refused(Refusal::Unwritable, reason)
            } else {
                StoreError::Internal(reason)
            }
        })?;
        let db = Arc::new(db);
        let latest = contained(|| read_range(&db, &Cursor::Latest, CACHE_CAPACITY + 1)).map_err(
            |failure| match failure {
                Failure::Damaged(detail) => refused(Refusal::Damaged, damaged(&path, &detail)),
                failure => StoreError::Internal(format!(
                    "cannot read {}: {}",
                    path.display(),
                    at_start(failure)
                )),
            },
        )?;
        // A clock a little behind the newest message keeps its time, across
        // a restart too ([`stamp_millis`]).
        let last_datetime = latest
            .last()
            .map_or(OffsetDateTime::UNIX_EPOCH, |m| m.datetime);
        cache.reset_from_latest(latest);

        let shared = Arc::new(Shared {
            path,
            file,
            cache_bytes,
            db: Mutex::new(Some(db)),
            fault: Mutex::new(None),
            #[cfg(test)]
            before_commit: Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        // Unbounded, yet never more than the inserts waiting for an answer,
        // which the bounded channel to the writer and the requests bound.
        let (committed, to_publish) = mpsc::unbounded_channel();
        let publisher = tokio::spawn(publish(cache.clone(), to_publish));
        let writer = Writer {
            shared: shared.clone(),
            cache,
            committed,
            last_datetime,
            runtime: Handle::current(),
            read_only: false,
            clock_behind: ClockBehind::default(),
            committed_len: std::fs::metadata(&shared.path).ok().map(|m| m.len()),
        };
        let thread = std::thread::Builder::new()
            .name("simplechat-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Internal(format!("cannot start writer thread: {e}")))?;
        Ok(EmbeddedStore {
            write_timeout,
            shared,
            writer: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            publisher: Mutex::new(Some(publisher)),
        })
    }

    /// Runs `f` on the database. While a fault stops writes, reads go on
    /// on the handle reopened for them; between the fault and that reopen
    /// (no handle), a read is `Unavailable` (503), never `Full`: a full
    /// disk refuses writes, not reads.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, Failure> + Send + 'static,
    ) -> Result<T, StoreError> {
        if let Some(damage) = self.shared.damaged() {
            return Err(damage.error());
        }
        let Some(db) = self.shared.db() else {
            return Err(match self.shared.fault() {
                Some(fault) => StoreError::Unavailable {
                    reason: fault.read_reason(),
                    retry_after: FAULT_RETRY_AFTER,
                },
                None => StoreError::closed(),
            });
        };
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || contained(|| f(&db)).map_err(|e| shared.damage(e)))
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))?
    }
}

/// Opens (or creates) the database at `path`, as redb's `Builder::create`
/// does, and tells which file it opened.
///
/// A file this call creates is removed again when the database cannot be
/// made in it (a full disk, an I/O error): left behind without redb's
/// header, it would be refused as damaged by every later start (exit 65,
/// which a service manager does not restart on) once the fault had passed.
/// It is removed while this call still holds it open, so its locks are
/// held until its name is gone: another start cannot take it up meanwhile
/// (one that took it first is left to it).
fn open_db(path: &Path, cache_bytes: usize) -> Result<(Database, FileId), Failure> {
    let open = |create_new| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .create_new(create_new)
            .truncate(false)
            .open(path)
    };
    let (file, created) = match open(true) {
        Ok(file) => (file, true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            (open(false).map_err(opening)?, false)
        }
        Err(e) => return Err(opening(e)),
    };
    let held = if created {
        Some(file.try_clone()?)
    } else {
        None
    };
    let made = make_db(file, path, cache_bytes);
    // Not when another start took the new file first: that one is making
    // the database in it.
    if made.as_ref().is_err_and(|e| !matches!(e, Failure::Held)) {
        if let Some(held) = held {
            let _ = std::fs::remove_file(path);
            drop(held);
        }
    }
    made
}

/// [`open_db`]'s work on the file it opened.
fn make_db(
    file: std::fs::File,
    path: &Path,
    cache_bytes: usize,
) -> Result<(Database, FileId), Failure> {
    let id = FileId::of(&file.metadata()?);
    let mut db = Builder::new()
        .set_cache_size(cache_bytes)
        .create_with_backend(FileBackend::new(file).map_err(locking)?)
        .map_err(locking)?;
    // redb checks the checksums only when the file was not closed cleanly;
    // a page damaged since (a backup copied over the live file, a bad
    // disk) would otherwise be met by a reader, much later, as a failed
    // request. It reads the whole file once: seconds for a large store.
    if !db.check_integrity()? {
        log::warn!(
            "embedded store: {} failed its integrity check and was repaired (the last \
             commits before the damage may be gone)",
            path.display()
        );
    }
    // Create the tables up front so readers never meet a missing table.
    let txn = db.begin_write()?;
    txn.open_table(MESSAGES)?;
    txn.open_table(IDS)?;
    txn.commit()?;
    sync_directories(path);
    Ok((db, id))
}

/// Makes the file at `path` durable by name: a created file's directory
/// entry (and a created `data_dir`'s, in its parent) is only on disk once
/// its directory is synced, which redb's commits do not do (they sync the
/// file's data), so a power cut right after the first start could lose
/// the whole file with every message it had acknowledged (`fsync(2)`:
/// "Calling fsync() does not necessarily ensure that the entry in the
/// directory containing the file has also reached disk. For that an
/// explicit fsync() on a file descriptor for the directory is also
/// needed."). Done at every open, new file or not: two syncs at start. A
/// directory that cannot be synced (one the server may not read) is
/// logged, not fatal: the store works, with that one guarantee weaker.
fn sync_directories(path: &Path) {
    for dir in path.ancestors().skip(1).take(2) {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
            log::warn!(
                "cannot sync the directory {} ({e}): a power cut soon after a first start \
                 could lose the data file's name in it",
                dir.display()
            );
        }
    }
}

/// The data file opened read-only, for a store whose file cannot be opened
/// for writing after a fault: reads go on from it while writes are refused.
///
/// Not redb's `ReadOnlyDatabase` (redb 4.6, `db.rs`): it opens only a file
/// closed cleanly, whose last commit recorded the allocator state, and
/// otherwise returns `RepairAborted` ("A database requiring recovery is
/// rejected rather than repaired", `Builder::open_read_only_with_backend`).
/// A file that became unwritable while the store had it open was never
/// closed cleanly: the close that would record that state is itself a
/// write. Nor a `FileBackend` on a read-only descriptor: a `Database`
/// writes its header as it opens (it marks the file as needing recovery),
/// which fails with EBADF. So this backend reads the file through a
/// read-only descriptor and keeps whatever redb writes (that mark, and the
/// allocator state its recovery rebuilds and records at open and close) in
/// memory, for its own reads: the file is never written. The store commits
/// nothing through such a handle; the writer refuses every insert until it
/// reopens the file for writing.
///
/// No byte-range locks (the trait's defaults, `Unsupported`: redb then
/// runs unlocked in its default mode, `StorageBackend` in `db.rs`): an
/// exclusive one needs a descriptor open for writing. The file is held
/// with a shared `flock` instead ([`ReadOnlyFile::new`]).
#[derive(Debug)]
struct ReadOnlyFile {
    file: std::fs::File,
    overlay: Mutex<Overlay>,
}

/// What redb wrote to a [`ReadOnlyFile`], over the file's own bytes.
#[derive(Debug)]
struct Overlay {
    /// The storage's length, as redb last set it.
    len: u64,
    /// Bytes below this come from the file; above it, zeros (the length
    /// redb set shrank below the file's at some point).
    from_file: u64,
    /// Writes, oldest first; a later one wins where they overlap.
    writes: Vec<(u64, Vec<u8>)>,
}

impl ReadOnlyFile {
    /// `file`, held with a shared lock (`flock(2)`, which a descriptor
    /// open for reading may take) for as long as the store reads from it:
    /// redb's own open of the file takes the whole-file `flock` of its
    /// older versions beside its byte-range locks (redb 4.6,
    /// `file_backend/optimized.rs`), exclusive for a writer, so another
    /// start on the same data_dir is refused as for a file the store has
    /// open for writing. A file system without `flock` goes unlocked, as
    /// redb's own backend does there.
    ///
    /// Errors: the file is locked already (`WouldBlock`: another process
    /// holds it), or cannot be read.
    fn new(file: std::fs::File) -> std::io::Result<ReadOnlyFile> {
        match file.try_lock_shared() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    ALREADY_OPEN,
                ))
            }
            Err(std::fs::TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        let len = file.metadata()?.len();
        Ok(ReadOnlyFile {
            file,
            overlay: Mutex::new(Overlay {
                len,
                from_file: len,
                writes: Vec::new(),
            }),
        })
    }

    fn overlay(&self) -> std::sync::MutexGuard<'_, Overlay> {
        self.overlay.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl StorageBackend for ReadOnlyFile {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.overlay().len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let overlay = self.overlay();
        let end = offset + out.len() as u64;
        if end > overlay.len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("read to {end} past the end, {}", overlay.len),
            ));
        }
        let from_file = overlay
            .from_file
            .saturating_sub(offset)
            .min(out.len() as u64) as usize;
        self.file.read_exact_at(&mut out[..from_file], offset)?;
        out[from_file..].fill(0);
        for (at, data) in &overlay.writes {
            let (at, data_end) = (*at, *at + data.len() as u64);
            if data_end <= offset || at >= end {
                continue;
            }
            let start = at.max(offset);
            let stop = data_end.min(end);
            out[(start - offset) as usize..(stop - offset) as usize]
                .copy_from_slice(&data[(start - at) as usize..(stop - at) as usize]);
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        let mut overlay = self.overlay();
        overlay.from_file = overlay.from_file.min(len);
        overlay.writes.retain_mut(|(at, data)| {
            data.truncate(len.saturating_sub(*at) as usize);
            !data.is_empty()
        });
        overlay.len = len;
        Ok(())
    }

    fn sync_data(&self) -> std::io::Result<()> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut overlay = self.overlay();
        let end = offset + data.len() as u64;
        // Writes it covers whole are dead: drop them, so rewriting the same
        // pages (the header) does not grow the list.
        overlay
            .writes
            .retain(|(at, old)| *at < offset || *at + old.len() as u64 > end);
        overlay.writes.push((offset, data.to_vec()));
        overlay.len = overlay.len.max(end);
        Ok(())
    }
}

/// Writes [`PROBE_BYTES`] to a file beside the database, durably, and
/// removes it: after a fault, writes resume only when this succeeds. A file
/// of its own, not a redb write: redb refuses every operation on a handle
/// after a failed write, reads too, and the reopened handle serves reads
/// while the disk is still full.
fn probe_write(dir: &Path) -> Result<(), Fault> {
    use std::io::Write;
    let path = dir.join("write-probe");
    let written = std::fs::File::create(&path).and_then(|mut file| {
        file.write_all(&vec![0u8; PROBE_BYTES])?;
        file.sync_data()
    });
    let _ = std::fs::remove_file(&path);
    written.map_err(|e| {
        if is_out_of_space(&e) {
            Fault::Full(e.to_string())
        } else {
            Fault::Io(e.to_string())
        }
    })
}

fn decode(bytes: &[u8]) -> Result<Message, Failure> {
    serde_json::from_slice(bytes)
        .map_err(|e| Failure::Other(StoreError::Internal(format!("corrupt message: {e}"))))
}

/// A committed batch: each insert's reply, its outcome, and the stored JSON
/// of a message it created; `refused` when the data file was removed or
/// replaced while the batch was written, which every insert of it is then
/// answered with.
struct Committed {
    inserts: Vec<(Reply, Outcome)>,
    refused: Option<StoreError>,
}

/// Publishes each committed batch to the cache (and so to every subscriber),
/// in commit order, then answers its inserts: a client that was answered
/// finds its message in the next listing.
///
/// A task on the runtime rather than more work for the writer thread: the
/// writer is the one serial step of every durable post, and a broadcast
/// sent from a runtime thread wakes the subscribers' tasks into that
/// thread's own run queue, where a send from outside the runtime queues
/// each of them through the runtime's shared queue, one lock at a time
/// (tokio's multi-thread scheduler, `schedule_task`).
async fn publish(cache: Arc<Cache>, mut committed: mpsc::UnboundedReceiver<Committed>) {
    while let Some(Committed { inserts, refused }) = committed.recv().await {
        for (reply, (outcome, json)) in inserts {
            // Published even when refused: the message is in the open file,
            // which reads serve, and which keeps it if it is moved back; the
            // cache must agree with what reads find.
            if let (Ok(Inserted::Created(m)), Some(json)) = (&outcome, json) {
                // The stored bytes are the message's JSON: the cache need
                // not serialize it again.
                cache.publish_serialized(m.clone(), json);
            }
            let _ = reply.send(match &refused {
                Some(error) => Err(error.clone()),
                None => outcome,
            });
        }
    }
}

/// The writer thread: owns the write handle, batches inserts, and after a
/// fault reopens the database with backoff until a write succeeds.
struct Writer {
    shared: Arc<Shared>,
    /// Where the cache is refilled from the store after a fault.
    cache: Arc<Cache>,
    /// Each commit, to [`publish`].
    committed: mpsc::UnboundedSender<Committed>,
    last_datetime: OffsetDateTime,
    /// To wait for an insert or the next reopen attempt, whichever first.
    runtime: Handle,
    /// Whether the handle readers have is the file opened read-only
    /// ([`ReadOnlyFile`]): writes wait for a reopen for writing.
    read_only: bool,
    /// Whether the clock was said to be behind the newest message lately.
    clock_behind: ClockBehind,
    /// The data file's length in bytes after the last commit (or the open):
    /// redb changes it only in a commit (it grows and shrinks the file
    /// there), so a file shorter before the next one was cut by someone
    /// else ([`shrunk`]).
    committed_len: Option<u64>,
}

/// Why a data file `now` bytes long, `before` after the store's last
/// commit, is damaged, when it is shorter: the pages past its end, which
/// redb believes are there, are gone (`truncate`, a copy over it that
/// stopped short). redb would go on committing, the page cache answering
/// reads of what is gone, and acknowledge posts the next start cannot
/// read; an emptied file it would take for a new database at its reopen.
fn shrunk(before: Option<u64>, now: u64) -> Option<String> {
    let before = before.filter(|before| now < *before)?;
    Some(if now == 0 {
        "it was emptied (0 bytes) while the server ran, so the messages it held are gone from it"
            .to_owned()
    } else {
        format!(
            "it was cut from {before} to {now} bytes while the server ran, so messages it held \
             may be gone from it"
        )
    })
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<(NewMessage, Reply)>) {
        let mut db = self.shared.db();
        // Whether writes go to `db`; false from a fault until a probe
        // succeeds, while `db`, once reopened, serves reads.
        let mut writable = db.is_some();
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        // While writes are stopped: when to try the reopen and the probe
        // next. On the backoff's schedule alone, not at each post: a busy
        // server would otherwise probe (a 256 KiB durable write) for every
        // batch of posts, and posts answered in the meantime get the
        // fault's 503/507 with its `Retry-After`.
        let mut next_attempt = Instant::now();
        // Whether the last batch found another file, or none, at the
        // store's path ([`check_path`]): said once in the log, not per batch.
        let mut elsewhere = false;
        loop {
            if !writable && Instant::now() >= next_attempt {
                // Read-only until the file can be opened for writing: then
                // its handle goes, for the reopen below to replace (reads
                // get 503 for that moment).
                if self.read_only && self.open_file(true).is_ok() {
                    self.shared
                        .db
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take();
                    db = None;
                    self.read_only = false;
                }
                if db.is_none() {
                    db = self.reopen();
                }
                if db.is_some() && !self.read_only && self.probe() {
                    writable = true;
                    backoff.reset();
                } else {
                    next_attempt = Instant::now() + backoff.next_delay();
                }
            }
            let first = if writable {
                match rx.blocking_recv() {
                    Some(item) => item,
                    None => break,
                }
            } else {
                let wait = next_attempt.saturating_duration_since(Instant::now());
                match self
                    .runtime
                    .block_on(async { tokio::time::timeout(wait, rx.recv()).await })
                {
                    Ok(Some(item)) => item,
                    Ok(None) => break,
                    Err(_) => continue,
                }
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            let length = self.shared.check_file();
            if let Some(cut) = length
                .as_ref()
                .ok()
                .and_then(|now| shrunk(self.committed_len, *now))
            {
                let error = self.shared.damage(Failure::Damaged(cut));
                for (_, reply) in batch {
                    let _ = reply.send(Err(error.clone()));
                }
                continue;
            }
            if let Err(why) = length {
                if !elsewhere {
                    log::error!("embedded store: {why}");
                    elsewhere = true;
                }
                let error = StoreError::Unavailable {
                    reason: why,
                    retry_after: FAULT_RETRY_AFTER,
                };
                for (_, reply) in batch {
                    let _ = reply.send(Err(error.clone()));
                }
                continue;
            }
            if elsewhere {
                log::warn!(
                    "embedded store: {} is the open data file again; writes go on",
                    self.shared.path.display()
                );
                elsewhere = false;
            }
            // Damage stops writes for good: a commit over damaged pages
            // could only spread it.
            if let Some(damage) = self.shared.damaged() {
                let error = damage.error();
                for (_, reply) in batch {
                    let _ = reply.send(Err(error.clone()));
                }
                continue;
            }
            let Some(handle) = db.as_deref().filter(|_| writable) else {
                let error = self
                    .shared
                    .fault()
                    .map_or_else(StoreError::closed, |f| f.error());
                for (_, reply) in batch {
                    let _ = reply.send(Err(error.clone()));
                }
                continue;
            };
            #[cfg(test)]
            if let Some(hook) = self
                .shared
                .before_commit
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
            {
                hook();
            }
            match contained(|| write_batch(handle, &batch, &mut self.last_datetime)) {
                Ok((outcomes, behind)) => {
                    if let Some(ms) = behind {
                        self.clock_behind.check("embedded store", ms);
                    }
                    // The file may have gone since the check before the
                    // commit: then the batch is in a file the next start
                    // may not read, and nothing of it is acknowledged.
                    let length = self.shared.check_file_after_commit();
                    if let Ok(now) = length {
                        self.committed_len = Some(now);
                    }
                    let refused = length.err().map(|why| {
                        log::error!("embedded store: {why}");
                        elsewhere = true;
                        StoreError::Unavailable {
                            reason: why,
                            retry_after: FAULT_RETRY_AFTER,
                        }
                    });
                    let inserts = batch
                        .into_iter()
                        .map(|(_, reply)| reply)
                        .zip(outcomes)
                        .collect();
                    // Fails only once the runtime is gone, and with it
                    // every waiting request.
                    let _ = self.committed.send(Committed { inserts, refused });
                }
                Err(failure) => {
                    // A failed commit may have left the file at any length;
                    // the reopen reads it anew.
                    self.committed_len = None;
                    if let Failure::Fault(fault) = &failure {
                        log::error!("embedded store: {}", fault.reason());
                        self.shared.set_fault(Some(fault.clone()));
                        // Every handle must go before redb lets the file be
                        // opened again; readers drop theirs as they finish.
                        self.shared
                            .db
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .take();
                        db = None;
                        writable = false;
                        backoff.reset();
                        // Reopened at once, so reads go on: the loop's
                        // next turn tries it before it waits for anything.
                        next_attempt = Instant::now();
                    }
                    let error = self.shared.damage(failure);
                    for (_, reply) in batch {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        }
        self.shared.let_go(db);
    }

    /// Opens the database again after a fault, refills the cache from it
    /// (a commit that failed may or may not have reached the disk) and
    /// gives readers the new handle; writes wait for [`Writer::probe`].
    /// A file that cannot be opened for writing is opened read-only
    /// ([`ReadOnlyFile`]), for reads alone: `read_only` says so, and the
    /// fault says why writes are refused. `None`: not yet (readers still
    /// hold the old handle, or the file cannot be opened at all).
    fn reopen(&mut self) -> Option<Arc<Database>> {
        // The file the store opened at start, or nothing: another file at
        // its path (or a new, empty one created there) would drop every
        // message stored so far without a word.
        if let Err(why) = self.shared.check_file() {
            log::debug!("embedded store: not reopened: {why}");
            return None;
        }
        let opened = match self.open_file(true) {
            Ok(file) => self
                .load(FileBackend::new(file).map_err(Failure::from))
                .map(|(db, latest)| (db, latest, None)),
            Err(Failure::Fault(Fault::Io(cannot_write) | Fault::Full(cannot_write))) => {
                match self.open_file(false) {
                    Ok(file) => self
                        .load(ReadOnlyFile::new(file).map_err(Failure::from))
                        .map(|(db, latest)| (db, latest, Some(cannot_write.clone())))
                        .map_err(|failure| match failure {
                            Failure::Fault(_) => Failure::Fault(Fault::ReadOnly(cannot_write)),
                            other => other,
                        }),
                    Err(Failure::Fault(
                        Fault::Io(cannot_read)
                        | Fault::Full(cannot_read)
                        | Fault::ReadOnly(cannot_read)
                        | Fault::Unopenable(cannot_read),
                    )) => Err(Failure::Fault(Fault::Unopenable(cannot_read))),
                    Err(other) => Err(other),
                }
            }
            Err(other) => Err(other),
        };
        match opened {
            Ok((db, latest, cannot_write)) => {
                if let Some(newest) = latest.last() {
                    self.last_datetime = self.last_datetime.max(newest.datetime);
                }
                self.cache.reset_from_latest(latest);
                // redb may have resized the file as it opened it.
                self.committed_len = std::fs::metadata(&self.shared.path).ok().map(|m| m.len());
                let db = Arc::new(db);
                *self.shared.db.lock().unwrap_or_else(|e| e.into_inner()) = Some(db.clone());
                self.read_only = cannot_write.is_some();
                if let Some(why) = cannot_write {
                    let fault = Fault::ReadOnly(why);
                    log::error!("embedded store: reopened read-only; {}", fault.reason());
                    self.shared.set_fault(Some(fault));
                } else {
                    log::info!("embedded store: reopened; reads go on");
                }
                Some(db)
            }
            Err(Failure::Fault(fault)) => {
                log::debug!("embedded store: not reopened: {}", fault.reason());
                self.shared.set_fault(Some(fault));
                None
            }
            // Readers still hold the old handle (redb: already open), or
            // something else: keep the fault that stopped writes, try again.
            Err(Failure::Other(e)) => {
                log::debug!("embedded store: reopen not possible yet: {e}");
                None
            }
            // Made by the open at start only.
            Err(failure @ (Failure::Unwritable(_) | Failure::Held)) => {
                log::debug!(
                    "embedded store: reopen not possible yet: {}",
                    at_start(failure)
                );
                None
            }
            // No reopen mends it: readers and writers are refused from now on.
            Err(damage @ Failure::Damaged(_)) => {
                self.shared.damage(damage);
                None
            }
        }
    }

    /// The store's data file, opened for reading and, if `write`, writing;
    /// refused if another file is at the path now.
    fn open_file(&self, write: bool) -> Result<std::fs::File, Failure> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(&self.shared.path)?;
        let metadata = file.metadata()?;
        if FileId::of(&metadata) != self.shared.file {
            return Err(Failure::Other(StoreError::Internal(
                "another file is at the path now".into(),
            )));
        }
        // redb takes an empty file for a new database and writes one into
        // it: the store would go on, and start next time, with none of
        // the messages the file held. The start refuses an empty file for
        // the same reason.
        if metadata.len() == 0 {
            return Err(Failure::Damaged(
                "it was emptied (0 bytes) while the server ran, so the messages it held are \
                 gone from it"
                    .into(),
            ));
        }
        Ok(file)
    }

    /// The database on `backend` and its latest messages.
    fn load(
        &self,
        backend: Result<impl StorageBackend, Failure>,
    ) -> Result<(Database, Vec<Message>), Failure> {
        let backend = backend?;
        contained(|| {
            let db = Builder::new()
                .set_cache_size(self.shared.cache_bytes)
                .create_with_backend(backend)?;
            let latest = read_range(&db, &Cursor::Latest, CACHE_CAPACITY + 1)?;
            Ok((db, latest))
        })
    }

    /// Whether a write can succeed now ([`probe_write`]); clears the fault
    /// when it can, and keeps the latest reason when it cannot.
    fn probe(&mut self) -> bool {
        let dir = self.shared.path.parent().unwrap_or(Path::new("."));
        match probe_write(dir) {
            Ok(()) => {
                self.shared.set_fault(None);
                log::warn!("embedded store: writes succeed again");
                true
            }
            Err(fault) => {
                self.shared.set_fault(Some(fault));
                false
            }
        }
    }
}

/// One insert's outcome, with the bytes stored when it created a message.
type Outcome = (Result<Inserted, StoreError>, Option<Vec<u8>>);

/// Unix milliseconds, as message datetimes hold them.
fn unix_millis(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// One transaction for the whole batch; each insert's own outcome (created,
/// retry of a stored message, conflict) is decided inside it. Also how far
/// the clock was behind the newest message, when by more than
/// [`CLOCK_SLACK_MILLIS`], for the writer to warn of.
fn write_batch(
    db: &Database,
    batch: &[(NewMessage, Reply)],
    last_datetime: &mut OffsetDateTime,
) -> Result<(Vec<Outcome>, Option<i64>), Failure> {
    let mut behind = None;
    let txn = db.begin_write()?;
    let mut outcomes = Vec::with_capacity(batch.len());
    // Committed only at the end: until then the batch's datetimes are
    // provisional.
    let mut newest = *last_datetime;
    {
        let mut messages = txn.open_table(MESSAGES)?;
        let mut ids = txn.open_table(IDS)?;
        let mut next_seq = match messages.last()? {
            Some((k, _)) => k.value() + 1,
            None => 0,
        };
        for (new, _) in batch {
            let existing = ids.get(new.id.as_str())?.map(|v| v.value());
            if let Some(seq) = existing {
                let stored = match messages.get(seq)? {
                    Some(bytes) => decode(bytes.value())?,
                    None => {
                        return Err(Failure::Other(StoreError::Internal(format!(
                            "id {} has no message",
                            new.id
                        ))))
                    }
                };
                outcomes.push((
                    if new.same_as_stored(&stored.name, &stored.text) {
                        Ok(Inserted::Existing(stored))
                    } else {
                        Err(StoreError::Conflict(new.id.clone()))
                    },
                    None,
                ));
                continue;
            }
            let now = now_millis();
            let (now_ms, newest_ms) = (unix_millis(now), unix_millis(newest));
            if newest_ms - now_ms > CLOCK_SLACK_MILLIS {
                behind = Some(newest_ms - now_ms);
            }
            let datetime = OffsetDateTime::from_unix_timestamp_nanos(
                i128::from(stamp_millis(now_ms, newest_ms)) * 1_000_000,
            )
            .unwrap_or(now);
            let message = new.clone().into_message(datetime);
            let bytes = serde_json::to_vec(&message)
                .map_err(|e| Failure::Other(StoreError::Internal(e.to_string())))?;
            messages.insert(next_seq, bytes.as_slice())?;
            ids.insert(message.id.as_str(), next_seq)?;
            next_seq += 1;
            newest = datetime;
            outcomes.push((Ok(Inserted::Created(message)), Some(bytes)));
        }
    }
    txn.commit()?;
    *last_datetime = newest;
    Ok((outcomes, behind))
}

/// Up to `limit` messages at `cursor`, oldest first, in one read transaction.
fn read_range(db: &Database, cursor: &Cursor, limit: usize) -> Result<Vec<Message>, Failure> {
    let txn = db.begin_read()?;
    let messages = txn.open_table(MESSAGES)?;
    let ids = txn.open_table(IDS)?;
    let position = |id: &str| -> Result<u64, Failure> {
        ids.get(id)?
            .map(|v| v.value())
            .ok_or_else(|| Failure::Other(StoreError::UnknownId(id.to_owned())))
    };
    let mut out = Vec::with_capacity(limit.min(CACHE_CAPACITY + 1));
    match cursor {
        Cursor::Latest | Cursor::Before(_) => {
            let range = match cursor {
                Cursor::Before(id) => messages.range(..position(id)?),
                _ => messages.range::<u64>(..),
            }?;
            for entry in range.rev().take(limit) {
                let (_, v) = entry?;
                out.push(decode(v.value())?);
            }
            out.reverse();
        }
        Cursor::Oldest | Cursor::After(_) => {
            let from = match cursor {
                Cursor::After(id) => position(id)? + 1,
                _ => 0,
            };
            for entry in messages.range(from..)?.take(limit) {
                let (_, v) = entry?;
                out.push(decode(v.value())?);
            }
        }
    }
    Ok(out)
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn insert(&self, message: NewMessage) -> Result<Inserted, StoreError> {
        let sender = self
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(StoreError::closed)?;
        let commit = async {
            let (reply, outcome) = oneshot::channel();
            sender
                .send((message, reply))
                .await
                .map_err(|_| StoreError::closed())?;
            outcome.await.map_err(|_| StoreError::closed())?
        };
        // A commit that never comes (a stalled disk) must not hold the
        // request forever; the insert may still commit later, and a retry
        // with the same id is then answered as a replay.
        tokio::time::timeout(self.write_timeout, commit)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable {
                    reason: format!(
                        "the store did not commit the write within {} s",
                        self.write_timeout.as_secs()
                    ),
                    retry_after: Duration::from_secs(5),
                })
            })
    }

    async fn get(&self, id: &str) -> Result<Option<Message>, StoreError> {
        let id = id.to_owned();
        self.read(move |db| {
            let txn = db.begin_read()?;
            let ids = txn.open_table(IDS)?;
            let Some(seq) = ids.get(id.as_str())?.map(|v| v.value()) else {
                return Ok(None);
            };
            let messages = txn.open_table(MESSAGES)?;
            let found = messages.get(seq)?;
            found.map(|v| decode(v.value())).transpose()
        })
        .await
    }

    async fn list(&self, cursor: Cursor, limit: usize) -> Result<Vec<Message>, StoreError> {
        self.read(move |db| read_range(db, &cursor, limit)).await
    }

    async fn ready(&self) -> Result<(), String> {
        if self
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
        {
            return Err("the store is closed".into());
        }
        // A `stat`, off the runtime's threads as every file access here.
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.check_file())
            .await
            .map_err(|e| format!("cannot check the data file: {e}"))??;
        match self.shared.fault() {
            Some(fault) => Err(fault.reason()),
            None => Ok(()),
        }
    }

    async fn status(&self) -> StoreStatus {
        let ready = self.ready().await;
        StoreStatus {
            store: "embedded",
            ready: ready.is_ok(),
            reason: ready.err(),
            mongodb: None,
        }
    }

    async fn close(&self) {
        // Dropping the sender ends the writer loop once queued inserts are done.
        drop(self.writer.lock().unwrap_or_else(|e| e.into_inner()).take());
        let db = self
            .shared
            .db
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.shared.let_go(db);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        // The writer is gone, and with it the publisher's sender: this ends
        // once the last commit is published and answered.
        let publisher = self
            .publisher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(publisher) = publisher {
            let _ = publisher.await;
        }
    }
}

/// The window between the writer's two checks of the data file, staged
/// with the `before_commit` hook: no test can time a removal into it
/// otherwise. A removal during the commit itself (between its writes and
/// its fsync) is met by the same check after it, and not staged apart:
/// redb has no seam inside a commit.
#[cfg(test)]
mod tests {
    use super::*;

    const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

    fn post(text: &str) -> NewMessage {
        NewMessage::validate("w", text, None).unwrap()
    }

    /// A store in `dir` holding one message, `before`.
    async fn holding_before(dir: &Path) -> EmbeddedStore {
        let store = EmbeddedStore::open(dir, WRITE_TIMEOUT, Cache::new())
            .await
            .unwrap();
        store.insert(post("before")).await.unwrap();
        store
    }

    /// The file removed (here moved away, so it can come back) after the
    /// writer's check and before its commit: the commit goes to a file the
    /// next start would not read, so the post is not acknowledged, and the
    /// store refuses writes as for any removed file until the file is back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_removed_while_a_batch_commits_is_no_acknowledged_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = holding_before(dir.path()).await;
        let file = dir.path().join("messages.redb");
        let away = dir.path().join("away.redb");
        let (from, to) = (file.clone(), away.clone());
        *store.shared.before_commit.lock().unwrap() =
            Some(Box::new(move || std::fs::rename(from, to).unwrap()));

        let refused = store.insert(post("in the window")).await;
        let Err(StoreError::Unavailable { reason, .. }) = refused else {
            panic!("acknowledged a write to a removed file: {refused:?}");
        };
        assert!(
            reason.contains("messages.redb")
                && reason.contains("removed")
                && reason.contains("may not be kept"),
            "{reason}"
        );
        // As for any removed file: writes and readiness refused.
        let Err(StoreError::Unavailable { reason, .. }) = store.insert(post("after")).await else {
            panic!("a write after the removal was taken");
        };
        assert!(reason.contains("removed"), "{reason}");
        assert!(store.ready().await.unwrap_err().contains("removed"));

        // Moved back, the file holds the refused message, and writes go on.
        std::fs::rename(&away, &file).unwrap();
        store.ready().await.unwrap();
        store.insert(post("back")).await.unwrap();
        let texts: Vec<String> = store
            .list(Cursor::Latest, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.text)
            .collect();
        assert_eq!(texts, ["before", "in the window", "back"]);
        store.close().await;
    }

    /// Another file put at the path in the same moment (a backup copied
    /// over it): the same refusal, saying the file was replaced.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_replaced_while_a_batch_commits_is_no_acknowledged_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = holding_before(dir.path()).await;
        let file = dir.path().join("messages.redb");
        let (moved, copy) = (dir.path().join("moved.redb"), dir.path().join("copy.redb"));
        let (f, m, c) = (file.clone(), moved.clone(), copy.clone());
        *store.shared.before_commit.lock().unwrap() = Some(Box::new(move || {
            std::fs::copy(&f, &c).unwrap();
            std::fs::rename(&f, &m).unwrap();
            std::fs::rename(&c, &f).unwrap();
        }));

        let refused = store.insert(post("in the window")).await;
        let Err(StoreError::Unavailable { reason, .. }) = refused else {
            panic!("acknowledged a write to a replaced file: {refused:?}");
        };
        assert!(
            reason.contains("replaced") && reason.contains("may not be kept"),
            "{reason}"
        );
        assert!(store.ready().await.unwrap_err().contains("replaced"));

        std::fs::rename(&file, &copy).unwrap();
        std::fs::rename(&moved, &file).unwrap();
        store.insert(post("back")).await.unwrap();
        store.close().await;
    }

    /// The file opened read-only after a fault (the store's fallback for
    /// reads while it cannot write) is still held against another start
    /// on the same data_dir: that start is refused as for a file the store
    /// has open for writing. Before, the read-only handle held no lock, and
    /// a second server started on the file and wrote to it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_opened_read_only_is_held_against_another_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = holding_before(dir.path()).await;
        store.close().await;
        let path = dir.path().join("messages.redb");
        let read_only = ReadOnlyFile::new(std::fs::File::open(&path).unwrap()).unwrap();
        let db = Builder::new().create_with_backend(read_only).unwrap();
        let other = open_db(&path, 1 << 20);
        assert!(
            matches!(other, Err(Failure::Held)),
            "another start opened it: {:?}",
            other.map(|_| ())
        );
        drop(db);
        open_db(&path, 1 << 20).expect("free once the read-only handle is gone");
    }
}
