//! Unit tests of snapshots, their hash, needs and `missing`.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::environment::{self, Environment};
use super::*;

fn shipped_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows")
}

/// A copy of the shipped workflows in a temp folder, to change.
fn draft() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for entry in std::fs::read_dir(shipped_dir()).expect("workflows dir") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().expect("name"))).expect("copy");
        }
    }
    dir
}

fn files(list: &[(&str, &str, &str)]) -> Vec<WorkflowFiles> {
    list.iter()
        .map(|(n, m, g)| WorkflowFiles {
            name: n.to_string(),
            manifest: m.to_string(),
            graph: g.to_string(),
        })
        .collect()
}

#[test]
fn the_snapshot_of_a_draft_is_what_load_dir_loads() {
    let snap = Snapshot::of_dir(&shipped_dir()).expect("shipped workflows load");
    let set = crate::workflow::WorkflowSet::load_dir(&shipped_dir()).expect("load");
    assert_eq!(
        snap.names(),
        set.iter().map(|w| w.name.clone()).collect::<Vec<_>>()
    );
    let rebuilt = snap.workflow_set().expect("stored texts load");
    for w in set.iter() {
        let r = rebuilt.get(&w.name).expect("same names");
        assert_eq!(r.graph, w.graph);
        assert_eq!(r.params, w.params);
        assert_eq!(r.output_nodes, w.output_nodes);
        assert_eq!(r.smoke, w.smoke);
    }
    assert!(snap.content_hash.starts_with("sha256:"));
    assert_eq!(snap.content_hash.len(), 7 + 64);
    let again = Snapshot::from_files(snap.files.clone()).expect("from files");
    assert_eq!(again, snap);
}

#[test]
fn a_draft_that_does_not_load_fails_as_load_dir_does() {
    let dir = draft();
    std::fs::write(dir.path().join("solid.toml"), "name = \"solid\"\n").expect("write");
    let a = Snapshot::of_dir(dir.path()).expect_err("broken");
    let b = crate::workflow::WorkflowSet::load_dir(dir.path()).expect_err("broken");
    assert_eq!(a, b);
}

#[test]
fn the_same_content_gives_the_same_hash_whatever_the_order_read() {
    let a = files(&[("a", "m1", "g1"), ("b", "m2", "g2")]);
    let mut b = a.clone();
    b.reverse();
    assert_eq!(content_hash(&a), content_hash(&b));
    // From two folders with the same files, at different times: the same hash.
    let one = Snapshot::of_dir(draft().path()).expect("load");
    let two = Snapshot::of_dir(draft().path()).expect("load");
    assert_eq!(one.content_hash, two.content_hash);
}

#[test]
fn any_byte_of_a_manifest_or_graph_changes_the_hash() {
    let base = files(&[("a", "m1", "g1"), ("b", "m2", "g2")]);
    let h = content_hash(&base);
    for (i, part) in [(0, 1), (0, 2), (1, 1), (1, 2), (1, 0)] {
        let mut changed = base.clone();
        let f = &mut changed[i];
        match part {
            0 => f.name.push('x'),
            1 => f.manifest.push(' '),
            _ => f.graph.push(' '),
        }
        assert_ne!(content_hash(&changed), h, "file {i} part {part}");
    }
    // Moving bytes from one field to the next is a different content too (length prefixes).
    let shifted = files(&[("a", "m1g", "1"), ("b", "m2", "g2")]);
    assert_ne!(content_hash(&shifted), h);
    // A change on disk changes the snapshot's hash.
    let dir = draft();
    let before = Snapshot::of_dir(dir.path()).expect("load").content_hash;
    let path = dir.path().join("solid.json");
    let text = std::fs::read_to_string(&path).expect("read");
    std::fs::write(&path, format!("{text}\n")).expect("write");
    assert_ne!(
        Snapshot::of_dir(dir.path()).expect("load").content_hash,
        before
    );
}

#[test]
fn needs_are_every_class_type_and_every_model_file_input() {
    let graph = json!({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15/v1-5.safetensors"}},
        "2": {"class_type": "LoraLoader", "inputs": {"lora_name": "x.SFT", "model": ["1", 0], "strength": 1.0}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat.bin"}},
        "4": {"class_type": "SaveImage", "inputs": {"filename_prefix": "out", "note": "readme.txt"}},
        "5": {"class_type": "X", "inputs": {"a": ".pt", "b": "dir.pt/file"}},
    });
    let needs = Needs::of_graph(graph.as_object().expect("object"));
    assert_eq!(
        needs
            .node_classes
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        [
            "CLIPTextEncode",
            "CheckpointLoaderSimple",
            "LoraLoader",
            "SaveImage",
            "X"
        ]
    );
    let models: Vec<(String, String)> = needs
        .models
        .iter()
        .map(|m| (m.input.clone(), m.file.clone()))
        .collect();
    // A prompt that happens to end in `.bin` is taken for a file: the check errs on the safe side.
    assert_eq!(
        models,
        [
            ("ckpt_name".to_string(), "sd15/v1-5.safetensors".to_string()),
            ("lora_name".to_string(), "x.SFT".to_string()),
            ("text".to_string(), "a photo of a cat.bin".to_string()),
        ]
    );
    let shipped = Snapshot::of_dir(&shipped_dir()).expect("load").needs;
    assert!(shipped.node_classes.contains("KSampler"));
    assert!(shipped
        .models
        .iter()
        .any(|m| m.input == "ckpt_name" && m.file == "v1-5-pruned-emaonly.safetensors"));
}

fn dev_server() -> Environment {
    let mut env = Environment::default();
    environment::apply_system_stats(
        &mut env,
        &json!({"system": {"comfyui_version": "0.3.64", "python_version": "3.11", "pytorch_version": "2.8"},
                "devices": [{"name": "cuda:0 RTX", "type": "cuda", "vram_total": 8}]}),
    )
    .expect("stats");
    environment::apply_object_info(
        &mut env,
        &json!({
            "KSampler": {"python_module": "nodes"},
            "CheckpointLoaderSimple": {"python_module": "nodes"},
            "Fancy": {"python_module": "custom_nodes.ComfyUI-Fancy"},
            "Other": {"python_module": "custom_nodes.one_file.py"},
        }),
    )
    .expect("object_info");
    let folders = environment::model_folders(&json!(["checkpoints", "loras"])).expect("folders");
    assert_eq!(folders, ["checkpoints", "loras"]);
    env.models.insert(
        "checkpoints".into(),
        environment::model_files("GET /models/checkpoints", &json!(["sd15/v1-5.safetensors"]))
            .expect("files"),
    );
    env
}

#[test]
fn the_environment_keeps_versions_classes_and_custom_node_packages() {
    let env = dev_server();
    assert_eq!(env.comfyui_version.as_deref(), Some("0.3.64"));
    assert_eq!(env.devices[0].kind, "cuda");
    assert_eq!(env.node_class_count, 4);
    assert_eq!(
        env.custom_nodes
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        ["custom_nodes.ComfyUI-Fancy", "custom_nodes.one_file"]
    );
}

#[test]
fn missing_lists_the_classes_and_models_the_server_lacks() {
    let graph = json!({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15/v1-5.safetensors"}},
        "2": {"class_type": "LoraLoader", "inputs": {"lora_name": "x.safetensors"}},
        "3": {"class_type": "KSampler", "inputs": {}},
    });
    let needs = Needs::of_graph(graph.as_object().expect("object"));
    let missing = missing(&needs, &dev_server());
    assert_eq!(
        missing
            .node_classes
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        ["LoraLoader"]
    );
    assert_eq!(
        missing
            .models
            .iter()
            .map(|m| m.file.as_str())
            .collect::<Vec<_>>(),
        ["x.safetensors"]
    );
    let problems = missing.problems();
    assert_eq!(problems.len(), 2);
    assert!(problems[0].contains("`LoraLoader`"), "{problems:?}");
    assert!(problems[1].contains("`x.safetensors`"), "{problems:?}");
    let everything = Needs {
        node_classes: ["KSampler".to_string()].into(),
        models: Default::default(),
    };
    assert!(super::missing(&everything, &dev_server()).is_empty());
}

#[test]
fn untrusted_answers_are_refused_naming_the_call() {
    let mut env = Environment::default();
    for (call, err) in [
        (
            "GET /object_info",
            environment::apply_object_info(&mut env, &json!([1])),
        ),
        (
            "GET /object_info",
            environment::apply_object_info(&mut env, &json!({"bad\nname": {}})),
        ),
        (
            "GET /system_stats",
            environment::apply_system_stats(&mut env, &json!({})),
        ),
        (
            "GET /models",
            environment::model_folders(&json!(["../etc"])).map(|_| ()),
        ),
        (
            "GET /models/x",
            environment::model_files("GET /models/x", &json!([1])).map(|_| ()),
        ),
    ] {
        match err {
            Err(EnvironmentError::Call { call: c, .. }) => assert_eq!(c, call),
            other => panic!("{call}: expected an error, got {other:?}"),
        }
    }
}

#[test]
fn dev_server_urls_are_http_with_a_host_and_no_credentials() {
    for ok in [
        "http://dev-comfyui:8188",
        "https://10.0.0.5/",
        "http://[::1]:8188",
    ] {
        assert!(environment::check_url(ok).is_ok(), "{ok}");
    }
    for bad in [
        "ftp://x",
        "http://user:pw@host:8188",
        "http://user@host",
        "not a url",
        "file:///etc/passwd",
        "http://host/?q=1",
        "unix:/run/comfy.sock",
    ] {
        assert!(
            matches!(
                environment::check_url(bad),
                Err(EnvironmentError::BadUrl(_))
            ),
            "{bad}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Checking a backend (the pure part)

#[test]
fn a_backend_that_cannot_be_read_does_not_pass_and_says_why() {
    let snap = Snapshot::of_dir(&shipped_dir()).expect("shipped");
    let e = EnvironmentError::Call {
        call: "GET /object_info".into(),
        detail: "ComfyUI answered 500".into(),
    };
    let c = check::judge(&snap, Err(&e));
    assert!(!c.passed);
    assert_eq!(c.reasons, ["GET /object_info: ComfyUI answered 500"]);
    assert!(c.missing.is_empty());
    assert_eq!(c.comfyui_version, None);
}

#[test]
fn a_backend_passes_the_static_check_only_with_everything_the_release_needs() {
    let snap = Snapshot::of_dir(&shipped_dir()).expect("shipped");
    // Lacking: the dev server has few classes and another checkpoint.
    let c = check::judge(&snap, Ok(&dev_server()));
    assert!(!c.passed);
    assert_eq!(c.missing, missing(&snap.needs, &dev_server()));
    assert_eq!(c.reasons, c.missing.problems());
    assert_eq!(c.comfyui_version.as_deref(), Some("0.3.64"));
    // Everything: passes, no reasons.
    let mut env = dev_server();
    env.node_classes
        .extend(snap.needs.node_classes.iter().cloned());
    env.models.insert(
        "checkpoints".into(),
        snap.needs.models.iter().map(|m| m.file.clone()).collect(),
    );
    let c = check::judge(&snap, Ok(&env));
    assert!(c.passed, "{:?}", c.reasons);
    assert!(c.reasons.is_empty() && c.missing.is_empty());
}

#[test]
fn smoke_runs_are_the_workflows_with_a_smoke_table_rendered_as_a_task() {
    let snap = Snapshot::of_dir(&shipped_dir()).expect("shipped");
    let (runs, reasons, skipped) = check::smoke_runs(&snap);
    assert!(reasons.is_empty(), "{reasons:?}");
    assert!(skipped.is_empty(), "{skipped:?}");
    let names: Vec<&str> = runs.iter().map(|r| r.workflow.as_str()).collect();
    assert_eq!(names, ["solid"]);
    let g = &runs[0].graph;
    assert_eq!(g["1"]["inputs"]["width"], 8);
    assert_eq!(g["1"]["inputs"]["height"], 8);
    let prefix = g["2"]["inputs"]["filename_prefix"]
        .as_str()
        .expect("prefix");
    assert!(prefix.starts_with("comfyd/smoke-"), "{prefix}");
}

#[test]
fn a_smoke_image_is_uploaded_under_a_smoke_name_and_an_image_url_is_not_run() {
    use base64::Engine;
    let png = {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, 1, 1);
        enc.set_color(png::ColorType::Rgb);
        let mut w = enc.write_header().expect("header");
        w.write_image_data(&[1, 2, 3]).expect("data");
        drop(w);
        out
    };
    let manifest = |image: &str| {
        format!(
            "name = \"inv\"\n[outputs]\nnodes = [\"2\"]\n[params.image]\ntype = \"image\"\nrequired = true\n\
             targets = [{{ node = \"1\", input = \"image\" }}]\n[smoke]\nimage = \"{image}\"\n"
        )
    };
    let graph = json!({
        "1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "i"}},
    })
    .to_string();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let snap = Snapshot::from_files(files(&[("inv", &manifest(&b64), &graph)])).expect("loads");
    let (runs, reasons, skipped) = check::smoke_runs(&snap);
    assert!(
        reasons.is_empty() && skipped.is_empty(),
        "{reasons:?} {skipped:?}"
    );
    let img = &runs[0].images[0];
    assert!(img.name.starts_with("comfyd_smoke_") && img.name.ends_with("_image.png"));
    assert_eq!(
        (img.bytes.as_slice(), img.content_type.as_str()),
        (png.as_slice(), "image/png")
    );
    assert_eq!(img.targets[0].node, "1");

    let by_url = Snapshot::from_files(files(&[(
        "inv",
        &manifest("https://example.com/a.png"),
        &graph,
    )]))
    .expect("loads");
    let (runs, reasons, skipped) = check::smoke_runs(&by_url);
    assert!(runs.is_empty() && reasons.is_empty());
    assert_eq!(skipped, ["inv"]);
}
