//! `podtrace watch` in a real terminal: tmux on the lab, a pod pinging a
//! pod on the other node. The screen must show the flow (pod names, path
//! label, ENI) and its hops; every way out (`q`, Ctrl-C, SIGTERM) must
//! give the shell back with the terminal restored and nothing attached.

use std::{
    path::PathBuf,
    process::{Command, Output},
    time::{Duration, Instant},
};

use podtrace_tests::{
    LabGuard,
    process::{podtrace_bin, serial},
    unique,
};
use tracer::kernel::podtrace_links;

/// A tmux server of our own (its own socket), with one 160x40 pane running
/// a plain shell; killed on drop, whatever happened.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start() -> Self {
        let me = Self {
            socket: unique("tmux"),
        };
        let out = me.tmux(&[
            "new-session",
            "-d",
            "-s",
            "w",
            "-x",
            "160",
            "-y",
            "40",
            "env",
            "PS1=watch-test$ ",
            "TERM=xterm-256color",
            "bash",
            "--norc",
            "--noprofile",
        ]);
        assert!(out.status.success(), "tmux new-session: {out:?}");
        me
    }

    fn tmux(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("run tmux")
    }

    /// Types `keys` (tmux key names: `Enter`, `C-c`, or literal text).
    fn send(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "w"];
        args.extend_from_slice(keys);
        assert!(self.tmux(&args).status.success(), "send-keys {keys:?}");
    }

    /// What the pane shows now.
    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.tmux(&["capture-pane", "-p", "-t", "w"]).stdout).into_owned()
    }

    /// Waits (up to `secs`) until `pred` holds for the pane; returns it.
    fn wait_for(&self, what: &str, secs: u64, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "timed out waiting for {what}; the pane shows:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// True while the pane is on the alternate screen.
    fn alternate(&self) -> bool {
        let out = self.tmux(&["display-message", "-p", "-t", "w", "#{alternate_on}"]);
        String::from_utf8_lossy(&out.stdout).trim() == "1"
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

/// A `podtrace watch` started from the pane's shell, which prints its
/// exit code afterwards.
struct Watch {
    ready: PathBuf,
    pid: PathBuf,
    tag: String,
}

impl Watch {
    fn start(tmux: &Tmux, lab: &LabGuard) -> Self {
        Self::start_with(tmux, lab, "")
    }

    /// Starts it with `env` (`NAME=value ` words) before the command.
    fn start_with(tmux: &Tmux, lab: &LabGuard, env: &str) -> Self {
        let tag = unique("w");
        let tmp = std::env::temp_dir();
        let me = Self {
            ready: tmp.join(format!("{tag}.ready")),
            pid: tmp.join(format!("{tag}.pid")),
            tag,
        };
        let cmd = format!(
            "{env}sh -c 'echo $$ > {pid}; exec {bin} watch --netns {a} --netns {b} --ready-file {ready}'; echo EXIT-{tag}'='$?",
            pid = me.pid.display(),
            bin = podtrace_bin().display(),
            a = lab.node("node-a").netns,
            b = lab.node("node-b").netns,
            ready = me.ready.display(),
            tag = me.tag,
        );
        tmux.send(&["-l", &cmd]);
        tmux.send(&["Enter"]);
        let start = Instant::now();
        while !me.ready.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "podtrace watch never became ready:\n{}",
                tmux.screen()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Text of the header, not of the command line typed.
        tmux.wait_for("the watch screen", 10, |s| s.contains("events/s"));
        me
    }

    fn pid(&self) -> i32 {
        std::fs::read_to_string(&self.pid)
            .expect("pid file")
            .trim()
            .parse()
            .expect("a pid")
    }

    /// Waits for the shell to print the exit code; checks the terminal is
    /// restored (normal screen, cooked mode) and nothing is attached.
    fn assert_left_cleanly(&self, tmux: &Tmux, how: &str) {
        let _ = self.assert_left(tmux, how, 0);
    }

    /// [`Watch::assert_left_cleanly`], expecting exit code `code`.
    /// Returns what the pane showed when the shell came back.
    fn assert_left(&self, tmux: &Tmux, how: &str, code: i32) -> String {
        let marker = format!("EXIT-{}=", self.tag);
        let back = tmux.wait_for(&format!("the shell after {how}"), 15, |s| {
            s.contains(&marker)
        });
        assert!(
            back.lines()
                .any(|l| l.trim_end() == format!("{marker}{code}")),
            "exit code after {how}:\n{back}"
        );
        assert!(
            !tmux.alternate(),
            "still on the alternate screen after {how}"
        );
        assert!(
            !back.contains("SOURCE"),
            "the table is gone after {how}:\n{back}"
        );
        // Raw mode left on would show as -icanon/-echo here.
        tmux.send(&[
            "-l",
            "stty -a | tr ' ' '\\n' | grep -x -e icanon -e echo | tr '\\n' ' '; echo STTY'-'DONE",
        ]);
        tmux.send(&["Enter"]);
        let s = tmux.wait_for("stty", 10, |s| s.contains("STTY-DONE"));
        assert!(
            s.contains("icanon echo STTY-DONE"),
            "terminal not restored after {how}:\n{s}"
        );
        assert_eq!(
            podtrace_links(),
            vec![],
            "programs still attached after {how}"
        );
        tmux.send(&["-l", "clear"]);
        tmux.send(&["Enter"]);
        back
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ready);
        let _ = std::fs::remove_file(&self.pid);
    }
}

#[test]
fn watch_shows_the_lab_flow_and_restores_the_terminal() {
    let _serial = serial();
    let lab = LabGuard::up();
    let (p1, p3) = (lab.pod("pod-1"), lab.pod("pod-3"));
    assert_eq!(p1.eni, "ens5", "pod-1 has an ens5 address");
    let tmux = Tmux::start();
    tmux.wait_for("the shell prompt", 10, |s| s.contains("watch-test$"));

    // q: the flow row, its details, then quit.
    let w = Watch::start(&tmux, &lab);
    lab.exec(
        &p1.netns,
        &[
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "1",
            &p3.ip.to_string(),
        ],
    );
    let s = tmux.wait_for("the pod-1 -> pod-3 flow", 15, |s| {
        s.lines().any(|l| {
            l.contains("pod-1")
                && l.contains("pod-3")
                && l.contains("icmp")
                && l.contains("direct")
                && l.contains("ens5")
        })
    });
    assert!(s.contains("hooks: "), "header:\n{s}");
    // Filtered down to that flow, which is then selected: its details.
    tmux.send(&["/"]);
    tmux.send(&["-l", "pod-3"]);
    tmux.send(&["Enter", "Enter"]);
    // The whole pane, not its first lines: tmux may show a frame half
    // drawn, the heading there and the hops not yet.
    let hop = |s: &str, iface: &str, dir: &str| {
        s.lines()
            .any(|l| l.contains(iface) && l.contains(dir) && l.contains(&p1.ip.to_string()))
    };
    tmux.wait_for(
        "the detail pane: pod-1's veth ingress and node-a's ens5 egress hops, and their roles",
        10,
        |s| {
            s.contains("request: latest packet")
                && hop(s, &p1.host_veth, "ingress")
                && hop(s, "ens5", "egress")
                && s.contains("pod veth of pod-1")
                && s.contains("ENI 0 (primary)")
        },
    );
    // pod-2 to the internet host: SNAT to node-a's ens5 address, and
    // conntrack's tuples in the (still open) detail pane.
    let (p2, internet) = (lab.pod("pod-2"), lab.plan().internet.ip.to_string());
    lab.exec(
        &p2.netns,
        &["ping", "-c", "2", "-i", "0.2", "-W", "1", &internet],
    );
    tmux.send(&["/", "BSpace", "BSpace", "BSpace", "BSpace", "BSpace"]);
    tmux.send(&["-l", "pod-2"]);
    tmux.send(&["Enter"]);
    tmux.wait_for(
        "the SNAT row (snat, ens5, SNAT), the rewrite under its hop and conntrack's tuples",
        10,
        |s| {
            s.lines().any(|l| {
                l.contains("pod-2")
                    && l.contains(&internet)
                    && l.contains("snat")
                    && l.contains("ens5")
                    && l.contains("SNAT")
            }) && s.contains("^ SNAT")
                && s.contains("conntrack")
                && s.contains(&format!("original {} > {internet}", p2.ip))
        },
    );
    tmux.send(&["q"]);
    w.assert_left_cleanly(&tmux, "q");
    drop(w);

    // Ctrl-C (a key in raw mode, not a signal).
    let w = Watch::start(&tmux, &lab);
    tmux.send(&["C-c"]);
    w.assert_left_cleanly(&tmux, "Ctrl-C");
    drop(w);

    // SIGTERM from outside.
    let w = Watch::start(&tmux, &lab);
    // SAFETY: kill(2) of the podtrace process the pane started.
    assert_eq!(unsafe { libc::kill(w.pid(), libc::SIGTERM) }, 0);
    w.assert_left_cleanly(&tmux, "SIGTERM");
    drop(w);

    // A panic (debug builds panic on `!` when asked to): the hook restores
    // the terminal first, so the message is readable; unwinding detaches.
    let w = Watch::start_with(&tmux, &lab, "PODTRACE_WATCH_TEST_PANIC=1 RUST_BACKTRACE=0 ");
    tmux.send(&["!"]);
    let back = w.assert_left(&tmux, "a panic", 101);
    assert!(back.contains("test panic requested"), "{back}");
}

/// The terminal vanishes (its tmux server, ssh connection or window
/// gone): watch must end, detach everything and not spin, whether the
/// hangup's SIGHUP reaches it or is ignored (`trap '' HUP`, as under
/// nohup), when only the terminal's end tells.
#[test]
fn watch_ends_when_its_terminal_hangs_up() {
    let _serial = serial();
    let lab = LabGuard::up();
    for ignore_hup in [false, true] {
        let tmux = Tmux::start();
        tmux.wait_for("the shell prompt", 10, |s| s.contains("watch-test$"));
        if ignore_hup {
            tmux.send(&["-l", "trap '' HUP"]);
            tmux.send(&["Enter"]);
        }
        let w = Watch::start(&tmux, &lab);
        let pid = w.pid();
        let _ = tmux.tmux(&["kill-server"]);
        let deadline = Instant::now() + Duration::from_secs(10);
        // SAFETY: kill(2) with signal 0 only asks whether the pid lives.
        while unsafe { libc::kill(pid, 0) } == 0 {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if Instant::now() >= deadline {
                // SAFETY: ends the stuck watch we started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                panic!(
                    "watch (SIGHUP ignored: {ignore_hup}) still running 10 s after its terminal hung up: {state}"
                );
            }
            // A zombie has ended; its parent shell is gone with tmux.
            if state
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            podtrace_links(),
            vec![],
            "programs attached after the hangup (SIGHUP ignored: {ignore_hup})"
        );
    }
}

/// A terminal that never answers "where is your cursor?" (the bare pty
/// `script` gives, as some serial consoles and CI runners do): watch must
/// still start (its ready file, written once the screen is up, appears)
/// and leave cleanly on SIGINT, with nothing attached.
#[test]
fn watch_starts_on_a_terminal_that_never_answers_cursor_queries() {
    let _serial = serial();
    let pair = podtrace_tests::VethPair::new("wq");
    let ready = std::env::temp_dir().join(format!("{}.ready", unique("wq")));
    let cmd = format!(
        "exec {} watch --netns {} --ready-file {}",
        podtrace_bin().display(),
        pair.a,
        ready.display()
    );
    // `script` puts watch on a pty of its own and writes the screen to
    // stdout; nothing on the other side answers the terminal's queries.
    let mut child = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run script(1)");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ready.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "watch ended ({status}) before its screen was up: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(Instant::now() < deadline, "watch never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!podtrace_links().is_empty(), "watch attached nothing");
    // SIGINT to watch itself (script's child, exec'd in its place).
    let script = child.id().to_string();
    let watch: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // "pid (comm) S ppid ...": the comm may hold spaces.
            let ppid = stat.rsplit_once(") ")?.1.split_whitespace().nth(1)?;
            (ppid == script).then(|| e.file_name().to_str()?.parse().ok())?
        })
        .collect();
    assert_eq!(watch.len(), 1, "script's child: {watch:?}");
    // SAFETY: plain kill(2) of the watch process we started.
    unsafe { libc::kill(watch[0], libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "watch did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "watch under script exited with {status}");
    assert!(podtrace_links().is_empty(), "programs left attached");
    assert!(!ready.exists(), "the ready file outlived the run");
}
