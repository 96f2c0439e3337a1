//! `rstargz fd-holder`: the process that keeps FUSE connections open while
//! the daemon restarts (protocol in [`super::client`]).
//!
//! It does nothing but hold descriptors (and, in memory only, the CRI
//! keychain's credentials), so it has no reason to crash or to be
//! upgraded. An entry goes away when asked to, or by itself when its
//! connection ends (the layer was unmounted: the fd then polls POLLERR). The
//! holder exits once it holds nothing (no connection, no credential) and no
//! daemon is connected.
//!
//! When no daemon has been connected for the orphan timeout, the holder lets
//! go of everything it holds: closing the last descriptor of a connection
//! aborts it, so readers of a mount whose daemon never came back get ENOTCONN
//! instead of waiting for ever.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{Backlog, SockFlag, UnixAddr, accept4, bind, listen};

use super::client::{FdStoreError, HeldSecret, Reply, Request, recv, send, seqpacket};

/// How long a fresh holder waits for its first client before giving up.
const STARTUP_GRACE: Duration = Duration::from_secs(10);

struct Entry {
    /// The connection; `None` for an entry of state only (a layer of a
    /// shared FUSE session, whose connection is the session's entry).
    fd: Option<OwnedFd>,
    state: String,
    owner: Option<u64>,
}

struct Client {
    id: u64,
    sock: OwnedFd,
}

/// Serves `socket` until nothing is held and nobody is connected, keeping
/// what it holds for at most `orphan_timeout` with no daemon connected.
/// Returns at once when another holder already answers there.
pub fn run(socket: &Path, orphan_timeout: Duration) -> Result<(), FdStoreError> {
    if super::client::FdStore::connect(socket).is_ok() {
        tracing::info!(socket = %socket.display(), "a holder already serves this socket");
        return Ok(());
    }
    let _ = std::fs::remove_file(socket);
    let listener = seqpacket()?;
    // Only this user may connect: the fds let a peer serve (or read) the mounts.
    let old_mask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let bound = bind(listener.as_raw_fd(), &UnixAddr::new(socket)?);
    nix::sys::stat::umask(old_mask);
    bound?;
    listen(&listener, Backlog::new(16)?)?;
    let uid = nix::unistd::geteuid();
    tracing::info!(socket = %socket.display(), "fd holder serving");
    let mut entries: HashMap<String, Entry> = HashMap::new();
    let mut secrets: HashMap<String, HeldSecret> = HashMap::new();
    let mut clients: Vec<Client> = Vec::new();
    let (mut next_id, started) = (0u64, Instant::now());
    let mut orphaned_since: Option<Instant> = None;
    loop {
        let holding = !entries.is_empty() || !secrets.is_empty();
        if !holding && clients.is_empty() && started.elapsed() > STARTUP_GRACE {
            break;
        }
        if clients.is_empty() && holding {
            let since = *orphaned_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= orphan_timeout {
                tracing::warn!(
                    held = entries.len(),
                    credentials = secrets.len(),
                    wait_sec = orphan_timeout.as_secs(),
                    "no daemon came back; releasing the held connections (their mounts now fail with ENOTCONN) and forgetting the credentials"
                );
                entries.clear();
                secrets.clear();
                continue;
            }
        } else {
            orphaned_since = None;
        }
        let keys: Vec<String> = entries.keys().cloned().collect();
        let (listener_ev, client_ev, entry_ev) = {
            let mut fds = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
            fds.extend(
                clients
                    .iter()
                    .map(|c| PollFd::new(c.sock.as_fd(), PollFlags::POLLIN)),
            );
            // No events asked: only POLLERR, which a connection reports once
            // it is aborted (unmounted).
            let polled: Vec<(usize, &OwnedFd)> = keys
                .iter()
                .enumerate()
                .filter_map(|(i, k)| Some((i, entries.get(k)?.fd.as_ref()?)))
                .collect();
            fds.extend(
                polled
                    .iter()
                    .map(|(_, fd)| PollFd::new(fd.as_fd(), PollFlags::empty())),
            );
            match poll(&mut fds, PollTimeout::from(1000u16)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            let ev: Vec<PollFlags> = fds
                .iter()
                .map(|f| f.revents().unwrap_or(PollFlags::empty()))
                .collect();
            let (l, rest) = ev.split_at(1);
            let (c, e) = rest.split_at(clients.len());
            // Back to one event per key (none for entries without fd).
            let mut per_key = vec![PollFlags::empty(); keys.len()];
            for ((i, _), ev) in polled.iter().zip(e) {
                per_key[*i] = *ev;
            }
            (l[0], c.to_vec(), per_key)
        };
        for (key, ev) in keys.iter().zip(entry_ev) {
            if ev.intersects(PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL) {
                tracing::info!(key = %key, "connection ended (unmounted); entry dropped");
                entries.remove(key);
            }
        }
        let mut gone = Vec::new();
        for (i, ev) in client_ev.into_iter().enumerate() {
            if ev.is_empty() {
                continue;
            }
            let client = &clients[i];
            match recv::<Request>(client.sock.as_fd()) {
                Ok(Some((req, fd))) => {
                    let (reply, out) = handle(&mut entries, &mut secrets, client.id, req, fd);
                    if let Err(e) = send(client.sock.as_fd(), &reply, out) {
                        tracing::warn!(error = %e, "cannot answer a client");
                        gone.push(i);
                    }
                }
                Ok(None) => gone.push(i),
                Err(e) => {
                    tracing::warn!(error = %e, "bad request; client dropped");
                    gone.push(i);
                }
            }
        }
        for i in gone.into_iter().rev() {
            let client = clients.remove(i);
            for e in entries.values_mut() {
                if e.owner == Some(client.id) {
                    e.owner = None;
                }
            }
        }
        if listener_ev.contains(PollFlags::POLLIN) {
            match accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                Ok(raw) => {
                    // SAFETY: accept4 just returned this descriptor; we own it.
                    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
                    let peer = nix::sys::socket::getsockopt(
                        &sock,
                        nix::sys::socket::sockopt::PeerCredentials,
                    );
                    if peer.is_ok_and(|p| p.uid() == uid.as_raw()) {
                        next_id += 1;
                        clients.push(Client { id: next_id, sock });
                    } else {
                        tracing::warn!("connection from another user refused");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "accept failed"),
            }
        }
    }
    let _ = std::fs::remove_file(socket);
    tracing::info!("fd holder idle; exiting");
    Ok(())
}

/// Applies one request of client `id`.
fn handle<'a>(
    entries: &'a mut HashMap<String, Entry>,
    secrets: &mut HashMap<String, HeldSecret>,
    id: u64,
    req: Request,
    fd: Option<OwnedFd>,
) -> (Reply, Option<std::os::fd::BorrowedFd<'a>>) {
    let err = |e: &str| Reply {
        error: Some(e.into()),
        ..Reply::default()
    };
    match req {
        Request::Put { key, state } => {
            entries.insert(
                key,
                Entry {
                    fd,
                    state,
                    owner: Some(id),
                },
            );
            (Reply::default(), None)
        }
        Request::Update { key, state } => match entries.get_mut(&key) {
            Some(e) if e.owner == Some(id) => {
                e.state = state;
                (Reply::default(), None)
            }
            Some(_) => (err("busy"), None),
            None => (err("missing"), None),
        },
        Request::Take { key } => match entries.get_mut(&key) {
            Some(e) if e.owner.is_none_or(|o| o == id) => {
                e.owner = Some(id);
                let reply = Reply {
                    state: Some(e.state.clone()),
                    ..Reply::default()
                };
                (reply, e.fd.as_ref().map(|fd| fd.as_fd()))
            }
            Some(_) => (err("busy"), None),
            None => (err("missing"), None),
        },
        Request::List => {
            let free = entries
                .iter()
                .filter(|(_, e)| e.owner.is_none())
                .map(|(k, e)| (k.clone(), e.state.clone()))
                .collect();
            (
                Reply {
                    entries: free,
                    ..Reply::default()
                },
                None,
            )
        }
        Request::Drop { key } => match entries.get(&key) {
            Some(e) if e.owner.is_some_and(|o| o != id) => (err("busy"), None),
            _ => {
                entries.remove(&key);
                (Reply::default(), None)
            }
        },
        Request::PutSecret { key, value } => {
            secrets.insert(key, value);
            (Reply::default(), None)
        }
        Request::DropSecret { key } => {
            secrets.remove(&key);
            (Reply::default(), None)
        }
        Request::Secrets => {
            let held = secrets.iter().map(|(k, v)| (k.clone(), v.clone()));
            let reply = Reply {
                secrets: held.collect(),
                ..Reply::default()
            };
            (reply, None)
        }
    }
}
