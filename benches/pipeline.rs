//! The in-process bound: split an EventList, render each event to RFC 5424 and frame it, with
//! no network, no queue and no TLS. `scripts/bench.sh` compares the relay end to end with it.
//!
//! Run: `cargo bench --bench pipeline`

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kube_audit_relay::audit::{EventList, EventView};
use kube_audit_relay::config::{Framing, SyslogConfig};
use kube_audit_relay::syslog::{Renderer, frame};

/// A 100-event batch of real Metadata-level events (~700 B each), as the apiserver sends it.
fn batch() -> Vec<u8> {
    let body = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/real-apiserver-v1.20.2-metadata-051.json"
    ))
    .unwrap();
    let list = EventList::parse(&body).unwrap();
    let items: Vec<&str> = (0..100)
        .map(|i| list.items[i % list.items.len()].get())
        .collect();
    format!("{{\"kind\":\"EventList\",\"apiVersion\":\"audit.k8s.io/v1\",\"metadata\":{{}},\"items\":[{}]}}\n", items.join(",")).into_bytes()
}

fn pipeline(c: &mut Criterion) {
    let body = batch();
    let renderer = Renderer::new(&SyslogConfig::default(), "bench");
    let mut group = c.benchmark_group("metadata-100");
    group.throughput(Throughput::Elements(100));

    group.bench_function("split", |b| {
        b.iter(|| {
            let list = EventList::parse(black_box(&body)).unwrap();
            for (i, item) in list.items.iter().enumerate() {
                black_box(EventView::parse(i, item).unwrap());
            }
        })
    });

    let list = EventList::parse(&body).unwrap();
    let views: Vec<EventView<'_>> = list
        .items
        .iter()
        .enumerate()
        .map(|(i, it)| EventView::parse(i, it).unwrap())
        .collect();
    group.bench_function("render", |b| {
        b.iter(|| {
            for (item, view) in list.items.iter().zip(&views) {
                black_box(renderer.render(item, view, "2026-01-01T00:00:00Z").unwrap());
            }
        })
    });

    let messages: Vec<Vec<u8>> = list
        .items
        .iter()
        .zip(&views)
        .map(|(i, v)| renderer.render(i, v, "x").unwrap().message)
        .collect();
    let mut out = Vec::with_capacity(1 << 20);
    group.bench_function("frame-octet", |b| {
        b.iter(|| {
            out.clear();
            for m in &messages {
                frame(Framing::Octet, m, &mut out);
            }
            black_box(out.len());
        })
    });

    group.bench_function("split+render+frame", |b| {
        b.iter(|| {
            out.clear();
            let list = EventList::parse(black_box(&body)).unwrap();
            for (i, item) in list.items.iter().enumerate() {
                let view = EventView::parse(i, item).unwrap();
                let rendered = renderer
                    .render(item, &view, "2026-01-01T00:00:00Z")
                    .unwrap();
                frame(Framing::Octet, &rendered.message, &mut out);
            }
            black_box(out.len());
        })
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
