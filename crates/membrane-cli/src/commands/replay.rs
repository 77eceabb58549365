//! `membrane replay FLOWS MANIFESTS...`: recorded Hubble flows against policies, offline
//! (Cilium's audit mode): which flows would now be dropped or L7-denied, which verdicts
//! change, per-policy and per-rule hit counts and the rules no flow used.
//!
//! The export is read line by line and nothing is kept per flow (JSON output is written as
//! it is read), so a million-line export replays in constant memory.

use crate::input::InputSource;
use crate::printers::Output;
use membrane_cluster::hubble::{Record, parse_line};
use membrane_cluster::replay::{KEPT_PROBLEMS, LineOutcome, Replay};
use serde_json::json;
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ReplayArgs {
    /// The flows: `hubble observe -o json` or `-o jsonpb` lines (`-` for standard input).
    pub flows: PathBuf,
    /// The policies to replay against, and workloads that add what flows lack (files,
    /// directories, or a scenario file).
    #[arg(required = true)]
    pub manifests: Vec<PathBuf>,
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

/// How many kinds of changed flows (flow shape and recorded verdict) the text report shows.
const SHOWN_GROUPS: usize = 200;

/// How often (in lines) the progress bar moves.
const PROGRESS_EVERY: u64 = 4096;

pub fn run(args: ReplayArgs) -> u8 {
    if args.manifests.iter().any(|p| p.as_os_str() == "-") && args.flows.as_os_str() == "-" {
        eprintln!("error: the flows and the manifests cannot both be standard input");
        return 2;
    }
    let loaded = match InputSource::Paths(args.manifests.clone()).load() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let invalid = loaded
        .world
        .policy_set
        .policies
        .iter()
        .filter(|t| !t.valid)
        .count();
    if invalid > 0 {
        eprintln!(
            "warning: {invalid} invalid policy(ies) are not enforced (the agent refuses them); `membrane validate` says why"
        );
    }
    let (reader, len): (Box<dyn Read>, Option<u64>) = if args.flows.as_os_str() == "-" {
        (Box::new(std::io::stdin().lock()), None)
    } else {
        match std::fs::File::open(&args.flows) {
            Ok(f) => {
                let len = f.metadata().ok().map(|m| m.len());
                (Box::new(f), len)
            }
            Err(e) => {
                eprintln!("error: {}: cannot read: {e}", args.flows.display());
                return 2;
            }
        }
    };
    let bar = progress(len);
    let mut replay = Replay::new(loaded);
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let json = matches!(args.output, Output::Json);
    let mut first = true;
    if json {
        let _ = out.write_all(b"{\"flows\": [");
    }
    let mut reader = BufReader::with_capacity(1 << 16, reader);
    let mut buf = Vec::new();
    let mut line_no: u64 = 0;
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(n) => bar.inc(n as u64),
            Err(e) => {
                bar.finish_and_clear();
                eprintln!(
                    "error: {}: cannot read after line {line_no}: {e}",
                    args.flows.display()
                );
                return 2;
            }
        }
        line_no += 1;
        if line_no.is_multiple_of(PROGRESS_EVERY) {
            bar.set_message(format!("{line_no} lines"));
        }
        let record = match std::str::from_utf8(&buf) {
            Err(_) => Err("not UTF-8".to_string()),
            Ok(text) => parse_line(text),
        };
        let flow = match record {
            Ok(None) => continue,
            Ok(Some(Record::NotAFlow(_))) => {
                replay.stats.not_flows += 1;
                continue;
            }
            Ok(Some(Record::Flow(f))) => f,
            Err(why) => {
                replay.stats.bad_lines += 1;
                replay.stats.problem(line_no, why);
                continue;
            }
        };
        let outcome = replay.flow(line_no, &flow);
        if !json {
            continue;
        }
        let entry = match &outcome {
            LineOutcome::Decided {
                decided, changed, ..
            } => format!(
                "{{\"line\": {line_no}, \"verdict\": \"{}\", \"recorded\": {}, \"changed\": {changed}, \"deciding\": {}}}",
                decided.verdict(),
                json!(flow.verdict),
                decided.json(&replay.loaded)
            ),
            LineOutcome::Reply => format!(
                "{{\"line\": {line_no}, \"verdict\": null, \"recorded\": {}, \"changed\": false, \"deciding\": null, \"skipped\": \"reply\"}}",
                json!(flow.verdict)
            ),
            LineOutcome::Undecidable(why) => format!(
                "{{\"line\": {line_no}, \"verdict\": null, \"recorded\": {}, \"changed\": false, \"deciding\": null, \"skipped\": {}}}",
                json!(flow.verdict),
                json!(why)
            ),
        };
        let _ = out.write_all(if first { b"\n" } else { b",\n" });
        first = false;
        let _ = out.write_all(entry.as_bytes());
    }
    bar.finish_and_clear();
    let unusable = replay.stats.flows == 0;
    if json {
        let _ = writeln!(out, "\n], {}", tail_json(&replay).trim_start_matches('{'));
    } else {
        text_report(&mut out, &args, &replay);
    }
    let _ = out.flush();
    if unusable {
        eprintln!(
            "error: {}: no Hubble flow in {line_no} line(s)",
            args.flows.display()
        );
        return 2;
    }
    u8::from(replay.stats.changed > 0)
}

fn progress(len: Option<u64>) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let target = indicatif::ProgressDrawTarget::stderr_with_hz(10);
    match len {
        Some(len) => {
            let bar = indicatif::ProgressBar::with_draw_target(Some(len), target);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "replaying {bar:30} {bytes}/{total_bytes} {msg} ({eta})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        }
        None => {
            let bar = indicatif::ProgressBar::with_draw_target(None, target);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} replaying {bytes} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar
        }
    }
}

/// Everything after `flows` in the JSON output: rules, policies, unused rules, summary.
fn tail_json(replay: &Replay) -> String {
    let s = &replay.stats;
    let rule = |r: &membrane_cluster::replay::RuleHits| json!({"rule": r.rule, "policy": r.policy, "file": r.file, "line": r.line, "hits": r.hits});
    json!({
        "schema": membrane_cluster::decision_json::SCHEMA,
        "rules": replay.rules.iter().map(rule).collect::<Vec<_>>(),
        "policies": replay.policies.iter().map(|p| json!({"policy": p.policy, "hits": p.hits})).collect::<Vec<_>>(),
        "unused_rules": replay.unused_rules().map(|r| r.rule.clone()).collect::<Vec<_>>(),
        "summary": {
            "flows": s.flows,
            "decided": s.decided,
            "replies": s.replies,
            "changed": s.changed,
            "newly_dropped": s.newly_dropped,
            "newly_l7_denied": s.newly_l7_denied,
            "newly_allowed": s.newly_allowed,
            "not_comparable": s.not_comparable,
            "undecidable": s.undecidable,
            "not_flows": s.not_flows,
            "bad_lines": s.bad_lines,
            "problems": s.problems.iter().map(|(l, w)| json!({"line": l, "reason": w})).collect::<Vec<_>>(),
        },
    })
    .to_string()
}

fn text_report(out: &mut impl Write, args: &ReplayArgs, replay: &Replay) {
    let s = &replay.stats;
    let _ = writeln!(out, "replay of {}", args.flows.display());
    let _ = writeln!(
        out,
        "  {} flows read: {} decided, {} replies skipped (a reply belongs to the connection its request opened)",
        s.flows, s.decided, s.replies
    );
    let _ = writeln!(
        out,
        "  {} verdicts changed: {} newly dropped, {} newly L7-denied, {} newly allowed",
        s.changed, s.newly_dropped, s.newly_l7_denied, s.newly_allowed
    );
    if s.not_comparable > 0 {
        let _ = writeln!(
            out,
            "  {} recorded verdicts say nothing about policy (ERROR, drops for other reasons): decided, not compared",
            s.not_comparable
        );
    }
    if s.not_flows > 0 {
        let _ = writeln!(
            out,
            "  {} lines are not flows (node_status, lost_events)",
            s.not_flows
        );
    }
    if s.bad_lines + s.undecidable > 0 {
        let _ = writeln!(
            out,
            "  {} lines skipped: {} unreadable, {} flows that cannot be decided",
            s.bad_lines + s.undecidable,
            s.bad_lines,
            s.undecidable
        );
        for (line, why) in &s.problems {
            let _ = writeln!(out, "    line {line}: {why}");
        }
        let kept = s.problems.len() as u64;
        if s.bad_lines + s.undecidable > kept {
            let _ = writeln!(
                out,
                "    ... and {} more (the first {KEPT_PROBLEMS} are listed)",
                s.bad_lines + s.undecidable - kept
            );
        }
    }
    if !replay.changed_groups.is_empty() {
        let _ = writeln!(out, "\nchanged flows");
        for g in replay.changed_groups.iter().take(SHOWN_GROUPS) {
            let more = if g.count > 1 {
                format!(" (and {} more like it)", g.count - 1)
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "  line {}{more}: {}: {} → {}",
                g.first_line,
                g.decided.description,
                g.recorded,
                g.decided.verdict()
            );
            for l in
                membrane_cluster::decision_json::decision_lines(&g.decided.decision, &replay.loaded)
            {
                let _ = writeln!(out, "      {l}");
            }
        }
    }
    if replay.changed_groups.len() > SHOWN_GROUPS {
        let _ = writeln!(
            out,
            "  ... and {} more kinds of changed flows (`--output json` lists every flow)",
            replay.changed_groups.len() - SHOWN_GROUPS
        );
    }
    let _ = writeln!(out, "\npolicy hits");
    for p in &replay.policies {
        let _ = writeln!(out, "  {:>8}  {}", p.hits, p.policy);
    }
    let _ = writeln!(out, "\nrule hits");
    for r in &replay.rules {
        let _ = writeln!(out, "  {:>8}  {} ({}:{})", r.hits, r.rule, r.file, r.line);
    }
    let unused: Vec<_> = replay.unused_rules().collect();
    if unused.is_empty() {
        let _ = writeln!(out, "\nevery rule decided some flow");
    } else {
        let _ = writeln!(out, "\nunused rules (no flow used them)");
        for r in unused {
            let _ = writeln!(out, "  {} ({}:{})", r.rule, r.file, r.line);
        }
    }
}
