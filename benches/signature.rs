//! Webhook signature verification cost per request (target: a 2 KB body in under 10 µs).
//!
//! Run: `cargo bench --bench signature`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use axum::http::{HeaderMap, HeaderValue};
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fondo_bridge::config::{HmacAlgorithm, Secret, SignatureConfig, SignatureEncoding};
use fondo_bridge::sources::webhook::signature::{Payload, Verifier, standard_signature};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OTHER: &str = "whsec_b2xkLXNlY3JldC1iZWluZy1yb3RhdGVkLW91dA==";
const TS: i64 = 1_700_000_000;

fn body(len: usize) -> Bytes {
    let mut b = br#"{"eventType":"order.update","current":{"id":"ord_1","padding":""#.to_vec();
    b.resize(len - 3, b'x');
    b.extend_from_slice(br#""}}"#);
    Bytes::from(b)
}

fn standard_headers(body: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("webhook-id", HeaderValue::from_static("msg_2b4fQ8zT1bench"));
    h.insert("webhook-timestamp", HeaderValue::from(TS));
    let sig = standard_signature(SECRET, "msg_2b4fQ8zT1bench", TS, body).unwrap();
    h.insert("webhook-signature", HeaderValue::from_str(&sig).unwrap());
    h
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("webhook_signature");
    for len in [2 * 1024, 64 * 1024] {
        let b = body(len);
        g.throughput(Throughput::Bytes(len as u64));
        let h = standard_headers(&b);
        let one = Verifier::standard(&[Secret(SECRET.into())], 300).unwrap();
        g.bench_function(format!("standard_verify_{}k", len / 1024), |bench| {
            bench.iter(|| {
                let v = one.verify(black_box(&h), Payload::new(b.clone()), TS);
                black_box(v.is_ok())
            })
        });
        if len == 2 * 1024 {
            // Rotation: the matching secret is the second of two.
            let two =
                Verifier::standard(&[Secret(OTHER.into()), Secret(SECRET.into())], 300).unwrap();
            g.bench_function("standard_verify_2k_rotation_2_secrets", |bench| {
                bench.iter(|| {
                    let v = two.verify(black_box(&h), Payload::new(b.clone()), TS);
                    black_box(v.is_ok())
                })
            });
            let bad = Verifier::standard(&[Secret(OTHER.into())], 300).unwrap();
            g.bench_function("standard_reject_2k", |bench| {
                bench.iter(|| {
                    let v = bad.verify(black_box(&h), Payload::new(b.clone()), TS);
                    black_box(v.is_err())
                })
            });
            let hmac = Verifier::from_config(&SignatureConfig::Hmac {
                header: "x-fondo-signature".into(),
                algorithm: HmacAlgorithm::Sha256,
                encoding: SignatureEncoding::Hex,
                prefix: "sha256=".into(),
                signed_content: "{body}".into(),
                timestamp_header: None,
                secrets: vec![Secret("the-shared-secret".into())],
                secrets_file: None,
                tolerance_s: 300,
            })
            .unwrap();
            let tag = {
                use hmac::{KeyInit, Mac};
                let mut m =
                    <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(b"the-shared-secret")
                        .unwrap();
                m.update(&b);
                hex::encode(m.finalize().into_bytes())
            };
            let mut hh = HeaderMap::new();
            hh.insert(
                "x-fondo-signature",
                HeaderValue::from_str(&format!("sha256={tag}")).unwrap(),
            );
            g.bench_function("hmac_sha256_hex_verify_2k", |bench| {
                bench.iter(|| {
                    let v = hmac.verify(black_box(&hh), Payload::new(b.clone()), TS);
                    black_box(v.is_ok())
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
