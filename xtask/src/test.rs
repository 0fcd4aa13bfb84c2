//! `cargo xtask test`: everything CI checks, in order: format, clippy, build,
//! unit tests, the offline build (`AYA_BUILD_SKIP=1`), then every privileged
//! test. Later steps run even when an earlier one fails, so one log shows
//! every problem; the summary at the end says what failed.

use anyhow::{Result, bail};

use crate::{cmd, setup};

/// The crates whose unit tests need neither root nor a kernel; every test
/// binary runs even if an earlier one fails.
const UNIT_TESTS: [&str; 10] = [
    "test",
    "--no-fail-fast",
    "-p",
    "tracer-common",
    "-p",
    "tracer",
    "-p",
    "xtask",
    "-p",
    "kubectl-podtrace",
];

/// Runs every step; fails if any failed, or if the privileged tests did not
/// all run and pass.
pub fn run() -> Result<()> {
    setup::run(&setup::Options::default())?;
    if !cmd::is_root() {
        println!("note: not root: the privileged tests will fail (they are never skipped)");
    }
    let mut privileged = Counts::default();
    let steps: [(&str, &mut dyn FnMut() -> Result<()>); 6] = [
        ("fmt", &mut || cargo(&["fmt", "--all", "--", "--check"])),
        // tracer-ebpf is a member: on the host it compiles as an empty
        // binary, so clippy sees the whole workspace. --keep-going: every
        // crate's lints in one log, not only the first failing crate's.
        ("clippy", &mut || {
            cargo(&[
                "clippy",
                "--keep-going",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])
        }),
        // The privileged tests may run the binary, not only the library.
        ("build", &mut || cargo(&["build", "-p", "tracer"])),
        ("unit tests", &mut || cargo(&UNIT_TESTS)),
        ("offline (AYA_BUILD_SKIP=1)", &mut offline),
        ("privileged tests", &mut || {
            privileged = run_privileged()?;
            privileged.verdict()
        }),
    ];
    let mut results = Vec::new();
    for (name, step) in steps {
        println!("\n== {name}");
        let result = step();
        cmd::check_interrupt()?;
        results.push((name, result));
    }
    println!("\n== summary");
    let mut failed = 0;
    for (name, result) in &results {
        match result {
            Ok(()) => println!("ok      {name}"),
            Err(e) => {
                failed += 1;
                println!("FAILED  {name}: {e:#}");
            }
        }
    }
    println!("{}", privileged.summary());
    if failed > 0 {
        bail!("{failed} of {} steps failed", results.len());
    }
    Ok(())
}

fn cargo(args: &[&str]) -> Result<()> {
    cmd::run(cmd::cargo().args(args))
}

/// Proves the stable-only path: with `AYA_BUILD_SKIP=1`, tracer/build.rs
/// neither runs nightly nor bpf-linker. Its own target dir keeps the main
/// build's cache (with the embedded kernel programs) valid.
fn offline() -> Result<()> {
    let dir = cmd::target_dir().join("skip");
    for args in [&["check", "--workspace"][..], &UNIT_TESTS] {
        let mut c = cmd::cargo();
        c.env("AYA_BUILD_SKIP", "1")
            .env("CARGO_TARGET_DIR", &dir)
            .args(args);
        cmd::run(&mut c)?;
    }
    Ok(())
}

/// Runs the privileged tests one at a time (they share namespaces and
/// kernel state), echoing their output and counting cargo's `test result:`
/// lines of the integration tests (tests/tests/*.rs).
fn run_privileged() -> Result<Counts> {
    let mut counts = Counts::default();
    let mut c = cmd::cargo();
    c.args(["test", "-p", "podtrace-tests", "--no-fail-fast"])
        .args(["--", "--test-threads=1"]);
    let status = cmd::stream(&mut c, true, |line| {
        println!("{line}");
        counts.add(line);
    })?;
    counts.cargo_failed = !status.success();
    Ok(counts)
}

/// Totals over the `test result:` lines of the integration tests in one
/// cargo test run. The crate's unit tests and doc-tests (helpers, a
/// compile-only example) run too, but they are not privileged tests.
#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    passed: u32,
    failed: u32,
    ignored: u32,
    cargo_failed: bool,
    /// Whether the lines being read come from an integration test binary.
    in_integration: bool,
}

impl Counts {
    /// Reads one line of cargo test's output (stdout and stderr): cargo's
    /// `Running tests/x.rs (...)` / `Running unittests ...` / `Doc-tests x`
    /// say whose results follow, e.g.
    /// `test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; ...`.
    fn add(&mut self, line: &str) {
        let line = line.trim_start();
        if let Some(target) = line.strip_prefix("Running ") {
            self.in_integration = target.starts_with("tests/");
            return;
        }
        if line.starts_with("Doc-tests ") {
            self.in_integration = false;
            return;
        }
        let Some(rest) = line.strip_prefix("test result:") else {
            return;
        };
        if !self.in_integration {
            return;
        }
        for part in rest.split(';') {
            let words: Vec<&str> = part.split_whitespace().collect();
            let Some(i) = words.iter().position(|w| w.parse::<u32>().is_ok()) else {
                continue;
            };
            let n: u32 = words[i].parse().unwrap_or_default();
            match words.get(i + 1) {
                Some(&"passed") => self.passed += n,
                Some(&"failed") => self.failed += n,
                Some(&"ignored") => self.ignored += n,
                _ => {}
            }
        }
    }

    /// Privileged tests pass only if some ran, none failed, none was ignored.
    fn verdict(&self) -> Result<()> {
        match self {
            Self { failed: 1.., .. } => bail!("{} failed", self.failed),
            Self { ignored: 1.., .. } => {
                bail!("{} ignored: privileged tests must run", self.ignored)
            }
            Self { passed: 0, .. } => bail!("no privileged test ran"),
            Self {
                cargo_failed: true, ..
            } => bail!("cargo test failed"),
            _ => Ok(()),
        }
    }

    /// The one line CI greps for.
    fn summary(&self) -> String {
        format!(
            "privileged: {} passed, {} failed, {} ignored",
            self.passed, self.failed, self.ignored
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sum_every_test_binary() {
        let mut c = Counts::default();
        for line in [
            "     Running unittests src/lib.rs (target/debug/deps/podtrace_tests-3b9f)",
            "test result: ok. 5 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s",
            "     Running tests/attach.rs (target/debug/deps/attach-b867)",
            "running 2 tests",
            "test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.52s",
            "     Running tests/lab.rs (target/debug/deps/lab-c80a)",
            "test result: FAILED. 1 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "test attach ... ok",
            "   Doc-tests podtrace_tests",
            "test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s",
        ] {
            c.add(line);
        }
        assert_eq!((c.passed, c.failed, c.ignored), (3, 1, 1));
        assert_eq!(c.summary(), "privileged: 3 passed, 1 failed, 1 ignored");
    }

    #[test]
    fn verdict_needs_tests_that_ran_and_passed() {
        let ok = |passed, failed, ignored| Counts {
            passed,
            failed,
            ignored,
            ..Counts::default()
        };
        assert!(ok(1, 0, 0).verdict().is_ok());
        assert!(ok(0, 0, 0).verdict().is_err(), "zero tests ran");
        assert!(ok(1, 0, 1).verdict().is_err(), "an ignored test");
        assert!(ok(1, 1, 0).verdict().is_err());
        let build_failed = Counts {
            cargo_failed: true,
            ..ok(1, 0, 0)
        };
        assert!(build_failed.verdict().is_err());
    }
}
