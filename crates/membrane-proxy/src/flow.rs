//! Who is talking to whom: the addresses of a proxied flow, and the sockets that recover
//! them under nftables `tproxy`.
//!
//! Under `tproxy` an accepted TCP socket's local address (`getsockname()`) is the original
//! destination and its peer is the pod; a UDP datagram's original destination comes with it
//! as an `IP_RECVORIGDSTADDR` control message. Tests, which cannot use tproxy, map addresses
//! with their own hook instead (any `Fn(&TcpStream) -> io::Result<Flow>`).

use nix::sys::socket::{SockaddrStorage, setsockopt, sockopt};
use socket2::{Domain, SockRef, Socket, Type};
use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};

/// The addresses of one proxied connection or datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    /// The client as policy sees it (the pod's address and port).
    pub src: SocketAddr,
    /// The original destination as policy sees it; its port is the policy port.
    pub dst: SocketAddr,
    /// Where the proxy connects (or sends) upstream: `dst` under tproxy.
    pub upstream: SocketAddr,
}

impl Flow {
    /// A flow whose upstream is its original destination.
    pub fn new(src: SocketAddr, dst: SocketAddr) -> Flow {
        Flow {
            src,
            dst,
            upstream: dst,
        }
    }
}

/// The flow of a connection accepted by a tproxy listener: the peer is the pod, the local
/// address is the original destination.
pub fn transparent_flow(stream: &TcpStream) -> io::Result<Flow> {
    Ok(Flow::new(stream.peer_addr()?, stream.local_addr()?))
}

/// The flow of a connection that reached the proxy through DNAT (`SO_ORIGINAL_DST`, IPv4).
pub fn dnat_flow(stream: &TcpStream) -> io::Result<Flow> {
    let dst = SockRef::from(stream)
        .original_dst_v4()?
        .as_socket()
        .ok_or_else(|| io::Error::other("SO_ORIGINAL_DST is not an IP address"))?;
    Ok(Flow::new(stream.peer_addr()?, dst))
}

fn domain_of(addr: SocketAddr) -> Domain {
    if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    }
}

fn set_transparent(sock: SockRef<'_>, v4: bool) -> io::Result<()> {
    if v4 {
        sock.set_ip_transparent_v4(true)
    } else {
        sock.set_ip_transparent_v6(true)
    }
}

/// A TCP listener for nftables `tproxy ... to :port` (`IP_TRANSPARENT`, needs
/// `CAP_NET_ADMIN`), bound to `addr` (e.g. `0.0.0.0:15001`).
pub fn transparent_tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = Socket::new(domain_of(addr), Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    set_transparent(SockRef::from(&sock), addr.is_ipv4())?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    TcpListener::from_std(sock.into())
}

/// A UDP socket for nftables `tproxy` (`IP_TRANSPARENT` and `IP_RECVORIGDSTADDR`), bound to
/// `addr` (e.g. `0.0.0.0:15053`).
pub fn transparent_udp_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let sock = Socket::new(domain_of(addr), Type::DGRAM, None)?;
    sock.set_reuse_address(true)?;
    set_transparent(SockRef::from(&sock), addr.is_ipv4())?;
    if addr.is_ipv4() {
        setsockopt(&sock, sockopt::Ipv4OrigDstAddr, &true)?;
    } else {
        setsockopt(&sock, sockopt::Ipv6OrigDstAddr, &true)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    UdpSocket::from_std(sock.into())
}

/// Connects upstream to `flow.upstream`, from the client's own address when `spoof_source`
/// (`IP_TRANSPARENT` bind, as Cilium's proxies do; needs the tproxy routing rules for the
/// replies), within `timeout`.
pub(crate) async fn connect_upstream(
    flow: &Flow,
    spoof_source: bool,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let v4 = flow.upstream.is_ipv4();
    let sock = if v4 {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if spoof_source {
        set_transparent(SockRef::from(&sock), v4)?;
        sock.bind(SocketAddr::new(flow.src.ip(), 0))?;
    }
    let stream = tokio::time::timeout(timeout, sock.connect(flow.upstream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "upstream connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A UDP socket connected to `flow.upstream`, from the client's address when `spoof_source`.
pub(crate) async fn udp_upstream_socket(flow: &Flow, spoof_source: bool) -> io::Result<UdpSocket> {
    let v4 = flow.upstream.is_ipv4();
    let sock = Socket::new(domain_of(flow.upstream), Type::DGRAM, None)?;
    let bind: SocketAddr = if spoof_source {
        set_transparent(SockRef::from(&sock), v4)?;
        SocketAddr::new(flow.src.ip(), 0)
    } else if v4 {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    sock.bind(&bind.into())?;
    sock.set_nonblocking(true)?;
    let sock = UdpSocket::from_std(sock.into())?;
    sock.connect(flow.upstream).await?;
    Ok(sock)
}

/// A UDP socket bound to `addr`, an original destination that is not a local address
/// (`IP_TRANSPARENT`), to answer from it. Under tproxy it also receives the later datagrams
/// to that destination, so the proxy reads from it too.
pub(crate) fn bind_reply_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let sock = Socket::new(domain_of(addr), Type::DGRAM, None)?;
    sock.set_reuse_address(true)?;
    // Without CAP_NET_ADMIN this fails; binding still works for local addresses.
    let _ = set_transparent(SockRef::from(&sock), addr.is_ipv4());
    sock.bind(&addr.into())?;
    sock.set_nonblocking(true)?;
    UdpSocket::from_std(sock.into())
}

pub(crate) fn storage_to_socket_addr(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    s.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::DnsProxy;
    use crate::fqdn::FqdnLearner;
    use crate::policy::ProxyPolicy;

    fn tcp_hook<F: Fn(&TcpStream) -> io::Result<Flow> + Send + Sync + 'static>(_: F) {}
    fn udp_hook<F: Fn(SocketAddr, SocketAddr) -> Flow + Send + Sync + 'static>(_: F) {}
    fn send_sync<T: Send + Sync>() {}

    #[test]
    fn tproxy_hooks_and_shared_state_fit_the_runtime() {
        tcp_hook(transparent_flow);
        tcp_hook(dnat_flow);
        udp_hook(Flow::new);
        send_sync::<ProxyPolicy>();
        send_sync::<DnsProxy>();
        send_sync::<FqdnLearner>();
    }
}
