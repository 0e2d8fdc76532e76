//! The faults that are not a process kill: the object store unavailable, and the node's
//! snapshot cache on a full disk.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The node's snapshot cache (`<state>/snapshot-cache`) on a small tmpfs of its own, so that
/// the suite can fill it up ([`CacheDisk::fill`]) and free it again. Unmounted when dropped
/// (drop it before the [`crate::System`], whose directory it lives in).
pub struct CacheDisk {
    path: PathBuf,
    filler: PathBuf,
}

/// Size of the cache's tmpfs.
pub const CACHE_DISK_MIB: u64 = 256;

impl CacheDisk {
    /// Mounts the tmpfs over the cache directory of the running node agent, with the
    /// directories the agent created when it opened the cache (`entries/`, `tmp/`), which
    /// the mount hides.
    pub fn mount(cache_dir: &Path) -> Self {
        std::fs::create_dir_all(cache_dir).expect("snapshot cache directory");
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={CACHE_DISK_MIB}m"),
                "tmpfs",
            ])
            .arg(cache_dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mounting a tmpfs on {}", cache_dir.display());
        for d in ["entries", "tmp"] {
            std::fs::create_dir_all(cache_dir.join(d)).expect("cache directories");
        }
        CacheDisk {
            path: cache_dir.to_path_buf(),
            filler: cache_dir.join("filler"),
        }
    }

    /// Fills the disk: a file takes every free byte (ENOSPC for any write after it).
    pub fn fill(&self) {
        // tmpfs: writing zeros allocates pages; dd stops at ENOSPC (and says so: ignored).
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=1M", "status=none"])
            .arg(format!("of={}", self.filler.display()))
            .stderr(std::process::Stdio::null())
            .status();
    }

    /// Frees what [`CacheDisk::fill`] took.
    pub fn free(&self) {
        let _ = std::fs::remove_file(&self.filler);
    }

    /// Bytes free on the disk.
    pub fn available(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.path)
            .output()
            .expect("df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for CacheDisk {
    fn drop(&mut self) {
        self.free();
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// The `file://` object store made unavailable: its directory moved away and a plain file
/// put in its place, so every read and write fails (ENOTDIR) instead of silently creating a
/// fresh empty store.
pub struct StoreOutage {
    dir: PathBuf,
    away: PathBuf,
}

impl StoreOutage {
    pub fn begin(dir: &Path) -> Self {
        let away = dir.with_extension("away");
        std::fs::rename(dir, &away).expect("moving the object store away");
        std::fs::write(dir, b"the object store is unavailable (fault suite)\n")
            .expect("a file in the object store's place");
        StoreOutage {
            dir: dir.to_path_buf(),
            away,
        }
    }
}

impl Drop for StoreOutage {
    /// The store is back, as it was.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.dir);
        std::fs::rename(&self.away, &self.dir).expect("moving the object store back");
    }
}
