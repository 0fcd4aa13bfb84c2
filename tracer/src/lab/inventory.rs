//! The lab's inventory: what `kubectl get pods -A -o json` would print for
//! its pods (a v1 List of Pods), plus, under the extra top-level key
//! `podtrace`, the whole [`Plan`]: nodes, ENIs, netns names, the VPC CIDR,
//! the internet host, the service and the NLB. `podtrace ping`/`trace` load
//! it to turn pod names into IPs, nodes and namespaces without a cluster.

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{
    LabError,
    plan::{NodePlan, Plan, PodPlan},
};

/// Where `podtrace lab up` writes the inventory.
pub const INVENTORY_PATH: &str = "/run/podtrace/lab.json";

/// `kubectl get pods -A -o json`, plus the lab's plan under `podtrace`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Inventory {
    /// `v1`.
    pub api_version: String,
    /// `List`, as kubectl prints it.
    pub kind: String,
    /// List metadata (empty, as kubectl prints it).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The pods.
    pub items: Vec<Pod>,
    /// Everything else about the lab.
    pub podtrace: Plan,
}

/// A v1 Pod, with the fields the lab fills in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    /// `v1`.
    pub api_version: String,
    /// `Pod`.
    pub kind: String,
    /// Name, namespace, labels.
    pub metadata: PodMeta,
    /// Where it runs.
    pub spec: PodSpec,
    /// Its addresses.
    pub status: PodStatus,
}

/// `metadata` of a Pod.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PodMeta {
    /// Pod name.
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Labels (`app: web` for service backends).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `spec` of a Pod.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    /// The node it is scheduled on.
    pub node_name: String,
}

/// `status` of a Pod.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PodStatus {
    /// `Running`.
    pub phase: String,
    /// The node's primary IP.
    #[serde(rename = "hostIP")]
    pub host_ip: Ipv4Addr,
    /// The pod IP.
    #[serde(rename = "podIP")]
    pub pod_ip: Ipv4Addr,
    /// The pod IPs, as `[{"ip": ...}]`.
    #[serde(rename = "podIPs", default)]
    pub pod_ips: Vec<PodIp>,
}

/// One entry of `status.podIPs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PodIp {
    /// The address.
    pub ip: Ipv4Addr,
}

impl Inventory {
    /// The inventory for a plan: one Pod item per planned pod.
    pub fn from_plan(plan: &Plan) -> Self {
        let backends: Vec<&str> = plan.service.backends.iter().map(String::as_str).collect();
        let items = plan
            .pods
            .iter()
            .map(|p| {
                let host_ip = plan
                    .node(&p.node)
                    .map_or(Ipv4Addr::UNSPECIFIED, |n| n.enis[0].primary_ip);
                let mut labels = BTreeMap::from([("podtrace/lab".to_owned(), "true".to_owned())]);
                if p.namespace == plan.service.namespace && backends.contains(&p.name.as_str()) {
                    labels.insert("app".to_owned(), plan.service.name.clone());
                }
                Pod {
                    api_version: "v1".to_owned(),
                    kind: "Pod".to_owned(),
                    metadata: PodMeta {
                        name: p.name.clone(),
                        namespace: p.namespace.clone(),
                        labels,
                    },
                    spec: PodSpec {
                        node_name: p.node.clone(),
                    },
                    status: PodStatus {
                        phase: "Running".to_owned(),
                        host_ip,
                        pod_ip: p.ip,
                        pod_ips: vec![PodIp { ip: p.ip }],
                    },
                }
            })
            .collect();
        Self {
            api_version: "v1".to_owned(),
            kind: "List".to_owned(),
            metadata: BTreeMap::from([("resourceVersion".to_owned(), String::new())]),
            items,
            podtrace: plan.clone(),
        }
    }

    /// Reads an inventory file (`podtrace lab up` writes [`INVENTORY_PATH`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, LabError> {
        let path = path.as_ref();
        let text = fs::read(path).map_err(|source| LabError::Io {
            what: "reading the lab inventory",
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|source| LabError::Inventory {
            path: path.to_owned(),
            source,
        })
    }

    /// Reads [`INVENTORY_PATH`]; a missing file means "no lab is up".
    pub fn load_default() -> Result<Self, LabError> {
        Self::load(INVENTORY_PATH)
    }

    /// Writes the inventory atomically (temporary file, then rename), world
    /// readable so that `status` works without root.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), LabError> {
        let path = path.as_ref();
        let io = |what| {
            move |source| LabError::Io {
                what,
                path: path.to_owned(),
                source,
            }
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io("creating the directory of"))?;
        }
        let tmp = PathBuf::from(format!("{}.tmp", path.display()));
        let mut file = fs::File::create(&tmp).map_err(io("writing"))?;
        let json = serde_json::to_vec_pretty(self).expect("plain data serializes");
        file.write_all(&json).map_err(io("writing"))?;
        file.write_all(b"\n").map_err(io("writing"))?;
        file.sync_all().map_err(io("writing"))?;
        fs::rename(&tmp, path).map_err(io("writing"))
    }

    /// The lab's plan.
    pub fn plan(&self) -> &Plan {
        &self.podtrace
    }

    /// A pod by `name`, `namespace/name` or IP.
    pub fn pod(&self, spec: &str) -> Option<&PodPlan> {
        self.podtrace.pod(spec)
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&NodePlan> {
        self.podtrace.node(name)
    }

    /// The node a pod runs on.
    pub fn node_of(&self, pod: &PodPlan) -> Option<&NodePlan> {
        self.podtrace.node(&pod.node)
    }

    /// What a network namespace is: `node-a`, `default/pod-1`, `vpc`, ...
    /// (for labelling what a tracer saw in that namespace).
    pub fn netns_label(&self, netns: &str) -> Option<String> {
        let plan = &self.podtrace;
        if let Some(p) = plan.pods.iter().find(|p| p.netns == netns) {
            return Some(p.full_name());
        }
        if let Some(n) = plan.nodes.iter().find(|n| n.netns == netns) {
            return Some(n.name.clone());
        }
        [&plan.vpc_netns, &plan.internet.netns, &plan.nlb.netns]
            .into_iter()
            .find(|n| n.as_str() == netns)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_like_kubectl_get_pods_and_round_trips() {
        let inv = Inventory::from_plan(&Plan::default());
        let json: serde_json::Value = serde_json::to_value(&inv).unwrap();
        assert_eq!(json["apiVersion"], "v1");
        assert_eq!(json["kind"], "List");
        let pod = &json["items"][1];
        assert_eq!(pod["kind"], "Pod");
        assert_eq!(pod["metadata"]["name"], "pod-2");
        assert_eq!(pod["metadata"]["namespace"], "default");
        assert_eq!(pod["metadata"]["labels"]["app"], "web");
        assert_eq!(pod["spec"]["nodeName"], "node-a");
        assert_eq!(pod["status"]["podIP"], "192.168.1.21");
        assert_eq!(pod["status"]["podIPs"][0]["ip"], "192.168.1.21");
        assert_eq!(pod["status"]["hostIP"], "192.168.1.10");
        assert_eq!(json["podtrace"]["vpc_cidr"], "192.168.0.0/16");
        assert_eq!(json["podtrace"]["nodes"][0]["enis"][1]["name"], "ens6");
        assert_eq!(json["podtrace"]["pods"][1]["netns"], "lab-default-pod-2");
        let back: Inventory = serde_json::from_value(json).unwrap();
        assert_eq!(back, inv);
    }

    #[test]
    fn saves_loads_and_resolves() {
        let dir = std::env::temp_dir().join(format!("podtrace-inv-{}", std::process::id()));
        let path = dir.join("lab.json");
        let inv = Inventory::from_plan(&Plan::default());
        inv.save(&path).unwrap();
        let back = Inventory::load(&path).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(back, inv);
        let pod = back.pod("pod-4").unwrap();
        assert_eq!(back.node_of(pod).unwrap().netns, "node-b");
        assert_eq!(
            back.netns_label("lab-default-pod-4").as_deref(),
            Some("default/pod-4")
        );
        assert_eq!(back.netns_label("node-a").as_deref(), Some("node-a"));
        assert_eq!(back.netns_label("internet").as_deref(), Some("internet"));
        assert_eq!(back.netns_label("elsewhere"), None);
        let missing = Inventory::load(dir.join("nope.json")).unwrap_err();
        assert!(missing.to_string().contains("nope.json"), "{missing}");
    }
}
