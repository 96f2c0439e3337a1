//! Snapshot metadata in SQLite (`<root>/metadata.db`), with the semantics of
//! containerd's `snapshots/storage` package.
//!
//! Contract:
//! - Every operation runs in one transaction (`Store::read`/`Store::write`);
//!   a closure that returns `Err` rolls back, so callers can do filesystem
//!   work inside `write` and have the database change only if it succeeded.
//! - Snapshot ids are `INTEGER PRIMARY KEY AUTOINCREMENT`: SQLite never hands
//!   out an id that a committed row ever had, so a directory named after a
//!   removed snapshot can never be mistaken for a new one.
//! - Committing renames the row (key → name) and keeps its id, so the
//!   directory does not move; children point at parents by id.
//! - Durability: WAL with `synchronous=FULL`. An acknowledged Prepare/Commit
//!   must survive not just kill -9 (NORMAL would do) but power loss, and the
//!   snapshot rate is bounded by mount/mkdir work anyway, so the extra fsync
//!   per commit is affordable.

pub mod filter;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::model::{Context, Error, Info, Kind, Labels, Result, Usage};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS snapshots (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    key          TEXT    NOT NULL UNIQUE,
    kind         INTEGER NOT NULL,
    parent_id    INTEGER REFERENCES snapshots(id),
    created_ns   INTEGER NOT NULL,
    updated_ns   INTEGER NOT NULL,
    usage_size   INTEGER NOT NULL DEFAULT 0,
    usage_inodes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent_id);
CREATE TABLE IF NOT EXISTS labels (
    snapshot_id INTEGER NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
    key         TEXT    NOT NULL,
    value       TEXT    NOT NULL,
    PRIMARY KEY (snapshot_id, key)
);
";

/// The metadata database: one connection, serialised by a mutex (SQLite
/// allows one writer anyway, and every call is short).
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
}

/// Where a snapshot lives on disk and what it stacks on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Unique numeric id: the directory name under `snapshots/`.
    pub id: i64,
    /// Kind of the snapshot.
    pub kind: Kind,
    /// Ids of all parents, nearest first.
    pub parent_ids: Vec<i64>,
}

/// An open transaction.
#[derive(Debug)]
pub struct Tx<'a>(rusqlite::Transaction<'a>);

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path).context(|| format!("open {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(5))
            .context(|| "set busy timeout")?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .context(|| "enable WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")
            .context(|| "set synchronous=FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .context(|| "enable foreign keys")?;
        conn.execute_batch(SCHEMA).context(|| "create schema")?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> Result<MutexGuard<'_, Connection>> {
        self.conn
            .lock()
            .map_err(|_| Error::internal("metadata store", "lock poisoned by a panic"))
    }

    /// Moves the WAL into the main database file (clean shutdown).
    pub fn checkpoint(&self) -> Result<()> {
        self.lock()?
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .context(|| "checkpoint")
    }

    /// Runs `f` in a read transaction.
    pub fn read<T>(&self, f: impl FnOnce(&Tx) -> Result<T>) -> Result<T> {
        let mut conn = self.lock()?;
        let tx = conn.transaction().context(|| "begin read transaction")?;
        f(&Tx(tx))
    }

    /// Runs `f` in a write transaction that commits only if `f` succeeds.
    pub fn write<T>(&self, f: impl FnOnce(&Tx) -> Result<T>) -> Result<T> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .context(|| "begin write transaction")?;
        let tx = Tx(tx);
        let out = f(&tx)?;
        tx.0.commit().context(|| "commit transaction")?;
        Ok(out)
    }
}

fn to_ns(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn from_ns(ns: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(ns).unwrap_or(0))
}

struct Row {
    id: i64,
    kind: Kind,
    parent_id: Option<i64>,
}

impl Tx<'_> {
    fn row(&self, key: &str) -> Result<Option<Row>> {
        let row = self
            .0
            .query_row(
                "SELECT id, kind, parent_id FROM snapshots WHERE key = ?1",
                [key],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get(2)?)),
            )
            .optional()
            .context(|| format!("look up snapshot {key:?}"))?;
        row.map(|(id, kind, parent_id)| {
            let kind = Kind::from_i64(kind).ok_or_else(|| {
                Error::internal(format!("snapshot {key:?}"), format!("bad kind {kind}"))
            })?;
            Ok(Row {
                id,
                kind,
                parent_id,
            })
        })
        .transpose()
    }

    fn existing(&self, key: &str) -> Result<Row> {
        self.row(key)?
            .ok_or_else(|| Error::NotFound(format!("snapshot {key:?}")))
    }

    fn parent_ids(&self, parent: Option<i64>) -> Result<Vec<i64>> {
        let Some(first) = parent else {
            return Ok(Vec::new());
        };
        let mut stmt = self
            .0
            .prepare_cached(
                "WITH RECURSIVE chain(id, parent_id, depth) AS (
                     SELECT id, parent_id, 0 FROM snapshots WHERE id = ?1
                     UNION ALL
                     SELECT s.id, s.parent_id, c.depth + 1
                     FROM snapshots s JOIN chain c ON s.id = c.parent_id)
                 SELECT id FROM chain ORDER BY depth",
            )
            .context(|| "prepare parent chain query")?;
        stmt.query_map([first], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .context(|| "read parent chain")
    }

    fn set_labels(&self, id: i64, labels: &Labels) -> Result<()> {
        self.0
            .execute("DELETE FROM labels WHERE snapshot_id = ?1", [id])
            .context(|| "clear labels")?;
        let mut stmt = self
            .0
            .prepare_cached("INSERT INTO labels (snapshot_id, key, value) VALUES (?1, ?2, ?3)")
            .context(|| "prepare label insert")?;
        for (k, v) in labels {
            stmt.execute(params![id, k, v])
                .context(|| format!("store label {k:?}"))?;
        }
        Ok(())
    }

    fn labels(&self, id: i64) -> Result<Labels> {
        let mut stmt = self
            .0
            .prepare_cached("SELECT key, value FROM labels WHERE snapshot_id = ?1")
            .context(|| "prepare label query")?;
        stmt.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .context(|| "read labels")
    }

    /// Creates an Active or View snapshot on an optional committed parent.
    pub fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: &Labels,
        now: SystemTime,
    ) -> Result<Snapshot> {
        if kind == Kind::Committed {
            return Err(Error::InvalidArgument(format!(
                "snapshot {key:?}: cannot create a committed snapshot"
            )));
        }
        if self.row(key)?.is_some() {
            return Err(Error::AlreadyExists(format!("snapshot {key:?}")));
        }
        let parent_id = if parent.is_empty() {
            None
        } else {
            let p = self
                .row(parent)?
                .ok_or_else(|| Error::NotFound(format!("parent snapshot {parent:?}")))?;
            if p.kind != Kind::Committed {
                return Err(Error::InvalidArgument(format!(
                    "parent {parent:?} is not a committed snapshot"
                )));
            }
            Some(p.id)
        };
        let ns = to_ns(now);
        self.0
            .execute(
                "INSERT INTO snapshots (key, kind, parent_id, created_ns, updated_ns)
                 VALUES (?1, ?2, ?3, ?4, ?4)",
                params![key, kind as i64, parent_id, ns],
            )
            .context(|| format!("insert snapshot {key:?}"))?;
        let id = self.0.last_insert_rowid();
        self.set_labels(id, labels)?;
        Ok(Snapshot {
            id,
            kind,
            parent_ids: self.parent_ids(parent_id)?,
        })
    }

    /// The key (or name) of the snapshot with id `id`.
    pub fn key_of(&self, id: i64) -> Result<String> {
        self.0
            .query_row("SELECT key FROM snapshots WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
            .context(|| format!("look up snapshot id {id}"))?
            .ok_or_else(|| Error::NotFound(format!("snapshot id {id}")))
    }

    /// The location and parents of the snapshot `key`, whatever its kind.
    pub fn snapshot(&self, key: &str) -> Result<Snapshot> {
        let row = self.existing(key)?;
        Ok(Snapshot {
            id: row.id,
            kind: row.kind,
            parent_ids: self.parent_ids(row.parent_id)?,
        })
    }

    /// containerd's `GetInfo`.
    pub fn info(&self, key: &str) -> Result<(i64, Info)> {
        let row = self
            .0
            .query_row(
                "SELECT s.id, s.kind, COALESCE(p.key, ''), s.created_ns, s.updated_ns
                 FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent_id
                 WHERE s.key = ?1",
                [key],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                    ))
                },
            )
            .optional()
            .context(|| format!("look up snapshot {key:?}"))?
            .ok_or_else(|| Error::NotFound(format!("snapshot {key:?}")))?;
        let (id, kind, parent, created, updated) = row;
        let kind = Kind::from_i64(kind).ok_or_else(|| {
            Error::internal(format!("snapshot {key:?}"), format!("bad kind {kind}"))
        })?;
        Ok((
            id,
            Info {
                name: key.to_string(),
                parent,
                kind,
                created: from_ns(created),
                updated: from_ns(updated),
                labels: self.labels(id)?,
            },
        ))
    }

    /// Turns the Active snapshot `key` into the Committed snapshot `name`,
    /// keeping its id. Labels are replaced, not inherited (as containerd).
    pub fn commit(
        &self,
        key: &str,
        name: &str,
        usage: Usage,
        labels: &Labels,
        now: SystemTime,
    ) -> Result<i64> {
        if self.row(name)?.is_some() {
            return Err(Error::AlreadyExists(format!("committed snapshot {name:?}")));
        }
        let row = self.existing(key)?;
        if row.kind != Kind::Active {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key:?} is not active"
            )));
        }
        let ns = to_ns(now);
        self.0
            .execute(
                "UPDATE snapshots SET key = ?2, kind = ?3, created_ns = ?4, updated_ns = ?4,
                     usage_size = ?5, usage_inodes = ?6
                 WHERE id = ?1",
                params![
                    row.id,
                    name,
                    Kind::Committed as i64,
                    ns,
                    usage.size,
                    usage.inodes
                ],
            )
            .context(|| format!("commit snapshot {key:?} as {name:?}"))?;
        self.set_labels(row.id, labels)?;
        Ok(row.id)
    }

    /// Deletes the snapshot `key` unless it has children.
    pub fn remove(&self, key: &str) -> Result<Snapshot> {
        let row = self.existing(key)?;
        let children: i64 = self
            .0
            .query_row(
                "SELECT COUNT(*) FROM snapshots WHERE parent_id = ?1",
                [row.id],
                |r| r.get(0),
            )
            .context(|| "count children")?;
        if children > 0 {
            return Err(Error::FailedPrecondition(format!(
                "cannot remove snapshot {key:?}: it has {children} child snapshot(s)"
            )));
        }
        let parent_ids = self.parent_ids(row.parent_id)?;
        self.0
            .execute("DELETE FROM snapshots WHERE id = ?1", [row.id])
            .context(|| format!("delete snapshot {key:?}"))?;
        Ok(Snapshot {
            id: row.id,
            kind: row.kind,
            parent_ids,
        })
    }

    /// containerd's `UpdateInfo`: only labels are mutable. Field paths are
    /// `labels` (replace all) and `labels.KEY` (set one; an empty value
    /// deletes it); no paths means replace all labels.
    pub fn update(&self, info: &Info, fieldpaths: &[String], now: SystemTime) -> Result<Info> {
        let (id, current) = self.info(&info.name)?;
        let mut labels = current.labels;
        if fieldpaths.is_empty() {
            labels = info.labels.clone();
        }
        for path in fieldpaths {
            if let Some(key) = path.strip_prefix("labels.") {
                match info.labels.get(key) {
                    Some(v) if !v.is_empty() => {
                        labels.insert(key.to_string(), v.clone());
                    }
                    _ => {
                        labels.remove(key);
                    }
                }
            } else if path == "labels" {
                labels = info.labels.clone();
            } else {
                return Err(Error::InvalidArgument(format!(
                    "cannot update {path:?} field on snapshot {:?}",
                    info.name
                )));
            }
        }
        self.set_labels(id, &labels)?;
        self.0
            .execute(
                "UPDATE snapshots SET updated_ns = ?2 WHERE id = ?1",
                params![id, to_ns(now)],
            )
            .context(|| "update timestamp")?;
        Ok(self.info(&info.name)?.1)
    }

    /// Every snapshot, in id order.
    pub fn walk(&self) -> Result<Vec<Info>> {
        let mut all_labels: BTreeMap<i64, Labels> = BTreeMap::new();
        {
            let mut stmt = self
                .0
                .prepare_cached("SELECT snapshot_id, key, value FROM labels")
                .context(|| "prepare labels scan")?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get(1)?, r.get(2)?)))
                .context(|| "scan labels")?;
            for row in rows {
                let (id, k, v) = row.context(|| "scan labels")?;
                all_labels.entry(id).or_default().insert(k, v);
            }
        }
        let mut stmt = self
            .0
            .prepare_cached(
                "SELECT s.id, s.key, s.kind, COALESCE(p.key, ''), s.created_ns, s.updated_ns
                 FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent_id ORDER BY s.id",
            )
            .context(|| "prepare snapshot scan")?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })
            .context(|| "scan snapshots")?;
        let mut out = Vec::new();
        for row in rows {
            let (id, name, kind, parent, created, updated) = row.context(|| "scan snapshots")?;
            let kind = Kind::from_i64(kind).ok_or_else(|| {
                Error::internal(format!("snapshot {name:?}"), format!("bad kind {kind}"))
            })?;
            out.push(Info {
                name,
                parent,
                kind,
                created: from_ns(created),
                updated: from_ns(updated),
                labels: all_labels.remove(&id).unwrap_or_default(),
            });
        }
        Ok(out)
    }

    /// The stored usage (meaningful for committed snapshots).
    pub fn stored_usage(&self, id: i64) -> Result<Usage> {
        self.0
            .query_row(
                "SELECT usage_size, usage_inodes FROM snapshots WHERE id = ?1",
                [id],
                |r| {
                    Ok(Usage {
                        size: r.get(0)?,
                        inodes: r.get(1)?,
                    })
                },
            )
            .context(|| "read usage")
    }

    /// The labels of those of `ids` that carry the label `key`.
    pub fn labelled(&self, ids: &[i64], key: &str) -> Result<Vec<(i64, Labels)>> {
        self.flagged(ids, key)?
            .into_iter()
            .map(|id| Ok((id, self.labels(id)?)))
            .collect()
    }

    /// Those of `ids` that carry the label `key` (their labels unread).
    pub fn flagged(&self, ids: &[i64], key: &str) -> Result<Vec<i64>> {
        let mut stmt = self
            .0
            .prepare_cached("SELECT 1 FROM labels WHERE snapshot_id = ?1 AND key = ?2")
            .context(|| "prepare label lookup")?;
        let mut out = Vec::new();
        for &id in ids {
            if stmt.exists(params![id, key]).context(|| "look up label")? {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Ids of every snapshot (the directories that must be kept).
    pub fn ids(&self) -> Result<HashSet<i64>> {
        let mut stmt = self
            .0
            .prepare_cached("SELECT id FROM snapshots")
            .context(|| "prepare id scan")?;
        stmt.query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .context(|| "scan ids")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
