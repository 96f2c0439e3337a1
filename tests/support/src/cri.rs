//! A CRI client driving containerd's CRI plugin the way kubelet does:
//! PullImage, RunPodSandbox (host network, so no CNI), CreateContainer,
//! StartContainer, ContainerStatus until the container exits, then its CRI
//! log. Shared by the CRI tests, the dev-stack test and the CRI cold-start
//! benchmark; calls return errors (the benchmark reports them), the tests
//! unwrap them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rstargz_proto::cri;
use rstargz_proto::cri::image_service_client::ImageServiceClient;
use rstargz_proto::cri::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use crate::daemon::DEADLINE;

/// The pause image's entrypoint: a long sleep (CRI stops the pod with
/// SIGKILL after its grace period; a pid 1 ignores SIGTERM).
pub const PAUSE_ENTRYPOINT: [&str; 3] = ["/bin/busybox", "sleep", "86400"];

/// Writes the pause image's one layer under `dir` (busybox-static from
/// `busybox` alone, the directories a container needs) and returns it;
/// the image's entrypoint is [`PAUSE_ENTRYPOINT`].
pub fn pause_layer(dir: &Path, busybox: &Path) -> std::io::Result<PathBuf> {
    let layer = dir.join("l-pause");
    std::fs::create_dir_all(layer.join("bin"))?;
    std::fs::copy(busybox, layer.join("bin/busybox"))?;
    for d in ["proc", "sys", "dev", "etc"] {
        std::fs::create_dir_all(layer.join(d))?;
    }
    Ok(layer)
}

/// How long a container may take to run to its end.
pub const RUN_DEADLINE: Duration = Duration::from_secs(120);

/// What went wrong talking CRI.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// The socket could not be dialled.
    #[error("connect to {0}: {1}")]
    Connect(PathBuf, String),
    /// A CRI call failed.
    #[error("{call}: {status}")]
    Call {
        /// The call and its subject.
        call: String,
        /// containerd's answer.
        status: tonic::Status,
    },
    /// Something did not happen in time.
    #[error("timed out waiting for {0}")]
    Deadline(String),
    /// The container ended other than with exit code 0.
    #[error("container {name} exited {exit_code} ({reason}: {message}); log: {log}")]
    Failed {
        /// Container name.
        name: String,
        /// Its exit code.
        exit_code: i32,
        /// CRI's reason (`Completed`, `Error`, `OOMKilled`).
        reason: String,
        /// CRI's message.
        message: String,
        /// Its CRI log.
        log: String,
    },
    /// The container's log could not be read or is not a CRI log.
    #[error("container log {0}: {1}")]
    Log(PathBuf, String),
}

fn call(what: impl Into<String>) -> impl FnOnce(tonic::Status) -> CriError {
    let call = what.into();
    move |status| CriError::Call { call, status }
}

/// The CRI clients: RuntimeService over containerd's socket, ImageService
/// over containerd's or (kubelet's `--image-service-endpoint`) another.
pub struct Cri {
    /// RuntimeService.
    pub runtime: RuntimeServiceClient<Channel>,
    /// ImageService.
    pub images: ImageServiceClient<Channel>,
    runtime_socket: PathBuf,
    /// Where pod log directories are seen from here when containerd runs in
    /// another mount namespace: (containerd's prefix, ours).
    log_map: Option<(PathBuf, PathBuf)>,
}

impl Cri {
    /// Connects, the RuntimeService over `runtime` and the ImageService over
    /// `images`, and waits (bounded) for the CRI plugin to answer Version.
    pub async fn connect(runtime: &Path, images: &Path) -> Result<Cri, CriError> {
        let dial = |p: &Path| {
            let p = p.to_path_buf();
            async move {
                rstargz_snapshotter::client::channel(&p)
                    .await
                    .map_err(|e| CriError::Connect(p.clone(), e.to_string()))
            }
        };
        let mut cri = Cri {
            runtime: RuntimeServiceClient::new(dial(runtime).await?),
            images: ImageServiceClient::new(dial(images).await?),
            runtime_socket: runtime.to_path_buf(),
            log_map: None,
        };
        let start = Instant::now();
        loop {
            match cri.runtime.version(cri::VersionRequest::default()).await {
                Ok(v) => {
                    let v = v.into_inner();
                    tracing::info!(
                        "CRI {} {} {}",
                        v.runtime_name,
                        v.runtime_version,
                        v.runtime_api_version
                    );
                    return Ok(cri);
                }
                Err(e) if start.elapsed() >= DEADLINE => {
                    return Err(call("Version")(e));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Pod log directories under `theirs` (as containerd names them) are
    /// read under `ours` (e.g. a containerd in a container, its directory
    /// bind-mounted from here).
    pub fn map_logs(mut self, theirs: &Path, ours: &Path) -> Cri {
        self.log_map = Some((theirs.to_path_buf(), ours.to_path_buf()));
        self
    }

    /// PullImage with `auth` (a pod's imagePullSecret); returns the image
    /// ref (its ID), as kubelet then uses it.
    pub async fn pull(
        &mut self,
        image: &str,
        sandbox: Option<&cri::PodSandboxConfig>,
        auth: Option<cri::AuthConfig>,
    ) -> Result<String, CriError> {
        Ok(self
            .images
            .pull_image(pull_request(image, sandbox, auth))
            .await
            .map_err(call(format!("PullImage {image}")))?
            .into_inner()
            .image_ref)
    }

    /// Creates, starts and waits (bounded) for a container `name` of
    /// `image_ref` running `command` in the pod `sandbox_id`; removes it and
    /// returns its CRI log's stdout. A non-zero exit is an error.
    pub async fn run_container(
        &mut self,
        sandbox_id: &str,
        sandbox: &cri::PodSandboxConfig,
        image_ref: &str,
        name: &str,
        command: &[String],
    ) -> Result<String, CriError> {
        let log_path = format!("{name}.log");
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: image_ref.into(),
                ..Default::default()
            }),
            command: command.to_vec(),
            log_path: log_path.clone(),
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(host_network()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = self
            .runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sandbox_id.into(),
                config: Some(config),
                sandbox_config: Some(sandbox.clone()),
            })
            .await
            .map_err(call(format!("CreateContainer {name}")))?
            .into_inner()
            .container_id;
        self.runtime
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .map_err(call(format!("StartContainer {name}")))?;
        let status = self.wait_exited(&id, name).await?;
        let log = self.log_dir(&sandbox.log_directory).join(&log_path);
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if (status.exit_code, status.reason.as_str()) != (0, "Completed") {
            return Err(CriError::Failed {
                name: name.into(),
                exit_code: status.exit_code,
                reason: status.reason,
                message: status.message,
                log: text,
            });
        }
        self.runtime
            .remove_container(cri::RemoveContainerRequest { container_id: id })
            .await
            .map_err(call(format!("RemoveContainer {name}")))?;
        cri_log_stdout(&text).map_err(|e| CriError::Log(log, e))
    }

    async fn wait_exited(
        &mut self,
        id: &str,
        name: &str,
    ) -> Result<cri::ContainerStatus, CriError> {
        let start = Instant::now();
        loop {
            let status = self
                .runtime
                .container_status(cri::ContainerStatusRequest {
                    container_id: id.into(),
                    verbose: false,
                })
                .await
                .map_err(call(format!("ContainerStatus {name}")))?
                .into_inner()
                .status;
            if let Some(s) = status
                && s.state == cri::ContainerState::ContainerExited as i32
            {
                return Ok(s);
            }
            if start.elapsed() >= RUN_DEADLINE {
                return Err(CriError::Deadline(format!("container {name} to exit")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_dir(&self, theirs: &str) -> PathBuf {
        let theirs = Path::new(theirs);
        match &self.log_map {
            Some((prefix, ours)) => match theirs.strip_prefix(prefix) {
                Ok(rest) => ours.join(rest),
                Err(_) => theirs.to_path_buf(),
            },
            None => theirs.to_path_buf(),
        }
    }
}

/// A PullImageRequest of `image` with `auth`.
pub fn pull_request(
    image: &str,
    sandbox: Option<&cri::PodSandboxConfig>,
    auth: Option<cri::AuthConfig>,
) -> cri::PullImageRequest {
    cri::PullImageRequest {
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        auth,
        sandbox_config: sandbox.cloned(),
    }
}

/// Host-network namespaces (no CNI): the pod and its containers share the
/// node's network.
pub fn host_network() -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// A pod named `name`: host network, its logs in `log_dir` (as containerd
/// sees it; the caller creates it) and the cgroup parent `cgroup_parent`.
pub fn pod_config(name: &str, log_dir: &Path, cgroup_parent: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("{name}-{}", std::process::id()),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: log_dir.to_string_lossy().into_owned(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: format!("/{cgroup_parent}"),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(host_network()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The stdout lines of a CRI log (`<time> <stream> <P|F> <line>`), joined;
/// a `P` (partial) entry continues on the next one.
pub fn cri_log_stdout(text: &str) -> Result<String, String> {
    let mut out = String::new();
    for line in text.lines() {
        let mut parts = line.splitn(4, ' ');
        let (_time, stream, tag) = (parts.next(), parts.next(), parts.next());
        let content = parts.next().unwrap_or("");
        if !matches!(tag, Some("F" | "P")) {
            return Err(format!("not a CRI log line: {line:?}"));
        }
        if stream == Some("stdout") {
            out.push_str(content);
            if tag == Some("F") {
                out.push('\n');
            }
        }
    }
    Ok(out)
}

/// A running pod sandbox; stopped and removed over CRI on drop too (a
/// failed run), before a containerd guard kills what is left.
pub struct Pod {
    socket: PathBuf,
    /// The sandbox ID (None once removed).
    pub id: Option<String>,
}

impl Pod {
    /// RunPodSandbox.
    pub async fn run(cri: &mut Cri, config: &cri::PodSandboxConfig) -> Result<Pod, CriError> {
        let id = cri
            .runtime
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .map_err(call("RunPodSandbox"))?
            .into_inner()
            .pod_sandbox_id;
        Ok(Pod {
            socket: cri.runtime_socket.clone(),
            id: Some(id),
        })
    }

    /// The sandbox ID.
    pub fn id(&self) -> &str {
        self.id.as_deref().unwrap_or_default()
    }

    /// StopPodSandbox and RemovePodSandbox, as kubelet tears a pod down.
    pub async fn remove(&mut self, cri: &mut Cri) -> Result<(), CriError> {
        match self.id.take() {
            Some(id) => stop_and_remove(&mut cri.runtime, &id).await,
            None => Ok(()),
        }
    }
}

async fn stop_and_remove(
    runtime: &mut RuntimeServiceClient<Channel>,
    id: &str,
) -> Result<(), CriError> {
    runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .map_err(call("StopPodSandbox"))?;
    runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .map_err(call("RemovePodSandbox"))?;
    Ok(())
}

impl Drop for Pod {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        let socket = self.socket.clone();
        // Drop may run on a runtime's thread: a thread of its own blocks.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let Ok(channel) = rstargz_snapshotter::client::channel(&socket).await else {
                    return;
                };
                let mut runtime = RuntimeServiceClient::new(channel);
                let res = tokio::time::timeout(DEADLINE, stop_and_remove(&mut runtime, &id)).await;
                eprintln!("pod {id} torn down on drop: {res:?}");
            });
        })
        .join();
    }
}

/// A pods' cgroup parent: runc removes the containers' cgroups below it,
/// the parent itself (in every hierarchy) goes on drop; it must be empty
/// (panics otherwise, unless already panicking).
pub struct CgroupParent(pub String);

impl Drop for CgroupParent {
    fn drop(&mut self) {
        for d in crate::host::cgroup_dirs(&self.0) {
            if let Err(e) = std::fs::remove_dir(&d)
                && !std::thread::panicking()
            {
                panic!("cgroup {} not empty (a container leaked): {e}", d.display());
            }
        }
    }
}
