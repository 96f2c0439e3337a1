//! Unit tests of restore's decisions.

use super::*;

#[test]
fn finds_only_our_fuse_mounts_under_root() {
    let info = "\
36 35 0:30 / /r/snapshots/1/fs rw - fuse rstargz ro
37 35 0:31 / /r/snapshots/2/fs rw shared:5 - fuse.rstargz rstargz ro
38 35 0:32 / /other/fs rw - fuse.rstargz rstargz ro
39 35 0:33 / /r/snapshots/3/fs rw - overlay overlay rw
41 35 0:35 / /r/snapshots/4/fs rw - fuse other ro
40 35 0:34 / /r/with\\040space rw - fuse.rstargz rstargz ro
";
    let found = stale_mounts(mountinfo::parse(info), Path::new("/r"));
    let mut names: Vec<_> = found
        .iter()
        .map(|m| (m.mountpoint.display().to_string(), m.dev))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ("/r/snapshots/1/fs".to_string(), 30),
            ("/r/snapshots/2/fs".to_string(), 31),
            ("/r/with space".to_string(), 34)
        ]
    );
    let ours = our_mounts(mountinfo::parse(info), Path::new("/r/snapshots"));
    let devs: Vec<_> = ours.into_iter().map(|m| (m.mountpoint, m.dev)).collect();
    assert_eq!(
        devs,
        [
            ("/r/snapshots/1/fs".into(), libc::makedev(0, 30)),
            ("/r/snapshots/2/fs".into(), libc::makedev(0, 31)),
        ]
    );
}

