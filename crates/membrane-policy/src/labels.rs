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
        if let Some((source, key)) = text.split_once(':')
            && KNOWN_SOURCES.contains(&source)
        {
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

/// One entry of Cilium's default label filter (`pkg/labelsfilter/filter.go`
/// `defaultLabelPrefixCfg`). Every entry is a Go regexp that counts only when its leftmost
/// match starts at the beginning of the key; the match end is the entry's weight.
#[derive(Clone, Copy)]
enum FilterPattern {
    /// A quoted literal (`io\.kubernetes`): the key starts with it.
    Prefix(&'static str),
    /// `.*<literal>`: the literal occurs in the key's first line; the greedy `.*` ends the
    /// match after its last occurrence there.
    AnyThen(&'static str),
    /// `<literal>.*`: the key starts with the literal; the match runs to the end of the line.
    PrefixThenAny(&'static str),
}

impl FilterPattern {
    /// Where the match ends, if the pattern matches at the start of the key.
    fn match_end(self, key: &str) -> Option<usize> {
        // Go's `.` does not match a newline.
        let first_line = key.split('\n').next().unwrap_or_default();
        match self {
            FilterPattern::Prefix(p) => key.starts_with(p).then_some(p.len()),
            FilterPattern::AnyThen(p) => first_line.rfind(p).map(|i| i + p.len()),
            FilterPattern::PrefixThenAny(p) => key.starts_with(p).then_some(first_line.len()),
        }
    }
}

/// Entries that keep a label (Cilium 1.17's default includes for `k8s:` labels).
const FILTER_INCLUDES: &[FilterPattern] = &[
    FilterPattern::Prefix(KEY_NAMESPACE),
    FilterPattern::Prefix("io.cilium.k8s.namespace.labels"),
    FilterPattern::Prefix("app.kubernetes.io"),
];

/// Entries that drop a label (`!io\.kubernetes`, `!.*beta\.kubernetes\.io`, `!annotation.*`, …).
const FILTER_IGNORES: &[FilterPattern] = &[
    FilterPattern::Prefix("io.kubernetes"),
    FilterPattern::Prefix("kubernetes.io"),
    FilterPattern::AnyThen("beta.kubernetes.io"),
    FilterPattern::Prefix("k8s.io"),
    FilterPattern::Prefix("pod-template-generation"),
    FilterPattern::Prefix("pod-template-hash"),
    FilterPattern::Prefix("controller-revision-hash"),
    FilterPattern::PrefixThenAny("annotation"),
    FilterPattern::Prefix("etcd_node"),
];

/// Cilium's default label filter: whether a pod label key becomes part of an identity.
///
/// As in `filterLabels`: a key no ignore entry matches is kept (the default list has no
/// user-given include, so it is not a whitelist); otherwise it is kept only when the longest
/// matching include ends after the shortest matching ignore.
pub fn is_identity_label(key: &str) -> bool {
    let Some(ignored) = FILTER_IGNORES.iter().filter_map(|p| p.match_end(key)).min() else {
        return true;
    };
    let included = FILTER_INCLUDES
        .iter()
        .filter_map(|p| p.match_end(key))
        .max()
        .unwrap_or(0);
    included > ignored
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
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

    fn sel(reqs: &[(&str, Operator, &[&str])]) -> Selector {
        let mut s = Selector::default();
        for (k, op, vals) in reqs {
            s.push(
                SelectorKey::parse(k),
                *op,
                vals.iter().map(|v| (*v).to_string()).collect(),
            );
        }
        s
    }

    fn pod() -> LabelSet {
        set(&[
            ("k8s", "app", "web"),
            ("k8s", "tier", "front"),
            ("k8s", KEY_NAMESPACE, "ns1"),
        ])
    }

    // semantics §1.9: `k8s:app` names the k8s source, `app` and `any:app` any source.
    #[test]
    fn selector_key_sources() {
        let k = SelectorKey::parse("k8s:app");
        assert_eq!(k.source.as_deref(), Some("k8s"));
        assert_eq!(k.key, "app");
        for any in ["app", "any:app"] {
            let k = SelectorKey::parse(any);
            assert_eq!(k.source, None, "{any}");
            assert_eq!(k.key, "app", "{any}");
        }
        let k = SelectorKey::parse("reserved:host");
        assert_eq!(k.source.as_deref(), Some("reserved"));
        assert_eq!(k.key, "host");
        for src in ["cidr", "fqdn", "container", "unspec", "cidrgroup", "node"] {
            let k = SelectorKey::parse(&format!("{src}:x"));
            assert_eq!(k.source.as_deref(), Some(src));
            assert_eq!(k.key, "x");
        }
        // Only the first colon separates the source.
        let k = SelectorKey::parse("cidr:10.0.0.0/8");
        assert_eq!(k.key, "10.0.0.0/8");
        let k = SelectorKey::parse("k8s:io.cilium.k8s.namespace.labels.team");
        assert_eq!(k.source.as_deref(), Some("k8s"));
        assert_eq!(k.key, "io.cilium.k8s.namespace.labels.team");
        assert_eq!(SelectorKey::k8s("app"), SelectorKey::parse("k8s:app"));
    }

    #[test]
    fn selector_key_display_names_the_source() {
        assert_eq!(SelectorKey::parse("app").to_string(), "any:app");
        assert_eq!(SelectorKey::parse("any:app").to_string(), "any:app");
        assert_eq!(SelectorKey::parse("k8s:app").to_string(), "k8s:app");
        assert_eq!(
            SelectorKey::parse("reserved:world").to_string(),
            "reserved:world"
        );
    }

    // semantics §1.9: `k8s:app` matches only k8s-sourced labels.
    #[test]
    fn sourced_key_matches_only_that_source() {
        let labels = set(&[("container", "app", "x")]);
        assert!(!sel(&[("k8s:app", Operator::In, &["x"])]).matches(&labels));
        assert!(sel(&[("container:app", Operator::In, &["x"])]).matches(&labels));
        assert!(sel(&[("any:app", Operator::In, &["x"])]).matches(&labels));
        assert!(sel(&[("app", Operator::Exists, &[])]).matches(&labels));
        assert!(!sel(&[("k8s:app", Operator::Exists, &[])]).matches(&labels));
    }

    #[test]
    fn label_display_and_constructors() {
        assert_eq!(Label::k8s("app", "web").to_string(), "k8s:app=web");
        assert_eq!(Label::reserved("host").to_string(), "reserved:host");
        assert_eq!(Label::reserved("host").value, "");
        assert_eq!(
            Label::new("cidr", "10.0.0.0/8", "").to_string(),
            "cidr:10.0.0.0/8"
        );
        assert_eq!(Label::k8s("app", "web"), Label::new("k8s", "app", "web"));
    }

    #[test]
    fn label_set_is_sorted_and_order_free() {
        let a = set(&[("reserved", "host", ""), ("k8s", "app", "web")]);
        let b = set(&[("k8s", "app", "web"), ("reserved", "host", "")]);
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "k8s:app=web,reserved:host");
        assert_eq!(LabelSet::default().to_string(), "");
        assert!(LabelSet::default().is_empty());
        assert!(!a.is_empty());
        // Duplicates (same source and key) collapse.
        let d = set(&[("k8s", "app", "web"), ("k8s", "app", "web")]);
        assert_eq!(d.iter().count(), 1);
    }

    #[test]
    fn label_set_lookups() {
        let labels = set(&[
            ("k8s", "app", "web"),
            ("container", "app", "c"),
            ("reserved", "host", ""),
        ]);
        assert!(labels.has_reserved("host"));
        assert!(!labels.has_reserved("world"));
        assert!(!set(&[("k8s", "host", "")]).has_reserved("host"));
        assert_eq!(labels.get(None, "app").count(), 2);
        let k8s: Vec<&Label> = labels.get(Some("k8s"), "app").collect();
        assert_eq!(k8s, vec![&Label::k8s("app", "web")]);
        assert_eq!(labels.get(Some("reserved"), "app").count(), 0);
        assert_eq!(labels.get(None, "missing").count(), 0);
    }

    // semantics §1.9: the empty selector `{}` matches every identity, reserved ones included.
    #[test]
    fn empty_selector_selects_everything() {
        let s = Selector::default();
        assert!(s.is_wildcard());
        assert!(s.matches(&pod()));
        assert!(s.matches(&set(&[("reserved", "world", "")])));
        assert!(s.matches(&set(&[("reserved", "host", "")])));
        assert!(s.matches(&LabelSet::default()));
        assert!(!sel(&[("app", Operator::Exists, &[])]).is_wildcard());
    }

    #[test]
    fn match_labels_need_equal_values() {
        // matchLabels {app: web} is `In [web]`.
        assert!(sel(&[("app", Operator::In, &["web"])]).matches(&pod()));
        assert!(!sel(&[("app", Operator::In, &["Web"])]).matches(&pod()));
        assert!(!sel(&[("app", Operator::In, &["we"])]).matches(&pod()));
        assert!(!sel(&[("app", Operator::In, &[""])]).matches(&pod()));
        // A missing key never satisfies In.
        assert!(!sel(&[("role", Operator::In, &["web"])]).matches(&pod()));
    }

    // semantics §1.9: reserved labels have an empty value (`"reserved:host": ""`).
    #[test]
    fn reserved_labels_match_with_empty_value() {
        let host = set(&[("reserved", "host", "")]);
        assert!(sel(&[("reserved:host", Operator::In, &[""])]).matches(&host));
        assert!(Selector::reserved("host").matches(&host));
        assert!(!Selector::reserved("world").matches(&host));
        // A k8s label of the same key is not the reserved identity.
        assert!(!Selector::reserved("host").matches(&set(&[("k8s", "host", "")])));
        assert!(!sel(&[("reserved:host", Operator::In, &[""])]).matches(&pod()));
    }

    #[test]
    fn requirements_are_anded() {
        let both = sel(&[
            ("app", Operator::In, &["web"]),
            ("tier", Operator::In, &["front"]),
        ]);
        assert!(both.matches(&pod()));
        let one_wrong = sel(&[
            ("app", Operator::In, &["web"]),
            ("tier", Operator::In, &["back"]),
        ]);
        assert!(!one_wrong.matches(&pod()));
    }

    #[test]
    fn match_expression_operators() {
        let p = pod();
        assert!(sel(&[("app", Operator::In, &["db", "web"])]).matches(&p));
        assert!(!sel(&[("app", Operator::In, &["db", "cache"])]).matches(&p));
        assert!(sel(&[("app", Operator::NotIn, &["db", "cache"])]).matches(&p));
        assert!(!sel(&[("app", Operator::NotIn, &["db", "web"])]).matches(&p));
        assert!(sel(&[("app", Operator::Exists, &[])]).matches(&p));
        assert!(!sel(&[("role", Operator::Exists, &[])]).matches(&p));
        assert!(sel(&[("role", Operator::DoesNotExist, &[])]).matches(&p));
        assert!(!sel(&[("app", Operator::DoesNotExist, &[])]).matches(&p));
        // An empty-valued label exists.
        let flag = set(&[("k8s", "canary", "")]);
        assert!(sel(&[("canary", Operator::Exists, &[])]).matches(&flag));
        assert!(!sel(&[("canary", Operator::DoesNotExist, &[])]).matches(&flag));
    }

    // semantics §9.2: a NotIn on the namespace key admits identities without the key
    // (world, host, remote-node); In does not.
    #[test]
    fn namespace_not_in_admits_reserved_identities_in_does_not() {
        let not_in = sel(&[(KEY_NAMESPACE, Operator::NotIn, &["x"])]);
        let is_in = sel(&[(KEY_NAMESPACE, Operator::In, &["ns1"])]);
        for reserved in ["world", "host", "remote-node"] {
            let id = set(&[("reserved", reserved, "")]);
            assert!(not_in.matches(&id), "{reserved}");
            assert!(!is_in.matches(&id), "{reserved}");
        }
        assert!(is_in.matches(&pod()));
        assert!(not_in.matches(&pod()));
        assert!(!sel(&[(KEY_NAMESPACE, Operator::NotIn, &["ns1"])]).matches(&pod()));
        let k8s_ns = Selector::default().with(
            SelectorKey::k8s(KEY_NAMESPACE),
            Operator::In,
            vec!["ns1".into()],
        );
        assert!(k8s_ns.matches(&pod()));
        assert!(!k8s_ns.matches(&set(&[("k8s", KEY_NAMESPACE, "ns2")])));
    }

    #[test]
    fn operator_names_are_case_sensitive() {
        assert_eq!(Operator::parse("In"), Some(Operator::In));
        assert_eq!(Operator::parse("NotIn"), Some(Operator::NotIn));
        assert_eq!(Operator::parse("Exists"), Some(Operator::Exists));
        assert_eq!(
            Operator::parse("DoesNotExist"),
            Some(Operator::DoesNotExist)
        );
        // semantics §7.1 vector 22: anything else is not an operator.
        assert_eq!(Operator::parse("in"), None);
        assert_eq!(Operator::parse("asdfasdfasdf"), None);
        assert_eq!(Operator::parse(""), None);
    }

    #[test]
    fn selector_introspection() {
        let s = sel(&[
            (
                "k8s:io.cilium.k8s.namespace.labels.team",
                Operator::In,
                &["a"],
            ),
            ("reserved:host", Operator::Exists, &[]),
            ("app", Operator::Exists, &[]),
        ]);
        assert!(s.mentions_key("app"));
        assert!(s.mentions_key("host"));
        assert!(!s.mentions_key("ap"));
        assert!(s.mentions_key_prefix(PREFIX_NAMESPACE_LABELS));
        assert!(!s.mentions_key_prefix("io.kubernetes"));
        assert!(s.uses_source("reserved"));
        assert!(s.uses_source("k8s"));
        assert!(!s.uses_source("any"));
        assert!(!s.uses_source("container"));
    }

    #[test]
    fn selector_display() {
        assert_eq!(Selector::default().to_string(), "{}");
        assert_eq!(
            sel(&[("k8s:app", Operator::In, &["web"])]).to_string(),
            "k8s:app=web"
        );
        assert_eq!(
            sel(&[("app", Operator::In, &["a", "b"])]).to_string(),
            "any:app in (a,b)"
        );
        assert_eq!(
            sel(&[("app", Operator::NotIn, &["a"])]).to_string(),
            "any:app notin (a)"
        );
        assert_eq!(
            sel(&[("app", Operator::Exists, &[])]).to_string(),
            "any:app"
        );
        assert_eq!(
            sel(&[("app", Operator::DoesNotExist, &[])]).to_string(),
            "!any:app"
        );
        assert_eq!(Selector::reserved("host").to_string(), "reserved:host");
        assert_eq!(
            sel(&[
                ("k8s:app", Operator::In, &["web"]),
                ("tier", Operator::Exists, &[]),
            ])
            .to_string(),
            "k8s:app=web, any:tier"
        );
    }

    // semantics §4: what the default label filter drops and keeps.
    #[test]
    fn identity_label_filter_drops_cilium_defaults() {
        for dropped in [
            "pod-template-hash",
            "pod-template-generation",
            "controller-revision-hash",
            "etcd_node",
            "io.kubernetes.container.name",
            "io.kubernetes.pod.name",
            "kubernetes.io/hostname",
            "kubernetes.io/metadata.name",
            "k8s.io/some-label",
            "annotation.kubectl.kubernetes.io/last-applied",
        ] {
            assert!(!is_identity_label(dropped), "{dropped} should be dropped");
        }
        for kept in [
            "app",
            "tier",
            "k8s-app",
            "version",
            KEY_NAMESPACE,
            KEY_SERVICE_ACCOUNT,
            KEY_CLUSTER,
            "io.cilium.k8s.namespace.labels.team",
            "app.kubernetes.io/name",
            "app.kubernetes.io/part-of",
            // Cilium's ignore patterns are anchored at the start of the key.
            "topology.kubernetes.io/zone",
            "example.com/pod-template-hash",
        ] {
            assert!(is_identity_label(kept), "{kept} should be kept");
        }
    }

    // semantics §7.7 vector 92: a selector on pod-template-hash never matches, because the
    // label never reaches an identity.
    #[test]
    fn selector_on_filtered_label_never_matches() {
        let raw = [
            ("app", "web"),
            ("pod-template-hash", "5d8f7c9b4"),
            ("controller-revision-hash", "abc"),
        ];
        let identity = LabelSet::new(
            raw.iter()
                .filter(|(k, _)| is_identity_label(k))
                .map(|(k, v)| Label::k8s(k, v))
                .collect(),
        );
        assert_eq!(identity.to_string(), "k8s:app=web");
        assert!(!sel(&[("pod-template-hash", Operator::In, &["5d8f7c9b4"])]).matches(&identity));
        assert!(!sel(&[("pod-template-hash", Operator::Exists, &[])]).matches(&identity));
        assert!(!sel(&[("controller-revision-hash", Operator::Exists, &[])]).matches(&identity));
    }

    // semantics §4: `*beta.kubernetes.io` is dropped. Cilium's pattern is the regex
    // `!.*beta\.kubernetes\.io` matched from the start of the key, so every key containing
    // `beta.kubernetes.io` is dropped (e.g. `beta.kubernetes.io/arch`,
    // `failure-domain.beta.kubernetes.io/zone`).
    #[test]
    fn beta_kubernetes_io_labels_are_dropped() {
        assert!(!is_identity_label("beta.kubernetes.io/arch"));
        assert!(!is_identity_label("failure-domain.beta.kubernetes.io/zone"));
    }

    // Cilium's default filter (pkg/labelsfilter/filter.go) compiles every entry as a regex and
    // counts it as matching when the match starts at the beginning of the key, so each entry
    // is a prefix: `!pod-template-hash` also drops `pod-template-hash-x`, `!annotation.*`
    // drops `annotations`, and the include `io\.kubernetes\.pod\.namespace` (longer than
    // the `!io\.kubernetes` ignore) keeps `io.kubernetes.pod.namespace.x`.
    #[test]
    fn filter_entries_are_key_prefixes() {
        assert!(!is_identity_label("pod-template-hash-x"));
        assert!(!is_identity_label("controller-revision-hash2"));
        assert!(!is_identity_label("etcd_node_id"));
        assert!(!is_identity_label("annotations"));
        assert!(is_identity_label("io.kubernetes.pod.namespace.x"));
    }
}
