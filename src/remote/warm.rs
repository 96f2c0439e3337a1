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

use rstargz_fs::estargz::Verify;
use rstargz_fs::layer::LayerReader;

use super::buffered::BufferedSource;
use super::source::RegistryBlob;

/// How long an unclaimed warm layer is kept (its prefix is in memory).
const KEEP: Duration = Duration::from_secs(120);

/// A layer opened ahead of its mount.
pub struct Warm {
    /// The connected blob.
    pub blob: Arc<RegistryBlob>,
    /// The source stack the reader reads through.
    pub buffered: Arc<BufferedSource>,
    /// The reader (TOC digest not yet checked against the labels).
    pub layer: LayerReader,
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
}
