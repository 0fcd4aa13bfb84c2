//! The one pod model every source fills in, and name/IP resolution over it
//! (pure: no I/O).

use std::{collections::HashMap, fmt, net::Ipv4Addr};

use serde::{Serialize, Serializer, ser::SerializeStruct as _};

use super::error::{Known, ResolveError};

/// A Kubernetes pod, reduced to what podtrace names and routes by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Pod {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `status.podIP`; None while pending, and for pods that terminated
    /// (Succeeded/Failed), whose address the CNI has released for reuse.
    pub ip: Option<Ipv4Addr>,
    /// `spec.nodeName`: where it is scheduled.
    pub node: Option<String>,
    /// `status.hostIP`: the node's primary IP.
    pub host_ip: Option<Ipv4Addr>,
    /// `spec.hostNetwork`: it lives in the node's netns and its IP is the
    /// node's, so it never names an IP (see [`PodSet::by_ip`]).
    pub host_network: bool,
}

impl fmt::Display for Pod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Where a [`PodSet`] came from; named in every resolution error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `--pods-file`: a `kubectl get pods -A -o json` dump.
    File(std::path::PathBuf),
    /// The Kubernetes API.
    Api {
        /// API server URL.
        server: String,
        /// Set when only this node's pods were listed.
        node: Option<String>,
    },
    /// The lab inventory of `podtrace lab up`.
    Lab,
    /// Nothing: only IPs can be resolved.
    None,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(p) => write!(f, "the pods file {}", p.display()),
            Self::Api { server, node: None } => write!(f, "the cluster at {server}"),
            Self::Api {
                server,
                node: Some(n),
            } => write!(f, "the pods of node {n} at {server}"),
            Self::Lab => f.write_str("the lab inventory"),
            Self::None => f.write_str("no pod source"),
        }
    }
}

/// The pods one source knows, indexed for resolution.
#[derive(Clone, Debug)]
pub struct PodSet {
    pods: Vec<Pod>,
    source: Source,
    by_ip: HashMap<Ipv4Addr, usize>,
    note: Option<String>,
}

/// What a SRC/DST argument resolved to: a known pod, or an address no pod
/// has (DST may be any host). Either way it has an IP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolved<'a> {
    /// A pod of the set, with an IP.
    Pod(&'a Pod),
    /// An address that no pod of the set has.
    Ip(Ipv4Addr),
}

impl PodSet {
    /// Indexes `pods` from `source`, sorted by namespace and name.
    pub fn new(source: Source, mut pods: Vec<Pod>) -> Self {
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let mut by_ip = HashMap::new();
        for (i, p) in pods.iter().enumerate() {
            if let (Some(ip), false) = (p.ip, p.host_network) {
                by_ip.entry(ip).or_insert(i);
            }
        }
        let note = (source == Source::None).then(|| "no pod source: showing IPs only".to_owned());
        Self {
            pods,
            source,
            by_ip,
            note,
        }
    }

    /// An empty set: no source was given or found.
    pub fn empty() -> Self {
        Self::new(Source::None, Vec::new())
    }

    /// Where the pods came from.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// All pods, sorted by namespace and name.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// A note to print once before any output (e.g. "no pod source: showing
    /// IPs only"); None after the first call.
    pub fn take_note(&mut self) -> Option<String> {
        self.note.take()
    }

    /// The pod that owns `ip`. Host-network pods never match: their IP is
    /// the node's, shared with the node and each other.
    pub fn by_ip(&self, ip: Ipv4Addr) -> Option<&Pod> {
        self.by_ip.get(&ip).map(|&i| &self.pods[i])
    }

    /// `namespace/name` of the pod that owns `ip`: what
    /// [`crate::topology::Topology::name_pods`] wants.
    pub fn name_of(&self, ip: Ipv4Addr) -> Option<String> {
        self.by_ip(ip).map(ToString::to_string)
    }

    /// How a person types this pod: its name alone when no other namespace
    /// has a pod of that name, else `namespace/name`.
    pub fn short_name(&self, pod: &Pod) -> String {
        if self.pods.iter().filter(|p| p.name == pod.name).count() > 1 {
            pod.to_string()
        } else {
            pod.name.clone()
        }
    }

    /// Resolves a SRC/DST argument: `name`, `namespace/name`, or an IPv4
    /// address (an address no pod has resolves to [`Resolved::Ip`]).
    pub fn resolve(&self, spec: &str) -> Result<Resolved<'_>, ResolveError> {
        let spec = spec.trim();
        if let Ok(ip) = spec.parse::<Ipv4Addr>() {
            return Ok(self.by_ip(ip).map_or(Resolved::Ip(ip), Resolved::Pod));
        }
        if let Some(why) = not_an_endpoint(spec) {
            return Err(ResolveError::NotAnEndpoint {
                spec: spec.to_owned(),
                why,
            });
        }
        if self.source == Source::None {
            return Err(ResolveError::NoSource {
                spec: spec.to_owned(),
            });
        }
        let matches: Vec<&Pod> = match spec.split_once('/') {
            Some((ns, name)) => self
                .pods
                .iter()
                .filter(|p| p.namespace == ns && p.name == name)
                .collect(),
            None => self.pods.iter().filter(|p| p.name == spec).collect(),
        };
        match matches.as_slice() {
            [] => Err(ResolveError::NotFound {
                spec: spec.to_owned(),
                source_name: self.source.to_string(),
                known: self.known(spec),
                hint: hint(&self.source),
            }),
            [pod] => match pod.ip {
                Some(_) => Ok(Resolved::Pod(pod)),
                None => Err(ResolveError::NoIp {
                    pod: pod.to_string(),
                    source_name: self.source.to_string(),
                }),
            },
            several => Err(ResolveError::Ambiguous {
                name: spec.to_owned(),
                namespaces: several.iter().map(|p| p.namespace.clone()).collect(),
            }),
        }
    }

    /// The names a person could have meant, nearest to `spec` first when
    /// there are too many to list.
    fn known(&self, spec: &str) -> Known {
        let names: Vec<String> = self.pods.iter().map(|p| self.short_name(p)).collect();
        Known::nearest(names, spec)
    }
}

/// What to try next, by source.
fn hint(source: &Source) -> &'static str {
    match source {
        Source::Lab => "; try `podtrace lab status`",
        Source::Api { node: Some(_), .. } => "; it may run on another node",
        Source::Api { node: None, .. } => "; try `kubectl get pods -A`",
        Source::File(_) | Source::None => "",
    }
}

impl Resolved<'_> {
    /// The address to probe or filter on.
    pub fn ip(&self) -> Ipv4Addr {
        match self {
            // resolve() only returns pods that have an IP.
            Self::Pod(p) => p.ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
            Self::Ip(ip) => *ip,
        }
    }

    /// The pod, when the address is a pod's.
    pub fn pod(&self) -> Option<&Pod> {
        match self {
            Self::Pod(p) => Some(p),
            Self::Ip(_) => None,
        }
    }
}

impl fmt::Display for Resolved<'_> {
    /// `default/pod-1 (192.168.1.21, node-a)` or `203.0.113.10`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pod(p) => {
                write!(f, "{p} ({}", self.ip())?;
                if let Some(node) = &p.node {
                    write!(f, ", {node}")?;
                }
                f.write_str(")")
            }
            Self::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl Serialize for Resolved<'_> {
    /// The `src`/`dst` object of the JSON contract: `pod`, `namespace`,
    /// `ip`, `node`, null where unknown.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let pod = self.pod();
        let mut st = s.serialize_struct("Endpoint", 4)?;
        st.serialize_field("pod", &pod.map(|p| &p.name))?;
        st.serialize_field("namespace", &pod.map(|p| &p.namespace))?;
        st.serialize_field("ip", &self.ip())?;
        st.serialize_field("node", &pod.and_then(|p| p.node.as_ref()))?;
        st.end()
    }
}

/// Why `spec` (not an IPv4 address) cannot be a pod either, if it is
/// plainly something else: an IPv6 address or an IPv4 CIDR.
fn not_an_endpoint(spec: &str) -> Option<&'static str> {
    if spec.parse::<std::net::Ipv6Addr>().is_ok() {
        return Some(
            "is an IPv6 address: ping, trace and watch follow IPv4 (give the pod's IPv4 address \
             or name)",
        );
    }
    let (addr, len) = spec.split_once('/')?;
    (addr.parse::<std::net::IpAddr>().is_ok() && len.parse::<u8>().is_ok())
        .then_some("is a CIDR, not one endpoint: give a pod's name or one IPv4 address")
}
