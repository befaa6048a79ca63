//! Idle TCP connections parked without a task (decision 0010).
//!
//! Most connections of a large broker sit idle. A hibernating connection task still
//! costs tokio's task allocation (384 B), its I/O registration (256 B) and the accept
//! loop's handle (56 B): more than everything else an idle connection holds. A parked
//! connection has none of these. Its socket leaves tokio's reactor for one of ours (a
//! `mio` poll served by one thread), and what the task kept goes into the session, as a
//! [`Parked`] of about 60 bytes. Its task ends.
//!
//! Whatever would have woken the task revives the connection instead, in a new task:
//! bytes from the client or the socket closing (this thread), and the session's signal
//! (a publisher, a takeover, shutdown, the keep-alive alarm), which goes through
//! [`Shared::wake`](crate::shared::Shared::wake) or the guard-holding variant used on
//! the routing path. The session's lock decides who revives: parking puts the
//! [`Parked`] into the session under that lock, and reviving takes it out under it.
//!
//! Plain TCP parks, and WebSocket on TCP between frames (its frame state is then
//! empty); other streams (TLS) hibernate in their task.

use std::{
    collections::HashMap,
    io,
    net::TcpStream,
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use mio::{Events, Interest, Poll, Registry, Token, Waker, unix::SourceFd};
use mqtt_codec::{Decoder, ProtocolVersion};
use tokio::task::JoinSet;
use tracing::warn;

use crate::{sessions::SessionHandle, shared::Shared};

/// The token of the waker that stops the thread.
const STOP: Token = Token(0);

/// What a parked connection keeps: its socket and what its task held besides the
/// session and the broker. Kept in the session ([`SessionCell`](crate::sessions::SessionCell)).
#[derive(Debug)]
pub(crate) struct Parked {
    pub(crate) stream: TcpStream,
    pub(crate) generation: u64,
    pub(crate) version: ProtocolVersion,
    pub(crate) decoder: Decoder,
    /// The keep-alive alarm set for it (session time, alarm number), if any.
    pub(crate) alarm: Option<(mqtt_session::Instant, u64)>,
    /// Its place on its listener, if the listener counts them.
    pub(crate) slot: Option<crate::listener::ListenerSlot>,
    /// It speaks WebSocket: frames resume at a frame boundary, where it parked.
    pub(crate) websocket: bool,
    /// Its registration with the poll.
    token: usize,
}

impl Parked {
    /// Its registration with the poll: events of an earlier registration of the same
    /// session are not for it.
    pub(crate) fn token(&self) -> usize {
        self.token
    }
}

/// The poll of parked sockets, its thread, and the tasks of revived connections.
#[derive(Debug)]
pub(crate) struct Parking {
    registry: Registry,
    waker: Waker,
    /// Set by [`Parking::close`]: the thread stops, and nothing parks or revives.
    stopped: Arc<AtomicBool>,
    /// The poll failed: its thread is gone and connections hibernate in their tasks.
    deaf: Arc<AtomicBool>,
    /// The session of each registered socket, by token.
    sockets: Mutex<HashMap<usize, Weak<SessionHandle>>>,
    next: AtomicUsize,
    shared: Weak<Shared>,
    runtime: tokio::runtime::Handle,
    /// Revived connections, so that shutdown can wait for them (and abort the ones stuck
    /// on a write).
    tasks: Mutex<JoinSet<()>>,
}

impl Parking {
    /// Starts the poll's thread for `shared`'s connections; revived connections run on
    /// the current runtime.
    ///
    /// # Errors
    /// If the poll or its thread cannot be created (out of file descriptors, threads).
    pub(crate) fn start(shared: &Arc<Shared>) -> io::Result<Self> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let waker = Waker::new(poll.registry(), STOP)?;
        let stopped = Arc::new(AtomicBool::new(false));
        let deaf = Arc::new(AtomicBool::new(false));
        let runtime = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        let weak = Arc::downgrade(shared);
        let (thread_stopped, thread_deaf) = (Arc::clone(&stopped), Arc::clone(&deaf));
        std::thread::Builder::new()
            .name("mqtt-parking".into())
            .spawn(move || watch(poll, &weak, &thread_stopped, &thread_deaf))?;
        Ok(Self {
            registry,
            waker,
            stopped,
            deaf,
            sockets: Mutex::new(HashMap::new()),
            // Token 0 is the waker's.
            next: AtomicUsize::new(1),
            shared: Arc::downgrade(shared),
            runtime,
            tasks: Mutex::new(JoinSet::new()),
        })
    }

    fn sockets(&self) -> MutexGuard<'_, HashMap<usize, Weak<SessionHandle>>> {
        // A panic while holding the lock is a bug; the map is still usable.
        self.sockets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn tasks(&self) -> MutexGuard<'_, JoinSet<()>> {
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers `stream` (still tokio's) for `handle`, and returns the token for
    /// [`Parked`]. Called with the session locked, before the stream leaves tokio: an
    /// event from then on finds the session and waits for its lock, by which time the
    /// [`Parked`] is in it. (A socket may be in two polls at once.)
    pub(crate) fn register(
        &self,
        stream: &tokio::net::TcpStream,
        handle: &Arc<SessionHandle>,
    ) -> io::Result<usize> {
        // Token 0 is the waker's (a 32-bit counter can wrap).
        let token = match self.next.fetch_add(1, Ordering::Relaxed) {
            0 => self.next.fetch_add(1, Ordering::Relaxed),
            token => token,
        };
        {
            // Under the map's lock, so that a poll failing meanwhile finds this socket
            // when it revives the parked ones.
            let mut sockets = self.sockets();
            if self.deaf.load(Ordering::Acquire) || self.stopped.load(Ordering::Acquire) {
                return Err(io::Error::other("the poll of parked connections is gone"));
            }
            sockets.insert(token, Arc::downgrade(handle));
        }
        let fd = stream.as_raw_fd();
        match self
            .registry
            .register(&mut SourceFd(&fd), Token(token), Interest::READABLE)
        {
            Ok(()) => Ok(token),
            Err(e) => {
                self.sockets().remove(&token);
                Err(e)
            }
        }
    }

    /// The [`Parked`] for a socket just registered and out of tokio.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn parked(
        token: usize,
        stream: TcpStream,
        generation: u64,
        version: ProtocolVersion,
        decoder: Decoder,
        alarm: Option<(mqtt_session::Instant, u64)>,
        slot: Option<crate::listener::ListenerSlot>,
        websocket: bool,
    ) -> Box<Parked> {
        Box::new(Parked {
            stream,
            generation,
            version,
            decoder,
            alarm,
            slot,
            websocket,
            token,
        })
    }

    /// Forgets a registration whose socket never parked (it closed on the way out of
    /// tokio, which also took it out of the poll).
    pub(crate) fn unregister(&self, token: usize) {
        self.sockets().remove(&token);
    }

    /// Serves `parked`, just taken out of `handle`'s session, in a new task.
    pub(crate) fn revive(&self, handle: Arc<SessionHandle>, parked: Box<Parked>) {
        self.sockets().remove(&parked.token);
        let fd = parked.stream.as_raw_fd();
        // Closing the socket would take it out as well; it stays open, so out it goes.
        let _ = self.registry.deregister(&mut SourceFd(&fd));
        let Some(shared) = self.shared.upgrade() else {
            // The broker is gone: dropping the socket closes it.
            return;
        };
        if let Some((at, id)) = parked.alarm {
            shared.timers.cancel_alarm(at, id);
        }
        let mut tasks = self.tasks();
        // Under the set's lock: `close` sets the flag before it takes the set, so a task
        // is either refused here or in the set it aborts.
        if self.stopped.load(Ordering::Acquire) {
            // Closed (the broker was dropped, or shutdown gave up waiting): dropping
            // the socket closes it.
            return;
        }
        Self::reap(&mut tasks);
        // Each kind of stream in a task of its own size.
        if parked.websocket {
            tasks.spawn_on(
                async move {
                    let after = Arc::clone(&shared);
                    crate::connection::resume::<crate::listener::ParkedWebSocket>(
                        shared, handle, parked,
                    )
                    .await;
                    if let Some(parking) = after.parking() {
                        Self::reap(&mut parking.tasks());
                    }
                },
                &self.runtime,
            );
        } else {
            tasks.spawn_on(
                async move {
                    let after = Arc::clone(&shared);
                    crate::connection::resume::<tokio::net::TcpStream>(shared, handle, parked)
                        .await;
                    if let Some(parking) = after.parking() {
                        Self::reap(&mut parking.tasks());
                    }
                },
                &self.runtime,
            );
        }
    }

    /// Frees the tasks of revived connections that have ended: nothing else joins the
    /// set before shutdown. Each revival and each revived connection's end reaps, so at
    /// most the last to end stays.
    fn reap(tasks: &mut JoinSet<()>) {
        while tasks.try_join_next().is_some() {}
    }

    /// A socket is readable or closed: revives its connection, if it is still parked.
    fn ready(&self, token: usize) {
        let Some(handle) = self.sockets().get(&token).and_then(Weak::upgrade) else {
            return;
        };
        let parked = handle.lock().unpark(token);
        if let Some(parked) = parked {
            self.revive(handle, parked);
        }
    }

    /// The revived connections' tasks, for shutdown to wait on; empty when none is left.
    pub(crate) fn take_tasks(&self) -> JoinSet<()> {
        std::mem::take(&mut *self.tasks())
    }

    /// Revives every parked connection (the poll failed, and they would not hear their
    /// sockets).
    fn revive_all(&self) {
        let tokens: Vec<usize> = self.sockets().keys().copied().collect();
        for token in tokens {
            self.ready(token);
        }
    }

    /// Stops for good: the thread ends, revived connections' tasks are aborted, parked
    /// connections are closed, and nothing parks or revives any more. At the end of
    /// shutdown (when nothing is left to abort, unless it gave up waiting), and for a
    /// broker dropped without it. A connection closed here is not released: its session
    /// keeps saying it is connected, which matters to nobody once the broker is gone.
    pub(crate) fn close(&self) {
        self.stopped.store(true, Ordering::Release);
        let _ = self.waker.wake();
        self.take_tasks().abort_all();
        let handles: Vec<_> = self
            .sockets()
            .drain()
            .filter_map(|(_, h)| h.upgrade())
            .collect();
        for handle in handles {
            // Dropping the socket closes it.
            drop(handle.lock().take_parked());
        }
    }
}

impl Drop for Parking {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Release);
        let _ = self.waker.wake();
    }
}

/// The poll's thread: revives the connections whose sockets become readable, until the
/// broker is gone.
fn watch(mut poll: Poll, shared: &Weak<Shared>, stopped: &AtomicBool, deaf: &AtomicBool) {
    let mut events = Events::with_capacity(256);
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            warn!(error = %e, "the poll of parked connections failed; they hibernate in their tasks from now on");
            // Set even if the parking cannot be reached (not yet published, or the
            // broker going): no connection parks from here on.
            deaf.store(true, Ordering::Release);
            if let Some(shared) = shared.upgrade() {
                if let Some(parking) = shared.parking() {
                    // Taking the map's lock waits out any park that checked the flag
                    // before it was set: those are in the map for the sweep.
                    drop(parking.sockets());
                    parking.revive_all();
                }
            }
            return;
        }
        if stopped.load(Ordering::Acquire) {
            return;
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let Some(parking) = shared.parking() else {
            return;
        };
        for event in &events {
            if event.token() != STOP {
                parking.ready(event.token().0);
            }
        }
    }
}
