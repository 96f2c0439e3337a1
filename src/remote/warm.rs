//! Opening the following layers of an image ahead of their Prepare (as the
//! Go reference pre-resolves them): containerd prepares layers one after
//! another, so without this each layer's probe, footer, TOC and prefetch
//! round trips wait for the previous layer's. A warm layer is connected,
//! its TOC read and the fetch of its prioritized prefix started (raw: the
//! chunks are decoded and verified only by the mount, once the TOC digest
//! from the layer's own labels has been checked).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rstargz_fs::estargz::{OpenOptions, Verify};
use rstargz_fs::layer::Purpose;
use rstargz_fs::registry::LayerSource;

use super::policy::{PrefetchPolicy, VerificationPolicy};
use super::resolver::{Connect, LayerResolver, Resolved};

/// How long an unclaimed warm layer is kept (its prefix is in memory).
const KEEP: Duration = Duration::from_secs(120);

/// A layer opened ahead of its mount.
pub struct Warm {
    /// The layer (TOC digest not yet checked against the labels).
    pub resolved: Resolved,
    /// Chunk verification the reader was opened with.
    pub verify: Verify,
}

type Slot = Arc<tokio::sync::Mutex<Option<Warm>>>;

/// Warm layers by layer digest.
#[derive(Clone, Default)]
pub struct WarmLayers {
    slots: Arc<Mutex<HashMap<String, Slot>>>,
}

impl WarmLayers {
    /// Starts warming `digest` with `warm` unless it is already warming.
    pub fn start<F>(&self, digest: &str, warm: F)
    where
        F: std::future::Future<Output = Option<Warm>> + Send + 'static,
    {
        let slot: Slot = Arc::default();
        // Held until the layer is warm, so a mount that claims the slot meanwhile waits.
        let Ok(guard) = slot.clone().try_lock_owned() else {
            return;
        };
        {
            let Ok(mut slots) = self.slots.lock() else {
                return;
            };
            if slots.contains_key(digest) {
                return;
            }
            slots.insert(digest.to_string(), slot.clone());
        }
        let (slots, digest) = (self.slots.clone(), digest.to_string());
        tokio::spawn(async move {
            let mut guard = guard;
            *guard = warm.await;
            drop(guard);
            tokio::time::sleep(KEEP).await;
            if let Ok(mut s) = slots.lock()
                && s.get(&digest).is_some_and(|x| Arc::ptr_eq(x, &slot))
            {
                s.remove(&digest);
            }
        });
    }

    /// Takes the warm layer `digest`, waiting for its warming to finish.
    pub async fn take(&self, digest: &str) -> Option<Warm> {
        let slot = self.slots.lock().ok()?.remove(digest)?;
        slot.lock().await.take()
    }

    /// Takes the warm layer `digest` if it was opened as `opts` asks (same
    /// verification, and the TOC digest the labels name, if any).
    pub async fn take_matching(&self, digest: &str, opts: &OpenOptions) -> Option<Resolved> {
        let w = self.take(digest).await?;
        let matches = w.verify == opts.verify
            && opts
                .expected_toc_digest
                .is_none_or(|d| d == w.resolved.layer.toc_digest());
        matches.then_some(w.resolved)
    }

    /// Starts opening the image's following layers (connect, TOC, raw
    /// prioritized prefix) in the background. `source` is the layer being
    /// mounted: its prefetch label sizes its neighbours' prefixes too.
    pub fn warm_neighbours(
        &self,
        resolver: &LayerResolver,
        source: &LayerSource,
        verification: VerificationPolicy,
        prefetch: PrefetchPolicy,
    ) {
        let verify = verification.verify();
        for n in &source.neighbours {
            let mut next = source.clone();
            next.layer = n.clone();
            next.toc_digest = None;
            next.neighbours = Vec::new();
            let resolver = resolver.clone();
            let label_size = source.prefetch_size;
            self.start(n.digest.as_str(), async move {
                let opts = OpenOptions {
                    verify,
                    ..OpenOptions::default()
                };
                let resolved = resolver
                    .resolve(&next, &opts, Connect::Now)
                    .await
                    .map_err(|e| match e {
                        super::resolver::ResolveError::Connect(e) => {
                            tracing::debug!(error = %e, "warming a layer: connect failed")
                        }
                        super::resolver::ResolveError::Open(e) => {
                            tracing::debug!(error = %e, "warming a layer: not eStargz")
                        }
                        // Never asked of it (Connect::Now).
                        super::resolver::ResolveError::NotSaved => {}
                    })
                    .ok()?;
                let end = prefetch.end(&resolved.layer, label_size);
                // Raw: the mount decodes and verifies it once the TOC
                // digest from the layer's own labels has been checked.
                resolved
                    .buffered
                    .fill_in_background(0..end, Purpose::Prefetch);
                Some(Warm { resolved, verify })
            });
        }
    }
}
