//! Self-description of a workflow: its params as JSON Schema (draft 2020-12), and the summary the
//! API lists.

use serde_json::{json, Map, Value};

use super::{Param, ParamKind, Workflow, MAX_SEED};

const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";

/// See [`Workflow::json_schema`].
pub(crate) fn json_schema(workflow: &Workflow) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for param in &workflow.params {
        properties.insert(param.name.clone(), param_schema(param));
        if param.required {
            required.push(Value::String(param.name.clone()));
        }
    }
    json!({
        "$schema": DRAFT_2020_12,
        "title": workflow.name,
        "description": workflow.description,
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

/// See [`Workflow::describe`].
pub(crate) fn describe(workflow: &Workflow) -> Value {
    json!({
        "name": workflow.name,
        "description": workflow.description,
        "params": json_schema(workflow),
        "outputs": workflow.output_nodes,
    })
}

fn param_schema(param: &Param) -> Value {
    let mut schema = Map::new();
    let mut description = param.description.clone();
    let mut note = |text: &str| {
        if !description.is_empty() {
            description.push(' ');
        }
        description.push_str(text);
    };
    match &param.kind {
        ParamKind::String { max_length } => {
            schema.insert("type".into(), "string".into());
            if let Some(max) = max_length {
                schema.insert("maxLength".into(), (*max).into());
            }
        }
        ParamKind::Integer { min, max } => {
            schema.insert("type".into(), "integer".into());
            if let Some(min) = min {
                schema.insert("minimum".into(), (*min).into());
            }
            if let Some(max) = max {
                schema.insert("maximum".into(), (*max).into());
            }
        }
        ParamKind::Float { min, max } => {
            schema.insert("type".into(), "number".into());
            if let Some(min) = min {
                schema.insert("minimum".into(), (*min).into());
            }
            if let Some(max) = max {
                schema.insert("maximum".into(), (*max).into());
            }
        }
        ParamKind::Boolean => {
            schema.insert("type".into(), "boolean".into());
        }
        ParamKind::Enum { values } => {
            schema.insert("type".into(), "string".into());
            schema.insert("enum".into(), values.clone().into());
        }
        ParamKind::Image => {
            schema.insert("type".into(), "string".into());
            note("(an image: base64, a data:image/...;base64, URL, or an http(s) URL; PNG, JPEG, WEBP or GIF)");
        }
        ParamKind::Seed => {
            schema.insert("type".into(), "integer".into());
            schema.insert("minimum".into(), 0.into());
            schema.insert("maximum".into(), MAX_SEED.into());
            if param.default.is_none() && !param.required {
                note("(random when omitted)");
            }
        }
    }
    if let Some(default) = &param.default {
        schema.insert("default".into(), default.clone());
    }
    if !description.is_empty() {
        schema.insert("description".into(), description.into());
    }
    Value::Object(schema)
}
