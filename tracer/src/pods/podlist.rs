//! Pod lists as JSON, the one format of all three sources: the API
//! server's PodList pages, `kubectl get pods -A -o json` files, and the lab
//! inventory (the same shape plus a `podtrace` key, ignored here).
//!
//! Only the fields podtrace uses are declared; everything else a real
//! cluster puts in a Pod (managedFields, containers, conditions...) is
//! skipped by serde, so any kubectl version's output parses.

use std::{net::Ipv4Addr, path::Path};

use serde::Deserialize;

use super::{
    error::SourceError,
    model::{Pod, PodSet, Source},
};

#[derive(Deserialize)]
struct PodList {
    #[serde(default)]
    items: Vec<Item>,
    #[serde(default)]
    metadata: ListMeta,
}

#[derive(Default, Deserialize)]
struct ListMeta {
    /// Set by the API server when more pages follow.
    #[serde(rename = "continue")]
    continue_token: Option<String>,
}

#[derive(Deserialize)]
struct Item {
    metadata: Meta,
    #[serde(default)]
    spec: Spec,
    #[serde(default)]
    status: Status,
}

#[derive(Deserialize)]
struct Meta {
    name: String,
    namespace: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    node_name: Option<String>,
    #[serde(default)]
    host_network: bool,
}

#[derive(Default, Deserialize)]
struct Status {
    phase: Option<String>,
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(rename = "podIPs", default)]
    pod_ips: Vec<PodIp>,
    #[serde(rename = "hostIP")]
    host_ip: Option<String>,
}

#[derive(Deserialize)]
struct PodIp {
    ip: String,
}

impl Item {
    /// The one conversion into the model, whatever the source.
    fn into_pod(self) -> Pod {
        let Self {
            metadata,
            spec,
            status,
        } = self;
        // A terminated pod keeps its last podIP in status, but the CNI has
        // released the address and another pod may hold it now.
        let terminated = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
        // Dual-stack pods list an IPv6 address too; podtrace traces IPv4.
        let ip = status
            .pod_ip
            .iter()
            .chain(status.pod_ips.iter().map(|p| &p.ip))
            .find_map(|s| s.parse::<Ipv4Addr>().ok())
            .filter(|_| !terminated);
        Pod {
            name: metadata.name,
            namespace: metadata.namespace.unwrap_or_else(|| "default".to_owned()),
            ip,
            node: spec.node_name,
            host_ip: status.host_ip.and_then(|s| s.parse().ok()),
            host_network: spec.host_network,
        }
    }
}

/// Parses a pod list (`kind: List` or `PodList`; extra keys ignored).
pub fn parse(json: &str) -> Result<Vec<Pod>, serde_json::Error> {
    parse_page(json).map(|(pods, _)| pods)
}

/// Parses one page of the API's pod list: the pods, and the token for the
/// next page when there is one.
pub(super) fn parse_page(json: &str) -> Result<(Vec<Pod>, Option<String>), serde_json::Error> {
    let list: PodList = serde_json::from_str(json)?;
    let next = list.metadata.continue_token.filter(|t| !t.is_empty());
    Ok((list.items.into_iter().map(Item::into_pod).collect(), next))
}

/// Reads a pod list file as `source` (a pods file or the lab inventory),
/// keeping only `node`'s pods when given.
pub fn load(path: &Path, source: Source, node: Option<&str>) -> Result<PodSet, SourceError> {
    let json = std::fs::read_to_string(path).map_err(|source| SourceError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    let mut pods = parse(&json).map_err(|source| SourceError::ParseFile {
        path: path.to_owned(),
        source,
    })?;
    if let Some(node) = node {
        pods.retain(|p| p.node.as_deref() == Some(node));
    }
    Ok(PodSet::new(source, pods))
}

/// Trimmed from a real `kubectl get pods -A -o json` on EKS: a normal
/// pod, the aws-node DaemonSet pod (hostNetwork), a pending pod, a
/// completed Job pod, and a dual-stack pod listing IPv6 first.
#[cfg(test)]
pub(super) const KUBECTL_JSON: &str = r#"{
  "apiVersion": "v1",
  "items": [
    {
      "apiVersion": "v1", "kind": "Pod",
      "metadata": {
        "creationTimestamp": "2025-03-01T10:00:00Z",
        "labels": {"app": "web", "pod-template-hash": "7d9c8"},
        "managedFields": [{"manager": "kubelet", "operation": "Update"}],
        "name": "web-7d9c8-abcde", "namespace": "shop",
        "ownerReferences": [{"kind": "ReplicaSet", "name": "web-7d9c8"}],
        "uid": "0b7c4a4e-1111-2222-3333-444455556666"
      },
      "spec": {
        "containers": [{"image": "nginx:1.27", "name": "nginx",
                        "ports": [{"containerPort": 80, "protocol": "TCP"}]}],
        "nodeName": "ip-192-168-1-5.ec2.internal",
        "serviceAccountName": "default"
      },
      "status": {
        "conditions": [{"type": "Ready", "status": "True"}],
        "hostIP": "192.168.1.5", "hostIPs": [{"ip": "192.168.1.5"}],
        "phase": "Running", "podIP": "192.168.1.21",
        "podIPs": [{"ip": "192.168.1.21"}], "qosClass": "BestEffort"
      }
    },
    {
      "apiVersion": "v1", "kind": "Pod",
      "metadata": {"name": "aws-node-x7k2p", "namespace": "kube-system"},
      "spec": {"hostNetwork": true, "nodeName": "ip-192-168-1-5.ec2.internal"},
      "status": {"hostIP": "192.168.1.5", "phase": "Running",
                 "podIP": "192.168.1.5", "podIPs": [{"ip": "192.168.1.5"}]}
    },
    {
      "apiVersion": "v1", "kind": "Pod",
      "metadata": {"name": "pending-1", "namespace": "default"},
      "spec": {},
      "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False"}]}
    },
    {
      "apiVersion": "v1", "kind": "Pod",
      "metadata": {"name": "job-1-xyz", "namespace": "default"},
      "spec": {"nodeName": "ip-192-168-2-5.ec2.internal"},
      "status": {"phase": "Succeeded", "hostIP": "192.168.2.5", "podIP": "192.168.2.30"}
    },
    {
      "apiVersion": "v1", "kind": "Pod",
      "metadata": {"name": "dual", "namespace": "default"},
      "spec": {"nodeName": "ip-192-168-2-5.ec2.internal"},
      "status": {"phase": "Running", "hostIP": "192.168.2.5", "podIP": "2600:1f18::21",
                 "podIPs": [{"ip": "2600:1f18::21"}, {"ip": "192.168.2.21"}]}
    }
  ],
  "kind": "List",
  "metadata": {"resourceVersion": ""}
}"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn by_name<'a>(pods: &'a [Pod], name: &str) -> &'a Pod {
        pods.iter().find(|p| p.name == name).unwrap()
    }

    #[test]
    fn real_kubectl_output() {
        let pods = parse(KUBECTL_JSON).unwrap();
        assert_eq!(pods.len(), 5);
        assert_eq!(
            by_name(&pods, "web-7d9c8-abcde"),
            &Pod {
                name: "web-7d9c8-abcde".into(),
                namespace: "shop".into(),
                ip: Some([192, 168, 1, 21].into()),
                node: Some("ip-192-168-1-5.ec2.internal".into()),
                host_ip: Some([192, 168, 1, 5].into()),
                host_network: false,
            }
        );
        let aws_node = by_name(&pods, "aws-node-x7k2p");
        assert!(aws_node.host_network);
        assert_eq!(aws_node.ip, Some([192, 168, 1, 5].into()));
    }

    #[test]
    fn pods_without_a_usable_ip() {
        let pods = parse(KUBECTL_JSON).unwrap();
        let pending = by_name(&pods, "pending-1");
        assert_eq!((pending.ip, pending.node.as_deref()), (None, None));
        // Terminated: its old address may belong to another pod now.
        assert_eq!(by_name(&pods, "job-1-xyz").ip, None);
        // Dual-stack: the IPv4 one, wherever it is listed.
        assert_eq!(by_name(&pods, "dual").ip, Some([192, 168, 2, 21].into()));
    }

    #[test]
    fn lab_inventory_with_its_extra_key() {
        let json = r#"{"apiVersion": "v1", "kind": "List", "metadata": {},
            "items": [{"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "pod-1", "namespace": "default", "labels": {"podtrace/lab": "true"}},
                "spec": {"nodeName": "node-a"},
                "status": {"phase": "Running", "hostIP": "192.168.1.5", "podIP": "192.168.1.21",
                           "podIPs": [{"ip": "192.168.1.21"}]}}],
            "podtrace": {"nodes": [{"name": "node-a", "netns": "node-a"}], "vpc": "192.168.0.0/16"}}"#;
        let pods = parse(json).unwrap();
        assert_eq!(pods[0].ip, Some([192, 168, 1, 21].into()));
        assert_eq!(pods[0].node.as_deref(), Some("node-a"));
    }

    #[test]
    fn empty_and_broken_lists() {
        assert!(
            parse(r#"{"apiVersion": "v1", "items": [], "kind": "List"}"#)
                .unwrap()
                .is_empty()
        );
        assert!(parse(r#"{"items": [{"spec": {}}]}"#).is_err());
        assert!(parse("not json").is_err());
    }

    #[test]
    fn load_keeps_one_nodes_pods() {
        let path = std::env::temp_dir().join(format!("podtrace-pods-{}.json", std::process::id()));
        std::fs::write(&path, KUBECTL_JSON).unwrap();
        let set = load(
            &path,
            Source::File(path.clone()),
            Some("ip-192-168-2-5.ec2.internal"),
        );
        std::fs::remove_file(&path).unwrap();
        let set = set.unwrap();
        let names: Vec<&str> = set.pods().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["dual", "job-1-xyz"]);

        let missing = load(Path::new("/nonexistent/pods.json"), Source::Lab, None).unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("cannot read /nonexistent/pods.json: "),
            "{missing}"
        );
    }
}
