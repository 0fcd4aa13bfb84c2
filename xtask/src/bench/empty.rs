//! An empty TC program at every hook podtrace watches: it returns at once.
//! What the measurements report for it is their floor, not a cost of
//! podtrace: `bpf_stats` reads the clock before and after every run, and
//! part of those reads lands in the run time it records; `bpftool prog
//! run` times its own loop around every run. podtrace's own cost per
//! packet is what it measures above this floor. In the throughput table,
//! it is what any TC program costs the traffic just by being attached.
//!
//! The bench runs `xtask empty-hooks` (hidden) as a tracer of its own:
//! the programs and links live as long as that process, and the kernel
//! detaches them when it exits. Two `bpf()` calls per hook, with the
//! program's two instructions written out, need no ELF object or compiler.
//! They attach through TCX (kernel 6.6 and later), as podtrace does where
//! the kernel has it.

use std::{
    ffi::CString,
    fs::{self, File},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::PathBuf,
};

use anyhow::{Context as _, Result, bail};
use aya_obj::generated::{bpf_attach_type, bpf_cmd, bpf_prog_type};

/// Names of the empty programs, as `bpftool` and /proc show them.
pub const INGRESS: &str = "empty_ingress";
/// See [`INGRESS`].
pub const EGRESS: &str = "empty_egress";

/// Arguments of `xtask empty-hooks`.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Namespace (under /run/netns) whose interface gets the programs;
    /// repeat for several.
    #[arg(long, required = true)]
    netns: Vec<String>,
    /// The interface in each namespace.
    #[arg(long)]
    iface: String,
    /// Created once every program is attached.
    #[arg(long)]
    ready_file: PathBuf,
}

/// Attaches an empty program at ingress and egress of the interface in
/// each namespace, says so in the ready file, and waits for a signal:
/// SIGINT or SIGTERM ends the process, and the kernel detaches the
/// programs as their links' last fds close.
pub fn hold(opts: &Options) -> Result<()> {
    // SAFETY: plain signal dispositions and a prctl with no pointers.
    unsafe {
        // xtask notes these signals to clean up; this process has nothing
        // to clean up: the kernel does it.
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
        // Ends with the bench, however the bench ends.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
    }
    // A signal that came before the lines above was only noted.
    if crate::cmd::interrupted() {
        bail!("interrupted before the programs were attached");
    }
    let mut held = Vec::new();
    for ns in &opts.netns {
        enter_netns(ns)?;
        let name = CString::new(opts.iface.as_str()).context("interface name")?;
        // SAFETY: `name` is a valid C string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            bail!("no interface {} in namespace {ns}", opts.iface);
        }
        for (prog_name, attach) in [
            (INGRESS, bpf_attach_type::BPF_TCX_INGRESS),
            (EGRESS, bpf_attach_type::BPF_TCX_EGRESS),
        ] {
            let prog = load(prog_name).with_context(|| format!("loading {prog_name}"))?;
            let link = attach_tcx(&prog, ifindex, attach)
                .with_context(|| format!("attaching {prog_name} to {ns}/{}", opts.iface))?;
            held.push((prog, link));
        }
    }
    fs::write(&opts.ready_file, b"")
        .with_context(|| format!("writing {}", opts.ready_file.display()))?;
    loop {
        // SAFETY: pause has no preconditions; a signal's default action
        // ends the process.
        unsafe { libc::pause() };
    }
}

/// Moves this (single-threaded) process into namespace `ns`.
fn enter_netns(ns: &str) -> Result<()> {
    let path = format!("/run/netns/{ns}");
    let f = File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: a valid fd of a network namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("setns {path}"));
    }
    Ok(())
}

/// `BPF_PROG_LOAD`'s attributes, as far as they are used.
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// `BPF_LINK_CREATE`'s attributes for a TCX link.
#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    relative_fd: u32,
    _pad: u32,
    expected_revision: u64,
}

/// Instructions of the empty program.
const EMPTY_LEN: u32 = 2;

/// `r0 = -1` (`TC_ACT_UNSPEC`: go on as if no program ran), `exit`.
static EMPTY: [u64; EMPTY_LEN as usize] = [
    // opcode 0xb7 (BPF_ALU64 | BPF_MOV | BPF_K), dst r0, imm -1
    0xffff_ffff_0000_00b7,
    // opcode 0x95 (BPF_JMP | BPF_EXIT)
    0x0000_0000_0000_0095,
];

/// Loads the empty program as a TC classifier named `name`.
fn load(name: &str) -> Result<OwnedFd> {
    let license = c"GPL";
    let mut attr = ProgLoad {
        prog_type: bpf_prog_type::BPF_PROG_TYPE_SCHED_CLS as u32,
        insn_cnt: EMPTY_LEN,
        insns: EMPTY.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..ProgLoad::default()
    };
    let n = name.len().min(attr.prog_name.len() - 1);
    attr.prog_name[..n].copy_from_slice(&name.as_bytes()[..n]);
    bpf(bpf_cmd::BPF_PROG_LOAD, &attr)
}

/// Attaches `prog` through TCX at `attach` of `ifindex` (in this process's
/// namespace); the link lasts as long as the returned fd.
fn attach_tcx(prog: &OwnedFd, ifindex: u32, attach: bpf_attach_type) -> Result<OwnedFd> {
    let attr = LinkCreate {
        prog_fd: u32::try_from(prog.as_raw_fd()).context("negative fd")?,
        target_ifindex: ifindex,
        attach_type: attach as u32,
        ..LinkCreate::default()
    };
    bpf(bpf_cmd::BPF_LINK_CREATE, &attr)
}

/// One `bpf()` call that returns a new fd.
fn bpf<T>(cmd: bpf_cmd, attr: &T) -> Result<OwnedFd> {
    // SAFETY: `attr` is a repr(C) prefix of `union bpf_attr` for `cmd`,
    // with every pointer in it valid for the call; the kernel zero-fills
    // the rest of the union.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_ref(attr),
            size_of::<T>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context(format!("bpf({cmd:?})"));
    }
    let fd = i32::try_from(fd).context("fd out of range")?;
    // SAFETY: a new fd the kernel just returned, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
