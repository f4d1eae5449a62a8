//! Typed parameters of a workflow and the validation of a client's `params` object against them.
//!
//! The same value checks serve two callers: [`validate`] for requests, and the manifest loader for
//! defaults (so a default can never be something a client could not have sent).

use std::collections::BTreeMap;
use std::fmt;

use rand::Rng;
use serde::Serialize;
use serde_json::{Map, Value};

use super::image::{self, ImageParam};
use super::Target;

/// Largest seed accepted: 2^53 - 1, the largest integer every JSON client represents exactly.
pub const MAX_SEED: u64 = (1 << 53) - 1;

/// Longest piece of a client's value echoed back in an error reason.
const ECHO_MAX_CHARS: usize = 40;

/// Most unknown names listed one by one in an answer; the rest are counted in one more entry,
/// so that a body with a million made-up keys gets a short answer (and a short list to build).
pub const MAX_LISTED_ERRORS: usize = 20;

/// One parameter of a workflow, as declared in its manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// Name of the field in the client's params object.
    pub name: String,
    /// Other names the client may use instead (never more than one of them and `name` at once).
    pub aliases: Vec<String>,
    /// Human description (may be empty).
    pub description: String,
    /// Type and type-specific limits.
    pub kind: ParamKind,
    /// True when the client must send it.
    pub required: bool,
    /// Value used when the client leaves it out; already checked against `kind`.
    /// `None` for required params, image params and random seeds.
    pub default: Option<Value>,
    /// The graph inputs it sets (at least one).
    pub targets: Vec<Target>,
}

/// The type of a parameter, with its limits.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamKind {
    /// A JSON string, at most `max_length` characters (Unicode scalar values) when set.
    String {
        /// Longest accepted value, in characters.
        max_length: Option<usize>,
    },
    /// A JSON integer (no fraction, no string) within the bounds.
    Integer {
        /// Smallest accepted value.
        min: Option<i64>,
        /// Largest accepted value.
        max: Option<i64>,
    },
    /// A JSON number (integers accepted) within the bounds; set in the graph as a float.
    Float {
        /// Smallest accepted value.
        min: Option<f64>,
        /// Largest accepted value.
        max: Option<f64>,
    },
    /// `true` or `false`.
    Boolean,
    /// One of the listed strings.
    Enum {
        /// Accepted values (a ComfyUI combo's options, usually).
        values: Vec<String>,
    },
    /// An input image: base64 (plain or data URL) or an http(s) URL; see [`super::ImageSource`].
    Image,
    /// An integer in `0..=MAX_SEED`; a fresh random one when absent and no default is declared.
    Seed,
}

impl ParamKind {
    /// The manifest's name of the type.
    pub fn type_name(&self) -> &'static str {
        match self {
            ParamKind::String { .. } => "string",
            ParamKind::Integer { .. } => "integer",
            ParamKind::Float { .. } => "float",
            ParamKind::Boolean => "boolean",
            ParamKind::Enum { .. } => "enum",
            ParamKind::Image => "image",
            ParamKind::Seed => "seed",
        }
    }
}

/// The outcome of a successful [`validate`]: every value that will be set in the graph.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Resolved {
    /// Param name → value, including defaults and generated seeds (every non-image param).
    pub values: BTreeMap<String, Value>,
    /// Image params, in manifest order; the caller uploads them and calls [`super::set_image`].
    pub images: Vec<ImageParam>,
}

/// One rejected field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// Path of the field, like `params.steps` (or `params` for the object itself).
    pub field: String,
    /// What is wrong, readable by the client's developer.
    pub reason: String,
}

impl FieldError {
    /// Every field's `field: reason`, joined by `; `: the one-line form of a refusal.
    pub fn summary(fields: &[FieldError]) -> String {
        fields
            .iter()
            .map(|f| format!("{}: {}", f.field, f.reason))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn new(param: &str, reason: impl Into<String>) -> FieldError {
        FieldError {
            field: format!("params.{param}"),
            reason: reason.into(),
        }
    }
}

/// Why a value does not fit a param's kind.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Problem {
    /// Wrong JSON type; holds what was expected, e.g. "an integer".
    WrongType {
        expected: &'static str,
        got: &'static str,
    },
    /// Below the lower bound; both already formatted.
    Below { value: String, min: String },
    /// Above the upper bound; both already formatted.
    Above { value: String, max: String },
    /// A string longer than `max_length`.
    TooLong { chars: usize, max: usize },
    /// Not one of the enum's values.
    NotInEnum { value: String, values: Vec<String> },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::WrongType { expected, got } => write!(f, "expected {expected}, got {got}"),
            Problem::Below { value, min } => write!(f, "{value} is below min {min}"),
            Problem::Above { value, max } => write!(f, "{value} is above max {max}"),
            Problem::TooLong { chars, max } => {
                write!(f, "is {chars} characters long, above max_length {max}")
            }
            Problem::NotInEnum { value, values } => {
                write!(f, "{value} is not one of: {}", values.join(", "))
            }
        }
    }
}

/// Checks `value` (not null) against `kind` and returns the value to set in the graph.
/// Not for image params (see [`image::parse_image`]).
pub(crate) fn check_value(kind: &ParamKind, value: &Value) -> Result<Value, Problem> {
    match kind {
        ParamKind::String { max_length } => {
            let Value::String(s) = value else {
                return Err(wrong_type("a string", value));
            };
            let chars = s.chars().count();
            match max_length {
                Some(max) if chars > *max => Err(Problem::TooLong { chars, max: *max }),
                _ => Ok(value.clone()),
            }
        }
        ParamKind::Integer { min, max } => {
            let n = as_integer(value)?;
            if let Some(min) = min {
                if n < i128::from(*min) {
                    return Err(Problem::Below {
                        value: n.to_string(),
                        min: min.to_string(),
                    });
                }
            }
            if let Some(max) = max {
                if n > i128::from(*max) {
                    return Err(Problem::Above {
                        value: n.to_string(),
                        max: max.to_string(),
                    });
                }
            }
            Ok(value.clone())
        }
        ParamKind::Seed => {
            let n = as_integer(value)?;
            if n < 0 {
                return Err(Problem::Below {
                    value: n.to_string(),
                    min: "0".into(),
                });
            }
            if n > i128::from(MAX_SEED) {
                return Err(Problem::Above {
                    value: n.to_string(),
                    max: MAX_SEED.to_string(),
                });
            }
            Ok(value.clone())
        }
        ParamKind::Float { min, max } => {
            let Some(x) = value.as_f64() else {
                return Err(wrong_type("a number", value));
            };
            if let Some(min) = min {
                if x < *min {
                    return Err(Problem::Below {
                        value: x.to_string(),
                        min: min.to_string(),
                    });
                }
            }
            if let Some(max) = max {
                if x > *max {
                    return Err(Problem::Above {
                        value: x.to_string(),
                        max: max.to_string(),
                    });
                }
            }
            // Always a float in the graph, so `cfg: 7` and `cfg: 7.0` render the same.
            Ok(serde_json::Number::from_f64(x).map_or_else(|| value.clone(), Value::Number))
        }
        ParamKind::Boolean => match value {
            Value::Bool(_) => Ok(value.clone()),
            _ => Err(wrong_type("true or false", value)),
        },
        ParamKind::Enum { values } => {
            let Value::String(s) = value else {
                return Err(wrong_type("a string", value));
            };
            if values.iter().any(|v| v == s) {
                Ok(value.clone())
            } else {
                Err(Problem::NotInEnum {
                    value: echo(s),
                    values: values.clone(),
                })
            }
        }
        ParamKind::Image => Err(wrong_type("an image", value)),
    }
}

/// An integer JSON number, widened so that u64 values above i64::MAX still compare correctly.
fn as_integer(value: &Value) -> Result<i128, Problem> {
    match value {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(i128::from(i))
            } else if let Some(u) = n.as_u64() {
                Ok(i128::from(u))
            } else {
                Err(Problem::WrongType {
                    expected: "an integer",
                    got: "a number with a fraction",
                })
            }
        }
        _ => Err(wrong_type("an integer", value)),
    }
}

fn wrong_type(expected: &'static str, value: &Value) -> Problem {
    Problem::WrongType {
        expected,
        got: json_type_name(value),
    }
}

/// "a string", "an object", ... for error messages.
pub(crate) fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a number with a fraction",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A client string quoted for an error message, cut short so errors stay small.
fn echo(s: &str) -> String {
    if s.chars().count() > ECHO_MAX_CHARS {
        let head: String = s.chars().take(ECHO_MAX_CHARS).collect();
        format!("{:?}", format!("{head}..."))
    } else {
        format!("{s:?}")
    }
}

/// Adds an error for each of the `unknown` names of the object at `object` (`params`, or `body`
/// for the top level), the first [`MAX_LISTED_ERRORS`] by name, then one entry on `object` that
/// counts the rest.
pub fn list_unknown<'a>(
    unknown: impl Iterator<Item = &'a String>,
    object: &str,
    reason: &str,
    errors: &mut Vec<FieldError>,
) {
    let mut rest = 0usize;
    for (i, name) in unknown.enumerate() {
        if i < MAX_LISTED_ERRORS {
            // Names are the client's text: a long one is cut like any echoed value.
            let name = if name.chars().count() > ECHO_MAX_CHARS {
                let head: String = name.chars().take(ECHO_MAX_CHARS).collect();
                format!("{head}...")
            } else {
                name.clone()
            };
            let field = if object == "body" {
                name
            } else {
                format!("{object}.{name}")
            };
            errors.push(FieldError {
                field,
                reason: reason.to_owned(),
            });
        } else {
            rest += 1;
        }
    }
    if rest > 0 {
        errors.push(FieldError {
            field: object.to_owned(),
            reason: format!("{rest} more unknown names, not listed"),
        });
    }
}

/// Checks the client's params object against `params`; see [`super::Workflow::validate`].
pub(crate) fn validate(
    params: &[Param],
    ignored: &[String],
    input: &Value,
) -> Result<Resolved, Vec<FieldError>> {
    let empty = Map::new();
    let object = match input {
        Value::Null => &empty,
        Value::Object(map) => map,
        other => {
            return Err(vec![FieldError {
                field: "params".into(),
                reason: format!("expected a JSON object, got {}", json_type_name(other)),
            }])
        }
    };

    let mut resolved = Resolved::default();
    let mut errors = Vec::new();
    for param in params {
        // The param under its name or one of its aliases; errors name the field as the client sent it.
        let mut given_as = std::iter::once(&param.name)
            .chain(&param.aliases)
            .filter_map(|n| object.get(n).filter(|v| !v.is_null()).map(|v| (n, v)));
        let given = given_as.next();
        if let Some((first, _)) = given {
            let others: Vec<String> = given_as.map(|(n, _)| format!("`{n}`")).collect();
            if !others.is_empty() {
                errors.push(FieldError::new(
                    first,
                    format!(
                        "`{first}` and {} name the same parameter; send only one of them",
                        others.join(" and ")
                    ),
                ));
                continue;
            }
        }
        match (given, &param.kind) {
            (Some((field, value)), ParamKind::Image) => match image::parse_image(value) {
                Ok(source) => resolved.images.push(ImageParam {
                    param: param.name.clone(),
                    source,
                    targets: param.targets.clone(),
                }),
                Err(reason) => errors.push(FieldError::new(field, reason)),
            },
            (Some((field, value)), kind) => match check_value(kind, value) {
                Ok(value) => {
                    resolved.values.insert(param.name.clone(), value);
                }
                Err(problem) => errors.push(FieldError::new(field, problem.to_string())),
            },
            (None, kind) => {
                if let Some(default) = &param.default {
                    resolved.values.insert(param.name.clone(), default.clone());
                } else if *kind == ParamKind::Seed && !param.required {
                    // Random so that identical requests still run (ComfyUI would serve them from cache).
                    let seed = rand::thread_rng().gen_range(0..=MAX_SEED);
                    resolved
                        .values
                        .insert(param.name.clone(), Value::from(seed));
                } else {
                    errors.push(FieldError::new(
                        &param.name,
                        "required parameter is missing",
                    ));
                }
            }
        }
    }

    // Unknown names are reported even when null: they are most likely typos of a real name.
    let unknown = object.keys().filter(|name| {
        !ignored.contains(*name)
            && !params
                .iter()
                .any(|p| &p.name == *name || p.aliases.contains(*name))
    });
    list_unknown(unknown, "params", "unknown parameter", &mut errors);

    if errors.is_empty() {
        Ok(resolved)
    } else {
        Err(errors)
    }
}
