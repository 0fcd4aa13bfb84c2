//! The node debug pod `kubectl podtrace` creates, and podtrace's arguments
//! in it: pure functions, tested against deploy/*.yaml.
//!
//! The pod is what `kubectl debug node/NODE --profile=sysadmin` makes (host
//! network, PID and IPC namespaces, the node's root at /host, privileged),
//! plus what podtrace uses when it is there: the `podtrace` service account
//! of deploy/rbac.yaml (pod names from the API) and `$NODE_NAME`.

use serde_json::{Value, json};

/// The container's name in the debug pod.
pub const CONTAINER: &str = "podtrace";

/// The image `cargo xtask image` builds, as deploy/daemonset.yaml names it.
pub const DEFAULT_IMAGE: &str = "localhost/podtrace:latest";

/// The namespace and service account of deploy/rbac.yaml.
pub const DEFAULT_NAMESPACE: &str = "podtrace";

/// The service account of deploy/rbac.yaml.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "podtrace";

/// What the debug pod is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebugPod {
    /// Pod name (see [`pod_name`]).
    pub name: String,
    /// Namespace of the debug pod (the service account's).
    pub namespace: String,
    /// The node to run on.
    pub node: String,
    /// podtrace's image.
    pub image: String,
    /// Service account (read-only pod access, deploy/rbac.yaml).
    pub service_account: String,
    /// podtrace's arguments (`ping SRC DST ...`).
    pub args: Vec<String>,
}

/// How long a debug pod may run before the kubelet stops it.
pub const ACTIVE_DEADLINE_S: u64 = 24 * 3600;

impl DebugPod {
    /// The Pod object to create.
    pub fn to_json(&self) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {
                    "app.kubernetes.io/name": "podtrace",
                    "app.kubernetes.io/component": "debug",
                },
            },
            "spec": {
                "nodeName": self.node,
                "hostNetwork": true,
                "hostPID": true,
                "hostIPC": true,
                "dnsPolicy": "ClusterFirstWithHostNet",
                "restartPolicy": "Never",
                // A safety net for a plugin killed outright (SIGKILL, a
                // lost laptop): the privileged pod does not outlive a day.
                "activeDeadlineSeconds": ACTIVE_DEADLINE_S,
                "serviceAccountName": self.service_account,
                "tolerations": [{"operator": "Exists"}],
                "containers": [{
                    "name": CONTAINER,
                    "image": self.image,
                    "imagePullPolicy": "IfNotPresent",
                    "args": self.args,
                    "env": [{
                        "name": "NODE_NAME",
                        "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}},
                    }],
                    "securityContext": {"privileged": true},
                    "volumeMounts": [{"name": "host-root", "mountPath": "/host"}],
                }],
                "volumes": [{"name": "host-root", "hostPath": {"path": "/"}}],
            },
        })
    }
}

/// A name for a debug pod on `node`: `podtrace-<node's first label>-<suffix>`,
/// a DNS-1123 label of at most 63 characters.
pub fn pod_name(node: &str, suffix: u32) -> String {
    let host: String = node
        .split('.')
        .next()
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let host = host.trim_matches('-');
    if host.is_empty() {
        format!("podtrace-{suffix:08x}")
    } else {
        format!("podtrace-{host}-{suffix:08x}")
    }
}

/// A pod given as `name` means `namespace/name`; `ns/name`, IPs and
/// hostnames (anything with a `.` or `:`) stay as they are.
pub fn qualify(namespace: &str, spec: &str) -> String {
    if spec.contains(['/', '.', ':']) {
        spec.to_owned()
    } else {
        format!("{namespace}/{spec}")
    }
}

/// `podtrace ping`'s flags that the plugin passes on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PingFlags {
    /// `-c`.
    pub count: Option<u16>,
    /// `-i`.
    pub interval: Option<String>,
    /// `-W`.
    pub timeout: Option<String>,
    /// `--proto`.
    pub proto: Option<String>,
    /// `--port`.
    pub port: Option<u16>,
    /// `--json`.
    pub json: bool,
}

/// podtrace's arguments for `ping SRC DST` with `flags`; SRC and DST are
/// already qualified.
pub fn ping_args(src: &str, dst: &str, flags: &PingFlags) -> Vec<String> {
    let mut v = vec!["ping".to_owned(), src.to_owned(), dst.to_owned()];
    let mut push = |flag: &str, value: Option<String>| {
        if let Some(value) = value {
            v.extend([flag.to_owned(), value]);
        }
    };
    push("--count", flags.count.map(|c| c.to_string()));
    push("--interval", flags.interval.clone());
    push("--timeout", flags.timeout.clone());
    push("--proto", flags.proto.clone());
    push("--port", flags.port.map(|p| p.to_string()));
    if flags.json {
        v.push("--json".to_owned());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        let n = pod_name("ip-192-168-27-90.us-west-2.compute.internal", 0xbeef);
        assert_eq!(n, "podtrace-ip-192-168-27-90-0000beef");
        let long = pod_name(&"N".repeat(200), u32::MAX);
        assert!(long.len() <= 63, "{long}");
        assert!(long.starts_with("podtrace-nnnn") && long.ends_with("-ffffffff"));
        assert_eq!(pod_name("...", 1), "podtrace-00000001");
    }

    #[test]
    fn bare_pod_names_get_the_namespace() {
        assert_eq!(qualify("app", "web-0"), "app/web-0");
        assert_eq!(qualify("app", "db/pg-0"), "db/pg-0");
        assert_eq!(qualify("app", "192.168.1.21"), "192.168.1.21");
        assert_eq!(qualify("app", "example.com"), "example.com");
    }

    #[test]
    fn flags_pass_through_in_order() {
        let flags = PingFlags {
            count: Some(5),
            proto: Some("tcp".into()),
            port: Some(8080),
            json: true,
            ..PingFlags::default()
        };
        assert_eq!(
            ping_args("app/a", "app/b", &flags),
            [
                "ping", "app/a", "app/b", "--count", "5", "--proto", "tcp", "--port", "8080",
                "--json"
            ]
        );
        assert_eq!(
            ping_args("a/b", "1.2.3.4", &PingFlags::default()),
            ["ping", "a/b", "1.2.3.4"]
        );
    }
}
