//! The API calls: find a pod's node, then run a debug pod there to the end
//! (create, wait for it to start, stream its log, read its exit code) and
//! delete it on every way out.

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use futures_util::AsyncReadExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, LogParams, PostParams},
};
use tokio::io::{AsyncWrite, AsyncWriteExt as _};

use crate::manifest::{CONTAINER, DebugPod};

/// A pod found by name or IP: where it runs and what to call it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    /// `namespace/name`.
    pub pod: String,
    /// `spec.nodeName`.
    pub node: String,
}

/// Finds the node of `spec`: `name` (in `namespace`), `namespace/name`, or
/// a pod IP (any namespace).
pub async fn locate(client: &Client, namespace: &str, spec: &str) -> Result<Located> {
    let pod = if let Ok(ip) = spec.parse::<std::net::Ipv4Addr>() {
        let pods = Api::<Pod>::all(client.clone())
            .list(&ListParams::default().fields(&format!("status.podIP={ip}")))
            .await
            .map_err(|e| one_line(&e, &format!("listing pods with IP {ip}")))?;
        // Host-network pods share the node's IP; a pod of its own is meant.
        pods.items
            .into_iter()
            .find(|p| {
                !p.spec
                    .as_ref()
                    .and_then(|s| s.host_network)
                    .unwrap_or(false)
            })
            .ok_or_else(|| anyhow!("no pod has IP {ip}"))?
    } else {
        let (ns, name) = spec.split_once('/').unwrap_or((namespace, spec));
        Api::<Pod>::namespaced(client.clone(), ns)
            .get(name)
            .await
            .map_err(|e| one_line(&e, &format!("getting pod {ns}/{name}")))?
    };
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let node = pod
        .spec
        .and_then(|s| s.node_name)
        .ok_or_else(|| anyhow!("pod {ns}/{name} is not scheduled on a node yet"))?;
    Ok(Located {
        pod: format!("{ns}/{name}"),
        node,
    })
}

/// How long to wait.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// For the debug pod to start (pull the image, be scheduled).
    pub start: Duration,
    /// Between two looks at the pod.
    pub poll: Duration,
}

/// Creates the debug pod, streams its output to `out`, deletes it, and
/// returns podtrace's exit code. Ctrl-C, SIGTERM and SIGHUP delete it too
/// (exit 130, 143, 129).
pub async fn run(
    client: &Client,
    pod: &DebugPod,
    timing: Timing,
    out: &mut (impl AsyncWrite + Unpin),
) -> Result<i32> {
    let api = Api::<Pod>::namespaced(client.clone(), &pod.namespace);
    let object: Pod =
        serde_json::from_value(pod.to_json()).context("building the debug pod object")?;
    api.create(&PostParams::default(), &object)
        .await
        .map_err(|e| {
            one_line(
                &e,
                &format!("creating debug pod {}/{}", pod.namespace, pod.name),
            )
        })?;
    let result = tokio::select! {
        r = follow(&api, &pod.name, timing, out) => r,
        code = stopped() => code,
    };
    let deleted = api
        .delete(&pod.name, &DeleteParams::default().grace_period(0))
        .await;
    if let Err(e) = deleted {
        eprintln!(
            "kubectl-podtrace: deleting debug pod {}/{}: {}",
            pod.namespace,
            pod.name,
            one_line(&e, "")
        );
    }
    result
}

/// Waits for Ctrl-C, SIGTERM (a CI job cancelled, `timeout`) or SIGHUP
/// (the terminal closed) and returns the shell's exit code for it: each
/// of them must delete the privileged pod, not only Ctrl-C.
async fn stopped() -> Result<i32> {
    use tokio::signal::unix::{SignalKind, signal};
    let (int, term, hup) = (
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
    );
    let mut on_int = signal(int).context("watching for SIGINT")?;
    let mut on_term = signal(term).context("watching for SIGTERM")?;
    let mut on_hup = signal(hup).context("watching for SIGHUP")?;
    let got = tokio::select! {
        _ = on_int.recv() => int,
        _ = on_term.recv() => term,
        _ = on_hup.recv() => hup,
    };
    Ok(128 + got.as_raw_value())
}

async fn follow(
    api: &Api<Pod>,
    name: &str,
    timing: Timing,
    out: &mut (impl AsyncWrite + Unpin),
) -> Result<i32> {
    wait_started(api, name, timing).await?;
    let params = LogParams {
        container: Some(CONTAINER.into()),
        follow: true,
        ..LogParams::default()
    };
    let mut log = api
        .log_stream(name, &params)
        .await
        .map_err(|e| one_line(&e, "reading the debug pod's output"))?;
    let mut buf = vec![0u8; 8192];
    loop {
        let n = log.read(&mut buf).await.context("reading the log stream")?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).await?;
        out.flush().await?;
    }
    // The stream ends when the container does; its status may lag.
    for _ in 0..50 {
        let pod = api
            .get(name)
            .await
            .map_err(|e| one_line(&e, "reading the debug pod"))?;
        if let Some(code) = exit_code(&pod) {
            return Ok(code);
        }
        tokio::time::sleep(timing.poll).await;
    }
    bail!("the debug pod's output ended but podtrace has not exited")
}

/// Waits until the container runs or has run; fails at once on a problem
/// that will not go away by waiting (image pull, config, scheduling).
async fn wait_started(api: &Api<Pod>, name: &str, timing: Timing) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timing.start;
    loop {
        let pod = api
            .get(name)
            .await
            .map_err(|e| one_line(&e, "waiting for the debug pod"))?;
        match started(&pod) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(why) => bail!("debug pod {name} cannot start: {why}"),
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "debug pod {name} did not start within {:?} (kubectl describe pod -n {} {name})",
                timing.start,
                api.namespace().unwrap_or_default()
            );
        }
        tokio::time::sleep(timing.poll).await;
    }
}

/// Whether the pod's container has started (or finished); an error for a
/// waiting reason that does not clear by itself.
pub fn started(pod: &Pod) -> Result<bool, String> {
    let Some(status) = &pod.status else {
        return Ok(false);
    };
    // Failed before any container ran: the kubelet refused the pod (e.g.
    // OutOfpods on a node at its max pods, common with the VPC CNI's
    // per-ENI address limit, since `nodeName` skips the scheduler). There
    // is no log to stream: say why.
    let ran = status.container_statuses.iter().flatten().any(|c| {
        c.state
            .as_ref()
            .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
    });
    if status.phase.as_deref() == Some("Failed") && !ran {
        let reason = status.reason.as_deref().unwrap_or("Failed");
        return Err(match status.message.as_deref() {
            Some(m) => format!("{reason}: {m}"),
            None => reason.to_owned(),
        });
    }
    if matches!(
        status.phase.as_deref(),
        Some("Running" | "Succeeded" | "Failed")
    ) {
        return Ok(true);
    }
    let waiting = status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref());
    for w in waiting {
        let reason = w.reason.as_deref().unwrap_or_default();
        if matches!(
            reason,
            "ErrImagePull"
                | "ImagePullBackOff"
                | "InvalidImageName"
                | "CreateContainerConfigError"
                | "CreateContainerError"
        ) {
            return Err(format!(
                "{reason}: {}",
                w.message.as_deref().unwrap_or("no message")
            ));
        }
    }
    Ok(false)
}

/// The exit code of the pod's container, once it has terminated.
pub fn exit_code(pod: &Pod) -> Option<i32> {
    pod.status
        .as_ref()?
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == CONTAINER)?
        .state
        .as_ref()?
        .terminated
        .as_ref()
        .map(|t| t.exit_code)
}

/// How an error that never reached the API server starts (after what was
/// tried); the caller may name the server after it.
pub const UNREACHABLE: &str = "cannot reach the API server";

/// An API error as one line: the API's own message (e.g. "pods is
/// forbidden: User ... cannot create resource ...") after what was tried.
fn one_line(e: &kube::Error, doing: &str) -> anyhow::Error {
    let msg = match e {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
        kube::Error::Service(_) | kube::Error::HyperError(_) => {
            // kube's own words are "ServiceError: client error (Connect)";
            // the reason is at the end of the chain of sources.
            let mut causes = Vec::new();
            let mut next = std::error::Error::source(e);
            while let Some(cause) = next {
                causes.push(cause.to_string());
                next = cause.source();
            }
            let tail: Vec<_> = causes
                .iter()
                .skip_while(|c| c.starts_with("client error"))
                .cloned()
                .collect();
            let reason = if tail.is_empty() { causes } else { tail };
            format!("{UNREACHABLE}: {}", reason.join(": "))
        }
        other => other.to_string(),
    };
    if doing.is_empty() {
        anyhow!(msg)
    } else {
        anyhow!("{doing}: {msg}")
    }
}
