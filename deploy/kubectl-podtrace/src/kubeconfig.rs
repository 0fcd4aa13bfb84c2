//! Where the kubeconfig comes from, and what to say when it is not there:
//! kube's own error names the path twice, quoted twice, with the OS error
//! twice, and says nothing of where the path came from.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
};

/// Why no kubeconfig can be read, in one line that says where podtrace
/// looked and what to do; None when every file it would read exists.
///
/// `flag` is `--kubeconfig`, `env` the value of `$KUBECONFIG` (a list of
/// paths, as kubectl reads it), `home` the user's home directory.
pub fn missing(flag: Option<&Path>, env: Option<&OsStr>, home: Option<&Path>) -> Option<String> {
    const FIX: &str = "pass --kubeconfig FILE, or set KUBECONFIG as for kubectl";
    if let Some(path) = flag {
        return (!path.is_file())
            .then(|| format!("no kubeconfig at {} (--kubeconfig)", path.display()));
    }
    if let Some(env) = env.filter(|e| !e.is_empty()) {
        let paths: Vec<PathBuf> = std::env::split_paths(env)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        // kubectl reads the files that exist and skips the others; it
        // fails only when none does.
        if paths.iter().any(|p| p.is_file()) {
            return None;
        }
        let list = paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        return Some(format!("no kubeconfig at {list} (from $KUBECONFIG); {FIX}"));
    }
    let Some(home) = home else {
        return Some(format!(
            "no kubeconfig: $KUBECONFIG and $HOME are not set; {FIX}"
        ));
    };
    let default = home.join(".kube").join("config");
    (!default.is_file()).then(|| {
        format!(
            "no kubeconfig at {} and $KUBECONFIG is not set; {FIX}",
            default.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use std::{ffi::OsStr, path::Path};

    use super::missing;

    #[test]
    fn says_where_it_looked_and_what_to_do() {
        let dir = std::env::temp_dir().join(format!("podtrace-kc-{}", std::process::id()));
        std::fs::create_dir_all(dir.join(".kube")).unwrap();
        let absent = dir.join("absent");
        assert_eq!(
            missing(Some(&absent), None, None).unwrap(),
            format!("no kubeconfig at {} (--kubeconfig)", absent.display())
        );
        let msg = missing(None, Some(absent.as_os_str()), Some(&dir)).unwrap();
        assert!(msg.contains("(from $KUBECONFIG)"), "{msg}");
        assert!(msg.contains("pass --kubeconfig FILE"), "{msg}");
        let msg = missing(None, None, Some(&dir)).unwrap();
        assert!(
            msg.starts_with(&format!(
                "no kubeconfig at {} and $KUBECONFIG is not set",
                dir.join(".kube/config").display()
            )),
            "{msg}"
        );
        assert!(missing(None, Some(OsStr::new("")), None).is_some());

        // A file that exists is not this module's business, nor a list
        // where one file exists.
        let config = dir.join(".kube/config");
        std::fs::write(&config, "").unwrap();
        assert_eq!(missing(None, None, Some(&dir)), None);
        assert_eq!(missing(Some(&config), None, None), None);
        let list = std::env::join_paths([absent.as_path(), config.as_path()]).unwrap();
        assert_eq!(
            missing(None, Some(&list), Some(Path::new("/nowhere"))),
            None
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
