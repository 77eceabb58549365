//! `membrane explain`: one flow, both sides, the deciding rules with file:line.

use crate::input::InputArgs;
use crate::printers::{Output, json, text};
use membrane_cluster::manifests::Loaded;
use membrane_cluster::runner::{Evaluation, evaluate_flow};
use membrane_cluster::scenario::FlowSpec;
use membrane_policy::verdict::{HttpRequest, Verdict};

#[derive(clap::Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Source: namespace/name of a workload, a node, `world`, an external name or an IP.
    #[arg(long)]
    pub from: String,
    /// Destination, as --from (a Gateway's namespace/name routes by --http-path).
    #[arg(long, default_value = "")]
    pub to: String,
    #[arg(long)]
    pub port: Option<u16>,
    #[arg(long, default_value = "TCP")]
    pub protocol: String,
    #[arg(long)]
    pub http_method: Option<String>,
    #[arg(long)]
    pub http_path: Option<String>,
    /// A DNS query from --from to kube-dns instead of a connection.
    #[arg(long)]
    pub dns: Option<String>,
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

/// The flow explained, as the printers render it.
pub struct ExplainReport<'a> {
    pub loaded: &'a Loaded,
    pub flow: &'a FlowSpec,
    pub evaluation: &'a Evaluation,
}

pub fn run(args: ExplainArgs) -> u8 {
    let loaded = match args.input.source().load() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let http = match (&args.http_method, &args.http_path) {
        (None, None) => None,
        (m, p) => Some(HttpRequest {
            method: m.clone().unwrap_or_else(|| "GET".into()),
            path: p.clone().unwrap_or_else(|| "/".into()),
            host: String::new(),
            headers: vec![],
        }),
    };
    let flow = FlowSpec {
        from: args.from.clone(),
        to: if args.dns.is_some() {
            None
        } else {
            Some(args.to.clone())
        },
        port: args.port,
        protocol: Some(args.protocol.to_ascii_uppercase()),
        icmp: None,
        http,
        tls: None,
        dns: args.dns.clone(),
        expect: Verdict::Allow,
        drop: None,
        reason: None,
        inject_headers: vec![],
        note: None,
        span: Default::default(),
    };
    for name in [Some(&flow.from), flow.to.as_ref()].into_iter().flatten() {
        if loaded.world.party(name).is_none() {
            eprintln!(
                "error: unknown endpoint `{name}`; use namespace/name of a workload, a node name, `world`, an external name or an IP address"
            );
            return 2;
        }
    }
    let ev = match evaluate_flow(&loaded.world, &flow) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let report = ExplainReport {
        loaded: &loaded,
        flow: &flow,
        evaluation: &ev,
    };
    match args.output {
        Output::Json => println!("{}", json::explain(&report)),
        Output::Text => text::explain(&report),
    }
    0
}
