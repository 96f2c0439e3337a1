//! How a layer's index appears to overlayfs: the one place that translates
//! OCI whiteout conventions into overlay ones.
//!
//! Contract:
//! - `.wh.<name>` is shown as `<name>`, a 0:0 character device with mode 0
//!   (overlay's whiteout), unless a real `<name>` exists in the same
//!   directory; then the whiteout is hidden.
//! - `.wh..wh..opq` is hidden; its directory reports the opaque xattr with
//!   value `y` under exactly one name (trusted or user namespace).
//! - `.prefetch.landmark` and `.no.prefetch.landmark` are hidden at the root.
//!
//! The whiteout set is computed once at mount (one pass over all
//! directories); lookups and readdir then cost a binary search or a scan of
//! the directory's own entries, with no per-call allocation of the listing.

use crate::estargz::index::{
    NO_PREFETCH_LANDMARK, OPAQUE_MARKER, PREFETCH_LANDMARK, WHITEOUT_PREFIX,
};
use crate::estargz::{Index, Ino, NodeKind, ROOT_INO};

/// Which xattr marks an opaque directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OpaqueXattr {
    /// `trusted.overlay.opaque` (overlay mounted by root, the default).
    #[default]
    Trusted,
    /// `user.overlay.opaque` (overlay mounted with `userxattr`).
    User,
}

impl OpaqueXattr {
    /// The xattr name.
    pub fn name(self) -> &'static str {
        match self {
            OpaqueXattr::Trusted => "trusted.overlay.opaque",
            OpaqueXattr::User => "user.overlay.opaque",
        }
    }
}

/// One visible directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VisibleEntry<'a> {
    /// Name as shown.
    pub name: &'a str,
    /// Inode (the index inode; whiteouts keep the inode of their `.wh.` entry).
    pub ino: Ino,
}

/// The overlay-translated view of an index.
#[derive(Debug)]
pub struct OverlayView {
    /// Bit per inode: shown as a whiteout device.
    whiteouts: Vec<u64>,
    opaque: OpaqueXattr,
}

impl OverlayView {
    /// Computes the whiteout set of `index`.
    pub fn new(index: &Index, opaque: OpaqueXattr) -> Self {
        let mut whiteouts = vec![0u64; index.len() / 64 + 1];
        let mut stack = vec![ROOT_INO];
        while let Some(dir) = stack.pop() {
            for (name, ino) in index.children(dir) {
                if index.node(ino).is_some_and(|n| n.kind() == NodeKind::Dir) {
                    stack.push(ino);
                }
                if let Some(target) = whiteout_target(name)
                    && index.lookup(dir, target).is_none()
                {
                    let i = ino as usize;
                    whiteouts[i / 64] |= 1 << (i % 64);
                }
            }
        }
        OverlayView { whiteouts, opaque }
    }

    /// The opaque xattr in use.
    pub fn opaque_xattr(&self) -> OpaqueXattr {
        self.opaque
    }

    /// Whether `ino` is shown as a whiteout device.
    pub fn is_whiteout(&self, ino: Ino) -> bool {
        let i = ino as usize;
        self.whiteouts
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Resolves a visible `name` in `dir`.
    pub fn lookup(&self, index: &Index, dir: Ino, name: &str) -> Option<Ino> {
        if is_hidden(dir, name) || whiteout_target(name).is_some() {
            return None;
        }
        if let Some(ino) = index.lookup(dir, name) {
            return Some(ino);
        }
        let ino = index.lookup(dir, &format!("{WHITEOUT_PREFIX}{name}"))?;
        self.is_whiteout(ino).then_some(ino)
    }

    /// The visible entries of `dir`, in a stable order (the index's).
    pub fn entries<'a>(
        &'a self,
        index: &'a Index,
        dir: Ino,
    ) -> impl Iterator<Item = VisibleEntry<'a>> + 'a {
        index.children(dir).filter_map(move |(name, ino)| {
            if is_hidden(dir, name) {
                return None;
            }
            match whiteout_target(name) {
                Some(target) if self.is_whiteout(ino) => Some(VisibleEntry { name: target, ino }),
                Some(_) => None,
                None => Some(VisibleEntry { name, ino }),
            }
        })
    }

    /// Extra xattrs the view adds to `ino` (the opaque marker).
    pub fn extra_xattrs(&self, index: &Index, ino: Ino) -> Option<(&'static str, &'static [u8])> {
        index
            .node(ino)
            .is_some_and(|n| n.kind() == NodeKind::Dir && n.is_opaque())
            .then_some((self.opaque.name(), b"y".as_slice()))
    }
}

/// `x` for a whiteout name `.wh.x` (not the opaque marker).
fn whiteout_target(name: &str) -> Option<&str> {
    if name == OPAQUE_MARKER {
        return None;
    }
    name.strip_prefix(WHITEOUT_PREFIX).filter(|t| !t.is_empty())
}

fn is_hidden(dir: Ino, name: &str) -> bool {
    name == OPAQUE_MARKER
        || (dir == ROOT_INO && (name == PREFETCH_LANDMARK || name == NO_PREFETCH_LANDMARK))
}
