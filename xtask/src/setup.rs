//! `cargo xtask setup`: installs what building and testing podtrace needs on
//! a Debian machine with rustup, and skips what is already there. Every step
//! checks by running the real thing (`bpf-linker --version`, not "a file
//! exists"), so a tool broken by a nightly update gets rebuilt.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::cmd;

/// Debian packages the privileged tests, the lab and the demo use.
const PACKAGES: [&str; 9] = [
    "iproute2",
    "iptables",
    "iputils-ping",
    "conntrack",
    "tcpdump",
    "tshark",
    "iperf3",
    "bpftool",
    "tmux",
];

/// Extra packages for building and running the container image (musl-gcc
/// builds ring's C code for the static binary).
const IMAGE_PACKAGES: [&str; 3] = ["podman", "runc", "musl-tools"];

/// The target of the static binary in the image.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// `cargo xtask setup` flags.
#[derive(clap::Args, Debug, Default)]
pub struct Options {
    /// Also install podman, runc, musl-tools and the musl target (for the
    /// container image).
    #[arg(long)]
    pub image: bool,
}

/// What a step found.
enum State {
    /// Present and working: what it is.
    Ok(String),
    /// Missing or broken: why, and the commands that fix it, in order.
    Fix(String, Vec<Command>),
}

/// Runs every step; stops at the first that fails, saying which and how to
/// do it by hand.
pub fn run(opts: &Options) -> Result<()> {
    let mut packages = PACKAGES.to_vec();
    if opts.image {
        packages.extend(IMAGE_PACKAGES);
    }
    let steps: [(&str, &dyn Fn() -> Result<State>); 5] = [
        ("apt packages", &|| apt(&packages)),
        ("nightly toolchain", &nightly),
        ("nightly rust-src", &rust_src),
        ("bpf-linker", &bpf_linker),
        ("clippy and rustfmt", &lints),
    ];
    for (name, check) in steps {
        ensure(name, check)?;
    }
    if opts.image {
        ensure("musl target", &musl_target)?;
    }
    Ok(())
}

fn musl_target() -> Result<State> {
    let list = cmd::stdout_of(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if list.lines().any(|l| l.trim() == MUSL_TARGET) {
        return Ok(State::Ok(MUSL_TARGET.into()));
    }
    let mut add = Command::new("rustup");
    add.args(["target", "add", MUSL_TARGET]);
    Ok(State::Fix(
        "missing (the image's static podtrace)".into(),
        vec![add],
    ))
}

fn ensure(name: &str, check: &dyn Fn() -> Result<State>) -> Result<()> {
    let mut by_hand = None;
    let result = check().and_then(|state| {
        let (why, mut fix) = match state {
            State::Ok(what) => {
                println!("ok       {name}: {what}");
                return Ok(());
            }
            State::Fix(why, fix) => (why, fix),
        };
        println!("install  {name}: {why}");
        by_hand = Some(fix.iter().map(cmd::render).collect::<Vec<_>>().join(" && "));
        fix.iter_mut().try_for_each(cmd::run)?;
        match check()? {
            State::Ok(what) => {
                println!("ok       {name}: {what}");
                Ok(())
            }
            State::Fix(why, _) => bail!("still not right after installing: {why}"),
        }
    });
    result.map_err(|e| {
        println!("FAILED   {name}: {e:#}");
        if let Some(by_hand) = by_hand {
            println!("         by hand: {by_hand}");
        }
        anyhow!("setup step `{name}` failed")
    })
}

fn apt(packages: &[&str]) -> Result<State> {
    // Unknown packages make dpkg-query exit 1; they still count as missing.
    let out = cmd::probe(
        Command::new("dpkg-query")
            .arg("-W")
            .arg("-f=${Package} ${db:Status-Abbrev}\n")
            .args(packages),
    )
    .context("dpkg-query: is this a Debian machine?")?;
    let missing = missing_packages(packages, &String::from_utf8_lossy(&out.stdout));
    if missing.is_empty() {
        return Ok(State::Ok(format!("all {} present", packages.len())));
    }
    let mut update = Command::new("apt-get");
    update.args(["update", "-q"]);
    let mut install = Command::new("apt-get");
    install
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-q", "-y", "--no-install-recommends"])
        .args(&missing);
    Ok(State::Fix(
        format!("missing {}", missing.join(" ")),
        vec![update, install],
    ))
}

/// The wanted packages that dpkg-query's `${Package} ${db:Status-Abbrev}`
/// lines do not show as installed (`ii`).
fn missing_packages<'a>(wanted: &[&'a str], dpkg: &str) -> Vec<&'a str> {
    let installed: Vec<&str> = dpkg
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, status)| status.starts_with("ii"))
        .map(|(name, _)| name)
        .collect();
    wanted
        .iter()
        .copied()
        .filter(|w| !installed.contains(w))
        .collect()
}

/// `rustc +nightly` without letting rustup install nightly behind our back.
fn nightly_rustc() -> Command {
    let mut c = Command::new("rustc");
    c.arg("+nightly").env("RUSTUP_AUTO_INSTALL", "0");
    c
}

fn nightly() -> Result<State> {
    let out = cmd::probe(nightly_rustc().arg("--version"))?;
    if out.status.success() {
        return Ok(State::Ok(cmd::first_line(&out.stdout)));
    }
    let mut install = Command::new("rustup");
    // Setup installs a toolchain; updating rustup itself is not its call.
    install
        .args(["toolchain", "install", "nightly", "--profile", "minimal"])
        .arg("--no-self-update");
    Ok(State::Fix("missing".into(), vec![install]))
}

fn rust_src() -> Result<State> {
    let list = cmd::stdout_of(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if list.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(State::Ok("installed".into()));
    }
    let mut add = Command::new("rustup");
    add.args(["component", "add", "rust-src", "--toolchain", "nightly"]);
    Ok(State::Fix(
        "missing (aya-build compiles core for bpf from it)".into(),
        vec![add],
    ))
}

fn bpf_linker() -> Result<State> {
    let broken = match cmd::which("bpf-linker") {
        None => None,
        Some(path) => {
            let out = cmd::probe(Command::new(&path).arg("--version"))?;
            if out.status.success() {
                let version = cmd::first_line(&out.stdout);
                return Ok(State::Ok(format!("{version} ({})", path.display())));
            }
            Some(cmd::first_line(&out.stderr))
        }
    };
    // Built against the nightly toolchain's own libLLVM, the one rustc
    // +nightly emits bitcode for; its name changes with nightly updates.
    let sysroot = cmd::stdout_of(nightly_rustc().args(["--print", "sysroot"]))?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let names = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("listing {}", lib_dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok());
    let (major, lib) =
        llvm_dylib(names).with_context(|| format!("no libLLVM-*.so in {}", lib_dir.display()))?;
    let dir = lib_dir.display();
    let mut install = Command::new("cargo");
    install
        .env(
            "RUSTFLAGS",
            format!("-L native={dir} -l dylib={lib} -C link-arg=-Wl,-rpath,{dir}"),
        )
        // Its own RUSTFLAGS would invalidate a shared target dir's cache.
        .env_remove("CARGO_TARGET_DIR")
        .args(["install", "bpf-linker", "--locked", "--no-default-features"])
        .args(["--features", &format!("llvm-{major},no-llvm-linking")]);
    let why = match broken {
        None => format!("missing; building it against {lib}"),
        Some(error) => {
            install.arg("--force");
            format!("present but broken ({error}); rebuilding it against {lib}")
        }
    };
    Ok(State::Fix(why, vec![install]))
}

/// From a toolchain's lib directory listing, the LLVM major version and the
/// `-l dylib=` name of its shared libLLVM, e.g. `libLLVM-22-rust-1.97.0-nightly.so`
/// gives `(22, "LLVM-22-rust-1.97.0-nightly")`.
fn llvm_dylib(names: impl IntoIterator<Item = String>) -> Option<(u32, String)> {
    names.into_iter().find_map(|name| {
        let lib = name.strip_prefix("lib")?.strip_suffix(".so")?;
        let version = lib.strip_prefix("LLVM-")?;
        let major = version.split(['-', '.']).next()?.parse().ok()?;
        Some((major, lib.to_owned()))
    })
}

fn lints() -> Result<State> {
    let clippy = cmd::probe(cmd::cargo().args(["clippy", "--version"]))?;
    let fmt = cmd::probe(cmd::cargo().args(["fmt", "--version"]))?;
    if clippy.status.success() && fmt.status.success() {
        let versions = [&clippy.stdout, &fmt.stdout].map(|o| cmd::first_line(o));
        return Ok(State::Ok(versions.join(", ")));
    }
    let mut add = Command::new("rustup");
    add.args(["component", "add", "clippy", "rustfmt"]);
    Ok(State::Fix("missing".into(), vec![add]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_not_installed_are_missing() {
        let dpkg = "iproute2 ii \ntcpdump rc \ntmux ii \n";
        let wanted = ["iproute2", "tcpdump", "tmux", "tshark"];
        assert_eq!(missing_packages(&wanted, dpkg), ["tcpdump", "tshark"]);
        assert_eq!(missing_packages(&["tmux"], dpkg), Vec::<&str>::new());
    }

    #[test]
    fn llvm_dylib_from_toolchain_listing() {
        let names = [
            "librustc_driver-b5a965480ee51f9a.so",
            "libLLVM.so.22.1-rust-1.97.0-nightly",
            "libLLVM-22-rust-1.97.0-nightly.so",
        ]
        .map(String::from);
        assert_eq!(
            llvm_dylib(names),
            Some((22, "LLVM-22-rust-1.97.0-nightly".to_owned()))
        );
        assert_eq!(
            llvm_dylib(["libLLVM-19.so".to_owned()]),
            Some((19, "LLVM-19".to_owned()))
        );
        assert_eq!(llvm_dylib(["libLLVM.so".to_owned()]), None);
    }
}
