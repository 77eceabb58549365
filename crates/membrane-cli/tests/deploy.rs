//! `deploy/` applies on a cluster: every manifest decodes into its k8s-openapi type, the
//! kustomization lists files that exist, the agent's ClusterRole grants get/list/watch on
//! exactly what the agent follows and nothing more, and the DaemonSet runs the agent command
//! this binary has, with the capabilities nftables needs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use membrane_kube::json::yaml_to_json;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn objects(file: &Path) -> Vec<Value> {
    yaml_to_json(&std::fs::read_to_string(file).unwrap())
        .unwrap()
        .into_iter()
        .filter(|v| v.is_object())
        .collect()
}

fn all_objects() -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    for dir in [deploy(), deploy().join("crds")] {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "yaml") && !p.ends_with("kustomization.yaml") {
                out.extend(objects(&p).into_iter().map(|o| (p.clone(), o)));
            }
        }
    }
    out
}

#[test]
fn every_manifest_decodes_into_its_kubernetes_type() {
    let all = all_objects();
    assert!(all.len() >= 9, "{all:?}");
    for (file, o) in &all {
        let kind = o["kind"].as_str().unwrap_or_default();
        let r = match kind {
            "Namespace" => serde_json::from_value::<Namespace>(o.clone()).map(drop),
            "ServiceAccount" => serde_json::from_value::<ServiceAccount>(o.clone()).map(drop),
            "ClusterRole" => serde_json::from_value::<ClusterRole>(o.clone()).map(drop),
            "Role" => serde_json::from_value::<Role>(o.clone()).map(drop),
            "RoleBinding" => serde_json::from_value::<RoleBinding>(o.clone()).map(drop),
            "ClusterRoleBinding" => {
                serde_json::from_value::<ClusterRoleBinding>(o.clone()).map(drop)
            }
            "DaemonSet" => serde_json::from_value::<DaemonSet>(o.clone()).map(drop),
            "CustomResourceDefinition" => {
                serde_json::from_value::<CustomResourceDefinition>(o.clone()).map(drop)
            }
            other => panic!("{}: unexpected kind {other}", file.display()),
        };
        r.unwrap_or_else(|e| panic!("{}: {kind}: {e}", file.display()));
    }
}

#[test]
fn the_kustomization_lists_existing_files_and_leaves_the_crds_out() {
    let k = &objects(&deploy().join("kustomization.yaml"))[0];
    let resources: Vec<&str> = k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    for r in &resources {
        assert!(deploy().join(r).exists(), "{r}");
    }
    // Cilium's CRDs would replace a Cilium installation's own: never applied by default.
    assert!(!resources.iter().any(|r| r.contains("crds")));
}

#[test]
fn the_agents_role_grants_exactly_what_it_watches() {
    let all = all_objects();
    let role: ClusterRole = all
        .iter()
        .find(|(_, o)| o["kind"] == "ClusterRole" && o["metadata"]["name"] == "membrane-agent")
        .map(|(_, o)| serde_json::from_value(o.clone()).unwrap())
        .unwrap();
    let mut granted = BTreeSet::new();
    for rule in role.rules.unwrap_or_default() {
        let mut verbs = rule.verbs.clone();
        verbs.sort();
        assert_eq!(verbs, ["get", "list", "watch"]);
        for g in rule.api_groups.unwrap_or_default() {
            for r in rule.resources.clone().unwrap_or_default() {
                granted.insert((g.clone(), r));
            }
        }
    }
    let watched: BTreeSet<(String, String)> = membrane_agent::source::followed_kinds()
        .iter()
        .map(|k| (k.group.to_string(), k.plural.to_string()))
        .collect();
    assert_eq!(granted, watched);
    // Bound to the DaemonSet's service account.
    let binding: ClusterRoleBinding = all
        .iter()
        .find(|(_, o)| o["kind"] == "ClusterRoleBinding")
        .map(|(_, o)| serde_json::from_value(o.clone()).unwrap())
        .unwrap();
    assert_eq!(binding.role_ref.name, "membrane-agent");
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!(
        (subject.name.as_str(), subject.namespace.as_deref()),
        ("membrane-agent", Some("membrane-system"))
    );
    // Secrets: read only in the policy secrets namespace, which the kustomization creates.
    let role: Role = all
        .iter()
        .find(|(_, o)| o["kind"] == "Role")
        .map(|(_, o)| serde_json::from_value(o.clone()).unwrap())
        .unwrap();
    assert_eq!(role.metadata.namespace.as_deref(), Some("cilium-secrets"));
    let rules = role.rules.unwrap_or_default();
    assert_eq!(rules.len(), 1);
    // Exactly the kind the agent watches there.
    let secrets = membrane_agent::source::SECRETS;
    assert_eq!(
        rules[0].api_groups.as_deref(),
        Some(&[secrets.group.to_string()][..])
    );
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&[secrets.plural.to_string()][..])
    );
    assert_eq!(rules[0].verbs, ["get", "list", "watch"]);
    let binding: RoleBinding = all
        .iter()
        .find(|(_, o)| o["kind"] == "RoleBinding")
        .map(|(_, o)| serde_json::from_value(o.clone()).unwrap())
        .unwrap();
    assert_eq!(binding.role_ref.name, role.metadata.name.unwrap());
    assert!(
        all.iter()
            .any(|(_, o)| o["kind"] == "Namespace" && o["metadata"]["name"] == "cilium-secrets")
    );
}

#[test]
fn the_daemonset_runs_this_binarys_agent_with_what_nftables_needs() {
    let ds: DaemonSet = all_objects()
        .into_iter()
        .find(|(_, o)| o["kind"] == "DaemonSet")
        .map(|(_, o)| serde_json::from_value(o).unwrap())
        .unwrap();
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("membrane-agent"));
    assert_eq!(pod.host_network, Some(true));
    let c = &pod.containers[0];
    let caps = c
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.clone())
        .unwrap_or_default();
    assert!(caps.contains(&"NET_ADMIN".to_string()));
    let args = c.args.clone().unwrap();
    assert_eq!(args[0], "agent");
    // The arguments parse with this binary (`--help` after them checks them without running).
    let mut cli: Vec<String> = args
        .iter()
        .map(|a| a.replace("$(NODE_NAME)", "node-1"))
        .collect();
    cli.push("--help".into());
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_membrane"))
        .args(&cli)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let node_env = c.env.clone().unwrap_or_default();
    assert!(node_env.iter().any(|e| {
        e.name == "NODE_NAME"
            && e.value_from
                .as_ref()
                .and_then(|v| v.field_ref.as_ref())
                .map(|f| f.field_path.as_str())
                == Some("spec.nodeName")
    }));
}

/// The image carries every program the agent runs: `nft` (the datapath), `ip` (the proxies'
/// routing rule) and `tcpdump` (flow events).
#[test]
fn the_image_has_the_programs_the_agent_runs() {
    let containerfile = std::fs::read_to_string(deploy().join("Containerfile")).unwrap();
    let install = containerfile
        .lines()
        .rfind(|l| l.contains("apt-get install"))
        .unwrap();
    for package in ["nftables", "iproute2", "tcpdump"] {
        assert!(install.contains(package), "{package} missing: {install}");
    }
}

/// The DaemonSet declares the proxies' ports, the ones the agent binds.
#[test]
fn the_daemonset_declares_the_proxies_ports() {
    use membrane_datapath::layout::{DNS_PORT, HTTP_PORT, TLS_PORT};
    let ds: DaemonSet = all_objects()
        .into_iter()
        .find(|(_, o)| o["kind"] == "DaemonSet")
        .map(|(_, o)| serde_json::from_value(o).unwrap())
        .unwrap();
    let container = &ds.spec.unwrap().template.spec.unwrap().containers[0];
    let ports: BTreeSet<(i32, String)> = container
        .ports
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.container_port, p.protocol.unwrap_or_default()))
        .collect();
    for (port, protocol) in [
        (HTTP_PORT, "TCP"),
        (DNS_PORT, "UDP"),
        (DNS_PORT, "TCP"),
        (TLS_PORT, "TCP"),
    ] {
        assert!(
            ports.contains(&(i32::from(port), protocol.to_string())),
            "{port}/{protocol} not declared: {ports:?}"
        );
    }
}
