//! The one way comfyd turns a relative name into a path it writes: [`join_under`]. Every folder
//! comfyd writes into (the local store, the fallback folder, the waiting input images) goes through
//! it, so a name that slipped past the checks upstream (`comfy::names`, `storage`'s key rule) still
//! cannot leave its root: lexically (no `..`, no absolute part, no NUL), and on disk (no symlink
//! under the root that leads out of it, followed or dangling).
//!
//! It checks the path as it is when called. A process that can plant symlinks in comfyd's own
//! folders between the check and the write is beyond what this guards against.

use std::io;
use std::path::{Component, Path, PathBuf};

/// A path that would leave its root.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// The relative part is not a plain relative path.
    #[error("refusing path {shown} under {root}: {reason}")]
    NotPlain {
        root: PathBuf,
        shown: String,
        reason: &'static str,
    },
    /// Something on disk under the root leads out of it.
    #[error("refusing path {path}: {reason}")]
    Escapes { path: PathBuf, reason: &'static str },
    /// The filesystem could not be asked.
    #[error("checking {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// `root/rel`, or an error when `rel` is not a plain relative path or the result would lead out of
/// `root` (through `..`, an absolute part, or a symlink on disk). Blocking: it asks the filesystem.
pub fn join_under(root: &Path, rel: &str) -> Result<PathBuf, PathError> {
    let not_plain = |reason| PathError::NotPlain {
        root: root.to_path_buf(),
        shown: crate::comfy::names::escape(rel),
        reason,
    };
    if rel.is_empty() {
        return Err(not_plain("empty"));
    }
    if rel.contains('\0') {
        return Err(not_plain("contains NUL"));
    }
    if rel.contains('\\') {
        return Err(not_plain("contains a backslash"));
    }
    let rel_path = Path::new(rel);
    if !rel_path
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
        || rel
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(not_plain("not a plain relative path"));
    }
    let path = root.join(rel_path);
    check_on_disk(root, &path)?;
    Ok(path)
}

/// `path` itself, when it is `root/<plain relative path>` and stays under `root` on disk (for paths
/// recorded earlier, such as an output's fallback path).
pub fn check_under(root: &Path, path: &Path) -> Result<PathBuf, PathError> {
    let rel = path.strip_prefix(root).map_err(|_| PathError::Escapes {
        path: path.to_path_buf(),
        reason: "not under its folder",
    })?;
    let rel = rel.to_str().ok_or(PathError::Escapes {
        path: path.to_path_buf(),
        reason: "not UTF-8",
    })?;
    join_under(root, rel)
}

/// Walks from the deepest part of `path` that exists up to `root`: whatever exists must resolve
/// (symlinks followed) to a place under the resolved root, and a symlink that resolves nowhere is
/// refused (a write would create its target, wherever it points).
fn check_on_disk(root: &Path, path: &Path) -> Result<(), PathError> {
    let io_err = |p: &Path, source| PathError::Io {
        path: p.to_path_buf(),
        source,
    };
    let real_root = match std::fs::canonicalize(root) {
        Ok(r) => r,
        // Nothing under a root that does not exist yet can lead anywhere.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(root, e)),
    };
    let mut probe = path;
    while probe != root {
        match std::fs::symlink_metadata(probe) {
            Ok(_) => {
                let real = std::fs::canonicalize(probe).map_err(|e| {
                    if e.kind() == io::ErrorKind::NotFound {
                        PathError::Escapes {
                            path: path.to_path_buf(),
                            reason: "a dangling symlink on the way",
                        }
                    } else {
                        io_err(probe, e)
                    }
                })?;
                if !real.starts_with(&real_root) {
                    return Err(PathError::Escapes {
                        path: path.to_path_buf(),
                        reason: "a symlink on the way leads out of its folder",
                    });
                }
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(probe, e)),
        }
        match probe.parent() {
            Some(parent) => probe = parent,
            None => break,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_relative_paths_join() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = join_under(dir.path(), "a/b/c.png").expect("plain");
        assert_eq!(p, dir.path().join("a/b/c.png"));
        // A root that does not exist yet is fine too.
        assert!(join_under(&dir.path().join("missing"), "x.png").is_ok());
    }

    #[test]
    fn lexical_escapes_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        for bad in [
            "",
            "../x",
            "a/../../x",
            "/etc/x",
            "a//b",
            "./a",
            "a/.",
            "a\\..\\x",
            "a\0b",
        ] {
            assert!(
                matches!(join_under(dir.path(), bad), Err(PathError::NotPlain { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn symlinks_out_of_the_root_are_refused_and_inside_ones_allowed() {
        let outside = tempfile::tempdir().expect("outside");
        let dir = tempfile::tempdir().expect("root");
        let root = dir.path();
        std::fs::create_dir_all(root.join("in/real")).expect("mkdir");
        std::os::unix::fs::symlink(outside.path(), root.join("out")).expect("symlink");
        std::os::unix::fs::symlink(root.join("in/real"), root.join("in/alias")).expect("symlink");
        std::os::unix::fs::symlink(outside.path().join("gone"), root.join("dangling"))
            .expect("symlink");
        std::os::unix::fs::symlink(outside.path().join("f.png"), root.join("in/real/f.png"))
            .expect("symlink");

        assert!(matches!(
            join_under(root, "out/x.png"),
            Err(PathError::Escapes { .. })
        ));
        assert!(matches!(
            join_under(root, "out/deeper/x.png"),
            Err(PathError::Escapes { .. })
        ));
        assert!(matches!(
            join_under(root, "dangling"),
            Err(PathError::Escapes { .. })
        ));
        assert!(matches!(
            join_under(root, "in/real/f.png"),
            Err(PathError::Escapes { .. })
        ));
        assert!(join_under(root, "in/alias/x.png").is_ok());
        assert!(join_under(root, "in/new/x.png").is_ok());
    }

    #[test]
    fn recorded_paths_are_checked_against_their_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("failed");
        assert!(check_under(&root, &root.join("output/a.png")).is_ok());
        assert!(check_under(&root, &dir.path().join("elsewhere.png")).is_err());
        assert!(check_under(&root, &root.join("output/../../x.png")).is_err());
    }
}
