//! The OCI image of `cargo xtask image` (issue 9) under podman on the lab,
//! the way a cluster runs it: as a node debug pod (privileged, host PID,
//! the node's netns, host paths under /host) it prints the same path
//! summary as the host binary; in a pod's netns it traces the pod's eth0
//! and says it sees only the pod's side; bad cases are one line.
//!
//! podman runs with runc, cgroupfs and explicit ulimits (crun fails on
//! this host's cgroup layout). The image is built once per run of this
//! binary; `cargo xtask image` installs podman first, so nothing is
//! skipped: a machine where the image cannot be built fails here.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::TcpListener,
    path::Path,
    process::{Command, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use podtrace_tests::{LabGuard, netns_exec, process::podtrace_bin, unique};
use tracer::netns::Netns;

const TAG: &str = "localhost/podtrace:test";

/// Builds the image once (`cargo xtask image`), failing loudly if it
/// cannot be built.
fn image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("root");
        let started = Instant::now();
        let out = Command::new("cargo")
            .current_dir(root)
            .args(["xtask", "image", "--tag", TAG])
            .stdin(Stdio::null())
            .output()
            .expect("run cargo xtask image");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "IMAGE NOT BUILT (podman, musl or the build failed): this test does not skip\n\
             {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let size = stdout
            .lines()
            .rev()
            .find(|l| l.starts_with("image "))
            .unwrap_or("?");
        eprintln!("{size} (cargo xtask image took {:.0?})", started.elapsed());
    });
    TAG
}

/// `podman run --rm` as it works on this host: runc, cgroupfs, and
/// explicit ulimits (crun fails on its cgroup layout). Options follow.
fn podman_run_cmd() -> Command {
    let mut c = Command::new("podman");
    c.args([
        "--runtime",
        "runc",
        "--cgroup-manager=cgroupfs",
        "run",
        "--rm",
    ])
    .args([
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1000:1000",
    ]);
    c
}

/// `podman run --rm` of the image with `opts`, then podtrace's `args`.
fn podman_run(opts: &[&str], args: &[&str]) -> Output {
    let image = image();
    podman_run_cmd()
        .args(opts)
        .arg(image)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run podman")
}

/// The options that make a container a node debug pod of lab node `node`:
/// privileged, host PID, the node's netns, the lab's netns folder and
/// inventory where a debug pod sees the host's (/host).
fn node_debug(node: &str) -> Vec<String> {
    [
        "--privileged",
        "--pid=host",
        &format!("--network=ns:/run/netns/{node}"),
        "-v",
        "/run/netns:/host/run/netns",
        "-v",
        "/run/podtrace:/host/run/podtrace",
    ]
    .map(String::from)
    .to_vec()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The line after `--- summary ---`: the path verdict with the egress ENI.
fn verdict(stdout: &str) -> &str {
    stdout
        .lines()
        .skip_while(|l| *l != "--- summary ---")
        .nth(1)
        .unwrap_or_else(|| panic!("no summary in:\n{stdout}"))
}

#[test]
fn node_debug_pod_prints_the_host_binarys_path_summary() {
    image(); // before the lab lock: the build may take minutes
    let lab = LabGuard::up();
    let opts = node_debug("node-a");
    // pod-1 leaves node-a through ens5, pod-2 through ens6 (issue 3).
    for src in ["pod-1", "pod-2"] {
        let host = Command::new(podtrace_bin())
            .args(["ping", src, "pod-3", "-c", "2"])
            .output()
            .expect("run podtrace");
        let (host_out, host_err) = text(&host);
        assert!(host.status.success(), "host: {host_out}{host_err}");

        let boxed = podman_run(&strs(&opts), &["ping", src, "pod-3", "-c", "2"]);
        let (out, err) = text(&boxed);
        assert!(boxed.status.success(), "container: {out}{err}");
        eprintln!("--- {src} -> pod-3 on the host:\n{host_out}--- in the container:\n{out}");
        // Inside node-a's netns only node-a's hooks are there: the hops
        // differ (node-b's are missing), the verdict must not.
        assert_eq!(verdict(&out), verdict(&host_out));
        let eni = &lab.pod(src).eni;
        assert!(
            verdict(&out).ends_with(&format!("leaves node-a via {eni}")),
            "{out}"
        );
        let hops: Vec<&str> = out
            .lines()
            .filter(|l| l.trim_start().starts_with('+'))
            .collect();
        assert!(
            hops.len() >= 4 && hops.iter().all(|h| h.contains(" node-a ")),
            "only node-a's hooks are visible from node-a:\n{out}"
        );
        assert!(out.contains("2 sent, 2 received"), "{out}");
    }

    // The same, as JSON: the contract scripts read.
    let boxed = podman_run(
        &strs(&opts),
        &["ping", "pod-1", "pod-3", "-c", "1", "--json"],
    );
    let (out, err) = text(&boxed);
    assert!(boxed.status.success(), "{out}{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(doc["summary"]["path"], "direct", "{doc:#}");
    assert_eq!(doc["summary"]["egress_eni"], "ens5");
    assert_eq!(doc["src"]["node"], "node-a");
    let hops = doc["probes"][0]["hops"].as_array().expect("hops");
    assert!(
        !hops.is_empty() && hops.iter().all(|h| h["node"] == "node-a"),
        "{doc:#}"
    );
}

#[test]
fn in_a_pods_netns_it_traces_eth0_and_says_it_is_the_pod_side() {
    image(); // before the lab lock: the build may take minutes
    let lab = LabGuard::up();
    let pod = lab.pod("pod-1");
    let dst = lab.pod("pod-3").ip.to_string();
    let dir = std::env::temp_dir().join(unique("img"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ready = dir.join("ready");
    let network = format!("--network=ns:/run/netns/{}", pod.netns);
    let volume = format!("{}:/out", dir.display());
    let mut child = podman_run_cmd()
        .args(["--privileged", &network, "-v", &volume, image()])
        .args([
            "capture",
            "-c",
            "4",
            "--filter-proto",
            "icmp",
            "--ready-file",
            "/out/ready",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run podman");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            let out = child.wait_with_output().expect("output");
            panic!(
                "capture ended ({status}) before it was ready: {:?}",
                text(&out)
            );
        }
        assert!(Instant::now() < deadline, "capture never got ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let hooks = std::fs::read_to_string(&ready).expect("ready file");
    netns_exec(
        &pod.netns,
        &["ping", "-c", "2", "-i", "0.2", "-W", "1", &dst],
    );
    let out = wait_with_timeout(child, Duration::from_secs(20));
    let _ = std::fs::remove_dir_all(&dir);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(hooks.trim(), "host/eth0", "only the pod's eth0 is hooked");
    assert_eq!(
        stderr.matches("the view shows only the pod's side").count(),
        1,
        "said once:\n{stderr}"
    );
    assert_eq!(
        stdout.lines().filter(|l| l.contains("eth0")).count(),
        4,
        "{stdout}"
    );
    assert!(stdout.contains(&dst), "{stdout}");
}

fn wait_with_timeout(mut child: std::process::Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!("podman did not finish: {:?}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().expect("output")
}

/// Exit code 2 and exactly one line on stderr that contains `want`.
fn one_line(out: &Output, want: &str) {
    let (stdout, stderr) = text(out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line, not:\n{stderr}");
    assert!(lines[0].contains(want), "{want:?} not in {:?}", lines[0]);
}

#[test]
fn bad_cases_are_one_line() {
    image(); // before the lab lock: the build may take minutes
    let _lab = LabGuard::up();

    // Root in a container without privileges: no CAP_BPF, no CAP_NET_ADMIN.
    let unprivileged: Vec<String> = node_debug("node-a")
        .into_iter()
        .filter(|o| o != "--privileged")
        .collect();
    let out = podman_run(&strs(&unprivileged), &["ping", "pod-1", "pod-3", "-c", "1"]);
    one_line(
        &out,
        "podtrace needs CAP_BPF and CAP_NET_ADMIN and has not: this container is not privileged",
    );

    // No BTF on the node: the programs use no CO-RE, so they load all the
    // same and there is nothing to say (a load failure without BTF would
    // name it). Hidden from the container, and from the host binary by a
    // tmpfs over /sys/kernel/btf in a mount namespace of its own.
    let mut no_btf = node_debug("node-a");
    no_btf.extend(["--security-opt".into(), "mask=/sys/kernel/btf".into()]);
    let out = podman_run(&strs(&no_btf), &["ping", "pod-1", "pod-3", "-c", "1"]);
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success() && stderr.is_empty(),
        "{stdout}{stderr}"
    );
    let script = format!(
        "mount -t tmpfs none /sys/kernel/btf && test ! -e /sys/kernel/btf/vmlinux && \
         exec {} ping pod-1 pod-3 -c 1",
        podtrace_bin().display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare");
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "without BTF on the host: {stdout}{stderr}"
    );
    assert!(
        verdict(&stdout).starts_with("direct pod-to-pod"),
        "{stdout}"
    );

    // The API refuses: the kubelet's kubeconfig under /host points at an API
    // server (inside node-a's netns, on its loopback) that says 403.
    let dir = std::env::temp_dir().join(unique("kubelet"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let port = forbidding_api_server("node-a");
    std::fs::write(dir.join("kubeconfig"), kubeconfig(port)).expect("kubeconfig");
    let mut opts = node_debug("node-a");
    opts.truncate(opts.len() - 2); // no lab inventory: the API is the source
    opts.extend([
        "-v".into(),
        format!("{}:/host/var/lib/kubelet", dir.display()),
    ]);
    let out = podman_run(&strs(&opts), &["ping", "pod-1", "pod-3", "-c", "1"]);
    let _ = std::fs::remove_dir_all(&dir);
    one_line(
        &out,
        "the Kubernetes API refused to list pods (403 Forbidden): user \"system:node:node-a\"",
    );

    // No pod source at all: IPs only, said once, and the ping works.
    let mut opts = node_debug("node-a");
    opts.truncate(opts.len() - 2);
    let (a, b) = (
        _lab.pod("pod-1").ip.to_string(),
        _lab.pod("pod-3").ip.to_string(),
    );
    let out = podman_run(&strs(&opts), &["ping", &a, &b, "-c", "1"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(
        stderr.matches("no pod source: showing IPs only").count(),
        1,
        "{stderr}"
    );
    assert!(
        verdict(&stdout).starts_with("direct pod-to-pod"),
        "{stdout}"
    );
}

/// A kubeconfig for an API server on 127.0.0.1:`port`.
fn kubeconfig(port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{port}\n\
         users:\n- name: system:node:node-a\n  user:\n    token: t\ncontexts:\n- name: c\n  context:\n    \
         cluster: c\n    user: system:node:node-a\ncurrent-context: c\n"
    )
}

/// An API server listening on the loopback of `netns` that answers every
/// request with 403; serves until the test binary exits.
fn forbidding_api_server(netns: &str) -> u16 {
    let ns = Netns::open(netns).expect("open netns");
    let listener = ns
        .run(|| {
            // The loopback of a lab node may be down: bring it up first.
            let _ = Command::new("ip")
                .args(["-n", netns, "link", "set", "lo", "up"])
                .status();
            TcpListener::bind("127.0.0.1:0")
        })
        .expect("enter netns")
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"pods is forbidden: User \"system:node:node-a\" cannot list resource \"pods\" in API group \"\" at the cluster scope","reason":"Forbidden","code":403}"#;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let _ = write!(
                stream,
                "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}
