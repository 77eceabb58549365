//! Times the cold front end alone: `cargo run --release --example frontend FILE [N]` parses
//! and decodes a scenario file N times (the peak memory of N=1 is the front end's). For a JSON
//! file it also times serde_json reading the same text into its own tree, the alternative the
//! positioned reader was measured against.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use membrane_cluster::scenario::parse_scenario;
use membrane_policy::yaml::{Embedding, parse_documents};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let text = std::fs::read_to_string(&args[1]).unwrap();
    let n: u32 = args.get(2).map_or(1, |s| s.parse().unwrap());
    let (mut parse, mut decode, mut policies) = (0f64, 0f64, 0f64);
    for _ in 0..n {
        let t = Instant::now();
        let docs = parse_documents(&text, Embedding::default()).unwrap();
        parse += t.elapsed().as_secs_f64();
        drop(docs);
        let t = Instant::now();
        let s = parse_scenario(&text).unwrap();
        decode += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let (r, _) = membrane_policy::parse_resources(&s.policies, s.policies_embedding);
        policies += t.elapsed().as_secs_f64();
        assert!(!r.is_empty());
    }
    let ms = |x: f64| x * 1000.0 / f64::from(n);
    if text.trim_start().starts_with('{') {
        let t = Instant::now();
        for _ in 0..n {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            drop(v);
        }
        println!(
            "serde_json::Value {:.1} ms (no positions: errors could not name a line)",
            ms(t.elapsed().as_secs_f64())
        );
    }
    println!(
        "yaml_parse {:.1} ms, parse_scenario {:.1} ms, embedded policies {:.1} ms",
        ms(parse),
        ms(decode),
        ms(policies)
    );
}
