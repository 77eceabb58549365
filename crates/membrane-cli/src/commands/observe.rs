//! `membrane observe`: the flow events an agent serves, as JSON lines (Hubble's `observe -o
//! json` shape), filtered by pod, namespace and verdict.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ObserveArgs {
    /// The agent's events socket (`membrane agent --events-socket`).
    #[arg(long, default_value = "/run/membrane/agent.sock")]
    pub socket: PathBuf,
    /// Only flows from or to this pod (`namespace/name`).
    #[arg(long)]
    pub pod: Option<String>,
    /// Only flows from or to this namespace.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Only flows with this verdict (DROPPED, FORWARDED, ...).
    #[arg(long)]
    pub verdict: Option<String>,
    /// Stop after this many flows.
    #[arg(long)]
    pub count: Option<usize>,
}

fn side_matches(side: &serde_json::Value, pod: Option<&str>, namespace: Option<&str>) -> bool {
    let ns = side["namespace"].as_str().unwrap_or("");
    let name = side["pod_name"].as_str().unwrap_or("");
    pod.is_none_or(|p| p == format!("{ns}/{name}")) && namespace.is_none_or(|n| n == ns)
}

pub fn run(args: ObserveArgs) -> u8 {
    let stream = match std::os::unix::net::UnixStream::connect(&args.socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "error: {}: {e}: is `membrane agent --events-socket {}` running?",
                args.socket.display(),
                args.socket.display()
            );
            return 2;
        }
    };
    let mut shown = 0;
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(stream).lines().map_while(Result::ok) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let flow = &v["flow"];
        let (pod, ns) = (args.pod.as_deref(), args.namespace.as_deref());
        if (pod.is_some() || ns.is_some())
            && !side_matches(&flow["source"], pod, ns)
            && !side_matches(&flow["destination"], pod, ns)
        {
            continue;
        }
        if args.verdict.as_deref().is_some_and(|want| {
            !flow["verdict"]
                .as_str()
                .unwrap_or("")
                .eq_ignore_ascii_case(want)
        }) {
            continue;
        }
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            return 0;
        }
        shown += 1;
        if args.count.is_some_and(|c| shown >= c) {
            return 0;
        }
    }
    0
}
