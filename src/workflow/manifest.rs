//! Reading a workflow's TOML manifest and its API-format graph, and checking one against the other
//! at load time: targets exist and hold literal values of the param's type, no input is set twice,
//! defaults fit, output nodes exist, the name matches the file.
//!
//! Every problem is collected (not just the first) as a line `<file>: [param `x`: ]<problem>`.

use std::collections::HashMap;
use std::fmt;
use std::path::{Component, Path};

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::params::{check_value, json_type_name, Param, ParamKind, Problem};
use super::{Graph, Target, Workflow};

/// The manifest as written, before it is checked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    #[serde(default)]
    description: String,
    /// Graph file, relative to the manifest's directory; `<stem>.json` when absent.
    graph: Option<String>,
    outputs: RawOutputs,
    #[serde(default)]
    params: OrderedParams,
    /// Names clients may send that are accepted and dropped: what an earlier version of the workflow
    /// took and this one no longer uses, so clients written for it keep working.
    #[serde(default)]
    ignored: Vec<String>,
    /// Params for a quick run (a release's smoke input), checked like a client's body at load.
    smoke: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutputs {
    nodes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParam {
    #[serde(rename = "type")]
    kind: String,
    required: Option<bool>,
    default: Option<Value>,
    #[serde(default)]
    description: String,
    max_length: Option<i64>,
    min: Option<Value>,
    max: Option<Value>,
    values: Option<Vec<String>>,
    /// Other names clients may send the param under (an older name kept when it was renamed).
    #[serde(default)]
    aliases: Vec<String>,
    targets: Vec<Target>,
}

/// `[params.*]` tables in the order they are written, so schemas list params as the author did
/// (a map type would sort them).
#[derive(Debug, Default)]
struct OrderedParams(Vec<(String, RawParam)>);

impl<'de> Deserialize<'de> for OrderedParams {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OrderedVisitor;
        impl<'de> Visitor<'de> for OrderedVisitor {
            type Value = OrderedParams;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of params")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedParams, A::Error> {
                let mut out = Vec::new();
                while let Some((name, param)) = map.next_entry::<String, RawParam>()? {
                    out.push((name, param));
                }
                Ok(OrderedParams(out))
            }
        }
        deserializer.deserialize_map(OrderedVisitor)
    }
}

/// The texts of one workflow as read from its folder: the manifest and the graph it names.
pub(crate) struct SourceTexts {
    /// The manifest's file stem (the workflow's name when it loads).
    pub stem: String,
    pub manifest: String,
    pub graph: String,
}

/// Loads `path` (a `*.toml` manifest) and its graph, giving back the texts it read too (what a
/// release stores); on failure, every problem found.
pub(crate) fn load_file_with_sources(path: &Path) -> Result<(Workflow, SourceTexts), Vec<String>> {
    let file = path.display().to_string();
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let text =
        std::fs::read_to_string(path).map_err(|e| vec![format!("{file}: cannot read: {e}")])?;
    let raw = parse_manifest(&file, &text)?;

    let graph_name = raw.graph.clone().unwrap_or_else(|| format!("{stem}.json"));
    if !is_plain_relative(&graph_name) {
        return Err(vec![format!(
            "{file}: graph `{graph_name}` must be a relative path inside the workflows directory"
        )]);
    }
    let graph_path = path.parent().unwrap_or(Path::new(".")).join(&graph_name);
    let graph_text = std::fs::read_to_string(&graph_path).map_err(|e| {
        vec![format!(
            "{file}: cannot read graph {}: {e}",
            graph_path.display()
        )]
    })?;
    let workflow = build(&file, &stem, raw, &graph_name, &graph_text)?;
    Ok((
        workflow,
        SourceTexts {
            stem,
            manifest: text,
            graph: graph_text,
        },
    ))
}

/// Same checks as [`load_file_with_sources`], from texts; `file` labels the problems.
pub(crate) fn from_sources(
    file: &str,
    stem: &str,
    manifest: &str,
    graph: &str,
) -> Result<Workflow, Vec<String>> {
    let raw = parse_manifest(file, manifest)?;
    let graph_name = raw.graph.clone().unwrap_or_else(|| format!("{stem}.json"));
    build(file, stem, raw, &graph_name, graph)
}

fn parse_manifest(file: &str, text: &str) -> Result<RawManifest, Vec<String>> {
    toml::from_str(text).map_err(|e| {
        // toml's own Display spans several lines (with a source excerpt); keep one line per problem.
        let line = e
            .span()
            .map(|span| text.get(..span.start).unwrap_or(text).matches('\n').count() + 1);
        let message = e.message().trim().replace('\n', "; ");
        match line {
            Some(line) => vec![format!("{file}: line {line}: {message}")],
            None => vec![format!("{file}: {message}")],
        }
    })
}

/// True for `a.json` or `sub/a.json`, false for absolute paths and anything with `..`.
fn is_plain_relative(path: &str) -> bool {
    let path = Path::new(path);
    !path.as_os_str().is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)))
}

/// Checks a parsed manifest against its graph and builds the workflow.
fn build(
    file: &str,
    stem: &str,
    raw: RawManifest,
    graph_name: &str,
    graph_text: &str,
) -> Result<Workflow, Vec<String>> {
    let mut problems = Vec::new();

    if raw.name != stem {
        problems.push(format!(
            "{file}: name `{}` must match the file name `{stem}`",
            raw.name
        ));
    }
    if !is_workflow_name(&raw.name) {
        problems.push(format!(
            "{file}: name `{}` must match [a-z0-9_-]+",
            raw.name
        ));
    }

    let graph = match parse_graph(graph_text) {
        Ok(graph) => graph,
        Err(problem) => {
            problems.push(format!("{file}: graph {graph_name}: {problem}"));
            return Err(problems);
        }
    };
    for problem in check_graph(&graph) {
        problems.push(format!("{file}: graph {graph_name}: {problem}"));
    }

    if raw.outputs.nodes.is_empty() {
        problems.push(format!(
            "{file}: outputs.nodes must name at least one output node"
        ));
    }
    for (i, node) in raw.outputs.nodes.iter().enumerate() {
        if !graph.contains_key(node) {
            problems.push(format!("{file}: output node `{node}` is not in the graph"));
        } else if raw.outputs.nodes[..i].contains(node) {
            problems.push(format!("{file}: output node `{node}` is listed twice"));
        }
    }

    let mut params = Vec::new();
    // Which param already sets each input, to catch two params (or one, twice) on the same input.
    let mut setters: HashMap<(String, String), String> = HashMap::new();
    // Which param each name or alias belongs to, so that a body's field names one param only.
    let mut names: HashMap<String, String> = raw
        .params
        .0
        .iter()
        .map(|(name, _)| (name.clone(), name.clone()))
        .collect();
    for (name, raw_param) in &raw.params.0 {
        let mut alias_problems = Vec::new();
        for (i, alias) in raw_param.aliases.iter().enumerate() {
            if !is_param_name(alias) {
                alias_problems.push(format!("alias `{alias}` must match [A-Za-z_][A-Za-z0-9_]*"));
            } else if alias == name || raw_param.aliases[..i].contains(alias) {
                alias_problems.push(format!("alias `{alias}` is listed twice"));
            } else if let Some(owner) = names.insert(alias.clone(), name.clone()) {
                if owner == *name {
                    alias_problems.push(format!("alias `{alias}` is listed twice"));
                } else {
                    alias_problems.push(format!(
                        "alias `{alias}` is already the name or an alias of param `{owner}`"
                    ));
                }
            }
        }
        for problem in alias_problems {
            problems.push(format!("{file}: param `{name}`: {problem}"));
        }
    }
    for (name, raw_param) in raw.params.0 {
        let mut param_problems = Vec::new();
        let param = build_param(&name, raw_param, &mut param_problems);
        if let Some(param) = &param {
            check_targets(param, &graph, &mut setters, &mut param_problems);
        }
        if !is_param_name(&name) {
            param_problems.push("name must match [A-Za-z_][A-Za-z0-9_]*".into());
        }
        for problem in param_problems {
            problems.push(format!("{file}: param `{name}`: {problem}"));
        }
        params.extend(param);
    }

    for (i, ignored) in raw.ignored.iter().enumerate() {
        if !is_param_name(ignored) {
            problems.push(format!(
                "{file}: ignored name `{ignored}` must match [A-Za-z_][A-Za-z0-9_]*"
            ));
        } else if raw.ignored[..i].contains(ignored) {
            problems.push(format!("{file}: ignored name `{ignored}` is listed twice"));
        } else if let Some(owner) = names.get(ignored) {
            problems.push(format!(
                "{file}: ignored name `{ignored}` is the name or an alias of param `{owner}`"
            ));
        }
    }

    // The smoke input must be a body a client could send: checked once the params are known.
    if let Some(smoke) = &raw.smoke {
        if problems.is_empty() {
            if let Err(errors) = super::params::validate(&params, &raw.ignored, smoke) {
                for e in errors {
                    let field = e.field.strip_prefix("params").unwrap_or(&e.field);
                    problems.push(format!("{file}: smoke{field}: {}", e.reason));
                }
            }
        }
    }

    if problems.is_empty() {
        Ok(Workflow {
            name: raw.name,
            description: raw.description,
            graph,
            params,
            ignored: raw.ignored,
            output_nodes: raw.outputs.nodes,
            smoke: raw.smoke,
        })
    } else {
        Err(problems)
    }
}

fn is_workflow_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn is_param_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Parses an API-format graph: an object of nodes, each with a `class_type` and an `inputs` object.
fn parse_graph(text: &str) -> Result<Graph, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(graph) = value else {
        return Err(format!(
            "expected a JSON object of nodes, got {}",
            json_type_name(&value)
        ));
    };
    if graph.get("nodes").is_some_and(Value::is_array) && graph.contains_key("links") {
        return Err("this is a UI-format export; export the workflow in API format instead".into());
    }
    if graph.is_empty() {
        return Err("has no nodes".into());
    }
    Ok(graph)
}

/// Shape problems of the nodes themselves.
fn check_graph(graph: &Graph) -> Vec<String> {
    let mut problems = Vec::new();
    for (id, node) in graph {
        if !node.get("class_type").is_some_and(Value::is_string) {
            problems.push(format!("node `{id}` has no string `class_type`"));
        }
        match node.get("inputs") {
            Some(Value::Object(inputs)) => {
                // The per-task prefix is what keeps tasks' outputs apart; it must be a literal to rewrite.
                if inputs
                    .get("filename_prefix")
                    .is_some_and(|v| !v.is_string())
                {
                    problems.push(format!(
                        "node `{id}`: `filename_prefix` must be a literal string (comfyd rewrites it per task)"
                    ));
                }
            }
            _ => problems.push(format!("node `{id}` has no `inputs` object")),
        }
    }
    problems
}

/// Turns a raw param into a [`Param`], pushing every problem; `None` when the type is unusable.
fn build_param(name: &str, raw: RawParam, problems: &mut Vec<String>) -> Option<Param> {
    let only_for = |key: &str, allowed: &str, present: bool, problems: &mut Vec<String>| {
        if present {
            problems.push(format!("`{key}` only applies to {allowed} params"));
        }
    };
    let kind = match raw.kind.as_str() {
        "string" => {
            let max_length = match raw.max_length {
                Some(n) if n >= 1 => usize::try_from(n).ok(),
                Some(n) => {
                    problems.push(format!("max_length {n} must be at least 1"));
                    None
                }
                None => None,
            };
            ParamKind::String { max_length }
        }
        "integer" => {
            let min = integer_bound("min", raw.min.as_ref(), problems);
            let max = integer_bound("max", raw.max.as_ref(), problems);
            if let (Some(lo), Some(hi)) = (min, max) {
                if lo > hi {
                    problems.push(format!("min {lo} is above max {hi}"));
                }
            }
            ParamKind::Integer { min, max }
        }
        "float" => {
            let min = float_bound("min", raw.min.as_ref(), problems);
            let max = float_bound("max", raw.max.as_ref(), problems);
            if let (Some(lo), Some(hi)) = (min, max) {
                if lo > hi {
                    problems.push(format!("min {lo} is above max {hi}"));
                }
            }
            ParamKind::Float { min, max }
        }
        "boolean" => ParamKind::Boolean,
        "enum" => {
            let values = raw.values.clone().unwrap_or_default();
            if values.is_empty() {
                problems.push("enum params need a non-empty `values` list".into());
            }
            for (i, v) in values.iter().enumerate() {
                if values[..i].contains(v) {
                    problems.push(format!("value {v:?} is listed twice"));
                }
            }
            ParamKind::Enum { values }
        }
        "image" => ParamKind::Image,
        "seed" => ParamKind::Seed,
        other => {
            problems.push(format!(
                "unknown type `{other}` (expected string, integer, float, boolean, enum, image or seed)"
            ));
            return None;
        }
    };

    let type_name = kind.type_name();
    only_for(
        "max_length",
        "string",
        raw.max_length.is_some() && type_name != "string",
        problems,
    );
    let has_bounds = matches!(kind, ParamKind::Integer { .. } | ParamKind::Float { .. });
    only_for(
        "min",
        "integer and float",
        raw.min.is_some() && !has_bounds,
        problems,
    );
    only_for(
        "max",
        "integer and float",
        raw.max.is_some() && !has_bounds,
        problems,
    );
    only_for(
        "values",
        "enum",
        raw.values.is_some() && type_name != "enum",
        problems,
    );

    let required = raw.required.unwrap_or(false);
    let default = match (&kind, raw.default) {
        (ParamKind::Image, Some(_)) => {
            problems.push("image params cannot have a default".into());
            None
        }
        (ParamKind::Image, None) => {
            if !required {
                problems.push("image params must be `required = true`".into());
            }
            None
        }
        (_, Some(_)) if required => {
            problems.push("has both `required = true` and a default; keep one".into());
            None
        }
        (_, Some(default)) => match check_value(&kind, &default) {
            Ok(value) => Some(value),
            Err(problem) => {
                problems.push(describe_bad_default(&default, &problem));
                None
            }
        },
        (ParamKind::Seed, None) => None,
        (_, None) => {
            if !required {
                problems.push("needs `required = true` or a `default`".into());
            }
            None
        }
    };

    if raw.targets.is_empty() {
        problems.push("needs at least one target".into());
    }

    Some(Param {
        name: name.to_owned(),
        aliases: raw.aliases,
        description: raw.description,
        kind,
        required,
        default,
        targets: raw.targets,
    })
}

fn describe_bad_default(default: &Value, problem: &Problem) -> String {
    match problem {
        Problem::WrongType { expected, got } => format!("default must be {expected}, got {got}"),
        Problem::NotInEnum { .. } => format!("default {default} is not in `values`"),
        other => format!("default {other}"),
    }
}

fn integer_bound(key: &str, value: Option<&Value>, problems: &mut Vec<String>) -> Option<i64> {
    let value = value?;
    let bound = value.as_i64();
    if bound.is_none() {
        problems.push(format!(
            "`{key}` must be an integer, got {}",
            json_type_name(value)
        ));
    }
    bound
}

fn float_bound(key: &str, value: Option<&Value>, problems: &mut Vec<String>) -> Option<f64> {
    let value = value?;
    let bound = value.as_f64();
    if bound.is_none() {
        problems.push(format!(
            "`{key}` must be a number, got {}",
            json_type_name(value)
        ));
    }
    bound
}

/// Each target must name an existing node and input that holds a literal of the param's type, and
/// no input may be set by two params.
fn check_targets(
    param: &Param,
    graph: &Graph,
    setters: &mut HashMap<(String, String), String>,
    problems: &mut Vec<String>,
) {
    for target in &param.targets {
        let Target { node, input } = target;
        let Some(node_value) = graph.get(node) else {
            problems.push(format!("target node `{node}` is not in the graph"));
            continue;
        };
        let class = node_value
            .get("class_type")
            .and_then(Value::as_str)
            .unwrap_or("?");
        let Some(current) = node_value.get("inputs").and_then(|i| i.get(input)) else {
            problems.push(format!("node `{node}` ({class}) has no input `{input}`"));
            continue;
        };
        if let Some(other) = setters.insert((node.clone(), input.clone()), param.name.clone()) {
            if other == param.name {
                problems.push(format!("targets node `{node}` input `{input}` twice"));
            } else {
                problems.push(format!(
                    "node `{node}` input `{input}` is already set by param `{other}`"
                ));
            }
        }
        if let Some(expected) = literal_mismatch(&param.kind, current) {
            problems.push(format!(
                "node `{node}` ({class}) input `{input}` holds {} in the graph, but a {} param needs {expected}",
                describe_graph_value(current),
                param.kind.type_name(),
            ));
        }
    }
}

/// What the graph's current value should have been, when it does not fit the param's kind.
/// Catches targets that point at the wrong input (e.g. `text` instead of `seed`) and at links.
fn literal_mismatch(kind: &ParamKind, current: &Value) -> Option<&'static str> {
    let fits = match kind {
        ParamKind::String { .. } | ParamKind::Enum { .. } | ParamKind::Image => current.is_string(),
        ParamKind::Integer { .. } | ParamKind::Float { .. } | ParamKind::Seed => {
            current.is_number()
        }
        ParamKind::Boolean => current.is_boolean(),
    };
    if fits {
        return None;
    }
    Some(match kind {
        ParamKind::String { .. } | ParamKind::Enum { .. } | ParamKind::Image => "a string",
        ParamKind::Integer { .. } | ParamKind::Float { .. } | ParamKind::Seed => "a number",
        ParamKind::Boolean => "a boolean",
    })
}

fn describe_graph_value(value: &Value) -> String {
    match value
        .as_array()
        .and_then(|a| a.first())
        .and_then(Value::as_str)
    {
        Some(from) => format!("a link from node `{from}`"),
        None => json_type_name(value).to_owned(),
    }
}
