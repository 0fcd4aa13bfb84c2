//! The lab's "what is my IP" service (the `curl ipinfo.io` of the lab): one
//! background process that answers every TCP connection on the internet
//! host and on each pod with `<who> <peer ip>:<peer port>\n` and appends the
//! same line to the peers log. So a test (or a person) sees which source
//! address arrived: the node's ENI IP after SNAT, the pod IP without.
//!
//! The listening sockets are opened by `up`, each inside its namespace (a
//! socket stays in the netns it was made in), then handed to one process
//! forked off podtrace. It needs no tool beyond the kernel and works the
//! same whether `podtrace lab up` or a test called `up`. It lives in the
//! internet host's netns (so `ip netns pids internet` shows it), is named
//! `podtrace-whoami`, is killed by `down`, and exits by itself once that
//! netns is deleted.

use std::{
    ffi::CString,
    fs::{File, OpenOptions},
    io,
    net::{Ipv4Addr, SocketAddrV4, TcpListener},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, IntoRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    },
    path::Path,
};

/// The process name (`comm`) of the daemon.
pub const COMM: &str = "podtrace-whoami";
/// The same, for prctl(PR_SET_NAME) (at most 15 bytes).
const COMM_C: &std::ffi::CStr = c"podtrace-whoami";

/// One listening socket and the name it answers with.
pub struct Endpoint {
    /// `internet` or `default/pod-1`.
    pub who: String,
    /// Bound and listening, in the right netns.
    pub listener: TcpListener,
}

/// A line of the peers log: `who` saw a connection from `peer`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Which endpoint accepted it.
    pub who: String,
    /// The source address it saw.
    pub peer: SocketAddrV4,
}

impl Peer {
    /// Parses `<who> <ip>:<port>` (a reply or a peers-log line).
    pub fn parse(line: &str) -> Option<Self> {
        let (who, peer) = line.trim().split_once(' ')?;
        Some(Self {
            who: who.to_owned(),
            peer: peer.parse().ok()?,
        })
    }
}

/// Every connection the whoami service has answered, oldest first.
pub fn read_peers(log: impl AsRef<Path>) -> io::Result<Vec<Peer>> {
    Ok(std::fs::read_to_string(log)?
        .lines()
        .filter_map(Peer::parse)
        .collect())
}

/// Starts the daemon serving `endpoints`, living in netns `home` (an open
/// netns file) until the netns file `watch` goes away; returns its pid.
pub fn spawn(endpoints: Vec<Endpoint>, home: &File, watch: &Path, log: &Path) -> io::Result<i32> {
    let log = above_stdio(OpenOptions::new().create(true).append(true).open(log)?)?;
    let devnull = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let watch_ino = std::fs::metadata(watch)?.ino();
    let watch = CString::new(watch.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // Everything the child uses is allocated here: after fork() in a
    // multi-threaded process only async-signal-safe calls are allowed.
    let mut pollfds: Vec<libc::pollfd> = Vec::new();
    let mut names: Vec<Vec<u8>> = Vec::new();
    for ep in endpoints {
        ep.listener.set_nonblocking(true)?;
        pollfds.push(libc::pollfd {
            fd: above_stdio(ep.listener)?.into_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        names.push(ep.who.into_bytes());
    }
    let mut keep: Vec<i32> = pollfds.iter().map(|p| p.fd).collect();
    keep.push(log.as_raw_fd());
    keep.sort_unstable();
    let child = Child {
        pollfds,
        names,
        keep,
        log: log.as_raw_fd(),
        devnull: devnull.as_raw_fd(),
        home: home.as_raw_fd(),
        watch,
        watch_ino,
    };
    let mut pipe = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the child only makes raw syscalls on memory prepared above,
    // then _exits; see Child::serve.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // Intermediate child: detach, fork the daemon, report its pid, exit,
        // so that the daemon is reparented and never a zombie of ours.
        // SAFETY: setsid/fork/write/_exit are async-signal-safe.
        unsafe {
            libc::setsid();
            // Named before the daemon exists, so that it has its name from
            // its first instant: `down` and `up` recognise it by name.
            libc::prctl(libc::PR_SET_NAME, COMM_C.as_ptr());
            let daemon = libc::fork();
            if daemon == 0 {
                child.serve();
            }
            libc::write(pipe[1], (&raw const daemon).cast(), size_of::<i32>());
            libc::_exit(0);
        }
    }
    let fork_err = io::Error::last_os_error();
    // SAFETY: closing our write end; the fds are ours.
    unsafe { libc::close(pipe[1]) };
    let result = if pid < 0 {
        Err(fork_err)
    } else {
        let mut status = 0;
        let mut daemon: i32 = -1;
        // SAFETY: waiting for our own child; reading into a local i32.
        unsafe {
            libc::waitpid(pid, &raw mut status, 0);
            libc::read(pipe[0], (&raw mut daemon).cast(), size_of::<i32>());
        }
        if daemon > 0 {
            Ok(daemon)
        } else {
            Err(io::Error::other("the whoami daemon did not start"))
        }
    };
    // SAFETY: our read end and our copies of the listeners: the daemon has
    // its own, and ports must close when it dies.
    unsafe { libc::close(pipe[0]) };
    for fd in &child.pollfds {
        // SAFETY: as above.
        unsafe { libc::close(fd.fd) };
    }
    result
}

/// The same file on a descriptor above 2: the daemon points 0-2 at
/// /dev/null, which must not clobber a socket that got a low number because
/// whoever ran podtrace closed its stdin.
fn above_stdio<T: From<OwnedFd> + Into<OwnedFd>>(f: T) -> io::Result<T> {
    let fd: OwnedFd = f.into();
    if fd.as_raw_fd() > 2 {
        return Ok(T::from(fd));
    }
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor we then own.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is a fresh descriptor nobody else owns.
    Ok(T::from(unsafe { OwnedFd::from_raw_fd(new) }))
}

/// What the daemon owns, prepared before fork.
struct Child {
    pollfds: Vec<libc::pollfd>,
    names: Vec<Vec<u8>>,
    keep: Vec<i32>,
    log: i32,
    devnull: i32,
    home: i32,
    watch: CString,
    watch_ino: u64,
}

impl Child {
    /// The daemon's body. Raw syscalls only: no allocation, no locks, no
    /// panics (the process was forked from a multi-threaded one).
    fn serve(mut self) -> ! {
        // SAFETY: every call below is an async-signal-safe syscall wrapper
        // on fds and memory this process owns.
        unsafe {
            if libc::setns(self.home, libc::CLONE_NEWNET) != 0 {
                libc::_exit(1);
            }
            // Handlers inherited from the parent (tokio's) would swallow
            // SIGTERM; the daemon must die of it.
            for sig in 1..32 {
                libc::signal(sig, libc::SIG_DFL);
            }
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&raw mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &raw const none, std::ptr::null_mut());
            for fd in 0..3 {
                libc::dup2(self.devnull, fd);
            }
            // Close everything else inherited (netlink sockets, pipes of
            // whoever ran us): close_range over the gaps between kept fds.
            let mut from = 3u32;
            for &fd in &self.keep {
                let fd = fd as u32;
                if fd > from {
                    libc::syscall(libc::SYS_close_range, from, fd - 1, 0);
                }
                from = fd + 1;
            }
            libc::syscall(libc::SYS_close_range, from, u32::MAX, 0);
            loop {
                let ready = libc::poll(self.pollfds.as_mut_ptr(), self.pollfds.len() as _, 1000);
                if !self.netns_still_there() {
                    libc::_exit(0);
                }
                if ready <= 0 {
                    continue;
                }
                for i in 0..self.pollfds.len() {
                    if self.pollfds[i].revents & libc::POLLIN != 0 {
                        answer(self.pollfds[i].fd, &self.names[i], self.log);
                    }
                }
            }
        }
    }

    /// False once the watched netns file is gone or replaced (`down` or a
    /// manual `ip netns del`): the daemon must not outlive the lab.
    fn netns_still_there(&self) -> bool {
        // SAFETY: stat into a local struct.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            libc::stat(self.watch.as_ptr(), &raw mut st) == 0 && st.st_ino == self.watch_ino
        }
    }
}

/// Accepts one connection on `fd`, tells the peer what it looks like, logs
/// it, closes. Async-signal-safe.
fn answer(fd: i32, who: &[u8], log: i32) {
    // SAFETY: syscalls on our fds and locals.
    unsafe {
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let conn = libc::accept4(fd, (&raw mut sa).cast(), &raw mut len, libc::SOCK_CLOEXEC);
        if conn < 0 {
            return;
        }
        let ip = Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)).octets();
        let mut line = Line::default();
        line.push(who);
        line.push(b" ");
        for (i, octet) in ip.iter().enumerate() {
            if i > 0 {
                line.push(b".");
            }
            line.number(u32::from(*octet));
        }
        line.push(b":");
        line.number(u32::from(u16::from_be(sa.sin_port)));
        line.push(b"\n");
        let text = line.bytes();
        libc::send(conn, text.as_ptr().cast(), text.len(), libc::MSG_NOSIGNAL);
        libc::write(log, text.as_ptr().cast(), text.len());
        // Drain what the client sent (briefly), so that closing does not
        // answer its request with a reset before it read our line.
        libc::shutdown(conn, libc::SHUT_WR);
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        libc::setsockopt(
            conn,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        );
        let mut sink = [0u8; 512];
        for _ in 0..8 {
            if libc::recv(conn, sink.as_mut_ptr().cast(), sink.len(), 0) <= 0 {
                break;
            }
        }
        libc::close(conn);
    }
}

/// A fixed-size line buffer: formatting without allocating.
struct Line {
    buf: [u8; 160],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Self {
            buf: [0; 160],
            len: 0,
        }
    }
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if let Some(slot) = self.buf.get_mut(self.len) {
                *slot = b;
                self.len += 1;
            }
        }
    }

    fn number(&mut self, mut n: u32) {
        let mut digits = [0u8; 10];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_name_fits_comm() {
        assert_eq!(COMM_C.to_str().unwrap(), COMM);
        assert!(COMM.len() <= 15);
    }

    #[test]
    fn lines_format_and_parse() {
        let mut line = Line::default();
        line.push(b"default/pod-1 ");
        line.number(192);
        line.push(b".");
        line.number(0);
        line.push(b":");
        line.number(65535);
        assert_eq!(line.bytes(), b"default/pod-1 192.0:65535");
        let peer = Peer::parse("internet 192.168.1.10:40123\n").unwrap();
        assert_eq!(peer.who, "internet");
        assert_eq!(peer.peer, "192.168.1.10:40123".parse().unwrap());
        assert_eq!(Peer::parse("garbage"), None);
        let mut long = Line::default();
        long.push(&[b'x'; 400]);
        assert_eq!(long.bytes().len(), 160);
    }
}
