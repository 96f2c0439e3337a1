//! The CRI keychain's credentials kept in the fd holder's memory, so the
//! next daemon (after a live restart or a crash) reads the private layers
//! it takes over, and restores, with them. Never on disk, never logged.

use std::sync::Arc;

use rstargz_fs::registry::{Credential, KeychainMirror, Secret};
use serde::{Deserialize, Serialize};

use super::fd_holder::FdStore;
use super::fd_holder::client::HeldSecret;

/// How a credential travels to the holder (inside a [`HeldSecret`]).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Wire {
    Basic { username: String, password: String },
    IdentityToken(String),
}

fn encode(credential: &Credential) -> Option<HeldSecret> {
    let wire = match credential {
        Credential::Basic { username, password } => Wire::Basic {
            username: username.clone(),
            password: password.expose().to_owned(),
        },
        Credential::IdentityToken(token) => Wire::IdentityToken(token.expose().to_owned()),
    };
    serde_json::to_string(&wire).ok().map(HeldSecret::new)
}

fn decode(held: &HeldSecret) -> Option<Credential> {
    Some(match serde_json::from_str(held.expose()).ok()? {
        Wire::Basic { username, password } => Credential::Basic {
            username,
            password: Secret::new(password),
        },
        Wire::IdentityToken(token) => Credential::IdentityToken(Secret::new(token)),
    })
}

/// The holder's copy of the keychain.
#[derive(Debug, Clone)]
pub struct HeldCredentials {
    store: Arc<FdStore>,
}

impl HeldCredentials {
    /// The copy kept by the holder behind `store`.
    pub fn new(store: Arc<FdStore>) -> Self {
        HeldCredentials { store }
    }

    /// The credentials a previous daemon left, by registry host.
    pub fn load(&self) -> Vec<(String, Credential)> {
        match self.store.secrets() {
            Ok(held) => held
                .iter()
                .filter_map(|(host, secret)| Some((host.clone(), decode(secret)?)))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "fd holder unreadable; no CRI credentials taken over");
                Vec::new()
            }
        }
    }

    /// Forgets every credential (a full stop, or the keychain switched off).
    pub fn clear(&self) {
        for (host, _) in self.store.secrets().unwrap_or_default() {
            self.remove(&host);
        }
    }
}

impl KeychainMirror for HeldCredentials {
    fn put(&self, host: &str, credential: &Credential) {
        let Some(secret) = encode(credential) else {
            return;
        };
        if let Err(e) = self.store.put_secret(host, secret) {
            tracing::warn!(host = %host, error = %e, "CRI credential not kept for live restart");
        }
    }

    fn remove(&self, host: &str) {
        if let Err(e) = self.store.drop_secret(host) {
            tracing::warn!(host = %host, error = %e, "fd holder did not forget a CRI credential");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn credentials_cross_the_wire_unchanged() {
        for c in [
            Credential::Basic {
                username: "u".into(),
                password: Secret::new("p:w\"x"),
            },
            Credential::IdentityToken(Secret::new("refresh")),
        ] {
            let held = encode(&c).unwrap();
            assert!(!format!("{held:?}").contains("refresh"));
            assert_eq!(decode(&held), Some(c));
        }
        assert_eq!(decode(&HeldSecret::new("{".into())), None);
    }
}
