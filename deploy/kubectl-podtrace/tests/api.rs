//! The plugin against a mock API server on 127.0.0.1 that serves a
//! real-shaped Pod (as `kubectl get pod -o json` shows one on EKS): node
//! lookup by name, namespace/name and IP, the debug pod it creates for that
//! node, its output streamed back, its exit code, and its deletion.

mod common;

use std::time::Duration;

use common::Mock;
use kubectl_podtrace::{
    cluster::{self, Located, Timing},
    manifest::{DebugPod, PingFlags, ping_args, pod_name, qualify},
};
use serde_json::{Value, json};

const NODE: &str = "ip-192-168-27-90.us-west-2.compute.internal";

/// `cluster::run` watches the process's SIGINT, SIGTERM and SIGHUP, and
/// one test sends this very process a SIGTERM: the tests that run the
/// plugin take turns, or another one's run would stop with 143.
static SIGNALS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A pod as the API returns it (fields of a real EKS pod, trimmed).
fn web_pod(node: Option<&str>) -> Value {
    let mut pod = json!({
      "apiVersion": "v1", "kind": "Pod",
      "metadata": {
        "name": "web-0", "namespace": "app", "uid": "8f2e4c1a-5b6d-4e7f-9a0b-1c2d3e4f5a6b",
        "resourceVersion": "1873521", "creationTimestamp": "2025-06-02T09:14:27Z",
        "generateName": "web-", "labels": {"app": "web", "statefulset.kubernetes.io/pod-name": "web-0"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web",
          "uid": "0d1e2f3a-4b5c-6d7e-8f90-a1b2c3d4e5f6", "controller": true, "blockOwnerDeletion": true}]
      },
      "spec": {
        "containers": [{"name": "nginx", "image": "public.ecr.aws/nginx/nginx:1.27",
          "ports": [{"containerPort": 80, "protocol": "TCP"}],
          "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
          "volumeMounts": [{"name": "kube-api-access-x7k2p", "readOnly": true,
            "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
          "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
          "imagePullPolicy": "IfNotPresent"}],
        "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default", "serviceAccount": "default",
        "securityContext": {}, "schedulerName": "default-scheduler",
        "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
          "effect": "NoExecute", "tolerationSeconds": 300}],
        "priority": 0, "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority"
      },
      "status": {
        "phase": "Running", "hostIP": "192.168.27.90", "hostIPs": [{"ip": "192.168.27.90"}],
        "podIP": "192.168.14.21", "podIPs": [{"ip": "192.168.14.21"}],
        "startTime": "2025-06-02T09:14:27Z", "qosClass": "Burstable",
        "conditions": [{"type": "Ready", "status": "True", "lastProbeTime": null,
          "lastTransitionTime": "2025-06-02T09:14:31Z"}],
        "containerStatuses": [{"name": "nginx", "ready": true, "restartCount": 0,
          "image": "public.ecr.aws/nginx/nginx:1.27", "imageID": "public.ecr.aws/nginx/nginx@sha256:0f04e4f646a3f14bf31d8bc8d885b6c951fdcf42589d06845f64d18aec6a3c4d",
          "containerID": "containerd://4a1b2c3d4e5f", "started": true,
          "state": {"running": {"startedAt": "2025-06-02T09:14:30Z"}}}]
      }
    });
    if let Some(node) = node {
        pod["spec"]["nodeName"] = node.into();
    }
    pod
}

fn status(code: u16, reason: &str, message: &str) -> (u16, String) {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "code": code});
    (code, body.to_string())
}

#[tokio::test]
async fn node_of_a_pod_by_name_namespace_and_ip() {
    let mock = Mock::start(|req| match req.target.as_str() {
        "/api/v1/namespaces/app/pods/web-0" => (200, web_pod(Some(NODE)).to_string()),
        "/api/v1/pods?&fieldSelector=status.podIP%3D192.168.14.21"
        | "/api/v1/pods?fieldSelector=status.podIP%3D192.168.14.21" => {
            let list = json!({"apiVersion": "v1", "kind": "PodList",
                              "metadata": {"resourceVersion": "1873600"},
                              "items": [web_pod(Some(NODE))]});
            (200, list.to_string())
        }
        _ => status(404, "NotFound", "not found"),
    });
    let client = mock.client();
    let want = Located {
        pod: "app/web-0".into(),
        node: NODE.into(),
    };
    assert_eq!(
        cluster::locate(&client, "app", "web-0").await.unwrap(),
        want
    );
    assert_eq!(
        cluster::locate(&client, "default", "app/web-0")
            .await
            .unwrap(),
        want
    );
    assert_eq!(
        cluster::locate(&client, "default", "192.168.14.21")
            .await
            .unwrap(),
        want
    );
    let e = cluster::locate(&client, "app", "web-1").await.unwrap_err();
    assert_eq!(e.to_string(), "getting pod app/web-1: not found (404)");
    let requests = mock.requests();
    assert_eq!(requests[0], "GET /api/v1/namespaces/app/pods/web-0");
    assert!(
        requests[2].contains("fieldSelector=status.podIP%3D192.168.14.21"),
        "{requests:?}"
    );
}

/// No API server behind the address: the reason, not kube's
/// "ServiceError: client error (Connect)".
#[tokio::test]
async fn an_unreachable_api_server_says_why() {
    // A port that was just free on 127.0.0.1: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).expect("client");
    let e = cluster::locate(&client, "app", "web-0").await.unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.starts_with(&format!(
            "getting pod app/web-0: {}: ",
            cluster::UNREACHABLE
        )),
        "{msg}"
    );
    assert!(msg.contains("Connection refused"), "{msg}");
    assert!(
        !msg.contains("ServiceError") && !msg.contains('\n'),
        "{msg}"
    );
}

#[tokio::test]
async fn unscheduled_and_forbidden_are_one_line() {
    let mock = Mock::start(|req| match req.target.as_str() {
        "/api/v1/namespaces/app/pods/web-0" => (200, web_pod(None).to_string()),
        _ => status(
            403,
            "Forbidden",
            "pods \"db-0\" is forbidden: User \"jane\" cannot get resource \"pods\" in API group \"\" in the namespace \"app\"",
        ),
    });
    let client = mock.client();
    let e = cluster::locate(&client, "app", "web-0").await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "pod app/web-0 is not scheduled on a node yet"
    );
    let e = cluster::locate(&client, "app", "db-0").await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "getting pod app/db-0: pods \"db-0\" is forbidden: User \"jane\" cannot get resource \
         \"pods\" in API group \"\" in the namespace \"app\" (403)"
    );
}

/// The debug pod for `ping web-0 db-0 -c 2` in namespace app.
fn debug_pod(node: &str) -> DebugPod {
    let flags = PingFlags {
        count: Some(2),
        ..PingFlags::default()
    };
    DebugPod {
        name: pod_name(node, 7),
        namespace: "podtrace".into(),
        node: node.into(),
        image: "registry.example/podtrace:0.1.0".into(),
        service_account: "podtrace".into(),
        args: ping_args("app/web-0", &qualify("app", "db-0"), &flags),
    }
}

fn timing() -> Timing {
    Timing {
        start: Duration::from_secs(5),
        poll: Duration::from_millis(10),
    }
}

/// The debug pod's status: `phase`, with the container `state`.
fn debug_status(created: &Value, phase: &str, state: Value) -> String {
    let mut pod = created.clone();
    pod["status"] = json!({"phase": phase, "containerStatuses": [{
        "name": "podtrace", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
        "state": state}]});
    pod.to_string()
}

/// An API server for the debug pod: creating it echoes it, reading it
/// gives `pod(created)` (the pod with a status), deleting it succeeds.
fn debug_pod_server(pod: impl Fn(&Value) -> String + Send + 'static) -> Mock {
    let mut created = Value::Null;
    Mock::start(move |req| match req.method.as_str() {
        "POST" => {
            created = serde_json::from_str(&req.body).unwrap();
            (201, created.to_string())
        }
        "GET" => (200, pod(&created)),
        "DELETE" => (200, created.to_string()),
        _ => status(404, "NotFound", "not found"),
    })
}

/// The plugin's last request deleted the debug pod.
fn assert_deleted(mock: &Mock) {
    assert!(
        mock.requests().last().unwrap().starts_with("DELETE "),
        "{:?}",
        mock.requests()
    );
}

#[tokio::test]
async fn looks_up_the_node_runs_there_streams_and_deletes() {
    let _turn = SIGNALS.lock().await;
    const OUTPUT: &str = "PING app/web-0 (192.168.14.21) -> app/db-0 (192.168.40.7) icmp\n\
                          --- summary ---\ndirect pod-to-pod: no NAT, no encapsulation\n";
    let mut gets = 0;
    let mut created = Value::Null;
    let mock = Mock::start(move |req| {
        let debug = "/api/v1/namespaces/podtrace/pods/podtrace-ip-192-168-27-90-00000007";
        let path = req.target.split('?').next().unwrap_or_default();
        match (req.method.as_str(), path) {
            ("GET", "/api/v1/namespaces/app/pods/web-0") => (200, web_pod(Some(NODE)).to_string()),
            ("POST", t) if t.starts_with("/api/v1/namespaces/podtrace/pods") => {
                created = serde_json::from_str(&req.body).unwrap();
                (201, created.to_string())
            }
            ("GET", t) if t == debug => {
                gets += 1;
                let body = match gets {
                    1 => debug_status(
                        &created,
                        "Pending",
                        json!({"waiting": {"reason": "ContainerCreating"}}),
                    ),
                    2 => debug_status(
                        &created,
                        "Running",
                        json!({"running": {"startedAt": "2025-06-02T10:00:00Z"}}),
                    ),
                    _ => debug_status(
                        &created,
                        "Succeeded",
                        json!({"terminated": {"exitCode": 0, "reason": "Completed"}}),
                    ),
                };
                (200, body)
            }
            ("GET", t) if t == format!("{debug}/log") => (200, OUTPUT.to_owned()),
            ("DELETE", t) if t == debug => (200, created.to_string()),
            _ => status(404, "NotFound", "not found"),
        }
    });
    let client = mock.client();
    let src = cluster::locate(&client, "app", "web-0").await.unwrap();
    let pod = debug_pod(&src.node);
    let mut out = Vec::new();
    let code = cluster::run(&client, &pod, timing(), &mut out)
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert_eq!(String::from_utf8(out).unwrap(), OUTPUT);

    let requests = mock.requests();
    let debug = "/api/v1/namespaces/podtrace/pods/podtrace-ip-192-168-27-90-00000007";
    assert_eq!(requests[0], "GET /api/v1/namespaces/app/pods/web-0");
    assert!(
        requests[1].starts_with("POST /api/v1/namespaces/podtrace/pods"),
        "{requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with(&format!("GET {debug}/log?"))
                && r.contains("follow=true")
                && r.contains("container=podtrace")),
        "{requests:?}"
    );
    let last = requests.last().unwrap();
    assert!(last.starts_with(&format!("DELETE {debug}")), "{requests:?}");

    // What the API got is the plugin's pod on the looked-up node.
    let body = &mock.seen.lock().unwrap()[1].body;
    let sent: Value = serde_json::from_str(body).unwrap();
    assert_eq!(sent["spec"]["nodeName"], NODE);
    assert_eq!(
        sent["spec"]["containers"][0]["args"],
        json!(["ping", "app/web-0", "app/db-0", "--count", "2"])
    );
    assert_eq!(
        sent["spec"]["containers"][0]["securityContext"]["privileged"],
        true
    );
    assert_eq!(sent["spec"]["hostNetwork"], true);
    assert_eq!(sent["spec"]["hostPID"], true);
    assert_eq!(sent["spec"]["serviceAccountName"], "podtrace");
}

#[tokio::test]
async fn a_pod_that_cannot_start_is_one_line_and_deleted() {
    let _turn = SIGNALS.lock().await;
    let mock = debug_pod_server(|created| {
        debug_status(
            created,
            "Pending",
            json!({"waiting": {"reason": "ErrImagePull",
                    "message": "failed to pull image \"registry.example/podtrace:0.1.0\": not found"}}),
        )
    });
    let pod = debug_pod(NODE);
    let e = cluster::run(&mock.client(), &pod, timing(), &mut Vec::new())
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "debug pod podtrace-ip-192-168-27-90-00000007 cannot start: ErrImagePull: failed to \
         pull image \"registry.example/podtrace:0.1.0\": not found"
    );
    assert_deleted(&mock);
}

#[tokio::test]
async fn exit_code_of_podtrace_is_the_plugins() {
    let _turn = SIGNALS.lock().await;
    let mut created = Value::Null;
    let mock = Mock::start(
        move |req| match (req.method.as_str(), req.target.contains("/log")) {
            ("POST", _) => {
                created = serde_json::from_str(&req.body).unwrap();
                (201, created.to_string())
            }
            ("GET", true) => (200, "no reply\n".into()),
            ("GET", false) => (
                200,
                debug_status(
                    &created,
                    "Failed",
                    json!({"terminated": {"exitCode": 1, "reason": "Error"}}),
                ),
            ),
            ("DELETE", _) => (200, created.to_string()),
            _ => status(404, "NotFound", "not found"),
        },
    );
    let code = cluster::run(&mock.client(), &debug_pod(NODE), timing(), &mut Vec::new())
        .await
        .unwrap();
    assert_eq!(code, 1);
}

/// SIGTERM (a cancelled CI job, `timeout`) while the pod is still
/// starting: the privileged pod is deleted, as on Ctrl-C, and the exit
/// code is the shell's for SIGTERM.
#[tokio::test]
async fn sigterm_deletes_the_debug_pod_too() {
    let _turn = SIGNALS.lock().await;
    let mock = debug_pod_server(|created| {
        debug_status(
            created,
            "Pending",
            json!({"waiting": {"reason": "ContainerCreating"}}),
        )
    });
    let pod = debug_pod(NODE);
    let client = mock.client();
    let slow = Timing {
        start: Duration::from_secs(30),
        poll: Duration::from_millis(20),
    };
    let run = tokio::spawn(async move { cluster::run(&client, &pod, slow, &mut Vec::new()).await });
    // Once the pod is created the plugin is waiting, its handlers set.
    let t0 = std::time::Instant::now();
    while !mock.requests().iter().any(|r| r.starts_with("GET ")) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{:?}",
            mock.requests()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // SAFETY: kill(2) of this very process; the plugin's handler takes it.
    unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
    let code = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("run returned after SIGTERM")
        .unwrap()
        .unwrap();
    assert_eq!(code, 143);
    assert_deleted(&mock);
}

/// The kubelet refuses the pod before any container runs (OutOfpods: the
/// node is at its max pods, as VPC CNI nodes often are): one line with
/// the kubelet's reason, not a log stream of nothing and a timeout.
#[tokio::test]
async fn a_pod_the_kubelet_refuses_says_why() {
    let _turn = SIGNALS.lock().await;
    let mock = debug_pod_server(|created| {
        let mut pod = created.clone();
        pod["status"] = json!({"phase": "Failed", "reason": "OutOfpods",
            "message": "Node didn't have enough resource: pods, requested: 1, used: 29, capacity: 29"});
        pod.to_string()
    });
    let pod = debug_pod(NODE);
    let e = cluster::run(&mock.client(), &pod, timing(), &mut Vec::new())
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "debug pod podtrace-ip-192-168-27-90-00000007 cannot start: OutOfpods: Node didn't have \
         enough resource: pods, requested: 1, used: 29, capacity: 29"
    );
    assert_deleted(&mock);
}
