//! Image references (`[host[:port]/]repo[:tag][@digest]`) as containerd and
//! docker write them, normalised the docker way: no host means `docker.io`,
//! a one-component docker.io repository gets `library/`, and the API host of
//! `docker.io` is `registry-1.docker.io`.

use std::fmt;

use super::error::{RegistryError, Result};
use super::oci_digest::OciDigest;

/// The registry name docker uses when a reference has no host.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that actually serves docker.io's registry API.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";

/// A parsed, normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry name as written (`docker.io`, `ghcr.io`, `localhost:5000`).
    pub registry: String,
    /// Repository path (`library/ubuntu`).
    pub repository: String,
    /// Tag, if any.
    pub tag: Option<String>,
    /// Digest, if any.
    pub digest: Option<OciDigest>,
}

impl Reference {
    /// Parses and normalises a reference string.
    pub fn parse(input: &str) -> Result<Self> {
        let err = |reason| RegistryError::InvalidReference {
            reference: input.chars().take(300).collect(),
            reason,
        };
        if input.is_empty() || input.len() > 4096 {
            return Err(err("empty or too long"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => (
                rest,
                Some(OciDigest::parse(d).map_err(|_| err("bad digest"))?),
            ),
            None => (input, None),
        };
        let (registry, path) = match rest.split_once('/') {
            Some((first, tail)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), tail)
            }
            _ => (DOCKER_HUB.to_string(), rest),
        };
        // The tag is after a ':' in the last path component (a ':' before the
        // last '/' belongs to a port, which was already split off above).
        let last_slash = path.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match path[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&path[..at], Some(path[at + 1..].to_string()))
            }
            None => (path, None),
        };
        if let Some(tag) = &tag
            && (tag.is_empty()
                || tag.len() > 128
                || !tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')))
        {
            return Err(err("bad tag"));
        }
        if repository.is_empty()
            || repository.len() > 255
            || repository.split('/').any(|c| {
                c.is_empty()
                    || c.starts_with(['.', '_', '-'])
                    || !c.bytes().all(|b| {
                        b.is_ascii_lowercase()
                            || b.is_ascii_digit()
                            || matches!(b, b'.' | b'_' | b'-')
                    })
            })
        {
            return Err(err("bad repository name"));
        }
        if registry.is_empty()
            || !registry
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
        {
            return Err(err("bad registry host"));
        }
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_string()
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host serving the registry API for this reference.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API_HOST
        } else {
            &self.registry
        }
    }

    /// The tag or digest to ask a manifest for (digest wins, then tag, then `latest`).
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Whether a `host[:port]` names the local machine (plain HTTP is allowed there).
pub fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else if host.matches(':').count() == 1 {
        host.split(':').next().unwrap_or(host)
    } else {
        host
    };
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    name.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_normalisation() {
        let r = Reference::parse("ubuntu").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "library/ubuntu")
        );
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.manifest_reference(), "latest");
        let r = Reference::parse("docker.io/library/ubuntu:22.04").unwrap();
        assert_eq!(r.tag.as_deref(), Some("22.04"));
        assert_eq!(r.to_string(), "docker.io/library/ubuntu:22.04");
        let r = Reference::parse("someone/app:v1").unwrap();
        assert_eq!(r.repository, "someone/app");
    }

    #[test]
    fn host_port_tag_and_digest() {
        let d = format!("sha256:{}", "0".repeat(64));
        let r = Reference::parse(&format!("127.0.0.1:5000/a/b/c:t1@{d}")).unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "a/b/c");
        assert_eq!(r.tag.as_deref(), Some("t1"));
        assert_eq!(r.manifest_reference(), d);
        let r = Reference::parse("localhost/x").unwrap();
        assert_eq!((r.registry.as_str(), r.tag), ("localhost", None));
        let r = Reference::parse("ghcr.io/o/r").unwrap();
        assert_eq!(r.api_host(), "ghcr.io");
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "Upper/Case",
            "a//b",
            "host.io/",
            "x:",
            "x@sha256:zz",
            "a/../b",
            "h.io/r:t/x",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn loopback_detection() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:1",
            "[::1]:5000",
            "::1",
            "127.3.4.5",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in ["example.com", "10.0.0.1:5000", "registry-1.docker.io"] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }
}
