//! The scheduler's TCP listeners, bounded: at most `MAX_CONNECTIONS` connections are served
//! at once, and the rest wait in the kernel's accept queue until one closes. Every served
//! connection holds a reader's buffers and a task; a burst of thousands of webhooks arriving
//! together would otherwise hold thousands of them at once (tens of MB), where the events
//! are taken in just as fast a few hundred at a time. Push replies close their connection
//! (`push::routes`), so a slot is free again as soon as its event is answered.

use axum::serve::Listener;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections served at once per listener.
const MAX_CONNECTIONS: usize = 256;
/// Connections the kernel may hold completed, waiting to be accepted (Linux caps it at
/// `net.core.somaxconn`): room for a burst while the served ones finish.
const ACCEPT_QUEUE: u32 = 4096;

/// A TCP listener that serves at most `MAX_CONNECTIONS` connections at once.
pub(crate) struct BoundedListener {
    inner: tokio::net::TcpListener,
    slots: Arc<Semaphore>,
}

impl BoundedListener {
    pub fn bind(addr: SocketAddr) -> io::Result<BoundedListener> {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        Ok(BoundedListener {
            inner: socket.listen(ACCEPT_QUEUE)?,
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        })
    }
}

impl Listener for BoundedListener {
    type Io = Served;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Served, SocketAddr) {
        // The semaphore is never closed, so the permit always comes.
        let slot = self.slots.clone().acquire_owned().await.ok();
        let (stream, addr) = Listener::accept(&mut self.inner).await;
        (
            Served {
                stream,
                _slot: slot,
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A served connection: its slot is given back when it is dropped (closed).
pub(crate) struct Served {
    stream: TcpStream,
    _slot: Option<OwnedSemaphorePermit>,
}

impl AsyncRead for Served {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Served {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_connection_past_the_bound_waits_until_one_closes() {
        let mut listener = BoundedListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut clients = Vec::new();
        let mut served = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            clients.push(TcpStream::connect(addr).await.unwrap());
            served.push(Listener::accept(&mut listener).await.0);
        }
        let mut last = TcpStream::connect(addr).await.unwrap();
        last.write_all(b"waiting").await.unwrap();
        let waiting =
            tokio::time::timeout(Duration::from_millis(200), Listener::accept(&mut listener)).await;
        assert!(waiting.is_err(), "a connection past the bound was served");

        served.pop();
        let (mut io, _) =
            tokio::time::timeout(Duration::from_secs(5), Listener::accept(&mut listener))
                .await
                .expect("the waiting connection is served once a slot is free");
        let mut read = [0u8; 7];
        tokio::io::AsyncReadExt::read_exact(&mut io, &mut read)
            .await
            .unwrap();
        assert_eq!(&read, b"waiting");
    }
}
