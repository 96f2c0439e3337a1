//! Starts Debian's `docker-registry` with our own minimal config on a free
//! 127.0.0.1 port (optionally with htpasswd basic auth, TLS, or TLS with
//! client certificates) and kills it on drop. A missing binary fails the
//! test: scripts/setup.sh installs it.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BINARY: &str = "/usr/bin/docker-registry";

/// docker-registry's config: storing under `data`, serving plain HTTP on
/// `addr`, deletes allowed; auth and TLS sections may follow (`http:` is last).
pub fn config_yml(data: &std::path::Path, addr: SocketAddr) -> String {
    format!(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
        data.display()
    )
}

/// A running registry.
pub struct TestRegistry {
    child: Child,
    /// Listening address.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    tls: Tls,
}

/// What a registry asks of its clients' connections.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tls {
    /// Plain HTTP.
    Off,
    /// HTTPS.
    Server,
    /// HTTPS that requires a client certificate (mutual TLS).
    Mutual,
}

impl TestRegistry {
    /// A registry without auth.
    pub async fn start() -> Self {
        Self::start_inner(None, Tls::Off).await
    }

    /// A registry serving HTTPS with a leaf certificate for 127.0.0.1 signed
    /// by a fresh test CA; the CA is at [`Self::ca_path`].
    pub async fn start_tls() -> Self {
        Self::start_inner(None, Tls::Server).await
    }

    /// Like [`Self::start_tls`], and the registry requires a client
    /// certificate signed by its own client CA (`http.tls.clientcas`):
    /// one is at [`Self::client_cert_path`] (key at
    /// [`Self::client_key_path`]); [`Self::foreign_client_cert_path`] is
    /// one signed by another CA.
    pub async fn start_mtls() -> Self {
        Self::start_inner(None, Tls::Mutual).await
    }

    /// The test CA certificate (PEM) of a TLS registry.
    pub fn ca_path(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A client certificate (PEM) the mutual-TLS registry accepts.
    pub fn client_cert_path(&self) -> std::path::PathBuf {
        self.dir.path().join("client.pem")
    }

    /// The private key (PEM) of [`Self::client_cert_path`].
    pub fn client_key_path(&self) -> std::path::PathBuf {
        self.dir.path().join("client.key")
    }

    /// A client certificate (PEM, key beside it at `other-client.key`)
    /// from a CA the mutual-TLS registry does not trust.
    pub fn foreign_client_cert_path(&self) -> std::path::PathBuf {
        self.dir.path().join("other-client.pem")
    }

    /// A registry requiring basic auth for `user`/`password` (bcrypt via `htpasswd -Bbn`).
    pub async fn start_with_htpasswd(user: &str, password: &str) -> Self {
        Self::start_inner(Some(htpasswd_line(user, password)), Tls::Off).await
    }

    /// Replaces the accounts of a registry started with
    /// [`Self::start_with_htpasswd`] by `user`/`password` (a rotated
    /// password): the registry re-reads its htpasswd file when it changes.
    pub fn set_htpasswd(&self, user: &str, password: &str) {
        let path = self.dir.path().join("htpasswd");
        assert!(path.exists(), "not an htpasswd registry");
        std::fs::write(path, htpasswd_line(user, password)).unwrap();
    }

    async fn start_inner(htpasswd: Option<String>, tls: Tls) -> Self {
        assert!(
            std::path::Path::new(BINARY).exists(),
            "{BINARY} is missing: install the docker-registry package (scripts/setup.sh)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = super::closed_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut config = config_yml(&dir.path().join("data"), addr);
        if let Some(line) = htpasswd {
            let path = dir.path().join("htpasswd");
            std::fs::write(&path, line).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n",
                path.display()
            ));
        }
        if tls != Tls::Off {
            make_certificates(dir.path(), tls == Tls::Mutual);
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.path().join("leaf.pem").display(),
                dir.path().join("leaf.key").display()
            ));
        }
        if tls == Tls::Mutual {
            config.push_str(&format!(
                "    clientcas:\n      - {}\n",
                dir.path().join("client-ca.pem").display()
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
        let mut client = reqwest::Client::builder().danger_accept_invalid_certs(true);
        if self.tls == Tls::Mutual {
            let mut pem = std::fs::read(self.client_cert_path()).unwrap();
            pem.extend(std::fs::read(self.client_key_path()).unwrap());
            client = client.identity(reqwest::Identity::from_pem(&pem).unwrap());
        }
        let client = client.build().unwrap();
        let scheme = if self.tls == Tls::Off {
            "http"
        } else {
            "https"
        };
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
/// with the openssl CLI; with `clients`, also client-ca.pem and client.pem/
/// client.key signed by it, and other-client.pem/.key signed by another CA.
fn make_certificates(dir: &std::path::Path, clients: bool) {
    make_ca(dir, "ca", "rstargz test CA");
    make_leaf(
        dir,
        "leaf",
        "127.0.0.1",
        "ca",
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    );
    if clients {
        let client_ext = "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n";
        make_ca(dir, "client-ca", "rstargz test client CA");
        make_leaf(
            dir,
            "client",
            "rstargz test client",
            "client-ca",
            client_ext,
        );
        make_ca(dir, "other-ca", "rstargz other CA");
        make_leaf(
            dir,
            "other-client",
            "rstargz other client",
            "other-ca",
            client_ext,
        );
    }
}

/// Runs `openssl args` in `dir`, asserting success.
fn openssl(dir: &std::path::Path, args: &[&str]) {
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
}

/// A fresh P-256 key in `<name>.key` (PKCS#8, unencrypted).
const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// Writes the self-signed CA `<name>.pem`/`<name>.key`.
fn make_ca(dir: &std::path::Path, name: &str, cn: &str) {
    let (key, pem, subj) = (
        format!("{name}.key"),
        format!("{name}.pem"),
        format!("/CN={cn}"),
    );
    openssl(
        dir,
        &[
            &["req", "-x509"],
            &EC_KEY[..],
            &["-keyout", &key, "-out", &pem, "-subj", &subj, "-days", "2"],
        ]
        .concat(),
    );
}

/// Writes `<name>.pem`/`<name>.key` signed by the CA `<ca>.pem`, with the
/// openssl extension lines `ext`.
fn make_leaf(dir: &std::path::Path, name: &str, cn: &str, ca: &str, ext: &str) {
    let (key, csr, pem, ext_file) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.ext"),
    );
    let subj = format!("/CN={cn}");
    openssl(
        dir,
        &[
            &["req"],
            &EC_KEY[..],
            &["-keyout", &key, "-out", &csr, "-subj", &subj],
        ]
        .concat(),
    );
    std::fs::write(dir.join(&ext_file), ext).unwrap();
    let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext_file,
        ],
    );
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
