//! A large cluster (its endpoints decoded by two threads) decodes like a small one: every
//! endpoint in order, and every diagnostic in file order with its position.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use membrane_cluster::scenario::parse_scenario;

fn cluster(n: usize, bad: &[usize]) -> String {
    let mut s = String::from("name: large\nnodes:\n  - {name: n1, ip: 192.168.0.1}\nendpoints:\n");
    for i in 0..n {
        let ip = if bad.contains(&i) {
            "not-an-ip".to_string()
        } else {
            format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256)
        };
        s.push_str(&format!(
            "  - {{name: ep-{i}, namespace: ns-{}, node: n1, ip: {ip}, labels: {{app: a{}}}}}\n",
            i % 5,
            i % 11
        ));
    }
    s.push_str("flows:\n  - {from: ep-0, to: ep-1, port: 80, expect: allow}\n");
    s
}

#[test]
fn every_endpoint_in_order() {
    let sc = parse_scenario(&cluster(10_000, &[])).unwrap();
    assert_eq!(sc.endpoints.len(), 10_000);
    for (i, ep) in sc.endpoints.iter().enumerate() {
        assert_eq!(ep.name, format!("ep-{i}"));
        assert_eq!(ep.labels, vec![("app".to_string(), format!("a{}", i % 11))]);
    }
    assert_eq!(sc.flows.len(), 1);
}

#[test]
fn diagnostics_in_file_order_from_both_halves() {
    let diags = parse_scenario(&cluster(10_000, &[3, 9_000, 9_500])).unwrap_err();
    let lines: Vec<u32> = diags.iter().map(|d| d.span.unwrap().line).collect();
    // endpoint i is on line 5 + i
    assert_eq!(lines, vec![8, 9_005, 9_505], "{diags:?}");
    assert!(diags.iter().all(|d| d.message.contains("not-an-ip")));
}
