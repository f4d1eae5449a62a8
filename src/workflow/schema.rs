//! Self-description of a workflow: its params as JSON Schema (draft 2020-12), and the summary the
//! API lists.

use serde_json::{json, Map, Value};

use super::{Param, ParamKind, Workflow, MAX_SEED};

const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";

/// See [`Workflow::json_schema`].
pub(crate) fn json_schema(workflow: &Workflow) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    // A param with aliases is given under exactly one of its names (required) or at most one.
    let mut one_name = Vec::new();
    for param in &workflow.params {
        let mut schema = param_schema(param);
        if !param.aliases.is_empty() {
            schema["x-aliases"] = json!(param.aliases);
        }
        properties.insert(param.name.clone(), schema.clone());
        for alias in &param.aliases {
            let mut alias_schema = schema.clone();
            if let Some(obj) = alias_schema.as_object_mut() {
                obj.remove("x-aliases");
                obj.insert("x-alias-of".into(), param.name.clone().into());
                obj.insert(
                    "description".into(),
                    format!("Another name for `{}`; send one of them.", param.name).into(),
                );
            }
            properties.insert(alias.clone(), alias_schema);
        }
        let names: Vec<Value> = std::iter::once(&param.name)
            .chain(&param.aliases)
            .map(|n| json!({ "required": [n] }))
            .collect();
        if param.aliases.is_empty() {
            if param.required {
                required.push(Value::String(param.name.clone()));
            }
        } else if param.required {
            one_name.push(json!({ "oneOf": names }));
        } else {
            one_name.push(json!({ "not": { "anyOf": pairs(param) } }));
        }
    }
    for name in &workflow.ignored {
        properties.insert(
            name.clone(),
            json!({
                "description": "Accepted for clients of an earlier version of this workflow, and ignored.",
                "x-ignored": true,
            }),
        );
    }
    let mut schema = json!({
        "$schema": DRAFT_2020_12,
        "title": workflow.name,
        "description": workflow.description,
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    });
    if !one_name.is_empty() {
        schema["allOf"] = Value::Array(one_name);
    }
    schema
}

/// `{"required": [a, b]}` for every two names of a param: none may hold.
fn pairs(param: &Param) -> Vec<Value> {
    let names: Vec<&String> = std::iter::once(&param.name).chain(&param.aliases).collect();
    let mut out = Vec::new();
    for (i, a) in names.iter().enumerate() {
        for b in &names[i + 1..] {
            out.push(json!({ "required": [a, b] }));
        }
    }
    out
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
