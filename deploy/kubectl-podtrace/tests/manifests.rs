//! deploy/*.yaml, checked without a cluster: each document parses into its
//! Kubernetes type and serializes back to the same document (a misspelled or
//! misplaced field would be dropped, a missing required one fails), the
//! documents agree with each other, and the debug pod `kubectl podtrace`
//! creates agrees with the DaemonSet's pod.

mod common;

use std::path::{Path, PathBuf};

use common::Mock;

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{Namespace, Pod, PodSpec, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    serde::{Serialize, de::DeserializeOwned},
};
use kubectl_podtrace::manifest::{
    DEFAULT_IMAGE, DEFAULT_NAMESPACE, DEFAULT_SERVICE_ACCOUNT, DebugPod,
};
use serde_json::{Value, json};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("deploy/")
        .to_owned()
}

/// Every document of deploy/`file`.
fn documents(file: &str) -> Vec<Value> {
    let path = deploy_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `doc` as `T`, and proof that `T` kept every field of it.
fn typed<T: DeserializeOwned + Serialize>(doc: &Value) -> T {
    let t: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{}: {e}\n{doc:#}", doc["kind"]));
    let back = serde_json::to_value(&t).expect("serialize");
    assert_eq!(&back, doc, "{} lost or changed fields", doc["kind"]);
    t
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in deploy/"))
}

struct Deploy {
    namespace: Namespace,
    account: ServiceAccount,
    role: ClusterRole,
    binding: ClusterRoleBinding,
    daemonset: DaemonSet,
}

fn deploy() -> Deploy {
    let rbac = documents("rbac.yaml");
    let ds = documents("daemonset.yaml");
    assert_eq!(
        rbac.len(),
        4,
        "rbac.yaml: Namespace, ServiceAccount, ClusterRole, ClusterRoleBinding"
    );
    assert_eq!(ds.len(), 1, "daemonset.yaml: one DaemonSet");
    Deploy {
        namespace: typed(kind(&rbac, "Namespace")),
        account: typed(kind(&rbac, "ServiceAccount")),
        role: typed(kind(&rbac, "ClusterRole")),
        binding: typed(kind(&rbac, "ClusterRoleBinding")),
        daemonset: typed(&ds[0]),
    }
}

#[test]
fn every_document_is_its_kind_and_nothing_else() {
    for file in ["rbac.yaml", "daemonset.yaml"] {
        for doc in documents(file) {
            for field in ["apiVersion", "kind"] {
                assert!(doc[field].is_string(), "{file}: {field} missing");
            }
            assert!(
                doc["metadata"]["name"].is_string(),
                "{file}: metadata.name missing"
            );
        }
    }
    deploy();
}

#[test]
fn rbac_is_read_only_pods_for_the_service_account() {
    let d = deploy();
    let ns = d.namespace.metadata.name.as_deref();
    assert_eq!(ns, Some(DEFAULT_NAMESPACE));
    assert_eq!(d.account.metadata.namespace.as_deref(), ns);
    assert_eq!(
        d.account.metadata.name.as_deref(),
        Some(DEFAULT_SERVICE_ACCOUNT)
    );

    let rules = d.role.rules.expect("rules");
    assert_eq!(rules.len(), 1);
    let rule = &rules[0];
    assert_eq!(rule.api_groups.as_deref(), Some(&[String::new()][..]));
    assert_eq!(rule.resources.as_deref(), Some(&["pods".to_owned()][..]));
    assert_eq!(rule.verbs, ["get", "list", "watch"]);

    assert_eq!(d.binding.role_ref.kind, "ClusterRole");
    assert_eq!(
        Some(&d.binding.role_ref.name),
        d.role.metadata.name.as_ref()
    );
    let subjects = d.binding.subjects.expect("subjects");
    let names: Vec<&str> = subjects.iter().map(|s| s.name.as_str()).collect();
    // Ours, and the namespace's default one that `kubectl debug` pods get.
    assert_eq!(names, [DEFAULT_SERVICE_ACCOUNT, "default"]);
    for s in &subjects {
        assert_eq!(s.kind, "ServiceAccount");
        assert_eq!(s.namespace.as_deref(), ns);
    }
}

/// What makes a pod a node debug pod for podtrace.
fn check_node_pod(spec: &PodSpec, what: &str) {
    assert_eq!(spec.host_network, Some(true), "{what}: hostNetwork");
    assert_eq!(spec.host_pid, Some(true), "{what}: hostPID");
    assert_eq!(
        spec.service_account_name.as_deref(),
        Some(DEFAULT_SERVICE_ACCOUNT),
        "{what}: service account"
    );
    let c = &spec.containers[0];
    assert_eq!(c.name, "podtrace", "{what}");
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_eq!(sc.privileged, Some(true), "{what}: privileged");
    let env = c.env.as_ref().expect("env");
    let node = env
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME");
    let field = node.value_from.as_ref().and_then(|v| v.field_ref.as_ref());
    assert_eq!(field.map(|f| f.field_path.as_str()), Some("spec.nodeName"));
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == "/host")
        .unwrap_or_else(|| panic!("{what}: nothing at /host"));
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .expect("the /host volume");
    assert_eq!(
        volume.host_path.as_ref().map(|h| h.path.as_str()),
        Some("/"),
        "{what}"
    );
    let tolerations = spec.tolerations.as_ref().expect("tolerations");
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none())
    );
}

#[test]
fn the_daemonset_runs_a_node_pod_in_the_rbac_namespace() {
    let d = deploy();
    let ds = d.daemonset;
    assert_eq!(ds.metadata.namespace.as_deref(), Some(DEFAULT_NAMESPACE));
    let spec = ds.spec.expect("spec");
    let selector = spec.selector.match_labels.expect("matchLabels");
    let labels = spec
        .template
        .metadata
        .and_then(|m| m.labels)
        .expect("labels");
    for (k, v) in &selector {
        assert_eq!(
            labels.get(k),
            Some(v),
            "the selector must match the template"
        );
    }
    let pod = spec.template.spec.expect("pod spec");
    check_node_pod(&pod, "daemonset");
    // The image the README pushes, REGISTRY filled in by the README's sed:
    // no node can pull the local build's name.
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("REGISTRY/podtrace:0.1.0")
    );
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    assert!(readme.contains("podman push localhost/podtrace:latest REGISTRY/podtrace:0.1.0"));
    assert!(readme.contains("sed 's|REGISTRY|your.registry|' deploy/daemonset.yaml"));
}

#[test]
fn the_plugins_debug_pod_is_the_daemonsets_pod_run_once() {
    let debug = DebugPod {
        name: "podtrace-ip-192-168-27-90-0000beef".into(),
        namespace: DEFAULT_NAMESPACE.into(),
        node: "ip-192-168-27-90.us-west-2.compute.internal".into(),
        image: DEFAULT_IMAGE.into(),
        service_account: DEFAULT_SERVICE_ACCOUNT.into(),
        args: vec!["ping".into(), "app/web-0".into(), "app/db-0".into()],
    };
    let pod: Pod = typed(&debug.to_json());
    let spec = pod.spec.expect("spec");
    check_node_pod(&spec, "debug pod");
    assert_eq!(spec.node_name.as_deref(), Some(debug.node.as_str()));
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(spec.containers[0].args.as_deref(), Some(&debug.args[..]));

    // Same securityContext, mounts and volumes as the DaemonSet, but
    // writable /host like `kubectl debug node/...` and no resident log.
    let ds = deploy().daemonset.spec.unwrap().template.spec.unwrap();
    assert_eq!(spec.host_ipc, Some(true), "like kubectl debug node/...");
    assert_eq!(spec.dns_policy, ds.dns_policy);
    assert_eq!(
        spec.containers[0].security_context,
        ds.containers[0].security_context
    );
    assert_eq!(spec.containers[0].env, ds.containers[0].env);
}

/// Legacy discovery for the kinds in deploy/, and 404 for every object, so
/// that `kubectl apply --dry-run=client` has a server to map kinds with.
fn discovery(req: &common::Request) -> (u16, String) {
    let resource = |name: &str, kind: &str, namespaced: bool| {
        json!({"name": name, "singularName": kind.to_lowercase(), "namespaced": namespaced,
               "kind": kind, "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]})
    };
    let list = |gv: &str, resources: Vec<Value>| json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources});
    let group = |name: &str| {
        let gv = format!("{name}/v1");
        json!({"name": name, "versions": [{"groupVersion": gv, "version": "v1"}],
               "preferredVersion": {"groupVersion": gv, "version": "v1"}})
    };
    let body = match req.target.split('?').next().unwrap_or_default() {
        "/api" => json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:443"}]}),
        "/apis" => json!({"kind": "APIGroupList", "apiVersion": "v1",
            "groups": [group("apps"), group("rbac.authorization.k8s.io")]}),
        "/api/v1" => list(
            "v1",
            vec![
                resource("namespaces", "Namespace", false),
                resource("serviceaccounts", "ServiceAccount", true),
                resource("pods", "Pod", true),
            ],
        ),
        "/apis/apps/v1" => list("apps/v1", vec![resource("daemonsets", "DaemonSet", true)]),
        "/apis/rbac.authorization.k8s.io/v1" => list(
            "rbac.authorization.k8s.io/v1",
            vec![
                resource("clusterroles", "ClusterRole", false),
                resource("clusterrolebindings", "ClusterRoleBinding", false),
            ],
        ),
        _ => {
            let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                "reason": "NotFound", "code": 404, "message": "not found"});
            return (404, status.to_string());
        }
    };
    (200, body.to_string())
}

/// `kubectl apply --dry-run=client --validate=false` over deploy/, with a
/// mock API server for discovery. Debian-family machines may lack kubectl:
/// then this says so loudly instead of checking.
#[test]
fn kubectl_dry_run_client_accepts_them() {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("kubectl"))
            .find(|k| k.is_file())
    });
    let Some(kubectl) = found else {
        eprintln!(
            "NOT CHECKED: kubectl is not on PATH; `kubectl apply --dry-run=client` did not run"
        );
        return;
    };
    let mock = Mock::start(discovery);
    let config = std::env::temp_dir().join(format!("podtrace-kubeconfig-{}", std::process::id()));
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: mock\n  cluster:\n    server: {}\n\
         users:\n- name: me\n  user: {{}}\ncontexts:\n- name: mock\n  context:\n    cluster: mock\n    \
         user: me\ncurrent-context: mock\n",
        mock.url
    );
    std::fs::write(&config, text).expect("write kubeconfig");
    let dir = deploy_dir();
    let out = std::process::Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(&config)
        .args(["apply", "--dry-run=client", "--validate=false"])
        .arg("-f")
        .arg(dir.join("rbac.yaml"))
        .arg("-f")
        .arg(dir.join("daemonset.yaml"))
        .output()
        .expect("run kubectl");
    let _ = std::fs::remove_file(&config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    for object in [
        "namespace/podtrace",
        "serviceaccount/podtrace",
        "clusterrole.rbac.authorization.k8s.io/podtrace",
        "clusterrolebinding.rbac.authorization.k8s.io/podtrace",
        "daemonset.apps/podtrace",
    ] {
        assert!(
            stdout.contains(&format!("{object} created (dry run)")),
            "{object} missing:\n{stdout}{stderr}"
        );
    }
}
