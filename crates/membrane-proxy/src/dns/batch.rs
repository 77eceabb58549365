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
use tokio::net::UdpSocket;

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

    /// Waits for at least one datagram and takes all that are queued, up to [`BATCH`].
    /// `local` is the socket's own address.
    pub async fn recv(&mut self, sock: &UdpSocket, local: SocketAddr) -> io::Result<()> {
        let fd = sock.as_raw_fd();
        let (bufs, msgs) = (&mut self.bufs, &mut self.msgs);
        msgs.clear();
        sock.async_io(Interest::READABLE, || recv_now(fd, bufs, msgs, local))
            .await
    }

    /// Takes the datagrams queued now (`WouldBlock` if none, which also clears the socket's
    /// readiness so that the next poll waits).
    pub fn try_recv(&mut self, sock: &UdpSocket, local: SocketAddr) -> io::Result<()> {
        let fd = sock.as_raw_fd();
        let (bufs, msgs) = (&mut self.bufs, &mut self.msgs);
        msgs.clear();
        sock.try_io(Interest::READABLE, || recv_now(fd, bufs, msgs, local))
    }
}

fn recv_now(
    fd: std::os::fd::RawFd,
    bufs: &mut [Vec<u8>],
    msgs: &mut Vec<Received>,
    local: SocketAddr,
) -> io::Result<()> {
    {
        {
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
    }
}

/// Sends `msgs` (each to its address, or on the connected peer for `None`) in as few
/// `sendmmsg` calls as the kernel allows. A message the kernel refuses is skipped (the
/// client retries, or the query times out): one bad address must not block the others.
pub(crate) async fn send_batch(sock: &UdpSocket, msgs: &[(Vec<u8>, Option<SocketAddr>)]) {
    let fd = sock.as_raw_fd();
    let mut done = 0;
    while done < msgs.len() {
        let chunk = &msgs[done..msgs.len().min(done + 64)];
        let sent = sock
            .async_io(Interest::WRITABLE, || {
                let addrs: Vec<Option<SockaddrStorage>> = chunk
                    .iter()
                    .map(|(_, a)| a.map(SockaddrStorage::from))
                    .collect();
                let iovs: Vec<[IoSlice<'_>; 1]> =
                    chunk.iter().map(|(m, _)| [IoSlice::new(m)]).collect();
                let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(chunk.len(), None);
                let cmsgs: [ControlMessage<'_>; 0] = [];
                let results = sendmmsg(
                    fd,
                    &mut headers,
                    &iovs,
                    &addrs,
                    cmsgs,
                    MsgFlags::MSG_DONTWAIT,
                )
                .map_err(io::Error::from)?;
                Ok(results.count())
            })
            .await;
        match sent {
            Ok(n) if n > 0 => done += n,
            Ok(_) => done += 1,
            Err(e) => {
                tracing::info!(error = %e, to = ?chunk.first().and_then(|m| m.1), "dns send failed");
                done += 1;
            }
        }
    }
}
