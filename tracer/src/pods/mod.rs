//! Pods: one model, three sources, and where a pod's netns is.
//!
//! Every view (`ping`, `trace`, `watch`) names pods through a [`PodSet`].
//! Resolution ([`PodSet::resolve`], [`PodSet::by_ip`]) is pure; reading a
//! `kubectl get pods -A -o json` file (or the lab inventory, the same JSON)
//! is the edge.

mod error;
mod model;
mod podlist;

pub use error::{Known, ResolveError, SourceError};
pub use model::{Pod, PodSet, Resolved, Source};
pub use podlist::parse as parse_pod_list;

#[cfg(test)]
mod model_tests;
