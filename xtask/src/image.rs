//! `cargo xtask image`: a static (musl) `podtrace` with the kernel programs
//! embedded, and an OCI image made of it and CA roots (FROM scratch),
//! built with podman. Also builds the static `kubectl-podtrace` plugin.
//!
//! The size flags (opt-level "z", fat LTO, one codegen unit, stripped,
//! panic = abort) go into a profile of its own, `image`, given with
//! `--config` on the command line: the workspace's release profile stays as
//! it is, and the nested cargo that aya-build runs for the kernel programs
//! (which inherits environment variables, not `--config`) is untouched.

use std::{fs, os::unix::fs::PermissionsExt as _, path::PathBuf, process::Command, time::Instant};

use anyhow::{Context as _, Result, bail};

use crate::{
    cmd,
    setup::{self, MUSL_TARGET},
};

/// The size the image should stay under.
const TARGET_BYTES: u64 = 20 * 1000 * 1000;

/// `cargo xtask image` flags.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Name and tag of the image.
    #[arg(long, default_value = "localhost/podtrace:latest")]
    pub tag: String,
    /// Also write the image as an OCI archive to this path (to import it on
    /// a node without a registry: `ctr -n k8s.io images import PATH`).
    #[arg(long, value_name = "PATH")]
    pub save: Option<PathBuf>,
}

/// The `image` profile: release, made small.
const PROFILE: [&str; 6] = [
    "profile.image.inherits=\"release\"",
    "profile.image.opt-level=\"z\"",
    "profile.image.lto=\"fat\"",
    "profile.image.codegen-units=1",
    "profile.image.strip=true",
    "profile.image.panic=\"abort\"",
];

/// Debian's CA bundle, copied into the image.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The image: the binary on PATH, and as the entrypoint, so that both
/// `podman run IMAGE ping a b` and `kubectl debug ... -- podtrace ping a b`
/// work.
const CONTAINERFILE: &str = "\
FROM scratch
COPY podtrace /usr/local/bin/podtrace
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV PATH=/usr/local/bin
LABEL org.opencontainers.image.title=\"podtrace\" \\
      org.opencontainers.image.description=\"eBPF packet path tracer for AWS VPC CNI pod networking\"
ENTRYPOINT [\"podtrace\"]
";

/// Sets up, builds the static binaries and the image, and reports sizes.
pub fn run(opts: &Options) -> Result<()> {
    setup::run(&setup::Options { image: true })?;
    let started = Instant::now();
    let bins = build_static()?;
    let podtrace = bins
        .iter()
        .find(|b| b.file_name().is_some_and(|n| n == "podtrace"))
        .context("cargo did not report where it put podtrace")?;
    let bytes = fs::read(podtrace).with_context(|| format!("reading {}", podtrace.display()))?;
    if has_interpreter(&bytes)? {
        bail!(
            "{} is dynamically linked; the image has no libc",
            podtrace.display()
        );
    }

    let context = cmd::target_dir().join("image-context");
    fs::create_dir_all(&context).with_context(|| format!("creating {}", context.display()))?;
    let copy = context.join("podtrace");
    fs::write(&copy, &bytes).context("copying podtrace into the context")?;
    // COPY keeps the mode: the binary must be executable.
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755))
        .context("making podtrace executable")?;
    // The only other file: CA roots, for an API server whose kubeconfig
    // names no CA of its own (rustls then reads the system's).
    fs::copy(CA_BUNDLE, context.join("ca-certificates.crt"))
        .with_context(|| format!("copying {CA_BUNDLE} (apt-get install ca-certificates)"))?;
    fs::write(context.join("Containerfile"), CONTAINERFILE).context("writing the Containerfile")?;
    cmd::run(
        podman()
            .args(["build", "--quiet", "--tag", &opts.tag])
            .arg(&context),
    )?;
    if let Some(path) = &opts.save {
        let _ = fs::remove_file(path);
        cmd::run(
            podman()
                .args(["save", "--format", "oci-archive", "--output"])
                .arg(path)
                .arg(&opts.tag),
        )?;
    }

    let size: u64 = cmd::stdout_of(
        podman()
            .args(["image", "inspect", "--format", "{{.Size}}"])
            .arg(&opts.tag),
    )?
    .trim()
    .parse()
    .context("podman image inspect: size")?;
    for bin in &bins {
        let len = fs::metadata(bin).map(|m| m.len()).unwrap_or_default();
        println!("static   {} ({})", bin.display(), mb(len));
    }
    println!(
        "image    {}: {} ({} the {} target), built in {:.0?}",
        opts.tag,
        mb(size),
        if size < TARGET_BYTES { "under" } else { "OVER" },
        mb(TARGET_BYTES),
        started.elapsed()
    );
    Ok(())
}

/// podman as it works on this kind of host: runc (crun fails on its cgroup
/// layout) and cgroupfs.
pub fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args(["--runtime", "runc", "--cgroup-manager=cgroupfs"]);
    c
}

/// Builds `podtrace` and `kubectl-podtrace` for musl with the `image`
/// profile; returns the executables.
fn build_static() -> Result<Vec<PathBuf>> {
    let mut c = cmd::cargo();
    c.args(["build", "--target", MUSL_TARGET, "--profile", "image"])
        .args(["-p", "tracer", "-p", "kubectl-podtrace"])
        // Named bins only: the target filter applies to both packages.
        .args(["--bin", "podtrace", "--bin", "kubectl-podtrace"])
        .arg("--message-format=json-render-diagnostics");
    for setting in PROFILE {
        c.args(["--config", setting]);
    }
    let mut exes = Vec::new();
    let status = cmd::stream(&mut c, false, |line| exes.extend(executable(line)))?;
    if !status.success() {
        bail!("building the static binaries failed ({status})");
    }
    Ok(exes)
}

/// An executable from one line of cargo's JSON messages.
fn executable(line: &str) -> Option<PathBuf> {
    let msg: serde_json::Value = serde_json::from_str(line).ok()?;
    if msg["reason"] != "compiler-artifact" {
        return None;
    }
    msg["executable"].as_str().map(PathBuf::from)
}

/// Whether a 64-bit little-endian ELF file asks for a program interpreter
/// (`PT_INTERP`): a dynamically linked one, which a FROM-scratch image cannot
/// run.
fn has_interpreter(elf: &[u8]) -> Result<bool> {
    const PT_INTERP: u32 = 3;
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") {
        bail!("not a 64-bit little-endian ELF file");
    }
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let (Some(phoff), Some(size), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        bail!("truncated ELF header");
    };
    let phoff = usize::try_from(phoff)?;
    for i in 0..usize::from(count) {
        let ty = u32_at(phoff + i * usize::from(size)).context("truncated program headers")?;
        if ty == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Bytes as megabytes (10^6) with one decimal, as podman and registries
/// show image sizes.
fn mb(bytes: u64) -> String {
    format!("{}.{} MB", bytes / 1_000_000, bytes % 1_000_000 / 100_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header with `types` as its program headers.
    fn elf(types: &[u32]) -> Vec<u8> {
        let mut v = vec![0u8; 64];
        v[..6].copy_from_slice(b"\x7fELF\x02\x01");
        v[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        v[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        v[0x38..0x3a].copy_from_slice(&u16::try_from(types.len()).unwrap().to_le_bytes());
        for ty in types {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&ty.to_le_bytes());
            v.extend(ph);
        }
        v
    }

    #[test]
    fn static_or_dynamic() {
        assert!(!has_interpreter(&elf(&[6, 1, 1])).unwrap());
        assert!(has_interpreter(&elf(&[6, 3, 1])).unwrap());
        assert!(has_interpreter(b"#!/bin/sh\n").is_err());
        assert!(has_interpreter(&elf(&[1])[..66]).is_err());
    }

    #[test]
    fn sizes_in_megabytes() {
        assert_eq!(mb(9_312_345), "9.3 MB");
        assert_eq!(mb(20_000_000), "20.0 MB");
    }

    #[test]
    fn every_executable_cargo_names() {
        let line = r#"{"reason":"compiler-artifact","target":{"name":"kubectl-podtrace"},"executable":"/t/x/image/kubectl-podtrace"}"#;
        assert_eq!(executable(line), Some("/t/x/image/kubectl-podtrace".into()));
        assert_eq!(
            executable(r#"{"reason":"compiler-artifact","executable":null}"#),
            None
        );
    }
}
