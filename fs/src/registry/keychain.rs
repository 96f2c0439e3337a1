//! [`Keychain`]: registry credentials handed in while the daemon runs (the
//! `auth` of CRI PullImage requests), by registry host, in memory only.
//!
//! A newer credential for a host replaces the older one; a credential the
//! registry refuses is dropped (unless it was replaced meanwhile). A
//! [`KeychainMirror`] sees every change in the order it was made, so a copy
//! kept elsewhere (the fd holder, across restarts) stays the same.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use super::secret::{Credential, normalise_host};

/// Receives every change of a [`Keychain`], in order.
pub trait KeychainMirror: Send + Sync {
    /// `host` now has `credential`.
    fn put(&self, host: &str, credential: &Credential);
    /// `host` has no credential any more.
    fn remove(&self, host: &str);
}

#[derive(Default)]
struct Inner {
    by_host: HashMap<String, Credential>,
    mirror: Option<Arc<dyn KeychainMirror>>,
}

/// Credentials by registry host; cheap to clone (one shared set).
#[derive(Clone, Default)]
pub struct Keychain {
    inner: Arc<Mutex<Inner>>,
}

// Manual Debug: the hosts only, never a credential.
impl fmt::Debug for Keychain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keychain")
            .field("hosts", &self.lock().by_host.len())
            .finish_non_exhaustive()
    }
}

impl Keychain {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The credential for `host` (`host[:port]`, docker.io's aliases are one).
    pub fn get(&self, host: &str) -> Option<Credential> {
        self.lock().by_host.get(&normalise_host(host)).cloned()
    }

    /// Sets `host`'s credential, replacing an older one.
    pub fn insert(&self, host: &str, credential: Credential) {
        let host = normalise_host(host);
        let mut inner = self.lock();
        if inner.by_host.get(&host) == Some(&credential) {
            return;
        }
        // The mirror is told under the lock: two changes reach it in the
        // order they were made.
        if let Some(m) = &inner.mirror {
            m.put(&host, &credential);
        }
        inner.by_host.insert(host, credential);
    }

    /// Drops `host`'s credential if `refused` says the registry refused it;
    /// a credential that replaced the refused one meanwhile stays. Returns
    /// whether one was dropped.
    pub fn drop_refused(&self, host: &str, refused: impl Fn(&Credential) -> bool) -> bool {
        let host = normalise_host(host);
        let mut inner = self.lock();
        if !inner.by_host.get(&host).is_some_and(refused) {
            return false;
        }
        inner.by_host.remove(&host);
        if let Some(m) = &inner.mirror {
            m.remove(&host);
        }
        tracing::info!(host = %host, "registry refused the CRI keychain's credential; dropped");
        true
    }

    /// Hosts that have a credential.
    pub fn hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self.lock().by_host.keys().cloned().collect();
        hosts.sort();
        hosts
    }

    /// Takes `entries` (kept over a restart) without telling the mirror,
    /// then sends every later change to `mirror`.
    pub fn restore_and_mirror(
        &self,
        entries: Vec<(String, Credential)>,
        mirror: Option<Arc<dyn KeychainMirror>>,
    ) {
        let mut inner = self.lock();
        for (host, credential) in entries {
            inner.by_host.insert(normalise_host(&host), credential);
        }
        inner.mirror = mirror;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::registry::Secret;

    fn basic(user: &str, password: &str) -> Credential {
        Credential::Basic {
            username: user.into(),
            password: Secret::new(password),
        }
    }

    #[derive(Default)]
    struct Log(Mutex<Vec<String>>);

    impl KeychainMirror for Log {
        fn put(&self, host: &str, c: &Credential) {
            let user = match c {
                Credential::Basic { username, .. } => username.clone(),
                Credential::IdentityToken(_) => "<token>".into(),
            };
            self.0.lock().unwrap().push(format!("put {host} {user}"));
        }
        fn remove(&self, host: &str) {
            self.0.lock().unwrap().push(format!("remove {host}"));
        }
    }

    #[test]
    fn newer_replaces_and_a_refused_one_is_dropped() {
        let k = Keychain::default();
        let log = Arc::new(Log::default());
        k.restore_and_mirror(
            vec![("docker.io".into(), basic("kept", "p0"))],
            Some(log.clone()),
        );
        // docker.io's aliases are one host.
        assert_eq!(k.get("registry-1.docker.io"), Some(basic("kept", "p0")));
        k.insert("reg.example:5000", basic("u", "old"));
        k.insert("reg.example:5000", basic("u", "new"));
        assert_eq!(k.get("reg.example:5000"), Some(basic("u", "new")));
        // A refusal of the old credential (a request sent before the
        // replacement) does not drop the new one.
        assert!(!k.drop_refused("reg.example:5000", |c| c == &basic("u", "old")));
        assert_eq!(k.get("reg.example:5000"), Some(basic("u", "new")));
        assert!(k.drop_refused("reg.example:5000", |c| c == &basic("u", "new")));
        assert_eq!(k.get("reg.example:5000"), None);
        assert!(!k.drop_refused("reg.example:5000", |_| true));
        // The same credential again changes nothing.
        k.insert("index.docker.io", basic("kept", "p0"));
        assert_eq!(
            *log.0.lock().unwrap(),
            [
                "put reg.example:5000 u",
                "put reg.example:5000 u",
                "remove reg.example:5000"
            ]
        );
        assert_eq!(k.hosts(), ["index.docker.io"]);
        assert!(!format!("{k:?}").contains("p0"));
    }
}
