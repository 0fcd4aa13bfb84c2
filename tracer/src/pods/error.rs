//! What goes wrong loading pods and resolving them: each error is one line
//! that names the source and says what to do.

use std::{fmt, io, net::Ipv4Addr, path::PathBuf};

use crate::netns::NetnsError;

/// How many known pods an error lists before "and N more".
const MAX_LISTED: usize = 8;

/// A SRC/DST argument or a pod IP that could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// No pod of that name.
    #[error("pod \"{spec}\" not found in {source_name} (known: {known}){hint}")]
    NotFound {
        /// What the user typed.
        spec: String,
        /// The source, e.g. "the lab inventory".
        source_name: String,
        /// The pods the user may have meant.
        known: Known,
        /// What to try next, starting with "; " (may be empty).
        hint: &'static str,
    },
    /// Something that is neither a pod name nor one IPv4 address.
    #[error("\"{spec}\" {why}")]
    NotAnEndpoint {
        /// What the user typed.
        spec: String,
        /// What it is, and what to give instead.
        why: &'static str,
    },
    /// A pod name, but no source to look it up in.
    #[error(
        "cannot resolve pod \"{spec}\": no pod source (give --pods-file or --kubeconfig, \
         or start the lab with `podtrace lab up`)"
    )]
    NoSource {
        /// What the user typed.
        spec: String,
    },
    /// The same name in several namespaces.
    #[error("{name} exists in namespaces {}: say {}/{name}", and_list(namespaces), namespaces[0])]
    Ambiguous {
        /// The name typed.
        name: String,
        /// Namespaces holding a pod of that name (at least two).
        namespaces: Vec<String>,
    },
    /// The pod is known but has no IP.
    #[error("pod {pod} has no IP in {source_name} (pending, or terminated)")]
    NoIp {
        /// `namespace/name`.
        pod: String,
        /// The source.
        source_name: String,
    },
    /// No per-pod /32 route to the IP in the node's netns.
    #[error("no route to {ip} through a pod veth in netns {node}: is the pod on this node?")]
    NoRoute {
        /// The pod IP.
        ip: Ipv4Addr,
        /// The node's netns name.
        node: String,
    },
    /// The /32 route exists but leads somewhere that is not a pod veth.
    #[error(
        "{ip} is routed through {iface} in netns {node}, which is not a pod veth: \
         is the pod on this node?"
    )]
    NotPodVeth {
        /// The pod IP.
        ip: Ipv4Addr,
        /// The node's netns name.
        node: String,
        /// The route's output interface.
        iface: String,
    },
    /// The veth's peer netns has no path podtrace can find.
    #[error(
        "the pod veth {iface} of {ip} in netns {node} leads to netns id {nsid}, \
         but no netns under {searched} is that one"
    )]
    PeerNetnsNotFound {
        /// The pod IP.
        ip: Ipv4Addr,
        /// The node's netns name.
        node: String,
        /// The veth.
        iface: String,
        /// The peer's netns id, as the node netns sees it.
        nsid: i32,
        /// The directories searched, comma-separated.
        searched: String,
    },
    /// Opening or entering a namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// A netlink request failed.
    #[error("netns {node}: netlink {what}: {message}")]
    Netlink {
        /// The node's netns name.
        node: String,
        /// Which request.
        what: &'static str,
        /// The error, as one line.
        message: String,
    },
}

/// A pod source that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// `--pods-file` (or the lab inventory) cannot be read.
    #[error("cannot read {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file is not a pod list.
    #[error("{path} is not a `kubectl get pods -A -o json` list: {source}")]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// Where parsing failed.
        #[source]
        source: serde_json::Error,
    },
    /// A kubeconfig that cannot be used.
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig {
        /// The file (or `$KUBECONFIG`).
        path: String,
        /// What is wrong, as one line.
        message: String,
    },
    /// The in-cluster service account cannot be used.
    #[error("in-cluster service account: {message}")]
    InCluster {
        /// What is wrong, as one line.
        message: String,
    },
    /// 403 on listing pods.
    #[error(
        "the Kubernetes API refused to list pods (403 Forbidden): {who} needs get/list/watch on pods"
    )]
    Forbidden {
        /// Whose credentials: "the service account", "user \"jane\"", ...
        who: String,
    },
    /// 401: the credentials are not accepted.
    #[error("the Kubernetes API at {server} rejected the credentials of {via} (401 Unauthorized)")]
    Unauthorized {
        /// API server URL.
        server: String,
        /// Where the credentials came from.
        via: String,
    },
    /// Any other error status.
    #[error("the Kubernetes API at {server} failed to list pods ({code}): {message}")]
    Api {
        /// API server URL.
        server: String,
        /// HTTP status.
        code: u16,
        /// The API's message.
        message: String,
    },
    /// An answer that is not a pod list.
    #[error("the Kubernetes API at {server} sent a pod list podtrace cannot read: {message}")]
    BadAnswer {
        /// API server URL.
        server: String,
        /// What is wrong, as one line.
        message: String,
    },
    /// No answer from the API server.
    #[error("cannot reach the Kubernetes API at {server} (from {via}): {cause}")]
    Unreachable {
        /// API server URL.
        server: String,
        /// Where the server URL came from.
        via: String,
        /// The innermost error.
        cause: String,
    },
}

/// The known pods an error lists: at most [`MAX_LISTED`], then "and N more".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Known {
    /// Names listed.
    pub shown: Vec<String>,
    /// How many more exist.
    pub more: usize,
}

impl Known {
    /// All of `names` when few, else the ones nearest to `spec` (by edit
    /// distance, ties in the given order).
    pub fn nearest(mut names: Vec<String>, spec: &str) -> Self {
        if names.len() > MAX_LISTED {
            names.sort_by_cached_key(|n| edit_distance(n, spec));
        }
        let more = names.len().saturating_sub(MAX_LISTED);
        names.truncate(MAX_LISTED);
        Self { shown: names, more }
    }
}

impl fmt::Display for Known {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.shown.is_empty() {
            return f.write_str("none");
        }
        f.write_str(&self.shown.join(", "))?;
        if self.more > 0 {
            write!(f, " and {} more", self.more)?;
        }
        Ok(())
    }
}

/// "a and b", "a, b and c".
fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// Levenshtein distance over chars: enough to put `pod-9`'s neighbours
/// first in a list of hundreds.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = (up + 1).min(row[j] + 1).min(diag + usize::from(ca != *cb));
            diag = up;
        }
    }
    row[b.len()]
}

/// An error and its causes on one line, skipping causes that the message
/// above already quotes.
pub(crate) fn one_line(e: &dyn std::error::Error) -> String {
    // Some messages (a YAML parser's) add a source excerpt on lines of
    // their own: keep each message's first line.
    let first = |e: &dyn std::error::Error| {
        e.to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .trim_end()
            .to_owned()
    };
    let mut s = first(e);
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = first(c);
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// The innermost message of an error chain: the part a person can act on
/// ("Connection refused"), without the wrappers around it.
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_lists_at_most_eight_nearest_first() {
        let names: Vec<String> = (0..20).map(|i| format!("web-{i}")).collect();
        let mut all = names.clone();
        all.push("pod-1".into());
        let known = Known::nearest(all, "pod-9");
        assert_eq!(known.shown[0], "pod-1");
        assert_eq!(known.shown.len(), 8);
        assert_eq!(known.more, 13);
        assert!(known.to_string().ends_with(" and 13 more"), "{known}");
    }

    #[test]
    fn few_known_keep_their_order() {
        let known = Known::nearest(vec!["b".into(), "a".into()], "zzz");
        assert_eq!(known.to_string(), "b, a");
        assert_eq!(Known::default().to_string(), "none");
    }

    #[test]
    fn ambiguity_names_every_namespace() {
        let e = ResolveError::Ambiguous {
            name: "pod-1".into(),
            namespaces: vec!["a".into(), "b".into(), "c".into()],
        };
        assert_eq!(
            e.to_string(),
            "pod-1 exists in namespaces a, b and c: say a/pod-1"
        );
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("pod-1", "pod-9"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
