//! The in-process bound: the pipeline (split, dedupe, filter/redact, render) and the encoder,
//! with no network, no queue and no TLS. `scripts/bench.sh` compares the relay end to end
//! with it.
//!
//! Run: `cargo bench --bench pipeline`

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kube_audit_relay::config::{Config, Format, Framing, Oversize};
use kube_audit_relay::pipeline::Pipeline;
use kube_audit_relay::syslog::Encoder;

/// A 100-event batch of real Metadata-level events (~700 B each), as the apiserver sends it,
/// with auditIDs made unique per call so that deduplication keeps them.
fn batch(round: u64) -> Vec<u8> {
    let body = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/real-apiserver-v1.20.2-metadata-051.json"
    ))
    .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let items = list["items"].as_array().unwrap();
    let items: Vec<String> = (0..100)
        .map(|i| {
            let mut event = items[i % items.len()].clone();
            event["auditID"] = format!("bench-{round}-{i}").into();
            serde_json::to_string(&event).unwrap()
        })
        .collect();
    format!(
        "{{\"kind\":\"EventList\",\"apiVersion\":\"audit.k8s.io/v1\",\"metadata\":{{}},\"items\":[{}]}}\n",
        items.join(",")
    )
    .into_bytes()
}

fn pipeline(config: &str) -> Pipeline {
    Pipeline::new(
        &Config::parse(config, Path::new("bench.toml")).unwrap(),
        "bench",
    )
}

fn benches(c: &mut Criterion) {
    let bodies: Vec<Vec<u8>> = (0..64).map(batch).collect();
    let mut group = c.benchmark_group("metadata-100");
    group.throughput(Throughput::Elements(100));

    // Deduplication off: split, views and render only.
    let plain = pipeline("[dedupe]\nmax_entries = 0\n");
    let mut n = 0usize;
    group.bench_function("pipeline", |b| {
        b.iter(|| {
            n += 1;
            black_box(
                plain
                    .run(black_box(&bodies[n % 64]), "2026-01-01T00:00:00Z")
                    .unwrap(),
            )
        })
    });

    // The default dedupe window (100 000 keys), with every batch recorded as stored as the
    // webhook does. 1 100 distinct batches cycle through it, so each key has left the window
    // before its batch comes again and every event is still rendered.
    let many: Vec<Vec<u8>> = (0..1100).map(batch).collect();
    let dedupe = pipeline("");
    group.bench_function("pipeline+dedupe", |b| {
        b.iter(|| {
            n += 1;
            let batch = dedupe
                .run(&many[n % many.len()], "2026-01-01T00:00:00Z")
                .unwrap();
            dedupe.stored(&batch.keys);
            assert_eq!(batch.summary.duplicates, 0);
            black_box(batch.summary)
        })
    });

    let policy = pipeline(
        "[dedupe]\nmax_entries = 0\n[[filter]]\naction = \"drop\"\nverb = [\"watch\"]\nuser = [\"system:serviceaccount:kube-system:*\"]\n[[redact]]\npointer = \"/requestObject/data\"\nresource = [\"secrets\"]\n",
    );
    group.bench_function("pipeline+filter+redact", |b| {
        b.iter(|| {
            n += 1;
            black_box(policy.run(&bodies[n % 64], "2026-01-01T00:00:00Z").unwrap())
        })
    });

    // The dedupe key alone (SipHash of auditID and stage, and of the bytes).
    let events: Vec<(String, String)> = {
        let list: serde_json::Value = serde_json::from_slice(&bodies[0]).unwrap();
        let items = list["items"].as_array().unwrap();
        items
            .iter()
            .map(|e| {
                (
                    e["auditID"].as_str().unwrap().to_owned(),
                    serde_json::to_string(e).unwrap(),
                )
            })
            .collect()
    };
    let keys = kube_audit_relay::dedupe::Dedupe::new(0);
    group.bench_function("dedupe-key", |b| {
        b.iter(|| {
            for (id, json) in &events {
                black_box(keys.key(id, "ResponseComplete", black_box(json.as_bytes())));
            }
        })
    });

    let records = plain.run(&bodies[0], "x").unwrap().records;
    let octet = Encoder::new(
        Format::Rfc5424,
        Framing::Octet,
        usize::MAX,
        Oversize::Truncate,
    );
    let mut out = Vec::with_capacity(1 << 20);
    group.bench_function("encode-octet", |b| {
        b.iter(|| {
            out.clear();
            for r in &records {
                octet.stream(r, &mut out);
            }
            black_box(out.len());
        })
    });

    group.bench_function("pipeline+encode", |b| {
        b.iter(|| {
            n += 1;
            out.clear();
            let batch = plain.run(&bodies[n % 64], "2026-01-01T00:00:00Z").unwrap();
            for r in &batch.records {
                octet.stream(r, &mut out);
            }
            black_box(out.len());
        })
    });
    group.finish();
}

criterion_group!(pipeline_benches, benches);
criterion_main!(pipeline_benches);
