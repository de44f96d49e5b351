//! Image → local command mapping (`tests/nodesim/images.yaml`).
//!
//! There is no container runtime: an image reference only selects what runs. An entry gives the image's
//! entrypoint (used when the container has no `command`, like Docker's ENTRYPOINT+CMD) and aliases for
//! program names that a pod spec may use (`python` → the host's interpreter). `${VAR}` in any value is
//! taken from nodesim's environment, so the project's own binary is found wherever the build put it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parse {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
}

/// Why a container cannot be started; the reason goes into the waiting state as the kubelet's would.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ResolveError {
    /// Reported as `ErrImagePull`, then `ImagePullBackOff`.
    #[error("image {0:?} is not in the nodesim image map (tests/nodesim/images.yaml)")]
    UnknownImage(String),
    /// Reported as `CreateContainerConfigError`.
    #[error("image {image:?} needs environment variable {var} in nodesim's environment")]
    MissingVar { image: String, var: String },
    /// Reported as `CreateContainerError`.
    #[error("image {image:?} has no entrypoint and the container sets no command")]
    NoCommand { image: String },
}

#[derive(Debug, Clone, Deserialize)]
pub struct ImageMap {
    pub images: Vec<ImageEntry>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ImageEntry {
    /// Glob on the image reference: `*` matches any run of characters (`python:*`, `*/leakhunt:*`).
    #[serde(rename = "match")]
    pub pattern: String,
    /// argv prefix used when the container has no `command`.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// Program name → host path, applied to argv[0].
    #[serde(default)]
    pub programs: BTreeMap<String, String>,
}

impl ImageMap {
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        serde_yaml::from_str(&text).map_err(|source| Error::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The argv a container runs: `command` (or the entrypoint) followed by `args`, argv[0] mapped.
    pub fn resolve(
        &self,
        image: &str,
        command: &[String],
        args: &[String],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<String>, ResolveError> {
        let entry = self
            .images
            .iter()
            .find(|e| glob_match(&e.pattern, image))
            .ok_or_else(|| ResolveError::UnknownImage(image.to_string()))?;
        let expand = |s: &str| {
            expand_vars(s, env).map_err(|var| ResolveError::MissingVar {
                image: image.to_string(),
                var,
            })
        };
        let mut argv: Vec<String> = if command.is_empty() {
            entry
                .entrypoint
                .iter()
                .map(|s| expand(s))
                .collect::<Result<_, _>>()?
        } else {
            command.to_vec()
        };
        argv.extend(args.iter().cloned());
        let Some(first) = argv.first_mut() else {
            return Err(ResolveError::NoCommand {
                image: image.to_string(),
            });
        };
        let name = first.rsplit('/').next().unwrap_or(first).to_string();
        if let Some(mapped) = entry
            .programs
            .get(&name)
            .or_else(|| entry.programs.get(&*first))
        {
            *first = expand(mapped)?;
        }
        Ok(argv)
    }
}

/// `*` matches any (possibly empty) run of characters; everything else literally.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, rest) = match parts.split_first() {
        Some(x) => x,
        None => return false,
    };
    let Some(mut remaining) = text.strip_prefix(first) else {
        return false;
    };
    let (last, middle) = match rest.split_last() {
        Some(x) => x,
        None => return true,
    };
    for part in middle {
        match remaining.find(part) {
            Some(i) => remaining = &remaining[i + part.len()..],
            None => return false,
        }
    }
    remaining.len() >= last.len() && remaining.ends_with(last)
}

/// Replaces `${VAR}`; an unset variable is returned as the error.
fn expand_vars(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let var = &after[..end];
        match env(var) {
            Some(v) if !v.is_empty() => out.push_str(&v),
            _ => return Err(var.to_string()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> ImageMap {
        serde_yaml::from_str(
            r#"
images:
  - match: "leakhunt:*"
    entrypoint: ["${LEAKHUNT_BIN}"]
    programs: {leakhunt: "${LEAKHUNT_BIN}"}
  - match: "python:*"
    entrypoint: ["python3"]
    programs: {python: python3}
"#,
        )
        .unwrap()
    }

    fn env(var: &str) -> Option<String> {
        (var == "LEAKHUNT_BIN").then(|| "/build/leakhunt".to_string())
    }

    #[test]
    fn globs() {
        assert!(glob_match("python:*", "python:3.12-slim"));
        assert!(glob_match("*/leakhunt:*", "ghcr.io/x/leakhunt:0.1"));
        assert!(!glob_match("python:*", "pythonista:1"));
        assert!(glob_match("busybox", "busybox"));
        assert!(!glob_match("busybox", "busybox:1"));
    }

    #[test]
    fn resolves_entrypoint_and_programs() {
        let m = map();
        let argv = m
            .resolve("leakhunt:dev", &[], &["agent".into()], &env)
            .unwrap();
        assert_eq!(argv, ["/build/leakhunt", "agent"]);
        let argv = m
            .resolve(
                "python:3.12",
                &["python".into(), "-c".into()],
                &["pass".into()],
                &env,
            )
            .unwrap();
        assert_eq!(argv, ["python3", "-c", "pass"]);
    }

    #[test]
    fn unknown_image_and_missing_var_are_errors() {
        let m = map();
        assert_eq!(
            m.resolve("nginx:1", &[], &[], &env),
            Err(ResolveError::UnknownImage("nginx:1".into()))
        );
        assert!(matches!(
            m.resolve("leakhunt:dev", &[], &[], &|_| None),
            Err(ResolveError::MissingVar { .. })
        ));
    }
}
