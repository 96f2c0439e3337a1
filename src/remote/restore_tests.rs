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

#[test]
fn held_mounts_are_kept_and_the_rest_detached_deepest_first() {
    let info = "\
36 35 0:30 / /r/snapshots/1/fs rw - fuse.rstargz rstargz ro
37 35 0:31 / /r/snapshots/2/fs rw - fuse.rstargz rstargz ro
38 35 0:32 / /r/snapshots/2/fs/deeper rw - fuse.rstargz rstargz ro
";
    let keep = [PathBuf::from("/r/snapshots/1/fs")];
    let plan: Vec<_> = to_detach(mountinfo::parse(info), Path::new("/r"), &keep)
        .into_iter()
        .map(|m| m.mountpoint)
        .collect();
    assert_eq!(
        plan,
        [
            PathBuf::from("/r/snapshots/2/fs/deeper"),
            PathBuf::from("/r/snapshots/2/fs")
        ]
    );
}

#[test]
fn a_kept_session_keeps_its_connection_while_its_stale_layers_go() {
    let info = "\
36 35 0:30 / /r/fuse rw - fuse.rstargz rstargz ro
37 35 0:30 /1 /r/snapshots/1/fs rw - fuse.rstargz rstargz ro
38 35 0:30 /2 /r/snapshots/2/fs rw - fuse.rstargz rstargz ro
39 35 0:31 / /r/old/fs rw - fuse.rstargz rstargz ro
";
    let keep = [PathBuf::from("/r/fuse"), PathBuf::from("/r/snapshots/1/fs")];
    let table = mountinfo::parse(info);
    let stale = to_detach(table.clone(), Path::new("/r"), &keep);
    let paths: Vec<_> = stale.iter().map(|m| m.mountpoint.clone()).collect();
    assert_eq!(
        paths,
        [
            PathBuf::from("/r/snapshots/2/fs"),
            PathBuf::from("/r/old/fs")
        ]
    );
    let aborted = devices_to_abort(table.clone(), Path::new("/r"), &keep, &stale);
    assert_eq!(aborted, HashSet::from([libc::makedev(0, 31)]));
    // Nothing kept: every connection goes.
    let stale = to_detach(table.clone(), Path::new("/r"), &[]);
    let aborted = devices_to_abort(table, Path::new("/r"), &[], &stale);
    assert_eq!(aborted.len(), 2);
}

fn labels_of(digest: &str) -> Labels {
    use rstargz_fs::registry::labels::{STARGZ_DIGEST, STARGZ_REFERENCE};
    [
        (
            STARGZ_REFERENCE.to_string(),
            "127.0.0.1:5000/img:tag".to_string(),
        ),
        (STARGZ_DIGEST.to_string(), digest.to_string()),
    ]
    .into_iter()
    .collect()
}

fn digest(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

#[tokio::test]
#[allow(clippy::unwrap_used)]
async fn only_layers_no_snapshot_or_mount_uses_are_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let store = LayerStore::new(dir.path().join("layers"));
    let state = |c| {
        let d = rstargz_fs::registry::OciDigest::parse(&digest(c)).unwrap();
        store.state_dir(&d)
    };
    for c in ['a', 'b', 'c', 'd'] {
        std::fs::create_dir_all(state(c)).unwrap();
        std::fs::write(state(c).join("meta.json"), b"{}").unwrap();
    }
    // a: a snapshot's layer; b: mounted only (a snapshot being removed);
    // c: nobody's; d: a snapshot's, whose labels name it again.
    let in_use = [
        labels_of(&digest('a')),
        labels_of(&digest('d')),
        Labels::new(),
    ];
    let mounted = vec![state('b')];
    let mut pruned = states_to_prune(&store, store.saved_states().await, &in_use, mounted.clone());
    pruned.sort();
    assert_eq!(pruned, [state('c')]);

    prune_states(&store, &in_use, mounted).await;
    let mut left = store.saved_states().await;
    left.sort();
    assert_eq!(left, [state('a'), state('b'), state('d')]);

    // Nothing in use: everything goes; an absent store is no error.
    prune_states(&store, &[], Vec::new()).await;
    assert!(store.saved_states().await.is_empty());
    let gone = LayerStore::new(dir.path().join("never"));
    prune_states(&gone, &[], Vec::new()).await;
}
