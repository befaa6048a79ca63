//! [`DiskStore`]: the durable [`Store`] (`[persistence] mode = "sync"` or `"batch"`), one
//! redb file (decision 0021), written by one thread with group commit.
//!
//! # Layout
//! Four tables: `retained` (topic → retained message), `sessions` (client identifier →
//! the session's record: version, expiry, wall-clock deadline, subscriptions),
//! `messages` (client identifier → what the session holds besides its messages: QoS
//! 1/2 in flight by message identifier with packet identifiers and phases, QoS 2 packet
//! identifiers awaiting PUBREL, the identifier counters, its will, as
//! `ServerSession::export_detached` writes them, and the wall-clock time of the export)
//! and `queue` ((client identifier, message identifier) → one message the session holds,
//! queued or in flight, with its wall-clock expiry). A message's record is written once,
//! in the commit after it was queued, and deleted in the commit after it left the
//! session (acknowledged, expired, dropped); loading scans a session's records in
//! identifier order, which is the queue's. Every value is an envelope:
//!
//! ```text
//! format u8 (= 1) · CRC-32 (IEEE) u32 of the payload · payload
//! ```
//! A value whose format or checksum does not match refuses the start, naming the file,
//! the table and the key.
//!
//! # Group commit
//! The broker tells the store each change under the lock that orders it (see
//! [`Store`]): a retained message or a session record is queued as it is; a session
//! whose messages changed is only marked, and the writer exports it when it takes the
//! batch: its small state record, the records of the messages the file does not hold
//! yet and the deletion of those it no longer holds (found by comparing message
//! identifiers with what the file holds, kept in memory). The batch is taken and its
//! sessions exported while no routing is half done (`Store::group`), so the copies of
//! an inbound QoS 2 message and its publisher's packet identifier share a commit. The
//! writer takes everything pending, writes it in one redb write transaction and commits
//! it (fsync), then publishes the batch's number: a [`Ticket`] taken after a change is
//! covered once that number reaches it. In `sync` mode the writer starts a batch as soon
//! as there is something to write; in `batch` mode at most every `batch_ms`.

// redb's error is large (160 bytes); it is returned only on the writer's cold path.
#![allow(clippy::result_large_err)]

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use mqtt_codec::{
    ByteStr, Decoder, Packet, ProtocolVersion, QosPid, SubscriptionId, SubscriptionOptions,
};
use mqtt_session::{Message, SubscriptionRecord};
use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::watch;
use tracing::{error, info};

use crate::store::{
    Commits, LiveSession, Page, PageRequest, PagedBacklog, PagedSession, QueuedRecord,
    RetainedRecord, SavedMessages, SessionExport, SessionRecord, Store, StoreError, Stored, Ticket,
};

const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const MESSAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("messages");
const QUEUE: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("queue");

/// redb's page cache: what the store costs in memory at most, however large the file.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// The envelope's format version.
const FORMAT: u8 = 1;

/// How the store commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Commit {
    /// As soon as there is something to write; acknowledgements wait for it.
    Sync,
    /// At most every this long; acknowledgements do not wait.
    Batch(Duration),
}

/// The durable store: retained messages, persistent sessions and their messages in one
/// redb file (see the [module docs](self)).
pub struct DiskStore {
    path: PathBuf,
    shared: Arc<Inner>,
    commit: Commit,
    window: Window,
    writer: Option<thread::JoinHandle<()>>,
}

/// How much of each session's backlog [`Store::load`] reads into memory; the rest
/// stays on disk until the session asks for it ([`Store::page_in`]).
#[derive(Clone, Copy, Debug)]
struct Window {
    /// Read whatever their size: the messages in flight are among the first this many
    /// (they are sent in identifier order).
    inflight: usize,
    /// At most this many messages...
    messages: usize,
    /// ...and about this many bytes.
    bytes: usize,
}

impl fmt::Debug for DiskStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Short: it names the store in errors.
        write!(f, "DiskStore({})", self.path.display())
    }
}

/// What the broker's threads and the writer share.
struct Inner {
    /// The file, opened; `None` after a failed commit or read until the writer opens it
    /// again (redb refuses every write and read after one failed, until it is reopened).
    db: Mutex<Option<Database>>,
    /// Read by whoever makes changes that must share a commit (`Store::group`),
    /// written by the writer while it takes a batch and exports its sessions.
    group: RwLock<()>,
    pending: Mutex<Pending>,
    /// The message identifiers the file holds for each session (table `queue`): what
    /// an export is compared with. Filled by `load`, then the writer's.
    known: Mutex<HashMap<String, BTreeSet<u64>>>,
    wake: Condvar,
    commits: watch::Sender<Commits>,
}

#[derive(Default)]
struct Pending {
    /// The number of the batch being assembled: what a ticket taken now waits for.
    batch: u64,
    ops: Vec<Op>,
    dirty: Vec<Arc<dyn LiveSession>>,
    /// Sessions waiting for their paged messages: served after the batch taken with
    /// them is committed, so that what they paged out before asking is on disk.
    pages: Vec<PageAsk>,
    closed: bool,
}

/// A session waiting for its paged messages, and what it asked for.
type PageAsk = (Box<dyn PagedSession>, PageRequest);

enum Op {
    Retain(Box<str>, Option<Vec<u8>>),
    Session(Box<str>, Option<Vec<u8>>),
    /// A message a session keeps on disk only ([`Store::page_out`]): its record.
    PageOut(Box<str>, u64, Vec<u8>),
}

impl DiskStore {
    /// Opens (or creates) the store at `path` and starts its writer thread.
    ///
    /// # Errors
    /// If the file cannot be opened or created, or is not a redb file; the error names
    /// the file.
    pub fn open(path: &Path, commit: Commit) -> Result<Self, StoreError> {
        // redb checks its own page checksums when it opens a file that was not closed
        // cleanly: a last commit that fails them is taken for a torn write (power lost
        // during the commit, so nothing it held was acknowledged) and rolled back to
        // the commit before. It cannot tell that from damage to that commit's pages,
        // so it is said loudly.
        let (file, flag) = (path.display().to_string(), AtomicBool::new(false));
        let mut builder = Database::builder();
        // redb's default cache is 1 GiB: the file's pages would stay in the broker's
        // memory as the file grows (a long backlog on disk would cost its size in RAM).
        builder.set_cache_size(CACHE_BYTES);
        builder.set_repair_callback(move |session| {
            // redb calls this at 0.0 for every repair (any file not closed cleanly, as
            // after every SIGKILL), and at 0.3 only when it rolls the last commit back.
            let progress = session.progress();
            if progress > 0.0 && progress < 0.5 && !flag.swap(true, Ordering::Relaxed) {
                error!(
                    file = %file,
                    "the store's last commit failed its checksums and was rolled back to \
                     the one before: after a power loss this is a torn write (nothing it \
                     held was acknowledged); if the machine did not lose power, the file \
                     is damaged and that commit is lost (restore a backup of the file)"
                );
            }
        });
        let db = open_file(&builder, path).map_err(|e| {
            StoreError::new(format!(
                "{}: cannot open the store: {e} (the file is damaged, cut short or not a \
                 store: restore a backup of it, or move it away to start empty)",
                path.display()
            ))
        })?;
        // The tables exist from the start, so that reading finds them.
        write_txn(&db, |tx| {
            tx.open_table(RETAINED)?;
            tx.open_table(SESSIONS)?;
            tx.open_table(MESSAGES)?;
            tx.open_table(QUEUE)?;
            Ok(())
        })
        .map_err(|e| {
            StoreError::new(format!(
                "{}: cannot write to the store: {e} (check the file's permissions and the \
                 free space; restore a backup of the file, or move it away to start empty)",
                path.display()
            ))
        })?;
        let (commits, _) = watch::channel(Commits::default());
        let shared = Arc::new(Inner {
            db: Mutex::new(Some(db)),
            group: RwLock::new(()),
            known: Mutex::default(),
            pending: Mutex::new(Pending {
                batch: 1,
                ..Pending::default()
            }),
            wake: Condvar::new(),
            commits,
        });
        let writer = {
            let (shared, path) = (Arc::clone(&shared), path.to_owned());
            thread::Builder::new()
                .name("mqtt-store".into())
                .spawn(move || run_writer(&shared, &path, commit))?
        };
        Ok(Self {
            path: path.to_owned(),
            shared,
            commit,
            window: Window {
                inflight: usize::MAX,
                messages: usize::MAX,
                bytes: usize::MAX,
            },
            writer: Some(writer),
        })
    }

    /// Reads at most `messages` messages and about `bytes` bytes of each session's
    /// backlog into memory at start (and always the first `inflight`, among which are
    /// those in flight); the rest stays on disk for the session to page in. Without
    /// it, everything is read.
    #[must_use]
    pub fn with_window(mut self, inflight: usize, messages: usize, bytes: usize) -> Self {
        self.window = Window {
            inflight,
            messages,
            bytes,
        };
        self
    }

    fn queue(&self, op: Op) -> Result<(), StoreError> {
        let mut p = self.shared.lock();
        if p.closed {
            return Err(StoreError::new("the store is closed"));
        }
        p.ops.push(op);
        drop(p);
        self.shared.wake.notify_one();
        Ok(())
    }

    fn corrupt(&self, table: &str, key: &str, what: &str) -> StoreError {
        StoreError::new(format!(
            "{}: table `{table}`, key {key:?}: {what}. The file is damaged or was written by \
             another version: restore a backup of it, or move it away to start with an empty \
             store (what it held is then lost)",
            self.path.display()
        ))
    }

    fn read_all(&self) -> Result<Stored, StoreError> {
        let io = |e: redb::Error| StoreError::new(format!("{}: {e}", self.path.display()));
        let db = self
            .shared
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let db = db
            .as_ref()
            .ok_or_else(|| StoreError::new(format!("{}: not open", self.path.display())))?;
        let tx = db.begin_read().map_err(|e| io(e.into()))?;
        let mut stored = Stored::default();
        let table = tx.open_table(RETAINED).map_err(|e| io(e.into()))?;
        for entry in table.iter().map_err(|e| io(e.into()))? {
            let (k, v) = entry.map_err(|e| io(e.into()))?;
            let (topic, value) = (k.value(), v.value());
            let payload = open_envelope(value).map_err(|w| self.corrupt("retained", topic, w))?;
            let record =
                decode_retained(payload).map_err(|w| self.corrupt("retained", topic, w))?;
            stored.retained.push(record);
        }
        let table = tx.open_table(SESSIONS).map_err(|e| io(e.into()))?;
        let messages = tx.open_table(MESSAGES).map_err(|e| io(e.into()))?;
        let queue = tx.open_table(QUEUE).map_err(|e| io(e.into()))?;
        let mut known = HashMap::new();
        for entry in table.iter().map_err(|e| io(e.into()))? {
            let (k, v) = entry.map_err(|e| io(e.into()))?;
            let (client, value) = (k.value(), v.value());
            let payload = open_envelope(value).map_err(|w| self.corrupt("sessions", client, w))?;
            let mut record =
                decode_session(client, payload).map_err(|w| self.corrupt("sessions", client, w))?;
            if let Some(v) = messages.get(client).map_err(|e| io(e.into()))? {
                let payload =
                    open_envelope(v.value()).map_err(|w| self.corrupt("messages", client, w))?;
                let mut saved =
                    decode_messages(payload).map_err(|w| self.corrupt("messages", client, w))?;
                let mut ids = BTreeSet::new();
                let (mut bytes, mut paged) = (0usize, None::<PagedBacklog>);
                for entry in queue
                    .range((client, 0)..=(client, u64::MAX))
                    .map_err(|e| io(e.into()))?
                {
                    let (k, v) = entry.map_err(|e| io(e.into()))?;
                    let id = k.value().1;
                    let w = &self.window;
                    let n = ids.len();
                    if paged.is_some() || (n >= w.inflight && (n >= w.messages || bytes >= w.bytes))
                    {
                        // Beyond the window: left on disk, counted (not read: a
                        // backlog of millions is not decoded at start).
                        let p = paged.get_or_insert(PagedBacklog {
                            first: id,
                            ..PagedBacklog::default()
                        });
                        p.last = id;
                        p.messages += 1;
                        p.bytes += v.value().len();
                        continue;
                    }
                    bytes += v.value().len();
                    let key = format!("{client}/{id}");
                    let payload =
                        open_envelope(v.value()).map_err(|w| self.corrupt("queue", &key, w))?;
                    let (expires_at, message) =
                        decode_queued(payload).map_err(|w| self.corrupt("queue", &key, w))?;
                    saved
                        .messages
                        .push(QueuedRecord::new(id, expires_at, message));
                    ids.insert(id);
                }
                known.insert(client.to_owned(), ids);
                saved.paged = paged;
                record.messages = Some(saved);
            }
            stored.sessions.push(record);
        }
        *self
            .shared
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = known;
        Ok(stored)
    }
}

impl Drop for DiskStore {
    /// Writes what is pending, then stops the writer.
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Store for DiskStore {
    fn load(&self) -> Result<Stored, StoreError> {
        let started = std::time::Instant::now();
        let stored = self.read_all()?;
        info!(
            file = %self.path.display(),
            retained = stored.retained.len(),
            sessions = stored.sessions.len(),
            ms = started.elapsed().as_millis() as u64,
            "store read"
        );
        Ok(stored)
    }

    fn retain(&self, topic: &str, message: Option<&RetainedRecord>) -> Result<(), StoreError> {
        self.queue(Op::Retain(topic.into(), message.map(encode_retained)))
    }

    fn save_session(&self, session: &SessionRecord) -> Result<(), StoreError> {
        self.queue(Op::Session(
            session.client_id.as_str().into(),
            Some(encode_session(session)),
        ))
    }

    fn remove_session(&self, client_id: &str) -> Result<(), StoreError> {
        self.queue(Op::Session(client_id.into(), None))
    }

    fn session_changed(&self, session: Arc<dyn LiveSession>) {
        let mut p = self.shared.lock();
        if !p.closed {
            p.dirty.push(session);
            drop(p);
            self.shared.wake.notify_one();
        }
    }

    fn group(&self) -> Option<RwLockReadGuard<'_, ()>> {
        Some(
            self.shared
                .group
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    fn ticket(&self) -> Ticket {
        let p = self.shared.lock();
        // Nothing waits in the batch being assembled: everything told so far is in the
        // one the writer took last (or an earlier one).
        if p.ops.is_empty() && p.dirty.is_empty() {
            Ticket(p.batch - 1)
        } else {
            Ticket(p.batch)
        }
    }

    fn commits(&self) -> Option<watch::Receiver<Commits>> {
        (self.commit == Commit::Sync).then(|| self.shared.commits.subscribe())
    }

    fn pages(&self) -> bool {
        true
    }

    fn page_out(&self, client_id: &str, record: QueuedRecord) -> Result<(), StoreError> {
        self.queue(Op::PageOut(
            client_id.into(),
            record.id,
            encode_queued(&record),
        ))
    }

    fn page_in(&self, session: Box<dyn PagedSession>, request: PageRequest) {
        let mut p = self.shared.lock();
        if !p.closed {
            p.pages.push((session, request));
            drop(p);
            self.shared.wake.notify_one();
        }
    }
}

/// The writer thread: takes what is pending, writes and commits it, publishes the
/// batch's number; until the store is dropped and nothing is left.
fn run_writer(shared: &Inner, path: &Path, commit: Commit) {
    // Ops of a batch that failed, written again first with the next.
    let mut retry: Vec<Op> = Vec::new();
    let mut retry_dirty: Vec<Arc<dyn LiveSession>> = Vec::new();
    // Page requests taken with a batch that failed: served after one succeeds.
    let mut retry_pages: Vec<PageAsk> = Vec::new();
    let mut failures = 0u64;
    let mut last_log: Option<std::time::Instant> = None;
    loop {
        let (group, batch, mut ops, mut dirty, mut pages, closed) = {
            let mut p = shared.lock();
            while p.ops.is_empty()
                && p.dirty.is_empty()
                && p.pages.is_empty()
                && retry.is_empty()
                && retry_dirty.is_empty()
                && retry_pages.is_empty()
                && !p.closed
            {
                p = shared
                    .wake
                    .wait(p)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            let writes = !(p.ops.is_empty()
                && p.dirty.is_empty()
                && retry.is_empty()
                && retry_dirty.is_empty());
            if !writes && !p.pages.is_empty() {
                // Only sessions asking for their paged messages, and everything paged
                // out is committed: read at once.
                let pages = std::mem::take(&mut p.pages);
                drop(p);
                let mut db = shared
                    .db
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Err(pages) = serve_pages_reopening(&mut db, shared, path, pages) {
                    drop(db);
                    shared.lock().pages.extend(pages);
                    thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
            if let Commit::Batch(every) = commit {
                if !p.closed {
                    // Gather for the batch's interval.
                    drop(p);
                    thread::sleep(every);
                    p = shared.lock();
                }
            }
            drop(p);
            // No group of changes is half made while a batch is taken and its sessions
            // exported (see `Store::group`).
            let group = shared
                .group
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut p = shared.lock();
            let batch = p.batch;
            p.batch += 1;
            (
                group,
                batch,
                std::mem::take(&mut p.ops),
                std::mem::take(&mut p.dirty),
                std::mem::take(&mut p.pages),
                p.closed,
            )
        };
        // Each on its own: a failed batch may have had sessions to export and no op.
        if !retry_pages.is_empty() {
            retry_pages.append(&mut pages);
            pages = std::mem::take(&mut retry_pages);
        }
        if !retry.is_empty() {
            retry.append(&mut ops);
            ops = std::mem::take(&mut retry);
        }
        if !retry_dirty.is_empty() {
            retry_dirty.append(&mut dirty);
            dirty = std::mem::take(&mut retry_dirty);
        }
        // Each session once, exported now (after every change it was marked for): its
        // state, its messages the file does not hold yet, and those it no longer holds.
        let mut known = shared
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // What `known` said before this batch, for the sessions it changes: put back
        // if the commit fails.
        let mut undo: Vec<(String, Option<BTreeSet<u64>>)> = Vec::new();
        for op in &ops {
            if let Op::Session(client, None) = op {
                undo.push((client.to_string(), known.remove(&**client)));
            }
        }
        let empty = BTreeSet::new();
        let mut exports: Vec<(SessionExport, Vec<u64>)> = Vec::with_capacity(dirty.len());
        for s in &dirty {
            let holds = known.get(s.client_id()).unwrap_or(&empty);
            if let Some(mut e) = s.export(holds) {
                let gone = holds.difference(&e.present).copied().collect();
                // Later exports in this batch compare with what this one writes.
                let present = std::mem::take(&mut e.present);
                let before = known.insert(e.client_id.as_str().to_owned(), present);
                undo.push((e.client_id.as_str().to_owned(), before));
                exports.push((e, gone));
            }
        }
        drop(known);
        drop(group);
        let started = std::time::Instant::now();
        let mut db = shared
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let result = write_reopening(&mut db, path, |tx| {
            let mut retained = tx.open_table(RETAINED)?;
            let mut sessions = tx.open_table(SESSIONS)?;
            let mut messages = tx.open_table(MESSAGES)?;
            let mut queue = tx.open_table(QUEUE)?;
            for op in &ops {
                match op {
                    Op::Retain(topic, Some(v)) => {
                        retained.insert(&**topic, envelope(v).as_slice())?;
                    }
                    Op::Retain(topic, None) => {
                        retained.remove(&**topic)?;
                    }
                    Op::Session(client, Some(v)) => {
                        sessions.insert(&**client, envelope(v).as_slice())?;
                    }
                    Op::Session(client, None) => {
                        sessions.remove(&**client)?;
                        messages.remove(&**client)?;
                        queue.retain_in((&**client, 0)..=(&**client, u64::MAX), |_, _| false)?;
                    }
                    Op::PageOut(client, id, v) => {
                        queue.insert((&**client, *id), envelope(v).as_slice())?;
                    }
                }
            }
            let now = SystemTime::now();
            for (e, gone) in &exports {
                let client = e.client_id.as_str();
                let v = encode_messages(&e.state, now);
                messages.insert(client, envelope(&v).as_slice())?;
                for r in &e.new {
                    queue.insert((client, r.id), envelope(&encode_queued(r)).as_slice())?;
                }
                for &id in gone {
                    queue.remove((client, id))?;
                }
            }
            Ok(())
        });
        match result {
            Ok(()) => {
                if failures > 0 {
                    info!(file = %path.display(), failures, "the store writes again");
                    failures = 0;
                }
                let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                shared.commits.send_modify(|c| {
                    c.committed = batch;
                    c.count += 1;
                    c.micros_total = c.micros_total.saturating_add(micros);
                    c.last_micros = micros;
                });
                if !pages.is_empty() {
                    if let Err(pages) = serve_pages_reopening(&mut db, shared, path, pages) {
                        retry_pages = pages;
                    }
                }
                drop(db);
            }
            Err(e) => {
                drop(db);
                // The file holds what it held: the next exports compare with that.
                let mut known = shared
                    .known
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for (client, before) in undo.into_iter().rev() {
                    match before {
                        Some(ids) => known.insert(client, ids),
                        None => known.remove(&client),
                    };
                }
                drop(known);
                failures += 1;
                if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    last_log = Some(std::time::Instant::now());
                    error!(file = %path.display(), error = %e, failures,
                        "THE STORE CANNOT WRITE: acknowledgements of messages that must be kept are withheld (5.0: 0x97 Quota exceeded) until it can (at most one such line per 10 s)");
                }
                shared.commits.send_modify(|c| c.failed = batch);
                retry = ops;
                retry_dirty = dirty;
                retry_pages = pages;
                if closed {
                    return;
                }
                // Not in a tight loop against a full disk.
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        }
        if closed {
            // One guard: a second `lock()` in the same condition would wait on the first.
            let p = shared.lock();
            if p.ops.is_empty() && p.dirty.is_empty() {
                return;
            }
        }
    }
}

/// Opens (or creates) the file at `path` with `builder`. redb 2.6 asserts, instead of
/// returning an error, on some damaged files (one shorter than its header says): that
/// is an error here too.
fn open_file(builder: &redb::Builder, path: &Path) -> Result<Database, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        builder.create(path).map_err(|e| e.to_string())
    }))
    .unwrap_or_else(|panic| {
        Err(panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "redb panicked".into()))
    })
}

/// [`write_txn`] on the file in `db`, opened again first if a failed commit closed it:
/// redb refuses every write after one failed (`PreviousIo`), also once there is room
/// again, until the file is opened again; opening repairs its state from the last
/// commit that succeeded.
fn write_reopening(
    db: &mut Option<Database>,
    path: &Path,
    f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
) -> Result<(), String> {
    let result = reopened(db, path).and_then(|db| write_txn(db, f).map_err(|e| e.to_string()));
    if result.is_err() {
        *db = None;
    }
    result
}

/// The file in `db`, opened again if a failed write or read closed it (see
/// [`write_reopening`]).
fn reopened<'a>(db: &'a mut Option<Database>, path: &Path) -> Result<&'a Database, String> {
    if let Some(db) = db {
        return Ok(db);
    }
    let mut builder = Database::builder();
    builder.set_cache_size(CACHE_BYTES);
    let opened =
        open_file(&builder, path).map_err(|e| format!("cannot open the file again: {e}"))?;
    Ok(db.insert(opened))
}

/// [`serve_pages`] on the file in `db`, opened again first if a failed write or read
/// closed it (see [`write_reopening`]).
fn serve_pages_reopening(
    db: &mut Option<Database>,
    shared: &Inner,
    path: &Path,
    pages: Vec<PageAsk>,
) -> Result<(), Vec<PageAsk>> {
    let result = match reopened(db, path) {
        Ok(open) => serve_pages(open, shared, path, pages),
        Err(e) => {
            error!(file = %path.display(), error = %e, "the store cannot be read: paged messages wait");
            Err(pages)
        }
    };
    if result.is_err() {
        *db = None;
    }
    result
}

/// Reads each session's paged messages as it asked ([`Store::page_in`]) and hands them
/// over; the identifiers read join what the file is known to hold for the session (a
/// damaged record is logged and left out, and goes with the session's next export, as
/// does the record of a message that expired on disk). `Err` gives the requests back
/// if the file cannot be read.
fn serve_pages(
    db: &Database,
    shared: &Inner,
    path: &Path,
    pages: Vec<PageAsk>,
) -> Result<(), Vec<PageAsk>> {
    let read = db
        .begin_read()
        .map_err(redb::Error::from)
        .and_then(|tx| tx.open_table(QUEUE).map_err(redb::Error::from));
    let table = match read {
        Ok(table) => table,
        Err(e) => {
            error!(file = %path.display(), error = %e, "the store cannot be read: paged messages wait");
            return Err(pages);
        }
    };
    for (session, request) in pages {
        let client = session.client_id();
        let mut page = Page {
            records: Vec::new(),
            next: request.from,
            end: true,
        };
        let (mut read_ids, mut bytes) = (Vec::new(), 0usize);
        let range = table.range((client, request.from)..=(client, u64::MAX));
        let entries = match range {
            Ok(range) => range,
            Err(e) => {
                error!(file = %path.display(), client, error = %e, "paged messages cannot be read");
                continue;
            }
        };
        for entry in entries {
            let Ok((k, v)) = entry else {
                error!(file = %path.display(), client, "paged messages cannot be read");
                break;
            };
            let (id, value) = (k.value().1, v.value());
            if read_ids.len() >= request.max_messages.max(1)
                || (!read_ids.is_empty() && bytes.saturating_add(value.len()) > request.max_bytes)
            {
                page.end = false;
                page.next = id;
                break;
            }
            read_ids.push(id);
            page.next = id.saturating_add(1);
            match open_envelope(value).and_then(decode_queued) {
                Ok((expires_at, message)) => {
                    bytes += message.size();
                    page.records
                        .push(QueuedRecord::new(id, expires_at, message));
                }
                Err(what) => error!(
                    file = %path.display(), table = "queue", client, id, what,
                    "a paged message's record is damaged: left out"
                ),
            }
        }
        let client = client.to_owned();
        if session.page_in(page) {
            shared
                .known
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(client)
                .or_default()
                .extend(read_ids);
        }
    }
    Ok(())
}

fn write_txn(
    db: &Database,
    f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
) -> Result<(), redb::Error> {
    let tx = db.begin_write()?;
    f(&tx)?;
    tx.commit()?;
    Ok(())
}

// ---- values -------------------------------------------------------------------------

fn envelope(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 5);
    v.push(FORMAT);
    v.extend_from_slice(&crc32(payload).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

fn open_envelope(value: &[u8]) -> Result<&[u8], &'static str> {
    let (&format, rest) = value.split_first().ok_or("empty value")?;
    if format != FORMAT {
        return Err("unknown format version");
    }
    let (crc, payload) = rest.split_at_checked(4).ok_or("value too short")?;
    let crc = u32::from_be_bytes(crc.try_into().map_err(|_| "value too short")?);
    if crc != crc32(payload) {
        return Err("checksum mismatch");
    }
    Ok(payload)
}

/// CRC-32 (IEEE 802.3, reflected, as zlib) of a stored value's payload (decision 0022).
fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

fn put_time(out: &mut BytesMut, at: Option<SystemTime>) {
    match at.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
        Some(d) => {
            out.put_u8(1);
            out.put_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        }
        None => out.put_u8(0),
    }
}

fn get_time(b: &mut &[u8]) -> Result<Option<SystemTime>, &'static str> {
    match get_u8(b)? {
        0 => Ok(None),
        _ => {
            let ms = get_u64(b)?;
            Ok(UNIX_EPOCH.checked_add(Duration::from_millis(ms)))
        }
    }
}

fn get_u8(b: &mut &[u8]) -> Result<u8, &'static str> {
    if b.remaining() < 1 {
        return Err("value ends early");
    }
    Ok(b.get_u8())
}

fn get_u32(b: &mut &[u8]) -> Result<u32, &'static str> {
    if b.remaining() < 4 {
        return Err("value ends early");
    }
    Ok(b.get_u32())
}

fn get_u64(b: &mut &[u8]) -> Result<u64, &'static str> {
    if b.remaining() < 8 {
        return Err("value ends early");
    }
    Ok(b.get_u64())
}

fn get_bytes<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], &'static str> {
    let (head, rest) = b.split_at_checked(n).ok_or("value ends early")?;
    *b = rest;
    Ok(head)
}

/// A message as a 5.0 PUBLISH packet (packet identifier 1 for QoS 1/2), length first.
fn put_message(out: &mut BytesMut, m: &Message) {
    let publish = mqtt_codec::Publish {
        dup: false,
        qos_pid: QosPid::new(m.qos, std::num::NonZeroU16::MIN),
        retain: m.retain,
        topic: m.topic.clone(),
        payload: m.payload.clone(),
        topic_alias: None,
        properties: m.properties.clone(),
    };
    let mut packet = BytesMut::new();
    // Every field was valid when the message was accepted; should encoding fail, an
    // empty message is written and reading it reports the record.
    let _ = Packet::Publish(publish).encode(ProtocolVersion::V5, &mut packet);
    out.put_u32(packet.len() as u32);
    out.put_slice(&packet);
}

fn get_message(b: &mut &[u8]) -> Result<Message, &'static str> {
    let len = get_u32(b)? as usize;
    let mut packet = BytesMut::from(get_bytes(b, len)?);
    match Decoder::with_version(ProtocolVersion::V5).decode(&mut packet) {
        Ok(Some(Packet::Publish(p))) => Ok(Message::from_publish(p)),
        _ => Err("not a PUBLISH packet"),
    }
}

fn encode_retained(r: &RetainedRecord) -> Vec<u8> {
    let mut out = BytesMut::new();
    put_time(&mut out, r.expires_at);
    put_message(&mut out, &r.message);
    out.to_vec()
}

fn decode_retained(mut b: &[u8]) -> Result<RetainedRecord, &'static str> {
    let expires_at = get_time(&mut b)?;
    let message = get_message(&mut b)?;
    Ok(RetainedRecord::new(message, expires_at))
}

fn encode_session(s: &SessionRecord) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_u8(s.version.level());
    out.put_u32(s.session_expiry);
    put_time(&mut out, s.expires_at);
    out.put_u32(s.subscriptions.len() as u32);
    for sub in &s.subscriptions {
        out.put_u16(sub.filter.len() as u16);
        out.put_slice(sub.filter.as_bytes());
        out.put_u8(sub.options.to_byte());
        out.put_u32(sub.identifier.map_or(0, SubscriptionId::get));
    }
    out.to_vec()
}

fn decode_session(client: &str, mut b: &[u8]) -> Result<SessionRecord, &'static str> {
    let version = match get_u8(&mut b)? {
        3 => ProtocolVersion::V3_1,
        4 => ProtocolVersion::V3_1_1,
        5 => ProtocolVersion::V5,
        _ => return Err("unknown protocol level"),
    };
    let client_id = ByteStr::try_from(client.to_owned()).map_err(|_| "invalid client id")?;
    let mut record = SessionRecord::new(client_id, version, get_u32(&mut b)?);
    record.expires_at = get_time(&mut b)?;
    let count = get_u32(&mut b)?;
    for _ in 0..count {
        let len = usize::from(u16::from_be_bytes(
            get_bytes(&mut b, 2)?
                .try_into()
                .map_err(|_| "value ends early")?,
        ));
        let filter = std::str::from_utf8(get_bytes(&mut b, len)?).map_err(|_| "filter")?;
        let filter = ByteStr::try_from(filter.to_owned()).map_err(|_| "filter")?;
        let options =
            SubscriptionOptions::from_byte(get_u8(&mut b)?).ok_or("subscription options")?;
        let identifier = SubscriptionId::new(get_u32(&mut b)?);
        record.subscriptions.push(SubscriptionRecord {
            filter,
            options,
            identifier,
        });
    }
    if !b.is_empty() {
        return Err("trailing bytes");
    }
    Ok(record)
}

fn encode_messages(state: &Bytes, at: SystemTime) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(state.len() + 9);
    put_time(&mut out, Some(at));
    out.put_slice(state);
    out.to_vec()
}

fn decode_messages(mut b: &[u8]) -> Result<SavedMessages, &'static str> {
    let saved_at = get_time(&mut b)?.ok_or("no export time")?;
    Ok(SavedMessages {
        state: Bytes::copy_from_slice(b),
        saved_at,
        messages: Vec::new(),
        paged: None,
    })
}

fn encode_queued(r: &QueuedRecord) -> Vec<u8> {
    let mut out = BytesMut::new();
    put_time(&mut out, r.expires_at);
    put_message(&mut out, &r.message);
    out.to_vec()
}

fn decode_queued(mut b: &[u8]) -> Result<(Option<SystemTime>, Message), &'static str> {
    let expires_at = get_time(&mut b)?;
    let message = get_message(&mut b)?;
    if !b.is_empty() {
        return Err("trailing bytes");
    }
    Ok((expires_at, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_zlib() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn envelope_detects_a_flipped_bit() {
        let mut v = envelope(b"hello");
        assert_eq!(open_envelope(&v), Ok(&b"hello"[..]));
        if let Some(b) = v.last_mut() {
            *b ^= 1;
        }
        assert_eq!(open_envelope(&v), Err("checksum mismatch"));
    }
}
