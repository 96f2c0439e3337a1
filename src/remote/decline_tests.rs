//! Unit tests of the decline decisions made from labels and policies.

#![allow(clippy::unwrap_used)]

use rstargz_fs::registry::labels::{SKIP_VERIFY, STARGZ_DIGEST, STARGZ_REFERENCE, TOC_DIGEST};

use super::*;

const LAYER: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const TOC: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn layer_labels() -> Labels {
    labels(&[
        (STARGZ_REFERENCE, "127.0.0.1:5000/img:tag"),
        (STARGZ_DIGEST, LAYER),
    ])
}

const VERIFY: VerificationPolicy = VerificationPolicy {
    disabled: false,
    honour_skip_label: false,
};

fn reason(r: Result<(LayerSource, OpenOptions), Declined>) -> DeclineReason {
    r.err().unwrap().reason
}

#[test]
fn disabled_declines_before_reading_labels() {
    assert_eq!(
        reason(plan(false, VERIFY, &Labels::new())),
        DeclineReason::Disabled
    );
    assert_eq!(
        reason(plan(false, VERIFY, &layer_labels())),
        DeclineReason::Disabled
    );
}

#[test]
fn missing_or_bad_source_labels_decline_as_no_source() {
    assert_eq!(
        reason(plan(true, VERIFY, &Labels::new())),
        DeclineReason::NoSource
    );
    let no_digest = labels(&[(STARGZ_REFERENCE, "127.0.0.1:5000/img:tag")]);
    assert_eq!(
        reason(plan(true, VERIFY, &no_digest)),
        DeclineReason::NoSource
    );
    let bad_ref = labels(&[(STARGZ_REFERENCE, "::"), (STARGZ_DIGEST, LAYER)]);
    assert_eq!(
        reason(plan(true, VERIFY, &bad_ref)),
        DeclineReason::NoSource
    );
}

#[test]
fn a_layer_without_toc_digest_is_declined_unless_verification_is_waived() {
    let d = plan(true, VERIFY, &layer_labels()).err().unwrap();
    assert_eq!(d.reason, DeclineReason::NoTocDigest);
    assert_eq!(d.to_string(), format!("no TOC digest annotation: {LAYER}"));

    let mut skip = layer_labels();
    skip.insert(SKIP_VERIFY.into(), "true".into());
    assert_eq!(
        reason(plan(true, VERIFY, &skip)),
        DeclineReason::NoTocDigest
    );
    let honour = VerificationPolicy {
        honour_skip_label: true,
        ..VERIFY
    };
    let (_, opts) = plan(true, honour, &skip).unwrap();
    assert_eq!(opts.verify, Verify::Disabled);

    let off = VerificationPolicy {
        disabled: true,
        ..VERIFY
    };
    let (source, opts) = plan(true, off, &layer_labels()).unwrap();
    assert_eq!(source.layer.digest.as_str(), LAYER);
    assert_eq!(opts.verify, Verify::Disabled);
    assert_eq!(opts.expected_toc_digest, None);
}

#[test]
fn a_toc_digest_label_is_what_the_layer_must_match() {
    let mut l = layer_labels();
    l.insert(TOC_DIGEST.into(), TOC.into());
    let (_, opts) = plan(true, VERIFY, &l).unwrap();
    assert_eq!(opts.verify, Verify::Enabled);
    assert_eq!(opts.expected_toc_digest.unwrap().to_string(), TOC);
}

#[test]
fn registry_failures_map_to_auth_credentials_or_unreachable() {
    let auth = RegistryError::Unauthorized {
        host: "h".into(),
        repository: "r".into(),
    };
    assert_eq!(
        DeclineReason::of_registry(&auth),
        DeclineReason::AuthRefused
    );
    let forbidden = RegistryError::Forbidden {
        host: "h".into(),
        path: "/p".into(),
    };
    assert_eq!(
        DeclineReason::of_registry(&forbidden),
        DeclineReason::AuthRefused
    );
    let missing = RegistryError::NoCredentials {
        host: "h".into(),
        repository: "r".into(),
    };
    assert_eq!(
        DeclineReason::of_registry(&missing),
        DeclineReason::NoCredentials
    );
    let behind_mirrors = RegistryError::AllHostsFailed {
        tried: 2,
        last: Box::new(missing),
    };
    assert_eq!(
        DeclineReason::of_registry(&behind_mirrors),
        DeclineReason::NoCredentials
    );
    let missing_at_read = rstargz_fs::layer::LayerError::Source {
        start: 0,
        end: 1,
        source: std::io::Error::other(RegistryError::NoCredentials {
            host: "h".into(),
            repository: "r".into(),
        }),
    };
    assert_eq!(
        DeclineReason::of_layer(&missing_at_read),
        DeclineReason::NoCredentials
    );
    let status = RegistryError::Status {
        host: "h".into(),
        path: "/p".into(),
        status: 503,
    };
    assert_eq!(
        DeclineReason::of_registry(&status),
        DeclineReason::RegistryUnreachable
    );
}

#[test]
fn every_reason_has_its_own_words() {
    use DeclineReason::*;
    let all = [
        Disabled,
        NoSource,
        NoTocDigest,
        NotEstargz,
        TocDigestMismatch,
        AuthRefused,
        NoCredentials,
        RegistryUnreachable,
        MountFailed,
    ];
    let words: std::collections::HashSet<_> = all.iter().map(|r| r.as_str()).collect();
    assert_eq!(words.len(), all.len());
}
