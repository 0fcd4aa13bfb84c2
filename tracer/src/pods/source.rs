//! Which pod source to read: the flags `ping`, `trace` and `watch` share,
//! and the order in which podtrace looks when none is given.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use clap::Args;

use super::{
    api::{Endpoint, kubelet_kubeconfigs},
    error::SourceError,
    model::{PodSet, Source},
    podlist,
};

/// Where `podtrace lab up` writes its inventory (a pod list). Spelled here
/// rather than borrowed from the lab so that the lab is just one more pod
/// list at a well-known path.
pub const LAB_INVENTORY: &str = "/run/podtrace/lab.json";

/// The service account token that makes a pod "in cluster".
const SA_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// Where pod names come from: the flags `ping`, `trace` and `watch`
/// flatten, grouped under their own heading in `--help`.
#[derive(Args, Clone, Debug, Default)]
pub struct PodSourceArgs {
    /// Name pods from a file made by `kubectl get pods -A -o json`.
    #[arg(
        long = "pods-file",
        value_name = "PATH",
        conflicts_with = "kubeconfig",
        help_heading = "Pod names"
    )]
    pub pods_file: Option<PathBuf>,
    /// Name pods from the Kubernetes API, with this kubeconfig. Without
    /// either flag podtrace tries, in order: $KUBECONFIG, the in-cluster
    /// service account, the kubelet's kubeconfig, the lab inventory,
    /// ~/.kube/config; else it shows IPs only.
    #[arg(long, value_name = "PATH", help_heading = "Pod names")]
    pub kubeconfig: Option<PathBuf>,
}

/// The source picked, before reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    /// `--pods-file`.
    File(PathBuf),
    /// `--kubeconfig`, or ~/.kube/config.
    Kubeconfig(PathBuf),
    /// `$KUBECONFIG`.
    KubeconfigEnv,
    /// The service account of the pod podtrace runs in; the kubelet's
    /// kubeconfig (when there is one) if that account may not list pods.
    InCluster {
        /// The kubelet fallback.
        kubelet: Option<(PathBuf, Option<PathBuf>)>,
    },
    /// The kubelet's kubeconfig, and the host root it lives under.
    Kubelet(PathBuf, Option<PathBuf>),
    /// The lab inventory.
    Lab(PathBuf),
    /// Nothing found.
    None,
}

/// What [`choose`] looks at, gathered once so that the order is testable.
#[derive(Clone, Debug, Default)]
pub struct Environment {
    /// `$KUBECONFIG`, when set and not empty.
    pub kubeconfig_var: Option<OsString>,
    /// `$KUBERNETES_SERVICE_HOST` is set and a service account token exists.
    pub in_cluster: bool,
    /// The first kubelet kubeconfig that exists, with its host root.
    pub kubelet: Option<(PathBuf, Option<PathBuf>)>,
    /// The lab inventory, when it exists.
    pub lab: Option<PathBuf>,
    /// ~/.kube/config, when it exists.
    pub home_kubeconfig: Option<PathBuf>,
}

impl Environment {
    /// This process's environment and filesystem.
    pub fn detect() -> Self {
        let exists = |p: &Path| p.exists().then(|| p.to_owned());
        Self {
            kubeconfig_var: std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()),
            in_cluster: std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
                && Path::new(SA_TOKEN).exists(),
            kubelet: kubelet_kubeconfigs()
                .into_iter()
                .find(|(path, _)| path.exists()),
            lab: exists(Path::new(LAB_INVENTORY)).or_else(crate::container::host_lab_inventory),
            home_kubeconfig: std::env::var_os("HOME")
                .and_then(|h| exists(&Path::new(&h).join(".kube/config"))),
        }
    }
}

/// The source to read. Flags first; then what the machine says about
/// itself (an explicit `$KUBECONFIG`, running in a pod, being a node); then
/// the lab, which exists only while it is up; ~/.kube/config last, since a
/// stray one should not hide the lab someone is exploring.
pub fn choose(args: &PodSourceArgs, env: &Environment) -> Choice {
    if let Some(path) = &args.pods_file {
        return Choice::File(path.clone());
    }
    if let Some(path) = &args.kubeconfig {
        return Choice::Kubeconfig(path.clone());
    }
    if env.kubeconfig_var.is_some() {
        return Choice::KubeconfigEnv;
    }
    if env.in_cluster {
        return Choice::InCluster {
            kubelet: env.kubelet.clone(),
        };
    }
    if let Some((path, root)) = &env.kubelet {
        return Choice::Kubelet(path.clone(), root.clone());
    }
    if let Some(lab) = &env.lab {
        return Choice::Lab(lab.clone());
    }
    match &env.home_kubeconfig {
        Some(path) => Choice::Kubeconfig(path.clone()),
        None => Choice::None,
    }
}

/// Loads every pod of the source the flags and the machine point to; an
/// empty set (with a note) when there is none.
pub async fn load(args: &PodSourceArgs) -> Result<PodSet, SourceError> {
    load_choice(choose(args, &Environment::detect()), None).await
}

/// Like [`load`], but only `node`'s pods: for naming this node's veths
/// without listing a whole cluster. Resolving a DST needs [`load`].
pub async fn load_node(args: &PodSourceArgs, node: &str) -> Result<PodSet, SourceError> {
    load_choice(choose(args, &Environment::detect()), Some(node)).await
}

/// Reads the chosen source.
pub async fn load_choice(choice: Choice, node: Option<&str>) -> Result<PodSet, SourceError> {
    match choice {
        Choice::File(path) => podlist::load(&path, Source::File(path.clone()), node),
        Choice::Lab(path) => podlist::load(&path, Source::Lab, node),
        Choice::Kubeconfig(path) => {
            let via = format!("kubeconfig {}", path.display());
            Endpoint::kubeconfig(&path, None, via)
                .await?
                .list(node)
                .await
        }
        Choice::KubeconfigEnv => Endpoint::kubeconfig_env().await?.list(node).await,
        Choice::Kubelet(path, root) => kubelet(&path, root.as_deref(), node).await,
        Choice::InCluster { kubelet: fallback } => {
            let refused = match Endpoint::in_cluster()?.list(node).await {
                Err(e @ (SourceError::Forbidden { .. } | SourceError::Unauthorized { .. })) => e,
                other => return other,
            };
            // A debug pod's default service account rarely may list pods;
            // the node's own credentials may.
            if let Some((path, root)) = fallback {
                match kubelet(&path, root.as_deref(), node).await {
                    Ok(set) => return Ok(set),
                    Err(e) => log::debug!("kubelet kubeconfig after a refusal: {e}"),
                }
            }
            Err(refused)
        }
        Choice::None => Ok(PodSet::empty()),
    }
}

async fn kubelet(
    path: &Path,
    root: Option<&Path>,
    node: Option<&str>,
) -> Result<PodSet, SourceError> {
    let via = format!("the kubelet's kubeconfig {}", path.display());
    Endpoint::kubeconfig(path, root, via)
        .await?
        .list(node)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn everything() -> Environment {
        Environment {
            kubeconfig_var: Some("/env/kubeconfig".into()),
            in_cluster: true,
            kubelet: Some(("/var/lib/kubelet/kubeconfig".into(), None)),
            lab: Some(LAB_INVENTORY.into()),
            home_kubeconfig: Some("/root/.kube/config".into()),
        }
    }

    #[test]
    fn flags_win() {
        let args = PodSourceArgs {
            pods_file: Some("pods.json".into()),
            kubeconfig: None,
        };
        assert_eq!(
            choose(&args, &everything()),
            Choice::File("pods.json".into())
        );
        let args = PodSourceArgs {
            pods_file: None,
            kubeconfig: Some("kc".into()),
        };
        assert_eq!(
            choose(&args, &everything()),
            Choice::Kubeconfig("kc".into())
        );
    }

    #[test]
    fn then_env_in_cluster_kubelet_lab_home() {
        let args = PodSourceArgs::default();
        let mut env = everything();
        assert_eq!(choose(&args, &env), Choice::KubeconfigEnv);
        env.kubeconfig_var = None;
        assert_eq!(
            choose(&args, &env),
            Choice::InCluster {
                kubelet: env.kubelet.clone()
            }
        );
        env.in_cluster = false;
        assert_eq!(
            choose(&args, &env),
            Choice::Kubelet("/var/lib/kubelet/kubeconfig".into(), None)
        );
        env.kubelet = None;
        assert_eq!(choose(&args, &env), Choice::Lab(LAB_INVENTORY.into()));
        env.lab = None;
        assert_eq!(
            choose(&args, &env),
            Choice::Kubeconfig("/root/.kube/config".into())
        );
        env.home_kubeconfig = None;
        assert_eq!(choose(&args, &env), Choice::None);
    }

    #[tokio::test]
    async fn no_source_is_an_empty_set_with_a_note() {
        let mut set = load_choice(Choice::None, None).await.unwrap();
        assert!(set.pods().is_empty());
        assert_eq!(
            set.take_note().as_deref(),
            Some("no pod source: showing IPs only")
        );
        assert_eq!(set.take_note(), None);
    }

    #[test]
    fn pods_file_and_kubeconfig_conflict() {
        use clap::Parser as _;
        #[derive(clap::Parser, Debug)]
        struct Cli {
            #[command(flatten)]
            pods: PodSourceArgs,
        }
        let cli = Cli::try_parse_from(["x", "--pods-file", "p.json"]).unwrap();
        assert_eq!(cli.pods.pods_file, Some("p.json".into()));
        assert!(Cli::try_parse_from(["x", "--pods-file", "p", "--kubeconfig", "k"]).is_err());
    }
}
