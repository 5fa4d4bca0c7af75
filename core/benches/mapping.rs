//! The mapping engine against hand-written code producing the same document.
//!
//! `asycuda_export/engine` runs the shipped ASYCUDA mapping on the sample
//! order (decode JSON, map, encode XML); `asycuda_export/handwritten` does the
//! same with serde_json into typed structs and quick-xml's writer, the way
//! one would code this one conversion by hand. Both outputs are checked to
//! be the same document before anything is timed. The target is the engine
//! within 2x of the hand-written code.

#[path = "support/handwritten.rs"]
mod handwritten;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use nzela_core::codec::{Codec, Format, Limits};
use nzela_core::mapping::Mapping;

use handwritten::handwritten;

const MAPPING: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../mappings/marketplace-order-to-asycuda-export.yaml"
);
const ORDER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../mappings/tests/order-paid.json"
);

fn bench(c: &mut Criterion) {
    let mapping = Mapping::load(MAPPING).unwrap_or_else(|e| panic!("{e}"));
    let order = std::fs::read(ORDER).expect("the sample order");

    // Both must produce the same document before either is timed.
    let xml = Codec::default_for(Format::Xml);
    let limits = Limits::default();
    let engine_out = mapping.run(&order).expect("engine output");
    let hand_out = handwritten(&order).expect("handwritten output");
    assert_eq!(
        xml.decode(&engine_out, &limits).expect("engine XML"),
        xml.decode(&hand_out, &limits).expect("handwritten XML"),
        "the engine and the hand-written code disagree"
    );

    let mut g = c.benchmark_group("asycuda_export");
    g.bench_function("engine", |b| {
        b.iter(|| mapping.run(black_box(&order)).expect("engine"))
    });
    g.bench_function("handwritten", |b| {
        b.iter(|| handwritten(black_box(&order)).expect("handwritten"))
    });
    g.finish();

    // Where the engine's time goes: decoding, mapping, encoding.
    let json = Codec::default_for(Format::Json);
    let decoded = json.decode(&order, &limits).expect("decode");
    let mapped = mapping.map_value(&decoded).expect("map");
    let mut g = c.benchmark_group("engine_stages");
    g.bench_function("decode_json", |b| {
        b.iter(|| json.decode(black_box(&order), &limits).expect("decode"))
    });
    // What a source does with each message it takes in: check it and
    // read its business key, without building the tree.
    let key = nzela_core::runtime::FieldPath::parse("order.order_id").expect("key");
    g.bench_function("check_json", |b| {
        b.iter(|| {
            nzela_core::runtime::check_message(&json, black_box(&order), &limits, Some(&key))
                .expect("check")
        })
    });
    g.bench_function("map", |b| {
        b.iter(|| mapping.map_value(black_box(&decoded)).expect("map"))
    });
    g.bench_function("encode_xml", |b| {
        b.iter(|| mapping.output().encode(black_box(&mapped)).expect("encode"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
