//! `membrane agent`: this node's pods kept under their current policy, from the cluster's
//! watches or a manifests directory, by nftables deltas (see `membrane_agent`).

use crate::input::ClusterArgs;
use membrane_agent::enforce::Mode;
use membrane_agent::run::{AgentOptions, LogLine, Source, run as run_agent};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
pub struct AgentArgs {
    /// The node whose pods this agent enforces (its Node object's name).
    #[arg(long)]
    pub node: String,
    /// Follow a manifests directory instead of a cluster (as `membrane snapshot` writes it:
    /// pods with their addresses); it is read again when it changes.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["kubeconfig", "context"])]
    pub from: Option<PathBuf>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Print each nftables transaction instead of applying it.
    #[arg(long)]
    pub dry_run: bool,
    /// Exit after the first enforced state (for scripts and tests).
    #[arg(long)]
    pub once: bool,
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Serve the datapath's drops as flow events (Hubble's `observe -o json` lines) on this
    /// unix socket, for `membrane observe` (needs tcpdump for NFLOG).
    #[arg(long, value_name = "PATH")]
    pub events_socket: Option<PathBuf>,
    /// Do not run the L7 proxies (HTTP, DNS, TLS): traffic an L7 rule covers is then
    /// dropped (fail closed) instead of being checked request by request.
    #[arg(long)]
    pub no_proxies: bool,
    /// The cluster's name (Cilium's `cluster-name`: pods' identities carry it).
    #[arg(long, default_value = "default")]
    pub cluster_name: String,
    /// A Cilium agent option, as in the `cilium-config` ConfigMap (repeatable):
    /// enable-policy, enable-host-firewall, policy-cidr-match-mode, allow-localhost,
    /// tofqdns-dns-reject-response-code, enable-icmp-rules, enable-l7-proxy, ...
    #[arg(long, value_name = "KEY=VALUE", value_parser = membrane_cluster::world::parse_agent_flag)]
    pub agent_option: Vec<(String, String)>,
    /// How long the DNS proxy holds an answer that taught it new addresses until the
    /// datapath enforces them (Cilium's `tofqdns-proxy-response-max-delay`), in ms.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    pub tofqdns_proxy_response_max_delay_ms: u64,
    /// The namespace whose Secrets policies' secrets come from (Cilium's
    /// `policy-secrets-namespace`: values of headerMatches, TLS certificates); a secret
    /// `NS-NAME` there stands for `NS/NAME`, as Cilium's operator copies them. Empty: none.
    #[arg(long, value_name = "NS", default_value = "cilium-secrets")]
    pub policy_secrets_namespace: String,
    /// Write this file once the first state is enforced and the proxies listen (what
    /// /readyz reports), for scripts and the lab.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
    /// Serve /metrics (Prometheus), /healthz and /readyz on this address (e.g. 0.0.0.0:9963).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

fn print(format: LogFormat, line: LogLine<'_>) {
    match format {
        LogFormat::Text => {
            let fields: Vec<String> = line
                .fields
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            eprintln!("{}: {} {}", line.level, line.message, fields.join(" "));
        }
        LogFormat::Json => {
            let mut v = serde_json::json!({"level": line.level, "message": line.message});
            for (k, f) in line.fields {
                v[k] = serde_json::Value::String(f);
            }
            eprintln!("{v}");
        }
    }
}

pub fn run(args: AgentArgs) -> u8 {
    let source = match (&args.from, args.cluster.options()) {
        (Some(dir), _) => Source::Dir(dir.clone()),
        (None, Some(options)) => Source::Cluster(options),
        (None, None) => {
            // No source named: the current kubeconfig context, or, in a pod without one, its
            // service account (membrane_kube::connect falls back to the in-cluster config).
            let mut c = args.cluster.clone();
            c.cluster = true;
            match c.options() {
                Some(o) => Source::Cluster(o),
                None => return 2,
            }
        }
    };
    let metrics = std::sync::Arc::new(membrane_agent::metrics::Metrics::new());
    if let Some(addr) = args.metrics_addr {
        match membrane_agent::metrics::serve(addr, metrics.clone()) {
            Ok(bound) => print(
                args.log_format,
                LogLine {
                    level: "info",
                    message: "serving /metrics, /healthz and /readyz".into(),
                    fields: vec![("addr", bound.to_string())],
                },
            ),
            Err(e) => {
                eprintln!("error: --metrics-addr {addr}: {e}");
                return 2;
            }
        }
    }
    let options = AgentOptions {
        events_socket: args.events_socket.clone(),
        metrics,
        node: args.node.clone(),
        source,
        mode: if args.dry_run {
            Mode::DryRun
        } else {
            Mode::Apply
        },
        once: args.once,
        proxies: !args.no_proxies,
        policy: {
            let mut o = membrane_policy::options::Options {
                cluster_name: args.cluster_name.clone(),
                ..Default::default()
            };
            membrane_cluster::world::apply_agent_flags(&mut o, &args.agent_option);
            o
        },
        ready_file: args.ready_file.clone(),
        secrets_namespace: Some(args.policy_secrets_namespace.clone()).filter(|n| !n.is_empty()),
        dns_hold: Duration::from_millis(args.tofqdns_proxy_response_max_delay_ms),
        poll: Duration::from_millis(200),
    };
    let format = args.log_format;
    match run_agent(&options, &mut |l| print(format, l)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}
