//! podtrace's kernel side: one TC classifier per direction, attached to pod
//! veths and ENIs. It counts every packet per hook and per flow in per-CPU
//! maps (always exact), and sends a packet event to the ring buffer only for
//! what the user asked to follow. It never changes the packet's fate: it
//! returns TC_ACT_UNSPEC (TCX_NEXT), so the next program or the stack decides.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod prog;

// The crate is a workspace member so that clippy and `cargo check` see it;
// only the bpf target builds the programs, every other target gets an empty
// binary.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
