//! Building the `podtrace` binary and finding where cargo put it.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// Builds `podtrace` (debug, or release) and returns the path of the binary.
pub fn build(release: bool) -> Result<PathBuf> {
    let mut c = cmd::cargo();
    // Diagnostics still go to the terminal; stdout carries JSON that names
    // the binary, wherever CARGO_TARGET_DIR or a config put it.
    c.args(["build", "-p", "tracer", "--bin", "podtrace"])
        .arg("--message-format=json-render-diagnostics");
    if release {
        c.arg("--release");
    }
    let mut exe = None;
    let status = cmd::stream(&mut c, true, |line| {
        if let Some(path) = executable(line) {
            exe = Some(path);
        } else if !line.starts_with('{') && !nested_progress(line) {
            eprintln!("{line}");
        }
    })?;
    if !status.success() {
        bail!("building podtrace failed ({status})");
    }
    exe.context("cargo did not report where it put podtrace")
}

/// A progress line of the kernel crate's own cargo build, which aya-build
/// passes up as a build-script warning (`warning: tracer@0.1.0:
/// Compiling aya-ebpf ...`): dozens of "warnings" on a first build that
/// warn of nothing. Real warnings and errors of that build still show.
fn nested_progress(line: &str) -> bool {
    let Some(rest) = line.strip_prefix("warning: ") else {
        return false;
    };
    let Some((package, message)) = rest.split_once(": ") else {
        return false;
    };
    package.contains('@')
        && !package.contains(' ')
        && matches!(
            message.split_whitespace().next(),
            Some(
                "Compiling"
                    | "Checking"
                    | "Finished"
                    | "Fresh"
                    | "Running"
                    | "Updating"
                    | "Locking"
                    | "Adding"
                    | "Downloading"
                    | "Downloaded"
                    | "Blocking"
            )
        )
}

/// The `podtrace` executable from one line of cargo's JSON messages.
fn executable(line: &str) -> Option<PathBuf> {
    let msg: serde_json::Value = serde_json::from_str(line).ok()?;
    if msg["reason"] != "compiler-artifact" || msg["target"]["name"] != "podtrace" {
        return None;
    }
    msg["executable"].as_str().map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_nested_builds_progress_is_hidden() {
        for hidden in [
            "warning: tracer@0.1.0:    Compiling aya-ebpf v0.2.1",
            "warning: tracer@0.1.0:     Finished `release` profile [optimized] target(s) in 1.42s",
        ] {
            assert!(nested_progress(hidden), "{hidden}");
        }
        for shown in [
            "warning: tracer@0.1.0: error[E0308]: mismatched types",
            "warning: tracer@0.1.0: warning: unused variable: `x`",
            "warning: unused variable: `x`",
            "   Compiling tracer v0.1.0 (/work/main/tracer)",
            "error: could not compile `tracer`",
        ] {
            assert!(!nested_progress(shown), "{shown}");
        }
    }

    #[test]
    fn finds_the_podtrace_executable() {
        let line = r#"{"reason":"compiler-artifact","target":{"name":"podtrace","kind":["bin"]},"executable":"/t/release/podtrace","fresh":true}"#;
        assert_eq!(executable(line), Some("/t/release/podtrace".into()));
        let lib = r#"{"reason":"compiler-artifact","target":{"name":"tracer"},"executable":null}"#;
        assert_eq!(executable(lib), None);
        assert_eq!(
            executable(r#"{"reason":"build-finished","success":true}"#),
            None
        );
        assert_eq!(executable("not json"), None);
    }
}
