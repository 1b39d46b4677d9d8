//! Property tests (fuzzing with shrinking) for the code that reads what strangers send: the
//! webhook signature check, timestamp check and body parser, and the JWT expiry reader. The
//! suite runs each property 256 times; a longer run is
//! `PROPTEST_CASES=20000 cargo test -p telltale --test untrusted_input` (120,000 inputs, about
//! 80 s on two cores).

use base64::Engine;
use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{Value, json};
use telltale::milesight::payload::{Rejection, check_freshness, parse_body, sign, verify};
use telltale::providers::jwt_expiry;

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("eventId".to_owned()),
                    Just("eventType".to_owned()),
                    Just("data".to_owned()),
                    Just("ts".to_owned()),
                    Just("deviceProfile".to_owned()),
                    Just("sn".to_owned()),
                    Just("payload".to_owned()),
                    ".{0,6}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A well-formed MDP event (apis.md §1.5) with arbitrary ids, serials and times.
fn mdp_event() -> impl Strategy<Value = Value> {
    (
        "[A-Za-z0-9_-]{1,40}",
        "[A-Z0-9]{1,20}",
        0i64..4_102_444_800_000,
        any::<i32>(),
    )
        .prop_map(|(id, sn, ts, reading)| {
            json!({
                "eventId": id, "eventType": "DEVICE_DATA", "eventVersion": "1.0",
                "eventCreatedTime": (ts / 1000).to_string(),
                "data": {"deviceProfile": {"sn": sn, "devEUI": "24D1", "model": "EM300-TH"},
                         "type": "PROPERTY", "ts": ts, "payload": {"temperature": reading}}
            })
        })
}

/// A value for one of an event's fields: mostly what MDP sends, sometimes any other JSON.
fn field_value(usual: impl Strategy<Value = Value> + 'static) -> impl Strategy<Value = Value> {
    prop_oneof![4 => usual, 1 => any_json()]
}

/// An object of the fields that are present.
fn object_of<const N: usize>(fields: [(&str, Option<Value>); N]) -> Value {
    Value::Object(
        fields
            .into_iter()
            .filter_map(|(key, value)| Some((key.to_owned(), value?)))
            .collect(),
    )
}

/// An object shaped like an MDP event, each field present or not, of the usual type or any
/// other: the shapes the parser's leniency rules are about.
fn event_like() -> impl Strategy<Value = Value> {
    let text = || "[A-Za-z0-9 _\\\"\u{e9}-]{0,12}".prop_map(Value::String);
    let number = || {
        prop_oneof![
            any::<i64>().prop_map(Value::from),
            (0f64..200.0).prop_map(Value::from)
        ]
    };
    let profile = prop::collection::btree_map(
        prop::sample::select(vec!["sn", "devEUI", "deviceId", "name", "model", "other"]),
        field_value(prop_oneof![text(), number()]),
        0..6,
    );
    let payload = prop::collection::btree_map(
        prop::sample::select(vec!["battery", "temperature", "humidity"]),
        field_value(number()),
        0..3,
    );
    let data = (
        prop::option::of(field_value(number())),
        prop::option::of(field_value(text())),
        prop::option::of(field_value(profile.prop_map(|m| json!(m)))),
        prop::option::of(field_value(payload.prop_map(|m| json!(m)))),
        prop::option::of(any_json()),
    )
        .prop_map(|(ts, kind, profile, payload, message)| {
            object_of([
                ("ts", ts),
                ("type", kind),
                ("deviceProfile", profile),
                ("payload", payload),
                ("message", message),
            ])
        });
    (
        prop::option::of(field_value(prop_oneof![text(), number()])),
        prop::option::of(field_value(prop_oneof![text(), number()])),
        prop::option::of(field_value(
            prop::sample::select(vec!["DEVICE_DATA", "SYSTEM_MESSAGES", "WEBHOOK_TEST", ""])
                .prop_map(Value::from),
        )),
        prop::option::of(field_value(prop_oneof![text(), number()])),
        prop::option::of(field_value(data)),
    )
        .prop_map(|(id, id_upper, kind, created, data)| {
            object_of([
                ("eventId", id),
                ("eventID", id_upper),
                ("eventType", kind),
                ("eventCreatedTime", created),
                ("data", data),
            ])
        })
}

/// What the parser should read from one event, worked out the plain way: the event read whole
/// into a `serde_json::Value`, fields looked up in it. The parser reads the text directly
/// instead (faster, and nothing is built that is not used); this is its reference.
fn reference_reading(event: &Value) -> Result<Value, String> {
    let object = event.as_object().ok_or("not an object")?;
    let field = |names: &[&str]| names.iter().find_map(|n| object.get(*n)).filter(|v| !v.is_null());
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let event_id = field(&["eventId", "eventID"])
        .and_then(scalar)
        .filter(|s| !s.is_empty() && s.len() <= 200)
        .ok_or("no id")?;
    let event_type = field(&["eventType"])
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 64)
        .ok_or("no type")?;
    let created = field(&["eventCreatedTime"])
        .and_then(scalar)
        .and_then(|s| s.parse::<i64>().ok());
    let data = object.get("data").and_then(Value::as_object);
    let event_time = match (data.and_then(|d| d.get("ts")).and_then(Value::as_i64), created) {
        (Some(ms), _) => Utc
            .timestamp_millis_opt(ms)
            .single()
            .map(|t| t.timestamp_millis()),
        (None, Some(secs)) => Utc.timestamp_opt(secs, 0).single().map(|t| t.timestamp_millis()),
        (None, None) => None,
    };
    let device = data
        .and_then(|d| d.get("deviceProfile"))
        .and_then(Value::as_object)
        .and_then(|p| {
            let text = |name: &str| p.get(name).and_then(scalar).filter(|s| !s.is_empty());
            Some(json!([
                text("sn")?,
                text("devEUI"),
                text("deviceId"),
                text("name"),
                text("model")
            ]))
        });
    let payload = data.and_then(|d| d.get("payload")).filter(|p| !p.is_null());
    let battery = payload
        .and_then(|p| p.get("battery"))
        .and_then(Value::as_f64)
        .filter(|v| (0.0..=100.0).contains(v))
        .map(|v| v.round() as i32);
    let message = (event_type == "SYSTEM_MESSAGES")
        .then(|| data.and_then(|d| d.get("message")).map(Value::to_string))
        .flatten();
    Ok(json!({
        "id": event_id, "type": event_type, "time": event_time,
        "data_type": data.and_then(|d| d.get("type")).and_then(Value::as_str),
        "device": device, "payload": payload, "battery": battery, "message": message, "raw": event,
    }))
}

/// The same summary of what `parse_body` read.
fn reading(event: &telltale::milesight::payload::ParsedEvent) -> Value {
    // Text that is not JSON stays a string, which no reference reading equals.
    let json_text = |text: &str| serde_json::from_str(text).unwrap_or_else(|_| Value::from(text));
    json!({
        "id": event.event_id, "type": event.event_type,
        "time": event.event_time.map(|t| t.0.timestamp_millis()),
        "data_type": event.data_type,
        "device": event.device.as_ref().map(|d| json!([d.sn, d.dev_eui, d.device_id, d.name, d.model])),
        "payload": event.payload.as_deref().map(json_text), "battery": event.battery,
        "message": event.system_message, "raw": json_text(&event.raw),
    })
}

proptest! {
    /// The parser reads every field exactly as looking it up in the whole parsed event would:
    /// the same ids, times, device identity, battery and notice, the same payload and event
    /// JSON, and the same events refused.
    #[test]
    fn the_body_parser_reads_what_a_full_json_reading_reads(
        events in prop::collection::vec(event_like(), 1..6),
        pretty in any::<bool>(),
    ) {
        let body = if pretty {
            serde_json::to_string_pretty(&events).unwrap()
        } else {
            Value::Array(events.clone()).to_string()
        };
        // Read back from the text, as the parser reads it (serde_json reads a float to within
        // one unit in the last place, the same way both times).
        let sent: Vec<Value> = serde_json::from_str(&body).unwrap();
        let expected: Result<Vec<Value>, String> = sent.iter().map(reference_reading).collect();
        match (parse_body(body.as_bytes()), expected) {
            (Ok(parsed), Ok(expected)) => {
                let got: Vec<Value> = parsed.iter().map(reading).collect();
                prop_assert_eq!(got, expected);
            }
            (Err(Rejection::InvalidEvent(_)), Err(_)) => {}
            (got, expected) => prop_assert!(false, "parser {got:?}, reference {expected:?}"),
        }
    }

    /// No byte string crashes the parser: it answers events or a rejection.
    #[test]
    fn the_body_parser_never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_body(&body);
    }

    /// Any JSON shape gets events or one of the two body rejections, never anything else.
    #[test]
    fn the_body_parser_answers_any_json_with_events_or_a_reason(value in any_json()) {
        match parse_body(value.to_string().as_bytes()) {
            Ok(events) => prop_assert!(events.iter().all(|e| !e.event_id.is_empty())),
            Err(Rejection::Malformed(_) | Rejection::InvalidEvent(_)) => {}
            Err(other) => prop_assert!(false, "unexpected rejection {other:?}"),
        }
    }

    /// Well-formed events come out one for one, in order, ids and serials intact; one event
    /// sent as an object reads the same as an array of it.
    #[test]
    fn well_formed_events_are_read_faithfully(events in prop::collection::vec(mdp_event(), 1..20)) {
        let parsed = parse_body(Value::Array(events.clone()).to_string().as_bytes()).unwrap();
        prop_assert_eq!(parsed.len(), events.len());
        for (event, got) in events.iter().zip(&parsed) {
            prop_assert_eq!(Some(got.event_id.as_str()), event["eventId"].as_str());
            prop_assert_eq!(
                got.device.as_ref().map(|d| d.sn.as_str()),
                event["data"]["deviceProfile"]["sn"].as_str()
            );
            prop_assert_eq!(
                got.event_time.map(|t| t.0.timestamp_millis()),
                event["data"]["ts"].as_i64()
            );
        }
        let single = parse_body(events[0].to_string().as_bytes()).unwrap();
        prop_assert_eq!(&single[..], &parsed[..1]);
    }

    /// A signature made with the secret verifies; any other secret, nonce, timestamp or a
    /// changed signature does not; garbage in the header is a refusal, not a crash.
    #[test]
    fn signatures_verify_only_for_the_exact_request(
        secret in ".{1,40}",
        other_secret in ".{1,40}",
        timestamp in "[0-9]{10}",
        nonce in ".{0,40}",
        flip in 0usize..64,
        garbage in ".{0,80}",
    ) {
        let signature = sign(&secret, &timestamp, &nonce);
        prop_assert!(verify(&secret, &timestamp, &nonce, &signature));
        prop_assert!(verify(&secret, &timestamp, &nonce, &signature.to_uppercase()));
        if other_secret != secret {
            prop_assert!(!verify(&other_secret, &timestamp, &nonce, &signature));
        }
        let (other_nonce, other_timestamp) = (format!("{nonce}x"), format!("{timestamp}0"));
        prop_assert!(!verify(&secret, &timestamp, &other_nonce, &signature));
        prop_assert!(!verify(&secret, &other_timestamp, &nonce, &signature));
        let mut changed = signature.clone().into_bytes();
        changed[flip] = if changed[flip] == b'0' { b'1' } else { b'0' };
        prop_assert!(!verify(&secret, &timestamp, &nonce, std::str::from_utf8(&changed).unwrap()));
        prop_assert!(!verify(&secret, &timestamp, &nonce, &signature[..flip]));
        if garbage.trim() != signature {
            prop_assert!(!verify(&secret, &timestamp, &nonce, &garbage));
        }
    }

    /// Any timestamp header, including extreme numbers, is accepted only within the tolerance.
    #[test]
    fn timestamps_outside_the_window_are_refused(
        header in prop_oneof![
            ".{0,24}",
            any::<i64>().prop_map(|n| n.to_string()),
            prop::sample::select(vec![i64::MIN, i64::MAX, -1, 0]).prop_map(|n| n.to_string()),
        ],
        now_secs in 0i64..4_102_444_800,
        tolerance in 1i64..3_600,
    ) {
        let now = Utc.timestamp_opt(now_secs, 0).unwrap();
        match check_freshness(&header, now, tolerance) {
            Ok(sent) => prop_assert!((now_secs - sent).abs() <= tolerance),
            Err(Rejection::BadTimestamp | Rejection::Expired { .. }) => {}
            Err(other) => prop_assert!(false, "unexpected rejection {other:?}"),
        }
    }

    /// The JWT reader never panics and reads back any positive `exp`, with or without padding.
    #[test]
    fn jwt_expiry_reads_any_exp_and_survives_garbage(
        token in ".{0,200}",
        exp in 1i64..i64::MAX,
        padded in any::<bool>(),
    ) {
        let _ = jwt_expiry(&token);
        let engine = if padded {
            &base64::engine::general_purpose::URL_SAFE
        } else {
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
        };
        let claims = engine.encode(json!({"sub": "x", "exp": exp}).to_string());
        let jwt = format!("eyJhbGciOiJIUzI1NiJ9.{claims}.c2ln");
        prop_assert_eq!(jwt_expiry(&jwt), Some(exp));
    }
}
