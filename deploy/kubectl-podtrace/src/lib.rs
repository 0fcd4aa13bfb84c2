//! `kubectl podtrace`: runs `podtrace ping` on the node of the source pod,
//! in a node debug pod, streams its output back and deletes the pod.
//!
//! [`manifest`] builds the pod and podtrace's arguments (pure);
//! [`cluster`] finds the node and runs the pod through the API.

pub mod cluster;
pub mod kubeconfig;
pub mod manifest;
