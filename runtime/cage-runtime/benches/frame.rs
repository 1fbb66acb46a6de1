//! Micro-benchmarks of the wire hot path: encoding and decoding call frames.

use cage_runtime::transport::frame;
use cage_runtime::transport::protocol::{CallRequest, Request, RequestFrame};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn call_frame(args: usize) -> RequestFrame {
    RequestFrame {
        id: 42,
        body: Request::Call(CallRequest {
            call_id: "cli-18c3f0a2b4d-17".into(),
            module: "billing".into(),
            method: "charge".into(),
            args: vec![b'x'; args],
            timeout_ms: 30_000,
        }),
    }
}

fn frames(c: &mut Criterion) {
    for size in [64, 4096] {
        let msg = call_frame(size);
        c.bench_function(&format!("encode call frame, {size} B args"), |b| {
            b.iter(|| frame::encode(black_box(&msg)).unwrap())
        });
        let bytes = frame::encode(&msg).unwrap();
        c.bench_function(&format!("decode call frame, {size} B args"), |b| {
            b.iter(|| {
                frame::decode::<RequestFrame>(black_box(&bytes[frame::HEADER_LEN..])).unwrap()
            })
        });
    }
}

criterion_group!(benches, frames);
criterion_main!(benches);
