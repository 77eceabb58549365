//! The facade: manifests in, enforceable rules and diagnostics out.

use crate::api::{Resource, decode_resources};
use crate::decode::Decoder;
use crate::diag::Diagnostic;
use crate::labels::{Label, LabelSet};
use crate::model::{FileId, Rule};
use crate::options::Options;
use crate::translate::{self, CidrGroupInfo, Context, Secrets, Translated};
use crate::yaml::{Embedding, Node, parse_documents};

/// Parses every document of a YAML text into resources. A syntax error ends the file;
/// schema errors are collected and the offending object is still returned where possible.
pub fn parse_resources(text: &str, embedding: Embedding) -> (Vec<Resource>, Vec<Diagnostic>) {
    let docs = match parse_documents(text, embedding) {
        Ok(d) => d,
        Err(e) => {
            let d = Diagnostic::error("yaml", format!("invalid YAML: {}", e.message), Some(e.span))
                .with_help("check the indentation and quoting around this position");
            return (vec![], vec![d]);
        }
    };
    decode_documents(&docs)
}

/// Decodes already parsed YAML documents into resources (see [`parse_resources`]).
pub fn decode_documents(docs: &[Node]) -> (Vec<Resource>, Vec<Diagnostic>) {
    let mut out = Vec::new();
    let mut diagnostics = Vec::new();
    for doc in docs {
        let mut dec = Decoder::default();
        let mut resources = Vec::new();
        decode_resources(&mut dec, doc, &mut resources);
        // An object with schema errors is still validated (so every mistake is reported at
        // once) but never enforced: the API server would refuse it.
        if dec.has_errors() {
            for r in &mut resources {
                match r {
                    Resource::Cilium(p) => p.schema_errors = true,
                    Resource::Kube(p) => p.schema_errors = true,
                    _ => {}
                }
            }
        }
        out.extend(resources);
        diagnostics.extend(dec.diagnostics);
    }
    (out, diagnostics)
}

/// All policies of a cluster, translated to rules.
#[derive(Debug, Default)]
pub struct PolicySet {
    pub policies: Vec<Translated>,
    pub cidr_groups: Vec<CidrGroupInfo>,
    /// Errors in the CiliumCIDRGroups themselves (a group with one is not created).
    pub group_diagnostics: Vec<(FileId, Diagnostic)>,
}

impl PolicySet {
    /// Builds the set from resources (a slice, or any cloneable iterator of references, so a
    /// caller can leave some out without copying them).
    pub fn build<'r, I>(resources: I, options: &Options, secrets: &Secrets) -> PolicySet
    where
        I: IntoIterator<Item = &'r (FileId, Resource)>,
        I::IntoIter: Clone,
    {
        let resources = resources.into_iter();
        let mut cidr_groups = Vec::new();
        let mut group_diags = Vec::new();
        for (file, r) in resources.clone() {
            if let Resource::CidrGroup(g) = r {
                let mut cidrs = Vec::new();
                let mut invalid = false;
                for c in &g.external_cidrs {
                    match translate::parse_cidr(&c.value, false) {
                        Ok(n) => cidrs.push(n),
                        Err(e) => {
                            invalid = true;
                            group_diags.push((
                                *file,
                                Diagnostic::error(
                                    "invalid-cidr-group",
                                    format!(
                                        "CiliumCIDRGroup externalCIDRs: {e}; the API server rejects the whole group, so it does not exist"
                                    ),
                                    Some(c.span),
                                )
                                .with_help("write the entry as an address/prefix length, e.g. 203.0.113.0/24"),
                            ));
                        }
                    }
                }
                // The CRD's validation refuses the object: no entry of it is ever used, and
                // policies naming the group see an undefined group.
                if invalid {
                    continue;
                }
                let labels = LabelSet::new(
                    g.meta
                        .labels
                        .iter()
                        .map(|(k, v)| Label::k8s(&k.value, &v.value))
                        .collect(),
                );
                let name = g
                    .meta
                    .name
                    .as_ref()
                    .map(|n| n.value.clone())
                    .unwrap_or_default();
                cidr_groups.push(CidrGroupInfo {
                    name,
                    labels,
                    cidrs,
                });
            }
        }
        let mut policies = Vec::new();
        for (file, r) in resources {
            let cx = Context {
                options,
                file: *file,
                secrets,
                cidr_groups: &cidr_groups,
            };
            match r {
                Resource::Cilium(p) => policies.push(translate::translate_cilium(p, &cx)),
                Resource::Kube(p) => policies.push(translate::translate_kube(p, &cx)),
                _ => {}
            }
        }
        reject_conflicting_parsers(&mut policies);
        PolicySet {
            policies,
            cidr_groups,
            group_diagnostics: group_diags,
        }
    }

    /// The rules the agent would enforce (those of valid policies).
    pub fn rules(&self) -> Vec<Rule> {
        self.policies
            .iter()
            .flat_map(|p| p.rules.iter().cloned())
            .collect()
    }

    pub fn diagnostics(&self) -> impl Iterator<Item = (FileId, &Diagnostic)> {
        self.group_diagnostics.iter().map(|(f, d)| (*f, d)).chain(
            self.policies
                .iter()
                .flat_map(|p| p.diagnostics.iter().map(move |d| (p.origin.file, d))),
        )
    }
}

/// §2.15: two allows for the same subject, peers and port with different L7 parsers make
/// Cilium's policy computation fail (`cannot merge conflicting L7 parsers`). This checks the
/// structurally identical case statically; the later policy is reported and not enforced.
fn reject_conflicting_parsers(policies: &mut [Translated]) {
    use crate::model::{Entry, PortValue};
    struct Seen {
        subject: String,
        peers: String,
        direction: crate::model::Direction,
        protocol: crate::model::Protocol,
        range: (u16, u16),
        parser: String,
    }
    let mut seen: Vec<Seen> = Vec::new();
    for p in policies.iter_mut() {
        let mut conflicts = Vec::new();
        for rule in &p.rules {
            let subject = format!("{:?}", rule.subject);
            for entry in rule.entries.iter().filter(|e: &&Entry| !e.deny) {
                let peers = format!("{:?}", entry.peers);
                for pr in entry.ports.iter().flatten() {
                    let Some(l7) = &pr.l7 else { continue };
                    let parser = l7.parser().to_string();
                    for spec in &pr.ports {
                        let PortValue::Range(lo, hi) = spec.port else {
                            continue;
                        };
                        let clash = seen.iter().find(|s| {
                            s.subject == subject
                                && s.peers == peers
                                && s.direction == entry.direction
                                && s.protocol == spec.protocol
                                && s.range.0 <= hi
                                && lo <= s.range.1
                                && s.parser != parser
                        });
                        if let Some(other) = clash {
                            conflicts.push(
                                Diagnostic::error(
                                    "invalid-policy",
                                    format!("cannot merge conflicting L7 parsers ({} and {parser}) on port {lo}/{}", other.parser, spec.protocol),
                                    Some(l7.span),
                                )
                                .with_help("one port and peer can only have one kind of L7 rules: split the ports or merge the rules"),
                            );
                        }
                        seen.push(Seen {
                            subject: subject.clone(),
                            peers: peers.clone(),
                            direction: entry.direction,
                            protocol: spec.protocol,
                            range: (lo, hi),
                            parser: parser.clone(),
                        });
                    }
                }
            }
        }
        if !conflicts.is_empty() {
            p.diagnostics.extend(conflicts);
            p.valid = false;
            p.rejected = std::mem::take(&mut p.rules);
        }
    }
}
