//! Reading what a client sends, within bounds: JSON bodies ([`JsonBody`]) and integer query
//! parameters ([`query_int`]). Everything here answers with an [`ApiError`] naming what is wrong;
//! nothing a client sends can make it panic or hold more memory than the limits allow.
//!
//! A body is read only after its share of the [`crate::budget::MemoryBudget`] is reserved (twice
//! its length: its bytes, then the JSON parsed from them), and the parser counts values and depth
//! as it builds them, so a body of a million keys is refused after the first
//! [`MAX_JSON_VALUES`] instead of becoming a million-entry map.

use std::cell::Cell;
use std::fmt;
use std::ops::RangeInclusive;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use bytes::BytesMut;
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt as _;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::{ApiError, AppState};
use crate::budget::{BudgetError, Reservation};
use crate::workflow::FieldError;

/// Most JSON values (scalars, arrays, objects and object keys) in one body. A submit has a few
/// dozen; this leaves room for any real client and keeps a hostile body's parsed form small.
pub const MAX_JSON_VALUES: usize = 10_000;

/// Deepest nesting of arrays and objects in one body (a submit needs 2).
pub const MAX_JSON_DEPTH: usize = 32;

/// A body's first reservation when it announces no length; it grows as the body arrives.
const UNKNOWN_LENGTH_START: u64 = 64 * 1024;

/// A JSON request body, read within the limits. Its reservation is held as long as this value (or
/// the reservation taken from it) lives: keep it until the request's images are written out.
pub struct JsonBody {
    /// The parsed body.
    pub value: Value,
    /// The body's share of the memory budget.
    pub reservation: Reservation,
}

impl FromRequest for JsonBody {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<JsonBody, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let head = check_head(req);
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let mut payload = payload.take();
        Box::pin(async move {
            let length = head?;
            let state = state.ok_or_else(|| anyhow::anyhow!("AppState is not registered"))?;
            let max = state.settings.server.max_body_bytes as u64;
            let too_large = || {
                ApiError::TooLarge(FieldError {
                    field: "body".into(),
                    reason: format!("request body is larger than {max} bytes"),
                })
            };
            if length.is_some_and(|len| len > max) {
                return Err(too_large());
            }
            let mut reservation = state.budget.empty();
            let first = length.map_or(UNKNOWN_LENGTH_START, |len| len.min(max));
            if let Err(e) = reservation.grow(2 * first).await {
                return Err(drain(&mut payload, &state, budget_error(e)).await);
            }
            // `as usize`: at most max_body_bytes, a usize.
            let mut buf = BytesMut::with_capacity(length.unwrap_or(0).min(max) as usize);
            while let Some(chunk) = payload.next().await {
                let chunk = chunk.map_err(|e| {
                    ApiError::BadRequest(format!("could not read the request body: {e}"))
                })?;
                let len = (buf.len() + chunk.len()) as u64;
                if len > max {
                    return Err(too_large());
                }
                if 2 * len > reservation.bytes() {
                    // Doubling keeps the number of waits for the budget logarithmic.
                    let target = (2 * len).max(2 * reservation.bytes()).min(2 * max);
                    if let Err(e) = reservation.grow(target - reservation.bytes()).await {
                        drop(buf);
                        return Err(drain(&mut payload, &state, budget_error(e)).await);
                    }
                }
                buf.extend_from_slice(&chunk);
            }
            let value = parse_bounded(&buf)?;
            drop(buf);
            Ok(JsonBody { value, reservation })
        })
    }
}

/// Reads and discards the rest of a body that will not be parsed (at most `max` bytes), then gives
/// back `error`. A client still sending when the answer comes and the connection closes sees a
/// broken pipe, not the 503 that tells it to retry; reading costs time but no memory.
async fn drain(payload: &mut Payload, state: &AppState, error: ApiError) -> ApiError {
    let max = state.settings.server.max_body_bytes as u64;
    let mut read = 0u64;
    while let Some(Ok(chunk)) = payload.next().await {
        read += chunk.len() as u64;
        if read > max {
            break;
        }
    }
    error
}

/// The checks made before any byte of the body is read: its content type and encoding. Returns
/// its `Content-Length`, if it gave a valid one.
fn check_head(req: &HttpRequest) -> Result<Option<u64>, ApiError> {
    let json = match req.mime_type() {
        Ok(Some(mime)) => {
            mime.subtype() == actix_web::mime::JSON || mime.suffix() == Some(actix_web::mime::JSON)
        }
        _ => false,
    };
    if !json {
        return Err(ApiError::BadRequest(
            "Content-Type must be application/json".into(),
        ));
    }
    // A compressed body would be inflated before its size could be checked (a few KiB of gzip
    // can become gigabytes), and no client of this API compresses its submits.
    if let Some(encoding) = req.headers().get(header::CONTENT_ENCODING) {
        if !encoding.as_bytes().eq_ignore_ascii_case(b"identity") {
            return Err(ApiError::BadRequest(format!(
                "Content-Encoding {:?} is not accepted: send the body uncompressed",
                String::from_utf8_lossy(encoding.as_bytes())
            )));
        }
    }
    Ok(req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok()))
}

/// A failed reservation as the client sees it: more than the whole budget is a 413, a full budget
/// a 503 with Retry-After.
pub fn budget_error(e: BudgetError) -> ApiError {
    match e {
        BudgetError::TooLarge { .. } => ApiError::TooLarge(FieldError {
            field: "body".into(),
            reason: e.to_string(),
        }),
        BudgetError::Busy => ApiError::Busy(e.to_string()),
    }
}

/// Why a body did not parse within the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exceeded {
    Values,
    Depth,
}

/// Parses `bytes` as one JSON value, counting values and depth as it goes.
fn parse_bounded(bytes: &[u8]) -> Result<Value, ApiError> {
    let limits = Counter {
        values: Cell::new(0),
        exceeded: Cell::new(None),
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = Node {
        counter: &limits,
        depth: 0,
    }
    .deserialize(&mut de)
    .and_then(|value| de.end().map(|()| value));
    match (parsed, limits.exceeded.get()) {
        (Ok(value), _) => Ok(value),
        (Err(_), Some(Exceeded::Values)) => Err(ApiError::TooLarge(FieldError {
            field: "body".into(),
            reason: format!("holds more than {MAX_JSON_VALUES} JSON values (keys included)"),
        })),
        (Err(_), Some(Exceeded::Depth)) => Err(ApiError::BadRequest(format!(
            "body is nested deeper than {MAX_JSON_DEPTH} levels"
        ))),
        (Err(e), None) => Err(ApiError::BadRequest(format!("body is not valid JSON: {e}"))),
    }
}

struct Counter {
    values: Cell<usize>,
    exceeded: Cell<Option<Exceeded>>,
}

impl Counter {
    fn count<E: de::Error>(&self) -> Result<(), E> {
        let n = self.values.get() + 1;
        self.values.set(n);
        if n > MAX_JSON_VALUES {
            self.exceeded.set(Some(Exceeded::Values));
            return Err(E::custom("too many values"));
        }
        Ok(())
    }
}

/// One JSON value being built: serde_json's own `Value` visitor, plus the counts.
struct Node<'a> {
    counter: &'a Counter,
    depth: usize,
}

impl Node<'_> {
    fn child(&self) -> Node<'_> {
        Node {
            counter: self.counter,
            depth: self.depth + 1,
        }
    }

    fn enter<E: de::Error>(&self) -> Result<(), E> {
        if self.depth + 1 > MAX_JSON_DEPTH {
            self.counter.exceeded.set(Some(Exceeded::Depth));
            return Err(E::custom("nested too deep"));
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.counter.count()?;
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // As serde_json's own Value: a non-finite float (not valid JSON anyway) becomes null.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.enter()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self.child())? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.enter()?;
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            self.counter.count()?;
            let value = map.next_value_seed(self.child())?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// A path segment that must be a positive integer (a release's version, a deployment's id): a 400
/// naming it otherwise, with the value shown cut to 40 characters.
pub fn positive_path_int<T>(name: &str, raw: &str) -> Result<T, ApiError>
where
    T: std::str::FromStr + PartialOrd + From<u8>,
{
    raw.parse::<T>()
        .ok()
        .filter(|n| *n >= T::from(1))
        .ok_or_else(|| {
            let shown: String = raw.chars().take(40).collect();
            ApiError::BadRequest(format!("{name}: must be a positive integer, got {shown:?}"))
        })
}

/// An integer query parameter: `default` when absent or empty, else an integer within `range`.
/// Read from text by hand so that anything else, values past `u64` and `i64` included, is a 422
/// naming the parameter rather than a parse error or an overflow further down.
pub fn query_int(
    name: &str,
    raw: Option<&str>,
    default: u64,
    range: RangeInclusive<u64>,
) -> Result<u64, ApiError> {
    let text = match raw.map(str::trim) {
        None | Some("") => return Ok(default),
        Some(text) => text,
    };
    text.parse::<u64>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            ApiError::field(
                name,
                format!(
                    "must be an integer from {} to {}",
                    range.start(),
                    range.end()
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(r: Result<Value, ApiError>) -> String {
        match r {
            Ok(v) => format!("ok {v}"),
            Err(ApiError::TooLarge(f)) => format!("413 {}: {}", f.field, f.reason),
            Err(ApiError::BadRequest(m)) => format!("400 {m}"),
            Err(other) => format!("other {other}"),
        }
    }

    #[test]
    fn a_body_parses_as_serde_json_would() {
        let text =
            br#"{"a": [1, -2, 3.5, true, null, "x\u00e9"], "b": {"c": 18446744073709551615}}"#;
        let expected: Value = serde_json::from_slice(text).expect("valid");
        assert_eq!(parse_bounded(text).expect("within limits"), expected);
    }

    #[test]
    fn too_many_values_is_a_413_on_the_body() {
        let keys: Vec<String> = (0..MAX_JSON_VALUES)
            .map(|i| format!("\"k{i}\":0"))
            .collect();
        let text = format!("{{{}}}", keys.join(","));
        assert!(kind(parse_bounded(text.as_bytes())).starts_with("413 body: holds more than"));
        let items = vec!["0"; MAX_JSON_VALUES - 1].join(",");
        assert!(kind(parse_bounded(format!("[{items}]").as_bytes())).starts_with("ok"));
    }

    #[test]
    fn deep_nesting_and_bad_json_are_400s() {
        let deep = format!(
            "{}{}",
            "[".repeat(MAX_JSON_DEPTH + 1),
            "]".repeat(MAX_JSON_DEPTH + 1)
        );
        assert_eq!(
            kind(parse_bounded(deep.as_bytes())),
            format!("400 body is nested deeper than {MAX_JSON_DEPTH} levels")
        );
        let ok = format!(
            "{}{}",
            "[".repeat(MAX_JSON_DEPTH),
            "]".repeat(MAX_JSON_DEPTH)
        );
        assert!(kind(parse_bounded(ok.as_bytes())).starts_with("ok"));
        for bad in [
            &b"{"[..],
            b"",
            b"{} x",
            b"{\"a\":\"\xff\"}",
            b"[1e400]",
            b"{\"a\" 1}",
        ] {
            assert!(
                kind(parse_bounded(bad)).starts_with("400 body is not valid JSON"),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn query_integers_are_range_checked_past_u64() {
        assert_eq!(query_int("limit", None, 50, 1..=500).ok(), Some(50));
        assert_eq!(query_int("limit", Some(""), 50, 1..=500).ok(), Some(50));
        assert_eq!(query_int("limit", Some("500"), 50, 1..=500).ok(), Some(500));
        let max = i64::MAX as u64;
        assert_eq!(
            query_int("offset", Some("9223372036854775807"), 0, 0..=max).ok(),
            Some(max)
        );
        for bad in [
            "0",
            "501",
            "-1",
            "1.5",
            "abc",
            "18446744073709551616",
            "1e3",
        ] {
            match query_int("limit", Some(bad), 50, 1..=500) {
                Err(ApiError::Invalid(f)) => {
                    assert_eq!(f[0].field, "limit");
                    assert_eq!(f[0].reason, "must be an integer from 1 to 500");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        for bad in ["9223372036854775808", "18446744073709551615"] {
            assert!(query_int("offset", Some(bad), 0, 0..=max).is_err(), "{bad}");
        }
    }
}
