//! Unit tests of the workflow module: params, images, rendering, load-time checks, schema,
//! object_info checks, and the shipped `workflows/` directory.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Value};

use super::*;

// ---------------------------------------------------------------------------------------------
// Helpers

/// A graph with one node of each input type the tests need.
const GRAPH: &str = r#"{
  "1": {"class_type": "EmptyImage", "inputs": {"width": 512, "height": 512, "batch_size": 1, "color": 0}},
  "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "out/pic"}},
  "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["9", 1]}},
  "4": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
  "5": {"class_type": "Options", "inputs": {"flag": false, "cfg": 8.0, "sampler": "euler", "seed": 1}},
  "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "second", "clip": ["9", 1]}}
}"#;

/// A manifest using every param type against [`GRAPH`].
const MANIFEST: &str = r#"
name = "t"
description = "test workflow"
[outputs]
nodes = ["2"]

[params.prompt]
type = "string"
required = true
max_length = 5
description = "What to draw"
targets = [{ node = "3", input = "text" }, { node = "6", input = "text" }]

[params.width]
type = "integer"
default = 512
min = 64
max = 2048
targets = [{ node = "1", input = "width" }]

[params.cfg]
type = "float"
default = 7.5
min = 0
max = 30
targets = [{ node = "5", input = "cfg" }]

[params.flag]
type = "boolean"
default = true
targets = [{ node = "5", input = "flag" }]

[params.sampler]
type = "enum"
values = ["euler", "dpmpp_2m"]
default = "euler"
targets = [{ node = "5", input = "sampler" }]

[params.seed]
type = "seed"
targets = [{ node = "5", input = "seed" }]

[params.image]
type = "image"
required = true
targets = [{ node = "4", input = "image" }]
"#;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(rel: &str) -> PathBuf {
    repo().join("src/tests/fixtures/comfyui-protocol").join(rel)
}

fn workflow() -> Workflow {
    Workflow::from_sources("t", MANIFEST, GRAPH).expect("test manifest loads")
}

/// A real 1x1 PNG, encoded with the png crate.
fn png_bytes() -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, 1, 1);
        encoder.set_color(png::ColorType::Rgb);
        let mut writer = encoder.write_header().expect("png header");
        writer.write_image_data(&[255, 0, 0]).expect("png data");
    }
    out
}

fn png_b64() -> String {
    STANDARD.encode(png_bytes())
}

/// The valid minimum for [`workflow`]: the two required params.
fn minimal() -> Value {
    json!({"prompt": "cat", "image": png_b64()})
}

/// `minimal()` with `key` set to `value`.
fn with(key: &str, value: Value) -> Value {
    let mut params = minimal();
    params[key] = value;
    params
}

/// The reasons given for `field` when validating `params`.
fn reasons(params: Value, field: &str) -> Vec<String> {
    let errors = workflow()
        .validate(&params)
        .expect_err("params should be rejected");
    errors
        .into_iter()
        .filter(|e| e.field == format!("params.{field}"))
        .map(|e| e.reason)
        .collect()
}

fn resolved(params: Value) -> Resolved {
    workflow()
        .validate(&params)
        .expect("params should be accepted")
}

/// Problems of loading `manifest` against `graph` (as `t.toml`); panics if it loads.
fn load_problems(manifest: &str, graph: &str) -> Vec<String> {
    Workflow::from_sources("t", manifest, graph)
        .expect_err("manifest should be rejected")
        .problems
}

/// `MANIFEST` with `old` replaced by `new` (which must occur).
fn manifest_with(old: &str, new: &str) -> String {
    assert!(
        MANIFEST.contains(old),
        "test setup: {old:?} not in MANIFEST"
    );
    MANIFEST.replacen(old, new, 1)
}

fn assert_has(problems: &[String], needle: &str) {
    assert!(
        problems.iter().any(|p| p.contains(needle)),
        "expected a problem containing {needle:?}, got: {problems:#?}"
    );
}

fn input<'a>(graph: &'a Graph, node: &str, input: &str) -> &'a Value {
    &graph[node]["inputs"][input]
}

// ---------------------------------------------------------------------------------------------
// Params: each type, good and bad values

#[test]
fn minimal_params_resolve_every_default() {
    let r = resolved(minimal());
    assert_eq!(r.values["prompt"], json!("cat"));
    assert_eq!(r.values["width"], json!(512));
    assert_eq!(r.values["cfg"], json!(7.5));
    assert_eq!(r.values["flag"], json!(true));
    assert_eq!(r.values["sampler"], json!("euler"));
    assert!(r.values.contains_key("seed"));
    assert!(!r.values.contains_key("image"), "images are not values");
    assert_eq!(r.images.len(), 1);
}

#[test]
fn string_accepts_strings_and_counts_characters_not_bytes() {
    // 5 characters, 10 bytes: within max_length 5.
    assert_eq!(
        resolved(with("prompt", json!("ééééé"))).values["prompt"],
        json!("ééééé")
    );
    assert_eq!(
        reasons(with("prompt", json!("éééééé")), "prompt"),
        ["is 6 characters long, above max_length 5"]
    );
}

#[test]
fn string_rejects_non_strings() {
    assert_eq!(
        reasons(with("prompt", json!(12)), "prompt"),
        ["expected a string, got an integer"]
    );
    assert_eq!(
        reasons(with("prompt", json!(["a"])), "prompt"),
        ["expected a string, got an array"]
    );
}

#[test]
fn integer_accepts_integers_in_range() {
    assert_eq!(
        resolved(with("width", json!(64))).values["width"],
        json!(64)
    );
    assert_eq!(
        resolved(with("width", json!(2048))).values["width"],
        json!(2048)
    );
}

#[test]
fn integer_rejects_fractions_strings_and_out_of_range() {
    assert_eq!(
        reasons(with("width", json!(1.5)), "width"),
        ["expected an integer, got a number with a fraction"]
    );
    assert_eq!(
        reasons(with("width", json!("3")), "width"),
        ["expected an integer, got a string"]
    );
    assert_eq!(
        reasons(with("width", json!(true)), "width"),
        ["expected an integer, got a boolean"]
    );
    assert_eq!(
        reasons(with("width", json!(63)), "width"),
        ["63 is below min 64"]
    );
    assert_eq!(
        reasons(with("width", json!(2049)), "width"),
        ["2049 is above max 2048"]
    );
    assert_eq!(
        reasons(with("width", json!(u64::MAX)), "width"),
        [format!("{} is above max 2048", u64::MAX)]
    );
}

#[test]
fn float_accepts_integers_and_sets_them_as_floats() {
    let r = resolved(with("cfg", json!(7)));
    assert_eq!(r.values["cfg"], json!(7.0));
    assert!(r.values["cfg"].is_f64());
    assert_eq!(
        resolved(with("cfg", json!(0.25))).values["cfg"],
        json!(0.25)
    );
}

#[test]
fn float_rejects_strings_and_out_of_range() {
    assert_eq!(
        reasons(with("cfg", json!("7")), "cfg"),
        ["expected a number, got a string"]
    );
    assert_eq!(
        reasons(with("cfg", json!(-0.5)), "cfg"),
        ["-0.5 is below min 0"]
    );
    assert_eq!(
        reasons(with("cfg", json!(30.5)), "cfg"),
        ["30.5 is above max 30"]
    );
}

#[test]
fn boolean_accepts_only_true_and_false() {
    assert_eq!(
        resolved(with("flag", json!(false))).values["flag"],
        json!(false)
    );
    assert_eq!(
        reasons(with("flag", json!("true")), "flag"),
        ["expected true or false, got a string"]
    );
    assert_eq!(
        reasons(with("flag", json!(1)), "flag"),
        ["expected true or false, got an integer"]
    );
}

#[test]
fn enum_accepts_only_listed_strings() {
    assert_eq!(
        resolved(with("sampler", json!("dpmpp_2m"))).values["sampler"],
        json!("dpmpp_2m")
    );
    assert_eq!(
        reasons(with("sampler", json!("Euler")), "sampler"),
        [r#""Euler" is not one of: euler, dpmpp_2m"#]
    );
    assert_eq!(
        reasons(with("sampler", json!(1)), "sampler"),
        ["expected a string, got an integer"]
    );
}

#[test]
fn enum_error_cuts_long_client_values_short() {
    let long = "x".repeat(500);
    let reason = &reasons(with("sampler", json!(long)), "sampler")[0];
    assert!(reason.len() < 120, "reason too long: {reason}");
}

#[test]
fn seed_accepts_the_json_safe_range() {
    assert_eq!(resolved(with("seed", json!(0))).values["seed"], json!(0));
    assert_eq!(
        resolved(with("seed", json!(MAX_SEED))).values["seed"],
        json!(9_007_199_254_740_991_u64)
    );
}

#[test]
fn seed_rejects_negative_too_large_and_fractions() {
    assert_eq!(
        reasons(with("seed", json!(-1)), "seed"),
        ["-1 is below min 0"]
    );
    assert_eq!(
        reasons(with("seed", json!(MAX_SEED + 1)), "seed"),
        ["9007199254740992 is above max 9007199254740991"]
    );
    assert_eq!(
        reasons(with("seed", json!(1.5)), "seed"),
        ["expected an integer, got a number with a fraction"]
    );
    assert_eq!(
        reasons(with("seed", json!("1")), "seed"),
        ["expected an integer, got a string"]
    );
}

#[test]
fn absent_seed_is_random_and_differs_between_identical_requests() {
    let seeds: Vec<u64> = (0..5)
        .map(|_| {
            resolved(minimal()).values["seed"]
                .as_u64()
                .expect("seed is a u64")
        })
        .collect();
    assert!(seeds.iter().all(|s| *s <= MAX_SEED));
    // 5 draws from 2^53 values: a repeat would mean the seed is not random.
    let mut unique = seeds.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), seeds.len(), "seeds repeat: {seeds:?}");
}

#[test]
fn null_counts_as_absent() {
    let r = resolved(with("width", Value::Null));
    assert_eq!(r.values["width"], json!(512));
    assert_eq!(
        reasons(with("prompt", Value::Null), "prompt"),
        ["required parameter is missing"]
    );
}

#[test]
fn null_or_non_object_params() {
    let errors = workflow()
        .validate(&Value::Null)
        .expect_err("required params are missing");
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["params.prompt", "params.image"]);

    let errors = workflow()
        .validate(&json!([1, 2]))
        .expect_err("an array is not a params object");
    assert_eq!(
        errors,
        [FieldError {
            field: "params".into(),
            reason: "expected a JSON object, got an array".into()
        }]
    );
}

#[test]
fn unknown_parameters_are_errors() {
    assert_eq!(
        reasons(with("steps", json!(20)), "steps"),
        ["unknown parameter"]
    );
    assert_eq!(
        reasons(with("Width", Value::Null), "Width"),
        ["unknown parameter"]
    );
}

#[test]
fn every_bad_field_is_reported_at_once() {
    let params = json!({"width": "wide", "cfg": 99, "sampler": "nope", "image": "!!!", "extra": 1});
    let errors = workflow().validate(&params).expect_err("many bad fields");
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "params.prompt",
            "params.width",
            "params.cfg",
            "params.sampler",
            "params.image",
            "params.extra"
        ]
    );
}

#[test]
fn field_errors_serialize_as_field_and_reason() {
    let e = FieldError {
        field: "params.steps".into(),
        reason: "unknown parameter".into(),
    };
    assert_eq!(
        serde_json::to_value(&e).expect("serializes"),
        json!({"field": "params.steps", "reason": "unknown parameter"})
    );
}

// ---------------------------------------------------------------------------------------------
// Images: base64, data URLs, URLs, sniffing

#[test]
fn sniff_image_recognises_each_format_by_magic_bytes() {
    assert_eq!(sniff_image(&png_bytes()), Some("png"));
    assert_eq!(sniff_image(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10]), Some("jpg"));
    assert_eq!(sniff_image(b"GIF89a\x01\x00"), Some("gif"));
    assert_eq!(sniff_image(b"GIF87a\x01\x00"), Some("gif"));
    assert_eq!(sniff_image(b"RIFF\x24\x00\x00\x00WEBPVP8 "), Some("webp"));
    assert_eq!(sniff_image(b"RIFF\x24\x00\x00\x00WAVEfmt "), None);
    assert_eq!(sniff_image(b"<svg xmlns="), None);
    assert_eq!(sniff_image(b""), None);
}

fn image_source(value: Value) -> ImageSource {
    let r = resolved(with("image", value));
    assert_eq!(r.images.len(), 1);
    assert_eq!(r.images[0].param, "image");
    assert_eq!(
        r.images[0].targets,
        [Target {
            node: "4".into(),
            input: "image".into()
        }]
    );
    r.images[0].source.clone()
}

#[test]
fn plain_base64_is_decoded_and_sniffed() {
    assert_eq!(
        image_source(json!(png_b64())),
        ImageSource::Bytes {
            bytes: png_bytes(),
            ext: "png"
        }
    );
}

#[test]
fn base64_without_padding_in_lines_or_url_safe_is_decoded() {
    let bytes = png_bytes();
    let unpadded = STANDARD_NO_PAD.encode(&bytes);
    let wrapped: String = STANDARD
        .encode(&bytes)
        .as_bytes()
        .chunks(16)
        .map(|c| String::from_utf8_lossy(c) + "\r\n")
        .collect();
    for text in [unpadded, wrapped, URL_SAFE_NO_PAD.encode(&bytes)] {
        assert_eq!(
            image_source(json!(text)),
            ImageSource::Bytes {
                bytes: bytes.clone(),
                ext: "png"
            }
        );
    }
}

#[test]
fn data_url_is_decoded_and_sniffed_whatever_type_it_claims() {
    let jpeg = super::probe::tests::jpeg_header(8, 8);
    let url = format!("data:image/png;base64,{}", STANDARD.encode(&jpeg));
    assert_eq!(
        image_source(json!(url)),
        ImageSource::Bytes {
            bytes: jpeg.to_vec(),
            ext: "jpg"
        }
    );
}

#[test]
fn http_and_https_urls_are_passed_on() {
    assert_eq!(
        image_source(json!("https://example.com/in.png?x=1")),
        ImageSource::Url("https://example.com/in.png?x=1".into())
    );
    assert_eq!(
        image_source(json!("http://10.0.0.1:8080/a.jpg")),
        ImageSource::Url("http://10.0.0.1:8080/a.jpg".into())
    );
}

#[test]
fn bad_images_are_rejected_with_a_reason() {
    assert_eq!(
        reasons(with("image", json!("!!!not base64")), "image"),
        ["invalid base64"]
    );
    assert_eq!(
        reasons(with("image", json!("data:image/png;base64,@@@")), "image"),
        ["invalid base64"]
    );
    let text = STANDARD.encode("just some text, not an image");
    assert_eq!(
        reasons(with("image", json!(text)), "image"),
        ["not a PNG, JPEG, WEBP or GIF image"]
    );
    // A PNG signature followed by anything but a valid IHDR is not a PNG.
    let fake = STANDARD.encode(b"\x89PNG\r\n\x1a\nrandom bytes, not a header at all");
    assert_eq!(
        reasons(with("image", json!(fake)), "image"),
        ["not a valid PNG image: the first chunk is not a 13-byte IHDR"]
    );
    assert_eq!(
        reasons(with("image", json!("data:image/png,rawbytes")), "image"),
        ["data URL must be base64-encoded (`;base64,`)"]
    );
    assert_eq!(
        reasons(with("image", json!("file:///etc/passwd")), "image"),
        ["URL scheme `file` is not accepted: use http or https"]
    );
    assert_eq!(
        reasons(with("image", json!("ftp://x/y.png")), "image"),
        ["URL scheme `ftp` is not accepted: use http or https"]
    );
    assert_eq!(
        reasons(with("image", json!(42)), "image"),
        ["expected a base64 string, a data URL or an http(s) URL, got an integer"]
    );
}

#[test]
fn set_image_sets_the_name_at_every_target() {
    let mut graph: Graph = serde_json::from_str(GRAPH).expect("graph parses");
    let targets = [
        Target {
            node: "4".into(),
            input: "image".into(),
        },
        Target {
            node: "3".into(),
            input: "text".into(),
        },
    ];
    set_image(&mut graph, &targets, "comfyd/abc.png");
    assert_eq!(input(&graph, "4", "image"), &json!("comfyd/abc.png"));
    assert_eq!(input(&graph, "3", "text"), &json!("comfyd/abc.png"));
    // A stale target does not panic or create anything.
    set_image(
        &mut graph,
        &[Target {
            node: "99".into(),
            input: "image".into(),
        }],
        "x.png",
    );
    assert!(!graph.contains_key("99"));
}

#[test]
fn image_source_debug_shows_length_not_bytes() {
    let debug = format!(
        "{:?}",
        ImageSource::Bytes {
            bytes: vec![7; 1000],
            ext: "png"
        }
    );
    assert_eq!(debug, r#"Bytes { len: 1000, ext: "png" }"#);
}

// ---------------------------------------------------------------------------------------------
// Rendering

#[test]
fn render_sets_json_values_at_every_target() {
    let wf = workflow();
    let r = resolved(
        json!({"prompt": "dog", "image": png_b64(), "width": 640, "cfg": 3, "flag": false, "seed": 42}),
    );
    let graph = wf.render(&r, "task1");
    assert_eq!(input(&graph, "3", "text"), &json!("dog"));
    assert_eq!(input(&graph, "6", "text"), &json!("dog"));
    assert_eq!(input(&graph, "1", "width"), &json!(640));
    assert_eq!(input(&graph, "5", "cfg"), &json!(3.0));
    assert_eq!(input(&graph, "5", "flag"), &json!(false));
    assert_eq!(input(&graph, "5", "seed"), &json!(42));
    // Links and untouched inputs stay as they were; images are not set by render.
    assert_eq!(input(&graph, "3", "clip"), &json!(["9", 1]));
    assert_eq!(input(&graph, "1", "height"), &json!(512));
    assert_eq!(input(&graph, "4", "image"), &json!("example.png"));
    // The workflow's own graph is not modified.
    assert_eq!(input(&wf.graph, "3", "text"), &json!("a cat"));
}

#[test]
fn text_with_quotes_backslashes_and_unicode_stays_an_exact_json_string() {
    let wf =
        Workflow::from_sources("t", &manifest_with("max_length = 5\n", ""), GRAPH).expect("loads");
    let nasty = "a\"}, \"99\": {\"class_type\": \"Evil\"}, \"x\": \"\\\\ \\u0000 \n\t 日本語 🎨 \u{2028} '; DROP";
    let r = wf
        .validate(&json!({"prompt": nasty, "image": png_b64()}))
        .expect("accepted");
    let graph = wf.render(&r, "t1");
    // Through the wire and back, as the dispatcher will send it.
    let wire = serde_json::to_string(&graph).expect("serializes");
    let back: Graph = serde_json::from_str(&wire).expect("parses");
    assert_eq!(back.len(), wf.graph.len(), "no node was injected");
    assert!(!back.contains_key("99"));
    assert_eq!(input(&back, "3", "text").as_str(), Some(nasty));
    assert_eq!(input(&back, "6", "text").as_str(), Some(nasty));
}

#[test]
fn every_task_gets_its_own_prefix_folder() {
    let wf = workflow();
    let r = resolved(minimal());
    let a = wf.render(&r, "task-a");
    let b = wf.render(&r, "task-b");
    assert_eq!(
        input(&a, "2", "filename_prefix"),
        &json!("comfyd/task-a/pic")
    );
    assert_eq!(
        input(&b, "2", "filename_prefix"),
        &json!("comfyd/task-b/pic")
    );
}

#[test]
fn prefix_keeps_only_a_safe_last_segment() {
    let cases = [
        ("ComfyUI", "comfyd/t/ComfyUI"),
        ("batch/b3", "comfyd/t/b3"),
        ("a\\b\\c", "comfyd/t/c"),
        ("../../etc/x/", "comfyd/t/x"),
        ("a/..", "comfyd/t/ComfyUI"),
        ("", "comfyd/t/ComfyUI"),
    ];
    for (original, expected) in cases {
        let graph = GRAPH.replace("out/pic", &original.replace('\\', "\\\\"));
        let wf = Workflow::from_sources("t", MANIFEST, &graph).expect("loads");
        let rendered = wf.render(&resolved(minimal()), "t");
        assert_eq!(
            input(&rendered, "2", "filename_prefix"),
            &json!(expected),
            "prefix {original:?}"
        );
    }
}

#[test]
fn a_param_aimed_at_the_prefix_is_confined_too() {
    let manifest = r#"
name = "t"
[outputs]
nodes = ["2"]
[params.prefix]
type = "string"
default = "mine"
targets = [{ node = "2", input = "filename_prefix" }]
"#;
    let wf = Workflow::from_sources("t", manifest, GRAPH).expect("loads");
    let r = wf
        .validate(&json!({"prefix": "../../../root/evil"}))
        .expect("accepted");
    assert_eq!(
        input(&wf.render(&r, "t9"), "2", "filename_prefix"),
        &json!("comfyd/t9/evil")
    );
}

// ---------------------------------------------------------------------------------------------
// Load-time checks, one by one

#[test]
fn params_keep_manifest_order() {
    let wf = workflow();
    let names: Vec<&str> = wf.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["prompt", "width", "cfg", "flag", "sampler", "seed", "image"]
    );
}

#[test]
fn name_must_match_the_file_stem_and_pattern() {
    let problems = load_problems(&manifest_with(r#"name = "t""#, r#"name = "other""#), GRAPH);
    assert_eq!(
        problems,
        ["t.toml: name `other` must match the file name `t`"]
    );
    let problems = Workflow::from_sources(
        "Bad.Name",
        &manifest_with(r#"name = "t""#, r#"name = "Bad.Name""#),
        GRAPH,
    )
    .expect_err("bad name")
    .problems;
    assert_eq!(
        problems,
        ["Bad.Name.toml: name `Bad.Name` must match [a-z0-9_-]+"]
    );
}

#[test]
fn target_node_and_input_must_exist() {
    let problems = load_problems(
        &manifest_with(
            r#"node = "1", input = "width""#,
            r#"node = "77", input = "width""#,
        ),
        GRAPH,
    );
    assert_eq!(
        problems,
        ["t.toml: param `width`: target node `77` is not in the graph"]
    );
    let problems = load_problems(
        &manifest_with(
            r#"node = "1", input = "width""#,
            r#"node = "1", input = "widht""#,
        ),
        GRAPH,
    );
    assert_eq!(
        problems,
        ["t.toml: param `width`: node `1` (EmptyImage) has no input `widht`"]
    );
}

#[test]
fn two_params_cannot_set_the_same_input() {
    let problems = load_problems(
        &manifest_with(
            r#"node = "1", input = "width""#,
            r#"node = "5", input = "seed""#,
        ),
        GRAPH,
    );
    assert_eq!(
        problems,
        ["t.toml: param `seed`: node `5` input `seed` is already set by param `width`"]
    );
    let problems = load_problems(
        &manifest_with(
            r#"{ node = "6", input = "text" }"#,
            r#"{ node = "3", input = "text" }"#,
        ),
        GRAPH,
    );
    assert_eq!(
        problems,
        ["t.toml: param `prompt`: targets node `3` input `text` twice"]
    );
}

#[test]
fn targets_must_be_literals_of_the_param_type() {
    let problems = load_problems(
        &manifest_with(
            r#"node = "3", input = "text" }"#,
            r#"node = "3", input = "clip" }"#,
        ),
        GRAPH,
    );
    assert_eq!(
        problems,
        ["t.toml: param `prompt`: node `3` (CLIPTextEncode) input `clip` holds a link from node `9` in the graph, but a string param needs a string"]
    );
    let problems = load_problems(
        &manifest_with(
            r#"node = "1", input = "width""#,
            r#"node = "3", input = "text""#,
        ),
        GRAPH,
    );
    assert_has(&problems, "param `width`: node `3` (CLIPTextEncode) input `text` holds a string in the graph, but a integer param needs a number");
}

#[test]
fn a_param_needs_targets() {
    let problems = load_problems(
        &manifest_with(
            r#"targets = [{ node = "5", input = "flag" }]"#,
            "targets = []",
        ),
        GRAPH,
    );
    assert_eq!(
        problems,
        ["t.toml: param `flag`: needs at least one target"]
    );
}

#[test]
fn defaults_must_fit_type_and_range() {
    let below = load_problems(&manifest_with("default = 512", "default = 0"), GRAPH);
    assert_eq!(below, ["t.toml: param `width`: default 0 is below min 64"]);
    let above = load_problems(&manifest_with("default = 512", "default = 4096"), GRAPH);
    assert_eq!(
        above,
        ["t.toml: param `width`: default 4096 is above max 2048"]
    );
    let wrong = load_problems(&manifest_with("default = 512", r#"default = "512""#), GRAPH);
    assert_eq!(
        wrong,
        ["t.toml: param `width`: default must be an integer, got a string"]
    );
    let float = load_problems(&manifest_with("default = 7.5", "default = 31"), GRAPH);
    assert_eq!(float, ["t.toml: param `cfg`: default 31 is above max 30"]);
    let boolean = load_problems(&manifest_with("default = true", "default = 1"), GRAPH);
    assert_eq!(
        boolean,
        ["t.toml: param `flag`: default must be true or false, got an integer"]
    );
    let string = load_problems(
        &manifest_with(
            "required = true\nmax_length",
            "default = \"abcdef\"\nmax_length",
        ),
        GRAPH,
    );
    assert_eq!(
        string,
        ["t.toml: param `prompt`: default is 6 characters long, above max_length 5"]
    );
}

#[test]
fn enum_default_must_be_in_values() {
    let problems = load_problems(
        &manifest_with(r#"default = "euler""#, r#"default = "heun""#),
        GRAPH,
    );
    assert_eq!(
        problems,
        [r#"t.toml: param `sampler`: default "heun" is not in `values`"#]
    );
}

#[test]
fn enum_values_must_be_present_and_unique() {
    let empty = load_problems(
        &manifest_with(r#"values = ["euler", "dpmpp_2m"]"#, "values = []"),
        GRAPH,
    );
    assert_has(
        &empty,
        "param `sampler`: enum params need a non-empty `values` list",
    );
    let twice = load_problems(
        &manifest_with(
            r#"values = ["euler", "dpmpp_2m"]"#,
            r#"values = ["euler", "euler"]"#,
        ),
        GRAPH,
    );
    assert_eq!(
        twice,
        [r#"t.toml: param `sampler`: value "euler" is listed twice"#]
    );
}

#[test]
fn output_nodes_must_exist() {
    let missing = load_problems(
        &manifest_with(r#"nodes = ["2"]"#, r#"nodes = ["2", "42"]"#),
        GRAPH,
    );
    assert_eq!(missing, ["t.toml: output node `42` is not in the graph"]);
    let none = load_problems(&manifest_with(r#"nodes = ["2"]"#, "nodes = []"), GRAPH);
    assert_eq!(
        none,
        ["t.toml: outputs.nodes must name at least one output node"]
    );
}

#[test]
fn required_and_default_are_exclusive_and_one_is_needed() {
    let both = load_problems(
        &manifest_with(
            "required = true\nmax_length",
            "required = true\ndefault = \"x\"\nmax_length",
        ),
        GRAPH,
    );
    assert_eq!(
        both,
        ["t.toml: param `prompt`: has both `required = true` and a default; keep one"]
    );
    let neither = load_problems(&manifest_with("default = true\n", ""), GRAPH);
    assert_eq!(
        neither,
        ["t.toml: param `flag`: needs `required = true` or a `default`"]
    );
}

#[test]
fn image_params_are_required_without_default() {
    let manifest = manifest_with("type = \"image\"\nrequired = true", "type = \"image\"");
    assert_eq!(
        load_problems(&manifest, GRAPH),
        ["t.toml: param `image`: image params must be `required = true`"]
    );
    let manifest = manifest_with(
        "type = \"image\"\nrequired = true",
        "type = \"image\"\ndefault = \"a.png\"",
    );
    assert_eq!(
        load_problems(&manifest, GRAPH),
        ["t.toml: param `image`: image params cannot have a default"]
    );
}

#[test]
fn seed_may_have_a_fixed_default() {
    let wf = Workflow::from_sources(
        "t",
        &manifest_with("type = \"seed\"", "type = \"seed\"\ndefault = 7"),
        GRAPH,
    )
    .expect("loads");
    assert_eq!(
        wf.validate(&minimal()).expect("accepted").values["seed"],
        json!(7)
    );
}

#[test]
fn type_specific_keys_and_bounds_are_checked() {
    let unknown_type = load_problems(
        &manifest_with(r#"type = "boolean""#, r#"type = "bool""#),
        GRAPH,
    );
    assert_eq!(
        unknown_type,
        ["t.toml: param `flag`: unknown type `bool` (expected string, integer, float, boolean, enum, image or seed)"]
    );
    let misplaced = load_problems(
        &manifest_with("min = 64\n", "min = 64\nmax_length = 3\nvalues = [\"a\"]\n"),
        GRAPH,
    );
    assert_eq!(
        misplaced,
        [
            "t.toml: param `width`: `max_length` only applies to string params",
            "t.toml: param `width`: `values` only applies to enum params",
        ]
    );
    let seed_bounds = load_problems(
        &manifest_with("type = \"seed\"", "type = \"seed\"\nmax = 10"),
        GRAPH,
    );
    assert_eq!(
        seed_bounds,
        ["t.toml: param `seed`: `max` only applies to integer and float params"]
    );
    let inverted = load_problems(&manifest_with("min = 64", "min = 4096"), GRAPH);
    assert_has(&inverted, "param `width`: min 4096 is above max 2048");
    let not_int = load_problems(&manifest_with("min = 64", "min = 6.5"), GRAPH);
    assert_has(
        &not_int,
        "param `width`: `min` must be an integer, got a number with a fraction",
    );
    let zero_len = load_problems(&manifest_with("max_length = 5", "max_length = 0"), GRAPH);
    assert_eq!(
        zero_len,
        ["t.toml: param `prompt`: max_length 0 must be at least 1"]
    );
    let bad_name = load_problems(
        &manifest_with("[params.flag]", "[params.\"my-flag\"]"),
        GRAPH,
    );
    assert_eq!(
        bad_name,
        ["t.toml: param `my-flag`: name must match [A-Za-z_][A-Za-z0-9_]*"]
    );
}

#[test]
fn unknown_keys_and_bad_toml_name_the_line() {
    let typo = load_problems(&manifest_with("max_length = 5", "maxlength = 5"), GRAPH);
    assert_eq!(typo.len(), 1);
    // MANIFEST starts with a newline: `max_length` is on its 10th line.
    assert!(typo[0].starts_with("t.toml: line 10: "), "{typo:?}");
    assert!(typo[0].contains("unknown field `maxlength`"), "{typo:?}");
    let syntax = load_problems("name = \"t\"\n[outputs\n", GRAPH);
    assert_eq!(syntax.len(), 1);
    assert!(syntax[0].starts_with("t.toml: line 2: "), "{syntax:?}");
    assert!(
        !syntax[0].contains('\n'),
        "one line per problem: {syntax:?}"
    );
}

#[test]
fn graph_problems_are_reported() {
    let not_json = load_problems(MANIFEST, "{ not json");
    assert_eq!(not_json.len(), 1);
    assert!(
        not_json[0].starts_with("t.toml: graph t.json: invalid JSON: "),
        "{not_json:?}"
    );
    let ui = load_problems(MANIFEST, r#"{"nodes": [], "links": [], "version": 0.4}"#);
    assert_eq!(ui, ["t.toml: graph t.json: this is a UI-format export; export the workflow in API format instead"]);
    let shapes = load_problems(
        manifest_with(r#"nodes = ["2"]"#, r#"nodes = ["1"]"#)
            .split("[params")
            .next()
            .unwrap_or_default(),
        r#"{"1": {"inputs": {}}, "2": {"class_type": "X"}, "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": ["1", 0]}}}"#,
    );
    assert_eq!(
        shapes,
        [
            "t.toml: graph t.json: node `1` has no string `class_type`",
            "t.toml: graph t.json: node `2` has no `inputs` object",
            "t.toml: graph t.json: node `3`: `filename_prefix` must be a literal string (comfyd rewrites it per task)",
        ]
    );
}

#[test]
fn every_problem_of_a_manifest_is_listed() {
    let manifest = manifest_with("default = 512", "default = 0")
        .replace(r#"default = "euler""#, r#"default = "heun""#);
    let problems = load_problems(&manifest, GRAPH);
    assert_eq!(
        problems,
        [
            "t.toml: param `width`: default 0 is below min 64",
            r#"t.toml: param `sampler`: default "heun" is not in `values`"#
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Loading directories

/// A fresh directory holding the given files.
fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write file");
    }
    dir
}

#[test]
fn a_directory_with_one_broken_workflow_fails_whole() {
    let good = manifest_with(r#"name = "t""#, r#"name = "good""#);
    let bad = manifest_with(r#"name = "t""#, r#"name = "x""#)
        .replace("min = 64", "min = 1")
        .replace("default = 512", "default = 0");
    let dir = dir_with(&[
        ("good.toml", &good),
        ("good.json", GRAPH),
        ("x.toml", &bad),
        ("x.json", GRAPH),
    ]);
    let err = WorkflowSet::load_dir(dir.path()).expect_err("x is broken");
    let file = dir.path().join("x.toml");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: param `width`: default 0 is below min 1",
            file.display()
        )
    );
}

#[test]
fn load_error_lists_problems_of_several_files_one_per_line() {
    let a = manifest_with(r#"name = "t""#, r#"name = "a""#).replace("default = 512", "default = 1");
    let b = manifest_with(r#"name = "t""#, r#"name = "b""#);
    // b.json is missing.
    let dir = dir_with(&[("a.toml", &a), ("a.json", GRAPH), ("b.toml", &b)]);
    let err = WorkflowSet::load_dir(dir.path()).expect_err("both broken");
    let text = err.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].ends_with("a.toml: param `width`: default 1 is below min 64"),
        "{err}"
    );
    assert!(lines[1].contains("b.toml: cannot read graph"), "{err}");
}

#[test]
fn graph_key_picks_another_file_but_not_outside_the_directory() {
    let named = format!(
        "graph = \"shared.json\"\n{}",
        manifest_with(r#"name = "t""#, r#"name = "w""#)
    );
    let dir = dir_with(&[("w.toml", &named), ("shared.json", GRAPH)]);
    let set = WorkflowSet::load_dir(dir.path()).expect("loads");
    assert_eq!(set.len(), 1);
    assert!(set.get("w").is_some());

    let escaping = named.replace("shared.json", "../shared.json");
    let dir = dir_with(&[("w.toml", &escaping)]);
    let err = WorkflowSet::load_dir(dir.path()).expect_err("escapes");
    assert!(
        err.to_string().ends_with(
            "graph `../shared.json` must be a relative path inside the workflows directory"
        ),
        "{err}"
    );
}

#[test]
fn missing_directory_is_an_error_and_stray_json_is_ignored() {
    let err =
        WorkflowSet::load_dir(Path::new("/nonexistent/comfyd-workflows")).expect_err("no dir");
    assert!(
        err.to_string()
            .starts_with("/nonexistent/comfyd-workflows: cannot read directory"),
        "{err}"
    );
    let dir = dir_with(&[("lonely.json", GRAPH), ("notes.txt", "hi")]);
    let set = WorkflowSet::load_dir(dir.path()).expect("loads");
    assert!(set.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Schema and description

#[test]
fn json_schema_describes_every_param() {
    let schema = workflow().json_schema();
    assert_eq!(
        schema["$schema"],
        json!("https://json-schema.org/draft/2020-12/schema")
    );
    assert_eq!(schema["type"], json!("object"));
    assert_eq!(schema["additionalProperties"], json!(false));
    assert_eq!(schema["required"], json!(["prompt", "image"]));
    let p = &schema["properties"];
    assert_eq!(
        p["prompt"],
        json!({"type": "string", "maxLength": 5, "description": "What to draw"})
    );
    assert_eq!(
        p["width"],
        json!({"type": "integer", "minimum": 64, "maximum": 2048, "default": 512})
    );
    assert_eq!(
        p["cfg"],
        json!({"type": "number", "minimum": 0.0, "maximum": 30.0, "default": 7.5})
    );
    assert_eq!(p["flag"], json!({"type": "boolean", "default": true}));
    assert_eq!(
        p["sampler"],
        json!({"type": "string", "enum": ["euler", "dpmpp_2m"], "default": "euler"})
    );
    assert_eq!(p["seed"]["type"], json!("integer"));
    assert_eq!(p["seed"]["minimum"], json!(0));
    assert_eq!(p["seed"]["maximum"], json!(9_007_199_254_740_991_u64));
    assert_eq!(p["seed"]["description"], json!("(random when omitted)"));
    assert_eq!(p["image"]["type"], json!("string"));
    assert!(p["image"]["description"]
        .as_str()
        .is_some_and(|d| d.contains("base64")));
    assert_eq!(p.as_object().map(|o| o.len()), Some(7));
}

#[test]
fn describe_lists_name_description_schema_and_outputs() {
    let wf = workflow();
    let d = wf.describe();
    assert_eq!(d["name"], json!("t"));
    assert_eq!(d["description"], json!("test workflow"));
    assert_eq!(d["params"], wf.json_schema());
    assert_eq!(d["outputs"], json!(["2"]));
}

// ---------------------------------------------------------------------------------------------
// object_info checks, with the recorded entries

/// Lines of a recorded transcript.
fn transcript(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(fixture(&format!("transcripts/{name}.jsonl")))
        .expect("transcript exists");
    text.lines()
        .map(|l| serde_json::from_str(l).expect("transcript line is JSON"))
        .collect()
}

/// The body of the recorded `GET /object_info/<class>` answer.
fn recorded_object_info(class: &str) -> Value {
    let path = format!("/object_info/{class}");
    transcript("http_basics")
        .into_iter()
        .find(|l| l["dir"] == "http-resp" && l["path"] == json!(path))
        .map(|l| l["body"][class].clone())
        .expect("recorded object_info entry")
}

/// The `input_config` a recorded validation error gave for `class`.`input`.
fn recorded_input_config(class: &str, input: &str) -> Value {
    for line in transcript("e_validation_errors") {
        let Some(errors) = line["body"]["node_errors"].as_object() else {
            continue;
        };
        for node in errors.values().filter(|n| n["class_type"] == json!(class)) {
            for error in node["errors"].as_array().into_iter().flatten() {
                if error["extra_info"]["input_name"] == json!(input)
                    && !error["extra_info"]["input_config"].is_null()
                {
                    return error["extra_info"]["input_config"].clone();
                }
            }
        }
    }
    panic!("no recorded input_config for {class}.{input}");
}

/// object_info for the model-free node classes: SaveImage and LoadImage as recorded; EmptyImage's
/// width/height from a recorded error; the rest as ComfyUI 0.3.64 declares them.
fn object_info() -> Value {
    let size = recorded_input_config("EmptyImage", "width");
    json!({
        "SaveImage": recorded_object_info("SaveImage"),
        "LoadImage": recorded_object_info("LoadImage"),
        "EmptyImage": {"input": {"required": {
            "width": size, "height": size,
            "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}],
            "color": ["INT", {"default": 0, "min": 0, "max": 0xFFFFFF, "step": 1, "display": "color"}]
        }}},
        "ImageInvert": {"input": {"required": {"image": ["IMAGE"]}}},
        "PreviewImage": {"input": {"required": {"images": ["IMAGE"]}, "hidden": {"prompt": "PROMPT"}}},
        "ImageScale": {"input": {"required": {
            "image": ["IMAGE"],
            "upscale_method": recorded_input_config("ImageScale", "upscale_method"),
            "width": ["INT", {"default": 512, "min": 0, "max": 16384}],
            "height": ["INT", {"default": 512, "min": 0, "max": 16384}],
            "crop": [["disabled", "center"]]
        }}}
    })
}

fn shipped() -> WorkflowSet {
    WorkflowSet::load_dir(&repo().join("workflows")).expect("shipped workflows load")
}

#[test]
fn model_free_shipped_workflows_pass_the_recorded_object_info() {
    let set = shipped();
    let model_free = ["solid", "invert", "batch3", "preview"];
    let only = WorkflowSet::from_workflows(
        model_free
            .iter()
            .map(|n| (**set.get(n).expect("shipped")).clone()),
    );
    assert_eq!(
        check_against_object_info(&only, &object_info()),
        Vec::<String>::new()
    );
}

#[test]
fn missing_node_classes_are_reported() {
    let set = shipped();
    let problems = check_against_object_info(&set, &object_info());
    for class in [
        "KSampler",
        "CheckpointLoaderSimple",
        "CLIPTextEncode",
        "EmptyLatentImage",
        "VAEDecode",
        "VAEEncode",
    ] {
        assert_has(
            &problems,
            &format!("class `{class}` is not available on the backend"),
        );
    }
    assert!(
        problems
            .iter()
            .all(|p| p.starts_with("text2img: ") || p.starts_with("img2img: ")),
        "{problems:#?}"
    );
}

#[test]
fn a_fixed_combo_value_the_backend_lacks_is_reported() {
    let graph = std::fs::read_to_string(fixture("workflows/e_invalid_bad_combo_value.json"))
        .expect("fixture");
    let manifest = "name = \"bad\"\n[outputs]\nnodes = [\"3\"]\n";
    let wf = Workflow::from_sources("bad", manifest, &graph).expect("loads offline");
    let set = WorkflowSet::from_workflows([wf]);
    assert_eq!(
        check_against_object_info(&set, &object_info()),
        [
            r#"bad: node `2` (ImageScale) input `upscale_method`: "no-such-method" is not offered by the backend (offered: "nearest-exact", "bilinear", "area", "bicubic", "lanczos")"#
        ]
    );
    // The newer COMBO form is read the same way.
    let mut info = object_info();
    info["ImageScale"]["input"]["required"]["upscale_method"] =
        json!(["COMBO", {"options": ["nearest-exact", "bilinear"], "default": "bilinear"}]);
    assert_has(
        &check_against_object_info(&set, &info),
        r#""no-such-method" is not offered by the backend (offered: "nearest-exact", "bilinear")"#,
    );
    // A valid value passes.
    let fixed = Workflow::from_sources(
        "bad",
        manifest,
        &graph.replace("no-such-method", "bilinear"),
    )
    .expect("loads");
    assert_eq!(
        check_against_object_info(&WorkflowSet::from_workflows([fixed]), &info),
        Vec::<String>::new()
    );
}

#[test]
fn an_input_file_the_backend_lacks_is_reported_unless_a_param_sets_it() {
    let graph = std::fs::read_to_string(fixture(
        "workflows/b_img2img_loadimage_invert_saveimage.json",
    ))
    .expect("fixture");
    let fixed = Workflow::from_sources(
        "inv",
        "name = \"inv\"\n[outputs]\nnodes = [\"3\"]\n",
        &graph,
    )
    .expect("loads");
    let problems = check_against_object_info(&WorkflowSet::from_workflows([fixed]), &object_info());
    assert_eq!(
        problems,
        [
            r#"inv: node `1` (LoadImage) input `image`: "proto_in.png" is not offered by the backend (it offers none)"#
        ]
    );
}

#[test]
fn enum_values_and_ranges_are_checked_against_the_backend() {
    let manifest = r#"
name = "m"
[outputs]
nodes = ["3"]
[params.method]
type = "enum"
values = ["bicubic", "magic"]
default = "bicubic"
targets = [{ node = "2", input = "upscale_method" }]
[params.width]
type = "integer"
default = 32
min = 0
targets = [{ node = "2", input = "width" }]
[params.height]
type = "float"
default = 32
min = -1
max = 99999
targets = [{ node = "2", input = "height" }]
"#;
    let graph = std::fs::read_to_string(fixture("workflows/e_invalid_bad_combo_value.json"))
        .expect("fixture");
    let wf = Workflow::from_sources("m", manifest, &graph).expect("loads");
    let problems = check_against_object_info(&WorkflowSet::from_workflows([wf]), &object_info());
    assert_eq!(
        problems,
        [
            r#"m: param `method`: value "magic" is not offered by node `2` (ImageScale) input `upscale_method` (offered: "nearest-exact", "bilinear", "area", "bicubic", "lanczos")"#,
            "m: param `width`: allows values above 16384, the maximum of node `2` (ImageScale) input `width`",
            "m: param `height`: allows values below 0, the minimum of node `2` (ImageScale) input `height`",
            "m: param `height`: allows values above 16384, the maximum of node `2` (ImageScale) input `height`",
        ]
    );
}

#[test]
fn missing_required_inputs_and_unknown_target_inputs_are_reported() {
    let graph = r#"{
      "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "colour": 0}},
      "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}
    }"#;
    let manifest = "name = \"r\"\n[outputs]\nnodes = [\"2\"]\n[params.c]\ntype = \"integer\"\ndefault = 0\ntargets = [{ node = \"1\", input = \"colour\" }]\n";
    let wf = Workflow::from_sources("r", manifest, graph).expect("loads");
    let problems = check_against_object_info(&WorkflowSet::from_workflows([wf]), &object_info());
    assert_eq!(
        problems,
        [
            "r: node `1` (EmptyImage) lacks required input `color`",
            "r: param `c`: node `1` (EmptyImage) input `colour` is not an input on the backend",
        ]
    );
}

#[test]
fn object_info_must_be_an_object() {
    assert_eq!(
        check_against_object_info(&shipped(), &json!([])),
        ["object_info is not a JSON object"]
    );
}

// ---------------------------------------------------------------------------------------------
// The shipped workflows

#[test]
fn shipped_workflows_load_sorted_by_name() {
    let set = shipped();
    let names: Vec<&str> = set.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(
        names,
        ["batch3", "img2img", "invert", "preview", "solid", "text2img"]
    );
    assert_eq!(set.len(), 6);
}

#[test]
fn shipped_text2img_has_the_documented_params() {
    let set = shipped();
    let wf = set.get("text2img").expect("text2img");
    let names: Vec<&str> = wf.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "prompt",
            "negative_prompt",
            "width",
            "height",
            "batch_size",
            "steps",
            "cfg",
            "sampler",
            "seed"
        ]
    );
    let r = wf
        .validate(&json!({"prompt": "a lighthouse at dusk"}))
        .expect("prompt alone is enough");
    let graph = wf.render(&r, "0b7e");
    assert_eq!(input(&graph, "6", "text"), &json!("a lighthouse at dusk"));
    assert_eq!(input(&graph, "7", "text"), &json!(""));
    assert_eq!(input(&graph, "5", "width"), &json!(512));
    assert_eq!(input(&graph, "3", "sampler_name"), &json!("euler"));
    assert_eq!(
        input(&graph, "9", "filename_prefix"),
        &json!("comfyd/0b7e/text2img")
    );
    assert_eq!(
        input(&graph, "4", "ckpt_name"),
        &json!("v1-5-pruned-emaonly.safetensors")
    );
    assert!(wf.validate(&json!({"prompt": "x", "width": 4096})).is_err());
    assert!(wf
        .validate(&json!({"prompt": "x", "batch_size": 9}))
        .is_err());
}

#[test]
fn shipped_img2img_and_invert_take_an_image() {
    let set = shipped();
    for name in ["img2img", "invert"] {
        let wf = set.get(name).expect("shipped");
        let mut params = json!({"image": format!("data:image/png;base64,{}", png_b64())});
        if name == "img2img" {
            params["prompt"] = json!("oil painting");
            params["denoise"] = json!(1);
        }
        let r = wf.validate(&params).expect("accepted");
        assert_eq!(r.images.len(), 1, "{name}");
        assert_eq!(
            r.images[0].targets,
            [Target {
                node: "1".into(),
                input: "image".into()
            }],
            "{name}"
        );
        let mut graph = wf.render(&r, "t");
        set_image(&mut graph, &r.images[0].targets, "comfyd/t-image.png");
        assert_eq!(
            input(&graph, "1", "image"),
            &json!("comfyd/t-image.png"),
            "{name}"
        );
    }
    let img2img = set.get("img2img").expect("shipped");
    assert_eq!(
        img2img.param("denoise").and_then(|p| p.default.clone()),
        Some(json!(0.75))
    );
    assert!(img2img
        .validate(&json!({"image": png_b64(), "prompt": "x", "denoise": 1.5}))
        .is_err());
}

#[test]
fn shipped_model_free_workflows_render_their_outputs_per_task() {
    let set = shipped();
    let solid = set.get("solid").expect("solid");
    let r = solid
        .validate(&json!({"color": 255, "width": 64, "height": 32, "batch_size": 2}))
        .expect("accepted");
    let graph = solid.render(&r, "s1");
    assert_eq!(
        graph["1"]["inputs"],
        json!({"width": 64, "height": 32, "batch_size": 2, "color": 255})
    );
    assert_eq!(
        input(&graph, "2", "filename_prefix"),
        &json!("comfyd/s1/solid")
    );
    assert!(solid.validate(&json!({"color": 16_777_216})).is_err());

    let batch3 = set.get("batch3").expect("batch3");
    let graph = batch3.render(&batch3.validate(&Value::Null).expect("all defaults"), "b1");
    assert_eq!(input(&graph, "1", "batch_size"), &json!(3));
    assert_eq!(
        input(&graph, "2", "filename_prefix"),
        &json!("comfyd/b1/b3")
    );

    let preview = set.get("preview").expect("preview");
    assert_eq!(preview.output_nodes, ["2"]);
    let graph = preview.render(&preview.validate(&json!({})).expect("all defaults"), "p1");
    assert_eq!(graph["2"]["class_type"], json!("PreviewImage"));
    assert!(graph["2"]["inputs"].get("filename_prefix").is_none());
}

#[test]
fn an_output_node_that_is_not_an_output_class_is_reported() {
    let graph = std::fs::read_to_string(fixture(
        "workflows/b_img2img_loadimage_invert_saveimage.json",
    ))
    .expect("fixture");
    let manifest = "name = \"o\"\n[outputs]\nnodes = [\"1\", \"3\"]\n[params.image]\ntype = \"image\"\nrequired = true\ntargets = [{ node = \"1\", input = \"image\" }]\n";
    let wf = Workflow::from_sources("o", manifest, &graph).expect("loads");
    let problems = check_against_object_info(&WorkflowSet::from_workflows([wf]), &object_info());
    // SaveImage (node 3) is recorded with output_node: true and passes.
    assert_eq!(
        problems,
        ["o: output node `1` (LoadImage) is not an output node on the backend, so it produces no files"]
    );
}

// ---------------------------------------------------------------------------------------------
// Aliases

const ALIASED: &str = r#"
name = "t"
[outputs]
nodes = ["2"]
[params.prompt]
type = "string"
required = true
aliases = ["text", "caption"]
targets = [{ node = "3", input = "text" }]
[params.negative]
type = "string"
default = ""
aliases = ["neg"]
targets = [{ node = "6", input = "text" }]
"#;

fn aliased() -> Workflow {
    Workflow::from_sources("t", ALIASED, GRAPH).expect("loads")
}

#[test]
fn an_alias_sets_its_param_and_errors_name_the_field_as_sent() {
    let r = aliased()
        .validate(&json!({ "text": "a lighthouse", "neg": "fog" }))
        .expect("valid");
    assert_eq!(r.values["prompt"], json!("a lighthouse"));
    assert_eq!(r.values["negative"], json!("fog"));
    let errors = aliased()
        .validate(&json!({ "caption": 3 }))
        .expect_err("wrong type");
    assert_eq!(errors[0].field, "params.caption");
    // Null counts as absent under an alias too.
    let r = aliased()
        .validate(&json!({ "prompt": "x", "text": null }))
        .expect("valid");
    assert_eq!(r.values["prompt"], json!("x"));
}

#[test]
fn a_name_and_its_alias_together_are_refused_naming_both() {
    let errors = aliased()
        .validate(&json!({ "prompt": "a", "text": "b", "neg": "c", "negative": "d" }))
        .expect_err("both");
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(errors[0].field, "params.prompt");
    assert!(
        errors[0].reason.contains("`prompt` and `text`"),
        "{errors:?}"
    );
    assert!(
        errors[1].reason.contains("`negative` and `neg`"),
        "{errors:?}"
    );
}

#[test]
fn aliases_must_be_names_unique_across_the_workflow() {
    let bad = ALIASED.replace(
        r#"aliases = ["neg"]"#,
        r#"aliases = ["text", "negative", "bad-name"]"#,
    );
    let err = Workflow::from_sources("t", &bad, GRAPH).expect_err("clashes");
    let text = err.to_string();
    assert!(
        text.contains("alias `text` is already the name or an alias of param `prompt`"),
        "{text}"
    );
    assert!(text.contains("alias `negative` is listed twice"), "{text}");
    assert!(text.contains("alias `bad-name` must match"), "{text}");
}

#[test]
fn the_schema_lists_aliases_and_requires_exactly_one_name() {
    let schema = aliased().json_schema();
    assert_eq!(schema["required"], json!([]));
    assert_eq!(
        schema["properties"]["prompt"]["x-aliases"],
        json!(["text", "caption"])
    );
    assert_eq!(schema["properties"]["caption"]["x-alias-of"], "prompt");
    assert_eq!(schema["properties"]["neg"]["type"], "string");
    assert_eq!(
        schema["allOf"],
        json!([
            {"oneOf": [{"required": ["prompt"]}, {"required": ["text"]}, {"required": ["caption"]}]},
            {"not": {"anyOf": [{"required": ["negative", "neg"]}]}}
        ])
    );
}

#[test]
fn the_shipped_workflows_take_the_originals_names() {
    let set = WorkflowSet::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows"))
        .expect("shipped workflows load");
    let t2i = set.get("text2img").expect("text2img");
    let r = t2i
        .validate(&json!({ "text": "2capys" }))
        .expect("only text");
    assert_eq!(r.values["prompt"], json!("2capys"));
    let i2i = set.get("img2img").expect("img2img");
    let r = i2i
        .validate(&json!({ "text": "2capys", "image": png_b64() }))
        .expect("text and image");
    assert_eq!(r.values["prompt"], json!("2capys"));
    assert_eq!(r.images.len(), 1);
}

#[test]
fn ignored_names_are_accepted_dropped_and_described() {
    let manifest = format!("ignored = [\"image\", \"strength\"]\n{ALIASED}");
    let w = Workflow::from_sources("t", &manifest, GRAPH).expect("loads");
    let r = w
        .validate(&json!({ "text": "a", "image": "not base64 at all", "strength": 3 }))
        .expect("ignored names pass");
    assert_eq!(r.values["prompt"], json!("a"));
    assert!(
        !r.values.contains_key("image") && r.images.is_empty(),
        "{r:?}"
    );
    // Still unknown: anything not listed.
    let errors = w
        .validate(&json!({ "text": "a", "imag": 1 }))
        .expect_err("typo");
    assert_eq!(errors[0].field, "params.imag");
    let schema = w.json_schema();
    assert_eq!(schema["properties"]["image"]["x-ignored"], true);

    for (bad, problem) in [
        ("ignored = [\"text\"]", "alias of param `prompt`"),
        (
            "ignored = [\"prompt\"]",
            "name or an alias of param `prompt`",
        ),
        ("ignored = [\"a-b\"]", "must match"),
        ("ignored = [\"x\", \"x\"]", "listed twice"),
    ] {
        let problems = Workflow::from_sources("t", &format!("{bad}\n{ALIASED}"), GRAPH)
            .expect_err(bad)
            .problems;
        assert!(
            problems.iter().any(|p| p.contains(problem)),
            "{bad}: {problems:?}"
        );
    }
}

#[test]
fn the_shipped_text2img_ignores_the_image_the_originals_readme_sends_it() {
    let set = WorkflowSet::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows"))
        .expect("shipped workflows load");
    let t2i = set.get("text2img").expect("text2img");
    let r = t2i
        .validate(&json!({ "text": "2capys", "image": "base64_format " }))
        .expect("the README's example");
    assert_eq!(r.values["prompt"], json!("2capys"));
    assert!(r.images.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Smoke inputs

#[test]
fn a_smoke_table_is_checked_like_a_body_and_kept() {
    let good = format!(
        "{MANIFEST}\n[smoke]\nprompt = \"cat\"\nimage = \"{}\"\n",
        png_b64()
    );
    let w = Workflow::from_sources("t", &good, GRAPH).expect("good smoke loads");
    assert_eq!(
        w.smoke.as_ref().and_then(|s| s["prompt"].as_str()),
        Some("cat")
    );
    assert!(workflow().smoke.is_none());

    let bad = format!("{MANIFEST}\n[smoke]\nprompt = 5\nnope = 1\n");
    let problems = load_problems(&bad, GRAPH);
    assert_has(&problems, "t.toml: smoke.prompt: ");
    assert_has(&problems, "t.toml: smoke.image: ");
    assert_has(&problems, "t.toml: smoke.nope: ");
}
