//! Every golden layer mounted through real FUSE and checked through the
//! kernel: content, metadata, links, devices, xattrs, overlay conventions;
//! and overlayfs mounted on top applies whiteouts and opaque directories.
#![allow(clippy::unwrap_used)]

use crate::common;
use crate::fuse_common;

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use base64::Engine as _;
use common::*;
use fuse_common::*;
use rstargz_fs::fuse::{MountOptions, OpaqueXattr};

fn clean(p: &str) -> String {
    p.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// What a path of the layer should look like through the mount.
fn visible_path(path: &str) -> Option<String> {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    if name == ".wh..wh..opq" {
        return None;
    }
    let name = name.strip_prefix(".wh.").unwrap_or(name);
    Some(if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    })
}

fn list_tree(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{}", name)
            };
            if e.file_type().unwrap().is_dir() {
                stack.push((e.path(), rel.clone()));
            }
            out.insert(rel);
        }
    }
    out
}

fn check_mount(root: &Path, case: &str, ctx: &str, opaque: OpaqueXattr) {
    let exp = expected(case);
    let entries = effective_entries(&exp);
    let mut inode_of = HashMap::new();
    let mut want = BTreeSet::new();
    for e in &entries {
        let path = clean(&e.path);
        if path.is_empty() {
            continue;
        }
        let ctx = format!("{ctx}: {}", e.path);
        // Implicit parents are visible too.
        let mut acc = String::new();
        for comp in path.split('/').collect::<Vec<_>>().split_last().unwrap().1 {
            acc = if acc.is_empty() {
                comp.to_string()
            } else {
                format!("{acc}/{comp}")
            };
            want.insert(acc.clone());
        }
        match e.overlay.as_deref() {
            Some("opaque") => {
                let dir = root.join(path.rsplit_once('/').map_or("", |x| x.0));
                let v = xattr::get(&dir, opaque.name()).unwrap();
                assert_eq!(v.as_deref(), Some(b"y".as_slice()), "{ctx}: opaque xattr");
                let names: Vec<_> = xattr::list(&dir).unwrap().collect();
                assert!(
                    names.iter().any(|n| n == opaque.name()),
                    "{ctx}: listxattr {names:?}"
                );
                assert!(!root.join(&path).exists(), "{ctx}: marker hidden");
                continue;
            }
            Some("whiteout") => {
                let shown = visible_path(&path).unwrap();
                let meta = std::fs::symlink_metadata(root.join(&shown)).unwrap();
                assert!(meta.file_type().is_char_device(), "{ctx}: char device");
                assert_eq!(meta.rdev(), 0, "{ctx}: 0/0");
                assert_eq!(meta.mode() & 0o7777, 0, "{ctx}: mode 0");
                assert!(
                    std::fs::symlink_metadata(root.join(&path)).is_err(),
                    "{ctx}: .wh. hidden"
                );
                want.insert(shown);
                continue;
            }
            _ => {}
        }
        want.insert(path.clone());
        let full = root.join(&path);
        let meta = std::fs::symlink_metadata(&full).unwrap_or_else(|err| panic!("{ctx}: {err}"));
        inode_of.insert(path.clone(), meta.ino());
        if e.kind == "hardlink" {
            continue;
        }
        assert_attrs(&ctx, &meta, e);
        assert_eq!(meta.mtime(), rounded_mtime(&e.mtime), "{ctx}: mtime");
        match e.kind.as_str() {
            "reg" => {
                assert_eq!(meta.len(), e.size, "{ctx}: size");
                let data = std::fs::read(&full).unwrap();
                assert_eq!(Some(sha256_hex(&data)), e.sha256, "{ctx}: content");
                if e.size > 10 {
                    // A positioned read across chunk boundaries.
                    use std::os::unix::fs::FileExt;
                    let f = std::fs::File::open(&full).unwrap();
                    let mut part = vec![0u8; (e.size / 2) as usize];
                    let off = e.size / 3;
                    f.read_exact_at(&mut part, off).unwrap();
                    assert_eq!(part, data[off as usize..off as usize + part.len()], "{ctx}");
                }
            }
            "symlink" => {
                assert_eq!(
                    std::fs::read_link(&full).unwrap().to_str(),
                    Some(e.linkname.as_str()),
                    "{ctx}"
                );
                assert_eq!(meta.len(), e.linkname.len() as u64, "{ctx}: symlink size");
            }
            "char" | "block" => {
                let rdev = meta.rdev();
                let (ma, mi) = (libc::major(rdev), libc::minor(rdev));
                assert_eq!(
                    (ma, mi),
                    (e.devmajor.unwrap(), e.devminor.unwrap()),
                    "{ctx}: rdev"
                );
            }
            _ => {}
        }
        // Every recorded xattr, and nothing else, through listxattr/getxattr.
        let mut names: Vec<String> = xattr::list(&full)
            .map(|l| l.map(|n| n.into_string().unwrap()).collect())
            .unwrap_or_default();
        names.sort();
        let mut want_names: Vec<String> = e.xattrs.keys().cloned().collect();
        if e.kind == "dir"
            && entries.iter().any(|o| {
                o.overlay.as_deref() == Some("opaque")
                    && clean(&o.path).rsplit_once('/').map_or("", |x| x.0) == path
            })
        {
            want_names.push(opaque.name().to_owned());
        }
        want_names.sort();
        if e.kind != "symlink" {
            assert_eq!(names, want_names, "{ctx}: listxattr");
        }
        for (name, value) in &e.xattrs {
            let got = match xattr::get(&full, name) {
                // Linux answers user.* on symlinks itself (ENODATA), never asking the fs.
                Ok(None) | Err(_) if e.kind == "symlink" => continue,
                Ok(v) => v,
                Err(err) => panic!("{ctx}: xattr {name}: {err}"),
            };
            let got = got.map(|v| base64::engine::general_purpose::STANDARD.encode(v));
            assert_eq!(got.as_deref(), Some(value.as_str()), "{ctx}: xattr {name}");
        }
    }
    for e in entries.iter().filter(|e| e.kind == "hardlink") {
        let (a, b) = (clean(&e.path), clean(&e.linkname));
        assert_eq!(
            inode_of[&a], inode_of[&b],
            "{ctx}: hardlink {a} shares {b}'s inode"
        );
        let nlink = std::fs::metadata(root.join(&a)).unwrap().nlink();
        assert!(nlink >= 2, "{ctx}: nlink of {a} is {nlink}");
    }
    let have = list_tree(root);
    assert_eq!(have, want, "{ctx}: readdir (landmarks and markers hidden)");
}

#[test]
fn every_golden_layer_reads_correctly_through_the_kernel() {
    let rt = runtime();
    for case in cases() {
        for comp in ["gzip", "zstd"] {
            let ctx = format!("{}/{comp}", case.case);
            let source = TestSource::new(blob(&case.case, comp), Behaviour::Serve);
            let layer = open_layer(&rt, source, memory_cache());
            let m = mount_layer(&rt, layer, MountOptions::default());
            check_mount(&m.path, &case.case, &ctx, OpaqueXattr::Trusted);
            // Landmarks never show at the root, even by name.
            assert!(std::fs::symlink_metadata(m.path.join(".no.prefetch.landmark")).is_err());
            assert!(std::fs::symlink_metadata(m.path.join(".prefetch.landmark")).is_err());
            let st = nix::sys::statvfs::statvfs(&m.path).unwrap();
            assert_eq!(st.block_size(), 4096, "{ctx}: statfs");
            assert!(st.files() >= 1, "{ctx}: statfs files");
            m.unmount();
        }
    }
}

#[test]
fn user_namespace_opaque_xattr_when_configured() {
    let rt = runtime();
    let source = TestSource::new(blob("whiteouts", "gzip"), Behaviour::Serve);
    let layer = open_layer(&rt, source, memory_cache());
    let opts = MountOptions {
        opaque_xattr: OpaqueXattr::User,
        ..Default::default()
    };
    let m = mount_layer(&rt, layer, opts);
    check_mount(&m.path, "whiteouts", "whiteouts/user", OpaqueXattr::User);
    assert!(
        xattr::get(m.path.join("opaque"), "trusted.overlay.opaque")
            .unwrap()
            .is_none()
    );
    m.unmount();
}

#[test]
fn overlayfs_on_top_applies_whiteouts_and_opaque_dirs() {
    let rt = runtime();
    let source = TestSource::new(blob("whiteouts", "zstd"), Behaviour::Serve);
    let layer = open_layer(&rt, source, memory_cache());
    let m = mount_layer(&rt, layer, MountOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let lower = dir.path().join("lower");
    for d in ["dir/gone-dir", "dir/kept-lower", "opaque", "other"] {
        std::fs::create_dir_all(lower.join(d)).unwrap();
    }
    for f in ["gone-file", "dir/gone-dir/x", "opaque/old", "other/still"] {
        std::fs::write(lower.join(f), f).unwrap();
    }
    let overlay = Overlay::mount(&[&m.path, &lower]);
    let seen = list_tree(&overlay.merged);
    drop(overlay);
    let want: BTreeSet<String> = [
        "dir",
        "dir/kept",
        "dir/kept-lower",
        "opaque",
        "opaque/new",
        "other",
        "other/still",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(
        seen, want,
        "whited-out names vanish, the opaque dir hides the lower"
    );
    m.unmount();
}

#[test]
fn absent_names_are_cached_as_negative_entries() {
    let rt = runtime();
    let source = TestSource::new(blob("tree", "gzip"), Behaviour::Serve);
    let m = mount_layer(
        &rt,
        open_layer(&rt, source, memory_cache()),
        MountOptions::default(),
    );
    let stats = m.handle.as_ref().unwrap().stats().clone();
    let missing = m.path.join("no-such-name");
    assert!(std::fs::symlink_metadata(&missing).is_err());
    let after_first = stats.lookups.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..5 {
        let err = std::fs::symlink_metadata(&missing).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
    assert_eq!(
        stats.lookups.load(std::sync::atomic::Ordering::SeqCst),
        after_first,
        "repeat lookups answered by the kernel"
    );
    m.unmount();
}

#[test]
fn other_users_get_access_and_the_kernel_enforces_modes() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let rt = runtime();
    let source = TestSource::new(blob("perms", "gzip"), Behaviour::Serve);
    let m = mount_layer(
        &rt,
        open_layer(&rt, source, memory_cache()),
        MountOptions::default(),
    );
    let parent = m.path.parent().unwrap();
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = |args: &[&str]| {
        std::process::Command::new(args[0])
            .args(&args[1..])
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    let path = |p: &str| m.path.join(p).display().to_string();
    let ok = as_nobody(&["cat", &path("second-root-file")]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    for denied in [
        as_nobody(&["cat", &path("zero")]),
        as_nobody(&["ls", &path("private")]),
    ] {
        assert!(!denied.status.success());
        let err = String::from_utf8_lossy(&denied.stderr);
        assert!(err.contains("Permission denied"), "{err}");
    }
    // Root still reads a mode-000 file (as on any filesystem).
    std::fs::read(m.path.join("zero")).unwrap();
    m.unmount();
}

#[test]
fn busy_mount_refuses_unmount_and_keeps_serving() {
    let rt = runtime();
    let source = TestSource::new(blob("tree", "gzip"), Behaviour::Serve);
    let mut m = mount_layer(
        &rt,
        open_layer(&rt, source, memory_cache()),
        MountOptions::default(),
    );
    let dir = std::fs::read_dir(&m.path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let busy = std::fs::File::open(&dir).unwrap();
    let handle = m.handle.as_mut().unwrap();
    assert!(handle.unmount().is_err(), "busy");
    assert!(
        std::fs::read_dir(&m.path).unwrap().count() > 0,
        "still served"
    );
    drop(busy);
    handle.unmount().unwrap();
    handle.unmount().unwrap();
    assert_eq!(
        std::fs::read_dir(&m.path).unwrap().count(),
        0,
        "the empty mountpoint is back"
    );
}
