//! The file a core is written to before it is complete: invisible until [`Staging::publish`].
//!
//! Where the filesystem supports `O_TMPFILE` the file has no name at all while it is written, so
//! nothing is left behind even if the capture itself is killed (the agent OOM-killed on a node that
//! is short of memory is a real case). Elsewhere it is a hidden `.NAME.XXXX.partial` temporary file,
//! removed on every error path.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::AtFlags;

pub(crate) struct Staging {
    file: File,
    /// Set when `O_TMPFILE` was not available.
    named: Option<tempfile::NamedTempFile>,
}

impl Staging {
    /// A new, empty, mode-0600 file in `dir`; `hint` names the temporary file where one is needed.
    pub fn create(dir: &Path, hint: &str) -> io::Result<Staging> {
        let unnamed = OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE)
            .open(dir);
        match unnamed {
            Ok(file) => Ok(Staging { file, named: None }),
            // Missing directory, no permission, full disk: the same for any kind of file.
            Err(e) if !tmpfile_unsupported(&e) => Err(e),
            Err(_) => {
                // tempfile creates 0600 files and removes them on drop.
                let named = tempfile::Builder::new()
                    .prefix(&format!(".{hint}."))
                    .suffix(".partial")
                    .tempfile_in(dir)?;
                Ok(Staging {
                    file: named.as_file().try_clone()?,
                    named: Some(named),
                })
            }
        }
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// A path that opens this same file (to reopen it with other flags, such as `O_DIRECT`).
    pub fn path(&self) -> PathBuf {
        match &self.named {
            Some(n) => n.path().to_owned(),
            None => PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd())),
        }
    }

    /// Give the complete file its name. Without `overwrite`, an existing `output` is an
    /// `AlreadyExists` error and is left alone.
    pub fn publish(self, output: &Path, overwrite: bool) -> io::Result<()> {
        match self.named {
            Some(named) if overwrite => named.persist(output).map(drop).map_err(|e| e.error),
            Some(named) => named
                .persist_noclobber(output)
                .map(drop)
                .map_err(|e| e.error),
            None => {
                let me = self.path();
                if !overwrite {
                    // link(2) never replaces an existing name.
                    return link(&me, output);
                }
                // Link under a temporary name, then rename over the output atomically.
                let dir = match output.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                let name = output
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(0);
                let temp = dir.join(format!(".{name}.{}.{nanos}.partial", std::process::id()));
                link(&me, &temp)?;
                std::fs::rename(&temp, output).inspect_err(|_| {
                    let _ = std::fs::remove_file(&temp);
                })
            }
        }
    }
}

/// The error says the filesystem (or kernel) has no `O_TMPFILE`, not that the file cannot be made.
fn tmpfile_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::EINVAL)
    )
}

fn link(from: &Path, to: &Path) -> io::Result<()> {
    nix::unistd::linkat(None, from, None, to, AtFlags::AT_SYMLINK_FOLLOW).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn invisible_until_published_and_never_clobbers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("x.core");
        let s = Staging::create(dir.path(), "x.core").expect("create");
        s.file().write_all(b"core").expect("write");
        s.publish(&out, false).expect("publish");
        assert_eq!(std::fs::read(&out).expect("read"), b"core");
        assert_eq!(
            std::fs::metadata(&out).expect("stat").permissions().mode() & 0o777,
            0o600
        );

        let s = Staging::create(dir.path(), "x.core").expect("create");
        s.file().write_all(b"new").expect("write");
        let e = s.publish(&out, false).expect_err("exists");
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&out).expect("read"), b"core");

        let s = Staging::create(dir.path(), "x.core").expect("create");
        s.file().write_all(b"new").expect("write");
        s.publish(&out, true).expect("overwrite");
        assert_eq!(std::fs::read(&out).expect("read"), b"new");

        // A dropped staging file leaves nothing.
        let s = Staging::create(dir.path(), "y.core").expect("create");
        s.file().write_all(b"partial").expect("write");
        drop(s);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["x.core"]);
    }
}
