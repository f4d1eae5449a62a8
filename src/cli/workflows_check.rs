//! `comfyd workflows check [--backend URL]`: a readable report and an exit code for CI and operators.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::comfy::ComfyClient;
use crate::workflow::{check_against_object_info, WorkflowSet};

/// Prints the report; exit code 0 when every check passed, 1 otherwise.
pub async fn run(dir: &Path, backend: Option<&str>) -> ExitCode {
    let set = match WorkflowSet::load_dir(dir) {
        Ok(set) => set,
        Err(e) => {
            println!("FAILED: workflows in {} do not load:\n{e}", dir.display());
            return ExitCode::FAILURE;
        }
    };
    println!(
        "ok: {} workflows in {} load and match their graphs",
        set.len(),
        dir.display()
    );
    for w in set.iter() {
        println!("  - {} ({} params)", w.name, w.params.len());
    }
    let Some(url) = backend else {
        return ExitCode::SUCCESS;
    };
    let client = ComfyClient::new(url, Duration::from_secs(30));
    let info = match client.object_info().await {
        Ok(info) => info,
        Err(e) => {
            println!("FAILED: could not read {url}/object_info: {e}");
            return ExitCode::FAILURE;
        }
    };
    let problems = check_against_object_info(&set, &info);
    if problems.is_empty() {
        println!("ok: every node class and fixed value is offered by {url}");
        ExitCode::SUCCESS
    } else {
        println!("FAILED: {} problems against {url}:", problems.len());
        for p in &problems {
            println!("  - {p}");
        }
        ExitCode::FAILURE
    }
}
