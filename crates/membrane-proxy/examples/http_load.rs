//! A load generator for the HTTP proxy's soak test (`bench/soak.sh`; not a product binary).
//!
//! ```text
//! http_load --target 127.0.0.1:18081 --connections 10000 --duration 600 --every 30 \
//!           --watch-pid PID [--requests-per-connection 200] [--denied-percent 20] [--rate 10000]
//!           [--denied-only-percent 20]
//! ```
//!
//! Every connection sends keep-alive `GET`s: allowed ones (`/public/<n>`, expecting `200`)
//! and denied ones (`/private/<n>`, expecting `403`) in the given mix, and reconnects after
//! `--requests-per-connection` requests, so connection setup and teardown are exercised
//! too. Every `--every` seconds it prints requests/s, p50/p99 latency, wrong answers and
//! errors in that interval, and the watched process's open file descriptors and RSS; at the
//! end, the first and last figures side by side (a leak shows as growth). Exit 1 on any
//! wrong answer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Latency histogram: 10 µs buckets up to 100 ms, then 1 ms buckets up to 10 s, then one
/// overflow bucket.
const FINE_BUCKETS: u64 = 10_000;
const FINE_US: u64 = 10;
const COARSE_US: u64 = 1_000;
const BUCKETS: usize = 10_000 + 9_900 + 1;

fn bucket_of(us: u64) -> usize {
    let b = if us < FINE_BUCKETS * FINE_US {
        us / FINE_US
    } else {
        FINE_BUCKETS + (us - FINE_BUCKETS * FINE_US) / COARSE_US
    };
    b.min(BUCKETS as u64 - 1) as usize
}

fn bucket_ms(b: usize) -> f64 {
    let b = b as u64;
    let us = if b < FINE_BUCKETS {
        b * FINE_US
    } else {
        FINE_BUCKETS * FINE_US + (b - FINE_BUCKETS) * COARSE_US
    };
    us as f64 / 1000.0
}

struct Stats {
    ok: AtomicU64,
    wrong: AtomicU64,
    errors: AtomicU64,
    hist: Vec<AtomicU64>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            ok: AtomicU64::new(0),
            wrong: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            hist: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn record(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.hist[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// Takes and resets the interval's counts: (ok, wrong, errors, p50 ms, p99 ms).
    fn take(&self) -> (u64, u64, u64, f64, f64) {
        let counts: Vec<u64> = self
            .hist
            .iter()
            .map(|h| h.swap(0, Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let pct = |p: f64| {
            let want = (total as f64 * p).ceil() as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= want && want > 0 {
                    return bucket_ms(i);
                }
            }
            0.0
        };
        (
            self.ok.swap(0, Ordering::Relaxed),
            self.wrong.swap(0, Ordering::Relaxed),
            self.errors.swap(0, Ordering::Relaxed),
            pct(0.5),
            pct(0.99),
        )
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// Open file descriptors and resident memory (KiB) of a process.
fn usage(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0);
    (fds, rss)
}

/// Reads one response (status and `content-length` body) from `buf`/`stream`; its status.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).unwrap_or("");
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let len: usize = head
                .split("\r\n")
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..end + 4 + len);
            return Ok(status);
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[allow(clippy::too_many_arguments)]
async fn connection_loop(
    id: u64,
    target: SocketAddr,
    per_connection: u64,
    denied_percent: u64,
    denied_only: bool,
    pace: Option<Duration>,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
) {
    let mut n: u64 = id;
    let mut first = true;
    // Paced connections start spread over one period, so the load is even from the start.
    let mut next = Instant::now()
        + pace.map_or(Duration::ZERO, |p| {
            p.mul_f64((id.wrapping_mul(2654435761) % 1000) as f64 / 1000.0)
        });
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut stream) = TcpStream::connect(target).await else {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let mut buf = Vec::with_capacity(4096);
        // The first connection of each loop is cut short by a different amount, so the
        // connections do not all reconnect in the same second (a storm no real client
        // population makes).
        let budget = if first {
            first = false;
            1 + per_connection * (id.wrapping_mul(2654435761) % 1000) / 1000
        } else {
            per_connection
        };
        for _ in 0..budget {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if let Some(p) = pace {
                tokio::time::sleep_until(next.into()).await;
                next += p;
            }
            n = n
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let denied = denied_only || (n >> 33) % 100 < denied_percent;
            let (path, want) = if denied {
                ("/private/", 403)
            } else {
                ("/public/", 200)
            };
            let req = format!("GET {path}{} HTTP/1.1\r\nHost: echo\r\n\r\n", n % 1000);
            let start = Instant::now();
            if stream.write_all(req.as_bytes()).await.is_err() {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
            match read_response(&mut stream, &mut buf).await {
                Ok(status) => {
                    stats.record(start.elapsed());
                    if status == want {
                        stats.ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        stats.wrong.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(_) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
}

fn raise_fd_limit() {
    let _ = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map(
        |(_, hard)| {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)
        },
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let target: SocketAddr = arg(&args, "--target")
        .expect("--target ADDR")
        .parse()
        .expect("target address");
    assert!(target.ip().is_loopback(), "the load stays on loopback");
    let connections: u64 = arg(&args, "--connections").map_or(1000, |v| v.parse().unwrap());
    let duration = Duration::from_secs(arg(&args, "--duration").map_or(60, |v| v.parse().unwrap()));
    let every = Duration::from_secs(arg(&args, "--every").map_or(10, |v| v.parse().unwrap()));
    let per_connection: u64 =
        arg(&args, "--requests-per-connection").map_or(200, |v| v.parse().unwrap());
    let denied_percent: u64 = arg(&args, "--denied-percent").map_or(20, |v| v.parse().unwrap());
    // Connections that only send denied requests (a scanner): the proxy answers them itself
    // and never opens an upstream connection for them.
    let denied_only_percent: u64 =
        arg(&args, "--denied-only-percent").map_or(0, |v| v.parse().unwrap());
    let watch: Option<u32> = arg(&args, "--watch-pid").map(|v| v.parse().unwrap());
    // `--rate R`: R requests/s in all, each connection sending every connections/R seconds
    // (an open-ish load, so latency is the proxy's, not a queue's); without it every
    // connection sends its next request as soon as it has the answer.
    let pace: Option<Duration> = arg(&args, "--rate")
        .map(|v| v.parse::<f64>().unwrap())
        .map(|rate| Duration::from_secs_f64(connections as f64 / rate));
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let wrong_total = rt.block_on(async move {
        let stats = Arc::new(Stats::new());
        let stop = Arc::new(AtomicBool::new(false));
        let before = watch.map(usage);
        let mut tasks = tokio::task::JoinSet::new();
        for id in 0..connections {
            tasks.spawn(connection_loop(
                id + 1,
                target,
                per_connection,
                denied_percent,
                id % 100 < denied_only_percent,
                pace,
                stats.clone(),
                stop.clone(),
            ));
        }
        println!(
            "{connections} connections to {target}, {denied_only_percent}% of them sending only denied requests, the others {denied_percent}% denied, reconnect every {per_connection} requests, {}, {}s",
            pace.map_or("as fast as answered".to_string(), |p| format!(
                "one request per connection every {} ms",
                p.as_millis()
            )),
            duration.as_secs()
        );
        println!("  time      req/s   p50 ms   p99 ms  wrong  errors   fds   rss KiB");
        let start = Instant::now();
        let mut rows = Vec::new();
        let mut wrong_total = 0;
        while start.elapsed() < duration {
            tokio::time::sleep(every).await;
            let (ok, wrong, errors, p50, p99) = stats.take();
            wrong_total += wrong;
            let (fds, rss) = watch.map_or((0, 0), usage);
            let rps = (ok + wrong) as f64 / every.as_secs_f64();
            println!(
                "{:>5.0}s {:>10.0} {:>8.2} {:>8.2} {:>6} {:>7} {:>5} {:>9}",
                start.elapsed().as_secs_f64(),
                rps,
                p50,
                p99,
                wrong,
                errors,
                fds,
                rss
            );
            rows.push((rps, p99, fds, rss));
        }
        stop.store(true, Ordering::Relaxed);
        tasks.abort_all();
        if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
            println!(
                "first interval: {:.0} req/s, p99 {:.2} ms, {} fds, {} KiB; last: {:.0} req/s, p99 {:.2} ms, {} fds, {} KiB",
                first.0, first.1, first.2, first.3, last.0, last.1, last.2, last.3
            );
        }
        if let Some((fds, rss)) = before {
            println!("watched process before the load: {fds} fds, {rss} KiB");
        }
        wrong_total
    });
    if wrong_total > 0 {
        eprintln!("{wrong_total} wrong answers");
        std::process::exit(1);
    }
}
