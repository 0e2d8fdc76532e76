//! The OCI runtime bundle (`config.json`) for an actor's sandbox.
//!
//! Layout: `<state-dir>/bundles/<container-id>/config.json`. The bundle does not contain the
//! root filesystem: `root.path` points at the unpacked image directory, which is **shared by
//! all workers and never written**:
//!
//! - `root.readonly` is `false` on purpose: runsc applies `--overlay2=root:memory` only to a
//!   writable root (with `readonly: true` every write fails with EROFS). The overlay's upper
//!   layer lives in sandbox memory, so files the workload writes anywhere in the root
//!   filesystem (e.g. `/data`) are part of the checkpoint and survive a restore on another
//!   worker.
//! - The runsc wrapper additionally bind-mounts the rootfs read-only in the private mount
//!   namespace the sandbox is started from (see [`crate::runsc`]), so the host directory
//!   cannot be written even by a bug in the overlay.
//! - `/tmp` and `/dev/shm` are tmpfs mounts; gVisor keeps tmpfs in sandbox memory, so their
//!   content is also saved by a checkpoint (verified by the integration tests).
//!
//! The network namespace is the worker's (`linux.namespaces[network].path`), so the sandbox
//! gets the worker's veth and address. `linux.cgroupsPath` is per *worker*
//! (`/substrate/<worker>`): runsc names cgroups after the container id otherwise, and the
//! same actor (same container id) exists on two workers during a move — deleting the stopped
//! copy would then try to remove the running copy's cgroup.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec,
    SpecBuilder, UserBuilder,
};

/// The limit for `RLIMIT_NOFILE` (soft and hard).
pub const NOFILE_LIMIT: u64 = 65536;

/// What to run for an actor: an unpacked image and its process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActorSpec {
    /// Absolute path of the unpacked root filesystem (shared, read-only).
    pub rootfs: PathBuf,
    pub process: ProcessSpec,
    /// Sandbox hostname; the actor name when `None`.
    pub hostname: Option<String>,
}

/// The sandbox's init process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    pub args: Vec<String>,
    /// `KEY=value` entries.
    pub env: Vec<String>,
    /// Absolute working directory.
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
}

impl Default for ProcessSpec {
    fn default() -> Self {
        Self {
            args: Vec::new(),
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
        }
    }
}

/// A spec that cannot be turned into a bundle, or a bundle that cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("invalid actor spec: {field}: {detail}")]
    Invalid { field: &'static str, detail: String },
    #[error("cannot build the OCI spec")]
    Spec(#[from] oci_spec::OciSpecError),
    #[error("cannot write bundle {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn invalid(field: &'static str, detail: impl Into<String>) -> BundleError {
    BundleError::Invalid {
        field,
        detail: detail.into(),
    }
}

impl ActorSpec {
    /// Checks what can be checked before booting: an absolute, existing rootfs directory,
    /// a non-empty argv, `KEY=value` env entries, an absolute cwd, a valid hostname.
    pub fn validate(&self) -> Result<(), BundleError> {
        if !self.rootfs.is_absolute() {
            return Err(invalid(
                "rootfs",
                format!("{:?} is not an absolute path", self.rootfs),
            ));
        }
        match fs::metadata(&self.rootfs) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(invalid(
                    "rootfs",
                    format!("{} is not a directory", self.rootfs.display()),
                ));
            }
            Err(e) => {
                return Err(invalid("rootfs", format!("{}: {e}", self.rootfs.display())));
            }
        }
        if self.process.args.is_empty() || self.process.args[0].is_empty() {
            return Err(invalid("process.args", "must not be empty"));
        }
        if let Some((i, e)) = self
            .process
            .env
            .iter()
            .enumerate()
            .find(|(_, e)| e.split_once('=').is_none_or(|(k, _)| k.is_empty()))
        {
            return Err(invalid(
                "process.env",
                format!("entry {i} ({e:?}) is not KEY=value"),
            ));
        }
        if !self.process.cwd.starts_with('/') {
            return Err(invalid(
                "process.cwd",
                format!("{:?} is not an absolute path", self.process.cwd),
            ));
        }
        if let Some(h) = &self.hostname {
            let errs = crds::validation::dns1123_label(h);
            if !errs.is_empty() {
                return Err(invalid("hostname", format!("{h:?}: {}", errs.join("; "))));
            }
        }
        Ok(())
    }
}

/// Docker's default capability set minus `CAP_NET_RAW`.
fn default_capabilities() -> HashSet<Capability> {
    [
        Capability::Chown,
        Capability::DacOverride,
        Capability::Fsetid,
        Capability::Fowner,
        Capability::Mknod,
        Capability::Setgid,
        Capability::Setuid,
        Capability::Setfcap,
        Capability::Setpcap,
        Capability::NetBindService,
        Capability::SysChroot,
        Capability::Kill,
        Capability::AuditWrite,
    ]
    .into_iter()
    .collect()
}

/// Where the sandbox is placed.
#[derive(Debug, Clone)]
pub struct Placement<'a> {
    /// The worker's network namespace (bind-mount path).
    pub netns_path: &'a Path,
    /// `linux.cgroupsPath`, per worker.
    pub cgroups_path: &'a str,
    /// Default hostname when the spec has none.
    pub default_hostname: &'a str,
}

/// Builds the OCI spec for `spec` (validate first).
pub fn generate(spec: &ActorSpec, placement: &Placement<'_>) -> Result<Spec, BundleError> {
    let caps = default_capabilities();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .build()?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(spec.process.uid)
                .gid(spec.process.gid)
                .build()?,
        )
        .args(spec.process.args.clone())
        .env(spec.process.env.clone())
        .cwd(PathBuf::from(&spec.process.cwd))
        .capabilities(capabilities)
        .rlimits(vec![
            PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .hard(NOFILE_LIMIT)
                .soft(NOFILE_LIMIT)
                .build()?,
        ])
        .no_new_privileges(true)
        .build()?;
    let mount = |dest: &str, typ: &str, source: &str, options: &[&str]| {
        MountBuilder::default()
            .destination(PathBuf::from(dest))
            .typ(typ.to_string())
            .source(PathBuf::from(source))
            .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .build()
    };
    let mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        mount("/tmp", "tmpfs", "tmpfs", &["nosuid", "nodev", "mode=1777"])?,
    ];
    let ns = |typ: LinuxNamespaceType| LinuxNamespaceBuilder::default().typ(typ).build();
    let namespaces = vec![
        ns(LinuxNamespaceType::Pid)?,
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Network)
            .path(placement.netns_path.to_path_buf())
            .build()?,
        ns(LinuxNamespaceType::Ipc)?,
        ns(LinuxNamespaceType::Uts)?,
        ns(LinuxNamespaceType::Mount)?,
    ];
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(placement.cgroups_path))
        .build()?;
    let hostname = spec
        .hostname
        .clone()
        .unwrap_or_else(|| placement.default_hostname.to_string());
    Ok(SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(spec.rootfs.clone())
                .readonly(false)
                .build()?,
        )
        .process(process)
        .hostname(hostname)
        .mounts(mounts)
        .linux(linux)
        .build()?)
}

/// Writes `<dir>/config.json` (atomically: temp file, rename; no fsync — the bundle is
/// regenerated for every boot) and returns `dir`.
pub fn write(dir: &Path, spec: &Spec) -> Result<PathBuf, BundleError> {
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BundleError::Write { path, source }
    };
    fs::create_dir_all(dir).map_err(werr(dir))?;
    let path = dir.join("config.json");
    let tmp = dir.join(".config.json.tmp");
    let json = serde_json::to_vec_pretty(spec).map_err(|e| BundleError::Write {
        path: path.clone(),
        source: io::Error::other(e),
    })?;
    let mut f = fs::File::create(&tmp).map_err(werr(&tmp))?;
    f.write_all(&json).map_err(werr(&tmp))?;
    fs::rename(&tmp, &path).map_err(werr(&path))?;
    Ok(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(rootfs: &Path) -> ActorSpec {
        ActorSpec {
            rootfs: rootfs.to_path_buf(),
            process: ProcessSpec {
                args: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
                env: vec!["PATH=/bin".into(), "A=b=c".into()],
                cwd: "/".into(),
                uid: 1000,
                gid: 1000,
            },
            hostname: None,
        }
    }

    #[test]
    fn generates_the_documented_config() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path());
        s.validate().unwrap();
        let oci = generate(
            &s,
            &Placement {
                netns_path: Path::new("/run/netns/substrate-w1"),
                cgroups_path: "/substrate/w1",
                default_hostname: "web-1",
            },
        )
        .unwrap();
        let bundle = dir.path().join("bundle");
        write(&bundle, &oci).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
        assert_eq!(json["root"]["path"], dir.path().to_str().unwrap());
        assert_eq!(json["root"]["readonly"], false);
        assert_eq!(json["hostname"], "web-1");
        assert_eq!(json["process"]["args"][2], "echo hi");
        assert_eq!(json["process"]["user"]["uid"], 1000);
        assert_eq!(json["process"]["env"][1], "A=b=c");
        assert_eq!(json["process"]["rlimits"][0]["type"], "RLIMIT_NOFILE");
        let caps = json["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap();
        assert!(caps.iter().any(|c| c == "CAP_NET_BIND_SERVICE"));
        assert!(
            !caps
                .iter()
                .any(|c| c == "CAP_NET_RAW" || c == "CAP_SYS_ADMIN")
        );
        let nets: Vec<_> = json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["type"] == "network")
            .collect();
        assert_eq!(nets.len(), 1);
        assert_eq!(nets[0]["path"], "/run/netns/substrate-w1");
        assert_eq!(json["linux"]["cgroupsPath"], "/substrate/w1");
        let dests: Vec<_> = json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            dests,
            ["/proc", "/dev", "/dev/pts", "/dev/shm", "/sys", "/tmp"]
        );
        // Round-trips through the typed spec.
        let back: Spec = serde_json::from_value(json).unwrap();
        assert_eq!(back.hostname().as_deref(), Some("web-1"));
    }

    #[test]
    fn validation_names_the_bad_field() {
        let dir = tempfile::tempdir().unwrap();
        type Mutation = Box<dyn Fn(&mut ActorSpec)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|s| s.rootfs = "rel/path".into()), "rootfs"),
            (
                Box::new(|s| s.rootfs = "/nonexistent/rootfs".into()),
                "rootfs",
            ),
            (Box::new(|s| s.process.args.clear()), "process.args"),
            (
                Box::new(|s| s.process.env.push("NOEQUALS".into())),
                "process.env",
            ),
            (Box::new(|s| s.process.env.push("=x".into())), "process.env"),
            (Box::new(|s| s.process.cwd = "data".into()), "process.cwd"),
            (
                Box::new(|s| s.hostname = Some("Bad_Host".into())),
                "hostname",
            ),
        ];
        for (mutate, field) in cases {
            let mut s = spec(dir.path());
            mutate(&mut s);
            match s.validate() {
                Err(BundleError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: expected Invalid, got {other:?}"),
            }
        }
        let file = dir.path().join("file");
        fs::write(&file, "x").unwrap();
        let mut s = spec(dir.path());
        s.rootfs = file;
        let err = s.validate().unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
    }
}
