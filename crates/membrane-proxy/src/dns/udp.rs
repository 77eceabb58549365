//! The UDP serving loop: one task per listening socket does everything — reads queries
//! from the listener and from the sockets bound to original destinations, decides,
//! forwards, reads the servers' answers, answers clients, and times out unanswered
//! queries. One task means no lock, no channel and no wake-up of another task per
//! query; with `recvmmsg`/`sendmmsg` a wake-up serves a whole batch.
//!
//! It polls every socket it owns on each wake-up, so it suits a handful of servers (the
//! cluster's DNS servers), and, when spoofing the source, a socket per client address.

use super::batch::{Outgoing, ReadOnlySocket, RecvBatch, read_only, send_batch};
use super::*;

/// One upstream socket per server (and client address, when spoofing).
type MuxKey = (SocketAddr, Option<IpAddr>);
use std::future::poll_fn;

/// A server, and the queries sent to it that it has not answered yet.
struct Upstream {
    key: MuxKey,
    sock: ReadOnlySocket,
    local: SocketAddr,
    pending: HashMap<u16, Pending>,
    out: Outgoing,
}

enum Event {
    Inbound(usize),
    Upstream(usize),
    Tick,
}

pub(super) async fn serve<F>(socket: UdpSocket, proxy: Arc<DnsProxy>, flow_of: F) -> io::Result<()>
where
    F: Fn(SocketAddr, SocketAddr) -> Flow + Send + Sync + 'static,
{
    let local = socket.local_addr()?;
    // The listener first, then the sockets bound to original destinations (tproxy hands
    // later datagrams to those), each with its own address.
    let mut inbound: Vec<(Arc<ReadOnlySocket>, SocketAddr)> =
        vec![(Arc::new(read_only(socket)?), local)];
    let mut upstreams: Vec<Upstream> = Vec::new();
    let mut batch = RecvBatch::new();
    let mut replies = Replies::default();
    let timeout = proxy.config.upstream_timeout;
    // Expired queries are found within a quarter of the timeout.
    let sweep = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
    let mut tick = tokio::time::interval(sweep);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rotate = 0usize;
    loop {
        // Fair: the first socket polled changes on every wake-up.
        rotate = rotate.wrapping_add(1);
        let event = poll_fn(|cx| {
            let n = inbound.len() + upstreams.len();
            for k in 0..n {
                let i = (rotate + k) % n;
                let ready = match inbound.get(i) {
                    // The guard is dropped at once: readiness is cleared by the read that
                    // finds nothing more.
                    Some((s, _)) => s.poll_read_ready(cx).map(|_| Event::Inbound(i)),
                    None => upstreams[i - inbound.len()]
                        .sock
                        .poll_read_ready(cx)
                        .map(|_| Event::Upstream(i - inbound.len())),
                };
                if ready.is_ready() {
                    return ready;
                }
            }
            tick.poll_tick(cx).map(|_| Event::Tick)
        })
        .await;
        match event {
            Event::Tick => {
                let now = Instant::now();
                for u in &mut upstreams {
                    expire_into(&mut u.pending, now, &mut replies);
                }
            }
            Event::Inbound(i) => {
                let (sock, addr) = inbound[i].clone();
                match batch.recv_ready(&sock, addr).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock || is_transient_udp(&e) => {
                        continue;
                    }
                    Err(e) if i == 0 => return Err(e),
                    Err(e) => {
                        tracing::warn!(error = %e, %addr, "dns proxy: reply socket failed");
                        inbound.remove(i);
                        continue;
                    }
                }
                for m in &batch.msgs {
                    let via = if i == 0 && m.dst != local {
                        replier(&mut inbound, m.dst).unwrap_or_else(|| sock.clone())
                    } else {
                        sock.clone()
                    };
                    let query = batch.data(m);
                    // Cut by the kernel: only its header is trustworthy.
                    let query = if m.truncated {
                        query.get(..HEADER_LEN).unwrap_or_default()
                    } else {
                        query
                    };
                    let flow = flow_of(m.src, m.dst);
                    let q = match proxy.check(&flow, Protocol::Udp, query) {
                        Checked::Drop => continue,
                        Checked::Reply(r) => {
                            replies.push(&via, r, Some(m.src));
                            continue;
                        }
                        Checked::Forward(q, _) => q,
                    };
                    let waiter = Waiter::Udp {
                        via: via.clone(),
                        client: m.src,
                        limit: Edns::udp_limit(q.edns),
                        edns: q.edns.is_some(),
                    };
                    let sent = match upstream(&mut upstreams, &proxy, &flow).await {
                        Ok(u) => register(u, &proxy, query, &q, waiter),
                        Err(e) => Err(e),
                    };
                    if let Err(e) = sent {
                        tracing::info!(error = %e, upstream = %flow.upstream, "dns upstream failed");
                        let r = wire::reply(
                            query,
                            &q.header,
                            Some(q.question_end),
                            q.edns.is_some(),
                            wire::RCODE_SERVFAIL,
                        );
                        replies.push(&via, r, Some(m.src));
                    }
                }
                for u in &mut upstreams {
                    if !u.out.is_empty() {
                        send_batch(u.sock.get_ref(), &u.out).await;
                        u.out.clear();
                    }
                }
            }
            Event::Upstream(i) => {
                let u = &mut upstreams[i];
                match batch.recv_ready(&u.sock, u.local).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock || is_transient_udp(&e) => {
                        continue;
                    }
                    Err(e) => {
                        // The socket is unusable: its queries are answered SERVFAIL and a
                        // new socket is made for the next query to that server.
                        tracing::warn!(error = %e, upstream = %u.key.0, "dns proxy: upstream socket failed");
                        let mut gone = upstreams.swap_remove(i);
                        expire_into(&mut gone.pending, Instant::now() + timeout, &mut replies);
                        replies.flush().await;
                        continue;
                    }
                }
                let mut fresh = None;
                for m in &batch.msgs {
                    if m.truncated {
                        continue;
                    }
                    let answer = batch.data(m);
                    let Some(h) = Header::parse(answer) else {
                        continue;
                    };
                    // Stray, late or spoofed datagrams leave the query pending.
                    let matches = u
                        .pending
                        .get(&h.id)
                        .is_some_and(|e| wire::answers_query(answer, h.id, &e.question));
                    if let Some(entry) = matches.then(|| u.pending.remove(&h.id)).flatten() {
                        let reply = finish_answer(
                            answer,
                            &entry.header,
                            &entry.question,
                            entry.edns,
                            &proxy.learner,
                            &mut fresh,
                        );
                        replies.add(entry.waiter, reply);
                    }
                }
                // Answers that taught new addresses wait (bounded) for the datapath.
                if let Some(g) = fresh {
                    proxy.learner.wait_enforced(g).await;
                }
            }
        }
        replies.flush().await;
    }
}

/// The socket to `flow.upstream` (from `flow.src` when spoofing), made on first use.
async fn upstream<'a>(
    upstreams: &'a mut Vec<Upstream>,
    proxy: &DnsProxy,
    flow: &Flow,
) -> io::Result<&'a mut Upstream> {
    let key = (
        flow.upstream,
        proxy.config.spoof_source.then_some(flow.src.ip()),
    );
    let i = match upstreams.iter().position(|u| u.key == key) {
        Some(i) => i,
        None => {
            let sock = udp_upstream_socket(flow, proxy.config.spoof_source).await?;
            let local = sock.local_addr()?;
            let sock = read_only(sock)?;
            upstreams.push(Upstream {
                key,
                sock,
                local,
                pending: HashMap::new(),
                out: Vec::new(),
            });
            upstreams.len() - 1
        }
    };
    upstreams
        .get_mut(i)
        .ok_or_else(|| io::Error::other("upstream vanished"))
}

/// Puts `query` under a fresh ID in `u`'s pending queries and its outgoing batch.
fn register(
    u: &mut Upstream,
    proxy: &DnsProxy,
    query: &[u8],
    q: &Query,
    waiter: Waiter,
) -> io::Result<()> {
    if u.pending.len() >= proxy.config.max_in_flight.min(60_000) {
        return Err(io::Error::other("too many queries in flight"));
    }
    let question = query
        .get(HEADER_LEN..q.question_end)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short query"))?;
    let mut id = proxy.ids.next();
    while u.pending.contains_key(&id) {
        id = proxy.ids.next();
    }
    let mut out = query.to_vec();
    out[..2].copy_from_slice(&id.to_be_bytes());
    u.pending.insert(
        id,
        Pending {
            header: q.header,
            question: question.to_vec(),
            edns: q.edns.is_some(),
            deadline: Instant::now() + proxy.config.upstream_timeout,
            waiter,
        },
    );
    u.out.push((out, None));
    Ok(())
}

/// Moves every query past its deadline at `now` out of `pending`, answering `SERVFAIL`.
fn expire_into(pending: &mut HashMap<u16, Pending>, now: Instant, replies: &mut Replies) {
    if pending.values().all(|e| e.deadline > now) {
        return;
    }
    let ids: Vec<u16> = pending
        .iter()
        .filter(|(_, e)| e.deadline <= now)
        .map(|(id, _)| *id)
        .collect();
    for id in ids {
        if let Some(e) = pending.remove(&id) {
            tracing::info!(id = e.header.id, "dns upstream did not answer in time");
            let reply = wire::reply_to(&e.header, &e.question, e.edns, wire::RCODE_SERVFAIL);
            replies.add(e.waiter, reply);
        }
    }
}

/// The socket bound to the original destination `dst`, made on first use and from then
/// on read by the loop too.
fn replier(
    inbound: &mut Vec<(Arc<ReadOnlySocket>, SocketAddr)>,
    dst: SocketAddr,
) -> Option<Arc<ReadOnlySocket>> {
    if let Some((s, _)) = inbound.iter().find(|(_, a)| *a == dst) {
        return Some(s.clone());
    }
    match bind_reply_socket(dst).and_then(read_only) {
        Ok(s) => {
            let s = Arc::new(s);
            inbound.push((s.clone(), dst));
            Some(s)
        }
        Err(e) => {
            tracing::warn!(error = %e, %dst, "dns proxy: cannot answer from the original destination");
            None
        }
    }
}
