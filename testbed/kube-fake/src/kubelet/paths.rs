//! Where a pod's files live on the host: `<work>/pods/<uid>/` holds its volumes, container
//! logs (`logs/<container>/<attempt>.log`, as the kubelet keeps one file per restart), and
//! the `home` and `tmp` directories its processes get as `$HOME` and `$TMPDIR`.

use std::path::{Path, PathBuf};

pub fn pod_dir(work_dir: &Path, uid: &str) -> PathBuf {
    work_dir.join("pods").join(uid)
}

pub fn log_file(work_dir: &Path, uid: &str, container: &str, attempt: i64) -> PathBuf {
    pod_dir(work_dir, uid)
        .join("logs")
        .join(container)
        .join(format!("{attempt}.log"))
}

pub fn volume_dir(work_dir: &Path, uid: &str, volume: &str) -> PathBuf {
    pod_dir(work_dir, uid).join("volumes").join(volume)
}
