//! Conversions between generated proto messages and core types.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rstargz_proto::prost_types::Timestamp;
use rstargz_proto::{snapshots as pb, types as pbt};

use crate::snapshot::{Error, Info, Kind, Labels, Mount, Result};

/// Proto labels (a HashMap) to core labels.
pub fn labels(map: HashMap<String, String>) -> Labels {
    map.into_iter().collect()
}

/// Core mounts to proto mounts.
pub fn mounts(mounts: Vec<Mount>) -> Vec<pbt::Mount> {
    mounts
        .into_iter()
        .map(|m| pbt::Mount {
            r#type: m.kind,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn system_time(t: Option<Timestamp>) -> SystemTime {
    t.map_or(UNIX_EPOCH, |t| {
        UNIX_EPOCH
            + Duration::from_secs(u64::try_from(t.seconds).unwrap_or(0))
            + Duration::from_nanos(u64::try_from(t.nanos).unwrap_or(0))
    })
}

fn kind(k: Kind) -> pb::Kind {
    match k {
        Kind::View => pb::Kind::View,
        Kind::Active => pb::Kind::Active,
        Kind::Committed => pb::Kind::Committed,
    }
}

/// Core info to proto info.
pub fn info(i: Info) -> pb::Info {
    pb::Info {
        name: i.name,
        parent: i.parent,
        kind: kind(i.kind) as i32,
        created_at: Some(timestamp(i.created)),
        updated_at: Some(timestamp(i.updated)),
        labels: i.labels.into_iter().collect(),
    }
}

/// Proto info (from Update) to core info. Only name and labels matter to
/// Update; kind defaults to Active when unknown.
pub fn info_from_pb(i: Option<pb::Info>) -> Result<Info> {
    let i = i.ok_or_else(|| Error::InvalidArgument("update request without info".into()))?;
    Ok(Info {
        name: i.name,
        parent: i.parent,
        kind: Kind::from_i64(i64::from(i.kind)).unwrap_or(Kind::Active),
        created: system_time(i.created_at),
        updated: system_time(i.updated_at),
        labels: labels(i.labels),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_round_trips() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123);
        let core = Info {
            name: "n".into(),
            parent: "p".into(),
            kind: Kind::Committed,
            created: t,
            updated: t,
            labels: [("a".to_string(), "b".to_string())].into_iter().collect(),
        };
        let back = info_from_pb(Some(info(core.clone())));
        assert_eq!(back.ok(), Some(core));
    }
}
