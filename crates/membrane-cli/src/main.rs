//! The `membrane` command: a thin layer over the engine crates.
#![forbid(unsafe_code)]

mod bench;
mod check;
mod html;
mod lab_cmd;
mod lint_cmd;
mod matrix_cmd;
mod printer;

use clap::{Parser, Subcommand, ValueEnum};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "membrane",
    version,
    about = "Cilium network policy, checked and explained offline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run scenario files: every flow's verdict against its expectation.
    Test {
        /// Scenario files (YAML).
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
        /// Print every flow, not only failures.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Validate policy manifests as the Cilium agent does; exit 1 if any policy is invalid.
    Validate {
        /// Files or directories with CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy,
        /// NetworkPolicy and CiliumCIDRGroup manifests (`-` for stdin).
        #[arg(required = true)]
        paths: Vec<std::path::PathBuf>,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Load manifests (workloads, services, gateways, policies, ConnectivityTests), check
    /// every expectation and explain the ones that do not hold. Exit 0 when all hold, 1 when
    /// some do not, 2 on unusable input.
    Check {
        #[arg(required = true)]
        paths: Vec<std::path::PathBuf>,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Explain one flow: both sides, the deciding rules with file:line, and why each side
    /// is enforced.
    Explain {
        #[arg(required = true)]
        paths: Vec<std::path::PathBuf>,
        /// Source: namespace/name of a workload, a node, `world`, an external name or an IP.
        #[arg(long)]
        from: String,
        /// Destination, as --from (a Gateway's namespace/name routes by --http-path).
        #[arg(long, default_value = "")]
        to: String,
        #[arg(long)]
        port: Option<u16>,
        #[arg(long, default_value = "TCP")]
        protocol: String,
        #[arg(long)]
        http_method: Option<String>,
        #[arg(long)]
        http_path: Option<String>,
        /// A DNS query from --from to kube-dns instead of a connection.
        #[arg(long)]
        dns: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Find mistakes in policies: stable rule ids, severity, file:line:column, message and
    /// help. Exit 1 when a finding of warning or worse exists.
    Lint(lint_cmd::LintArgs),
    /// Who can talk to whom: workloads × workloads for each port and protocol in play.
    Matrix(matrix_cmd::MatrixArgs),
    /// Real enforcement in network namespaces with nftables (root only).
    #[command(subcommand)]
    Lab(lab_cmd::LabCommand),
    /// Time the engine on the conformance-shaped workloads (see the README).
    Bench {
        /// Scenario files to evaluate repeatedly.
        files: Vec<std::path::PathBuf>,
        #[arg(long, default_value_t = 20)]
        iterations: u32,
        /// Repetitions of each incremental operation (the median is reported).
        #[arg(long, default_value_t = 25)]
        reps: u32,
        /// Skip measuring the engine's memory per pod (it adds 400,000 pods).
        #[arg(long)]
        no_pod_memory: bool,
        /// Print the figures as one JSON object (keys: files, flows, iterations, phases_ms.*,
        /// incremental.*).
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Test {
            files,
            output,
            verbose,
        } => printer::run_tests(&files, output, verbose),
        Command::Validate { paths, output } => printer::run_validate(&paths, output),
        Command::Bench {
            files,
            iterations,
            reps,
            no_pod_memory,
            json,
        } => bench::run_bench(&files, iterations, reps, !no_pod_memory, json),
        Command::Check { paths, output } => check::run_check(&paths, output),
        Command::Lint(args) => lint_cmd::run(args),
        Command::Matrix(args) => matrix_cmd::run(args),
        Command::Lab(cmd) => lab_cmd::run(cmd),
        Command::Explain {
            paths,
            from,
            to,
            port,
            protocol,
            http_method,
            http_path,
            dns,
            output,
        } => {
            let args = check::ExplainArgs {
                from,
                to,
                port,
                protocol,
                http_method,
                http_path,
                dns,
            };
            check::run_explain(&paths, args, output)
        }
    };
    ExitCode::from(code)
}
