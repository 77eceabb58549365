#!/usr/bin/env python3
"""Fills fuzz/corpus/<target>/ from the conformance suite (tests/conformance/*.yaml).

- scenario:    every scenario file as it is;
- policy_yaml: the `policies: |` block of each scenario, de-indented (plain policy YAML);
- go_regex:    the HTTP `method`/`path`/`host` values of those policies, plus fuzz/seeds/go_regex;
- yaml_fast_path: every YAML/JSON file under tests/, examples/ and fuzz/seeds/ as it is, and the
                  de-indented `policies: |` blocks.

Also copies the curated seeds of fuzz/seeds/<target>/. Needs only Python 3 (no PyYAML).
Usage (from the repository root or anywhere): python3 fuzz/make_corpus.py
"""
import hashlib
import pathlib
import re
import shutil

FUZZ = pathlib.Path(__file__).resolve().parent
SUITE = FUZZ.parent / "tests" / "conformance"
CORPUS = FUZZ / "corpus"


def policies_block(text):
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.rstrip() == "policies: |":
            out = []
            for l in lines[i + 1:]:
                if l.strip() and not l.startswith(" "):
                    break
                out.append(l[2:] if l.startswith("  ") else l.lstrip(" "))
            return "".join(out)
    return None


def put(target, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


def main():
    regex_field = re.compile(r"^\s*-?\s*(?:method|path|host)\s*:\s*(.+?)\s*$")
    for f in sorted(SUITE.glob("*.yaml")):
        text = f.read_text()
        put("scenario", text)
        block = policies_block(text)
        if block:
            put("policy_yaml", block)
            for line in block.splitlines():
                m = regex_field.match(line)
                if m:
                    put("go_regex", m.group(1).strip("'\""))
    root = FUZZ.parent
    for top in ("tests", "examples", "fuzz/seeds"):
        for f in sorted((root / top).rglob("*")):
            if f.is_file() and f.suffix in (".yaml", ".yml", ".json"):
                text = f.read_bytes()
                put("yaml_fast_path", text)
                block = policies_block(text.decode("utf-8", "replace"))
                if block:
                    put("yaml_fast_path", block)
    for target in ("scenario", "policy_yaml", "go_regex", "yaml_fast_path"):
        seeds = FUZZ / "seeds" / target
        if seeds.is_dir():
            for s in sorted(seeds.iterdir()):
                put(target, s.read_bytes())
    for target in sorted(p.name for p in CORPUS.iterdir()):
        print(f"corpus/{target}: {len(list((CORPUS / target).iterdir()))} files")


if __name__ == "__main__":
    main()
