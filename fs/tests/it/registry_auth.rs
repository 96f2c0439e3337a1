//! Authentication against a real docker-registry: htpasswd basic auth with
//! docker config.json credentials, and the bearer-token flow through a token
//! server in the fault proxy. Secrets must never show up in errors.
#![allow(clippy::unwrap_used, clippy::single_range_in_vec_init)]

use crate::common;

use base64::Engine as _;
use bytes::Bytes;
use common::proxy::{FaultMode, FaultPlan, FaultProxy, TokenAuth};
use common::registry::TestRegistry;
use common::{docker_config, push_anonymously, test_blob, test_config};
use rstargz_fs::registry::{
    Credential, Keychain, Purpose, Reference, Registry, RegistryError, Secret,
};

const USER: &str = "tester";
const PASSWORD: &str = "s3cret-Pa55word";

#[tokio::test]
async fn htpasswd_registry_with_docker_config_credentials() {
    let reg = TestRegistry::start_with_htpasswd(USER, PASSWORD).await;
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::new(test_config(&docker_config(
        dir.path(),
        &reg.host(),
        USER,
        PASSWORD,
    )))
    .unwrap();
    let reference = Reference::parse(&reg.reference("auth/blob")).unwrap();
    let blob = test_blob(100_000, 7);
    let digest = registry
        .push_blob(&reference, Bytes::from(blob.clone()))
        .await
        .unwrap();
    let fetcher = registry.open_blob(&reference, &digest, None).await.unwrap();
    let got = fetcher
        .fetch_ranges(&[5..50, 90_000..90_100], Purpose::OnDemand)
        .await
        .unwrap();
    assert_eq!(&got[0].1[..], &blob[5..50]);
    assert_eq!(&got[1].1[..], &blob[90_000..90_100]);

    // Anonymous access is refused with a typed error naming what is missing.
    let anonymous = Registry::new(test_config(&dir.path().join("none.json"))).unwrap();
    let err = anonymous
        .open_blob(&reference, &digest, None)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::NoCredentials { .. }), "{err}");
    assert!(err.to_string().contains("no credentials"), "{err}");

    // A wrong password fails, and neither password appears in the error.
    let wrong_dir = tempfile::tempdir().unwrap();
    let wrong = "wrong-Pa55word";
    let bad = Registry::new(test_config(&docker_config(
        wrong_dir.path(),
        &reg.host(),
        USER,
        wrong,
    )))
    .unwrap();
    let err = bad.open_blob(&reference, &digest, None).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    let shown = format!("{err} {err:?} {bad:?} {registry:?}");
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    assert!(!shown.contains(&encoded), "{shown}");
    assert!(
        !shown.contains(wrong) && !shown.contains(PASSWORD),
        "{shown}"
    );
    let err = bad
        .push_blob(&reference, Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(!format!("{err} {err:?}").contains(wrong));
}

#[tokio::test]
async fn bearer_token_flow_caches_tokens_and_refreshes_on_401() {
    let reg = TestRegistry::start().await;
    let proxy = FaultProxy::start(reg.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let blob = test_blob(500_000, 3);
    let digest = push_anonymously(&reg, "tok/blob", &blob).await;

    proxy.require_tokens(TokenAuth {
        user_password: Some((USER.into(), PASSWORD.into())),
        refresh_token: None,
    });
    let registry = Registry::new(test_config(&docker_config(
        dir.path(),
        &proxy.host(),
        USER,
        PASSWORD,
    )))
    .unwrap();
    let reference = Reference::parse(&format!("{}/tok/blob", proxy.host())).unwrap();
    let fetcher = registry.open_blob(&reference, &digest, None).await.unwrap();
    for i in 0..5u64 {
        let r = i * 100_000..i * 100_000 + 10;
        let got = fetcher
            .fetch_ranges(std::slice::from_ref(&r), Purpose::OnDemand)
            .await
            .unwrap();
        assert_eq!(&got[0].1[..], &blob[r.start as usize..r.end as usize]);
    }
    assert_eq!(proxy.token_requests(), 1, "the token is cached per scope");
    let token_request = proxy
        .seen()
        .into_iter()
        .find(|s| s.path.starts_with("/token"))
        .unwrap();
    assert!(
        token_request
            .path
            .contains("scope=repository%3Atok%2Fblob%3Apull"),
        "{}",
        token_request.path
    );
    assert!(token_request.path.contains("service=test-registry"));

    proxy.revoke_tokens();
    let got = fetcher
        .fetch_ranges(&[7..9], Purpose::OnDemand)
        .await
        .unwrap();
    assert_eq!(&got[0].1[..], &blob[7..9]);
    assert_eq!(
        proxy.token_requests(),
        2,
        "a 401 fetches a fresh token once"
    );

    // A token may be refused on any request: each 401 fetches a new one
    // (test_config: two retries, so three refreshes in a row).
    proxy.set_plan(Some(FaultPlan {
        max_faults: Some(3),
        ..FaultPlan::blobs(FaultMode::Unauthorized, 1.0)
    }));
    let got = fetcher
        .fetch_ranges(&[20..29], Purpose::OnDemand)
        .await
        .unwrap();
    assert_eq!(&got[0].1[..], &blob[20..29]);
    assert_eq!(proxy.token_requests(), 5);
    proxy.set_plan(None);

    // Without credentials the token server refuses, and we say so.
    let anonymous = Registry::new(test_config(&dir.path().join("none.json"))).unwrap();
    let err = anonymous
        .open_blob(&reference, &digest, None)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::NoCredentials { .. }), "{err}");
}

#[tokio::test]
async fn a_keychain_credential_refused_with_401_is_dropped() {
    let reg = TestRegistry::start_with_htpasswd(USER, PASSWORD).await;
    let dir = tempfile::tempdir().unwrap();
    let pusher = Registry::new(test_config(&docker_config(
        dir.path(),
        &reg.host(),
        USER,
        PASSWORD,
    )))
    .unwrap();
    let reference = Reference::parse(&reg.reference("keychain/blob")).unwrap();
    let blob = test_blob(10_000, 3);
    let digest = pusher
        .push_blob(&reference, Bytes::from(blob.clone()))
        .await
        .unwrap();
    // Credentials only in the keychain, as a CRI PullImage leaves them.
    let keychain = Keychain::default();
    let mut config = test_config(&dir.path().join("none.json"));
    config.keychain = keychain.clone();
    let registry = Registry::new(config).unwrap();
    let basic = |password: &str| Credential::Basic {
        username: USER.into(),
        password: Secret::new(password),
    };
    keychain.insert(&reg.host(), basic("wrong-Pa55word"));
    let err = registry
        .open_blob(&reference, &digest, None)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    assert_eq!(
        keychain.get(&reg.host()),
        None,
        "the refused one is dropped"
    );
    // Nothing left to try: the next attempt says credentials are missing.
    let err = registry
        .open_blob(&reference, &digest, None)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::NoCredentials { .. }), "{err}");
    // A newer (right) credential works, and stays.
    keychain.insert(&reg.host(), basic(PASSWORD));
    let fetcher = registry.open_blob(&reference, &digest, None).await.unwrap();
    let got = fetcher
        .fetch_ranges(&[100..200], Purpose::OnDemand)
        .await
        .unwrap();
    assert_eq!(&got[0].1[..], &blob[100..200]);
    assert_eq!(keychain.get(&reg.host()), Some(basic(PASSWORD)));
}

#[tokio::test]
async fn rotated_docker_config_credentials_are_used_without_a_restart() {
    let reg = TestRegistry::start_with_htpasswd(USER, PASSWORD).await;
    let dir = tempfile::tempdir().unwrap();
    let config = docker_config(dir.path(), &reg.host(), USER, PASSWORD);
    let registry = Registry::new(test_config(&config)).unwrap();
    let reference = Reference::parse(&reg.reference("rotate/blob")).unwrap();
    let first = registry
        .push_blob(&reference, Bytes::from(test_blob(5_000, 1)))
        .await
        .unwrap();
    registry.open_blob(&reference, &first, None).await.unwrap();
    // The password changes at the registry and in config.json.
    let rotated = "r0tated-Pa55word";
    reg.set_htpasswd(USER, rotated);
    docker_config(dir.path(), &reg.host(), USER, rotated);
    let second = registry
        .push_blob(&reference, Bytes::from(test_blob(5_000, 2)))
        .await
        .unwrap();
    let fetcher = registry.open_blob(&reference, &second, None).await.unwrap();
    let got = fetcher
        .fetch_ranges(&[0..10], Purpose::OnDemand)
        .await
        .unwrap();
    assert_eq!(&got[0].1[..], &test_blob(5_000, 2)[..10]);
}

#[tokio::test]
async fn anonymous_token_flow() {
    let reg = TestRegistry::start().await;
    let proxy = FaultProxy::start(reg.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::new(test_config(&dir.path().join("none.json"))).unwrap();
    let digest = registry
        .push_blob(
            &Reference::parse(&reg.reference("anon/blob")).unwrap(),
            Bytes::from_static(b"hello tokens"),
        )
        .await
        .unwrap();
    proxy.require_tokens(TokenAuth {
        user_password: None,
        refresh_token: None,
    });
    let reference = Reference::parse(&format!("{}/anon/blob", proxy.host())).unwrap();
    let fetcher = registry
        .open_blob(&reference, &digest, Some(12))
        .await
        .unwrap();
    let got = fetcher
        .fetch_ranges(&[6..12], Purpose::Prefetch)
        .await
        .unwrap();
    assert_eq!(&got[0].1[..], b"tokens");
    assert_eq!(proxy.token_requests(), 1);
}

#[tokio::test]
async fn identity_token_is_exchanged_with_oauth2_refresh_grant() {
    let reg = TestRegistry::start().await;
    let proxy = FaultProxy::start(reg.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let digest = push_anonymously(&reg, "oauth/blob", b"refreshed").await;
    proxy.require_tokens(TokenAuth {
        user_password: Some((USER.into(), PASSWORD.into())),
        refresh_token: Some("refresh-me".into()),
    });
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"auths": {{"{}": {{"identitytoken": "refresh-me"}}}}}}"#,
            proxy.host()
        ),
    )
    .unwrap();
    let registry = Registry::new(test_config(&config)).unwrap();
    let reference = Reference::parse(&format!("{}/oauth/blob", proxy.host())).unwrap();
    let fetcher = registry.open_blob(&reference, &digest, None).await.unwrap();
    let got = fetcher
        .fetch_ranges(&[0..7], Purpose::OnDemand)
        .await
        .unwrap();
    assert_eq!(&got[0].1[..], b"refresh");
    let token_request = proxy
        .seen()
        .into_iter()
        .find(|s| s.path.starts_with("/token"))
        .unwrap();
    assert_eq!(token_request.method, "POST");
    assert!(!format!("{registry:?}").contains("refresh-me"));
}

#[tokio::test]
async fn endless_token_response_is_cut_off_at_the_cap() {
    let reg = TestRegistry::start().await;
    let proxy = FaultProxy::start(reg.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::new(test_config(&dir.path().join("none.json"))).unwrap();
    let digest = push_anonymously(&reg, "endless/blob", b"never read").await;
    proxy.require_tokens(TokenAuth {
        user_password: None,
        refresh_token: None,
    });
    proxy.endless_token_responses();
    let reference = Reference::parse(&format!("{}/endless/blob", proxy.host())).unwrap();
    let err = registry
        .open_blob(&reference, &digest, Some(10))
        .await
        .unwrap_err();
    // Not a timeout after buffering whatever arrived: a protocol error at 1 MiB.
    assert!(
        matches!(&err, RegistryError::Protocol { reason, .. } if reason.contains("larger than")),
        "{err}"
    );
}
