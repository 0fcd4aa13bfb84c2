//! Pods: one model, three sources, and where a pod's netns is.
//!
//! Every view (`ping`, `trace`, `watch`) names pods through a [`PodSet`]
//! loaded by [`load`] from one of: a `kubectl get pods -A -o json` file
//! (`--pods-file`), the Kubernetes API through kube-rs (`--kubeconfig`,
//! `$KUBECONFIG`, the in-cluster service account, the kubelet's kubeconfig),
//! or the lab inventory (the same JSON, written by `podtrace lab up`).
//! Resolution ([`PodSet::resolve`], [`PodSet::by_ip`]) is pure; the sources
//! and [`pod_netns`] are the edges.

mod api;
mod error;
mod locate;
mod model;
mod podlist;
mod source;

pub use error::{Known, ResolveError, SourceError};
pub use locate::{NETNS_DIRS, pod_netns, pod_netns_in, pod_veth};
pub use model::{Pod, PodSet, Resolved, Source};
pub use podlist::parse as parse_pod_list;
pub use source::{
    Choice, Environment, LAB_INVENTORY, PodSourceArgs, choose, load, load_choice, load_node,
};

#[cfg(test)]
mod api_tests;
#[cfg(test)]
mod model_tests;
