//! Labels with sources, label sets, and the selectors that match them (`pkg/labels`).

use std::fmt;

pub const SOURCE_K8S: &str = "k8s";
pub const SOURCE_RESERVED: &str = "reserved";
pub const SOURCE_ANY: &str = "any";
pub const SOURCE_CIDR: &str = "cidr";
pub const SOURCE_FQDN: &str = "fqdn";
pub const SOURCE_CIDRGROUP: &str = "cidrgroup";

pub const KEY_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const KEY_SERVICE_ACCOUNT: &str = "io.cilium.k8s.policy.serviceaccount";
pub const KEY_CLUSTER: &str = "io.cilium.k8s.policy.cluster";
pub const PREFIX_NAMESPACE_LABELS: &str = "io.cilium.k8s.namespace.labels.";

const KNOWN_SOURCES: &[&str] = &[
    "k8s",
    "reserved",
    "any",
    "cidr",
    "fqdn",
    "container",
    "unspec",
    "cidrgroup",
    "node",
];

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label {
    pub source: String,
    pub key: String,
    pub value: String,
}

impl Label {
    pub fn new(source: &str, key: &str, value: &str) -> Self {
        Label {
            source: source.to_string(),
            key: key.to_string(),
            value: value.to_string(),
        }
    }

    pub fn k8s(key: &str, value: &str) -> Self {
        Label::new(SOURCE_K8S, key, value)
    }

    pub fn reserved(name: &str) -> Self {
        Label::new(SOURCE_RESERVED, name, "")
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}:{}", self.source, self.key)
        } else {
            write!(f, "{}:{}={}", self.source, self.key, self.value)
        }
    }
}

/// A sorted, duplicate-free set of labels: equal sets are equal identities.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelSet(Vec<Label>);

impl LabelSet {
    pub fn new(mut labels: Vec<Label>) -> Self {
        labels.sort();
        labels.dedup_by(|a, b| a.source == b.source && a.key == b.key);
        LabelSet(labels)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Label> {
        self.0.iter()
    }

    pub fn has_reserved(&self, name: &str) -> bool {
        self.0
            .iter()
            .any(|l| l.source == SOURCE_RESERVED && l.key == name)
    }

    pub fn get(&self, source: Option<&str>, key: &str) -> impl Iterator<Item = &Label> {
        self.0
            .iter()
            .filter(move |l| l.key == key && source.is_none_or(|s| s == l.source))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, l) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{l}")?;
        }
        Ok(())
    }
}

/// A selector key: a label key with an optional source (`None` means `any:`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SelectorKey {
    pub source: Option<String>,
    pub key: String,
}

impl SelectorKey {
    /// `k8s:app` → source k8s; `app` and `any:app` → any source.
    pub fn parse(text: &str) -> Self {
        if let Some((source, key)) = text.split_once(':') {
            if KNOWN_SOURCES.contains(&source) {
                let source = if source == SOURCE_ANY {
                    None
                } else {
                    Some(source.to_string())
                };
                return SelectorKey {
                    source,
                    key: key.to_string(),
                };
            }
        }
        SelectorKey {
            source: None,
            key: text.to_string(),
        }
    }

    pub fn k8s(key: &str) -> Self {
        SelectorKey {
            source: Some(SOURCE_K8S.to_string()),
            key: key.to_string(),
        }
    }
}

impl fmt::Display for SelectorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}",
            self.source.as_deref().unwrap_or(SOURCE_ANY),
            self.key
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Operator {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "In" => Some(Operator::In),
            "NotIn" => Some(Operator::NotIn),
            "Exists" => Some(Operator::Exists),
            "DoesNotExist" => Some(Operator::DoesNotExist),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Requirement {
    pub key: SelectorKey,
    pub op: Operator,
    pub values: Vec<String>,
}

impl Requirement {
    fn matches(&self, labels: &LabelSet) -> bool {
        let mut found = labels
            .get(self.key.source.as_deref(), &self.key.key)
            .peekable();
        match self.op {
            Operator::Exists => found.peek().is_some(),
            Operator::DoesNotExist => found.peek().is_none(),
            Operator::In => found.any(|l| self.values.contains(&l.value)),
            Operator::NotIn => !found.any(|l| self.values.contains(&l.value)),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.op {
            Operator::In if self.values.len() == 1 => write!(f, "{}={}", self.key, self.values[0]),
            Operator::In => write!(f, "{} in ({})", self.key, self.values.join(",")),
            Operator::NotIn => write!(f, "{} notin ({})", self.key, self.values.join(",")),
            Operator::Exists => write!(f, "{}", self.key),
            Operator::DoesNotExist => write!(f, "!{}", self.key),
        }
    }
}

/// A label selector: all requirements must hold. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

impl Selector {
    pub fn matches(&self, labels: &LabelSet) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    pub fn is_wildcard(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether some requirement names this key (with any source).
    pub fn mentions_key(&self, key: &str) -> bool {
        self.requirements.iter().any(|r| r.key.key == key)
    }

    pub fn mentions_key_prefix(&self, prefix: &str) -> bool {
        self.requirements
            .iter()
            .any(|r| r.key.key.starts_with(prefix))
    }

    pub fn uses_source(&self, source: &str) -> bool {
        self.requirements
            .iter()
            .any(|r| r.key.source.as_deref() == Some(source))
    }

    pub fn push(&mut self, key: SelectorKey, op: Operator, values: Vec<String>) {
        self.requirements.push(Requirement { key, op, values });
    }

    pub fn with(mut self, key: SelectorKey, op: Operator, values: Vec<String>) -> Self {
        self.push(key, op, values);
        self
    }

    /// A selector for one reserved label (`reserved:host`).
    pub fn reserved(name: &str) -> Self {
        Selector::default().with(
            SelectorKey {
                source: Some(SOURCE_RESERVED.into()),
                key: name.into(),
            },
            Operator::Exists,
            vec![],
        )
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("{}");
        }
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// Cilium's default label filter: labels that never become part of an identity.
pub fn is_identity_label(key: &str) -> bool {
    if key == KEY_NAMESPACE
        || key.starts_with(PREFIX_NAMESPACE_LABELS)
        || key.starts_with("app.kubernetes.io")
    {
        return true;
    }
    let dropped_prefixes = ["io.kubernetes", "kubernetes.io", "k8s.io", "annotation."];
    if dropped_prefixes.iter().any(|p| key.starts_with(p)) {
        return false;
    }
    if key.ends_with("beta.kubernetes.io") {
        return false;
    }
    !matches!(
        key,
        "pod-template-generation" | "pod-template-hash" | "controller-revision-hash" | "etcd_node"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(labels: &[(&str, &str, &str)]) -> LabelSet {
        LabelSet::new(labels.iter().map(|(s, k, v)| Label::new(s, k, v)).collect())
    }

    #[test]
    fn any_source_matches_every_source() {
        let labels = set(&[("k8s", "app", "x")]);
        let sel =
            Selector::default().with(SelectorKey::parse("app"), Operator::In, vec!["x".into()]);
        assert!(sel.matches(&labels));
        let sel = Selector::default().with(
            SelectorKey::parse("container:app"),
            Operator::In,
            vec!["x".into()],
        );
        assert!(!sel.matches(&labels));
    }

    #[test]
    fn not_in_matches_missing_keys() {
        let host = set(&[("reserved", "host", "")]);
        let sel = Selector::default().with(
            SelectorKey::parse(KEY_NAMESPACE),
            Operator::NotIn,
            vec!["x".into()],
        );
        assert!(
            sel.matches(&host),
            "semantics §9.2: NotIn admits identities without the key"
        );
    }

    #[test]
    fn label_filter() {
        assert!(!is_identity_label("pod-template-hash"));
        assert!(!is_identity_label("kubernetes.io/hostname"));
        assert!(is_identity_label("app.kubernetes.io/name"));
        assert!(is_identity_label(
            "io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name"
        ));
        assert!(is_identity_label("app"));
    }
}
