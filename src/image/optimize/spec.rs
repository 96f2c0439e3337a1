//! The workload's OCI runtime config (`config.json` of a runc bundle):
//! the image config's entrypoint, cmd, env, working directory and user,
//! overridden as `ctr-remote image optimize`'s flags do, in a container
//! with its own pid, ipc, uts and mount namespaces, the host's network,
//! `/proc`, `/dev` and `/sys`, and the bind mounts asked for.

use std::path::Path;

use serde_json::{Value, json};

use super::OptimizeError;

/// A mount of `--mount` (ctr-remote's syntax).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// Mount type (`bind` when not given).
    pub kind: String,
    /// Host path (or filesystem source).
    pub source: String,
    /// Path inside the container.
    pub destination: String,
    /// Mount options (`rbind`, `ro`…).
    pub options: Vec<String>,
}

impl MountSpec {
    /// Parses `type=bind,source=/a,destination=/b,options=rbind:ro`
    /// (`src`/`dst` also accepted, options separated by `:`).
    pub fn parse(flag: &str) -> Result<MountSpec, OptimizeError> {
        let bad = |reason: String| OptimizeError::Flag {
            flag: "--mount",
            reason: format!("{flag:?}: {reason}"),
        };
        let mut spec = MountSpec {
            kind: "bind".into(),
            source: String::new(),
            destination: String::new(),
            options: Vec::new(),
        };
        for field in flag.split(',') {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| bad(format!("{field:?} is not key=value")))?;
            match key {
                "type" => spec.kind = value.into(),
                "source" | "src" => spec.source = value.into(),
                "destination" | "dst" => spec.destination = value.into(),
                "options" => spec.options = value.split(':').map(str::to_owned).collect(),
                other => return Err(bad(format!("key {other:?} not supported"))),
            }
        }
        if spec.destination.is_empty() || !spec.destination.starts_with('/') {
            return Err(bad("needs an absolute destination".into()));
        }
        if spec.kind == "bind" && !spec.options.iter().any(|o| o == "bind" || o == "rbind") {
            spec.options.push("rbind".into());
        }
        Ok(spec)
    }
}

/// What the flags change of the image's own config.
#[derive(Debug, Clone, Default)]
pub struct WorkloadOverrides {
    /// Replaces the image's Entrypoint (`--entrypoint`, a JSON array).
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's Cmd (`--args`, a JSON array).
    pub args: Option<Vec<String>>,
    /// `KEY=VALUE` pairs added to, or replacing, the image's Env.
    pub env: Vec<String>,
    /// Working directory instead of the image's.
    pub cwd: Option<String>,
    /// `user[:group]` instead of the image's.
    pub user: Option<String>,
    /// Extra mounts.
    pub mounts: Vec<MountSpec>,
}

/// Parses a ctr-remote JSON array flag (`--entrypoint '["/bin/sh","-c"]'`).
pub fn json_array(flag: &'static str, value: &str) -> Result<Vec<String>, OptimizeError> {
    serde_json::from_str(value).map_err(|e| OptimizeError::Flag {
        flag,
        reason: format!("{value:?} is not a JSON array of strings: {e}"),
    })
}

/// The process the container runs: args, env, cwd and the user spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// argv.
    pub args: Vec<String>,
    /// `KEY=VALUE`, the image's first, flags' last, one per key.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// `user[:group]` as the image or flag gives it (empty: root).
    pub user: String,
}

/// Merges the image config (`config` of the image's config document) with the overrides.
pub fn process(config: &Value, over: &WorkloadOverrides) -> Result<Process, OptimizeError> {
    let strings = |key: &str| -> Vec<String> {
        config[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut args = over
        .entrypoint
        .clone()
        .unwrap_or_else(|| strings("Entrypoint"));
    args.extend(over.args.clone().unwrap_or_else(|| strings("Cmd")));
    if args.is_empty() {
        return Err(OptimizeError::Flag {
            flag: "--entrypoint/--args",
            reason: "the image has no Entrypoint or Cmd: say what to run".into(),
        });
    }
    let mut env: Vec<String> = Vec::new();
    for pair in strings("Env").into_iter().chain(over.env.iter().cloned()) {
        let key = pair.split('=').next().unwrap_or_default().to_owned();
        env.retain(|e| e.split('=').next() != Some(key.as_str()));
        env.push(pair);
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(
            0,
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
    }
    let cwd = over
        .cwd
        .clone()
        .or_else(|| config["WorkingDir"].as_str().map(str::to_owned))
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "/".into());
    let user = over
        .user
        .clone()
        .or_else(|| config["User"].as_str().map(str::to_owned))
        .unwrap_or_default();
    Ok(Process {
        args,
        env,
        cwd,
        user,
    })
}

/// Resolves `user[:group]` to numeric ids, names through the rootfs's
/// `/etc/passwd` and `/etc/group` (as containerd does). Returns the uid and gid.
pub fn resolve_user(user: &str, rootfs: &Path) -> Result<(u32, u32), OptimizeError> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (name, group) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let bad = |reason: String| OptimizeError::Flag {
        flag: "--user",
        reason: format!("{user:?}: {reason}"),
    };
    // Fields of the line of /etc/<file> whose name (or id) is `key`.
    let lookup = |file: &str, key: &str| -> Option<Vec<String>> {
        let text = std::fs::read_to_string(rootfs.join("etc").join(file)).ok()?;
        text.lines()
            .map(|l| l.split(':').map(str::to_owned).collect::<Vec<_>>())
            .find(|f| f.len() > 3 && (f[0] == key || f[2] == key))
    };
    let (uid, mut gid) = match name.parse::<u32>() {
        Ok(uid) => (
            uid,
            lookup("passwd", name)
                .and_then(|f| f[3].parse().ok())
                .unwrap_or(0),
        ),
        Err(_) => {
            let f = lookup("passwd", name)
                .ok_or_else(|| bad(format!("no user {name:?} in the image's /etc/passwd")))?;
            let parse = |s: &str| s.parse::<u32>().map_err(|e| bad(e.to_string()));
            (parse(&f[2])?, parse(&f[3])?)
        }
    };
    if let Some(group) = group {
        gid = match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => lookup("group", group)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| bad(format!("no group {group:?} in the image's /etc/group")))?,
        };
    }
    Ok((uid, gid))
}

/// Capabilities of the workload: the default set of containerd and docker.
const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The bundle's `config.json` for `process` as `uid`:`gid`, the rootfs at
/// `rootfs` (relative to the bundle), in cgroup `cgroup`.
pub fn runtime_config(
    process: &Process,
    (uid, gid): (u32, u32),
    mounts: &[MountSpec],
    cgroup: &str,
) -> Value {
    let mut all_mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
    ];
    all_mounts.extend(mounts.iter().map(|m| {
        json!({"destination": m.destination, "type": m.kind, "source": m.source,
               "options": m.options})
    }));
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid},
            "args": process.args,
            "env": process.env,
            "cwd": process.cwd,
            "capabilities": {
                "bounding": CAPABILITIES,
                "effective": CAPABILITIES,
                "permitted": CAPABILITIES,
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true,
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "rstargz-optimize",
        "mounts": all_mounts,
        "linux": {
            "cgroupsPath": cgroup,
            // No network namespace: the workload shares the host's network
            // (it may need to reach a local service), as `--net-host` does.
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
                "/proc/scsi", "/sys/firmware",
            ],
            "readonlyPaths": [
                "/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq",
                "/proc/sys", "/proc/sysrq-trigger",
            ],
        },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn mount_flags_parse_as_ctr_remote_spells_them() {
        let m = MountSpec::parse("type=bind,src=/a,dst=/b,options=rbind:ro").unwrap();
        assert_eq!(
            m,
            MountSpec {
                kind: "bind".into(),
                source: "/a".into(),
                destination: "/b".into(),
                options: vec!["rbind".into(), "ro".into()],
            }
        );
        let m = MountSpec::parse("source=/x,destination=/y").unwrap();
        assert_eq!(m.options, ["rbind"]);
        assert!(MountSpec::parse("source=/x").is_err());
        assert!(MountSpec::parse("source=/x,destination=/y,mode=1").is_err());
        assert!(MountSpec::parse("/x:/y").is_err());
    }

    #[test]
    fn flags_override_the_image_config() {
        let config = json!({
            "Entrypoint": ["/bin/app"], "Cmd": ["--serve"],
            "Env": ["PATH=/bin", "A=1", "B=2"], "WorkingDir": "/srv", "User": "app",
        });
        let p = process(&config, &WorkloadOverrides::default()).unwrap();
        assert_eq!(p.args, ["/bin/app", "--serve"]);
        assert_eq!(p.env, ["PATH=/bin", "A=1", "B=2"]);
        assert_eq!((p.cwd.as_str(), p.user.as_str()), ("/srv", "app"));
        let over = WorkloadOverrides {
            args: Some(json_array("--args", r#"["--once","x"]"#).unwrap()),
            env: vec!["B=3".into(), "C=4".into()],
            cwd: Some("/tmp".into()),
            ..WorkloadOverrides::default()
        };
        let p = process(&config, &over).unwrap();
        assert_eq!(p.args, ["/bin/app", "--once", "x"]);
        assert_eq!(p.env, ["PATH=/bin", "A=1", "B=3", "C=4"]);
        assert_eq!(p.cwd, "/tmp");
        let over = WorkloadOverrides {
            entrypoint: Some(vec!["/bin/sh".into()]),
            ..WorkloadOverrides::default()
        };
        assert_eq!(
            process(&config, &over).unwrap().args,
            ["/bin/sh", "--serve"]
        );
        assert!(json_array("--args", "sh -c x").is_err());
    }

    #[test]
    fn an_image_without_a_command_needs_one() {
        let p = process(&json!({}), &WorkloadOverrides::default());
        assert!(p.unwrap_err().to_string().contains("no Entrypoint or Cmd"));
        let over = WorkloadOverrides {
            args: Some(vec!["/bin/true".into()]),
            ..WorkloadOverrides::default()
        };
        let p = process(&json!({}), &over).unwrap();
        assert!(p.env[0].starts_with("PATH="), "a default PATH");
        assert_eq!(p.cwd, "/");
    }

    #[test]
    fn users_resolve_through_the_rootfs() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(root.path().join("etc/group"), "staff:x:50:\n").unwrap();
        assert_eq!(resolve_user("", root.path()).unwrap(), (0, 0));
        assert_eq!(resolve_user("app", root.path()).unwrap(), (1000, 1001));
        assert_eq!(resolve_user("1000", root.path()).unwrap(), (1000, 1001));
        assert_eq!(resolve_user("app:staff", root.path()).unwrap(), (1000, 50));
        assert_eq!(resolve_user("7:8", root.path()).unwrap(), (7, 8));
        assert!(resolve_user("nobody", root.path()).is_err());
    }
}
