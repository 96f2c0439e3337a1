//! `rstargz serve`: the snapshotter daemon. Serves containerd's Snapshots
//! gRPC API on a unix socket until SIGINT/SIGTERM, then stops accepting,
//! lets in-flight requests finish and closes the store. With live restart
//! (the default) SIGTERM leaves the remote layers mounted for the next
//! daemon; SIGINT unmounts them. Under systemd (`NOTIFY_SOCKET`) it sends
//! READY=1 once the socket serves and restore is done, STOPPING=1 on a signal.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::{
    Config, DEFAULT_ADDRESS, DEFAULT_LOG_LEVEL, DEFAULT_ROOT, Fallback, LogFormat,
};
use crate::logging;
use rstargz_fs::registry::Keychain;
use rstargz_remote::StargzFs;
use rstargz_remote::cri_keychain::CriKeychain;
use rstargz_remote::fd_holder::FdStore;
use rstargz_remote::held_credentials::HeldCredentials;
use rstargz_remote::live::LiveMounts;
use rstargz_remote::policy::Policies;
use rstargz_snapshotter::grpc::SnapshotsService;
use rstargz_snapshotter::lcow::LcowBackend;
use rstargz_snapshotter::remote_fs::{NoRemote, RemoteFs};
use rstargz_snapshotter::snapshot::overlay::OverlayBackend;
use rstargz_snapshotter::snapshot::{Options, Snapshotter};

/// How long shutdown waits for in-flight requests and connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Arguments of `rstargz serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Root directory for metadata and snapshots [default: /var/lib/rstargz].
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Unix socket to serve on [default: /run/rstargz/rstargz.sock].
    #[arg(long)]
    pub address: Option<PathBuf>,
    /// TOML config file [default: /etc/rstargz/config.toml, if present].
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Log level or tracing filter (trace, debug, info, warn, error).
    #[arg(long)]
    pub log_level: Option<String>,
    /// Log output: `text`, or `json` lines as the Go stargz-snapshotter writes
    /// them [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Local fallback for layers that are not remote [default: overlay].
    #[arg(long, value_enum)]
    pub fallback: Option<Fallback>,
}

/// Runs the daemon until SIGINT/SIGTERM. With JSON logs an error that ends
/// it is logged as a `fatal` line (as the Go daemon does) rather than printed
/// as text.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    rstargz_remote::memory::tune_allocator();
    let mut format = args.log_format.unwrap_or_default();
    match start(args, &mut format) {
        Err(e) if format == LogFormat::Json => {
            logging::fatal("rstargz serve failed", &e);
            std::process::exit(1);
        }
        result => result,
    }
}

/// Reads the configuration, sets up logging (updating `format` to the one
/// chosen) and serves.
fn start(args: ServeArgs, format: &mut LogFormat) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref())?;
    *format = args.log_format.or(config.log_format).unwrap_or_default();
    let root = args
        .root
        .or(config.root.clone())
        .unwrap_or_else(|| DEFAULT_ROOT.into());
    let address = args
        .address
        .or(config.address.clone())
        .unwrap_or_else(|| DEFAULT_ADDRESS.into());
    let level = args
        .log_level
        .or(config.log_level.clone())
        .unwrap_or_else(|| DEFAULT_LOG_LEVEL.into());
    if let Some(fallback) = args.fallback {
        config.snapshotter.fallback = fallback;
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&level)
        .with_context(|| format!("bad --log-level {level:?}"))?;
    // The fd holder started below writes to our stderr: it gets this format.
    config.log_format = Some(*format);
    logging::init(filter, *format);
    for key in &config.unknown_keys {
        tracing::warn!(key = %key, "unknown config key ignored");
    }
    for setting in config.remote.unsupported_settings() {
        tracing::warn!("{setting}");
    }
    if config.kubeconfig_keychain.enable_keychain {
        tracing::warn!(
            "[kubeconfig_keychain] is not supported (use [cri_keychain] or a docker config); ignored"
        );
    }
    let runtime = super::service_runtime()?;
    runtime.block_on(serve(root, address, config))
}

async fn serve(root: PathBuf, address: PathBuf, config: Config) -> anyhow::Result<()> {
    let mut opts = Options::new(&root);
    opts.async_remove = config.snapshotter.async_remove;
    opts.remote = Arc::new(NoRemote);
    opts.backend = match config.snapshotter.fallback {
        Fallback::Overlay => Arc::new(OverlayBackend::detect()),
        Fallback::Lcow => Arc::new(LcowBackend),
    };
    let backend = Arc::clone(&opts.backend);
    let policies = Policies::new(&config.remote, &root);
    let remote = if !backend.supports_remote() {
        "not offered by this fallback"
    } else if !policies.remote_enabled {
        "disabled"
    } else {
        "enabled"
    };
    // Kept alive until shutdown: dropping them stops the metrics servers.
    let mut _metrics_servers = Vec::new();
    let mut stargz = None;
    if backend.supports_remote() {
        let (fs, stargz_fs, metrics) = remote_fs(&root, &config, &policies).await?;
        opts.remote = fs;
        _metrics_servers = metrics;
        // Start-up order: (1) the FUSE session whose connection the fd
        // holder still keeps is taken over, and its layers' bind mounts set
        // aside (their requests wait for restore); (2) every other rstargz
        // mount under the root (no holder, live restart off, or unknown to
        // the holder) is detached, its connection aborted unless the
        // session shares it; (3) restore attaches the held layers again or
        // mounts afresh, and only then prunes the state of layers neither a
        // snapshot nor a mount uses; (4) held layers no snapshot claimed
        // are detached.
        let keep = stargz_fs
            .as_ref()
            .map(|s| s.adopt_live(&root))
            .unwrap_or_default();
        rstargz_remote::restore::detach_stale_mounts(&root, &keep);
        // Before restore: the layers taken over read with these.
        if let Some(fs) = &stargz_fs {
            keep_credentials(fs, config.cri_keychain.enable_keychain);
        }
        stargz = stargz_fs;
    }
    let keychain = stargz
        .as_ref()
        .map(|s| s.registry().keychain().clone())
        .unwrap_or_default();
    let snapshotter = tokio::task::spawn_blocking(move || Snapshotter::open(opts))
        .await?
        .with_context(|| format!("open snapshotter at {}", root.display()))?;
    let (restored, failed) = snapshotter
        .restore_remote()
        .await
        .context("restore remote layers")?;
    if restored + failed > 0 {
        tracing::info!(restored, failed, "remote layers restored");
    }
    if failed > 0 && !config.snapshotter.tolerates_failed_restores() {
        bail!(
            "{failed} remote layers could not be restored (their snapshots are named above) \
             and allow_invalid_mounts_on_restart = false"
        );
    }
    if let Some(fs) = &stargz {
        fs.finish_adoption();
    }
    let listener = bind(&address)?;
    let cri = cri_keychain(&config, &address, keychain)?;
    tracing::info!(
        root = %root.display(),
        socket = %address.display(),
        fallback = backend.name(),
        backend = ?backend,
        async_remove = config.snapshotter.async_remove,
        remote,
        version = env!("CARGO_PKG_VERSION"),
        "rstargz serving"
    );
    let mut sigterm = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let (same_socket, own_socket) = match cri {
        Some(CriService { service, own: None }) => (Some(service), None),
        Some(CriService {
            service,
            own: Some(own),
        }) => (None, Some((service, own))),
        None => (None, None),
    };
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SnapshotsService::new(snapshotter.clone()).into_server())
            .add_optional_service(same_socket.map(CriKeychain::into_server))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                stopped(stop_rx.clone()),
            ),
    );
    // Restored layers held their fetching back until now: no registry
    // request before the socket serves.
    snapshotter.serving();
    let cri_server = own_socket.map(|(service, (path, listener))| {
        let served = tonic::transport::Server::builder()
            .add_service(service.into_server())
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                stopped(stop_rx.clone()),
            );
        (path, tokio::spawn(served))
    });
    // The socket serves (connections queue on the bound listener until the
    // server task accepts them) and restore is done: tell systemd
    // (Type=notify), which then starts containerd (ordered after us).
    notify_systemd(sd_notify::NotifyState::Ready);
    // SIGTERM (systemd's stop and restart) keeps the layers mounted when
    // live restart is on; SIGINT always unmounts.
    let hand_over = tokio::select! {
        _ = sigterm.recv() => {
            tracing::info!("SIGTERM: shutting down");
            true
        }
        _ = sigint.recv() => {
            tracing::info!("SIGINT: shutting down and unmounting");
            false
        }
    };
    notify_systemd(sd_notify::NotifyState::Stopping);
    let _ = stop_tx.send(true);
    if let Some((path, cri_server)) = cri_server {
        match tokio::time::timeout(SHUTDOWN_GRACE, cri_server).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "CRI ImageService server failed"),
            Ok(_) => {}
            Err(_) => tracing::warn!("CRI calls still in flight after the grace period"),
        }
        let _ = std::fs::remove_file(path);
    }
    // Graceful shutdown waits for every client to acknowledge; a client that
    // never does must not keep the daemon alive.
    let served = tokio::time::timeout(SHUTDOWN_GRACE, server).await;
    let _ = std::fs::remove_file(&address);
    match served {
        Ok(joined) => joined.context("gRPC server task")?.context("gRPC server")?,
        Err(_) => tracing::warn!(
            grace_secs = SHUTDOWN_GRACE.as_secs(),
            "requests still in flight after the grace period; closing anyway"
        ),
    }
    if let Some(fs) = stargz.clone() {
        if hand_over && fs.live().is_some() {
            let handed = tokio::task::spawn_blocking(move || fs.hand_over_all()).await?;
            tracing::info!(
                mounts = handed,
                "remote layers left mounted for the next daemon"
            );
        } else {
            let held = fs.live().map(|l| l.credentials());
            let unmounted = tokio::task::spawn_blocking(move || fs.unmount_all()).await?;
            tracing::info!(mounts = unmounted, "remote layers unmounted");
            // A full stop leaves no credential behind either.
            if let Some(held) = held {
                tokio::task::spawn_blocking(move || held.clear()).await?;
            }
        }
    }
    snapshotter.close().await.context("close metadata store")?;
    tracing::info!("stopped");
    Ok(())
}

/// The CRI keychain's ImageService, and its own socket when it has one.
struct CriService {
    service: CriKeychain,
    own: Option<(PathBuf, UnixListener)>,
}

/// The CRI keychain, when `[cri_keychain]` enables it: the ImageService
/// filling `keychain`, on the Snapshots socket `address` or its own.
fn cri_keychain(
    config: &Config,
    address: &Path,
    keychain: Keychain,
) -> anyhow::Result<Option<CriService>> {
    let cri = &config.cri_keychain;
    if !cri.enable_keychain {
        return Ok(None);
    }
    let backend = cri.image_service_path();
    // Lazily connected: containerd starts after us (and may restart).
    let service = CriKeychain::new(
        keychain,
        rstargz_snapshotter::client::lazy_channel(&backend),
    );
    let own = match cri.own_socket(address) {
        Some(path) => {
            let listener = bind(&path)?;
            Some((path, listener))
        }
        None => None,
    };
    let socket = own.as_ref().map_or(address, |(p, _)| p.as_path());
    tracing::info!(
        socket = %socket.display(),
        image_service = %backend.display(),
        "CRI keychain: serving runtime.v1.ImageService"
    );
    Ok(Some(CriService { service, own }))
}

/// Credentials a previous daemon left in the fd holder go into the
/// keychain (when it is on; else they are forgotten), and from now on the
/// holder keeps a copy of the keychain for the next daemon.
fn keep_credentials(fs: &StargzFs, enabled: bool) {
    let Some(held) = fs.live().map(|l| l.credentials()) else {
        return;
    };
    if !enabled {
        held.clear();
        return;
    }
    let taken = held.load();
    if !taken.is_empty() {
        tracing::info!(hosts = taken.len(), "CRI keychain: credentials taken over");
    }
    let mirror: Arc<HeldCredentials> = Arc::new(held);
    fs.registry()
        .keychain()
        .restore_and_mirror(taken, Some(mirror));
}

/// Sends `state` to systemd when started as a `Type=notify` service (does
/// nothing without `NOTIFY_SOCKET`). A failure is logged, not fatal: systemd
/// then times the start out and says so itself.
fn notify_systemd(state: sd_notify::NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!(error = %e, "sd_notify to systemd failed");
    }
}

/// Stops a metrics server when the daemon stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The filesystem of remote layers (eStargz over FUSE unless disabled), the
/// same as [`StargzFs`] when it is one, and its metrics servers
/// (`metrics_address` unless `no_prometheus`, and `debug_address`).
async fn remote_fs(
    root: &Path,
    config: &Config,
    policies: &Policies,
) -> anyhow::Result<(Arc<dyn RemoteFs>, Option<Arc<StargzFs>>, Vec<AbortOnDrop>)> {
    if !policies.remote_enabled {
        return Ok((Arc::new(NoRemote), None, Vec::new()));
    }
    let mut fs = StargzFs::new(root, config.remote.clone()).context("set up remote layers")?;
    if let Some(orphan_timeout) = policies.live_restart {
        match live_restart(root, orphan_timeout, config.log_format.unwrap_or_default()) {
            Ok(live) => fs = fs.with_live_restart(live),
            Err(e) => tracing::warn!(error = %e, "live restart unavailable: SIGTERM will unmount"),
        }
    }
    let fs = Arc::new(fs);
    let policy = fs.policies().metrics.clone();
    let mut servers = Vec::new();
    if let Some(addr) = &policy.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind metrics_address {addr}"))?;
        tracing::info!(address = %addr, "serving metrics at /metrics");
        servers.push(AbortOnDrop(tokio::spawn(rstargz_remote::metrics::serve(
            listener,
            fs.clone(),
        ))));
    }
    if let Some(path) = &policy.debug_socket {
        let listener = bind(path).context("bind debug_address")?;
        tracing::info!(socket = %path.display(), metrics = policy.enabled, "serving /debug/vars");
        servers.push(AbortOnDrop(tokio::spawn(
            rstargz_remote::metrics::serve_debug(listener, fs.clone(), policy.enabled),
        )));
    }
    Ok((fs.clone(), Some(fs), servers))
}

/// Connects to the fd holder of `root`, starting it when needed (keeping
/// connections for `orphan_timeout` once no daemon is connected, and
/// logging in `log_format`, as it shares our stderr).
fn live_restart(
    root: &Path,
    orphan_timeout: Duration,
    log_format: LogFormat,
) -> anyhow::Result<LiveMounts> {
    std::fs::create_dir_all(root).with_context(|| format!("create {}", root.display()))?;
    let exe = std::env::current_exe().context("locate the rstargz binary")?;
    let store = FdStore::connect_or_spawn(
        &root.join("fdstore.sock"),
        &exe,
        orphan_timeout,
        &["--log-format", log_format.name()],
    )?;
    Ok(LiveMounts::new(store))
}

/// Binds the socket: creates the parent directory, replaces a stale socket
/// file only when nothing answers on it, and sets mode 0660.
fn bind(address: &Path) -> anyhow::Result<UnixListener> {
    if let Some(parent) = address.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    match std::fs::symlink_metadata(address) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(address).is_ok() {
                bail!("{} is in use by another server", address.display());
            }
            tracing::info!(socket = %address.display(), "replacing stale socket");
            std::fs::remove_file(address)
                .with_context(|| format!("remove stale socket {}", address.display()))?;
        }
        Ok(_) => bail!("{} exists and is not a socket", address.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("stat {}", address.display())),
    }
    let listener =
        UnixListener::bind(address).with_context(|| format!("bind {}", address.display()))?;
    std::fs::set_permissions(address, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("chmod {}", address.display()))?;
    Ok(listener)
}
