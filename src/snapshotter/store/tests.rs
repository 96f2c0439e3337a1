use super::*;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("metadata.db")).unwrap();
    (dir, store)
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn create_commit_chain_keeps_ids_and_parents() {
    let (_d, s) = store();
    let now = SystemTime::now();
    let a = s
        .write(|t| t.create(Kind::Active, "a", "", &Labels::new(), now))
        .unwrap();
    let id = s
        .write(|t| {
            t.commit(
                "a",
                "A",
                Usage { size: 7, inodes: 1 },
                &labels(&[("x", "1")]),
                now,
            )
        })
        .unwrap();
    assert_eq!(a.id, id);
    let b = s
        .write(|t| t.create(Kind::Active, "b", "A", &Labels::new(), now))
        .unwrap();
    s.write(|t| t.commit("b", "B", Usage::default(), &Labels::new(), now))
        .unwrap();
    let c = s
        .write(|t| t.create(Kind::View, "c", "B", &Labels::new(), now))
        .unwrap();
    assert_eq!(c.parent_ids, vec![b.id, a.id]);
    let (_, info) = s.read(|t| t.info("c")).unwrap();
    assert_eq!(info.parent, "B");
    assert_eq!(info.kind, Kind::View);
    assert_eq!(s.read(|t| t.stored_usage(id)).unwrap().size, 7);
    assert_eq!(
        s.read(|t| t.info("A")).unwrap().1.labels,
        labels(&[("x", "1")])
    );
}

fn e<T: std::fmt::Debug>(r: Result<T>) -> Error {
    r.unwrap_err()
}

#[test]
fn errors_match_containerd() {
    let (_d, s) = store();
    let now = SystemTime::now();
    s.write(|t| t.create(Kind::Active, "a", "", &Labels::new(), now))
        .unwrap();
    assert!(matches!(
        e(s.write(|t| t.create(Kind::Active, "a", "", &Labels::new(), now))),
        Error::AlreadyExists(_)
    ));
    assert!(matches!(
        e(s.write(|t| t.create(Kind::Active, "b", "nope", &Labels::new(), now))),
        Error::NotFound(_)
    ));
    assert!(matches!(
        e(s.write(|t| t.create(Kind::Active, "b", "a", &Labels::new(), now))),
        Error::InvalidArgument(_)
    ));
    assert!(matches!(e(s.read(|t| t.info("zz"))), Error::NotFound(_)));
    s.write(|t| t.commit("a", "A", Usage::default(), &Labels::new(), now))
        .unwrap();
    assert!(matches!(
        e(s.write(|t| t.commit("A", "A2", Usage::default(), &Labels::new(), now))),
        Error::FailedPrecondition(_)
    ));
    s.write(|t| t.create(Kind::Active, "b", "A", &Labels::new(), now))
        .unwrap();
    assert!(matches!(
        e(s.write(|t| t.commit("b", "A", Usage::default(), &Labels::new(), now))),
        Error::AlreadyExists(_)
    ));
    let err = e(s.write(|t| t.remove("A")));
    assert!(matches!(err, Error::FailedPrecondition(_)));
    assert!(err.to_string().contains("remove"));
    s.write(|t| t.remove("b")).unwrap();
    s.write(|t| t.remove("A")).unwrap();
    assert!(s.read(|t| t.walk()).unwrap().is_empty());
}

#[test]
fn failed_write_rolls_back() {
    let (_d, s) = store();
    let now = SystemTime::now();
    let r: Result<()> = s.write(|t| {
        t.create(Kind::Active, "a", "", &Labels::new(), now)?;
        Err(Error::Unavailable("simulated".into()))
    });
    assert!(r.is_err());
    assert!(s.read(|t| t.walk()).unwrap().is_empty());
}

#[test]
fn ids_are_never_reused() {
    let (_d, s) = store();
    let now = SystemTime::now();
    let a = s
        .write(|t| t.create(Kind::Active, "a", "", &Labels::new(), now))
        .unwrap();
    s.write(|t| t.remove("a")).unwrap();
    let b = s
        .write(|t| t.create(Kind::Active, "a", "", &Labels::new(), now))
        .unwrap();
    assert!(b.id > a.id);
}

#[test]
fn update_field_paths() {
    let (_d, s) = store();
    let now = SystemTime::now();
    s.write(|t| {
        t.create(
            Kind::Active,
            "a",
            "",
            &labels(&[("k1", "v1"), ("k2", "v2")]),
            now,
        )
    })
    .unwrap();
    let mut info = s.read(|t| t.info("a")).unwrap().1;
    info.labels = labels(&[("k1", "new"), ("k3", "v3")]);
    let got = s
        .write(|t| t.update(&info, &["labels.k1".into()], now))
        .unwrap();
    assert_eq!(got.labels, labels(&[("k1", "new"), ("k2", "v2")]));
    let got = s
        .write(|t| t.update(&info, &["labels.k2".into()], now))
        .unwrap();
    assert_eq!(got.labels, labels(&[("k1", "new")]));
    let got = s.write(|t| t.update(&info, &[], now)).unwrap();
    assert_eq!(got.labels, labels(&[("k1", "new"), ("k3", "v3")]));
    let err = s
        .write(|t| t.update(&info, &["parent".into()], now))
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)));
}
