//! Correlation: decoded packets in, the story out. The same packet seen at
//! several hooks (one node or several) becomes a [`Journey`] with ordered
//! [`Hop`]s and the [`Rewrite`]s NAT made; journeys in both directions of
//! a conversation become a [`Flow`] with its path, ENIs, labels and
//! counters.
//!
//! Pure: no I/O, no clock, no threads. Time comes only from the packets'
//! kernel timestamps and from [`Correlator::advance`]. Memory is bounded:
//! pending journeys and flows live in tables of configured size; when one
//! is full the oldest pending journey closes early, and a flow not active
//! lately (CLOCK, the usual approximation of LRU) is evicted; idle flows
//! time out. Evictions are counted in [`Stats`].
//!
//! ```
//! # use tracer::{correlate::{Config, Correlator, Update}, topology::Topology};
//! # let (topo, packets, now_ns) = (Topology::default(), Vec::new(), 0);
//! let mut engine = Correlator::new(Config::default());
//! let mut on_update = |u: Update<'_>| match u {
//!     Update::Journey(j) => println!("{}", tracer::correlate::format::journey(j)),
//!     Update::Flow(f) => println!("{}", tracer::correlate::format::flow(f)),
//!     // Only with `Config::changes_by_id`: read it back with `engine.flow(id)`.
//!     Update::FlowChanged { .. } | Update::FlowEnded { .. } => {}
//! };
//! for pkt in &packets {
//!     engine.push(pkt, &topo, &mut on_update);
//! }
//! // Now and then (e.g. on the drain timer), with the kernel clock:
//! engine.advance(now_ns, &mut on_update);
//! ```

mod engine;
mod flow;
mod flow_model;
pub mod format;
mod journey;
mod journey_model;
mod model;
mod paths;
mod pending;
mod places;
pub(crate) mod table;

#[cfg(test)]
mod bench;
#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_bounds;

use serde::Serialize;

pub use self::{
    engine::Correlator,
    flow_model::{
        ConntrackInfo, Flow, FlowId, FlowSide, IcmpError, KernelCounters, KernelDrop, Label,
        Labels, Latency,
    },
    journey_model::{Expected, IcmpInfo, Incomplete, Journey, NatKind, Rewrite, Side, TcpInfo},
    model::{Dir, Hop, Place, PlaceRole, ProtoName, Shared, Tuple, short_pod},
};

/// Tunables of the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// A packet seen again within this time of its journey's last hop (or
    /// before its first) with the same fingerprint joins it; a journey
    /// closes once no hop came for this long. Also the tolerance for
    /// events that arrive out of order. Default 200 ms.
    pub window_ns: u64,
    /// A flow with no journey and no kernel counter progress for this long
    /// ends. Default 60 s.
    pub flow_idle_ns: u64,
    /// Most journeys collecting hops at once (384 bytes each). To
    /// absorb disorder up to the window, size it to journeys per second
    /// times the window; when full, the oldest journey closes early.
    pub max_pending: usize,
    /// A journey closed early because the pending table was full counts as
    /// whole (and is judged) if no hop came for this long; else it is
    /// marked `evicted` and not judged. Default 10 ms.
    pub settle_ns: u64,
    /// Most flows at once (about 210 bytes each with their paths, plus
    /// their share of the index, sized for this many up front).
    pub max_flows: usize,
    /// True when the kernel reports every matching packet at every hook
    /// (packets mode, no filter that NAT could defeat): a packet missing
    /// at its next hop is then judged incomplete. When false, only probes
    /// are judged.
    pub complete_reports: bool,
    /// Seed of the tables' hasher; pass a random one where crafted traffic
    /// could aim at collisions.
    pub hash_seed: u64,
    /// Report a changed flow as [`Update::FlowChanged`] (its id) instead of
    /// [`Update::Flow`] (the whole flow, built for the update): for a
    /// consumer that reads changed flows later, with [`Correlator::flow`],
    /// and would throw most of them away unread.
    pub changes_by_id: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            window_ns: 200_000_000,
            flow_idle_ns: 60_000_000_000,
            max_pending: 32 * 1024,
            settle_ns: 10_000_000,
            max_flows: 64 * 1024,
            complete_reports: true,
            hash_seed: 0x706f_6474_7261_6365,
            changes_by_id: false,
        }
    }
}

/// Why a flow left the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndReason {
    /// Idle for longer than [`Config::flow_idle_ns`].
    Idle,
    /// Pushed out of a full table by a new flow (CLOCK: one not active
    /// since the clock hand last passed).
    Evicted,
    /// A new TCP connection (another SYN) reused its tuple.
    Replaced,
}

/// What the engine tells its consumer. References live until the callback
/// returns: clone what must be kept.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Update<'a> {
    /// A journey closed: every hop that saw the packet, in time order.
    Journey(&'a Journey),
    /// A flow was created or changed (by a journey or kernel counters).
    Flow(&'a Flow),
    /// The same, as only the flow's id, when [`Config::changes_by_id`] is
    /// set.
    FlowChanged {
        /// The flow that changed.
        id: FlowId,
    },
    /// A flow left the table; this is its last state.
    FlowEnded {
        /// The flow.
        flow: &'a Flow,
        /// Why.
        reason: EndReason,
    },
}

/// The callback the engine reports through.
pub(crate) type Sink<'s> = &'s mut dyn FnMut(Update<'_>);

/// Counters of the engine, for `--stats` lines and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Packets pushed.
    pub packets: u64,
    /// Of those, not IPv4 unicast (ARP, IPv6, multicast, broadcast): not
    /// correlated.
    pub ignored: u64,
    /// Packets older than the window at arrival (their journey may be split).
    pub late: u64,
    /// Journeys closed.
    pub journeys: u64,
    /// Of those, incomplete.
    pub incomplete_journeys: u64,
    /// Journeys collecting hops now.
    pub pending: usize,
    /// Entries of the pending journeys' fingerprint index now (at most
    /// `pending`).
    pub pending_index: usize,
    /// Journeys closed early because the pending table was full.
    pub pending_evicted: u64,
    /// Packets whose fingerprint matched a journey that had already
    /// crossed their hook (a retransmission, a loop, or a look-alike packet
    /// of another flow): each started a new journey.
    pub repeated_hook: u64,
    /// Hops dropped because a journey had [`MAX_HOPS`] already.
    pub hop_overflow: u64,
    /// Flows in the table now.
    pub flows: usize,
    /// Tuples by which flows are found now.
    pub flow_aliases: usize,
    /// Flows pushed out of a full table.
    pub flows_evicted: u64,
    /// Flows ended by the idle timeout.
    pub flows_expired: u64,
    /// Flows ended by a new TCP connection on their tuple.
    pub flows_replaced: u64,
    /// Tuples not registered because a flow had too many.
    pub alias_overflow: u64,
}

/// Most hops a journey keeps; more are counted in [`Stats::hop_overflow`].
pub const MAX_HOPS: usize = journey::MAX_HOPS;
