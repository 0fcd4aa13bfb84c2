//! Pod sources and pod netns lookup (issue 6), as on a worker node: a node
//! netns with a per-pod /32 route through an `eni...` veth whose peer is
//! the pod's eth0 in a containerd-style `cni-*` netns; and the API source
//! through the public flags, against a local API server.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    process::Command,
};

use podtrace_tests::{require_root, sh, unique};
use tracer::{
    netns::Netns,
    pods::{PodSourceArgs, ResolveError, SourceError, load, pod_netns, pod_netns_in},
};

/// Namespaces deleted on drop, also when the test panics.
struct Scratch(Vec<String>);

impl Drop for Scratch {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A node netns and two pods wired as the VPC CNI does it. Addresses are
/// only ever routed inside these namespaces; no packet is sent.
struct Node {
    node: String,
    pods: [(String, Ipv4Addr); 2],
    _scratch: Scratch,
}

impl Node {
    fn new() -> Self {
        require_root();
        let base = unique("pn");
        let node = format!("{base}node");
        let pods = [
            (format!("cni-{base}-a"), Ipv4Addr::new(10, 201, 0, 21)),
            (format!("cni-{base}-b"), Ipv4Addr::new(10, 201, 0, 37)),
        ];
        let mut names = vec![node.clone()];
        names.extend(pods.iter().map(|(n, _)| n.clone()));
        let scratch = Scratch(names.clone());
        for ns in &names {
            sh(&["ip", "netns", "add", ns]);
        }
        sh(&[
            "ip",
            "-n",
            &node,
            "addr",
            "add",
            "10.201.0.5/24",
            "dev",
            "lo",
        ]);
        sh(&["ip", "-n", &node, "link", "set", "lo", "up"]);
        for (i, (pod, ip)) in pods.iter().enumerate() {
            // eni + 11 hex digits, as the CNI names host-side veths.
            let veth = format!("eni{i:011x}");
            sh(&[
                "ip", "-n", &node, "link", "add", &veth, "type", "veth", "peer", "name", "eth0",
                "netns", pod,
            ]);
            sh(&[
                "ip",
                "-n",
                pod,
                "addr",
                "add",
                &format!("{ip}/32"),
                "dev",
                "eth0",
            ]);
            sh(&["ip", "-n", pod, "link", "set", "eth0", "up"]);
            sh(&["ip", "-n", &node, "link", "set", &veth, "up"]);
            sh(&[
                "ip",
                "-n",
                &node,
                "route",
                "add",
                &format!("{ip}/32"),
                "dev",
                &veth,
                "scope",
                "link",
            ]);
        }
        Self {
            node,
            pods,
            _scratch: scratch,
        }
    }
}

#[tokio::test]
async fn pod_netns_from_route_veth_and_nsid() {
    let lab = Node::new();
    let node = Netns::open(&lab.node).unwrap();
    for (pod, ip) in &lab.pods {
        let path = pod_netns(&node, *ip).await.unwrap();
        assert_eq!(path, Path::new("/run/netns").join(pod), "{ip}");
        // The very namespace, not just a name: same nsfs inode.
        assert_eq!(
            Netns::open(path.to_str().unwrap()).unwrap().inode,
            Netns::open(pod).unwrap().inode
        );
    }
}

#[tokio::test]
async fn pods_elsewhere_and_unsearched_dirs_are_one_line_errors() {
    let lab = Node::new();
    let node = Netns::open(&lab.node).unwrap();

    let e = pod_netns(&node, Ipv4Addr::new(10, 201, 0, 99))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "no route to 10.201.0.99 through a pod veth in netns {}: is the pod on this node?",
            lab.node
        )
    );

    // A /32 through an ENI (an interface with an address; a veth whose
    // peer is in the same netns here) leads to no pod of this node.
    for args in [
        "link add ens5 type veth peer name ens5peer",
        "addr add 10.201.1.5/24 dev ens5",
        "link set ens5 up",
        "route add 10.201.0.77/32 dev ens5",
    ] {
        let mut cmd = vec!["ip", "-n", &lab.node];
        cmd.extend(args.split(' '));
        sh(&cmd);
    }
    let e = pod_netns(&node, Ipv4Addr::new(10, 201, 0, 77))
        .await
        .unwrap_err();
    assert!(matches!(e, ResolveError::NotPodVeth { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("10.201.0.77 is routed through ens5 in netns "),
        "{e}"
    );

    let e = pod_netns_in(&node, lab.pods[0].1, &[Path::new("/nonexistent/netns")])
        .await
        .unwrap_err();
    assert!(matches!(e, ResolveError::PeerNetnsNotFound { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("but no netns under /nonexistent/netns"),
        "{e}"
    );
}

/// Answers every request with `status` and `body`, then closes; bounded
/// to `count` requests, on 127.0.0.1 only.
fn api_server(count: usize, status: &'static str, body: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for sock in listener.incoming().take(count) {
            let Ok(mut sock) = sock else { return };
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match sock.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(reply.as_bytes());
        }
    });
    url
}

/// A file removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(text: &str) -> Self {
        let path = std::env::temp_dir().join(unique("kc"));
        std::fs::write(&path, text).unwrap();
        Self(path)
    }

    fn kubeconfig(server: &str) -> Self {
        Self::new(&format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n\
             users:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context:\n    \
             cluster: c\n    user: u\ncurrent-context: x\n"
        ))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test]
async fn kubeconfig_flag_lists_pods_from_the_api() {
    let list = r#"{"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"},
      "items": [{"metadata": {"name": "pod-1", "namespace": "default", "uid": "x"},
                 "spec": {"nodeName": "node-a", "containers": [{"name": "c"}]},
                 "status": {"phase": "Running", "hostIP": "192.168.1.5", "podIP": "192.168.1.21",
                            "podIPs": [{"ip": "192.168.1.21"}]}}]}"#;
    let kc = TempFile::kubeconfig(&api_server(1, "200 OK", list.to_owned()));
    let args = PodSourceArgs {
        pods_file: None,
        kubeconfig: Some(kc.0.clone()),
    };
    let set = load(&args).await.unwrap();
    assert_eq!(
        set.resolve("pod-1").unwrap().to_string(),
        "default/pod-1 (192.168.1.21, node-a)"
    );
}

#[tokio::test]
async fn kubeconfig_flag_forbidden() {
    let status = r#"{"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
      "message": "pods is forbidden: User \"system:serviceaccount:kube-system:podtrace\" cannot list resource \"pods\" in API group \"\" at the cluster scope",
      "reason": "Forbidden", "details": {"kind": "pods"}, "code": 403}"#;
    let kc = TempFile::kubeconfig(&api_server(1, "403 Forbidden", status.to_owned()));
    let args = PodSourceArgs {
        pods_file: None,
        kubeconfig: Some(kc.0.clone()),
    };
    let e = load(&args).await.unwrap_err();
    assert!(matches!(e, SourceError::Forbidden { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "the Kubernetes API refused to list pods (403 Forbidden): \
         the service account kube-system/podtrace needs get/list/watch on pods"
    );
}
