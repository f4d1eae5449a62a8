//! Hostile input against the real daemon: a table of bad requests (malformed JSON, wrong types, NUL
//! characters, huge strings, deep nesting, non-UTF-8, wrong content types, integers past every
//! range in every query and body field, broken and oversized images, bad base64 and data URLs,
//! unknown workflows, oversized ids...), each of which must get a 4xx JSON error naming what is
//! wrong, with 0 panics in the daemon's log; on SQLite and on PostgreSQL. And the burst test: the
//! worst of them all at once must keep the daemon's peak RSS under 300 MB, and RSS must fall back
//! afterwards.
//!
//! No backend runs: accepted tasks stay queued, so what is measured is the request path alone.

use std::time::{Duration, Instant};

use awc::http::Method;
use base64::Engine as _;
use bytes::Bytes;
use rand::RngCore as _;
use serde_json::{json, Value};

use crate::support::daemon::{Daemon, DaemonConfig};
use crate::support::db::TestDb;
use crate::support::free_port;

/// One request and what it must get.
struct Case {
    what: String,
    method: Method,
    /// After the route prefix, query included.
    path: String,
    content_type: Option<&'static str>,
    headers: Vec<(&'static str, &'static str)>,
    body: Bytes,
    /// The status it must get.
    status: u16,
    /// A field its error must name (in `fields`), when it has one.
    field: Option<String>,
}

impl Case {
    fn get(
        what: impl Into<String>,
        path: impl Into<String>,
        status: u16,
        field: Option<&str>,
    ) -> Case {
        Case {
            what: what.into(),
            method: Method::GET,
            path: path.into(),
            content_type: None,
            headers: Vec::new(),
            body: Bytes::new(),
            status,
            field: field.map(str::to_owned),
        }
    }

    fn raw(
        what: impl Into<String>,
        path: &str,
        content_type: Option<&'static str>,
        body: impl Into<Bytes>,
        status: u16,
        field: Option<&str>,
    ) -> Case {
        Case {
            what: what.into(),
            method: Method::POST,
            path: path.into(),
            content_type,
            headers: Vec::new(),
            body: body.into(),
            status,
            field: field.map(str::to_owned),
        }
    }

    fn json(
        what: impl Into<String>,
        path: &str,
        body: &Value,
        status: u16,
        field: Option<&str>,
    ) -> Case {
        Case::raw(
            what,
            path,
            Some("application/json"),
            body.to_string(),
            status,
            field,
        )
    }
}

/// The same submit on both routes: the original (`service_type` in the body) and the typed one.
fn submits(
    cases: &mut Vec<Case>,
    what: &str,
    workflow: &str,
    extra: Value,
    status: u16,
    field: &str,
) {
    let mut original = json!({ "service_type": workflow });
    let mut typed = json!({});
    for (k, v) in extra.as_object().expect("an object").clone() {
        original[&k] = v.clone();
        typed[&k] = v;
    }
    cases.push(Case::json(
        format!("{what} (original route)"),
        "",
        &original,
        status,
        Some(field),
    ));
    cases.push(Case::json(
        format!("{what} (typed route)"),
        &format!("/workflows/{workflow}/tasks"),
        &typed,
        status,
        Some(field),
    ));
}

/// A PNG signature and IHDR (with a right CRC) claiming `width` x `height`, then `tail`.
pub fn png_header(width: u32, height: u32, tail: &[u8]) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend_from_slice(&13u32.to_be_bytes());
    let mut chunk = b"IHDR".to_vec();
    chunk.extend_from_slice(&width.to_be_bytes());
    chunk.extend_from_slice(&height.to_be_bytes());
    chunk.extend_from_slice(&[8, 2, 0, 0, 0]);
    out.extend_from_slice(&chunk);
    out.extend_from_slice(&crc32fast::hash(&chunk).to_be_bytes());
    out.extend_from_slice(tail);
    out
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut out = vec![0; n];
    rand::thread_rng().fill_bytes(&mut out);
    out
}

/// Integers past every bound a field could have, as JSON number text.
const HUGE_INTEGERS: [&str; 5] = [
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
];

/// A body that is not the JSON object it should be: (what, content type, bytes, status, field).
type BadBody = (
    &'static str,
    Option<&'static str>,
    Vec<u8>,
    u16,
    Option<&'static str>,
);

fn cases() -> Vec<Case> {
    let mut c = Vec::new();

    // Query integers: limit and offset, every way out of range, values past i64 and u64 included.
    for (name, bad) in [
        (
            "limit",
            &["0", "501", "-1", "1.5", "abc", "1e3", "0x10", "%00", "%FF"][..],
        ),
        ("offset", &["-1", "1.5", "abc", "1e3", "%00"][..]),
    ] {
        for v in bad.iter().chain(&HUGE_INTEGERS[1..]) {
            c.push(Case::get(
                format!("{name}={v}"),
                format!("/tasks?{name}={v}"),
                422,
                Some(name),
            ));
        }
    }
    c.push(Case::get(
        "limit=500 is fine",
        "/tasks?limit=500",
        200,
        None,
    ));
    c.push(Case::get(
        "the largest offset is fine",
        "/tasks?offset=9223372036854775807",
        200,
        None,
    ));
    c.push(Case::get(
        "limit and offset at their ends",
        "/tasks?limit=1&offset=9223372036854775807&status=queued",
        200,
        None,
    ));
    c.push(Case::get(
        "99 digits",
        format!("/tasks?offset={}", "9".repeat(99)),
        422,
        Some("offset"),
    ));
    c.push(Case::get(
        "an unknown query parameter",
        "/tasks?bogus=1",
        400,
        None,
    ));
    c.push(Case::get(
        "an unknown status",
        "/tasks?status=bogus",
        422,
        Some("status"),
    ));
    c.push(Case::get(
        "a NUL in the workflow filter",
        "/tasks?workflow=a%00b",
        422,
        Some("workflow"),
    ));
    c.push(Case::get(
        "a repeated parameter",
        "/tasks?limit=1&limit=2",
        400,
        None,
    ));

    // Path ids: NUL characters, non-UTF-8, long ids: 404 in the JSON shape, never a 500.
    for (what, id) in [
        ("a NUL", "a%00b".to_string()),
        ("non-UTF-8", "%FF%FE".to_string()),
        ("a 2000-character id", "x".repeat(2000)),
        ("dots", "..".to_string()),
    ] {
        for route in [
            "/tasks/{id}",
            "/tasks/{id}/events",
            "/tasks/{id}/deliveries",
        ] {
            let path = route.replace("{id}", &id);
            c.push(Case::get(
                format!("GET {route} with {what}"),
                path,
                404,
                None,
            ));
        }
        for route in ["/tasks/{id}/cancel", "/deliveries/{id}/redeliver"] {
            let path = route.replace("{id}", &id);
            c.push(Case::raw(
                format!("POST {route} with {what}"),
                &path,
                None,
                "",
                404,
                None,
            ));
        }
        c.push(Case::get(
            format!("a workflow named with {what}"),
            format!("/workflows/{id}"),
            404,
            None,
        ));
        c.push(Case::json(
            format!("a submit to a workflow named with {what}"),
            &format!("/workflows/{id}/tasks"),
            &json!({}),
            404,
            None,
        ));
    }

    // Bodies that are not the JSON object they should be, on both submit routes.
    let deep = |n: usize| format!("{{\"params\":{}{}}}", "[".repeat(n), "]".repeat(n));
    let many_keys = |n: usize| {
        let keys: Vec<String> = (0..n).map(|i| format!("\"k{i}\":0")).collect();
        format!("{{{}}}", keys.join(","))
    };
    let bad_bodies: Vec<BadBody> = vec![
        (
            "an empty body",
            Some("application/json"),
            b"".to_vec(),
            400,
            None,
        ),
        (
            "an unclosed object",
            Some("application/json"),
            b"{".to_vec(),
            400,
            None,
        ),
        (
            "a mismatched bracket",
            Some("application/json"),
            b"{]".to_vec(),
            400,
            None,
        ),
        (
            "a trailing comma",
            Some("application/json"),
            b"{\"a\":1,}".to_vec(),
            400,
            None,
        ),
        (
            "trailing text",
            Some("application/json"),
            b"{} x".to_vec(),
            400,
            None,
        ),
        (
            "two objects",
            Some("application/json"),
            b"{}{}".to_vec(),
            400,
            None,
        ),
        (
            "single quotes",
            Some("application/json"),
            b"{'a':1}".to_vec(),
            400,
            None,
        ),
        (
            "a byte-order mark",
            Some("application/json"),
            b"\xEF\xBB\xBF{}".to_vec(),
            400,
            None,
        ),
        (
            "non-UTF-8 in a string",
            Some("application/json"),
            b"{\"service_type\":\"\xFF\xFE\"}".to_vec(),
            400,
            None,
        ),
        (
            "a lone surrogate",
            Some("application/json"),
            br#"{"service_type":"\ud800"}"#.to_vec(),
            400,
            None,
        ),
        (
            "a raw NUL byte",
            Some("application/json"),
            b"{\"a\":\"\x00\"}".to_vec(),
            400,
            None,
        ),
        (
            "a number past f64",
            Some("application/json"),
            b"{\"priority\":1e400}".to_vec(),
            400,
            None,
        ),
        (
            "NaN",
            Some("application/json"),
            b"{\"priority\":NaN}".to_vec(),
            400,
            None,
        ),
        (
            "an array",
            Some("application/json"),
            b"[]".to_vec(),
            400,
            None,
        ),
        (
            "a number",
            Some("application/json"),
            b"1".to_vec(),
            400,
            None,
        ),
        (
            "null",
            Some("application/json"),
            b"null".to_vec(),
            400,
            None,
        ),
        (
            "a string",
            Some("application/json"),
            b"\"x\"".to_vec(),
            400,
            None,
        ),
        (
            "33 levels of nesting",
            Some("application/json"),
            deep(32).into_bytes(),
            400,
            None,
        ),
        (
            "100000 levels of nesting",
            Some("application/json"),
            deep(100_000).into_bytes(),
            400,
            None,
        ),
        (
            "10001 keys",
            Some("application/json"),
            many_keys(10_001).into_bytes(),
            413,
            Some("body"),
        ),
        ("no content type", None, b"{}".to_vec(), 400, None),
        ("text/plain", Some("text/plain"), b"{}".to_vec(), 400, None),
        (
            "a form",
            Some("application/x-www-form-urlencoded"),
            b"a=1".to_vec(),
            400,
            None,
        ),
        (
            "multipart",
            Some("multipart/form-data; boundary=x"),
            b"--x--".to_vec(),
            400,
            None,
        ),
        (
            "a malformed content type",
            Some("application/"),
            b"{}".to_vec(),
            400,
            None,
        ),
    ];
    for (what, content_type, body, status, field) in bad_bodies {
        for path in ["", "/workflows/solid/tasks"] {
            c.push(Case::raw(
                format!("{what} to POST {path:?}"),
                path,
                content_type,
                body.clone(),
                status,
                field,
            ));
        }
    }
    let mut gzip = Case::raw(
        "a gzip body",
        "",
        Some("application/json"),
        b"\x1f\x8b\x08\x00".to_vec(),
        400,
        None,
    );
    gzip.headers.push(("content-encoding", "gzip"));
    c.push(gzip);
    let mut plus_json = Case::json(
        "application/problem+json is JSON",
        "",
        &json!({"service_type": "solid", "params": {"width": 0}}),
        422,
        Some("params.width"),
    );
    plus_json.content_type = Some("application/problem+json");
    c.push(plus_json);

    // 100 unknown keys: the first 20 listed, the rest counted in one entry on the object.
    c.push(Case::raw(
        "100 unknown top-level keys",
        "/workflows/solid/tasks",
        Some("application/json"),
        many_keys(100),
        422,
        Some("body"),
    ));
    let keys: serde_json::Map<String, Value> =
        (0..100).map(|i| (format!("p{i}"), json!(1))).collect();
    submits(
        &mut c,
        "100 unknown params",
        "solid",
        json!({ "params": keys }),
        422,
        "params",
    );

    // service_type on the original route.
    for (what, v) in [
        ("missing", Value::Null),
        ("a number", json!(1)),
        ("an object", json!({})),
        ("unknown", json!("nope")),
        ("with a NUL", json!("solid\u{0}")),
        ("a megabyte long", json!("s".repeat(1 << 20))),
    ] {
        let mut body = json!({ "params": {} });
        if !v.is_null() {
            body["service_type"] = v;
        }
        c.push(Case::json(
            format!("service_type {what}"),
            "",
            &body,
            422,
            Some("service_type"),
        ));
    }

    // The shared top-level fields, on both routes.
    let long = |n: usize| Value::String("x".repeat(n));
    for (what, v) in [
        ("empty", json!("")),
        ("256 characters", long(256)),
        ("a megabyte", long(1 << 20)),
        ("an object", json!({})),
        ("an array", json!(["a"])),
        ("a boolean", json!(true)),
        ("with a NUL", json!("id\u{0}")),
    ] {
        submits(
            &mut c,
            &format!("client_task_id {what}"),
            "solid",
            json!({ "client_task_id": v }),
            422,
            "client_task_id",
        );
    }
    for (what, v) in [
        ("a number", json!(5)),
        ("ftp", json!("ftp://example.com/hook")),
        ("not a URL", json!("not a url")),
        ("without a host", json!("http://")),
        ("with a NUL", json!("http://example.com/\u{0}")),
        (
            "10000 characters long",
            json!(format!("http://example.com/{}", "a".repeat(10_000))),
        ),
    ] {
        submits(
            &mut c,
            &format!("client_callback_url {what}"),
            "solid",
            json!({ "client_callback_url": v }),
            422,
            "client_callback_url",
        );
    }
    let mut priorities: Vec<(String, Value)> = vec![
        ("1001".into(), json!(1001)),
        ("-1001".into(), json!(-1001)),
        ("1.5".into(), json!(1.5)),
        ("a string".into(), json!("1")),
        ("a boolean".into(), json!(true)),
        ("1e308".into(), json!(1e308)),
    ];
    for n in HUGE_INTEGERS {
        priorities.push((n.into(), serde_json::from_str(n).expect("a JSON number")));
    }
    for (what, v) in priorities {
        submits(
            &mut c,
            &format!("priority {what}"),
            "solid",
            json!({ "priority": v }),
            422,
            "priority",
        );
    }
    for (what, v) in [
        ("a string", json!("x")),
        ("an array", json!([])),
        ("a number", json!(1)),
    ] {
        submits(
            &mut c,
            &format!("params {what}"),
            "solid",
            json!({ "params": v }),
            422,
            "params",
        );
    }
    submits(
        &mut c,
        "an unknown top-level field",
        "solid",
        json!({ "bogus": 1 }),
        422,
        "bogus",
    );

    // Every integer param of solid, and the seed, float and enum of text2img.
    let mut ints: Vec<(String, Value)> = vec![
        ("-1".into(), json!(-1)),
        ("0".into(), json!(0)),
        ("4097".into(), json!(4097)),
        ("1.5".into(), json!(1.5)),
        ("a numeric string".into(), json!("5")),
        ("a boolean".into(), json!(true)),
        ("an array".into(), json!([1])),
        ("an object".into(), json!({})),
        ("1e300".into(), json!(1e300)),
    ];
    for n in HUGE_INTEGERS {
        ints.push((n.into(), serde_json::from_str(n).expect("a JSON number")));
    }
    for param in ["width", "height", "color", "batch_size"] {
        for (what, v) in &ints {
            if param == "color" && (what == "0" || what == "4097") {
                continue; // colours, not sizes: 0 is black
            }
            let field = format!("params.{param}");
            submits(
                &mut c,
                &format!("{param} {what}"),
                "solid",
                json!({ "params": { param: v } }),
                422,
                &field,
            );
        }
    }
    let t2i = |extra: Value| {
        let mut params = json!({ "prompt": "a cat" });
        for (k, v) in extra.as_object().expect("object").clone() {
            params[&k] = v;
        }
        json!({ "params": params })
    };
    for (what, v) in [
        ("-1", json!(-1)),
        ("2^53", json!(1u64 << 53)),
        ("2^64 - 1", json!(u64::MAX)),
        ("a string", json!("1")),
        ("1.5", json!(1.5)),
    ] {
        submits(
            &mut c,
            &format!("seed {what}"),
            "text2img",
            t2i(json!({ "seed": v })),
            422,
            "params.seed",
        );
    }
    for (what, v) in [
        ("1e300", json!(1e300)),
        ("-1e-300", json!(-1e-300)),
        ("a string", json!("7")),
        ("30.0001", json!(30.0001)),
    ] {
        submits(
            &mut c,
            &format!("cfg {what}"),
            "text2img",
            t2i(json!({ "cfg": v })),
            422,
            "params.cfg",
        );
    }
    for (what, v) in [
        ("unknown", json!("nope")),
        ("a number", json!(1)),
        ("with a NUL", json!("euler\u{0}")),
    ] {
        submits(
            &mut c,
            &format!("sampler {what}"),
            "text2img",
            t2i(json!({ "sampler": v })),
            422,
            "params.sampler",
        );
    }
    for (what, v) in [
        ("4001 characters", long(4001)),
        ("a megabyte", long(1 << 20)),
        ("a number", json!(1)),
        ("null (required)", Value::Null),
    ] {
        submits(
            &mut c,
            &format!("prompt {what}"),
            "text2img",
            json!({ "params": { "prompt": v } }),
            422,
            "params.prompt",
        );
    }
    submits(
        &mut c,
        "a missing required prompt",
        "text2img",
        json!({ "params": {} }),
        422,
        "params.prompt",
    );

    // Images: not base64, not an image, broken headers (422) and decompression bombs (413).
    let random = random_bytes(4096);
    let bad_images: Vec<(&str, String, u16)> = vec![
        ("empty", String::new(), 422),
        ("not base64", "!!!not base64".into(), 422),
        ("base64 of text", b64(b"just some text"), 422),
        ("a PNG signature then random bytes", b64(&[&b"\x89PNG\r\n\x1a\n"[..], &random].concat()), 422),
        ("a PNG signature alone", b64(b"\x89PNG\r\n\x1a\n"), 422),
        ("a PNG header with a wrong CRC", {
            let mut p = png_header(64, 64, &random);
            p[29] ^= 0xFF;
            b64(&p)
        }, 422),
        ("a PNG 0 pixels wide", b64(&png_header(0, 64, &random)), 422),
        ("a JPEG signature then random bytes", b64(&[&[0xFF, 0xD8, 0xFF][..], &random].concat()), 422),
        ("a WEBP without a frame", b64(b"RIFF\x0c\x00\x00\x00WEBPVP8 \x00\x00\x00\x00"), 422),
        ("a GIF cut short", b64(b"GIF89a\x01"), 422),
        ("random bytes", b64(&random), 422),
        ("a data URL without a comma", "data:image/png;base64".into(), 422),
        ("a data URL, not base64", "data:image/png,rawbytes".into(), 422),
        ("a data URL with bad base64", "data:image/png;base64,@@@".into(), 422),
        ("an empty data URL", "data:image/png;base64,".into(), 422),
        ("a data URL of random bytes", format!("data:image/png;base64,{}", b64(&random)), 422),
        ("a file URL", "file:///etc/passwd".into(), 422),
        ("an ftp URL", "ftp://example.com/a.png".into(), 422),
        ("a URL nothing listens at", format!("http://127.0.0.1:{}/a.png", free_port()), 422),
        ("a megabyte of base64 letters", "A".repeat((1 << 20) + 1), 422),
        ("a PNG claiming 100000 x 100000", b64(&png_header(100_000, 100_000, &random)), 413),
        ("a PNG claiming 16385 x 1", b64(&png_header(16_385, 1, &random)), 413),
        ("a PNG claiming 8193 x 8192", b64(&png_header(8193, 8192, &random)), 413),
        ("a PNG claiming 2^31-1 a side", b64(&png_header(i32::MAX as u32, i32::MAX as u32, &random)), 413),
        ("a data URL of a PNG bomb", format!("data:image/png;base64,{}", b64(&png_header(100_000, 100_000, &[]))), 413),
        ("a JPEG claiming 65535 x 65535", {
            let mut j = vec![0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x11, 8, 0xFF, 0xFF, 0xFF, 0xFF, 3];
            j.extend_from_slice(&[1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
            b64(&j)
        }, 413),
        ("a WEBP claiming 100000 x 100000", b64(b"RIFF\x16\x00\x00\x00WEBPVP8X\x0a\x00\x00\x00\x00\x00\x00\x00\x9f\x86\x01\x9f\x86\x01"), 413),
        ("a GIF claiming 65535 x 65535", b64(b"GIF89a\xff\xff\xff\xff\x00\x00\x00"), 413),
    ];
    let mut bad_images: Vec<(&str, Value, u16)> = bad_images
        .into_iter()
        .map(|(what, image, status)| (what, json!(image), status))
        .collect();
    bad_images.push(("an integer", json!(42), 422));
    bad_images.push(("an object", json!({"url": "http://example.com/a.png"}), 422));
    for (what, image, status) in bad_images {
        submits(
            &mut c,
            &format!("image: {what}"),
            "invert",
            json!({ "params": { "image": image } }),
            status,
            "params.image",
        );
    }
    c
}

/// Sends one case and checks its answer; returns a description of what is wrong, if anything.
async fn check(d: &Daemon, case: &Case) -> Option<String> {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .finish();
    let mut req = client.request(case.method.clone(), format!("{}{}", d.api, case.path));
    if let Some(ct) = case.content_type {
        req = req.insert_header(("content-type", ct));
    }
    for (name, value) in &case.headers {
        req = req.insert_header((*name, *value));
    }
    let mut resp = match req.send_body(case.body.clone()).await {
        Ok(resp) => resp,
        Err(e) => return Some(format!("no answer: {e}")),
    };
    let status = resp.status().as_u16();
    let raw = resp.body().limit(16 << 20).await.unwrap_or_default();
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let shown = String::from_utf8_lossy(&raw[..raw.len().min(300)]).into_owned();
    if status != case.status {
        return Some(format!("got {status}, expected {}: {shown}", case.status));
    }
    if status < 400 {
        return None;
    }
    if !(body["error"].is_string() && body["message"].is_string()) {
        return Some(format!("not a JSON error: {shown}"));
    }
    if raw.len() > 64 * 1024 {
        return Some(format!("a {} byte answer: {shown}", raw.len()));
    }
    if let Some(field) = &case.field {
        let fields: Vec<&str> = body["fields"]
            .as_array()
            .map(|f| f.iter().filter_map(|f| f["field"].as_str()).collect())
            .unwrap_or_default();
        if !fields.contains(&field.as_str()) {
            return Some(format!("does not name {field}: {shown}"));
        }
        if fields.len() > 21 + 4 {
            return Some(format!("lists {} fields", fields.len()));
        }
    }
    None
}

/// A daemon with no backend (a closed port): accepted tasks stay queued.
async fn daemon(db: &TestDb) -> Daemon {
    Daemon::start(DaemonConfig {
        endpoints: vec![format!("http://127.0.0.1:{}", free_port())],
        database_url: db.url().to_string(),
        ..Default::default()
    })
    .await
}

async fn run_battery(db: TestDb, label: &str) {
    // Arrange
    let d = daemon(&db).await;
    let cases = cases();

    // Act
    let mut failures = Vec::new();
    for case in &cases {
        if let Some(problem) = check(&d, case).await {
            failures.push(format!("{}: {problem}", case.what));
        }
    }

    // Assert
    let (peak, _) = d.memory().expect("daemon memory");
    println!(
        "battery on {label}: {} inputs tried, {} wrong, peak RSS {:.1} MiB, panics: {}",
        cases.len(),
        failures.len(),
        peak as f64 / (1 << 20) as f64,
        d.panics().len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // A 100-unknown-keys body lists 20 and counts the rest.
    let (status, body) = d
        .post(
            "/workflows/solid/tasks",
            &serde_json::from_str(&{
                let keys: Vec<String> = (0..100).map(|i| format!("\"k{i}\":0")).collect();
                format!("{{{}}}", keys.join(","))
            })
            .expect("json"),
        )
        .await;
    assert_eq!(status, 422);
    let fields = body["fields"].as_array().expect("fields");
    assert_eq!(fields.len(), 21, "{body}");
    assert_eq!(
        fields[20],
        json!({"field": "body", "reason": "80 more unknown names, not listed"})
    );
    // Nothing was accepted.
    let (status, list) = d.get("/tasks").await;
    assert_eq!(status, 200);
    assert_eq!(list["total"], 0, "{list}");
    d.assert_no_panics();
}

#[actix_web::test]
async fn every_bad_input_gets_a_json_4xx_naming_it_on_sqlite() {
    run_battery(TestDb::sqlite(), "SQLite").await;
}

#[actix_web::test]
async fn every_bad_input_gets_a_json_4xx_naming_it_on_postgres() {
    run_battery(TestDb::postgres().await, "PostgreSQL").await;
}

/// A 32 MB submit body: a base64 image of 24 MB, a valid PNG header then random bytes (accepted:
/// only its header is read).
fn big_submit(rng_tail: &[u8]) -> Bytes {
    let image = png_header(4096, 4096, rng_tail);
    Bytes::from(json!({ "params": { "image": b64(&image) } }).to_string())
}

/// RSS after the burst: the idle daemon is about 35 MiB; what a burst leaves (the SQLite page
/// cache, awc's pools, the allocator's small-object arenas) stays well under this.
const SETTLED_RSS: u64 = 64 << 20;

#[actix_web::test]
async fn the_worst_inputs_at_once_keep_peak_rss_under_300_mb_and_rss_falls_back() {
    // Arrange
    let db = TestDb::sqlite();
    let d = daemon(&db).await;
    let tail = random_bytes(24_000_000 - 33);
    let big = big_submit(&tail);
    assert!(
        big.len() > 31_000_000 && big.len() < 32 << 20,
        "{} bytes",
        big.len()
    );
    let random_png = Bytes::from(
        json!({ "params": { "image": b64(&[&b"\x89PNG\r\n\x1a\n"[..], &tail].concat()) } })
            .to_string(),
    );
    drop(tail);
    let million_keys = {
        let keys: Vec<String> = (0..1_000_000).map(|i| format!("\"k{i}\":0")).collect();
        Bytes::from(format!("{{{}}}", keys.join(",")))
    };
    let bomb = Bytes::from(
        json!({ "params": { "image": b64(&png_header(100_000, 100_000, &[0; 64])) } }).to_string(),
    );
    let (_, idle) = d.memory().expect("memory");

    // Act: all at once.
    let post = |body: Bytes| {
        let url = format!("{}/workflows/invert/tasks", d.api);
        async move {
            let mut resp = awc::Client::builder()
                .timeout(Duration::from_secs(120))
                .finish()
                .post(url)
                .insert_header(("content-type", "application/json"))
                .send_body(body)
                .await
                .expect("an answer");
            let retry_after = resp.headers().get("retry-after").is_some();
            let body: Value = resp.json().limit(1 << 20).await.unwrap_or(Value::Null);
            (resp.status().as_u16(), retry_after, body)
        }
    };
    let started = Instant::now();
    let bigs = futures_util::future::join_all((0..8).map(|_| post(big.clone())));
    let others = futures_util::future::join4(
        post(random_png.clone()),
        post(million_keys.clone()),
        post(bomb.clone()),
        d.get("/tasks?offset=9223372036854775808"),
    );
    let (bigs, (random, keys, bomb_answer, overflow)) =
        futures_util::future::join(bigs, others).await;
    let took = started.elapsed();
    let (peak, after) = d.memory().expect("memory");
    drop((big, random_png, million_keys, bomb));

    // Assert: every answer is one of the designed ones.
    let mut accepted = 0;
    for (status, retry_after, body) in &bigs {
        match status {
            202 => accepted += 1,
            503 => assert!(*retry_after && body["error"] == "busy", "{body}"),
            other => panic!("a 32 MB submit got {other}: {body}"),
        }
    }
    assert!(
        accepted >= 1,
        "the budget lets at least one 32 MB submit through"
    );
    let one_of = |(status, _, body): &(u16, bool, Value), want: u16, field: &str| {
        let named = body["fields"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["field"] == field));
        assert!(
            (*status == want && named) || (*status == 503 && body["error"] == "busy"),
            "wanted {want} naming {field} (or 503): {status} {body}"
        );
    };
    one_of(&random, 422, "params.image");
    one_of(&keys, 413, "body");
    one_of(&bomb_answer, 413, "params.image");
    assert_eq!(overflow.0, 422, "{}", overflow.1);

    // Memory: the peak under 300 MB, then back down once the burst is over.
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    // glibc keeps freed pages unless told (see budget::tune_allocator): poll for 10 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    let settled = loop {
        let (_, rss) = d.memory().expect("memory");
        if rss < SETTLED_RSS || Instant::now() > deadline {
            break rss;
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "burst: {accepted} of 8 32 MB submits accepted ({} refused 503) in {:.1} s; RSS idle {:.1} MiB, \
         peak {:.1} MiB, right after {:.1} MiB, settled {:.1} MiB; panics: {}",
        8 - accepted,
        took.as_secs_f64(),
        mib(idle),
        mib(peak),
        mib(after),
        mib(settled),
        d.panics().len()
    );
    assert!(peak < 300_000_000, "peak RSS {:.1} MiB", mib(peak));
    assert!(
        settled < SETTLED_RSS,
        "RSS {:.1} MiB 10 s after the burst",
        mib(settled)
    );
    let (status, list) = d.get("/tasks?limit=20").await;
    assert_eq!(
        (status, list["total"].as_u64()),
        (200, Some(accepted)),
        "{list}"
    );
    d.assert_no_panics();
}
