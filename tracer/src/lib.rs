//! podtrace's userspace: loads the kernel programs, attaches them to pod
//! veths and ENIs, and turns their reports into what a person reads.
//!
//! The pure core (`decode`, `topology`, correlation) does no I/O and reads
//! no clock; the edges (`kernel`, `netns`, `events`, the subcommands) talk to
//! the kernel, netlink and the terminal.

pub mod capture;
pub mod cli;
pub mod conntrack;
pub mod container;
pub mod correlate;
pub mod decode;
pub mod discover;
pub mod drops;
pub mod ebpf;
pub mod events;
pub mod kernel;
pub mod lab;
pub mod legacy_tc;
pub mod netns;
pub mod output;
pub mod ping;
pub mod pins;
pub mod pods;
pub mod probe;
pub mod ring;
pub mod sched;
pub mod session;
pub mod signals;
pub mod topology;
pub mod trace;
pub mod watch;
