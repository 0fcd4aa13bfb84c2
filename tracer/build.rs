//! Builds the kernel programs (`tracer-ebpf`) with nightly and bpf-linker
//! through aya-build, and embeds them (see `tracer::ebpf::OBJECT`).
//!
//! `AYA_BUILD_SKIP=1` skips that step, so `cargo check`, clippy and the unit
//! tests need only stable Rust; the binary then refuses to trace with one
//! clear line (cfg `podtrace_no_ebpf`).
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    println!("cargo::rustc-check-cfg=cfg(podtrace_no_ebpf)");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let skip =
        std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        println!("cargo:rustc-cfg=podtrace_no_ebpf");
        return Ok(());
    }
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let workspace = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("tracer has no parent directory"))?;
    let root_dir = workspace.join("tracer-ebpf");
    let root_dir = root_dir.to_str().context("non-UTF-8 path to tracer-ebpf")?;
    // aya-build watches tracer-ebpf; the shared types live next door, and
    // the kernel crate's release profile is the workspace's.
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("tracer-common").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("Cargo.toml").display()
    );
    // bpf-linker must be on PATH; `cargo xtask setup` installs it. Rebuild
    // when it changes.
    if let Some(linker) = find_in_path("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    } else {
        return Err(anyhow!(
            "bpf-linker not found on PATH: run `cargo xtask setup`, or build without the kernel \
             programs with AYA_BUILD_SKIP=1"
        ));
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tracer-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}

fn find_in_path(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
