//! The fast YAML path must build exactly the tree (values, kinds, spans) of the reference
//! event parser, on every YAML file of the repository and on the policies embedded in
//! scenario files.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use membrane_cluster::scenario::parse_scenario;
use membrane_policy::yaml::{
    Embedding, parse_documents, parse_documents_fast, parse_documents_reference,
};
use std::path::{Path, PathBuf};

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if matches!(
            p.extension().and_then(|x| x.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(p);
        }
    }
}

/// Compares the two parsers on one text; `true` when the fast path took it.
fn same_tree(name: &str, text: &str, embedding: Embedding) -> bool {
    let reference = parse_documents_reference(text, embedding);
    let fast = parse_documents_fast(text, embedding);
    if let Some(fast) = &fast {
        match &reference {
            Ok(r) => {
                assert_eq!(r.len(), fast.len(), "{name}: document count");
                for (a, b) in r.iter().zip(fast) {
                    if a != b {
                        let (a, b) = (format!("{a:?}"), format!("{b:?}"));
                        let at = a
                            .bytes()
                            .zip(b.bytes())
                            .position(|(x, y)| x != y)
                            .unwrap_or(0);
                        let from = at.saturating_sub(300);
                        panic!(
                            "{name}: fast path tree differs\nreference: {}\nfast:      {}",
                            &a[from..(at + 200).min(a.len())],
                            &b[from..(at + 200).min(b.len())]
                        );
                    }
                }
            }
            Err(e) => panic!("{name}: fast path accepted a text the reference rejects: {e:?}"),
        }
    }
    // The public entry point gives the reference result either way.
    assert_eq!(
        format!("{:?}", parse_documents(text, embedding)),
        format!("{reference:?}"),
        "{name}"
    );
    if fast.is_none() && std::env::var_os("MEMBRANE_YAML_FAST_VERBOSE").is_some() {
        eprintln!("slow path: {name}");
    }
    fast.is_some()
}

fn check_files(files: &[PathBuf]) -> (usize, usize) {
    let (mut fast, mut total) = (0, 0);
    for f in files {
        let text = std::fs::read_to_string(f).unwrap();
        let name = f.display().to_string();
        total += 1;
        fast += usize::from(same_tree(&name, &text, Embedding::default()));
        if let Ok(sc) = parse_scenario(&text) {
            total += 1;
            fast += usize::from(same_tree(
                &format!("{name} (policies)"),
                &sc.policies,
                sc.policies_embedding,
            ));
        }
    }
    (fast, total)
}

#[test]
fn fast_path_matches_the_reference_on_every_repository_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    for dir in ["tests", "examples", "crates", "fuzz", "docs"] {
        yaml_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 200, "found {} files", files.len());
    let (fast, total) = check_files(&files);
    eprintln!("fast path took {fast} of {total} texts");
    // Most manifests are inside the subset; a regression here means a slow fallback.
    assert!(
        fast * 10 >= total * 7,
        "fast path took only {fast} of {total}"
    );
}

/// Extra files to compare (e.g. large generated clusters), from the environment.
#[test]
fn fast_path_matches_the_reference_on_extra_files() {
    let Ok(list) = std::env::var("MEMBRANE_YAML_FAST_EXTRA") else {
        return;
    };
    let files: Vec<PathBuf> = list.split(':').map(PathBuf::from).collect();
    let (fast, total) = check_files(&files);
    eprintln!("fast path took {fast} of {total} extra texts");
}

#[test]
fn fast_path_edge_cases() {
    let cases = [
        "a: 1\nb:\n  c: [x, 'y']\n",
        "---\na: 1\n---\n---\nb: 2\n",
        "a:\n- x\n- y\nb: 2\n",
        "a:\n  - x\n  - {k: v, l: [1, 2]}\nb:\n",
        "- name: x\n  ip: 1.2.3.4\n- name: y\n",
        "a: |\n  line one\n\n  line three\n\nb: |-\n  x\n  y\nc: 3\n",
        "a: 'it''s'  # comment\nb: \"q\\\"\\u00e9\"\n",
        "# only a comment\n",
        "{\"a\": 1, \"b\": [true, null, \"x\"], \"c\": {\"d\": -2.5}}\n",
        "{\n  \"a\": {\n    \"b\": [1,\n      2]\n  }\n}\n",
        "a: 1\nb: 2",
        "a:\n  b:\n    c: 1\n# trailing\n",
        "k: v # c\nl: http://x:80/y\n",
        "a: null\nb: ~\nc:\nd: ''\n",
        "a: &x 1\nb: *x\n",
        "a: b\n  c\n",
        "a: [1, 2\n",
        "a: 1\na: 2\n",
        "- - x\n",
        "key: >\n  folded\n",
        "- &a\n  x: 1\n  y: [2]\n- *a\n- &b v\n- *b\n",
        "a: &s hello\nb: *s\nc: &m {k: v}\nd: *m\n",
        "a: *missing\n",
        "---\na: &x 1\n---\nb: *x\n",
        "a: \"caf\u{e9} \u{2192} x\"\nb: \u{e9}t\u{e9}\nc: [\u{fc}, 'd\u{e9}']\n",
        "# \u{a7}1 comment\nk:\n  - \u{e9}: 1\n",
        "a:\n  b: 1\n # odd comment\n  c: 2\n",
        "a:   [ x ,  y ]   # c\nb:  {  k :  v }\n",
        "- ::/0\n- :x\n- -1\n- -x\n",
        "a: 'x':\n",
        "a: [x]: y\n",
        "a:\n   - x\n   - y\n",
        "- a\n-\n- b\n",
        "a: |\n    deeper\n  less\n",
        "a: |\n  x\n   # not a comment\n  y\nb: 1\n",
        "a: |\n  x\n # comment\nb: 1\n",
        "a: |-\n  x\n\n\n",
        "a: |\n  x",
        "a: b # c\n  d: e\n",
        "k: \"a\\x41\\u00e9\\U0001F600\\\\\"\n",
        "[1, 2, [3, {a: b}]]\n",
        "{a: 1,\n b: 2}\n",
        "k: {a: 1,\nb: 2}\n",
        "k:\n  {a: 1}\n",
        "k: v\n...\n",
        "%YAML 1.2\n---\nk: v\n",
        "? k\n: v\n",
        "k: !!str 1\n",
        "a: 1\n b: 2\n",
        "a:\n- b\n -c\n",
        "'k': v\n\"l\": w\n",
        "k: 'multi\n  line'\n",
        "k: v\n---\n",
        "--- # doc\nk: v\n",
        "--- k\n",
        "k: -\n",
        "k: v#x\n",
        "k: 'v'#x\n",
        "{\"a\":1,\"b\":[]}",
        "[]\n",
        "- {a: b}\n- [c]\n- 'd'\n- |\n  e\n- f\n",
        "hello\n",
        "'quoted doc'\n",
        "- a\n- b\n",
        "a: {}\nb: []\nc: ''\nd: \"\"\n",
        "1: x\ntrue: y\nnull: z\n",
        "a: |+\n  keep\n\n",
        "a: >-\n  x\n",
        "[a, b]: c\n",
        "a: b\n\n\n",
        "\n\na: 1",
        "a:\n  # only comment\nb: 1\n",
        "a:\n\n  b: 1\n",
        "a:    \n  b: 1\n",
        "a: \"x\"   \nb: 'y'   # c\n",
        "- a\n  # c\n- b\n",
        "a: [\n  1,\n  2\n]\n",
        "a: [\n    1,\n    2\n  ]\n",
        "k: \"esc\\ttab\"\n",
        "a:\n  - b: 1\n    c: 2\n  - d\nx: y\n",
        "a:\n- b: 1\n  c:\n  - 2\n- d\n",
        "a: - b\n",
        "a: b\n c: d\n",
        "a: [b, c]d\n",
        "a: {b: c}\n  d: e\n",
        "- |\n  x\n-\n",
        "a: 'x'\n  'y': z\n",
        "---\n- a\n---\n- b\n",
        "a: 1 # c\n# d\n  # e\nb: 2\n",
        "a:\n  b: |\n    x\n  c: 1\n",
        "x: &a [1, 2]\ny: *a\nz: &b\n  k: v\nw: *b\n",
        "- &a x\n- *a\n",
        "a: *a\n",
        "{a: [1, {b: 2}], c: 'd'}",
        "a: 0x1F\nb: 1e3\nc: .5\nd: +1\ne: -.inf\nf: .nan\n",
        "a: http://x.y/z?q=1#frag\nb: x#y\n",
    ];
    for (i, text) in cases.iter().enumerate() {
        same_tree(&format!("case {i}"), text, Embedding::default());
        same_tree(
            &format!("case {i} embedded"),
            text,
            Embedding {
                line_offset: 7,
                col_offset: 4,
                byte_offset: 90,
            },
        );
    }
}

/// Divergences found by the `yaml_fast_path` fuzz target (fuzz/README.md), minimized.
#[test]
fn fuzz_regressions() {
    let long_key = "k".repeat(1100);
    let cases = [
        // NUL: saphyr stops there ("found unprintable character"); the fast path read on.
        "spe\0c: x\n".to_string(),
        "a: b\0\n".to_string(),
        "a: 'b\0'\n".to_string(),
        "a: 1 # \0\n".to_string(),
        // A block key over 1024 characters is no longer a simple key for saphyr.
        format!("{long_key}: v\n"),
        format!("a: 1\n{long_key}: v\n"),
        format!("- '{long_key}': v\n"),
        format!("{{{long_key}: v}}\n"),
        format!("{}: v\n", "k".repeat(1024)),
        format!("{}: v\n", "k".repeat(1025)),
        format!("a:\n  {}: v\n", "\u{e9}".repeat(600)),
        // A root block scalar at column 0 ends at a document marker.
        "|-\n---  i#V ser(i".to_string(),
        "|\nx\n---\ny\n".to_string(),
        "|\nx\n...\n".to_string(),
        // Two anchors on one node, the second on the next line.
        "k:\n  &m\n  &n x\n".to_string(),
        "- &m\n  &n\n  a: 1\n".to_string(),
        "k: &m\n  *n\n".to_string(),
        // An alias inside the node of a redefined anchor of the same name.
        "a: &x 1\nb: &x\n  c: *x\n".to_string(),
        "- &a x\n- &a [*a]\n".to_string(),
        "- &a x\n- &a\n  - *a\n".to_string(),
        // An anchored block scalar (its span runs from the anchor to the end of the text).
        "a: &x |\n  b\n".to_string(),
        "a: &x\n  |\n  b\n".to_string(),
        "- &x |-\n  b\n  c\n- *x\n".to_string(),
        // The same anchor inside its own node: aliases name the inner one.
        "a: &x\n  b: &x 0\nc: *x\n".to_string(),
        "- &x [1, 2]\n- &x\n  - &x 3\n- *x\n".to_string(),
        // `-` then a flow indicator after a space inside a flow plain scalar.
        "{a: b -}\n".to_string(),
        "[a -, b]\n".to_string(),
        "[a  -]\n".to_string(),
        "[a -b, c - d]\n".to_string(),
    ];
    for (i, text) in cases.iter().enumerate() {
        same_tree(&format!("fuzz case {i}"), text, Embedding::default());
        same_tree(
            &format!("fuzz case {i} embedded"),
            text,
            Embedding {
                line_offset: 7,
                col_offset: 4,
                byte_offset: 90,
            },
        );
    }
}

#[test]
fn debug_first_bail() {
    let Ok(path) = std::env::var("MEMBRANE_YAML_FAST_DEBUG") else {
        return;
    };
    let text = std::fs::read_to_string(&path).unwrap();
    let text = match parse_scenario(&text) {
        Ok(sc) if std::env::var_os("POL").is_some() => sc.policies,
        _ => text,
    };
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    for n in 1..=lines.len() {
        let prefix: String = lines[..n].concat();
        if parse_documents_reference(&prefix, Embedding::default()).is_ok()
            && parse_documents_fast(&prefix, Embedding::default()).is_none()
        {
            eprintln!("first bail at line {n}: {:?}", lines[n - 1]);
            return;
        }
    }
}

/// Long sequences are read by two threads; the tree must be the same.
#[test]
fn fast_path_long_sequences_match_the_reference() {
    let item = |i: usize| {
        format!(
            "  - {{name: ep-{i:05}, ip: 10.0.{}.{}, labels: {{app: a{}, tier: t}}, ports: [{{port: 80}}]}}\n",
            i / 250,
            i % 250,
            i % 7
        )
    };
    let mut indented = String::from("# header\nname: big\nendpoints:\n");
    for i in 0..9000 {
        indented.push_str(&item(i));
        if i % 1000 == 0 {
            indented.push_str("# a comment between items\n\n");
        }
        if i % 1500 == 0 {
            indented.push_str(&format!(
                "  - name: block-{i}\n    labels:\n      k: v\n    ports:\n    - port: 1\n"
            ));
        }
    }
    indented.push_str("flows:\n  - {from: a, to: b}\n  - {from: c, to: d}\nnotes: |\n  x\n");
    assert!(indented.len() > 600 * 1024, "{}", indented.len());
    let indentless = indented.replace("\n  - ", "\n- ").replace("\n    ", "\n  ");
    // An alias in the second half to an anchor in the first: read again by one thread.
    let aliased = indented.replacen("  - {name: ep-00001,", "  - &first {name: ep-00001,", 1)
        + "more:\n  - *first\n";
    let mut late_alias = indented.clone();
    late_alias = late_alias.replacen(
        "  - {name: ep-08990,",
        "  - *early\n  - {name: ep-08990,",
        1,
    );
    late_alias = late_alias.replacen("name: big", "name: &early big", 1);
    for (name, text) in [
        ("indented", &indented),
        ("indentless", &indentless),
        ("aliased", &aliased),
        ("late alias", &late_alias),
    ] {
        assert!(
            same_tree(name, text, Embedding::default()),
            "{name}: slow path"
        );
    }
}
