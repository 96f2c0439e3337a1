//! Several layers in one FUSE session: each in its own slot of the inode
//! space, bind-mounted at its own mountpoint; retiring one leaves the
//! others served, and slots are never reused.
#![allow(clippy::unwrap_used)]

use crate::common;
use crate::fuse_common;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;
use fuse_common::*;
use rstargz_fs::fuse::MountOptions;

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

#[test]
fn layers_of_one_session_are_served_apart_and_retired_alone() {
    let rt = runtime();
    let tree = open_layer(
        &rt,
        TestSource::new(blob("tree", "gzip"), Behaviour::Serve),
        memory_cache(),
    );
    let sizes = open_layer(
        &rt,
        TestSource::new(blob("sizes", "gzip"), Behaviour::Serve),
        memory_cache(),
    );
    let a = mount_layer(&rt, tree, MountOptions::default());
    let session = a.session.clone();
    let b_path = a.path.parent().unwrap().join("b");
    std::fs::create_dir(&b_path).unwrap();
    let opts = MountOptions {
        runtime: Some(rt.handle().clone()),
        ..MountOptions::default()
    };
    let mut b = session
        .attach(session.reserve(), &b_path, sizes, opts)
        .unwrap();
    let (slot_a, slot_b) = (a.handle.as_ref().unwrap().slot(), b.slot());
    assert_ne!(slot_a, slot_b);

    // The session root lists both layers; each mount shows its own layer.
    let want: BTreeSet<String> = [slot_a, slot_b].iter().map(|s| s.to_string()).collect();
    assert_eq!(names(session.dir()), want);
    let (in_a, in_b) = (names(&a.path), names(&b_path));
    assert!(!in_a.is_empty() && !in_b.is_empty());
    assert_ne!(in_a, in_b, "two different layers");
    assert_eq!(names(&session.slot_dir(slot_b)), in_b);
    // Inode numbers carry the slot, so the two roots never collide.
    let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
    assert_eq!(ino(&a.path) >> 32, u64::from(slot_a));
    assert_eq!(ino(&b_path) >> 32, u64::from(slot_b));
    // Both share the session's one device.
    let dev = |p: &Path| std::fs::metadata(p).unwrap().dev();
    assert_eq!(dev(&a.path), dev(&b_path));

    // Retiring the first layer leaves the second served.
    let first_file = b_path.join(in_b.iter().next().unwrap());
    let before = std::fs::metadata(&first_file).unwrap();
    a.unmount();
    assert_eq!(names(session.dir()), BTreeSet::from([slot_b.to_string()]));
    assert!(std::fs::metadata(session.slot_dir(slot_a)).is_err());
    assert_eq!(
        std::fs::metadata(&first_file).unwrap().ino(),
        before.ino(),
        "the other layer is untouched"
    );
    // A new layer never gets a retired slot.
    assert!(session.reserve() > slot_b);
    b.unmount().unwrap();
    assert!(names(session.dir()).is_empty());
}
