//! The one rule for names that come from a ComfyUI server: output filenames, subfolders and folder
//! types (from `executed` events and `/history`), and the `name`/`subfolder`/`type` that
//! `/upload/image` answers. A server is untrusted input (compromised, spoofed, or a buggy custom node),
//! and these names become local paths, S3 keys, fallback files, cleanup prompts and `/view` queries, so
//! each is checked here before it touches any of them.
//!
//! A valid name is a relative path of plain segments: no `..` or `.` segment, no empty segment, not
//! absolute, no NUL or other control character, no drive letter or `:` (Windows streams), at most
//! [`MAX_SEGMENT_BYTES`] per segment and [`MAX_PATH_BYTES`] in all. A subfolder may use `\` as its
//! separator (ComfyUI on Windows reports `comfyd\<task>`); it is normalised to `/`, and its segments
//! are then held to the same rule, so `a\..\..\x` is refused like `a/../../x`. A filename is one
//! segment: a `/` or `\` in it is refused. The folder type is one of `output`, `temp`, `input`.

use std::fmt;

use super::protocol::FileRef;

/// Longest segment (file or folder name) accepted, in bytes (the usual filesystem limit).
pub const MAX_SEGMENT_BYTES: usize = 255;
/// Longest subfolder + filename accepted, in bytes (S3 refuses keys above 1024).
pub const MAX_PATH_BYTES: usize = 1024;
/// Longest node id accepted in an output (it becomes part of a storage key when names collide).
pub const MAX_NODE_ID_BYTES: usize = 64;
/// How much of a refused value an error message shows.
const SHOWN_CHARS: usize = 120;

/// The folder types ComfyUI serves from.
pub const FOLDER_TYPES: [&str; 3] = ["output", "temp", "input"];

/// A name from a ComfyUI server that comfyd refuses to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameError {
    /// Which name: `filename`, `subfolder`, `type`, `node`, or the upload answer's `name`.
    pub field: &'static str,
    /// The value as ComfyUI sent it, escaped and shortened (safe to log, store and show).
    pub shown: String,
    /// Why it is refused.
    pub reason: &'static str,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ComfyUI reported an unsafe {} {}: {}",
            self.field, self.shown, self.reason
        )
    }
}

impl std::error::Error for NameError {}

/// A value for messages, logs and the database: quoted, with control characters, quotes and
/// backslashes escaped (so no NUL ever reaches a database), and cut after [`SHOWN_CHARS`]
/// characters with the full length given.
pub fn escape(value: &str) -> String {
    let mut shown: String = value.chars().take(SHOWN_CHARS).collect();
    let cut = shown.len() < value.len();
    shown = shown.escape_debug().to_string();
    if cut {
        format!("\"{shown}\"… ({} bytes)", value.len())
    } else {
        format!("\"{shown}\"")
    }
}

/// A refused value as it is recorded (an output's filename, subfolder, ...): escaped as by
/// [`escape`], without the quotes, and cut after [`SHOWN_CHARS`] characters (marked `…`).
pub fn sanitize(value: &str) -> String {
    let shown: String = value.chars().take(SHOWN_CHARS).collect();
    let cut = shown.len() < value.len();
    let mut out = shown.escape_debug().to_string();
    if cut {
        out.push('…');
    }
    out
}

/// A node id as recorded: itself when it is a plain one, else [`sanitize`]d.
pub fn shown_node_id(node: &str) -> String {
    match check_node_id(node) {
        Ok(()) => node.to_string(),
        Err(_) => sanitize(node),
    }
}

fn refuse(field: &'static str, value: &str, reason: &'static str) -> NameError {
    NameError {
        field,
        shown: escape(value),
        reason,
    }
}

/// Checks one path segment (a file or folder name).
fn check_segment(field: &'static str, whole: &str, seg: &str) -> Result<(), NameError> {
    match seg {
        "" => {
            return Err(refuse(
                field,
                whole,
                "empty path segment (absolute path or `//`)",
            ))
        }
        "." | ".." => return Err(refuse(field, whole, "`.` or `..` path segment")),
        _ => {}
    }
    if seg.len() > MAX_SEGMENT_BYTES {
        return Err(refuse(field, whole, "a path segment longer than 255 bytes"));
    }
    if seg.chars().any(char::is_control) {
        return Err(refuse(field, whole, "NUL or another control character"));
    }
    if seg.contains(':') {
        return Err(refuse(field, whole, "a drive letter or `:`"));
    }
    if seg.contains('\\') || seg.contains('/') {
        return Err(refuse(field, whole, "a path separator inside a name"));
    }
    Ok(())
}

/// Checks a filename: exactly one plain segment.
pub fn check_filename(field: &'static str, name: &str) -> Result<(), NameError> {
    check_segment(field, name, name)
}

/// Checks a subfolder (empty for none) and returns it with `/` as its only separator.
pub fn check_subfolder(sub: &str) -> Result<String, NameError> {
    if sub.is_empty() {
        return Ok(String::new());
    }
    if sub.len() > MAX_PATH_BYTES {
        return Err(refuse("subfolder", sub, "longer than 1024 bytes"));
    }
    let normal = sub.replace('\\', "/");
    for seg in normal.split('/') {
        check_segment("subfolder", sub, seg)?;
    }
    Ok(normal)
}

/// Checks a folder type: `output`, `temp` or `input`.
pub fn check_folder_type(kind: &str) -> Result<(), NameError> {
    if FOLDER_TYPES.contains(&kind) {
        Ok(())
    } else {
        Err(refuse("type", kind, "not one of output, temp, input"))
    }
}

/// Checks a node id: short, and made of the characters ComfyUI uses (`9`, `12:5` in subgraphs).
fn check_node_id(node: &str) -> Result<(), NameError> {
    let ok = !node.is_empty()
        && node.len() <= MAX_NODE_ID_BYTES
        && node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.'))
        && node != "."
        && node != "..";
    if ok {
        Ok(())
    } else {
        Err(refuse("node", node, "not a plain node id"))
    }
}

/// Checks every name of an output file and returns it normalised (subfolder with `/`).
pub fn check_file(f: &FileRef) -> Result<FileRef, NameError> {
    check_node_id(&f.node_id)?;
    check_folder_type(&f.folder_type)?;
    check_filename("filename", &f.filename)?;
    let subfolder = check_subfolder(&f.subfolder)?;
    if subfolder.len() + 1 + f.filename.len() > MAX_PATH_BYTES {
        return Err(refuse(
            "filename",
            &f.filename,
            "subfolder and filename longer than 1024 bytes",
        ));
    }
    // The list name (images, gifs, ...) is only stored and shown; it must still be printable.
    if f.kind.len() > MAX_SEGMENT_BYTES || f.kind.chars().any(char::is_control) {
        return Err(refuse("output kind", &f.kind, "not a plain name"));
    }
    Ok(FileRef {
        subfolder,
        ..f.clone()
    })
}

/// Checks what `/upload/image` answered and returns the value a LoadImage input takes
/// (`subfolder/name`, or `name`).
pub fn check_upload_answer(
    name: &str,
    subfolder: &str,
    kind: Option<&str>,
) -> Result<String, NameError> {
    check_filename("upload name", name)?;
    let sub = check_subfolder(subfolder)?;
    if let Some(kind) = kind {
        check_folder_type(kind)?;
    }
    let path = if sub.is_empty() {
        name.to_string()
    } else {
        format!("{sub}/{name}")
    };
    if path.len() > MAX_PATH_BYTES {
        return Err(refuse("upload name", name, "longer than 1024 bytes"));
    }
    Ok(path)
}

/// Checks a path relative to a ComfyUI folder (what the cleaner node is asked to delete).
pub fn check_relative_path(path: &str) -> Result<(), NameError> {
    if path.is_empty() {
        return Err(refuse("path", path, "empty"));
    }
    let normal = check_subfolder(path)?;
    if normal.len() > MAX_PATH_BYTES {
        return Err(refuse("path", path, "longer than 1024 bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(filename: &str, subfolder: &str, kind: &str) -> FileRef {
        FileRef {
            node_id: "9".into(),
            kind: "images".into(),
            filename: filename.into(),
            subfolder: subfolder.into(),
            folder_type: kind.into(),
        }
    }

    #[test]
    fn accepts_what_comfyui_really_reports() {
        for (name, sub, kind) in [
            ("text2img_00001_.png", "", "output"),
            (
                "x_00001_.png",
                "comfyd/3f6d0a4e-0000-4000-8000-000000000001",
                "output",
            ),
            ("ComfyUI_temp_abcde_00001_.png", "", "temp"),
            ("in put (1).png", "", "input"),
            ("..hidden..png", "a..b", "output"),
            ("日本語.png", "sub folder", "output"),
        ] {
            assert!(
                check_file(&file(name, sub, kind)).is_ok(),
                "{name} {sub} {kind}"
            );
        }
        let mut subgraph = file("a.png", "", "output");
        subgraph.node_id = "12:5".into();
        assert!(check_file(&subgraph).is_ok());
    }

    #[test]
    fn windows_subfolders_are_normalised() {
        let f = check_file(&file("a.png", "comfyd\\task\\x", "output")).expect("valid");
        assert_eq!(f.subfolder, "comfyd/task/x");
    }

    #[test]
    fn refuses_every_unsafe_filename() {
        let long = "a".repeat(2000) + ".png";
        for (bad, why) in [
            ("../../x", "separator"),
            ("..", "`..`"),
            (".", "`..`"),
            ("", "empty"),
            ("/etc/x", "separator"),
            ("a\\..\\..\\x", "separator"),
            ("x\0.png", "control"),
            ("x\n.png", "control"),
            ("x\u{7f}.png", "control"),
            ("x\u{85}.png", "control"),
            ("C:x.png", "drive"),
            ("x.png:stream", "drive"),
            (long.as_str(), "255"),
        ] {
            let err = check_file(&file(bad, "", "output")).expect_err(bad);
            assert_eq!(err.field, "filename", "{bad:?}");
            assert!(err.reason.contains(why), "{bad:?}: {err}");
            assert!(!err.to_string().contains('\0'), "{err}");
        }
    }

    #[test]
    fn refuses_every_unsafe_subfolder() {
        for bad in [
            "..",
            "../..",
            "a/../../x",
            "a\\..\\..\\x",
            "/etc",
            "\\\\host\\share",
            "C:\\Windows",
            "C:",
            "a//b",
            "a/",
            "./a",
            "a/\0",
            "a\tb",
        ] {
            let err = check_file(&file("x.png", bad, "output")).expect_err(bad);
            assert_eq!(err.field, "subfolder", "{bad:?}");
        }
        let deep = vec!["d".repeat(200); 6].join("/");
        assert!(check_subfolder(&deep).is_err(), "over 1024 bytes in all");
        let near = vec!["d".repeat(200); 5].join("/");
        let err = check_file(&file(&"f".repeat(100), &near, "output")).expect_err("total");
        assert!(err.reason.contains("1024"), "{err}");
    }

    #[test]
    fn refuses_unknown_folder_types_and_odd_node_ids() {
        for bad in ["../x", "", "OUTPUT", "output/..", "models"] {
            let err = check_file(&file("x.png", "", bad)).expect_err(bad);
            assert_eq!(err.field, "type");
        }
        for node in ["", "../9", "9/1", "a\0", &"9".repeat(65)] {
            let mut f = file("x.png", "", "output");
            f.node_id = node.into();
            assert_eq!(check_file(&f).expect_err(node).field, "node");
        }
        let mut f = file("x.png", "", "output");
        f.kind = "images\0".into();
        assert!(check_file(&f).is_err());
    }

    #[test]
    fn upload_answers_are_checked_and_joined() {
        assert_eq!(
            check_upload_answer("in.png", "", Some("input")).as_deref(),
            Ok("in.png")
        );
        assert_eq!(
            check_upload_answer("in.png", "sub\\dir", None).as_deref(),
            Ok("sub/dir/in.png")
        );
        for (name, sub, kind) in [
            ("../../x.png", "", Some("input")),
            ("/etc/x", "", None),
            ("x.png", "../..", None),
            ("x\0.png", "", None),
            ("x.png", "", Some("../x")),
        ] {
            assert!(
                check_upload_answer(name, sub, kind).is_err(),
                "{name} {sub}"
            );
        }
    }

    #[test]
    fn cleanup_paths_stay_inside_their_folder() {
        assert!(check_relative_path("comfyd/abc/out_00001_.png").is_ok());
        assert!(check_relative_path("in.png").is_ok());
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "C:\\x",
            "\\\\host\\x",
            "./a",
            "a\0",
        ] {
            assert!(check_relative_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn escaped_values_are_quoted_bounded_and_free_of_control_characters() {
        assert_eq!(escape("../../x"), "\"../../x\"");
        assert_eq!(escape("a\0b\\c\"d"), "\"a\\0b\\\\c\\\"d\"");
        let long = escape(&"a".repeat(2000));
        assert!(long.len() < 200, "{long}");
        assert!(long.ends_with("(2000 bytes)"), "{long}");
        assert!(!escape("x\u{1b}[31m").contains('\u{1b}'));
        assert_eq!(sanitize("../../x"), "../../x");
        assert_eq!(sanitize("a\0b"), "a\\0b");
        assert!(sanitize(&"a".repeat(2000)).ends_with('…'));
        assert_eq!(shown_node_id("12:5"), "12:5");
        assert_eq!(shown_node_id("9\0"), "9\\0");
    }
}
