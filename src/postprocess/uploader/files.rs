//! What an output stands for on the ComfyUI host: the file ComfyUI wrote ([`FileRef`]), its path
//! there, and the two outputs the uploader does not store: those refused for their names, and those
//! another task wrote (a stale cache entry).

use crate::comfy::names;
use crate::comfy::FileRef;
use crate::db::outputs::NewOutput;

/// The files to remove from the ComfyUI host once its outputs are dealt with. Temp outputs are left
/// alone: ComfyUI empties its temp folder at every start, and a fully cached prompt hands several
/// tasks the same temp file.
pub(super) fn output_files(outputs: &[(NewOutput, bool)]) -> Vec<(String, String)> {
    outputs
        .iter()
        .map(|(o, _)| o)
        .filter(|o| o.folder_type == "output" && !is_refused(o))
        .map(|o| (o.folder_type.clone(), comfy_path(o)))
        .collect()
}

/// The output's path as ComfyUI knows it (subfolder/filename).
pub(super) fn comfy_path(o: &NewOutput) -> String {
    file_ref(o).path()
}

/// The file ComfyUI wrote for an output.
pub(super) fn file_ref(o: &NewOutput) -> FileRef {
    FileRef {
        node_id: o.node_id.clone(),
        kind: o.kind.clone(),
        filename: o.filename.clone(),
        subfolder: o.subfolder.clone(),
        folder_type: o.folder_type.clone(),
    }
}

/// The record of an output whose names are refused: every name sanitized (bounded, no control
/// characters, so it is safe in any database and any log), an empty key, which no stored output has,
/// marking it refused.
pub(super) fn refused_output(raw: &FileRef, node_id: String, idx: i32) -> NewOutput {
    NewOutput {
        node_id,
        idx,
        kind: names::sanitize(&raw.kind),
        filename: names::sanitize(&raw.filename),
        subfolder: names::sanitize(&raw.subfolder),
        folder_type: names::sanitize(&raw.folder_type),
        content_type: "application/octet-stream".into(),
        storage_key: String::new(),
    }
}

/// Whether an output was refused for its names (see [`refused_output`]).
pub(super) fn is_refused(o: &NewOutput) -> bool {
    o.storage_key.is_empty()
}

/// An output that another task wrote: its subfolder is another task's (the per-task prefix is
/// `comfyd/<task_id>/...`), which only happens when ComfyUI served a stale cache entry.
pub(super) fn is_foreign(task_id: &str, o: &NewOutput) -> bool {
    let sub = o.subfolder.replace('\\', "/");
    match sub.strip_prefix("comfyd/") {
        Some(rest) => rest.split('/').next() != Some(task_id),
        None => false,
    }
}
