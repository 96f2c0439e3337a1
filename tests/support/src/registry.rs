//! Starts Debian's `docker-registry` with our own minimal config on a free
//! 127.0.0.1 port (optionally with htpasswd basic auth) and kills it on drop.
//! A missing binary fails the test: scripts/setup.sh installs it.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BINARY: &str = "/usr/bin/docker-registry";

/// A running registry.
pub struct TestRegistry {
    child: Child,
    /// Listening address.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    tls: bool,
}

impl TestRegistry {
    /// A registry without auth.
    pub async fn start() -> Self {
        Self::start_inner(None, false).await
    }

    /// A registry serving HTTPS with a leaf certificate for 127.0.0.1 signed
    /// by a fresh test CA; the CA is at [`Self::ca_path`].
    pub async fn start_tls() -> Self {
        Self::start_inner(None, true).await
    }

    /// The test CA certificate (PEM) of a TLS registry.
    pub fn ca_path(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A registry requiring basic auth for `user`/`password` (bcrypt via `htpasswd -Bbn`).
    pub async fn start_with_htpasswd(user: &str, password: &str) -> Self {
        Self::start_inner(Some(htpasswd_line(user, password)), false).await
    }

    /// Replaces the accounts of a registry started with
    /// [`Self::start_with_htpasswd`] by `user`/`password` (a rotated
    /// password): the registry re-reads its htpasswd file when it changes.
    pub fn set_htpasswd(&self, user: &str, password: &str) {
        let path = self.dir.path().join("htpasswd");
        assert!(path.exists(), "not an htpasswd registry");
        std::fs::write(path, htpasswd_line(user, password)).unwrap();
    }

    async fn start_inner(htpasswd: Option<String>, tls: bool) -> Self {
        assert!(
            std::path::Path::new(BINARY).exists(),
            "{BINARY} is missing: install the docker-registry package (scripts/setup.sh)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = super::closed_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        if let Some(line) = htpasswd {
            let path = dir.path().join("htpasswd");
            std::fs::write(&path, line).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n",
                path.display()
            ));
        }
        if tls {
            make_certificates(dir.path());
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.path().join("leaf.pem").display(),
                dir.path().join("leaf.key").display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let child = spawn(dir.path());
        let mut reg = Self {
            child,
            addr,
            dir,
            tls,
        };
        reg.wait_ready().await;
        reg
    }

    /// Stops the registry (its data stays for [`Self::restart`]).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the registry again on the same address with the same data.
    pub async fn restart(&mut self) {
        self.stop();
        self.child = spawn(self.dir.path());
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        // Readiness only: the tests themselves check certificates.
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap();
        let scheme = if self.tls { "https" } else { "http" };
        let url = format!("{scheme}://{}/v2/", self.addr);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(self.dir.path().join("registry.log"))
                    .unwrap_or_default();
                panic!("docker-registry exited with {status}: {log}");
            }
            if let Ok(r) = client
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await
                && (r.status().is_success() || r.status() == 401)
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "docker-registry did not answer on {url}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Where the registry stores the blob `digest` (`sha256:…`), for tests
    /// that corrupt it.
    pub fn blob_path(&self, digest: &str) -> std::path::PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// A reference string for `repo` on this registry.
    pub fn reference(&self, repo: &str) -> String {
        format!("{}/{repo}:latest", self.addr)
    }
}

/// The htpasswd line (bcrypt) of `user`/`password`.
fn htpasswd_line(user: &str, password: &str) -> String {
    let out = Command::new("htpasswd")
        .args(["-Bbn", user, password])
        .output()
        .expect("htpasswd (apache2-utils) must be installed: run scripts/setup.sh");
    assert!(out.status.success(), "htpasswd failed");
    String::from_utf8(out.stdout).unwrap()
}

/// Runs the registry with `dir/config.yml`, logging to `dir/registry.log`.
fn spawn(dir: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("registry.log"))
        .unwrap();
    Command::new(BINARY)
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Writes ca.pem/ca.key and leaf.pem/leaf.key (SAN IP:127.0.0.1) into `dir`
/// with the openssl CLI.
fn make_certificates(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl must be installed: run scripts/setup.sh");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"],
        &ec[..],
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=rstargz test CA",
            "-days",
            "2",
        ],
    ]
    .concat());
    run(&[
        &["req"],
        &ec[..],
        &[
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
    ]);
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
