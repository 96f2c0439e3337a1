//! TLS material of one endpoint read from files: extra CA bundles and the
//! client certificate for mutual TLS, as containerd's hosts.toml (`ca`,
//! `client`) or a Docker-style certs directory (`*.crt`, `*.cert`/`*.key`)
//! name them.
//!
//! Errors name the file and what is wrong with it, never its contents: a
//! key file is a secret.

use std::path::{Path, PathBuf};

use super::error::{RegistryError, Result};

/// A client certificate for mutual TLS.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientCertificate {
    /// PEM file with the certificate (chain), and the private key when
    /// `key` is `None`.
    pub cert: PathBuf,
    /// PEM file with the private key, when it is a separate file.
    pub key: Option<PathBuf>,
}

/// PEM labels of the unencrypted private keys rustls can use.
const KEY_LABELS: [&str; 3] = ["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"];

fn bad_file(path: &Path, reason: impl Into<String>) -> RegistryError {
    RegistryError::HostsConfig {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| RegistryError::Io {
        context: format!("reading {what} {}", path.display()),
        source,
    })
}

/// The CA certificates of a PEM bundle file.
pub(crate) fn load_ca_bundle(path: &Path) -> Result<Vec<reqwest::Certificate>> {
    let pem = read_file(path, "CA certificate")?;
    reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|_| bad_file(path, "not a PEM certificate bundle"))
}

/// The PEM blocks of `text` whose label `keep` accepts, concatenated, and
/// how many there were. Other blocks (e.g. `EC PARAMETERS`, which openssl
/// writes before an EC key) are left out, as Go's `tls.X509KeyPair` skips them.
fn pem_blocks(text: &str, keep: impl Fn(&str) -> bool) -> (String, usize) {
    let mut out = String::new();
    let mut count = 0;
    let mut open: Option<(String, bool)> = None;
    for line in text.lines().map(str::trim_end) {
        match &open {
            None => {
                let label = line
                    .strip_prefix("-----BEGIN ")
                    .and_then(|l| l.strip_suffix("-----"));
                if let Some(label) = label {
                    let wanted = keep(label);
                    if wanted {
                        out.push_str(line);
                        out.push('\n');
                    }
                    open = Some((label.to_owned(), wanted));
                }
            }
            Some((label, wanted)) => {
                if *wanted {
                    out.push_str(line);
                    out.push('\n');
                }
                let end = line
                    .strip_prefix("-----END ")
                    .and_then(|l| l.strip_suffix("-----"));
                if end == Some(label.as_str()) {
                    count += usize::from(*wanted);
                    open = None;
                }
            }
        }
    }
    (out, count)
}

/// Reads a client certificate and its key into a reqwest identity.
pub(crate) fn load_identity(client: &ClientCertificate) -> Result<reqwest::Identity> {
    let cert_text = read_file(&client.cert, "client certificate")?;
    let cert_text = String::from_utf8(cert_text)
        .map_err(|_| bad_file(&client.cert, "not a PEM file (client certificate)"))?;
    let (certs, n_certs) = pem_blocks(&cert_text, |l| l == "CERTIFICATE");
    if n_certs == 0 {
        return Err(bad_file(
            &client.cert,
            "no PEM certificate in the client certificate file",
        ));
    }
    let key_path = client.key.as_deref().unwrap_or(&client.cert);
    let key_text = match &client.key {
        Some(path) => String::from_utf8(read_file(path, "client key")?)
            .map_err(|_| bad_file(path, "not a PEM file (client key)"))?,
        None => cert_text,
    };
    let (key, n_keys) = pem_blocks(&key_text, |l| KEY_LABELS.contains(&l));
    match n_keys {
        1 => {}
        0 if pem_blocks(&key_text, |l| l == "ENCRYPTED PRIVATE KEY").1 > 0 => {
            return Err(bad_file(
                key_path,
                "the private key is encrypted; an unencrypted key is needed",
            ));
        }
        0 if client.key.is_none() => {
            return Err(bad_file(
                key_path,
                "no PEM private key in the client certificate file \
                 (name the key file as the pair [\"cert\", \"key\"])",
            ));
        }
        0 => return Err(bad_file(key_path, "no PEM private key in the file")),
        _ => return Err(bad_file(key_path, "more than one private key in the file")),
    }
    // reqwest's message names neither the file nor any of its bytes.
    reqwest::Identity::from_pem(format!("{certs}{key}").as_bytes())
        .map_err(|_| bad_file(key_path, "the certificate or the key is not valid PEM"))
}

/// `reason` (a transport error) with a hint when the server refused the
/// TLS handshake for want of an acceptable client certificate: TLS alerts
/// are terse.
pub(crate) fn explain_refusal(reason: String, client_certs: &[ClientCertificate]) -> String {
    if !(reason.contains("alert: BadCertificate") || reason.contains("alert: CertificateRequired"))
    {
        return reason;
    }
    match client_certs.first() {
        None => format!(
            "{reason} (the registry requires a client certificate: set `client` in its hosts.toml)"
        ),
        Some(c) => format!(
            "{reason} (the registry refused the client certificate {})",
            c.cert.display()
        ),
    }
}

/// The TLS files of a Docker-style certs directory (containerd reads them
/// when the host's directory has no hosts.toml): `*.crt` are CA bundles,
/// `*.cert` client certificates with their key in the `*.key` beside them
/// (or in the same file when there is none). Sorted by name.
pub(crate) fn docker_certs_dir(dir: &Path) -> Result<(Vec<PathBuf>, Vec<ClientCertificate>)> {
    let io = |source| RegistryError::Io {
        context: format!("reading {}", dir.display()),
        source,
    };
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
        .map(|e| e.path())
        .collect();
    names.sort();
    let mut cas = Vec::new();
    let mut clients = Vec::new();
    for path in names {
        match path.extension().and_then(|e| e.to_str()) {
            Some("crt") => cas.push(path),
            Some("cert") => {
                let key = path.with_extension("key");
                clients.push(ClientCertificate {
                    key: key.exists().then_some(key),
                    cert: path,
                });
            }
            _ => {}
        }
    }
    Ok((cas, clients))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----\n";
    const KEY: &str =
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n";

    #[test]
    fn pem_blocks_keeps_only_wanted_labels() {
        let text = format!(
            "junk\n-----BEGIN EC PARAMETERS-----\nBggq\n-----END EC PARAMETERS-----\n{KEY}{CERT}"
        );
        let (keys, n) = pem_blocks(&text, |l| KEY_LABELS.contains(&l));
        assert_eq!((keys.as_str(), n), (KEY, 1));
        let (certs, n) = pem_blocks(&text, |l| l == "CERTIFICATE");
        assert_eq!((certs.as_str(), n), (CERT, 1));
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn identity_errors_name_the_file_not_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let cert_only = write(dir.path(), "cert.pem", CERT);
        let key_only = write(dir.path(), "key.pem", KEY);
        let cases = [
            (
                ClientCertificate {
                    cert: cert_only.clone(),
                    key: None,
                },
                &cert_only,
                "no PEM private key",
            ),
            (
                ClientCertificate {
                    cert: key_only.clone(),
                    key: None,
                },
                &key_only,
                "no PEM certificate",
            ),
            (
                ClientCertificate {
                    cert: cert_only.clone(),
                    key: Some(write(
                        dir.path(),
                        "enc.pem",
                        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nc2VjcmV0\n-----END ENCRYPTED PRIVATE KEY-----\n",
                    )),
                },
                &dir.path().join("enc.pem"),
                "encrypted",
            ),
            (
                ClientCertificate {
                    cert: cert_only.clone(),
                    key: Some(write(dir.path(), "two.pem", &format!("{KEY}{KEY}"))),
                },
                &dir.path().join("two.pem"),
                "more than one",
            ),
        ];
        for (client, file, reason) in cases {
            let err = load_identity(&client).unwrap_err().to_string();
            assert!(err.contains(&file.display().to_string()), "{err}");
            assert!(err.contains(reason), "{err}");
            assert!(!err.contains("c2VjcmV0"), "key material in {err}");
        }
        let missing = ClientCertificate {
            cert: dir.path().join("absent.pem"),
            key: None,
        };
        let err = load_identity(&missing).unwrap_err().to_string();
        assert!(err.contains("absent.pem"), "{err}");
    }

    #[test]
    fn refusals_get_a_hint() {
        let alert = "connection error: received fatal alert: BadCertificate".to_string();
        assert!(explain_refusal(alert.clone(), &[]).contains("requires a client certificate"));
        let c = ClientCertificate {
            cert: "/etc/c.pem".into(),
            key: None,
        };
        assert!(explain_refusal(alert, &[c]).contains("refused the client certificate /etc/c.pem"));
        assert_eq!(explain_refusal("timeout".into(), &[]), "timeout");
    }

    #[test]
    fn docker_layout_pairs_cert_with_key_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["ca.crt", "b.cert", "b.key", "a.cert", "notes.txt"] {
            write(dir.path(), name, "x");
        }
        std::fs::create_dir(dir.path().join("sub.crt")).unwrap();
        let (cas, clients) = docker_certs_dir(dir.path()).unwrap();
        assert_eq!(cas, [dir.path().join("ca.crt")]);
        assert_eq!(
            clients,
            [
                ClientCertificate {
                    cert: dir.path().join("a.cert"),
                    key: None
                },
                ClientCertificate {
                    cert: dir.path().join("b.cert"),
                    key: Some(dir.path().join("b.key"))
                }
            ]
        );
    }
}
