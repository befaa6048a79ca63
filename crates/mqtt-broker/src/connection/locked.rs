//! Streams that cannot split into borrowed halves (TLS, WebSocket): both halves reach
//! the one stream through a lock taken for each call.
//!
//! A connection's task polls its halves one at a time, never at once, so the lock is
//! never contended: each read or write costs an uncontended lock and unlock, beside the
//! decryption or framing it guards. `tokio::io::split` would cost a shared allocation
//! per stage as well. TCP streams do not come here: they split for free.

use std::{
    io,
    pin::Pin,
    sync::{Mutex, MutexGuard, PoisonError},
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Conn, Duplex, Park};

/// A stream served behind [`Locked`]; it says whether an idle connection can park
/// (by default it hibernates in its task).
pub(crate) trait Unsplit: AsyncRead + AsyncWrite + Unpin + Send + Sized {
    /// Parks an idle connection, as [`Duplex::park`].
    fn park(conn: Conn<Locked<Self>>) -> Park<Locked<Self>> {
        Park::Hibernate(conn)
    }
}

/// A stream whose halves share it through an uncontended lock.
#[derive(Debug)]
pub(crate) struct Locked<S>(Mutex<S>);

impl<S> Locked<S> {
    pub(crate) fn new(stream: S) -> Self {
        Self(Mutex::new(stream))
    }

    /// The stream itself.
    pub(crate) fn into_inner(self) -> S {
        self.0.into_inner().unwrap_or_else(PoisonError::into_inner)
    }

    fn inner(&mut self) -> &mut S {
        self.0.get_mut().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One half of a [`Locked`] stream (either: both read and write).
#[derive(Debug)]
pub(crate) struct Half<'a, S>(&'a Mutex<S>);

impl<S> Half<'_, S> {
    fn lock(&self) -> MutexGuard<'_, S> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<S: Unsplit> Duplex for Locked<S> {
    type Read<'a>
        = Half<'a, S>
    where
        Self: 'a;
    type Write<'a>
        = Half<'a, S>
    where
        Self: 'a;
    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>) {
        (Half(&self.0), Half(&self.0))
    }

    fn park(conn: Conn<Self>) -> Park<Self> {
        S::park(conn)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Locked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().inner()).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Locked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().inner()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().inner()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().inner()).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Half<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Half<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.lock()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.lock()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.lock().is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_shutdown(cx)
    }
}
