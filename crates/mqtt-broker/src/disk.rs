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
//! and `chunks` ((client identifier, first message identifier) → a chunk of the messages
//! the session holds, queued, in flight or paged out, each with its wall-clock expiry).
//! A chunk is a run of consecutive message identifiers written in one commit (at most
//! 256 messages, about 64 KiB), so chunks never overlap and scanning them in key order
//! scans messages in identifier order, which is the queue's. A message is written once,
//! in the commit after it was queued (or paged out); when messages leave the session
//! (acknowledged, expired, dropped), the commit after rewrites their chunk without them,
//! or deletes it with its last. Per commit and session that is a few B-tree writes
//! rather than two per message. Every value is an envelope:
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
    collections::{BTreeMap, BTreeSet, HashMap},
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
use redb::{Database, ReadableTable, TableDefinition, TableHandle};
use tokio::sync::watch;
use tracing::{error, info};

use crate::store::{
    Commits, LiveSession, Page, PageRequest, PagedBacklog, PagedSession, QueuedRecord,
    RetainedRecord, SavedMessages, SessionRecord, Store, StoreError, Stored, Ticket,
};

const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const MESSAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("messages");
const CHUNKS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("chunks");
/// The table of one record per message that development versions wrote before
/// `chunks`: a file that has it is refused rather than read without its messages.
const OLD_QUEUE: &str = "queue";

/// A chunk holds at most this many messages...
const CHUNK_MESSAGES: usize = 256;
/// ...and about this many bytes: what rewriting it (when some of its messages left the
/// session) copies at most.
const CHUNK_BYTES: usize = 64 * 1024;

/// Message identifier → the key (first identifier) of the chunk that holds it, for the
/// messages of a session that the file holds and the session holds in memory.
type Holds = BTreeMap<u64, u64>;

/// redb's page cache: what the store costs in memory at most, however large the file.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// The most bytes of paged-out messages waiting for their commit (see
/// `Inner::uncommitted_paged`).
const MAX_UNCOMMITTED_PAGED: usize = 64 * 1024 * 1024;

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
    /// Besides the messages in flight (always read): at most this many messages...
    messages: usize,
    /// ...and about this many bytes...
    bytes: usize,
    /// ...and about this many bytes for all sessions together.
    total_bytes: usize,
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
    known: Mutex<HashMap<String, Holds>>,
    wake: Condvar,
    commits: watch::Sender<Commits>,
    /// Bytes of messages paged out and not committed yet: they are in memory until
    /// then, so past `MAX_UNCOMMITTED_PAGED` (a disk that stopped taking writes) no more
    /// are taken.
    uncommitted_paged: std::sync::atomic::AtomicUsize,
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

/// What the writer writes of one session's export.
struct Export {
    client: ByteStr,
    /// Its state record.
    state: Bytes,
    /// Chunk → the identifiers of its messages that left the session.
    gone: BTreeMap<u64, Vec<u64>>,
    /// Its messages the file did not hold.
    chunks: Chunker,
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
        let old = db.begin_read().ok().and_then(|tx| {
            tx.list_tables()
                .ok()
                .map(|mut t| t.any(|t| t.name() == OLD_QUEUE))
        });
        if old == Some(true) {
            return Err(StoreError::new(format!(
                "{}: written by a development version of the broker (table `{OLD_QUEUE}`, \
                 one record per message) that this one does not read: move the file away \
                 to start with an empty store (what it held is then lost)",
                path.display()
            )));
        }
        // The tables exist from the start, so that reading finds them.
        write_txn(&db, |tx| {
            tx.open_table(RETAINED)?;
            tx.open_table(SESSIONS)?;
            tx.open_table(MESSAGES)?;
            tx.open_table(CHUNKS)?;
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
            uncommitted_paged: std::sync::atomic::AtomicUsize::new(0),
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
                messages: usize::MAX,
                bytes: usize::MAX,
                total_bytes: usize::MAX,
            },
            writer: Some(writer),
        })
    }

    /// Reads at most `messages` messages and about `bytes` bytes of each session's
    /// backlog into memory at start, and about `total_bytes` for all sessions (past it
    /// a session reads only its messages in flight, which are always read); the rest
    /// stays on disk for the session to page in. Without it, everything is read.
    #[must_use]
    pub fn with_window(mut self, messages: usize, bytes: usize, total_bytes: usize) -> Self {
        self.window = Window {
            messages,
            bytes,
            total_bytes,
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
        let chunks = tx.open_table(CHUNKS).map_err(|e| io(e.into()))?;
        let mut known = HashMap::new();
        // Bytes of messages read into memory for all sessions: past the window's
        // total, sessions read only what they have in flight.
        let mut loaded_total = 0usize;
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
                // Those in flight are read whatever the window (the state names them);
                // then the window, in identifier order; the rest stays on disk.
                let inflight: BTreeSet<u64> = if saved.state.get(4) == Some(&2) {
                    mqtt_session::ServerSession::detached_inflight(&saved.state)
                        .map_err(|_| self.corrupt("messages", client, "not a session state"))?
                        .into_iter()
                        .map(|id| id.0)
                        .collect()
                } else {
                    BTreeSet::new()
                };
                let mut ids = Holds::new();
                let (mut bytes, mut paged) = (0usize, None::<PagedBacklog>);
                for entry in chunks
                    .range((client, 0)..=(client, u64::MAX))
                    .map_err(|e| io(e.into()))?
                {
                    let (k, v) = entry.map_err(|e| io(e.into()))?;
                    let chunk = k.value().1;
                    let key = format!("{client}/{chunk}");
                    let payload =
                        open_envelope(v.value()).map_err(|w| self.corrupt("chunks", &key, w))?;
                    for entry in Entries(payload) {
                        let (id, body) = entry.map_err(|w| self.corrupt("chunks", &key, w))?;
                        let w = &self.window;
                        let full = ids.len() >= w.messages
                            || bytes >= w.bytes
                            || loaded_total >= w.total_bytes;
                        if !inflight.contains(&id) && (paged.is_some() || full) {
                            // Beyond the window: left on disk, counted (not decoded: a
                            // backlog of millions is not read at start).
                            let p = paged.get_or_insert(PagedBacklog {
                                first: id,
                                ..PagedBacklog::default()
                            });
                            p.last = id;
                            p.messages += 1;
                            p.bytes += body.len();
                            continue;
                        }
                        bytes += body.len();
                        loaded_total += body.len();
                        let (expires_at, message) =
                            decode_queued(body).map_err(|w| self.corrupt("chunks", &key, w))?;
                        saved
                            .messages
                            .push(QueuedRecord::new(id, expires_at, message));
                        ids.insert(id, chunk);
                    }
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
            // The writer itself drops the store when the broker's last reference was
            // the one it held to hand a session its paged messages: it then finishes
            // on its own (it cannot wait for itself).
            if writer.thread().id() != thread::current().id() {
                let _ = writer.join();
            }
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
        let body = encode_queued(&record);
        let waiting = &self.shared.uncommitted_paged;
        if waiting.load(Ordering::Relaxed) >= MAX_UNCOMMITTED_PAGED {
            return Err(StoreError::new(
                "64 MiB of paged messages wait for a commit (the store cannot write)",
            ));
        }
        waiting.fetch_add(body.len(), Ordering::Relaxed);
        self.queue(Op::PageOut(client_id.into(), record.id, body))
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
            let reads = !(p.pages.is_empty() && retry_pages.is_empty());
            if reads && !writes {
                // Only sessions asking for their paged messages, and everything paged
                // out is committed: read at once.
                let mut pages = std::mem::take(&mut retry_pages);
                pages.append(&mut p.pages);
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
        let mut undo: Vec<(String, Option<Holds>)> = Vec::new();
        for op in &ops {
            if let Op::Session(client, None) = op {
                undo.push((client.to_string(), known.remove(&**client)));
            }
        }
        let mut exports: Vec<Export> = Vec::with_capacity(dirty.len());
        for s in &dirty {
            let client = s.client_id();
            let before = known.get(client);
            let exported = {
                let holds = |id| before.is_some_and(|h| h.contains_key(&id));
                s.export(&holds)
            };
            let Some(mut e) = exported else {
                continue;
            };
            // Later exports in this batch compare with what this one writes.
            let mut holds = before.cloned().unwrap_or_default();
            let mut gone: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
            holds.retain(|id, chunk| {
                let kept = e.present.contains(id);
                if !kept {
                    gone.entry(*chunk).or_default().push(*id);
                }
                kept
            });
            e.new.sort_unstable_by_key(|r| r.id);
            let mut chunker = Chunker::default();
            for r in &e.new {
                let chunk = chunker.push(r.id, &encode_queued(r));
                holds.insert(r.id, chunk);
            }
            let before = known.insert(e.client_id.as_str().to_owned(), holds);
            undo.push((e.client_id.as_str().to_owned(), before));
            exports.push(Export {
                client: e.client_id,
                state: e.state,
                gone,
                chunks: chunker,
            });
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
            let mut chunks = tx.open_table(CHUNKS)?;
            // Messages paged out, in chunks per session, written after the ops (a
            // session's removal drops those paged out before it in the batch).
            let mut paged: HashMap<&str, Chunker> = HashMap::new();
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
                        chunks.retain_in((&**client, 0)..=(&**client, u64::MAX), |_, _| false)?;
                        paged.remove(&**client);
                    }
                    Op::PageOut(client, id, body) => {
                        paged.entry(&**client).or_default().push(*id, body);
                    }
                }
            }
            for (client, chunker) in &paged {
                for (first, _, _, payload) in &chunker.chunks {
                    chunks.insert((*client, *first), envelope(payload).as_slice())?;
                }
            }
            let now = SystemTime::now();
            for e in &exports {
                let client = e.client.as_str();
                let v = encode_messages(&e.state, now);
                messages.insert(client, envelope(&v).as_slice())?;
                for (first, _, _, payload) in &e.chunks.chunks {
                    chunks.insert((client, *first), envelope(payload).as_slice())?;
                }
                // A chunk some of whose messages left is written again without them,
                // or deleted with the last.
                for (&chunk, ids) in &e.gone {
                    let Some(value) = chunks.get((client, chunk))?.map(|v| v.value().to_vec())
                    else {
                        continue;
                    };
                    let mut kept = Vec::new();
                    if let Ok(payload) = open_envelope(&value) {
                        for (id, body) in Entries(payload).map_while(Result::ok) {
                            if !ids.contains(&id) {
                                put_entry(&mut kept, id, body);
                            }
                        }
                    }
                    if kept.is_empty() {
                        chunks.remove((client, chunk))?;
                    } else {
                        chunks.insert((client, chunk), envelope(&kept).as_slice())?;
                    }
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
                let paged: usize = ops
                    .iter()
                    .map(|op| match op {
                        Op::PageOut(_, _, body) => body.len(),
                        _ => 0,
                    })
                    .sum();
                shared.uncommitted_paged.fetch_sub(paged, Ordering::Relaxed);
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

/// Reads each session's paged messages as it asked ([`Store::page_in`]): those with
/// identifiers from `from` to `until` that the file holds and the session does not
/// (messages it holds in memory have their identifiers among `known`'s: they are
/// skipped), in identifier order, and hands them over; the identifiers read join
/// `known` (the record of a message that expired on disk then goes with the session's
/// next export). `Err` gives back the requests not served if the file cannot be read;
/// a damaged chunk is logged and skipped.
fn serve_pages(
    db: &Database,
    shared: &Inner,
    path: &Path,
    pages: Vec<PageAsk>,
) -> Result<(), Vec<PageAsk>> {
    let read = db
        .begin_read()
        .map_err(redb::Error::from)
        .and_then(|tx| tx.open_table(CHUNKS).map_err(redb::Error::from));
    let table = match read {
        Ok(table) => table,
        Err(e) => {
            error!(file = %path.display(), error = %e, "the store cannot be read: paged messages wait");
            return Err(pages);
        }
    };
    let mut pages = pages.into_iter();
    while let Some((session, request)) = pages.next() {
        match read_page(&table, shared, session.client_id(), &request, path) {
            Ok((page, read)) => {
                let client = session.client_id().to_owned();
                if session.page_in(page) {
                    let mut known = shared
                        .known
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    known.entry(client).or_default().extend(read);
                }
            }
            Err(e) => {
                error!(file = %path.display(), client = session.client_id(), error = %e, "paged messages cannot be read: they wait");
                let mut rest = vec![(session, request)];
                rest.extend(pages);
                return Err(rest);
            }
        }
    }
    Ok(())
}

/// One session's page (see [`serve_pages`]), with the identifiers read and their chunks.
fn read_page(
    table: &redb::ReadOnlyTable<(&'static str, u64), &'static [u8]>,
    shared: &Inner,
    client: &str,
    request: &PageRequest,
    path: &Path,
) -> Result<(Page, Vec<(u64, u64)>), redb::Error> {
    let known = shared
        .known
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let held = known.get(client);
    let mut page = Page {
        records: Vec::new(),
        next: request.from,
        end: true,
    };
    let (mut read, mut bytes) = (Vec::new(), 0usize);
    // The chunk holding `from` may start before it: chunks never overlap, so it is
    // the last one that starts at or before it.
    let start = table
        .range((client, 0)..=(client, request.from))?
        .next_back()
        .transpose()?
        .map_or(request.from, |(k, _)| k.value().1);
    'chunks: for entry in table.range((client, start)..=(client, request.until))? {
        let (k, v) = entry?;
        let chunk = k.value().1;
        let entries = match open_envelope(v.value()) {
            Ok(payload) => Entries(payload),
            Err(what) => {
                error!(file = %path.display(), table = "chunks", client, chunk, what, "a chunk of paged messages is damaged: its messages are left out");
                continue;
            }
        };
        for entry in entries {
            let (id, body) = match entry {
                Ok(e) => e,
                Err(what) => {
                    error!(file = %path.display(), table = "chunks", client, chunk, what, "a chunk of paged messages is damaged: the rest of it is left out");
                    break;
                }
            };
            if id < request.from || held.is_some_and(|h| h.contains_key(&id)) {
                continue;
            }
            if id > request.until {
                break 'chunks;
            }
            if read.len() >= request.max_messages.max(1)
                || (!read.is_empty() && bytes.saturating_add(body.len()) > request.max_bytes)
            {
                page.end = false;
                page.next = id;
                break 'chunks;
            }
            read.push((id, chunk));
            page.next = id.saturating_add(1);
            match decode_queued(body) {
                Ok((expires_at, message)) => {
                    bytes += body.len();
                    page.records
                        .push(QueuedRecord::new(id, expires_at, message));
                }
                Err(what) => error!(
                    file = %path.display(), table = "chunks", client, chunk, id, what,
                    "a paged message's entry is damaged: left out"
                ),
            }
        }
    }
    Ok((page, read))
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

/// A chunk's payload: its entries one after the other, each
/// `message identifier u64 · length u32 · body` (the body as `encode_queued` writes it),
/// in identifier order.
struct Entries<'a>(&'a [u8]);

impl<'a> Iterator for Entries<'a> {
    type Item = Result<(u64, &'a [u8]), &'static str>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let mut b = self.0;
        let entry = get_u64(&mut b).and_then(|id| {
            let len = get_u32(&mut b)? as usize;
            Ok((id, get_bytes(&mut b, len)?))
        });
        // After an error, nothing more.
        self.0 = if entry.is_ok() { b } else { &[] };
        Some(entry)
    }
}

/// Appends the entry of message `id` with `body` to a chunk's payload.
fn put_entry(chunk: &mut Vec<u8>, id: u64, body: &[u8]) {
    chunk.extend_from_slice(&id.to_be_bytes());
    chunk.extend_from_slice(&(body.len() as u32).to_be_bytes());
    chunk.extend_from_slice(body);
}

/// Chunks being built for one commit: a run of consecutive message identifiers each,
/// at most `CHUNK_MESSAGES` messages and about `CHUNK_BYTES`, so that chunks never
/// overlap (scanning them in key order is scanning messages in identifier order).
#[derive(Default)]
struct Chunker {
    /// (first identifier, last identifier, count, payload)
    chunks: Vec<(u64, u64, usize, Vec<u8>)>,
}

impl Chunker {
    /// Adds message `id` (greater than every one added before); returns the key of
    /// the chunk it went to.
    fn push(&mut self, id: u64, body: &[u8]) -> u64 {
        match self.chunks.last_mut() {
            Some((first, last, count, payload))
                if last.checked_add(1) == Some(id)
                    && *count < CHUNK_MESSAGES
                    && payload.len() < CHUNK_BYTES =>
            {
                *last = id;
                *count += 1;
                put_entry(payload, id, body);
                *first
            }
            _ => {
                let mut payload = Vec::with_capacity(body.len() + 12);
                put_entry(&mut payload, id, body);
                self.chunks.push((id, id, 1, payload));
                id
            }
        }
    }
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
