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
    let status = cmd::stream(&mut c, false, |line| {
        if let Some(path) = executable(line) {
            exe = Some(path);
        }
    })?;
    if !status.success() {
        bail!("building podtrace failed ({status})");
    }
    exe.context("cargo did not report where it put podtrace")
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
