//! `membrane lab helper gateway`: a Gateway's HTTP proxy in the gateway endpoint's namespace.
//!
//! A small HTTP/1.1 forwarder on std threads: it reads a request head (checked and with its
//! path normalized as Envoy does, `membrane_proxy::http::head`), picks the route as
//! `membrane_cluster::runner::route_for` does (exact before prefix, then the longest path),
//! connects to the route's first backend from the gateway's own address (so the backend's
//! node sees the `ingress` identity and its policy, L7 proxy included, applies) and relays
//! the answer. No route: `404`; the backend unreachable within 2 s: the client's
//! connection is closed without an answer (what a probe reads as an L3/L4 deny).
//!
//! `gateway --src IP --listen PORT[,PORT…] --route KIND,IP,PORT,PATH …` with KIND `exact`
//! or `prefix`.

use super::NodeError;
use membrane_proxy::http::head::{Parsed, Rejection, parse_request_head};
use membrane_proxy::http::upstream_head;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// One HTTPRoute rule: its path match and its first backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub exact: bool,
    pub path: String,
    pub backend: SocketAddrV4,
}

impl Route {
    /// `KIND,IP,PORT,PATH`.
    pub fn parse(text: &str) -> Result<Route, NodeError> {
        let mut it = text.splitn(4, ',');
        let bad = || NodeError::Bad {
            what: "route",
            value: text.to_string(),
        };
        let exact = match it.next() {
            Some("exact") => true,
            Some("prefix") => false,
            _ => return Err(bad()),
        };
        let ip: Ipv4Addr = it.next().and_then(|x| x.parse().ok()).ok_or_else(bad)?;
        let port: u16 = it.next().and_then(|x| x.parse().ok()).ok_or_else(bad)?;
        let path = it.next().ok_or_else(bad)?.to_string();
        Ok(Route {
            exact,
            path,
            backend: SocketAddrV4::new(ip, port),
        })
    }

    pub fn arg(&self) -> String {
        format!(
            "{},{},{},{}",
            if self.exact { "exact" } else { "prefix" },
            self.backend.ip(),
            self.backend.port(),
            self.path
        )
    }

    fn matches(&self, path: &str) -> bool {
        if self.exact {
            path == self.path
        } else {
            let prefix = self.path.trim_end_matches('/');
            prefix.is_empty() || path == prefix || path.starts_with(&format!("{prefix}/"))
        }
    }
}

/// The route for a request path, as `runner::route_for`.
pub fn route_for<'r>(routes: &'r [Route], path: &str) -> Option<&'r Route> {
    let path = path.split('?').next().unwrap_or(path);
    routes
        .iter()
        .filter(|r| r.matches(path))
        .max_by_key(|r| (r.exact, r.path.len()))
}

fn opt<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// `gateway --src IP --listen PORT[,PORT…] --route …`: serves until killed.
pub fn gateway_main(args: &[String]) -> Result<(), NodeError> {
    let src: Ipv4Addr =
        opt(args, "--src")
            .and_then(|s| s.parse().ok())
            .ok_or(NodeError::Missing {
                program: "gateway",
                what: "--src IP",
            })?;
    let routes: Vec<Route> = args
        .windows(2)
        .filter(|w| w[0] == "--route")
        .map(|w| Route::parse(&w[1]))
        .collect::<Result<_, _>>()?;
    let routes = Arc::new(routes);
    let mut listeners = Vec::new();
    for p in opt(args, "--listen").unwrap_or_default().split(',') {
        if p.is_empty() {
            continue;
        }
        let port: u16 = p.parse().map_err(|_| NodeError::Bad {
            what: "port",
            value: p.to_string(),
        })?;
        let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
            .map_err(NodeError::io(format!("gateway :{port}")))?;
        listeners.push(l);
    }
    if listeners.is_empty() {
        return Err(NodeError::Missing {
            program: "gateway",
            what: "--listen PORT",
        });
    }
    eprintln!("membrane lab gateway: {} routes from {src}", routes.len());
    let mut handles = Vec::new();
    for l in listeners {
        let routes = routes.clone();
        handles.push(thread::spawn(move || {
            for c in l.incoming().flatten() {
                let routes = routes.clone();
                thread::spawn(move || serve(c, src, &routes));
            }
        }));
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

fn answer(c: &mut TcpStream, status: &str, body: &str) {
    let _ = c.write_all(
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
}

fn serve(mut c: TcpStream, src: Ipv4Addr, routes: &[Route]) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > 65536 {
            return;
        }
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    // The request as the backends' proxies will see it: a Cilium Gateway is Envoy, which
    // normalizes the path before it routes, so `/app/../api/x` is routed as `/api/x`.
    let request = match parse_request_head(&head, 65536) {
        Parsed::Request(r) => r,
        Parsed::Partial => return,
        Parsed::Rejected(Rejection::Redirect { location }) => {
            let _ = c.write_all(
                format!("HTTP/1.1 307 Temporary Redirect\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes(),
            );
            return;
        }
        Parsed::Rejected(r) => {
            let status = format!("{} {}", r.status(), r.reason());
            answer(&mut c, &status, "");
            return;
        }
    };
    let Some(route) = route_for(routes, &request.path) else {
        answer(&mut c, "404 Not Found", "no route\n");
        return;
    };
    // The normalized head, then whatever of the body came with it.
    let mut forwarded = upstream_head(&request);
    forwarded.extend_from_slice(&head[request.head_len..]);
    let head = forwarded;
    let up = match connect_from(src, route.backend) {
        Ok(up) => up,
        Err(e) => {
            // Dropped or refused on the way to the backend: close without an answer.
            eprintln!(
                "membrane lab gateway: {} {}: {e}",
                route.backend, request.path
            );
            let _ = c.shutdown(std::net::Shutdown::Both);
            return;
        }
    };
    let mut up: TcpStream = up.into();
    if up.write_all(&head).is_err() {
        return;
    }
    let (Ok(mut c_in), Ok(mut up_out)) = (c.try_clone(), up.try_clone()) else {
        return;
    };
    let _ = c_in.set_read_timeout(None);
    let t = thread::spawn(move || {
        let _ = std::io::copy(&mut c_in, &mut up_out);
        let _ = up_out.shutdown(std::net::Shutdown::Write);
    });
    let _ = up.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = std::io::copy(&mut up, &mut c);
    let _ = c.shutdown(std::net::Shutdown::Both);
    let _ = t.join();
    // `up` closes here with a reset (linger 0, see `connect_from`), not a FIN.
}

fn connect_from(src: Ipv4Addr, to: SocketAddrV4) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.bind(&SockAddr::from(SocketAddrV4::new(src, 0)))?;
    // Two seconds: one SYN retransmission (the first comes after 1 s) is ordinary TCP and
    // must not turn an allowed request into a deny. It happens here under a few hundred
    // concurrent requests: the node's proxy connects to the backend from the client's own
    // address and port and ends that leg first, so its socket sits in TIME_WAIT in the node's
    // namespace, and this namespace's kernel, which cannot know, soon reuses the port; the
    // first SYN of the new connection is then lost to the old state. A probe waits 3 s for an
    // answer, so a backend that really is unreachable still reads as a deny.
    if let Err(e) = s.connect_timeout(&SockAddr::from(to), Duration::from_secs(2)) {
        let port = s
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket_ipv4())
            .map_or(0, |a| a.port());
        return Err(std::io::Error::new(
            e.kind(),
            format!("{e} (from port {port})"),
        ));
    }
    // Close with a reset, as the agents' probes do: no TIME_WAIT of ours or of the proxy's
    // leg facing us, which would otherwise meet a reuse of this port (see above).
    s.set_linger(Some(Duration::ZERO))?;
    Ok(s)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn routes_round_trip_and_pick_the_longest_match() {
        let a = Route::parse("prefix,10.0.0.1,80,/api").unwrap();
        let b = Route::parse("prefix,10.0.0.2,3000,/api/users").unwrap();
        let c = Route::parse("exact,10.0.0.3,8000,/api/users/x").unwrap();
        assert_eq!(Route::parse(&a.arg()).unwrap(), a);
        let rs = vec![a.clone(), b.clone(), c.clone()];
        assert_eq!(route_for(&rs, "/api/users/42"), Some(&b));
        assert_eq!(route_for(&rs, "/api/users/x?q=1"), Some(&c));
        assert_eq!(route_for(&rs, "/api"), Some(&a));
        assert_eq!(route_for(&rs, "/apix"), None);
    }
}
