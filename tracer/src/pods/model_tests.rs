//! Resolution over the model: names, namespaces, IPs, and the one-line
//! errors a user reads.

use std::net::Ipv4Addr;

use super::{
    Pod, PodSet, ResolveError, Resolved, Source,
    podlist::{KUBECTL_JSON, parse},
};

fn pod(ns: &str, name: &str, ip: Option<[u8; 4]>, node: &str) -> Pod {
    Pod {
        name: name.into(),
        namespace: ns.into(),
        ip: ip.map(Into::into),
        node: Some(node.into()),
        host_ip: None,
        host_network: false,
    }
}

/// The lab's four pods, as its inventory lists them.
fn lab() -> PodSet {
    PodSet::new(
        Source::Lab,
        vec![
            pod("default", "pod-4", Some([192, 168, 2, 22]), "node-b"),
            pod("default", "pod-1", Some([192, 168, 1, 21]), "node-a"),
            pod("default", "pod-2", Some([192, 168, 1, 37]), "node-a"),
            pod("default", "pod-3", Some([192, 168, 2, 21]), "node-b"),
        ],
    )
}

#[test]
fn by_name_namespace_and_ip() {
    let set = lab();
    let p1 = set.resolve("pod-1").unwrap();
    assert_eq!(p1.ip(), Ipv4Addr::new(192, 168, 1, 21));
    assert_eq!(p1.to_string(), "default/pod-1 (192.168.1.21, node-a)");
    assert_eq!(set.resolve("default/pod-1").unwrap(), p1);
    assert_eq!(set.resolve("192.168.1.21").unwrap(), p1);
    assert_eq!(
        set.name_of([192, 168, 2, 21].into()).as_deref(),
        Some("default/pod-3")
    );
}

#[test]
fn an_ip_no_pod_has_is_still_a_destination() {
    let set = lab();
    let r = set.resolve("203.0.113.10").unwrap();
    assert_eq!(r, Resolved::Ip([203, 0, 113, 10].into()));
    assert_eq!(r.pod(), None);
    assert_eq!(
        serde_json::to_value(r).unwrap(),
        serde_json::json!({"pod": null, "namespace": null, "ip": "203.0.113.10", "node": null})
    );
    assert_eq!(
        serde_json::to_value(set.resolve("pod-3").unwrap()).unwrap(),
        serde_json::json!({"pod": "pod-3", "namespace": "default", "ip": "192.168.2.21", "node": "node-b"})
    );
}

#[test]
fn unknown_pod_lists_the_lab_pods_in_order() {
    let e = lab().resolve("pod-9").unwrap_err();
    assert_eq!(
        e.to_string(),
        "pod \"pod-9\" not found in the lab inventory (known: pod-1, pod-2, pod-3, pod-4); \
         try `podtrace lab status`"
    );
    assert!(matches!(
        lab().resolve("kube-system/pod-1"),
        Err(ResolveError::NotFound { .. })
    ));
}

#[test]
fn the_same_name_in_two_namespaces_must_be_qualified() {
    let set = PodSet::new(
        Source::File("pods.json".into()),
        vec![
            pod("b", "pod-1", Some([10, 0, 0, 2]), "n"),
            pod("a", "pod-1", Some([10, 0, 0, 1]), "n"),
            pod("a", "web", Some([10, 0, 0, 3]), "n"),
        ],
    );
    let e = set.resolve("pod-1").unwrap_err();
    assert_eq!(
        e.to_string(),
        "pod-1 exists in namespaces a and b: say a/pod-1"
    );
    assert_eq!(
        set.resolve("b/pod-1").unwrap().ip(),
        Ipv4Addr::new(10, 0, 0, 2)
    );
    // Errors list ambiguous names qualified, unique ones bare.
    let e = set.resolve("nope").unwrap_err();
    assert_eq!(
        e.to_string(),
        "pod \"nope\" not found in the pods file pods.json (known: a/pod-1, web, b/pod-1)"
    );
}

#[test]
fn a_big_cluster_lists_eight_and_counts_the_rest() {
    let pods = (0..30)
        .map(|i| pod("prod", &format!("api-{i:02}"), Some([10, 1, 0, i]), "n"))
        .collect();
    let set = PodSet::new(
        Source::Api {
            server: "https://k8s.example:443".into(),
            node: None,
        },
        pods,
    );
    let e = set.resolve("api-7").unwrap_err().to_string();
    assert!(
        e.starts_with(
            "pod \"api-7\" not found in the cluster at https://k8s.example:443 (known: api-07, "
        ),
        "{e}"
    );
    assert!(
        e.ends_with(" and 22 more); try `kubectl get pods -A`"),
        "{e}"
    );
}

#[test]
fn host_network_and_ipless_pods() {
    let set = PodSet::new(Source::File("k.json".into()), parse(KUBECTL_JSON).unwrap());
    // aws-node shares the node's IP: that IP names no pod...
    assert_eq!(set.by_ip([192, 168, 1, 5].into()), None);
    // ...but the pod itself resolves by name, flagged.
    let aws = set.resolve("aws-node-x7k2p").unwrap();
    assert!(aws.pod().unwrap().host_network);
    let e = set.resolve("pending-1").unwrap_err();
    assert_eq!(
        e.to_string(),
        "pod default/pending-1 has no IP in the pods file k.json (pending, or terminated)"
    );
    // A terminated pod's old IP is free: it names nobody.
    assert_eq!(
        set.resolve("192.168.2.30").unwrap(),
        Resolved::Ip([192, 168, 2, 30].into())
    );
}

#[test]
fn without_a_source_only_ips_resolve() {
    let mut set = PodSet::empty();
    assert_eq!(
        set.resolve("10.0.0.1").unwrap().ip(),
        Ipv4Addr::new(10, 0, 0, 1)
    );
    let e = set.resolve("pod-1").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot resolve pod \"pod-1\": no pod source"),
        "{e}"
    );
    assert!(set.take_note().is_some());
}

#[test]
fn an_ipv6_address_or_a_cidr_is_named_for_what_it_is() {
    let set = lab();
    for (spec, says) in [
        ("fd00::1", "\"fd00::1\" is an IPv6 address"),
        ("::1", "\"::1\" is an IPv6 address"),
        ("192.168.2.11/32", "\"192.168.2.11/32\" is a CIDR"),
        ("fd00::/64", "\"fd00::/64\" is a CIDR"),
    ] {
        let e = set.resolve(spec).unwrap_err();
        assert!(
            matches!(e, ResolveError::NotAnEndpoint { .. }),
            "{spec}: {e:?}"
        );
        assert!(e.to_string().starts_with(says), "{spec}: {e}");
    }
    // A namespace/name is still a pod.
    assert!(set.resolve("default/pod-1").is_ok());
    // With no pod source, too.
    let none = PodSet::new(Source::None, Vec::new());
    assert!(matches!(
        none.resolve("fd00::1"),
        Err(ResolveError::NotAnEndpoint { .. })
    ));
}
