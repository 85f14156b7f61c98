//! Parse + route + render per event, with 1 and with 1000 routes (issue #2's target: < 5 µs per
//! 2 KB event, and 1000 routes no more than 10% slower than 1).

#![allow(clippy::expect_used)] // a benchmark: bad fixtures should stop it loudly

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fondo_bridge::config::Config;
use fondo_bridge::event::{Event, Node, ParseContext, ParseOptions, content_key, node_content_key};
use fondo_bridge::router::Router;

const ACCOUNT: &str = include_str!("../tests/fixtures/fondo/account.update.json");
const ORDER: &str = include_str!("../tests/fixtures/fondo/order.create.json");

fn config(routes: usize) -> Config {
    let mut y = String::from(
        "sources: { webhook: { signature: { scheme: none, insecure: true } } }\nsinks: { a: { type: file, dir: /tmp/bench } }\nroutes:\n",
    );
    // routes - 1 routes for types that the samples are not, then the one that matches.
    for i in 0..routes.saturating_sub(2) {
        y.push_str(&format!(
            "  - {{ name: r{i}, match: [\"journey.x{i}\"], to: [{{ sink: a, topic: \"t{i}\" }}] }}\n"
        ));
    }
    y.push_str("  - { name: orders, match: [\"order.*\"], to: [{ sink: a, topic: \"fondo.{entity}\", key: \"{/current/id}\" }] }\n");
    if routes > 1 {
        y.push_str("  - { name: accounts, match: [\"account.*\"], where: { \"/current/accountType\": \"isk\" }, to: [{ sink: a, topic: \"fondo.account.{action}\" }] }\n");
    }
    Config::from_str_with_env(&y, "yaml", Vec::new()).expect("bench config")
}

/// A 2 KB account event: the sample with a padded name.
fn two_kb_event() -> Bytes {
    let pad = 2048usize.saturating_sub(ACCOUNT.len());
    Bytes::from(ACCOUNT.replacen("\"Spar\"", &format!("\"Spar{}\"", "x".repeat(pad)), 1))
}

fn bench(c: &mut Criterion) {
    let opts = ParseOptions::default();
    let ctx = ParseContext {
        client_id: Some("49ad7378-121c-4a53-9894-dfd14a7b4877"),
        ..ParseContext::default()
    };
    let account = two_kb_event();
    let order = Bytes::from_static(ORDER.as_bytes());
    let mut g = c.benchmark_group("parse_route_render");
    g.throughput(Throughput::Elements(1));
    for routes in [1usize, 1000] {
        let router = Router::compile(&config(routes)).expect("routes compile");
        for (name, body) in [("order", &order), ("account_2kb", &account)] {
            g.bench_function(format!("{name}/{routes}_routes"), |b| {
                b.iter(|| {
                    let ev = Event::parse(body.clone(), &opts, &ctx).expect("sample parses");
                    black_box(router.route(black_box(&ev)))
                })
            });
        }
    }
    g.finish();

    // What `Event::parse` does to read a body and compute its content id, the way it did before
    // (a `serde_json::Value`, then the id through serde's serializer) against the way it does
    // now (a borrowed `Node`, then the id written straight from it), on the same 2 KB body.
    let mut g = c.benchmark_group("parse_body_and_id");
    g.throughput(Throughput::Elements(1));
    g.bench_function("value_then_serialised_id", |b| {
        b.iter(|| {
            let v: serde_json::Value = serde_json::from_slice(&account).expect("sample parses");
            black_box(content_key("account.update", &v))
        })
    });
    g.bench_function("node_then_direct_id", |b| {
        b.iter(|| {
            let n = Node::parse(&account).expect("sample parses");
            black_box(node_content_key("account.update", &n, account.len()))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
