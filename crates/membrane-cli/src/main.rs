//! The `membrane` command: a thin layer over the engine crates. This file parses the
//! command line and dispatches; each command is a module of `commands` (its arguments and
//! its `run`), each output format a module of `printers`, and manifests are read through
//! `input`.
#![forbid(unsafe_code)]

mod commands;
mod input;
mod printers;

use clap::{Parser, Subcommand};
use commands::{
    agent, bench, capacity, check, diff, explain, lab, lint, matrix, observe, replay, snapshot,
    test, validate,
};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "membrane",
    version,
    about = "Cilium network policy, checked and explained offline or against a live cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run scenario files: every flow's verdict against its expectation.
    Test(test::TestArgs),
    /// Validate policy manifests as the Cilium agent does; exit 1 if any policy is invalid.
    Validate(validate::ValidateArgs),
    /// Load manifests (workloads, services, gateways, policies, ConnectivityTests), check
    /// every expectation and explain the ones that do not hold. Exit 0 when all hold, 1 when
    /// some do not, 2 on unusable input.
    Check(check::CheckArgs),
    /// The connectivity that changes between two policy sets (OLD and NEW: files,
    /// directories, or a cluster as OLD): newly allowed, newly denied, L7 rules changed.
    /// Exit 0 when nothing changes, 1 when something does, 2 on unusable input.
    Diff(diff::DiffArgs),
    /// Explain one flow: both sides, the deciding rules with file:line, and why each side
    /// is enforced.
    Explain(explain::ExplainArgs),
    /// Find mistakes in policies: stable rule ids, severity, file:line:column, message and
    /// help. Exit 1 when a finding of warning or worse exists.
    Lint(lint::LintArgs),
    /// Who can talk to whom: workloads × workloads for each port and protocol in play.
    Matrix(matrix::MatrixArgs),
    /// Write a live cluster's policies, workloads and services as a manifests directory that
    /// `membrane check DIR` analyses offline with the same verdicts.
    Snapshot(snapshot::SnapshotArgs),
    /// Enforce one node's pods with nftables, following the cluster (or a manifests
    /// directory): only deltas, in single transactions; the table outlives the agent.
    Agent(agent::AgentArgs),
    /// Follow the flow events an agent serves (drops, in Hubble's `observe -o json` shape).
    Observe(observe::ObserveArgs),
    /// Replay recorded Hubble flows (`hubble observe -o json` or `-o jsonpb`) against
    /// policies: verdicts that change, rule hit counts, unused rules. Exit 0 when no verdict
    /// changes, 1 when some do, 2 on unusable input.
    Replay(replay::ReplayArgs),
    /// Real enforcement in network namespaces with nftables (root only).
    #[command(subcommand)]
    Lab(lab::LabCommand),
    /// Policy-map entries per endpoint as Cilium 1.17 installs them, against
    /// `--policy-map-max` (16,384), and identities against their limits. Exit 1 when some
    /// endpoint's map is 90 % full or more, 2 on unusable input.
    Capacity(capacity::CapacityArgs),
    /// Time the engine on the conformance-shaped workloads (see the README).
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let code = match Cli::parse().command {
        Command::Test(args) => test::run(args),
        Command::Validate(args) => validate::run(args),
        Command::Check(args) => check::run(args),
        Command::Diff(args) => diff::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Lint(args) => lint::run(args),
        Command::Matrix(args) => matrix::run(args),
        Command::Snapshot(args) => snapshot::run(args),
        Command::Agent(args) => agent::run(args),
        Command::Observe(args) => observe::run(args),
        Command::Replay(args) => replay::run(args),
        Command::Lab(cmd) => lab::run(cmd),
        Command::Capacity(args) => capacity::run(args),
        Command::Bench(args) => bench::run(args),
    };
    ExitCode::from(code)
}
