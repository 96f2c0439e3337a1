//! The daemon's client of the fd holder ([`FdStore`]) and the protocol
//! both sides speak.
//!
//! Protocol: one JSON message per `SOCK_SEQPACKET` datagram, each request
//! answered by one reply; a connection fd travels as `SCM_RIGHTS` with `put`
//! and with the reply to `take`. An entry belongs to the connection that put
//! or took it until that connection closes (the daemon exits or dies), so a
//! second daemon cannot take the mounts of one still running. Secrets (the
//! CRI keychain's registry credentials) are kept beside the entries, in the
//! holder's memory only, for the next daemon.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
    connect, recvmsg, sendmsg, socket,
};
use serde::{Deserialize, Serialize};

/// Largest message (an entry's state is small: init parameters and the
/// open-file table of the layer).
pub(crate) const MAX_MESSAGE: usize = 192 * 1024;
/// How long a reply may take (the holder answers at once).
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// A request to the holder.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Request {
    /// Keep the attached fd (if any) under `key` with `state` (replaces an entry).
    Put { key: String, state: String },
    /// Replace the state of an entry this connection owns.
    Update { key: String, state: String },
    /// Own an entry nobody else owns; the reply carries its fd and state.
    Take { key: String },
    /// Entries nobody owns.
    List,
    /// Close an entry's fd and forget it.
    Drop { key: String },
    /// Keep `value` (a registry credential) under `key`, in memory only.
    PutSecret { key: String, value: HeldSecret },
    /// Forget the secret under `key`.
    DropSecret { key: String },
    /// Every secret held.
    Secrets,
}

/// A secret the holder keeps in memory for the next daemon; formatting it
/// prints `<redacted>`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HeldSecret(String);

impl HeldSecret {
    /// Wraps a secret.
    pub fn new(value: String) -> Self {
        HeldSecret(value)
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for HeldSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The holder's reply.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Reply {
    /// Why the request failed (`missing`, `busy`, …); `None` on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// State of a taken entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Listed entries: (key, state).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<(String, String)>,
    /// Held secrets: (key, value).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<(String, HeldSecret)>,
}

/// Errors talking to the holder.
#[derive(Debug, thiserror::Error)]
pub enum FdStoreError {
    /// The socket failed.
    #[error("fd holder socket: {0}")]
    Io(#[from] std::io::Error),
    /// The holder could not be started.
    #[error("starting the fd holder: {0}")]
    Spawn(String),
    /// The holder refused the request.
    #[error("fd holder refused: {0}")]
    Refused(String),
    /// The entry is owned by another running daemon.
    #[error("owned by another running daemon")]
    Busy,
    /// A message could not be read.
    #[error("fd holder protocol: {0}")]
    Protocol(String),
}

impl From<nix::errno::Errno> for FdStoreError {
    fn from(e: nix::errno::Errno) -> Self {
        FdStoreError::Io(e.into())
    }
}

/// Sends `msg` as one datagram with `fd` attached.
pub(crate) fn send(
    sock: BorrowedFd<'_>,
    msg: &impl Serialize,
    fd: Option<BorrowedFd<'_>>,
) -> Result<(), FdStoreError> {
    let body = serde_json::to_vec(msg).map_err(|e| FdStoreError::Protocol(e.to_string()))?;
    if body.len() > MAX_MESSAGE {
        return Err(FdStoreError::Protocol(format!(
            "message of {} bytes exceeds {MAX_MESSAGE}",
            body.len()
        )));
    }
    let fds: Vec<RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
    let cmsgs: Vec<ControlMessage<'_>> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&fds)]
    };
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(&body)],
        &cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

/// Receives one datagram: `None` when the peer closed the connection.
pub(crate) fn recv<T: for<'de> Deserialize<'de>>(
    sock: BorrowedFd<'_>,
) -> Result<Option<(T, Option<OwnedFd>)>, FdStoreError> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(|e| FdStoreError::Io(e.into()))? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel installed these descriptors in this process
            // for this message; nothing else owns them.
            fds.extend(raw.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
        }
    }
    let (len, truncated) = (msg.bytes, msg.flags.contains(MsgFlags::MSG_TRUNC));
    if len == 0 {
        return Ok(None);
    }
    if truncated {
        return Err(FdStoreError::Protocol("message too long".into()));
    }
    // Not serde's message: it can quote the message, and messages carry
    // secrets.
    let body = serde_json::from_slice(&buf[..len]).map_err(|e| {
        FdStoreError::Protocol(format!(
            "undecodable message ({:?} error at column {})",
            e.classify(),
            e.column()
        ))
    })?;
    Ok(Some((body, fds.into_iter().next())))
}

/// A `SOCK_SEQPACKET` unix socket.
pub(crate) fn seqpacket() -> Result<OwnedFd, FdStoreError> {
    Ok(socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

/// The daemon's connection to the holder.
#[derive(Debug)]
pub struct FdStore {
    conn: Mutex<OwnedFd>,
    socket: PathBuf,
}

impl FdStore {
    /// Connects to the holder at `socket`, starting `exe fd-holder` first
    /// when none answers (keeping connections for `orphan_timeout` with no
    /// daemon connected, and given `holder_args` too, e.g. its log format).
    pub fn connect_or_spawn(
        socket: &Path,
        exe: &Path,
        orphan_timeout: Duration,
        holder_args: &[&str],
    ) -> Result<FdStore, FdStoreError> {
        if let Ok(store) = Self::connect(socket) {
            return Ok(store);
        }
        let mut child = std::process::Command::new(exe)
            .arg("fd-holder")
            .arg("--socket")
            .arg(socket)
            .arg("--orphan-timeout-sec")
            .arg(orphan_timeout.as_secs().to_string())
            .args(holder_args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            // Its own process group: a Ctrl-C meant for the daemon must not
            // take the mounts down with it.
            .process_group(0)
            .spawn()
            .map_err(|e| FdStoreError::Spawn(format!("{}: {e}", exe.display())))?;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            match Self::connect(socket) {
                Ok(store) => {
                    // Reaped when it exits (normally after this daemon).
                    std::thread::spawn(move || child.wait());
                    return Ok(store);
                }
                Err(e) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(FdStoreError::Spawn(format!("exited with {status}")));
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(e);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    /// Connects to a running holder.
    pub fn connect(socket: &Path) -> Result<FdStore, FdStoreError> {
        let conn = seqpacket()?;
        connect(conn.as_raw_fd(), &UnixAddr::new(socket)?)?;
        nix::sys::socket::setsockopt(
            &conn,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(REPLY_TIMEOUT.as_secs() as _, 0),
        )?;
        let store = FdStore {
            conn: Mutex::new(conn),
            socket: socket.to_owned(),
        };
        // A holder on its way out accepts nothing any more: check it answers.
        store.list()?;
        Ok(store)
    }

    /// The holder's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn call(
        &self,
        req: &Request,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(Reply, Option<OwnedFd>), FdStoreError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        send(conn.as_fd(), req, fd)?;
        let (reply, fd) = recv::<Reply>(conn.as_fd())?
            .ok_or_else(|| FdStoreError::Protocol("holder closed the connection".into()))?;
        match reply.error.as_deref() {
            None => Ok((reply, fd)),
            Some("busy") => Err(FdStoreError::Busy),
            Some(e) => Err(FdStoreError::Refused(e.to_owned())),
        }
    }

    /// Keeps `fd` under `key` with `state`, owned by this daemon.
    pub fn put(&self, key: &str, fd: BorrowedFd<'_>, state: &str) -> Result<(), FdStoreError> {
        let req = Request::Put {
            key: key.into(),
            state: state.into(),
        };
        self.call(&req, Some(fd)).map(drop)
    }

    /// Keeps `state` alone under `key` (no connection), owned by this daemon.
    pub fn put_state(&self, key: &str, state: &str) -> Result<(), FdStoreError> {
        let req = Request::Put {
            key: key.into(),
            state: state.into(),
        };
        self.call(&req, None).map(drop)
    }

    /// Replaces the state of an entry this daemon owns.
    pub fn update(&self, key: &str, state: &str) -> Result<(), FdStoreError> {
        let req = Request::Update {
            key: key.into(),
            state: state.into(),
        };
        self.call(&req, None).map(drop)
    }

    /// Takes an entry left by a previous daemon: its fd and state, or
    /// `None` when there is no such entry.
    pub fn take(&self, key: &str) -> Result<Option<(OwnedFd, String)>, FdStoreError> {
        match self.call(&Request::Take { key: key.into() }, None) {
            Ok((reply, Some(fd))) => Ok(Some((fd, reply.state.unwrap_or_default()))),
            Ok((_, None)) => Err(FdStoreError::Protocol("take answered without fd".into())),
            Err(FdStoreError::Refused(e)) if e == "missing" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Takes an entry of state alone ([`Self::put_state`]) left by a previous
    /// daemon, or `None` when there is no such entry.
    pub fn take_state(&self, key: &str) -> Result<Option<String>, FdStoreError> {
        match self.call(&Request::Take { key: key.into() }, None) {
            Ok((reply, _)) => Ok(Some(reply.state.unwrap_or_default())),
            Err(FdStoreError::Refused(e)) if e == "missing" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Entries no running daemon owns: (key, state).
    pub fn list(&self) -> Result<Vec<(String, String)>, FdStoreError> {
        Ok(self.call(&Request::List, None)?.0.entries)
    }

    /// Closes and forgets an entry.
    pub fn forget(&self, key: &str) -> Result<(), FdStoreError> {
        self.call(&Request::Drop { key: key.into() }, None)
            .map(drop)
    }

    /// Keeps `value` under `key` in the holder's memory (replaces).
    pub fn put_secret(&self, key: &str, value: HeldSecret) -> Result<(), FdStoreError> {
        let req = Request::PutSecret {
            key: key.into(),
            value,
        };
        self.call(&req, None).map(drop)
    }

    /// Forgets the secret under `key`.
    pub fn drop_secret(&self, key: &str) -> Result<(), FdStoreError> {
        self.call(&Request::DropSecret { key: key.into() }, None)
            .map(drop)
    }

    /// Every secret the holder keeps: (key, value).
    pub fn secrets(&self) -> Result<Vec<(String, HeldSecret)>, FdStoreError> {
        Ok(self.call(&Request::Secrets, None)?.0.secrets)
    }
}
