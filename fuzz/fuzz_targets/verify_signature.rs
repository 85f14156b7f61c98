//! Signature verification: fuzzed request headers and body against the Standard Webhooks and
//! HMAC verifiers, exactly as the webhook source calls them (`check_headers` before the body is
//! read, `verify` after).
//!
//! Input: header lines (`name: value`, invalid names or values skipped, repeats kept), an empty
//! line, then the body.
//!
//! Properties beyond "no panic":
//! - `check_headers` refusing means `verify` refuses (nothing passes the late check only);
//! - nothing verifies unless it carries a tag that really is the MAC of id, timestamp and body
//!   under a configured secret (no forgery through parsing quirks);
//! - the verified body is the body given;
//! - a request signed correctly for the fuzzed id and body verifies, and one flipped bit of the
//!   body makes it fail.
#![no_main]

use base64::Engine as _;
use bytes::Bytes;
use fondo_bridge::config::{HmacAlgorithm, Secret, SignatureConfig, SignatureEncoding};
use fondo_bridge::sources::webhook::signature::{Payload, Verifier, standard_signature};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

const S1: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const S2: &str = "whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24=";
const NOW: i64 = 1_700_000_000;

fn verifiers() -> Vec<Verifier> {
    let hmac = |alg, enc, prefix: &str, ts: bool| {
        Verifier::from_config(&SignatureConfig::Hmac {
            header: "x-fondo-signature".into(),
            algorithm: alg,
            encoding: enc,
            prefix: prefix.into(),
            signed_content: if ts { "{timestamp}.{body}" } else { "{body}" }.into(),
            timestamp_header: ts.then(|| "x-fondo-timestamp".into()),
            secrets: vec![Secret("s3cret".into())],
            secrets_file: None,
            tolerance_s: 300,
        })
        .expect("hmac verifier")
    };
    vec![
        Verifier::standard(&[Secret(S1.into()), Secret(S2.into())], 300).expect("standard"),
        hmac(
            HmacAlgorithm::Sha256,
            SignatureEncoding::Hex,
            "sha256=",
            false,
        ),
        hmac(HmacAlgorithm::Sha512, SignatureEncoding::Base64, "", true),
    ]
}

fn split(data: &[u8]) -> (HeaderMap, &[u8]) {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &b""[..]),
    };
    let mut h = HeaderMap::new();
    for line in head.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        h.append(name, value);
    }
    (h, body)
}

/// Whether some `v1,` entry of the signature header decodes to the real tag for id/ts/body.
fn carries_real_tag(h: &HeaderMap, body: &[u8]) -> bool {
    let (Some(id), Some(ts)) = (
        h.get("webhook-id").and_then(|v| v.to_str().ok()),
        h.get("webhook-timestamp").and_then(|v| v.to_str().ok()),
    ) else {
        return false;
    };
    let Ok(ts) = ts.trim().parse::<i64>() else {
        return false;
    };
    let Some(sig) = h.get("webhook-signature").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let decode = |s: &str| {
        let b64 = s.strip_prefix("v1,")?;
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(b64))
            .ok()
    };
    [S1, S2].iter().any(|secret| {
        let want = standard_signature(secret, id.trim(), ts, body).and_then(|s| decode(&s));
        sig.split(' ').any(|e| want.is_some() && decode(e) == want)
    })
}

fuzz_target!(|data: &[u8]| {
    let (headers, body) = split(data);
    let vs = verifiers();
    for (i, v) in vs.iter().enumerate() {
        let early = v.check_headers(&headers, NOW);
        let result = v.verify(&headers, Payload::new(Bytes::copy_from_slice(body)), NOW);
        if early.is_err() {
            assert!(result.is_err(), "passed verify after failing check_headers");
        }
        if let Ok(p) = result {
            assert_eq!(p.body().as_ref(), body);
            if i == 0 {
                assert!(
                    carries_real_tag(&headers, body),
                    "verified without a real tag: {headers:?}"
                );
            }
        }
        if let Err(e) = early {
            assert!(!e.to_string().is_empty() && !e.kind().is_empty());
        }
    }

    // Sign the fuzzed body for a fuzzed id (the first header value) and check it round-trips.
    let id = headers
        .values()
        .next()
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty() && s.len() <= 256)
        .unwrap_or("msg_fuzz");
    let Some(sig) = standard_signature(S2, id, NOW, body) else {
        panic!("the configured secret signs");
    };
    let mut good = HeaderMap::new();
    let (Ok(idv), Ok(sigv)) = (HeaderValue::from_str(id), HeaderValue::from_str(&sig)) else {
        return;
    };
    good.insert("webhook-id", idv);
    good.insert("webhook-timestamp", HeaderValue::from(NOW));
    good.insert("webhook-signature", sigv);
    let ok = vs[0].verify(&good, Payload::new(Bytes::copy_from_slice(body)), NOW + 299);
    assert!(ok.is_ok(), "a correct signature for {id:?} failed: {ok:?}");
    let mut flipped = body.to_vec();
    match flipped.first_mut() {
        Some(b) => *b ^= 1,
        None => flipped.push(b'x'),
    }
    let bad = vs[0].verify(&good, Payload::new(Bytes::from(flipped)), NOW);
    assert!(bad.is_err(), "a tampered body verified");
});
