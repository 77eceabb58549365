//! Datagrams in batches: `recvmmsg` and `sendmmsg` (through nix's safe wrappers), so that
//! under load one system call carries many queries or answers instead of one each.

use crate::flow::storage_to_socket_addr;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrIn, SockaddrIn6,
    SockaddrStorage, recvmmsg, sendmmsg,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::UdpSocket;

/// A UDP socket watched for readability only. Tokio's `UdpSocket` also watches for
/// writability, edge-triggered, and the kernel signals writability every time the peer
/// consumes one of our datagrams (its buffer is freed): one useless wake-up of the proxy
/// per datagram sent. Sends are non-blocking and hardly ever find the buffer full (see
/// [`send_batch`]).
pub(crate) type ReadOnlySocket = AsyncFd<std::net::UdpSocket>;

/// `sock`, watched for readability only.
///
/// `AsyncFd::with_interest` is deprecated because a `T` that does not own its descriptor
/// could let it be closed (and reused) while registered; its replacement is `unsafe`, which
/// this crate forbids. Here `T` is a `std::net::UdpSocket`, which owns its descriptor and
/// closes it only when dropped, after `AsyncFd` has deregistered it: the case that is sound.
#[allow(deprecated)]
pub(crate) fn read_only(sock: UdpSocket) -> io::Result<ReadOnlySocket> {
    AsyncFd::with_interest(sock.into_std()?, Interest::READABLE)
}

/// Messages to send, each with its destination (`None`: the connected peer).
pub(crate) type Outgoing = Vec<(Vec<u8>, Option<SocketAddr>)>;

/// Datagrams received at once.
pub(crate) const BATCH: usize = 16;

/// One received datagram: where it is in the batch's buffers, who sent it, to whom.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Received {
    slot: usize,
    len: usize,
    /// Longer than its slot: the kernel cut it (`MSG_TRUNC`).
    pub truncated: bool,
    pub src: SocketAddr,
    /// The original destination (`IP_RECVORIGDSTADDR`), else the socket's own address.
    pub dst: SocketAddr,
}

/// Buffers for [`BATCH`] datagrams of up to 64 KiB each, reused from batch to batch.
pub(crate) struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    pub msgs: Vec<Received>,
}

impl RecvBatch {
    pub fn new() -> RecvBatch {
        RecvBatch {
            bufs: vec![vec![0u8; 65535]; BATCH],
            msgs: Vec::with_capacity(BATCH),
        }
    }

    pub fn data(&self, r: &Received) -> &[u8] {
        self.bufs
            .get(r.slot)
            .and_then(|b| b.get(..r.len))
            .unwrap_or_default()
    }

    /// Takes the datagrams queued on a socket that was found readable (`WouldBlock` if
    /// there were none after all, which also clears its readiness so that the next poll
    /// waits).
    pub async fn recv_ready(&mut self, sock: &ReadOnlySocket, local: SocketAddr) -> io::Result<()> {
        let (bufs, msgs) = (&mut self.bufs, &mut self.msgs);
        msgs.clear();
        let mut guard = sock.readable().await?;
        match guard.try_io(|inner| recv_now(inner.get_ref().as_raw_fd(), bufs, msgs, local)) {
            Ok(r) => r,
            Err(_) => Err(io::Error::from(io::ErrorKind::WouldBlock)),
        }
    }
}

fn recv_now(
    fd: std::os::fd::RawFd,
    bufs: &mut [Vec<u8>],
    msgs: &mut Vec<Received>,
    local: SocketAddr,
) -> io::Result<()> {
    // Fresh headers each call: the kernel shortens their name and control lengths
    // to what it wrote, so reused headers would lose room.
    let cmsg = nix::cmsg_space!(nix::libc::sockaddr_in6, nix::libc::sockaddr_in);
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(bufs.len(), Some(cmsg));
    let mut iovs: Vec<[IoSliceMut<'_>; 1]> =
        bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
    let results = recvmmsg(
        fd,
        &mut headers,
        iovs.iter_mut(),
        MsgFlags::MSG_DONTWAIT,
        None,
    )
    .map_err(io::Error::from)?;
    for (slot, m) in results.enumerate() {
        let Some(src) = m.address.as_ref().and_then(storage_to_socket_addr) else {
            continue;
        };
        let mut dst = local;
        if let Ok(cmsgs) = m.cmsgs() {
            for c in cmsgs {
                match c {
                    ControlMessageOwned::Ipv4OrigDstAddr(sin) => {
                        dst = SocketAddr::V4(SocketAddrV4::from(SockaddrIn::from(sin)));
                    }
                    ControlMessageOwned::Ipv6OrigDstAddr(sin6) => {
                        dst = SocketAddr::V6(SocketAddrV6::from(SockaddrIn6::from(sin6)));
                    }
                    _ => {}
                }
            }
        }
        msgs.push(Received {
            slot,
            len: m.bytes.min(65535),
            truncated: m.flags.contains(MsgFlags::MSG_TRUNC),
            src,
            dst,
        });
    }
    Ok(())
}

/// Sends `msgs` (each to its address, or on the connected peer for `None`) in as few
/// non-blocking `sendmmsg` calls as the kernel allows. A message the kernel refuses is
/// skipped (the client retries, or the query times out): one bad address must not block
/// the others. A full send buffer is waited out briefly, a few times, then the rest is
/// dropped as a congested network would.
pub(crate) async fn send_batch(sock: &impl AsRawFd, msgs: &[(Vec<u8>, Option<SocketAddr>)]) {
    let fd = sock.as_raw_fd();
    let mut done = 0;
    let mut full = 0;
    while done < msgs.len() {
        let chunk = &msgs[done..msgs.len().min(done + 64)];
        let sent = send_now(fd, chunk);
        match sent {
            Ok(n) => done += n.max(1),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && full < 3 => {
                full += 1;
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            Err(e) => {
                tracing::info!(error = %e, to = ?chunk.first().and_then(|m| m.1), "dns send failed");
                done += 1;
            }
        }
    }
}

/// One non-blocking `sendmmsg` of `chunk`: how many messages went.
fn send_now(fd: std::os::fd::RawFd, chunk: &[(Vec<u8>, Option<SocketAddr>)]) -> io::Result<usize> {
    let addrs: Vec<Option<SockaddrStorage>> = chunk
        .iter()
        .map(|(_, a)| a.map(SockaddrStorage::from))
        .collect();
    let iovs: Vec<[IoSlice<'_>; 1]> = chunk.iter().map(|(m, _)| [IoSlice::new(m)]).collect();
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(chunk.len(), None);
    let cmsgs: [ControlMessage<'_>; 0] = [];
    sendmmsg(
        fd,
        &mut headers,
        &iovs,
        &addrs,
        cmsgs,
        MsgFlags::MSG_DONTWAIT,
    )
    .map(|r| r.count())
    .map_err(io::Error::from)
}
