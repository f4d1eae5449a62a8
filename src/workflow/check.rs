//! Checking a loaded [`WorkflowSet`] against what a live backend offers (`GET /object_info`), for
//! `comfyd workflows check --backend URL`: node classes exist, fixed combo values in the graphs are
//! offered, enum params only offer values the backend accepts, numeric ranges fit.

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::{ParamKind, Workflow, WorkflowSet};

/// How many combo options to quote in one problem before eliding the rest.
const OPTIONS_SHOWN: usize = 8;

/// Every mismatch between `set` and the backend's `object_info`, one readable line each
/// (`<workflow>: ...`); empty when the backend can run every workflow.
pub fn check_against_object_info(set: &WorkflowSet, object_info: &Value) -> Vec<String> {
    let Some(classes) = object_info.as_object() else {
        return vec!["object_info is not a JSON object".into()];
    };
    set.iter()
        .flat_map(|workflow| check_workflow(workflow, classes))
        .collect()
}

fn check_workflow(workflow: &Workflow, classes: &Map<String, Value>) -> Vec<String> {
    let name = &workflow.name;
    let mut problems = Vec::new();
    let targeted: HashSet<(&str, &str)> = workflow
        .params
        .iter()
        .flat_map(|p| {
            p.targets
                .iter()
                .map(|t| (t.node.as_str(), t.input.as_str()))
        })
        .collect();

    for (id, node) in &workflow.graph {
        let class = node
            .get("class_type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(info) = classes.get(class) else {
            problems.push(format!(
                "{name}: node `{id}`: class `{class}` is not available on the backend"
            ));
            continue;
        };
        let empty = Map::new();
        let inputs = node
            .get("inputs")
            .and_then(Value::as_object)
            .unwrap_or(&empty);

        for required in section(info, "required").keys() {
            if !inputs.contains_key(required) {
                problems.push(format!(
                    "{name}: node `{id}` ({class}) lacks required input `{required}`"
                ));
            }
        }
        for (input, value) in inputs {
            // Param targets are checked through the param below; links are not literal values.
            if targeted.contains(&(id.as_str(), input.as_str())) || value.is_array() {
                continue;
            }
            let Some(options) = input_spec(info, input).and_then(combo_options) else {
                continue;
            };
            if !options.contains(value) {
                problems.push(format!(
                    "{name}: node `{id}` ({class}) input `{input}`: {value} is not offered by the backend ({})",
                    list_options(options)
                ));
            }
        }
    }

    for id in &workflow.output_nodes {
        let class = workflow
            .graph
            .get(id)
            .and_then(|n| n.get("class_type"))
            .and_then(Value::as_str);
        let info = class.and_then(|c| classes.get(c));
        // Only a class that says `output_node: false` is reported: older backends omit the flag.
        if info
            .and_then(|i| i.get("output_node"))
            .and_then(Value::as_bool)
            == Some(false)
        {
            problems.push(format!(
                "{name}: output node `{id}` ({}) is not an output node on the backend, so it produces no files",
                class.unwrap_or_default()
            ));
        }
    }

    for param in &workflow.params {
        for target in &param.targets {
            let Some(node) = workflow.graph.get(&target.node) else {
                continue;
            };
            let class = node
                .get("class_type")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let Some(info) = classes.get(class) else {
                continue;
            };
            let place = format!("node `{}` ({class}) input `{}`", target.node, target.input);
            let Some(spec) = input_spec(info, &target.input) else {
                problems.push(format!(
                    "{name}: param `{}`: {place} is not an input on the backend",
                    param.name
                ));
                continue;
            };
            check_param_against(workflow, param, spec, &place, &mut problems);
        }
    }
    problems
}

fn check_param_against(
    workflow: &Workflow,
    param: &super::Param,
    spec: &Value,
    place: &str,
    problems: &mut Vec<String>,
) {
    let (name, pname) = (&workflow.name, &param.name);
    match &param.kind {
        ParamKind::Enum { values } => {
            let Some(options) = combo_options(spec) else {
                return;
            };
            for value in values {
                if !options.iter().any(|o| o.as_str() == Some(value)) {
                    problems.push(format!(
                        "{name}: param `{pname}`: value {value:?} is not offered by {place} ({})",
                        list_options(options)
                    ));
                }
            }
        }
        ParamKind::Integer { min, max } => {
            let min = min.map(|m| m as f64);
            let max = max.map(|m| m as f64);
            check_range(name, pname, place, min, max, spec, problems);
        }
        ParamKind::Float { min, max } => {
            check_range(name, pname, place, *min, *max, spec, problems)
        }
        ParamKind::Seed => check_range(
            name,
            pname,
            place,
            Some(0.0),
            Some(super::MAX_SEED as f64),
            spec,
            problems,
        ),
        ParamKind::String { .. } | ParamKind::Boolean | ParamKind::Image => {}
    }
}

/// Reports a param range that lets clients send values the backend input would reject.
fn check_range(
    name: &str,
    pname: &str,
    place: &str,
    min: Option<f64>,
    max: Option<f64>,
    spec: &Value,
    problems: &mut Vec<String>,
) {
    let options = spec.get(1);
    let backend_min = options.and_then(|o| o.get("min")).and_then(Value::as_f64);
    let backend_max = options.and_then(|o| o.get("max")).and_then(Value::as_f64);
    if let Some(bmin) = backend_min {
        if min.is_none_or(|m| m < bmin) {
            problems.push(format!(
                "{name}: param `{pname}`: allows values below {bmin}, the minimum of {place}"
            ));
        }
    }
    if let Some(bmax) = backend_max {
        if max.is_none_or(|m| m > bmax) {
            problems.push(format!(
                "{name}: param `{pname}`: allows values above {bmax}, the maximum of {place}"
            ));
        }
    }
}

/// `info.input.<section>` as a map (empty when absent).
fn section<'a>(info: &'a Value, section: &str) -> &'a Map<String, Value> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    info.get("input")
        .and_then(|i| i.get(section))
        .and_then(Value::as_object)
        .unwrap_or_else(|| EMPTY.get_or_init(Map::new))
}

/// The spec `[type_or_options, {..}]` of one input, from any section.
fn input_spec<'a>(info: &'a Value, input: &str) -> Option<&'a Value> {
    ["required", "optional", "hidden"]
        .iter()
        .find_map(|s| section(info, s).get(input))
}

/// The options of a combo input: `[[values...], {..}]`, or the newer `["COMBO", {"options": [...]}]`.
fn combo_options(spec: &Value) -> Option<&Vec<Value>> {
    match spec.get(0)? {
        Value::Array(options) => Some(options),
        Value::String(kind) if kind == "COMBO" => spec.get(1)?.get("options")?.as_array(),
        _ => None,
    }
}

fn list_options(options: &[Value]) -> String {
    if options.is_empty() {
        return "it offers none".into();
    }
    let shown: Vec<String> = options
        .iter()
        .take(OPTIONS_SHOWN)
        .map(Value::to_string)
        .collect();
    let more = options.len().saturating_sub(OPTIONS_SHOWN);
    if more > 0 {
        format!("offered: {} and {more} more", shown.join(", "))
    } else {
        format!("offered: {}", shown.join(", "))
    }
}
