//! Live restart: what a successor process needs to go on serving a FUSE
//! connection it did not open, and the kernel messages to resume it.
//!
//! The kernel negotiates a connection once (FUSE_INIT) and never again, but
//! fuser's `Session::from_fd` insists on a handshake. So the successor runs
//! that handshake against a socket fed with the INIT the kernel sent the
//! first server (its parameters are recorded here), then points the
//! session's descriptor at the live connection. Requests the previous server
//! read but never answered sit in the connection's processing queue until
//! `FUSE_NOTIFY_RESEND` (Linux 6.9) queues them again.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::freeze_gate::FreezeGate;
use super::passthrough::{OpenTable, PassthroughOpens};

/// What the kernel offered in FUSE_INIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitParams {
    /// Protocol major version.
    pub major: u32,
    /// Protocol minor version.
    pub minor: u32,
    /// Largest read-ahead the kernel allows.
    pub max_readahead: u32,
    /// Capability bits (`flags | flags2 << 32`).
    pub capabilities: u64,
}

/// The state of a mount that crosses to the next server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoverState {
    /// The connection's FUSE_INIT.
    pub init: InitParams,
    /// Whether opens may use kernel passthrough.
    pub passthrough: bool,
    /// The open-file table, present only when the previous server handed the
    /// mount over; `None` after a crash (its table died with it).
    pub opens: Option<OpenTable>,
    /// The first layer slot the previous server never handed out (slots are
    /// never reused within a connection).
    #[serde(default)]
    pub next_slot: u32,
}

impl HandoverState {
    /// The FUSE_INIT request replayed to the successor's session. After a
    /// crash passthrough is left out: the kernel's per-inode modes are
    /// unknown, so only page-cache opens stay consistent.
    pub(crate) fn init_request(&self) -> Vec<u8> {
        use fuser::InitFlags;
        const FUSE_INIT: u32 = 26;
        let mut caps = self.init.capabilities | InitFlags::FUSE_INIT_EXT.bits();
        if !self.passthrough || self.opens.is_none() {
            caps &= !InitFlags::FUSE_PASSTHROUGH.bits();
        }
        let mut msg = Vec::with_capacity(104);
        // fuse_in_header: len, opcode, unique, nodeid, uid, gid, pid, extlen, padding
        msg.extend_from_slice(&104u32.to_ne_bytes());
        msg.extend_from_slice(&FUSE_INIT.to_ne_bytes());
        msg.extend_from_slice(&1u64.to_ne_bytes());
        msg.extend_from_slice(&0u64.to_ne_bytes());
        msg.extend_from_slice(&[0; 16]);
        // fuse_init_in: major, minor, max_readahead, flags, flags2, unused[11]
        msg.extend_from_slice(&self.init.major.to_ne_bytes());
        msg.extend_from_slice(&self.init.minor.to_ne_bytes());
        msg.extend_from_slice(&self.init.max_readahead.to_ne_bytes());
        msg.extend_from_slice(&(caps as u32).to_ne_bytes());
        msg.extend_from_slice(&((caps >> 32) as u32).to_ne_bytes());
        msg.extend_from_slice(&[0; 44]);
        msg
    }
}

/// The parts of a mount's filesystem that a handover reads or seeds.
#[derive(Debug)]
pub(crate) struct Live {
    /// Freezes the open-file table and pending replies.
    pub(crate) gate: Arc<FreezeGate>,
    /// Open modes per inode.
    pub(crate) opens: PassthroughOpens,
    /// Set when the connection has FUSE_PASSTHROUGH.
    pub(crate) passthrough_on: AtomicBool,
    /// The kernel's FUSE_INIT, recorded at the handshake.
    pub(crate) init: Mutex<Option<InitParams>>,
    /// The connection, to close backing ids of the previous server.
    pub(crate) conn: Option<OwnedFd>,
}

impl Live {
    /// A fresh mount.
    pub(crate) fn new() -> Self {
        Live {
            gate: Arc::default(),
            opens: PassthroughOpens::default(),
            passthrough_on: AtomicBool::new(false),
            init: Mutex::new(None),
            conn: None,
        }
    }

    /// A mount taken over with `state`.
    pub(crate) fn resumed(state: &HandoverState, conn: OwnedFd) -> Self {
        let opens = state
            .opens
            .clone()
            .map_or_else(PassthroughOpens::default, PassthroughOpens::import);
        Live {
            opens,
            conn: Some(conn),
            ..Live::new()
        }
    }

    /// Closes a backing id left by the previous server.
    pub(crate) fn close_backing(&self, id: u32) {
        let Some(conn) = &self.conn else { return };
        // SAFETY: FUSE_DEV_IOC_BACKING_CLOSE reads one u32 from the pointer,
        // which stays valid for the call; `conn` is an open /dev/fuse fd.
        if let Err(e) = unsafe { backing_close(conn.as_raw_fd(), &id) } {
            tracing::warn!(id, error = %e, "cannot close inherited backing id");
        }
    }

    /// What a successor needs if this server dies without handing over:
    /// no open-file table. `None` before the handshake.
    pub(crate) fn crash_state(&self) -> Option<HandoverState> {
        let init = (*self.init.lock().unwrap_or_else(|p| p.into_inner()))?;
        Some(HandoverState {
            init,
            passthrough: self
                .passthrough_on
                .load(std::sync::atomic::Ordering::Relaxed),
            opens: None,
            next_slot: 0,
        })
    }

    /// Freezes, waits for the handlers inside and empties the table into
    /// the state for the successor. `None` before the handshake.
    pub(crate) fn export(&self, grace: std::time::Duration) -> Option<HandoverState> {
        if !self.gate.freeze_and_wait(grace) {
            tracing::warn!("handlers still busy at handover; their opens may be lost");
        }
        let mut state = self.crash_state()?;
        state.opens = Some(self.opens.export());
        Some(state)
    }
}

nix::ioctl_write_ptr!(backing_close, 229, 2, u32);

/// Asks the kernel to queue again every request read from `conn` but never
/// answered (the previous server's). Fails with EINVAL before Linux 6.9.
pub(crate) fn notify_resend(conn: BorrowedFd<'_>) -> std::io::Result<()> {
    const FUSE_NOTIFY_RESEND: i32 = 7;
    // fuse_out_header: len, error (the notification code), unique 0
    let mut msg = Vec::with_capacity(16);
    msg.extend_from_slice(&16u32.to_ne_bytes());
    msg.extend_from_slice(&FUSE_NOTIFY_RESEND.to_ne_bytes());
    msg.extend_from_slice(&0u64.to_ne_bytes());
    nix::unistd::write(conn, &msg)?;
    Ok(())
}

/// Checks a reply written by fuser to the replayed INIT: a header without
/// error.
pub(crate) fn check_init_reply(reply: &[u8]) -> std::io::Result<()> {
    let error = reply
        .get(4..8)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(i32::from_ne_bytes)
        .ok_or_else(|| std::io::Error::other("short FUSE_INIT reply"))?;
    if error != 0 {
        return Err(std::io::Error::from_raw_os_error(-error));
    }
    Ok(())
}

/// Points `target` (a descriptor owned by fuser's session) at `conn`'s open
/// file, closing what it referred to, in one atomic step.
pub(crate) fn redirect(conn: &OwnedFd, target: BorrowedFd<'_>) -> std::io::Result<()> {
    // SAFETY: dup3 only changes which open file the number `target` refers
    // to; the number stays open and owned by the session throughout, so no
    // other owner can observe it closed or reused.
    let rc = unsafe { libc::dup3(conn.as_raw_fd(), target.as_raw_fd(), libc::O_CLOEXEC) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A duplicate of `fd` (the same open file).
pub(crate) fn dup(fd: impl AsFd) -> std::io::Result<OwnedFd> {
    fd.as_fd().try_clone_to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replayed_init_drops_passthrough_after_a_crash() {
        let mut state = HandoverState {
            init: InitParams {
                major: 7,
                minor: 41,
                max_readahead: 1 << 20,
                capabilities: (1 << 37) | 1,
            },
            passthrough: true,
            opens: Some(OpenTable::default()),
            next_slot: 1,
        };
        let flags2 = |m: &[u8]| u32::from_ne_bytes(m[56..60].try_into().expect("4 bytes"));
        let msg = state.init_request();
        assert_eq!(msg.len(), 104);
        assert_eq!(flags2(&msg), 1 << 5);
        state.opens = None;
        assert_eq!(flags2(&state.init_request()), 0);
    }

    #[test]
    fn init_reply_errors_are_reported() {
        let mut reply = vec![0u8; 16];
        assert!(check_init_reply(&reply).is_ok());
        reply[4..8].copy_from_slice(&(-libc::EIO).to_ne_bytes());
        assert_eq!(
            check_init_reply(&reply).map_err(|e| e.raw_os_error()),
            Err(Some(libc::EIO))
        );
    }
}
