//! Platform selection for `image convert --platform`, with containerd's
//! spelling: `os[/arch[/variant]]`, a lone OS or architecture completed
//! from the host, and the same normalisation (`x86_64` is `amd64`,
//! `aarch64` is `arm64`, `arm` is `arm/v7`, `arm64/v8` is `arm64`…) on both
//! sides before an exact comparison, as containerd's `platforms.Ordered`
//! matcher does.

use super::error::{ImageError, Result};
use super::oci::Platform;

/// A platform asked for on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformSpec {
    /// Operating system (`linux`).
    pub os: String,
    /// CPU architecture (`amd64`).
    pub architecture: String,
    /// CPU variant (`v7`), empty for none.
    pub variant: String,
}

const KNOWN_OS: &[&str] = &[
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "hurd",
    "illumos",
    "ios",
    "js",
    "linux",
    "nacl",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "wasip1",
    "windows",
    "zos",
];

const KNOWN_ARCH: &[&str] = &[
    "386",
    "amd64",
    "amd64p32",
    "arm",
    "armbe",
    "arm64",
    "arm64be",
    "loong64",
    "mips",
    "mipsle",
    "mips64",
    "mips64le",
    "mips64p32",
    "mips64p32le",
    "ppc",
    "ppc64",
    "ppc64le",
    "riscv",
    "riscv64",
    "s390",
    "s390x",
    "sparc",
    "sparc64",
    "wasm",
];

fn normalize_os(os: &str) -> String {
    match os.to_ascii_lowercase().as_str() {
        "" => std::env::consts::OS.to_owned(),
        "macos" => "darwin".to_owned(),
        other => other.to_owned(),
    }
}

fn normalize_arch(arch: &str, variant: &str) -> (String, String) {
    let (arch, variant) = (arch.to_ascii_lowercase(), variant.to_ascii_lowercase());
    let (a, v): (&str, &str) = match (arch.as_str(), variant.as_str()) {
        ("i386", _) => ("386", ""),
        ("x86_64" | "x86-64" | "amd64", "v1") => ("amd64", ""),
        ("x86_64" | "x86-64" | "amd64", v) => ("amd64", v),
        ("aarch64" | "arm64", "8" | "v8" | "v8.0") => ("arm64", ""),
        ("aarch64" | "arm64", "9" | "9.0" | "v9.0") => ("arm64", "v9"),
        ("aarch64" | "arm64", v) => ("arm64", v),
        ("armhf", _) => ("arm", "v7"),
        ("armel", _) => ("arm", "v6"),
        ("arm", "" | "7") => ("arm", "v7"),
        ("arm", "5") => ("arm", "v5"),
        ("arm", "6") => ("arm", "v6"),
        ("arm", "8") => ("arm", "v8"),
        (a, v) => (a, v),
    };
    (a.to_owned(), v.to_owned())
}

/// This machine's architecture in OCI spelling.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        other => other,
    }
}

impl PlatformSpec {
    /// Parses `os[/arch[/variant]]`; a lone known OS gets the host's
    /// architecture, a lone known architecture the host's OS.
    pub fn parse(spec: &str) -> Result<Self> {
        let bad = |reason: &str| ImageError::InvalidPlatform {
            spec: spec.to_owned(),
            reason: reason.to_owned(),
        };
        let parts: Vec<&str> = spec.split('/').collect();
        if parts.iter().any(|p| {
            p.is_empty()
                || !p
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        }) {
            return Err(bad("expected os[/arch[/variant]]"));
        }
        let (os, arch, variant) = match parts[..] {
            [one] => {
                let os = normalize_os(one);
                if KNOWN_OS.contains(&os.as_str()) {
                    (os, host_arch().to_owned(), String::new())
                } else {
                    let (arch, variant) = normalize_arch(one, "");
                    if !KNOWN_ARCH.contains(&arch.as_str()) {
                        return Err(bad("unknown operating system or architecture"));
                    }
                    (std::env::consts::OS.to_owned(), arch, variant)
                }
            }
            [os, arch] => (normalize_os(os), arch.to_owned(), String::new()),
            [os, arch, variant] => (normalize_os(os), arch.to_owned(), variant.to_owned()),
            _ => return Err(bad("expected os[/arch[/variant]]")),
        };
        let (architecture, variant) = normalize_arch(&arch, &variant);
        Ok(PlatformSpec {
            os,
            architecture,
            variant,
        })
    }

    /// Whether an index entry's `platform` is this one.
    pub fn matches(&self, p: &Platform) -> bool {
        let (arch, variant) = normalize_arch(&p.architecture, p.variant.as_deref().unwrap_or(""));
        normalize_os(&p.os) == self.os && arch == self.architecture && variant == self.variant
    }
}

impl std::fmt::Display for PlatformSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn platform(os: &str, arch: &str, variant: Option<&str>) -> Platform {
        Platform {
            architecture: arch.into(),
            os: os.into(),
            variant: variant.map(str::to_owned),
            extra: serde_json::Map::new(),
        }
    }

    #[test]
    fn parses_and_normalises_like_containerd() {
        let p = |s: &str| PlatformSpec::parse(s).unwrap().to_string();
        assert_eq!(p("linux/amd64"), "linux/amd64");
        assert_eq!(p("Linux/x86_64"), "linux/amd64");
        assert_eq!(p("linux/aarch64"), "linux/arm64");
        assert_eq!(p("linux/arm64/v8"), "linux/arm64");
        assert_eq!(p("linux/arm"), "linux/arm/v7");
        assert_eq!(p("linux/armhf"), "linux/arm/v7");
        assert_eq!(p("linux/arm/6"), "linux/arm/v6");
        assert_eq!(p("linux"), format!("linux/{}", host_arch()));
        assert_eq!(p("arm64"), format!("{}/arm64", std::env::consts::OS));
        for bad in [
            "",
            "linux/",
            "a/b/c/d",
            "linux/*",
            "nosuchthing",
            "linux/amd 64",
        ] {
            assert!(
                matches!(
                    PlatformSpec::parse(bad),
                    Err(ImageError::InvalidPlatform { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn matches_after_normalising_both_sides() {
        let arm64 = PlatformSpec::parse("linux/arm64").unwrap();
        assert!(arm64.matches(&platform("linux", "arm64", None)));
        assert!(arm64.matches(&platform("linux", "arm64", Some("v8"))));
        assert!(!arm64.matches(&platform("linux", "amd64", None)));
        assert!(!arm64.matches(&platform("windows", "arm64", None)));
        let arm = PlatformSpec::parse("linux/arm").unwrap();
        assert!(arm.matches(&platform("linux", "arm", None)));
        assert!(arm.matches(&platform("linux", "arm", Some("v7"))));
        assert!(!arm.matches(&platform("linux", "arm", Some("v6"))));
    }
}
