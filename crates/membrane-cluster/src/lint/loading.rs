//! MEM001, MEM003, MEM012, MEM016, MEM019, MEM023: what loading the manifests already found
//! (the loader's and the engine's diagnostics, namespaces that were defaulted), and objects
//! defined more than once.

use super::context::Cx;
use super::{
    DUPLICATE, MANIFEST_WARNING, NAMESPACE_MISSING, Out, REJECTED, SUBJECT_NS_KEY, TOO_MANY_PORTS,
    rule,
};
use std::collections::BTreeMap;

/// MEM001, MEM003 (policies), MEM012, MEM016, MEM023: the loader's and the engine's
/// diagnostics, each under the rule it belongs to.
pub(super) fn engine_diagnostics(cx: &Cx<'_>, out: &mut Out) {
    for (file, d) in &cx.loaded.diagnostics {
        let too_many = d.message.contains("too many ports, the max is 40")
            || d.message.contains("too many types, the max is 40");
        let id = match d.code {
            "namespace-missing" => NAMESPACE_MISSING,
            "subject-namespace-any" | "subject-namespace-overwritten" => SUBJECT_NS_KEY,
            _ if d.is_error() && too_many => TOO_MANY_PORTS,
            _ if d.is_error() => REJECTED,
            _ => MANIFEST_WARNING,
        };
        let message = if id == TOO_MANY_PORTS {
            format!("{}: the agent rejects this policy", d.message)
        } else {
            d.message.clone()
        };
        let help = d
            .help
            .clone()
            .or_else(|| rule(id).map(|r| r.help.to_string()));
        out.push(id, *file, d.span, message, help);
        if id == MANIFEST_WARNING
            && let Some(last) = out.findings.last_mut()
        {
            last.severity = d.severity;
        }
    }
}

/// MEM003 for workloads, Services, Gateways and routes (policies come from the engine).
pub(super) fn defaulted_namespaces(cx: &Cx<'_>, out: &mut Out) {
    for (file, span, what) in &cx.loaded.defaulted_namespace {
        let (kind, name) = what.split_once(' ').unwrap_or((what.as_str(), ""));
        let at = cx.key_span(*file, *span, "metadata").unwrap_or(*span);
        out.push(
            NAMESPACE_MISSING,
            *file,
            Some(at),
            format!("{kind} `{name}` has no metadata.namespace: it lands in the namespace kubectl uses (usually `default`)"),
            Some("set metadata.namespace explicitly: policies, Services and routes only meet the pods of their own namespace".into()),
        );
    }
}

/// MEM019: the same object more than once.
pub(super) fn duplicates(cx: &Cx<'_>, out: &mut Out) {
    let mut first: BTreeMap<(&str, &str, &str), usize> = BTreeMap::new();
    for (i, o) in cx.objects.iter().enumerate() {
        let key = (o.kind.as_str(), o.namespace.as_str(), o.name.as_str());
        let Some(&j) = first.get(&key) else {
            first.insert(key, i);
            continue;
        };
        let f = &cx.objects[j];
        let shown = if o.namespace.is_empty() {
            o.name.clone()
        } else {
            format!("{}/{}", o.namespace, o.name)
        };
        out.push(
            DUPLICATE,
            o.file,
            Some(o.span),
            format!(
                "{} `{shown}` is already defined at {}:{}: applied together, each copy replaces the previous one, so only the last takes effect",
                o.kind,
                cx.file_name(f.file),
                f.span.line
            ),
            Some(rule(DUPLICATE).map_or(String::new(), |r| r.help.to_string())),
        );
    }
}
