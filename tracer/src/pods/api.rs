//! The Kubernetes API as a pod source, through kube-rs: a kubeconfig, the
//! in-cluster service account, or the kubelet's own kubeconfig on a node.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use kube::{
    Client, Config,
    api::ListParams,
    config::{KubeConfigOptions, Kubeconfig},
    core::Request,
};

use super::{
    error::{SourceError, one_line, root_cause},
    model::{PodSet, Source},
    podlist,
};

/// Pods per list request: kubectl's page size, so a 5,000-pod cluster is
/// ten small answers rather than one huge one.
const PAGE: u32 = 500;

/// How long one page may take once connected.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// An API server and the credentials to list pods there.
pub(super) struct Endpoint {
    config: Config,
    /// Where the credentials come from, for errors ("kubeconfig /x").
    via: String,
    /// Whose credentials these are when nothing better is known.
    who: &'static str,
}

/// Fails with the OS's own words ("No such file or directory") when
/// `path` cannot be read, before kube's message, which quotes the path
/// twice, can.
fn readable(path: &Path, named: String) -> Result<(), SourceError> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| SourceError::Kubeconfig {
            path: named,
            message: format!("cannot read {}: {e}", path.display()),
        })
}

impl Endpoint {
    /// From a kubeconfig file. `root` is where the host's filesystem is
    /// mounted when podtrace runs in a debug pod (`/host`): the kubelet's
    /// kubeconfig names its certificates by host paths.
    pub(super) async fn kubeconfig(
        path: &Path,
        root: Option<&Path>,
        via: String,
    ) -> Result<Self, SourceError> {
        let err = |e: &dyn std::error::Error| SourceError::Kubeconfig {
            path: path.display().to_string(),
            message: one_line(e),
        };
        readable(path, path.display().to_string())?;
        let mut kc = Kubeconfig::read_from(path).map_err(|e| err(&e))?;
        if let Some(root) = root {
            rebase(&mut kc, root);
        }
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| err(&e))?;
        Ok(Self::new(config, via, "the kubeconfig's user"))
    }

    /// From `$KUBECONFIG` (a path, or several joined by `:`, merged).
    pub(super) async fn kubeconfig_env() -> Result<Self, SourceError> {
        let value = std::env::var_os("KUBECONFIG").unwrap_or_default();
        let named = format!("$KUBECONFIG ({})", value.to_string_lossy());
        let err = |e: &dyn std::error::Error| SourceError::Kubeconfig {
            path: named.clone(),
            message: one_line(e),
        };
        for path in std::env::split_paths(&value).filter(|p| !p.as_os_str().is_empty()) {
            readable(&path, named.clone())?;
        }
        let kc = Kubeconfig::from_env()
            .map_err(|e| err(&e))?
            .unwrap_or_default();
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| err(&e))?;
        Ok(Self::new(
            config,
            "$KUBECONFIG".to_owned(),
            "the kubeconfig's user",
        ))
    }

    /// From the service account mounted into podtrace's own pod.
    pub(super) fn in_cluster() -> Result<Self, SourceError> {
        let config = Config::incluster().map_err(|e| SourceError::InCluster {
            message: one_line(&e),
        })?;
        Ok(Self::new(
            config,
            "the in-cluster service account".to_owned(),
            "the service account",
        ))
    }

    fn new(mut config: Config, via: String, who: &'static str) -> Self {
        config.read_timeout.get_or_insert(READ_TIMEOUT);
        Self { config, via, who }
    }

    /// The API server URL, as errors and [`Source`] show it.
    pub(super) fn server(&self) -> String {
        self.config
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_owned()
    }

    /// Lists every pod, or `node`'s pods only (a `spec.nodeName` field
    /// selector, so the server does the filtering), page by page.
    ///
    /// The pages are read as text and parsed by the same few serde structs
    /// as pod files rather than as k8s-openapi Pods: one parser for every
    /// source, and no code to decode the dozens of Pod fields never read
    /// (about 0.9 MB of binary).
    pub(super) async fn list(self, node: Option<&str>) -> Result<PodSet, SourceError> {
        let server = self.server();
        let client = Client::try_from(self.config.clone()).map_err(|e| self.error(&e))?;
        let pods_url = Request::new("/api/v1/pods");
        let mut params = ListParams::default().limit(PAGE);
        if let Some(node) = node {
            params = params.fields(&format!("spec.nodeName={node}"));
        }
        let mut pods = Vec::new();
        loop {
            let request = pods_url.list(&params).map_err(|e| self.bad(&e))?;
            let text = client
                .request_text(request)
                .await
                .map_err(|e| self.error(&e))?;
            let (page, next) = podlist::parse_page(&text).map_err(|e| self.bad(&e))?;
            pods.extend(page);
            match next {
                Some(token) => params.continue_token = Some(token),
                None => break,
            }
        }
        let source = Source::Api {
            server,
            node: node.map(str::to_owned),
        };
        Ok(PodSet::new(source, pods))
    }

    /// A request podtrace could not build or an answer it could not read.
    fn bad(&self, e: &dyn std::error::Error) -> SourceError {
        SourceError::BadAnswer {
            server: self.server(),
            message: one_line(e),
        }
    }

    /// One line for what the API (or the way to it) said.
    fn error(&self, e: &kube::Error) -> SourceError {
        let server = self.server();
        match e {
            kube::Error::Api(status) => match status.code {
                403 => SourceError::Forbidden {
                    who: who(&status.message).unwrap_or_else(|| self.who.to_owned()),
                },
                401 => SourceError::Unauthorized {
                    server,
                    via: self.via.clone(),
                },
                code => SourceError::Api {
                    server,
                    code,
                    message: status.message.clone(),
                },
            },
            other => SourceError::Unreachable {
                server,
                via: self.via.clone(),
                cause: root_cause(other),
            },
        }
    }
}

/// Whose request was refused, from the API's message
/// (`pods is forbidden: User "system:serviceaccount:ns:sa" cannot list ...`).
fn who(message: &str) -> Option<String> {
    let user = message.split_once("User \"")?.1.split_once('"')?.0;
    Some(match user.strip_prefix("system:serviceaccount:") {
        Some(sa) => format!("the service account {}", sa.replacen(':', "/", 1)),
        None => format!("user \"{user}\""),
    })
}

/// Moves the absolute file paths of a kubeconfig under `root`.
fn rebase(kc: &mut Kubeconfig, root: &Path) {
    let under = |p: &mut Option<String>| {
        if let Some(path) = p.as_deref().and_then(|s| s.strip_prefix('/')) {
            *p = Some(root.join(path).display().to_string());
        }
    };
    for cluster in kc.clusters.iter_mut().filter_map(|c| c.cluster.as_mut()) {
        under(&mut cluster.certificate_authority);
    }
    for auth in kc
        .auth_infos
        .iter_mut()
        .filter_map(|a| a.auth_info.as_mut())
    {
        under(&mut auth.client_certificate);
        under(&mut auth.client_key);
        under(&mut auth.token_file);
    }
}

/// The kubelet's kubeconfig on a worker node (EKS and kops put it here),
/// and where the host's root is mounted for that path.
pub(super) fn kubelet_kubeconfigs() -> [(PathBuf, Option<PathBuf>); 2] {
    [
        (PathBuf::from("/var/lib/kubelet/kubeconfig"), None),
        (
            PathBuf::from("/host/var/lib/kubelet/kubeconfig"),
            Some(PathBuf::from("/host")),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_was_refused() {
        let sa = "pods is forbidden: User \"system:serviceaccount:debug:default\" cannot list \
                  resource \"pods\" in API group \"\" at the cluster scope";
        assert_eq!(
            who(sa).as_deref(),
            Some("the service account debug/default")
        );
        assert_eq!(
            who("pods is forbidden: User \"jane\" cannot list").as_deref(),
            Some("user \"jane\"")
        );
        assert_eq!(who("forbidden"), None);
    }

    #[test]
    fn kubelet_paths_move_under_host() {
        let mut kc = Kubeconfig::from_yaml(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://api\n    \
             certificate-authority: /etc/kubernetes/pki/ca.crt\nusers:\n- name: u\n  user:\n    \
             client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem\n    \
             client-key: /var/lib/kubelet/pki/kubelet-client-current.pem\n",
        )
        .unwrap();
        rebase(&mut kc, Path::new("/host"));
        let cluster = kc.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(
            cluster.certificate_authority.as_deref(),
            Some("/host/etc/kubernetes/pki/ca.crt")
        );
        let user = kc.auth_infos[0].auth_info.as_ref().unwrap();
        assert_eq!(
            user.client_key.as_deref(),
            Some("/host/var/lib/kubelet/pki/kubelet-client-current.pem")
        );
    }
}
