//! A small tmpfs mounted as a data directory, for the tests that fill the
//! disk. Mounting needs root (CI runs as root); `mount_or_skip` says when a
//! test cannot run here and fails if that happens in CI.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "3m") at `path`, or None when this
    /// process may not mount (not root). Panics in CI, where it must work.
    pub fn mount_or_skip(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(Tmpfs(path.to_path_buf()));
        }
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI must be able to mount a tmpfs for the disk tests"
        );
        eprintln!("skipped: mounting a tmpfs needs root");
        None
    }

    pub fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
