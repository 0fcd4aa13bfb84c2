//! The API source against a local API server: plain HTTP on 127.0.0.1,
//! a kubeconfig pointing at it, real-shaped PodList and Status answers.

use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use super::{Choice, Source, SourceError, load_choice};

/// A pod as the API server lists it: no per-item kind/apiVersion, and
/// the noise of a real object.
fn api_pod(name: &str, ns: &str, node: &str, ip: &str) -> String {
    format!(
        r#"{{"metadata": {{"name": "{name}", "namespace": "{ns}", "uid": "u-{name}",
            "resourceVersion": "4711", "creationTimestamp": "2025-03-01T10:00:00Z",
            "labels": {{"app": "web"}}, "managedFields": [{{"manager": "kubelet"}}]}},
          "spec": {{"nodeName": "{node}", "containers": [{{"name": "c", "image": "nginx"}}],
                   "tolerations": [{{"key": "node.kubernetes.io/not-ready", "operator": "Exists"}}]}},
          "status": {{"phase": "Running", "hostIP": "192.168.1.5", "hostIPs": [{{"ip": "192.168.1.5"}}],
                     "podIP": "{ip}", "podIPs": [{{"ip": "{ip}"}}], "qosClass": "BestEffort",
                     "startTime": "2025-03-01T10:00:01Z"}}}}"#
    )
}

fn pod_list(items: &[String], continue_token: Option<&str>) -> String {
    let cont = continue_token.map_or(String::new(), |t| format!(r#", "continue": "{t}""#));
    format!(
        r#"{{"kind": "PodList", "apiVersion": "v1",
            "metadata": {{"resourceVersion": "98765"{cont}}}, "items": [{}]}}"#,
        items.join(",")
    )
}

const FORBIDDEN: &str = r#"{"kind": "Status", "apiVersion": "v1", "metadata": {},
  "status": "Failure",
  "message": "pods is forbidden: User \"system:serviceaccount:default:default\" cannot list resource \"pods\" in API group \"\" at the cluster scope",
  "reason": "Forbidden", "details": {"kind": "pods"}, "code": 403}"#;

/// A minimal HTTP/1.1 API server: answers each request with `answer(path
/// and query)` and closes the connection; records what it was asked.
struct ApiServer {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl ApiServer {
    /// Serves on a plain thread (blocking sockets), so the client under
    /// test has the test's runtime to itself.
    fn start(answer: impl Fn(&str) -> (u16, String) + Send + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            // Bounded: a test makes a handful of requests; the thread ends
            // when the listener's accept fails or the count runs out.
            for sock in listener.incoming().take(16) {
                let Ok(mut sock) = sock else { return };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).into_owned();
                let target = head.split(' ').nth(1).unwrap_or("").to_owned();
                seen.lock().unwrap().push(head);
                let (code, body) = answer(&target);
                let reason = if code == 200 { "OK" } else { "Forbidden" };
                let reply = format!(
                    "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(reply.as_bytes());
            }
        });
        Self { url, requests }
    }

    /// A kubeconfig for this server, with a bearer token.
    fn kubeconfig(&self, tag: &str) -> TempFile {
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {}\n\
             users:\n- name: tester\n  user:\n    token: t0ken\ncontexts:\n- name: local\n  \
             context:\n    cluster: local\n    user: tester\ncurrent-context: local\n",
            self.url
        );
        TempFile::new(tag, &yaml)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// A file removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("podtrace-{tag}-{}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test]
async fn lists_all_pods_page_by_page() {
    let server = ApiServer::start(|target| {
        if !target.starts_with("/api/v1/pods?") {
            return (404, String::new());
        }
        if target.contains("continue=page2") {
            let items = [api_pod("pod-3", "default", "node-b", "192.168.2.21")];
            (200, pod_list(&items, None))
        } else {
            let items = [
                api_pod("pod-1", "default", "node-a", "192.168.1.21"),
                api_pod("pod-2", "team", "node-a", "192.168.1.37"),
            ];
            (200, pod_list(&items, Some("page2")))
        }
    });
    let kc = server.kubeconfig("kc-list");
    let set = load_choice(Choice::Kubeconfig(kc.0.clone()), None)
        .await
        .unwrap();
    assert_eq!(
        set.source(),
        &Source::Api {
            server: server.url.clone(),
            node: None
        }
    );
    let p2 = set.resolve("pod-2").unwrap();
    assert_eq!(p2.to_string(), "team/pod-2 (192.168.1.37, node-a)");
    assert_eq!(
        set.resolve("192.168.2.21").unwrap().pod().unwrap().name,
        "pod-3"
    );

    let reqs = server.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert!(reqs[0].starts_with("GET /api/v1/pods?"), "{}", reqs[0]);
    assert!(reqs[0].contains("limit=500"), "{}", reqs[0]);
    assert!(reqs[1].contains("continue=page2"), "{}", reqs[1]);
    assert!(
        reqs[0]
            .to_ascii_lowercase()
            .contains("authorization: bearer t0ken"),
        "{}",
        reqs[0]
    );
}

#[tokio::test]
async fn one_nodes_pods_through_a_field_selector() {
    let server = ApiServer::start(|_| {
        let items = [api_pod("pod-1", "default", "node-a", "192.168.1.21")];
        (200, pod_list(&items, None))
    });
    let kc = server.kubeconfig("kc-node");
    let set = load_choice(Choice::Kubeconfig(kc.0.clone()), Some("node-a"))
        .await
        .unwrap();
    assert_eq!(set.pods().len(), 1);
    let req = &server.requests()[0];
    assert!(
        req.contains("fieldSelector=spec.nodeName%3Dnode-a"),
        "{req}"
    );
    // Errors say the list was one node's.
    let e = set.resolve("pod-3").unwrap_err().to_string();
    assert!(
        e.contains(&format!("the pods of node node-a at {}", server.url)),
        "{e}"
    );
}

#[tokio::test]
async fn forbidden_is_one_line_naming_the_service_account() {
    let server = ApiServer::start(|_| (403, FORBIDDEN.to_owned()));
    let kc = server.kubeconfig("kc-403");
    let e = load_choice(Choice::Kubeconfig(kc.0.clone()), None)
        .await
        .unwrap_err();
    assert!(matches!(e, SourceError::Forbidden { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "the Kubernetes API refused to list pods (403 Forbidden): \
         the service account default/default needs get/list/watch on pods"
    );
}

#[tokio::test]
async fn unreachable_and_broken_kubeconfigs() {
    // Bind then drop: a port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kc = TempFile::new(
        "kc-down",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{port}\n\
             users:\n- name: u\n  user: {{}}\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n\
             current-context: x\n"
        ),
    );
    let e = load_choice(Choice::Kubeconfig(kc.0.clone()), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!(
            "cannot reach the Kubernetes API at http://127.0.0.1:{port} (from kubeconfig {}): ",
            kc.0.display()
        )),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");

    let e = load_choice(Choice::Kubeconfig("/nonexistent/kubeconfig".into()), None)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "kubeconfig /nonexistent/kubeconfig: cannot read /nonexistent/kubeconfig: No such file or \
         directory (os error 2)"
    );

    // A YAML error's excerpt of the file stays out of the one line.
    let bad = TempFile::new("kc-yaml", "garbage: [\n");
    let e = load_choice(Choice::Kubeconfig(bad.0.clone()), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!("kubeconfig {}: ", bad.0.display())),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");
}

#[tokio::test]
async fn an_answer_that_is_no_pod_list() {
    let server = ApiServer::start(|_| (200, "<html>proxy login</html>".to_owned()));
    let kc = server.kubeconfig("kc-html");
    let e = load_choice(Choice::Kubeconfig(kc.0.clone()), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!(
            "the Kubernetes API at {} sent a pod list podtrace cannot read: ",
            server.url
        )),
        "{e}"
    );
}
