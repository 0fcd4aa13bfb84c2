//! Running commands so that a CI log reads like a shell session: every
//! command that changes something is echoed as `$ ENV=value program args`
//! before it runs, and the same rendering is what a user can paste by hand.

use std::{
    env,
    io::{self, BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output, Stdio},
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context as _, Result, bail};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Prepares the process; call first thing in `main`, before any thread.
pub fn init() {
    // Ctrl-C reaches the children too (same process group) and they stop on
    // their own; xtask only notes it, so that it outlives them and can remove
    // what it created (scratch namespaces) before exiting.
    // A closed terminal (SIGHUP) too: bench must still put back what it
    // changed in /sys.
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        let handler: extern "C" fn(libc::c_int) = on_signal;
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { libc::signal(signal, handler as libc::sighandler_t) };
    }
    // `cargo install` puts bpf-linker in $CARGO_HOME/bin, which is not always
    // on PATH (CI shells); tracer/build.rs looks for it on PATH.
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")));
    if let Some(bin) = home.map(|h| h.join("bin")) {
        let path = env::var_os("PATH").unwrap_or_default();
        if !env::split_paths(&path).any(|p| p == bin)
            && let Ok(joined) = env::join_paths([bin].into_iter().chain(env::split_paths(&path)))
        {
            // SAFETY: called at the start of `main`, before any other thread.
            unsafe { env::set_var("PATH", joined) };
        }
    }
}

/// Whether the user pressed Ctrl-C (or xtask got SIGTERM or SIGHUP).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails once the user has pressed Ctrl-C, so that no further step starts.
pub fn check_interrupt() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Whether xtask runs as root (privileged tests and apt need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The workspace root (where Cargo.toml and README.md are).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` or `<workspace>/target`
/// (.cargo/config.toml does not move it).
pub fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

/// `cargo` in the workspace root. The rustup proxy from PATH, not `$CARGO`:
/// `+nightly` and the clippy/rustfmt subcommands resolve only through it.
pub fn cargo() -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(workspace_root());
    c
}

/// Finds `name` on PATH, like `which`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Echoes and runs a command; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = render(cmd);
    println!("$ {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{shown}`"))?;
    check_interrupt()?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Echoes and runs a clean-up command (from a `Drop`): it runs even after
/// Ctrl-C, unlike [`run`], and a failure is only a warning.
pub fn run_cleanup(cmd: &mut Command) {
    let shown = render(cmd);
    println!("$ {shown}");
    match cmd.status() {
        Ok(status) if status.success() => {}
        Ok(status) => eprintln!("warning: `{shown}` failed ({status})"),
        Err(e) => eprintln!("warning: cannot run `{shown}`: {e}"),
    }
}

/// Echoes and runs a command, handing each line of its stdout to `on_line`
/// as it comes. Its stderr goes straight to the terminal, or with
/// `stderr_too` into the same lines, in the order the command wrote them
/// (cargo says on stderr which test binary the next stdout lines are from).
pub fn stream(
    cmd: &mut Command,
    stderr_too: bool,
    mut on_line: impl FnMut(&str),
) -> Result<ExitStatus> {
    let shown = render(cmd);
    println!("$ {shown}");
    let (reader, writer) = io::pipe().context("creating a pipe")?;
    if stderr_too {
        cmd.stderr(writer.try_clone().context("duplicating a pipe")?);
    }
    let spawned = cmd.stdout(writer).spawn();
    // The Command holds copies of the write end; the reader sees the end of
    // the output only once they are closed too.
    cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit());
    let mut child = spawned.with_context(|| format!("cannot start `{shown}`"))?;
    for line in BufReader::new(reader).lines() {
        on_line(&line.with_context(|| format!("reading the output of `{shown}`"))?);
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{shown}`"))?;
    check_interrupt()?;
    Ok(status)
}

/// Runs a check quietly (not echoed: it changes nothing) and returns its
/// output whatever its exit status; fails only if it cannot start.
pub fn probe(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{}`", render(cmd)))
}

/// Runs a check quietly and returns its stdout; fails with the first line of
/// its stderr unless it exits 0.
pub fn stdout_of(cmd: &mut Command) -> Result<String> {
    let out = probe(cmd)?;
    if !out.status.success() {
        bail!("`{}` failed: {}", render(cmd), first_line(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The first non-empty line of some output, for one-line reports.
pub fn first_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("(no output)")
        .to_owned()
}

/// A command as a shell line: the variables it sets, the program, its
/// arguments, quoted where a shell needs it.
pub fn render(cmd: &Command) -> String {
    let envs = cmd.get_envs().filter_map(|(k, v)| {
        Some(format!(
            "{}={}",
            k.to_string_lossy(),
            quote(&v?.to_string_lossy())
        ))
    });
    let words = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|w| quote(&w.to_string_lossy()));
    envs.chain(words).collect::<Vec<_>>().join(" ")
}

fn quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_env_and_quotes() {
        let mut c = Command::new("cargo");
        c.env("RUSTFLAGS", "-L native=/x y")
            .env_remove("CARGO_TARGET_DIR")
            .args(["install", "it's", ""]);
        assert_eq!(
            render(&c),
            r"RUSTFLAGS='-L native=/x y' cargo install 'it'\''s' ''"
        );
    }

    #[test]
    fn first_line_skips_blank_lines() {
        assert_eq!(first_line(b"\n  error: x \nmore"), "error: x");
        assert_eq!(first_line(b""), "(no output)");
    }
}
