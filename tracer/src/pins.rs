//! Handing maps that already exist to a copy of the programs as it loads.
//!
//! Every namespace gets its own copy of the programs, and the copies share
//! some maps (each CPU's batch and state). A program that names a map
//! directly has its lookups inlined by the verifier, where a map found in
//! an array of maps costs a call per lookup; aya gives a loading copy an
//! existing map in place of its own only through a bpffs pin. [`Pins`]
//! pins the shared maps in a directory of this process's own for as long
//! as a copy takes to load, and removes the pins and the directory when
//! dropped: nothing stays in bpffs.

use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, AtomicU32, Ordering},
    time::Duration,
};

use aya::maps::MapData;

/// Where bpffs is usually mounted.
const BPFFS: &str = "/sys/fs/bpf";
/// `BPF_FS_MAGIC`: the `f_type` of a bpffs.
const BPF_FS_MAGIC: u32 = 0xcafe_4a11;
/// Name prefix of the directories (`podtrace-PID-N`).
const PREFIX: &str = "podtrace-";
/// Age past which a directory whose process is gone is swept. A load
/// takes well under a second; a podtrace in another PID namespace (a
/// container sharing the node's bpffs) has a PID that ours may not show.
const SWEEP_AFTER: Duration = Duration::from_secs(60);
/// The inode of the initial PID namespace (`PROC_PID_INIT_INO`): in it,
/// every process of the machine has a `/proc` entry.
const INIT_PID_NS_INO: u64 = 0xEFFF_FFFC;

/// How old a gone process's directory must be before it is swept: at
/// once where `/proc` shows every process (a podtrace killed during its
/// start left it), [`SWEEP_AFTER`] elsewhere.
fn sweep_after() -> Duration {
    if sees_every_process() {
        Duration::ZERO
    } else {
        SWEEP_AFTER
    }
}

/// Whether this process's PID namespace is the initial one, where `/proc`
/// shows every process of the machine.
pub fn sees_every_process() -> bool {
    fs::metadata("/proc/self/ns/pid").is_ok_and(|m| m.ino() == INIT_PID_NS_INO)
}

/// A directory of pins, gone when dropped.
#[derive(Debug)]
pub struct Pins {
    dir: PathBuf,
    /// A bpffs of our own, mounted on `dir` (where `/sys/fs/bpf` is not
    /// one, as in many containers, or is one we may not write to).
    mounted: bool,
}

impl Pins {
    /// A fresh directory in `/sys/fs/bpf`, or, if that is not a bpffs we
    /// may write to, a bpffs of our own mounted on a fresh directory in the
    /// first of the temp dir, `/run`, `/dev/shm` and `/dev` where we can
    /// make one (an image FROM scratch has no `/tmp`; a container's `/dev`
    /// is a tmpfs).
    pub fn new() -> io::Result<Self> {
        // Leftovers are another process's: sweeping once per process is
        // enough, however many namespaces' copies load after the first.
        static SWEPT: AtomicBool = AtomicBool::new(false);
        let first = !SWEPT.swap(true, Ordering::Relaxed);
        let bpffs = Path::new(BPFFS);
        let shared = if is_bpffs(bpffs) {
            if first {
                sweep(bpffs, sweep_after());
            }
            match fresh_dir(bpffs) {
                Ok(dir) => {
                    return Ok(Self {
                        dir,
                        mounted: false,
                    });
                }
                Err(e) => format!("{BPFFS} is a bpffs we may not write to ({e})"),
            }
        } else {
            format!("{BPFFS} is not a bpffs")
        };
        let parents = [
            std::env::temp_dir(),
            "/run".into(),
            "/dev/shm".into(),
            "/dev".into(),
        ];
        if first {
            let age = sweep_after();
            for p in &parents {
                sweep(p, age);
            }
        }
        let dir = parents
            .iter()
            .find_map(|p| fresh_dir(p).ok())
            .ok_or_else(|| {
                io::Error::other(format!(
                    "{shared}, and there is no directory to mount one on (tried {})",
                    parents.map(|p| p.display().to_string()).join(", ")
                ))
            })?;
        use nix::mount::{MsFlags, mount};
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        // A bpffs root is world-writable unless told otherwise.
        if let Err(e) = mount(Some("bpf"), &dir, Some("bpf"), flags, Some("mode=0700")) {
            let _ = fs::remove_dir(&dir);
            return Err(io::Error::other(format!(
                "{shared}, and mounting one on {} failed: {e} (mount one on {BPFFS}, or give \
                 podtrace CAP_SYS_ADMIN)",
                dir.display()
            )));
        }
        Ok(Self { dir, mounted: true })
    }

    /// Pins `map` as `name`; returns the path to hand to
    /// `EbpfLoader::map_pin_path`.
    pub fn pin(&self, name: &str, map: &MapData) -> io::Result<PathBuf> {
        let path = self.dir.join(name);
        map.pin(&path).map_err(|e| {
            io::Error::other(format!(
                "pinning {name} in {}: {}",
                self.dir.display(),
                crate::kernel::error_chain(&e)
            ))
        })?;
        Ok(path)
    }
}

/// Makes a directory of ours in `parent`, `podtrace-PID-N`: N counts up
/// past names already taken (a directory a killed process of the same
/// PID left, in a PID namespace of its own).
fn fresh_dir(parent: &Path) -> io::Result<PathBuf> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let mut dirs = fs::DirBuilder::new();
    dirs.mode(0o700);
    loop {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = parent.join(format!("{PREFIX}{}-{n}", std::process::id()));
        match dirs.create(&dir) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => continue,
            r => return r.map(|()| dir),
        }
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        // Every file, not only the pins we made: aya pins a map it had to
        // create when it could not open ours.
        empty(&self.dir);
        if self.mounted {
            let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 as u32 == BPF_FS_MAGIC)
}

fn empty(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Removes what a podtrace killed while loading left in `parent`: the
/// directories of processes that are gone, once older than `min_age`,
/// with their pins, and the bpffs of its own it had mounted on one. In a
/// `parent` that is not a bpffs, a directory that is neither a bpffs nor
/// empty stays: it is not one of ours.
fn sweep(parent: &Path, min_age: Duration) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    let in_bpffs = is_bpffs(parent);
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|n| n.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        // Not followed: a symlink, or a directory someone else made (in a
        // world-writable /tmp), is not one of ours. Nobody else may replace
        // ours: the temp dirs are sticky, the others root's.
        let Ok(meta) = e.metadata() else {
            continue;
        };
        let ours = meta.is_dir() && meta.uid() == nix::unistd::geteuid().as_raw();
        let old = meta
            .modified()
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age >= min_age));
        if ours && old && !Path::new("/proc").join(pid.to_string()).exists() {
            let path = e.path();
            if in_bpffs {
                empty(&path);
            } else if is_bpffs(&path) {
                empty(&path);
                let flags =
                    nix::mount::MntFlags::MNT_DETACH | nix::mount::MntFlags::UMOUNT_NOFOLLOW;
                let _ = nix::mount::umount2(&path, flags);
            }
            let _ = fs::remove_dir(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_old_directories_of_gone_processes_are_swept() {
        let dir = std::env::temp_dir().join(format!("podtrace-sweep-test-{}", std::process::id()));
        let gone = dir.join("podtrace-4294967294-0");
        let full = dir.join("podtrace-4294967293-0");
        let mine = dir.join(format!("podtrace-{}-0", std::process::id()));
        for d in [&gone, &full, &mine, &dir.join("podtrace-notapid-0")] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(full.join("STAGES"), b"").unwrap();
        // A symlink in a gone process's name is followed nowhere.
        let target = dir.join("elsewhere");
        fs::create_dir_all(&target).unwrap();
        fs::write(target.join("STAGES"), b"").unwrap();
        let link = dir.join("podtrace-4294967292-0");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        sweep(&dir, Duration::from_secs(3600));
        assert!(gone.exists(), "a fresh directory was swept");
        sweep(&dir, Duration::ZERO);
        assert!(!gone.exists(), "a gone process's empty directory stayed");
        // Not a bpffs, nor in one: files in it are not pins of ours.
        assert!(
            full.join("STAGES").exists(),
            "a file outside bpffs was removed"
        );
        assert!(dir.join("podtrace-notapid-0").exists());
        assert!(mine.exists(), "a live process's directory was swept");
        assert!(
            link.symlink_metadata().is_ok() && target.join("STAGES").exists(),
            "a symlink was followed"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
