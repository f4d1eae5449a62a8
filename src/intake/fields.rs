//! Reading the fields a submit's body holds besides the workflow's params (and, in the original
//! format, the workflow's name): their JSON types and ranges. Every problem is collected, so one
//! answer lists them all.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::outbound::Outbound;
use crate::workflow::{list_unknown, FieldError, Workflow, WorkflowSet};

/// The fields of a submit, once their JSON types are checked.
pub(super) struct Fields {
    pub client_task_id: Option<String>,
    pub client_callback_url: Option<String>,
    pub params: Value,
    pub priority: i32,
}

pub(super) fn field_err(field: &str, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The workflow the original format's `service_type` names, if it is loaded; otherwise the problem
/// is added to `errors`.
pub(super) fn service_type(
    set: &WorkflowSet,
    obj: &Map<String, Value>,
    errors: &mut Vec<FieldError>,
) -> Option<Arc<Workflow>> {
    match obj.get("service_type") {
        Some(Value::String(s)) => {
            let found = set.get(s).cloned();
            if found.is_none() {
                let known: Vec<String> = set.iter().map(|w| w.name.clone()).collect();
                // The name is the client's text, perhaps megabytes of it: echoed cut short.
                let shown: String = s.chars().take(64).collect();
                errors.push(field_err(
                    "service_type",
                    format!("unknown workflow {shown:?}; known: {}", known.join(", ")),
                ));
            }
            found
        }
        None | Some(Value::Null) => {
            errors.push(field_err("service_type", "required"));
            None
        }
        Some(_) => {
            errors.push(field_err("service_type", "must be a string"));
            None
        }
    }
}

/// Checks the fields both submit formats share; collects every problem in `errors`. Takes `params`
/// out of `obj` (it may hold megabytes of base64, not worth a copy).
pub(super) fn read_common(
    outbound: &Outbound,
    obj: &mut Map<String, Value>,
    extra: &[&str],
    errors: &mut Vec<FieldError>,
) -> Option<Fields> {
    const KNOWN: [&str; 4] = [
        "client_task_id",
        "client_callback_url",
        "params",
        "priority",
    ];
    let unknown = obj
        .keys()
        .filter(|key| !KNOWN.contains(&key.as_str()) && !extra.contains(&key.as_str()));
    list_unknown(unknown, "body", "unknown field", errors);
    let client_task_id = match obj.get("client_task_id") {
        None | Some(Value::Null) => None,
        // The original's clients sent numbers as well as strings.
        Some(Value::String(s)) if s.contains('\0') => {
            errors.extend(check_storable("client_task_id", s).err());
            None
        }
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 255 => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => {
            errors.push(field_err(
                "client_task_id",
                "must be a non-empty string of at most 255 characters",
            ));
            None
        }
    };
    let client_callback_url = match obj.get("client_callback_url") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) if s.contains('\0') => {
            errors.extend(check_storable("client_callback_url", s).err());
            None
        }
        Some(Value::String(s)) => match outbound.check_url(s) {
            Ok(_) => Some(s.clone()),
            Err(e) => {
                errors.push(field_err("client_callback_url", e.to_string()));
                None
            }
        },
        Some(_) => {
            errors.push(field_err(
                "client_callback_url",
                "must be an http(s) URL string",
            ));
            None
        }
    };
    let params = match obj.get_mut("params") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v.take(),
        Some(_) => {
            errors.push(field_err("params", "must be an object"));
            Value::Object(Map::new())
        }
    };
    let priority = match obj.get("priority") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => match n.as_i64().filter(|p| (-1000..=1000).contains(p)) {
            Some(p) => p as i32,
            None => {
                errors.push(field_err(
                    "priority",
                    "must be an integer from -1000 to 1000",
                ));
                0
            }
        },
        Some(_) => {
            errors.push(field_err(
                "priority",
                "must be an integer from -1000 to 1000",
            ));
            0
        }
    };
    Some(Fields {
        client_task_id,
        client_callback_url,
        params,
        priority,
    })
}

/// Refuses a text field that the databases cannot store: PostgreSQL's `text` takes no NUL
/// character (a client's id or URL containing one would otherwise fail its INSERT with a 500).
pub fn check_storable(field: &str, text: &str) -> Result<(), FieldError> {
    if text.contains('\0') {
        return Err(FieldError {
            field: field.into(),
            reason: "must not contain NUL characters".into(),
        });
    }
    Ok(())
}
