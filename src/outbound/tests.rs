//! The outbound calls' unit tests, against real HTTP servers on loopback.

use super::*;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytes::Bytes;
use std::sync::{Arc, Mutex};

#[test]
fn sign_webhook_matches_the_standard_webhooks_test_vector() {
    // The test vector published with the Standard Webhooks specification (and reproduced by
    // python3: hmac.new(b64decode(key), b"msg_p5j...1614265330.{...}", sha256)).
    let signature = sign_webhook(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1_614_265_330,
        br#"{"test": 2432232314}"#,
    );
    assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
}

#[test]
fn sign_webhook_uses_unprefixed_secrets_as_raw_bytes() {
    // python3 -c "import hmac,hashlib,base64;print(base64.b64encode(hmac.new(b'raw-secret',
    //   b'msg_1.1700000000.{}', hashlib.sha256).digest()).decode())"
    assert_eq!(
        sign_webhook("raw-secret", "msg_1", 1_700_000_000, b"{}"),
        "v1,7Rv5rarZl2vsfTZ63g0x/CLPPNgG3Bvf71kHvMd/swg="
    );
    assert_ne!(
        sign_webhook("raw-secret", "msg_1", 1_700_000_000, b"{}"),
        sign_webhook("raw-secret", "msg_1", 1_700_000_001, b"{}")
    );
}

fn outbound(allow: bool) -> Outbound {
    Outbound::new(OutboundSettings {
        allow_private_addresses: allow,
        allow_loopback_addresses: allow,
        ..OutboundSettings::default()
    })
}

#[test]
fn check_url_accepts_http_and_https_with_a_host() {
    let out = outbound(false);
    for url in [
        "https://example.com/a.png",
        "http://example.com:8080/x?y=1",
        "https://8.8.8.8/i.png",
        "https://[2606:4700::1111]/i.png",
        // Names are checked when they are resolved, not here.
        "http://localhost:8080/",
    ] {
        assert!(out.check_url(url).is_ok(), "{url} should pass");
    }
    assert!(outbound(true).check_url("http://127.0.0.1:8188/x").is_ok());
}

#[test]
fn check_url_refuses_other_schemes_and_malformed_urls() {
    let out = outbound(true);
    for url in [
        "ftp://example.com/a.png",
        "file:///etc/passwd",
        "data:image/png;base64,AAAA",
        "javascript:alert(1)",
        "example.com/a.png",
        "http://",
        "",
    ] {
        assert!(
            matches!(out.check_url(url), Err(OutboundError::BadUrl(_))),
            "{url:?} should be refused"
        );
    }
    let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
    assert!(out.check_url(&long).is_err());
}

#[test]
fn check_url_refuses_private_and_loopback_addresses_when_not_allowed() {
    let out = outbound(false);
    for url in [
        "http://127.0.0.1/",
        "http://10.1.2.3/",
        "http://192.168.0.1/",
        "http://172.16.0.1/",
        "http://100.64.0.1/",
        "http://[::1]/",
        "http://[fd00::1]/",
        "http://[::ffff:127.0.0.1]/",
        // Forms `url` turns into 127.0.0.1: decimal, octal, hex, short.
        "http://2130706433/",
        "http://0177.0.0.1/",
        "http://0x7f.0.0.1/",
        "http://0x7f000001/",
        "http://127.1/",
        // IPv4-compatible and NAT64 forms of loopback.
        "http://[::127.0.0.1]/",
        "http://[64:ff9b::7f00:1]/",
    ] {
        assert!(
            matches!(out.check_url(url), Err(OutboundError::Refused(_))),
            "{url} should be refused: {:?}",
            out.check_url(url)
        );
    }
}

#[test]
fn check_url_always_refuses_link_local_metadata_and_unspecified_addresses() {
    let out = outbound(true);
    for url in [
        "http://169.254.169.254/latest/meta-data",
        "http://[::ffff:169.254.169.254]/latest/meta-data",
        "http://[::ffff:a9fe:a9fe]/",
        "http://2852039166/latest/meta-data",
        "http://0251.0376.0251.0376/",
        "http://169.254.1.1/",
        "http://[fe80::1]/",
        "http://[fd00:ec2::254]/",
        "http://100.100.100.200/",
        "http://0.0.0.0:8188/",
        "http://0/",
        "http://[::]/",
        "http://255.255.255.255/",
        "http://224.0.0.1/",
        "http://[ff02::1]/",
    ] {
        match out.check_url(url) {
            Err(OutboundError::Refused(reason)) => {
                assert!(!reason.contains("url_policy"), "{url}: {reason}")
            }
            other => panic!("{url} should be refused, got {other:?}"),
        }
    }
}

#[actix_web::test]
async fn check_destination_resolves_names_and_names_the_reason() {
    let hosts = [
        ("hooks.example.test", "127.0.0.1".parse().expect("ip")),
        (
            "metadata.example.test",
            "169.254.169.254".parse().expect("ip"),
        ),
        ("public.example.test", "93.184.216.34".parse().expect("ip")),
    ];
    let strict = outbound(false).with_hosts(hosts);
    match strict
        .check_destination("http://hooks.example.test/h")
        .await
    {
        Err(OutboundError::Refused(reason)) => {
            assert!(
                reason.contains("hooks.example.test resolves to 127.0.0.1"),
                "{reason}"
            );
            assert!(reason.contains("loopback"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(strict
        .check_destination("https://public.example.test/")
        .await
        .is_ok());
    // A name that does not resolve is left to the call itself (a webhook is retried).
    assert!(strict
        .check_destination("https://nowhere.example.test/")
        .await
        .is_ok());
    let open = outbound(true).with_hosts(hosts);
    assert!(open
        .check_destination("http://hooks.example.test/h")
        .await
        .is_ok());
    assert!(matches!(
        open.check_destination("http://metadata.example.test/")
            .await,
        Err(OutboundError::Refused(_))
    ));
}

#[test]
fn settings_default_and_deserialize() {
    let defaults = OutboundSettings::default();
    assert_eq!(defaults.fetch_max_bytes, 20 * 1024 * 1024);
    assert_eq!(defaults.fetch_timeout_ms, 10_000);
    assert!(defaults.allow_private_addresses && defaults.allow_loopback_addresses);
    let parsed: OutboundSettings =
        serde_json::from_str(r#"{"fetch_max_bytes": 5}"#).expect("valid");
    assert_eq!(parsed.fetch_max_bytes, 5);
    assert_eq!(parsed.webhook_timeout_ms, 10_000);
    assert!(serde_json::from_str::<OutboundSettings>(r#"{"fetch_max_byte": 5}"#).is_err());
}

#[test]
fn error_transience() {
    assert!(OutboundError::Timeout.is_transient());
    assert!(OutboundError::Status(503).is_transient());
    assert!(!OutboundError::Status(404).is_transient());
    assert!(!OutboundError::TooLarge { limit: 1 }.is_transient());
}

/// A 1x1 PNG.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x00, 0x01, 0x00, 0x00,
    0x05, 0x00, 0x01, 0x0d, 0x0a, 0x2d, 0xb4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae,
    0x42, 0x60, 0x82,
];
/// Size limit used by the tests; the "big" routes serve more than this.
const TEST_LIMIT: u64 = 1000;

/// Webhook deliveries the test server received: (signature header, body).
type Received = Arc<Mutex<Vec<(Option<String>, Bytes)>>>;

async fn hook(req: HttpRequest, body: Bytes, received: web::Data<Received>) -> HttpResponse {
    let signature = req
        .headers()
        .get("webhook-signature")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    received.lock().expect("lock").push((signature, body));
    match req.match_info().get("outcome") {
        Some("ok") => HttpResponse::NoContent().finish(),
        // A large error body: post_webhook must still return promptly with the status.
        _ => HttpResponse::InternalServerError().body(vec![b'x'; 1024 * 1024]),
    }
}

/// Starts the test server on a free port and returns its base URL and what it received.
fn start_server() -> (String, Received) {
    let received: Received = Arc::default();
    let data = web::Data::new(received.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route(
                "/image.png",
                web::get().to(|| async { HttpResponse::Ok().content_type("image/png").body(PNG) }),
            )
            .route(
                "/big-declared.png",
                web::get().to(|| async {
                    HttpResponse::Ok()
                        .content_type("image/png")
                        .body(vec![0u8; TEST_LIMIT as usize + 1])
                }),
            )
            .route(
                "/big-streamed.png",
                web::get().to(|| async {
                    // Chunked, no Content-Length: only the streaming check can catch it.
                    let chunks =
                        (0..20).map(|_| Ok::<_, actix_web::Error>(Bytes::from(vec![0u8; 100])));
                    HttpResponse::Ok()
                        .content_type("image/png")
                        .streaming(futures_util::stream::iter(chunks))
                }),
            )
            .route(
                "/page.html",
                web::get().to(|| async {
                    HttpResponse::Ok()
                        .content_type("text/html; charset=utf-8")
                        .body("<p>hi</p>")
                }),
            )
            .route(
                "/slow.png",
                web::get().to(|| async {
                    actix_rt::time::sleep(Duration::from_secs(5)).await;
                    HttpResponse::Ok().content_type("image/png").body(PNG)
                }),
            )
            .route("/missing.png", web::get().to(HttpResponse::NotFound))
            .route(
                "/redirect",
                web::get().to(|| async {
                    HttpResponse::Found()
                        .insert_header((header::LOCATION, "/image.png"))
                        .finish()
                }),
            )
            .route(
                "/redirect-to",
                web::get().to(
                    |q: web::Query<std::collections::HashMap<String, String>>| async move {
                        HttpResponse::Found()
                            .insert_header((
                                header::LOCATION,
                                q.get("to").cloned().unwrap_or_default(),
                            ))
                            .finish()
                    },
                ),
            )
            .route(
                "/redirect-loop",
                web::get().to(|| async {
                    HttpResponse::Found()
                        .insert_header((header::LOCATION, "/redirect-loop"))
                        .finish()
                }),
            )
            .route(
                "/redirect-file",
                web::get().to(|| async {
                    HttpResponse::Found()
                        .insert_header((header::LOCATION, "file:///etc/passwd"))
                        .finish()
                }),
            )
            .route("/hook/{outcome}", web::post().to(hook))
            .route(
                "/hook-slow",
                web::post().to(|| async {
                    actix_rt::time::sleep(Duration::from_secs(5)).await;
                    HttpResponse::Ok().finish()
                }),
            )
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", 0))
    .expect("bind a free port");
    let port = server.addrs()[0].port();
    actix_rt::spawn(server.run());
    (format!("http://127.0.0.1:{port}"), received)
}

fn test_outbound() -> Outbound {
    Outbound::new(OutboundSettings {
        fetch_max_bytes: TEST_LIMIT,
        fetch_timeout_ms: 500,
        webhook_timeout_ms: 500,
        allow_private_addresses: true,
        allow_loopback_addresses: true,
    })
}

/// `test_outbound` where `hooks.test` resolves to the test server (127.0.0.1) and loopback
/// is allowed or not.
fn named_outbound(allow_loopback: bool) -> Outbound {
    let mut out = test_outbound();
    out.settings.allow_loopback_addresses = allow_loopback;
    out.with_hosts([("hooks.test", IpAddr::from([127, 0, 0, 1]))])
}

/// The test server's base URL with its address replaced by `hooks.test`.
fn by_name(base: &str) -> String {
    base.replace("127.0.0.1", "hooks.test")
}

#[actix_web::test]
async fn a_name_that_resolves_to_loopback_is_reached_only_when_loopback_is_allowed() {
    let (base, received) = start_server();
    let url = format!("{}/hook/ok", by_name(&base));

    let refused = named_outbound(false)
        .post_webhook(&url, Bytes::from_static(b"{}"), &[])
        .await;
    match &refused {
        Err(OutboundError::Refused(reason)) => {
            assert!(
                reason.contains("hooks.test resolves to 127.0.0.1"),
                "{reason}"
            )
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(refused
        .as_ref()
        .err()
        .is_some_and(OutboundError::is_transient));
    assert!(
        received.lock().expect("lock").is_empty(),
        "nothing was sent"
    );
    let fetched = named_outbound(false)
        .fetch_image(&format!("{}/image.png", by_name(&base)))
        .await;
    assert!(
        matches!(fetched, Err(OutboundError::Refused(_))),
        "{fetched:?}"
    );

    let status = named_outbound(true)
        .post_webhook(&url, Bytes::from_static(b"{}"), &[])
        .await
        .expect("delivered by name");
    assert_eq!(status, 204);
    assert_eq!(received.lock().expect("lock").len(), 1);
}

#[actix_web::test]
async fn every_redirect_hop_is_resolved_and_checked() {
    // Hop one is the (loopback, allowed) test server; hop two is refused before any connection.
    let (base, _) = start_server();
    let out = test_outbound().with_hosts([
        ("hooks.test", IpAddr::from([127, 0, 0, 1])),
        ("metadata.test", IpAddr::from([169, 254, 169, 254])),
    ]);
    for target in [
        "http://metadata.test/latest/meta-data",
        "http://169.254.169.254/latest/meta-data",
        "http://[::ffff:a9fe:a9fe]/latest/meta-data",
    ] {
        let to: String = url::form_urlencoded::byte_serialize(target.as_bytes()).collect();
        let url = format!("{}/redirect-to?to={to}", by_name(&base));
        match out.fetch_image(&url).await {
            Err(OutboundError::Refused(reason)) => {
                assert!(reason.contains("169.254.169.254"), "{target}: {reason}")
            }
            other => panic!("{target}: expected a refusal, got {other:?}"),
        }
    }
    let url = format!(
        "{}/redirect-to?to={}/image.png",
        by_name(&base),
        by_name(&base)
    );
    let (bytes, _) = out
        .fetch_image(&url)
        .await
        .expect("an allowed hop is followed");
    assert_eq!(&bytes[..], PNG);
}

#[actix_web::test]
async fn fetch_image_returns_bytes_and_content_type() {
    let (base, _) = start_server();
    let (bytes, content_type) = test_outbound()
        .fetch_image(&format!("{base}/image.png"))
        .await
        .expect("image");
    assert_eq!(&bytes[..], PNG);
    assert_eq!(content_type, "image/png");
}

#[actix_web::test]
async fn fetch_image_follows_a_redirect_but_checks_each_hop() {
    let (base, _) = start_server();
    let out = test_outbound();
    let (bytes, _) = out
        .fetch_image(&format!("{base}/redirect"))
        .await
        .expect("redirected image");
    assert_eq!(&bytes[..], PNG);
    assert!(matches!(
        out.fetch_image(&format!("{base}/redirect-file")).await,
        Err(OutboundError::BadUrl(_))
    ));
    assert!(matches!(
        out.fetch_image(&format!("{base}/redirect-loop")).await,
        Err(OutboundError::TooManyRedirects)
    ));
}

#[actix_web::test]
async fn fetch_image_refuses_too_large_bodies_declared_or_streamed() {
    let (base, _) = start_server();
    let out = test_outbound();
    for path in ["/big-declared.png", "/big-streamed.png"] {
        let result = out.fetch_image(&format!("{base}{path}")).await;
        assert!(
            matches!(result, Err(OutboundError::TooLarge { limit: TEST_LIMIT })),
            "{path}: {result:?}"
        );
    }
}

#[actix_web::test]
async fn fetch_image_refuses_wrong_content_type_and_error_status() {
    let (base, _) = start_server();
    let out = test_outbound();
    match out.fetch_image(&format!("{base}/page.html")).await {
        Err(OutboundError::BadContentType(ct)) => assert!(ct.starts_with("text/html"), "{ct}"),
        other => panic!("expected BadContentType, got {other:?}"),
    }
    assert!(matches!(
        out.fetch_image(&format!("{base}/missing.png")).await,
        Err(OutboundError::Status(404))
    ));
}

#[actix_web::test]
async fn fetch_image_times_out_on_a_slow_server() {
    let (base, _) = start_server();
    let started = std::time::Instant::now();
    let result = test_outbound()
        .fetch_image(&format!("{base}/slow.png"))
        .await;
    assert!(matches!(result, Err(OutboundError::Timeout)), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[actix_web::test]
async fn fetch_image_reports_connection_refused() {
    // Bind then drop a listener: its port is (almost certainly) closed right after.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let result = test_outbound()
        .fetch_image(&format!("http://127.0.0.1:{port}/x.png"))
        .await;
    assert!(
        matches!(result, Err(OutboundError::Connect(_))),
        "{result:?}"
    );
}

#[actix_web::test]
async fn post_webhook_delivers_body_and_headers_and_returns_any_status() {
    // Arrange
    let (base, received) = start_server();
    let out = test_outbound();
    let body = Bytes::from_static(br#"{"type":"job.completed"}"#);
    let signature = sign_webhook("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_1", 1, &body);
    let headers = vec![
        ("webhook-id".to_owned(), "msg_1".to_owned()),
        ("webhook-signature".to_owned(), signature.clone()),
    ];

    // Act
    let ok = out
        .post_webhook(&format!("{base}/hook/ok"), body.clone(), &headers)
        .await
        .expect("delivered");
    let failed = out
        .post_webhook(&format!("{base}/hook/fail"), body.clone(), &headers)
        .await
        .expect("a status, even an error one");

    // Assert
    assert_eq!(ok, 204);
    assert_eq!(failed, 500);
    let received = received.lock().expect("lock");
    assert_eq!(received.len(), 2);
    assert_eq!(received[0], (Some(signature), body));
}

#[actix_web::test]
async fn post_webhook_times_out_and_refuses_bad_headers() {
    let (base, _) = start_server();
    let out = test_outbound();
    let result = out
        .post_webhook(&format!("{base}/hook-slow"), Bytes::from_static(b"{}"), &[])
        .await;
    assert!(matches!(result, Err(OutboundError::Timeout)), "{result:?}");
    let bad = [("bad header".to_owned(), "x".to_owned())];
    let result = out
        .post_webhook(&format!("{base}/hook/ok"), Bytes::from_static(b"{}"), &bad)
        .await;
    assert!(
        matches!(result, Err(OutboundError::BadHeader(_))),
        "{result:?}"
    );
}
