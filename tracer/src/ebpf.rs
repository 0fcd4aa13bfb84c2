//! The kernel programs, embedded at build time by `build.rs`.

/// The eBPF ELF object, or `None` when built with `AYA_BUILD_SKIP=1`.
#[cfg(not(podtrace_no_ebpf))]
pub const OBJECT: Option<&[u8]> = Some(aya::include_bytes_aligned!(concat!(
    env!("OUT_DIR"),
    "/tracer"
)));
/// The eBPF ELF object, or `None` when built with `AYA_BUILD_SKIP=1`.
#[cfg(podtrace_no_ebpf)]
pub const OBJECT: Option<&[u8]> = None;
