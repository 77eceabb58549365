//! The seed demo's Gateway under load (root): hundreds of concurrent allowed and denied
//! requests, through the Gateway and straight from the gateway's pod to the backend, some on
//! keep-alive connections, while the frontend (not allowed at L3/L4) tries too. Counted from
//! the backend's own log: every allowed request arrived exactly once, no denied one ever did,
//! and every answer carried its own request's `x-probe-id` (it went to its own client). Then
//! the backend's node loses its L7 proxy: the datapath must fail closed (no answer at all,
//! never a 200).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use membrane_cluster::world::World;
use membrane_datapath::lab::Lab;
use membrane_datapath::nft::compile::PROXY_UNAVAILABLE;
use membrane_datapath::source::load_world;
use membrane_datapath::topology::NsRef;
use membrane_datapath::wire::{self, HttpAnswer, HttpRequest, Reply, Request};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Barrier;
use std::time::Duration;
use support::{options, root_or_skip};

const ALLOWED: [(&str, &str); 7] = [
    ("GET", "/api"),
    ("GET", "/api/users"),
    ("POST", "/api/login"),
    ("GET", "/api/profile"),
    ("GET", "/api/version"),
    ("PUT", "/api/users"),
    ("DELETE", "/api/users"),
];
/// Unlisted paths and methods under the backend's route (the Gateway forwards them; the
/// backend's L7 policy must answer 403).
const DENIED: [(&str, &str); 5] = [
    ("GET", "/api/users/42"),
    ("PATCH", "/api/users"),
    ("POST", "/api/users"),
    ("GET", "/api/admin"),
    ("DELETE", "/api/users/42"),
];

fn seed_demo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed-demo-fixed")
}

/// Where a party lives in the lab: its namespace and address.
fn place(world: &World, lab: &Lab, name: &str) -> (NsRef, Ipv4Addr) {
    let p = world
        .party(name)
        .unwrap_or_else(|| panic!("no party {name}"));
    lab.topo
        .place(p)
        .unwrap_or_else(|| panic!("{name} is not in the lab"))
}

/// The two ways to the backend: the Gateway (from the world), and straight from the
/// gateway's pod (identity `ingress`, allowed at L3/L4, so the backend's L7 rules decide).
#[derive(Debug, Clone, Copy)]
struct Path {
    name: &'static str,
    from: NsRef,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    port: u16,
}

struct Setup {
    world: World,
    lab: Lab,
    paths: [Path; 2],
    backend: (NsRef, Ipv4Addr),
}

fn setup(tag: &str) -> Setup {
    let dir = seed_demo();
    let world = load_world(&dir).unwrap();
    let mut opts = options(tag);
    opts.proxies = Some(dir);
    let lab = Lab::up(&world, &opts).unwrap();
    let (world_ns, world_addr) = place(&world, &lab, "world");
    let (gw_ns, gw_addr) = place(&world, &lab, "gateway/cilium-gateway");
    let backend = place(&world, &lab, "backend/backend");
    let paths = [
        Path {
            name: "gateway",
            from: world_ns,
            src: world_addr,
            dst: gw_addr,
            port: 80,
        },
        Path {
            name: "direct",
            from: gw_ns,
            src: gw_addr,
            dst: backend.1,
            port: 3000,
        },
    ];
    Setup {
        world,
        lab,
        paths,
        backend,
    }
}

fn request(method: &str, path: &str, id: &str) -> HttpRequest {
    let mut headers = vec![("x-probe-id".to_string(), id.to_string())];
    if method == "POST" || method == "PUT" {
        headers.push(("content-length".into(), "0".into()));
    }
    HttpRequest {
        method: method.into(),
        path: path.into(),
        host: "backend.example".into(),
        headers,
    }
}

fn call(lab: &Lab, ns: NsRef, req: &Request) -> Reply {
    let r = wire::call(&lab.socket(ns), req, Duration::from_secs(60)).unwrap();
    assert!(r.error.is_none(), "{req:?}: {r:?}");
    r
}

/// One request: what was sent and what came back.
#[derive(Debug)]
struct Sent {
    id: String,
    allowed: bool,
    via: &'static str,
    what: String,
    answer: Option<HttpAnswer>,
    /// How the exchange ended without an answer.
    note: String,
}

/// Checks an answer: a denied request got the proxy's 403; an allowed one a 200 from the
/// backend that echoes this very request's id.
fn check(s: &Sent, backend: &str) -> Result<(), String> {
    let a = s
        .answer
        .as_ref()
        .ok_or_else(|| format!("no answer ({})", s.note))?;
    if s.allowed {
        if a.status != 200 {
            return Err(format!("status {}", a.status));
        }
        if a.header("x-probe-id") != Some(s.id.as_str()) {
            return Err(format!("answer of {:?}", a.header("x-probe-id")));
        }
        if a.header("x-served-by") != Some(backend) {
            return Err(format!("served by {:?}", a.header("x-served-by")));
        }
    } else {
        if a.status != 403 || a.body != "Access denied\r\n" {
            return Err(format!("{} {:?}", a.status, a.body));
        }
        if a.header("x-probe-id").is_some() {
            return Err("a denied request's answer carries a backend's echo".into());
        }
    }
    Ok(())
}

#[test]
fn hundreds_of_concurrent_requests_through_the_gateway_and_direct_are_each_decided_once() {
    if !root_or_skip(
        "hundreds_of_concurrent_requests_through_the_gateway_and_direct_are_each_decided_once",
    ) {
        return;
    }
    let Setup {
        lab,
        paths,
        backend,
        world,
    } = setup("gwload");
    // The frontend may not reach the backend at all (L3/L4): its requests are dropped.
    let frontend = place(&world, &lab, "frontend/frontend");
    // Policy drops during the run: only the frontend's.
    let collector = lab.drop_collector(false);
    let backend_addr = format!("{}:3000", backend.1);
    // 400 single-request connections, all released at once…
    const SINGLE: usize = 400;
    // …and 40 keep-alive connections of 8 requests each, allowed and denied interleaved.
    const SEQS: usize = 40;
    const PER_SEQ: usize = 8;
    // …and 40 from the frontend, allowed paths included, which the datapath drops.
    const FRONTEND: usize = 40;
    let barrier = Barrier::new(SINGLE + SEQS + FRONTEND);
    let mut sent: Vec<Sent> = Vec::new();
    let mut from_frontend: Vec<(String, Reply)> = Vec::new();
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        let mut frontend_handles = Vec::new();
        for i in 0..FRONTEND {
            let (method, target) = if i % 2 == 0 {
                ALLOWED[i % ALLOWED.len()]
            } else {
                DENIED[i % DENIED.len()]
            };
            let id = format!("f{i}");
            let (lab, barrier) = (&lab, &barrier);
            frontend_handles.push(s.spawn(move || {
                let q = request(method, target, &id);
                let req = Request::Http {
                    src: frontend.1,
                    sport: 0,
                    dst: backend.1,
                    port: 3000,
                    method: q.method,
                    path: q.path,
                    host: q.host,
                    headers: q.headers,
                    timeout_ms: 1000,
                };
                barrier.wait();
                (id, call(lab, frontend.0, &req))
            }));
        }
        for i in 0..SINGLE {
            let path = paths[i % 2];
            let allowed = (i / 2) % 3 != 0;
            let (method, target) = if allowed {
                ALLOWED[i % ALLOWED.len()]
            } else {
                DENIED[i % DENIED.len()]
            };
            let id = format!("s{i}");
            let (lab, barrier) = (&lab, &barrier);
            handles.push(s.spawn(move || {
                let q = request(method, target, &id);
                let req = Request::Http {
                    src: path.src,
                    sport: 0,
                    dst: path.dst,
                    port: path.port,
                    method: q.method,
                    path: q.path,
                    host: q.host,
                    headers: q.headers,
                    timeout_ms: 5000,
                };
                barrier.wait();
                let r = call(lab, path.from, &req);
                vec![Sent {
                    id,
                    allowed,
                    via: path.name,
                    what: format!("{method} {target}"),
                    answer: r.status.map(|status| HttpAnswer {
                        status,
                        headers: r.headers.clone(),
                        body: r.body.clone().unwrap_or_default(),
                    }),
                    note: format!(
                        "connected: {}, closed: {}, sport {}",
                        r.delivered, r.closed, r.sport
                    ),
                }]
            }));
        }
        for c in 0..SEQS {
            let path = paths[c % 2];
            let (lab, barrier) = (&lab, &barrier);
            handles.push(s.spawn(move || {
                // Starts allowed on even connections and denied on odd ones: the Gateway
                // routes on the first request, the rest ride the same backend connection.
                let plan: Vec<(bool, &str, &str, String)> = (0..PER_SEQ)
                    .map(|k| {
                        let allowed = (c + k) % 2 == 0 || k % 3 == 1;
                        let (m, t) = if allowed {
                            ALLOWED[(c + k) % ALLOWED.len()]
                        } else {
                            DENIED[(c + k) % DENIED.len()]
                        };
                        (allowed, m, t, format!("k{c}-{k}"))
                    })
                    .collect();
                let req = Request::HttpSeq {
                    src: path.src,
                    dst: path.dst,
                    port: path.port,
                    requests: plan.iter().map(|(_, m, t, id)| request(m, t, id)).collect(),
                    timeout_ms: 5000,
                };
                barrier.wait();
                let r = call(lab, path.from, &req);
                let note = format!(
                    "connected: {}, closed: {}, {} answers, sport {}",
                    r.delivered,
                    r.closed,
                    r.answers.len(),
                    r.sport
                );
                let mut answers = r.answers.into_iter();
                plan.into_iter()
                    .map(|(allowed, m, t, id)| Sent {
                        id,
                        allowed,
                        via: path.name,
                        what: format!("{m} {t} (keep-alive)"),
                        answer: answers.next(),
                        note: note.clone(),
                    })
                    .collect()
            }));
        }
        for h in handles {
            sent.extend(h.join().unwrap());
        }
        for h in frontend_handles {
            from_frontend.push(h.join().unwrap());
        }
    });
    for (id, r) in &from_frontend {
        assert!(
            !r.delivered && r.status.is_none(),
            "{id} from the frontend got through: {r:?}"
        );
    }
    assert_eq!(sent.len(), SINGLE + SEQS * PER_SEQ);
    let log = lab.http_log(backend.0).unwrap();
    let bad: Vec<String> = sent
        .iter()
        .filter_map(|s| {
            check(s, &backend_addr).err().map(|e| {
                format!(
                    "{} via {} {} (allowed: {}): {e}",
                    s.id, s.via, s.what, s.allowed
                )
            })
        })
        .collect();
    if !bad.is_empty() {
        let logs: String = std::fs::read_dir(&lab.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("gateway-"))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .collect();
        panic!(
            "{} of {} answers wrong:\n{}\nthe backend's log has {} entries: {:?}\ngateway log: {logs}\npolicy drops: {:?}",
            bad.len(),
            sent.len(),
            bad.join("\n"),
            log.len(),
            bad.iter()
                .filter_map(|b| b.split(' ').next())
                .map(|id| log
                    .iter()
                    .filter(|e| e.probe_id.as_deref() == Some(id))
                    .count())
                .collect::<Vec<_>>(),
            collector.events()
        );
    }
    // The backend's own account.
    let mut arrived: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &log {
        if let Some(id) = &e.probe_id {
            *arrived.entry(id.as_str()).or_default() += 1;
        }
        // Both ways arrive from the gateway pod's address (the proxy keeps the client's).
        assert!(e.peer.starts_with(&format!("{}:", paths[1].src)), "{e:?}");
        assert_eq!(e.local, backend_addr, "{e:?}");
    }
    let (allowed, denied): (Vec<&Sent>, Vec<&Sent>) = sent.iter().partition(|s| s.allowed);
    assert!(allowed.len() > 200 && denied.len() > 100, "a real mix");
    for s in &allowed {
        assert_eq!(
            arrived.get(s.id.as_str()).copied(),
            Some(1),
            "allowed {} via {} {} must reach the backend exactly once",
            s.id,
            s.via,
            s.what
        );
    }
    for s in &denied {
        assert_eq!(
            arrived.get(s.id.as_str()),
            None,
            "denied {} via {} {} reached the backend",
            s.id,
            s.via,
            s.what
        );
    }
    for (id, _) in &from_frontend {
        assert_eq!(
            arrived.get(id.as_str()),
            None,
            "{id} from the frontend arrived"
        );
    }
    assert_eq!(log.len(), allowed.len(), "nothing else reached the backend");
    let drops = collector.events();
    assert!(
        drops.iter().all(|e| e.src == frontend.1),
        "policy drops of other traffic than the frontend's: {drops:?}"
    );
    assert!(
        drops.iter().any(|e| e.src == frontend.1 && e.dport == 3000),
        "the frontend's requests were dropped by policy, and logged"
    );
    drop(collector);
    eprintln!(
        "{} requests ({} allowed, {} denied) through the gateway and direct: all decided once; \
         {FRONTEND} from the frontend dropped",
        sent.len(),
        allowed.len(),
        denied.len()
    );
    lab.down().unwrap();
}

#[test]
fn without_its_l7_proxy_the_backend_gets_nothing_allowed_or_denied() {
    if !root_or_skip("without_its_l7_proxy_the_backend_gets_nothing_allowed_or_denied") {
        return;
    }
    let Setup {
        mut lab,
        paths,
        backend,
        world,
    } = setup("noproxy");
    let collector = lab.drop_collector(false);
    let single = |lab: &Lab, path: Path, (method, target): (&str, &str), id: &str| {
        let q = request(method, target, id);
        call(
            lab,
            path.from,
            &Request::Http {
                src: path.src,
                sport: 0,
                dst: path.dst,
                port: path.port,
                method: q.method,
                path: q.path,
                host: q.host,
                headers: q.headers,
                timeout_ms: 1000,
            },
        )
    };
    // With the proxy: the allowed request is answered, the denied one refused.
    for path in paths {
        let r = single(&lab, path, ALLOWED[0], &format!("before-{}", path.name));
        assert_eq!(r.status, Some(200), "{} {r:?}", path.name);
        let r = single(
            &lab,
            path,
            DENIED[0],
            &format!("before-denied-{}", path.name),
        );
        assert_eq!(r.status, Some(403), "{} {r:?}", path.name);
    }
    let NsRef::Pod(k) = backend.0 else {
        panic!("the backend is a pod")
    };
    let node = lab.topo.pods[k].node;
    lab.kill_proxies(node).unwrap();
    let mut ids = Vec::new();
    for path in paths {
        for (what, req) in [("allowed", ALLOWED[0]), ("denied", DENIED[0])] {
            let id = format!("after-{what}-{}", path.name);
            let r = single(&lab, path, req, &id);
            // No answer at all: not the backend's 200, and no 403 either (nobody is left
            // to decide); the connection is dropped (direct) or closed by the Gateway,
            // which cannot reach the backend.
            assert_eq!(
                r.status, None,
                "{what} via {} without a proxy: {r:?}",
                path.name
            );
            ids.push(id);
        }
    }
    // The direct SYNs were dropped by the fail-closed rule, and logged as such.
    let dropped = collector.wait_for(
        |e| {
            e.reason == PROXY_UNAVAILABLE
                && e.src == paths[1].src
                && e.dst == backend.1
                && e.dport == 3000
        },
        Duration::from_secs(3),
    );
    assert!(dropped.is_some(), "no proxy-unavailable drop logged");
    let log = lab.http_log(backend.0).unwrap();
    let arrived: Vec<&str> = log.iter().filter_map(|e| e.probe_id.as_deref()).collect();
    for id in &ids {
        assert!(
            !arrived.contains(&id.as_str()),
            "{id} reached the backend: {log:?}"
        );
    }
    // Only the two allowed requests from before the kill ever arrived.
    assert_eq!(arrived.len(), 2, "{arrived:?}");
    drop(world);
    drop(collector);
    lab.down().unwrap();
}

/// The window of the original bug: requests in flight while the backend node's proxies are
/// down and while they start again. Until they listen, tproxy finds no socket and the
/// datapath must drop; once they do, they decide. No denied request may ever be answered 200
/// or reach the backend, whatever the timing.
#[test]
fn requests_while_the_proxies_start_again_are_never_let_through() {
    if !root_or_skip("requests_while_the_proxies_start_again_are_never_let_through") {
        return;
    }
    let Setup {
        mut lab,
        paths,
        backend,
        world,
    } = setup("restart");
    let NsRef::Pod(k) = backend.0 else {
        panic!("the backend is a pod")
    };
    let node = lab.topo.pods[k].node;
    lab.kill_proxies(node).unwrap();
    let backend_addr = format!("{}:3000", backend.1);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut sent: Vec<Sent> = Vec::new();
    // The workers talk to the agents' sockets, not to `lab`, which restarts the proxies.
    let sockets: Vec<PathBuf> = paths.iter().map(|p| lab.socket(p.from)).collect();
    let lab_mut = &mut lab;
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..16)
            .map(|w| {
                let (stop, sockets) = (&stop, &sockets);
                s.spawn(move || {
                    let mut out = Vec::new();
                    let mut n = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let path = paths[(w + n) % 2];
                        let socket = &sockets[(w + n) % 2];
                        let allowed = (w + n) % 3 != 0;
                        let (method, target) = if allowed {
                            ALLOWED[n % ALLOWED.len()]
                        } else {
                            DENIED[n % DENIED.len()]
                        };
                        let id = format!("r{w}-{n}");
                        let q = request(method, target, &id);
                        let r = wire::call(
                            socket,
                            &Request::Http {
                                src: path.src,
                                sport: 0,
                                dst: path.dst,
                                port: path.port,
                                method: q.method,
                                path: q.path,
                                host: q.host,
                                headers: q.headers,
                                timeout_ms: 300,
                            },
                            Duration::from_secs(60),
                        )
                        .unwrap();
                        assert!(r.error.is_none(), "{r:?}");
                        out.push(Sent {
                            id,
                            allowed,
                            via: path.name,
                            what: format!("{method} {target}"),
                            answer: r.status.map(|status| HttpAnswer {
                                status,
                                headers: r.headers.clone(),
                                body: r.body.clone().unwrap_or_default(),
                            }),
                            note: format!("connected: {}, closed: {}", r.delivered, r.closed),
                        });
                        n += 1;
                    }
                    out
                })
            })
            .collect();
        // Requests meet the dead proxies for a while, then the start-up, then live proxies.
        std::thread::sleep(Duration::from_millis(500));
        let started = std::time::Instant::now();
        let restart = lab_mut.restart_proxies(node);
        while restart.is_ok() && !lab_mut.proxies_ready(node) {
            assert!(started.elapsed() < Duration::from_secs(20), "no restart");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(2500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in workers {
            sent.extend(w.join().unwrap());
        }
        restart.unwrap();
    });
    let log = lab.http_log(backend.0).unwrap();
    let arrived: BTreeMap<&str, usize> =
        log.iter()
            .filter_map(|e| e.probe_id.as_deref())
            .fold(BTreeMap::new(), |mut m, id| {
                *m.entry(id).or_default() += 1;
                m
            });
    let mut unanswered = 0;
    let mut answered_allowed = 0;
    for s in &sent {
        match &s.answer {
            None => {
                unanswered += 1;
                assert!(!arrived.contains_key(s.id.as_str()) || s.allowed, "{s:?}");
            }
            Some(_) => {
                check(s, &backend_addr).unwrap_or_else(|e| panic!("{s:?}: {e}"));
                if s.allowed {
                    answered_allowed += 1;
                    assert_eq!(arrived.get(s.id.as_str()), Some(&1), "{s:?}");
                }
            }
        }
        if !s.allowed {
            assert!(!arrived.contains_key(s.id.as_str()), "denied {s:?} arrived");
        }
    }
    eprintln!(
        "{} requests around a proxy restart: {unanswered} without an answer (proxies down or \
         starting), {answered_allowed} allowed answered 200",
        sent.len()
    );
    assert!(unanswered > 0, "no request met the proxies down");
    assert!(answered_allowed > 0, "the proxies never came back");
    drop(world);
    lab.down().unwrap();
}
