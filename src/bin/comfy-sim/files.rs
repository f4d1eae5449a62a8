//! File naming rules of ComfyUI: uploads (`image_upload`), `/view` lookups and the
//! `<prefix>_<counter>_.png` names of SaveImage/PreviewImage (`folder_paths.get_save_image_path`).

use std::path::{Component, Path, PathBuf};

/// Why a path was refused.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("path escapes its folder")]
    Escapes,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Joins `rel` (possibly with `/`) under `base`, refusing absolute paths and `..`.
pub fn join_inside(base: &Path, rel: &str) -> Result<PathBuf, PathError> {
    let rel_path = Path::new(rel);
    let mut out = base.to_path_buf();
    for c in rel_path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => return Err(PathError::Escapes),
        }
    }
    Ok(out)
}

/// Where an upload lands and the name it is reported under.
pub struct UploadTarget {
    pub path: PathBuf,
    pub name: String,
    /// Same name and same bytes already there: nothing to write.
    pub duplicate: bool,
}

/// Picks the upload name: `overwrite` keeps the name; otherwise identical bytes reuse the
/// existing file and different bytes get `name (1).ext`, `name (2).ext`, ...
pub fn upload_target(
    dir: &Path,
    filename: &str,
    bytes: &[u8],
    overwrite: bool,
) -> Result<UploadTarget, PathError> {
    if filename.is_empty() || filename.contains('/') || filename.contains('\\') || filename == ".."
    {
        return Err(PathError::Escapes);
    }
    let mut name = filename.to_string();
    let mut path = dir.join(&name);
    if overwrite {
        return Ok(UploadTarget {
            path,
            name,
            duplicate: false,
        });
    }
    let (stem, ext) = match filename.rfind('.') {
        Some(i) if i > 0 => (&filename[..i], &filename[i..]),
        _ => (filename, ""),
    };
    let mut i = 1;
    while path.exists() {
        if std::fs::read(&path)
            .map(|old| old == bytes)
            .unwrap_or(false)
        {
            return Ok(UploadTarget {
                path,
                name,
                duplicate: true,
            });
        }
        name = format!("{stem} ({i}){ext}");
        path = dir.join(&name);
        i += 1;
    }
    Ok(UploadTarget {
        path,
        name,
        duplicate: false,
    })
}

/// The folder, base name, first counter and subfolder for a save prefix.
pub struct SavePath {
    pub folder: PathBuf,
    pub filename: String,
    pub counter: u64,
    pub subfolder: String,
}

/// ComfyUI's `get_save_image_path`: a `/` in the prefix makes the subfolder, and the counter
/// continues after the highest `<filename>_<digits>_...` already in that folder.
pub fn save_path(base: &Path, prefix: &str) -> Result<SavePath, PathError> {
    let normalized: Vec<&str> = prefix
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if prefix.starts_with('/') || normalized.contains(&"..") {
        return Err(PathError::Escapes);
    }
    let (filename, sub) = match normalized.split_last() {
        Some((last, rest)) => (last.to_string(), rest.join("/")),
        None => (String::new(), String::new()),
    };
    let folder = join_inside(base, &sub)?;
    let mut counter = 1;
    match std::fs::read_dir(&folder) {
        Ok(entries) => {
            let max = entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter_map(|n| counter_of(&n, &filename))
                .max();
            if let Some(m) = max {
                counter = m + 1;
            }
        }
        Err(_) => std::fs::create_dir_all(&folder)?,
    }
    Ok(SavePath {
        folder,
        filename,
        counter,
        subfolder: sub,
    })
}

/// The counter in `<filename>_<digits>_...`, as ComfyUI's `map_filename` reads it.
fn counter_of(name: &str, filename: &str) -> Option<u64> {
    let prefix_len = filename.len();
    let head = name.get(..prefix_len + 1)?;
    if !head.ends_with('_') || !head[..prefix_len].eq_ignore_ascii_case(filename) {
        return None;
    }
    let rest = &name[prefix_len + 1..];
    Some(
        rest.split('_')
            .next()
            .and_then(|d| d.parse::<u64>().ok())
            .unwrap_or(0),
    )
}

/// Top-level image files of the input dir, sorted (LoadImage's combo list).
pub fn list_input_images(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| {
                    let l = n.to_ascii_lowercase();
                    [".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp"]
                        .iter()
                        .any(|x| l.ends_with(x))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_counter_continues_after_existing_files_and_nested_prefix_makes_subfolder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sp = save_path(dir.path(), "comfyd/TASK/out").expect("path");
        assert_eq!(sp.subfolder, "comfyd/TASK");
        assert_eq!((sp.filename.as_str(), sp.counter), ("out", 1));
        std::fs::write(sp.folder.join("out_00001_.png"), b"x").expect("write");
        std::fs::write(sp.folder.join("out_00007_.png"), b"x").expect("write");
        std::fs::write(sp.folder.join("outer_00009_.png"), b"x").expect("write");
        assert_eq!(
            save_path(dir.path(), "comfyd/TASK/out")
                .expect("path")
                .counter,
            8
        );
        assert!(save_path(dir.path(), "../up").is_err());
        assert!(save_path(dir.path(), "/abs/x").is_err());
    }

    #[test]
    fn upload_names_follow_comfyui() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.png"), b"one").expect("write");
        assert!(
            upload_target(dir.path(), "a.png", b"one", false)
                .expect("t")
                .duplicate
        );
        assert_eq!(
            upload_target(dir.path(), "a.png", b"two", false)
                .expect("t")
                .name,
            "a (1).png"
        );
        assert_eq!(
            upload_target(dir.path(), "a.png", b"two", true)
                .expect("t")
                .name,
            "a.png"
        );
    }
}
