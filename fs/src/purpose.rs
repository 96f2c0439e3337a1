//! [`Purpose`]: why bytes of a layer are read. The layer reader tags each
//! read with it and the registry turns it into a request priority, so
//! on-demand reads overtake prefetch and background fetches.

/// Why a range is read; decides the priority of the registry request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// Footer and TOC while opening a layer (this blocks Prepare, so the
    /// registry treats it as [`Purpose::OnDemand`]).
    Metadata,
    /// A reader is blocked on this data (FUSE read).
    OnDemand,
    /// Prefetch of the layer's prioritized files (landmark region).
    Prefetch,
    /// Background fetch of the rest of the layer.
    Background,
}

impl Purpose {
    /// Number of priority classes.
    pub const PRIORITIES: usize = 3;

    /// One purpose per priority class, most urgent first: `BY_PRIORITY[p.priority()]`
    /// has the priority of `p` (`Metadata` shares `OnDemand`'s class).
    pub const BY_PRIORITY: [Purpose; Self::PRIORITIES] =
        [Purpose::OnDemand, Purpose::Prefetch, Purpose::Background];

    /// Priority class, an index into per-priority arrays (0 = most urgent).
    pub fn priority(self) -> usize {
        match self {
            // Opening a layer blocks Prepare: as urgent as an application read.
            Self::Metadata | Self::OnDemand => 0,
            Self::Prefetch => 1,
            Self::Background => 2,
        }
    }

    /// Whether someone is waiting for the bytes now (an application read or
    /// the opening of a layer): the most urgent class.
    pub fn is_urgent(self) -> bool {
        self.priority() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_has_on_demand_priority() {
        assert_eq!(Purpose::Metadata.priority(), Purpose::OnDemand.priority());
        assert!(Purpose::Metadata.is_urgent() && Purpose::OnDemand.is_urgent());
        assert!(!Purpose::Prefetch.is_urgent() && !Purpose::Background.is_urgent());
        for (i, p) in Purpose::BY_PRIORITY.into_iter().enumerate() {
            assert_eq!(p.priority(), i);
        }
    }
}
