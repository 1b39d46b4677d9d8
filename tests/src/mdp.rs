//! What the Milesight Development Platform sends: signed webhook headers and readings.

/// Milesight webhook headers for `secret`, computed here with the test's own HMAC (not the
/// product's), as MDP does: lower-hex HMAC-SHA256 over `timestamp + nonce`.
pub fn milesight_headers(
    secret: &str,
    uuid: Option<&str>,
    timestamp: i64,
    nonce: &str,
) -> Vec<(String, String)> {
    use hmac::{KeyInit, Mac};
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    mac.update(format!("{timestamp}{nonce}").as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());
    let mut headers = vec![
        ("content-type".to_owned(), "application/json".to_owned()),
        ("x-msc-request-timestamp".to_owned(), timestamp.to_string()),
        ("x-msc-request-nonce".to_owned(), nonce.to_owned()),
        ("x-msc-request-signature".to_owned(), signature),
    ];
    if let Some(uuid) = uuid {
        headers.push(("x-msc-webhook-uuid".to_owned(), uuid.to_owned()));
    }
    headers
}

/// A DEVICE_DATA event as MDP sends it (apis.md §1.5).
pub fn mdp_reading(
    event_id: &str,
    sn: &str,
    kind: &str,
    ts_ms: i64,
    payload: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "eventId": event_id,
        "eventCreatedTime": (ts_ms / 1000).to_string(),
        "eventVersion": "1.0",
        "eventType": "DEVICE_DATA",
        "data": {
            "deviceProfile": {"deviceId": "1904371063669395457", "sn": sn, "devEUI": "24D124707E04AAAA",
                              "name": "Cold room", "model": "EM300-TH"},
            "type": kind, "tslId": "", "ts": ts_ms, "payload": payload
        }
    })
}

/// A fresh random nonce for a signed request.
pub fn nonce() -> String {
    format!("n-{:016x}", rand::random::<u64>())
}
