//! SSE parsing throughput: `liquid_llm::sse::SseParser` against `eventsource-stream` (the SSE
//! crate already in the workspace) and a naive split-on-blank-line parser, on the same bytes
//! in the same run, delivered in network-sized pieces.
//!
//! Workloads: an OpenAI-style stream (LF line ends, `data:` only) and a Gemini-style stream
//! (CRLF), 20,000 events each, cut into 1,400-byte pieces (a TCP segment) and 128-byte pieces
//! (about one event per read, as token-by-token streaming delivers). Every parser must produce
//! the same number of events and the same data bytes, or the run aborts. The naive parser
//! looks for both blank-line forms in a growing `String` (normalising CRLF per read instead
//! loses events whose CRLF pair is split between reads — 6 of 20,000 here); it would also
//! corrupt a multi-byte character split between reads, which is why the workload is ASCII.
//! Figures are the median of 7 interleaved rounds.
//!
//! Run: `cargo bench -p liquid-llm --bench sse_parse`.

#![allow(missing_docs)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use liquid_llm::sse::SseParser;

const EVENTS: usize = 20_000;
const ROUNDS: usize = 7;

fn openai_stream() -> String {
    let mut s = String::new();
    for i in 0..EVENTS {
        s.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token{i} \"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"
        ));
    }
    s.push_str("data: [DONE]\n\n");
    s
}

fn gemini_stream() -> String {
    let mut s = String::new();
    for i in 0..EVENTS {
        s.push_str(&format!(
            "data: {{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\"token{i} \"}}],\"role\":\"model\"}},\"index\":0}}],\"usageMetadata\":{{\"promptTokenCount\":12,\"candidatesTokenCount\":{i},\"totalTokenCount\":{}}},\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"abc\"}}\r\n\r\n",
            i + 12
        ));
    }
    s
}

fn pieces(body: &str, size: usize) -> Vec<Bytes> {
    let bytes = Bytes::copy_from_slice(body.as_bytes());
    (0..bytes.len())
        .step_by(size)
        .map(|at| bytes.slice(at..(at + size).min(bytes.len())))
        .collect()
}

/// (events, data bytes)
type Tally = (usize, usize);

fn ours(chunks: &[Bytes]) -> Tally {
    let mut parser = SseParser::new();
    let mut out = Vec::new();
    let mut tally = (0, 0);
    for chunk in chunks {
        if parser.feed(chunk, &mut out).is_err() {
            return (0, 0);
        }
        for e in out.drain(..) {
            tally.0 += 1;
            tally.1 += e.data.len();
        }
    }
    tally
}

fn ours_with_json(chunks: &[Bytes]) -> Tally {
    let mut parser = SseParser::new();
    let mut out = Vec::new();
    let mut tally = (0, 0);
    for chunk in chunks {
        if parser.feed(chunk, &mut out).is_err() {
            return (0, 0);
        }
        for e in out.drain(..) {
            if e.data != "[DONE]" && serde_json::from_str::<serde_json::Value>(&e.data).is_err() {
                return (0, 0);
            }
            tally.0 += 1;
            tally.1 += e.data.len();
        }
    }
    tally
}

fn eventsource(rt: &tokio::runtime::Runtime, chunks: &[Bytes]) -> Tally {
    let chunks = chunks.to_vec();
    rt.block_on(async move {
        let mut stream =
            futures_util::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>))
                .eventsource();
        let mut tally = (0, 0);
        while let Some(item) = stream.next().await {
            match item {
                Ok(e) => {
                    tally.0 += 1;
                    tally.1 += e.data.len();
                }
                Err(_) => return (0, 0),
            }
        }
        tally
    })
}

fn naive(chunks: &[Bytes]) -> Tally {
    let mut buffer = String::new();
    let mut tally = (0, 0);
    for chunk in chunks {
        buffer.push_str(&String::from_utf8_lossy(chunk));
        loop {
            // The earliest blank line, LF or CRLF framed.
            let lf = buffer.find("\n\n").map(|p| (p, 2));
            let crlf = buffer.find("\r\n\r\n").map(|p| (p, 4));
            let Some((pos, len)) = [lf, crlf].into_iter().flatten().min() else {
                break;
            };
            let event = buffer[..pos].to_string();
            buffer = buffer[pos + len..].to_string();
            let mut data = String::new();
            for line in event.lines() {
                if let Some(d) = line.strip_prefix("data:") {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(d.strip_prefix(' ').unwrap_or(d));
                }
            }
            if !data.is_empty() {
                tally.0 += 1;
                tally.1 += data.len();
            }
        }
    }
    tally
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let rt = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start a runtime: {e}");
            return;
        }
    };
    println!("| workload | piece size | parser | MB/s | events/s (M) |");
    println!("|---|---|---|---|---|");
    for (name, body) in [
        ("openai (LF)", openai_stream()),
        ("gemini (CRLF)", gemini_stream()),
    ] {
        for size in [1_400usize, 128] {
            let chunks = pieces(&body, size);
            type Run<'a> = Box<dyn Fn(&[Bytes]) -> Tally + 'a>;
            let parsers: Vec<(&str, Run)> = vec![
                ("liquid-llm SseParser", Box::new(ours)),
                (
                    "eventsource-stream 0.2",
                    Box::new(|c: &[Bytes]| eventsource(&rt, c)),
                ),
                ("naive split on \\n\\n", Box::new(naive)),
                ("SseParser + serde_json per event", Box::new(ours_with_json)),
            ];
            let reference = ours(&chunks);
            let mut times: Vec<Vec<Duration>> = vec![Vec::new(); parsers.len()];
            for round in 0..=ROUNDS {
                for (i, (label, parse)) in parsers.iter().enumerate() {
                    let start = Instant::now();
                    let tally = std::hint::black_box(parse(std::hint::black_box(&chunks)));
                    let elapsed = start.elapsed();
                    assert_eq!(tally, reference, "{label} disagrees on {name}/{size}");
                    if round > 0 {
                        times[i].push(elapsed);
                    }
                }
            }
            for ((label, _), t) in parsers.iter().zip(times) {
                let secs = median(t).as_secs_f64();
                let mbps = body.len() as f64 / secs / 1e6;
                let eps = reference.0 as f64 / secs / 1e6;
                println!("| {name} | {size} B | {label} | {mbps:.0} | {eps:.2} |");
            }
        }
    }
}
