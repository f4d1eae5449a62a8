//! Rendering the graph for one task: resolved values set as JSON values at their targets, and a
//! per-task `filename_prefix` on every saving node.

use serde_json::Value;

use super::{Graph, Resolved, Workflow};

/// Prefix used when a graph's own prefix has no usable last segment (e.g. `""` or `"a/.."`).
const FALLBACK_PREFIX: &str = "ComfyUI";

/// See [`Workflow::render`].
pub(crate) fn render(workflow: &Workflow, resolved: &Resolved, task_id: &str) -> Graph {
    let mut graph = workflow.graph.clone();
    for param in &workflow.params {
        let Some(value) = resolved.values.get(&param.name) else {
            continue;
        };
        for target in &param.targets {
            // Values are placed as JSON values, never spliced into text, so no client string can
            // change the graph's structure.
            if let Some(inputs) = inputs_mut(&mut graph, &target.node) {
                inputs.insert(target.input.clone(), value.clone());
            }
        }
    }
    // After the values, so that a param aimed at `filename_prefix` is confined to the task's folder too.
    for node in graph.values_mut() {
        if let Some(Value::String(prefix)) = node
            .get_mut("inputs")
            .and_then(Value::as_object_mut)
            .and_then(|i| i.get_mut("filename_prefix"))
        {
            *prefix = task_prefix(prefix, task_id);
        }
    }
    graph
}

fn inputs_mut<'a>(
    graph: &'a mut Graph,
    node: &str,
) -> Option<&'a mut serde_json::Map<String, Value>> {
    graph.get_mut(node)?.get_mut("inputs")?.as_object_mut()
}

/// `comfyd/<task_id>/<last path segment of original>`: unique per task, and no `..` can climb out.
fn task_prefix(original: &str, task_id: &str) -> String {
    let last = original
        .rsplit(['/', '\\'])
        .find(|segment| !segment.is_empty())
        .filter(|segment| *segment != "." && *segment != "..")
        .unwrap_or(FALLBACK_PREFIX);
    format!("comfyd/{task_id}/{last}")
}
