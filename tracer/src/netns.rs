//! Network namespaces: open one by name or path, run code inside it on the
//! calling thread, and learn the cookie the kernel programs report for it.

use std::{
    fs::File,
    io,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use nix::sched::{CloneFlags, setns};

/// Where `ip netns add NAME` puts its namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Errors about namespaces, with what a user needs to fix them.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The name or path does not exist.
    #[error("netns \"{name}\" does not exist (ip netns list shows: {known})")]
    NotFound {
        /// What the user asked for.
        name: String,
        /// Names under /run/netns, comma-separated.
        known: String,
    },
    /// The path is a file, but not a network namespace.
    #[error(
        "{path} is not a network namespace: give a name under /run/netns (ip netns list) or a \
         path like /proc/PID/ns/net"
    )]
    NotNetns {
        /// The path given.
        path: String,
    },
    /// Opening or entering the namespace failed.
    #[error("netns \"{name}\": {what}: {source}")]
    Io {
        /// Which namespace.
        name: String,
        /// Which step failed.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// An open network namespace.
#[derive(Debug)]
pub struct Netns {
    /// What podtrace calls it: the `ip netns` name, the path given, or
    /// `host` for the namespace podtrace started in.
    pub name: String,
    /// Path it was opened from.
    pub path: PathBuf,
    /// The kernel's netns cookie (what events carry).
    pub cookie: u64,
    /// Inode of the namespace file: equal inodes mean the same namespace.
    pub inode: u64,
    file: File,
}

impl Netns {
    /// The namespace of the calling thread.
    pub fn current() -> Result<Self, NetnsError> {
        Self::open_path("host", Path::new("/proc/thread-self/ns/net"))
    }

    /// Opens `spec`: a name under /run/netns, or a path (anything with a `/`).
    pub fn open(spec: &str) -> Result<Self, NetnsError> {
        let path = if spec.contains('/') {
            PathBuf::from(spec)
        } else {
            Path::new(NETNS_RUN_DIR).join(spec)
        };
        match std::fs::metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(NetnsError::NotFound {
                name: spec.to_owned(),
                known: known_names().join(", "),
            }),
            Err(source) => Err(NetnsError::Io {
                name: spec.to_owned(),
                what: "stat",
                source,
            }),
            Ok(_) => Self::open_path(spec, &path),
        }
    }

    fn open_path(name: &str, path: &Path) -> Result<Self, NetnsError> {
        let io_err = |what| {
            move |source| NetnsError::Io {
                name: name.to_owned(),
                what,
                source,
            }
        };
        let file = File::open(path).map_err(io_err("open"))?;
        if !is_netns(&file) {
            return Err(NetnsError::NotNetns {
                path: path.display().to_string(),
            });
        }
        let inode = std::os::unix::fs::MetadataExt::ino(&file.metadata().map_err(io_err("stat"))?);
        let mut ns = Self {
            name: name.to_owned(),
            path: path.to_owned(),
            cookie: 0,
            inode,
            file,
        };
        ns.cookie = ns.run(netns_cookie)?.map_err(io_err("SO_NETNS_COOKIE"))?;
        Ok(ns)
    }

    /// Runs `f` with the calling thread inside this namespace, then moves the
    /// thread back, also when `f` panics. Other threads are not affected.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T, NetnsError> {
        let _guard = self.enter()?;
        Ok(f())
    }

    /// Moves the calling thread into this namespace until the guard drops.
    pub fn enter(&self) -> Result<NetnsGuard, NetnsError> {
        let io_err = |what| {
            move |source| NetnsError::Io {
                name: self.name.clone(),
                what,
                source,
            }
        };
        let back = File::open("/proc/thread-self/ns/net").map_err(io_err("open own netns"))?;
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| io::Error::from_raw_os_error(e as i32))
            .map_err(io_err("setns"))?;
        Ok(NetnsGuard { back })
    }
}

/// Puts the thread back into the namespace it came from when dropped.
#[must_use = "the thread leaves the namespace when the guard drops"]
pub struct NetnsGuard {
    back: File,
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // Failing to go back would leave this thread in the wrong namespace
        // for the rest of the process: that is not recoverable.
        if let Err(e) = setns(self.back.as_fd(), CloneFlags::CLONE_NEWNET) {
            panic!("podtrace: cannot return to the original network namespace: {e}");
        }
    }
}

/// Whether `file` is a network namespace (`NS_GET_NSTYPE`, Linux >= 4.11).
fn is_netns(file: &File) -> bool {
    /// `_IO(0xb7, 0x3)` from linux/nsfs.h.
    const NS_GET_NSTYPE: libc::Ioctl = 0xb703;
    // SAFETY: an ioctl without arguments on an fd we own; any other file
    // fails it with ENOTTY.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
    rc == libc::CLONE_NEWNET
}

/// The netns cookie of the calling thread's namespace (Linux >= 5.14).
pub fn netns_cookie() -> io::Result<u64> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: cookie and len are valid for the kernel to write.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Names under /run/netns, sorted.
pub fn known_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(NETNS_RUN_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    if names.is_empty() {
        names.push("(none)".to_owned());
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_network_namespace_file_is_taken_for_one() {
        let open = |p: &str| File::open(p).unwrap();
        assert!(is_netns(&open("/proc/self/ns/net")));
        assert!(!is_netns(&open("/proc/self/ns/mnt")));
        assert!(!is_netns(&open("/tmp")));
        assert!(!is_netns(&open("/proc/self/status")));
        assert!(matches!(
            Netns::open("/proc/self/ns/uts"),
            Err(NetnsError::NotNetns { .. })
        ));
    }
}
