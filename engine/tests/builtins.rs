//! The JavaScript environment handlers see: built-ins, real time, seeded
//! randomness, promises, console output and binary data.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};

use common::{require_kvm, sandbox};
use hyperlight_js_engine::{CallOptions, LoadedJSSandbox, SandboxBuilder};
use serde_json::{Value, json};

fn load(code: &str) -> LoadedJSSandbox {
    let mut js = common::runtime();
    js.add_handler("h", code).unwrap();
    js.get_loaded_sandbox().unwrap()
}

fn run(sb: &mut LoadedJSSandbox, event: Value) -> Value {
    sb.call_handler("h", &event, &CallOptions::default())
        .unwrap()
}

#[test]
fn standard_built_ins_work() {
    let mut sb = load(
        r#"function handler(e) {
            const re = /(\w+)@(\w+)\.com/;
            const m = re.exec(e.mail);
            const ta = new Float64Array([1.5, 2.5]);
            const u8 = Uint8Array.from([1, 2, 3]);
            return {
                json: JSON.parse(JSON.stringify({ a: [1, { b: 2 }] })),
                sqrt: Math.sqrt(2),
                pow: Math.pow(2, 10),
                floor: Math.floor(-1.5),
                trig: Math.round(Math.sin(Math.PI / 2) * 1000) / 1000,
                str: 'abc'.toUpperCase().padStart(5, '-') + 'x,y'.split(',').join('+'),
                arr: [3, 1, 2].sort().map(x => x * 2).filter(x => x > 2).reduce((a, b) => a + b, 0),
                re: m ? [m[1], m[2]] : null,
                typed: ta[0] + ta[1] + u8.reduce((a, b) => a + b, 0),
                date: new Date(Date.UTC(2020, 1, 29)).toISOString(),
                num: (1234.5678).toFixed(2),
                parse: parseFloat('3.25') + parseInt('ff', 16),
                big: (2n ** 64n).toString(),
                map: [...new Map([[1, 'a']]).entries()],
            };
        }"#,
    );
    let out = run(&mut sb, json!({"mail": "ada@example.com"}));
    assert_eq!(out["json"], json!({"a": [1, {"b": 2}]}));
    assert_eq!(out["sqrt"], json!(std::f64::consts::SQRT_2));
    assert_eq!(out["pow"], json!(1024));
    assert_eq!(out["floor"], json!(-2));
    assert_eq!(out["trig"], json!(1));
    assert_eq!(out["str"], json!("--ABCx+y"));
    assert_eq!(out["arr"], json!(10));
    assert_eq!(out["re"], json!(["ada", "example"]));
    assert_eq!(out["typed"], json!(10));
    assert_eq!(out["date"], json!("2020-02-29T00:00:00.000Z"));
    assert_eq!(out["num"], json!("1234.57"));
    assert_eq!(out["parse"], json!(258.25));
    assert_eq!(out["big"], json!("18446744073709551616"));
    assert_eq!(out["map"], json!([[1, "a"]]));
}

#[test]
fn date_now_is_real_time() {
    let mut sb =
        load("function handler() { return [Date.now(), new Date().getTime(), Date.now()]; }");
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as f64;
    let out = run(&mut sb, json!(null));
    let after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as f64;
    for t in out.as_array().unwrap() {
        let t = t.as_f64().unwrap();
        assert!(
            t >= before - 1.0 && t <= after + 1.0,
            "{t} not within [{before}, {after}]"
        );
    }
    // A second call sees time move forward by real time, not one second per read.
    let again = run(&mut sb, json!(null));
    let d = again[0].as_f64().unwrap() - out[2].as_f64().unwrap();
    assert!((0.0..5_000.0).contains(&d), "clock jumped by {d} ms");
}

#[test]
fn math_random_differs_between_sandboxes_and_after_restore() {
    let (mut a, snap) = sandbox();
    let (mut b, _) = sandbox();
    let ra = a
        .call_handler("random", &json!({}), &CallOptions::default())
        .unwrap();
    let rb = b
        .call_handler("random", &json!({}), &CallOptions::default())
        .unwrap();
    assert_ne!(
        ra, rb,
        "two sandboxes from one snapshot share a random sequence"
    );
    a.restore(&snap).unwrap();
    let ra2 = a
        .call_handler("random", &json!({}), &CallOptions::default())
        .unwrap();
    assert_ne!(ra, ra2, "restore replays the same random sequence");
    for v in ra.as_array().unwrap().iter().chain(rb.as_array().unwrap()) {
        let x = v.as_f64().unwrap();
        assert!((0.0..1.0).contains(&x));
    }
}

#[test]
fn async_handlers_and_promises_resolve() {
    let mut sb = load(
        "async function handler(e) { const a = await Promise.resolve(e.x); const b = await new Promise(r => r(a * 2)); return { a, b }; }",
    );
    assert_eq!(run(&mut sb, json!({"x": 21})), json!({"a": 21, "b": 42}));
}

#[test]
fn binary_data_crosses_as_tagged_base64() {
    let mut sb = load(
        "function handler(e) { const b = e.data; if (!(b instanceof Uint8Array)) throw new Error('not bytes'); return { len: b.length, rev: Uint8Array.from(b).reverse(), buf: b.buffer.slice(0, 1) }; }",
    );
    let out = run(&mut sb, json!({"data": {"__hl_bytes": "AQID"}}));
    assert_eq!(
        out,
        json!({"len": 3, "rev": {"__hl_bytes": "AwIB"}, "buf": {"__hl_bytes": "AQ=="}})
    );
}

/// Collects console lines that reach the host as tracing events.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<(tracing::Level, String)>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Lines {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != "hyperlight_js::console" {
            return;
        }
        struct Msg(String);
        impl tracing::field::Visit for Msg {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                if f.name() == "message" {
                    self.0 = format!("{v:?}");
                }
            }
        }
        let mut m = Msg(String::new());
        event.record(&mut m);
        self.0
            .lock()
            .unwrap()
            .push((*event.metadata().level(), m.0));
    }
}

#[test]
fn console_output_reaches_the_host_as_tracing_events() {
    use tracing_subscriber::layer::SubscriberExt;
    let lines = Lines::default();
    let subscriber = tracing_subscriber::registry().with(lines.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let mut sb = load(
        "function handler(e) { console.log('hello', e, 42); console.error(new Error('bad')); console.warn('w'); return 1; }",
    );
    run(&mut sb, json!({"a": 1}));
    let got = lines.0.lock().unwrap().clone();
    assert_eq!(
        got[0],
        (tracing::Level::INFO, "hello {\"a\":1} 42".to_string())
    );
    assert_eq!(got[1].0, tracing::Level::ERROR);
    assert!(got[1].1.starts_with("Error: bad"), "{:?}", got[1]);
    assert_eq!(got[2], (tracing::Level::WARN, "w".to_string()));
}

#[test]
fn host_functions_are_callable_from_handlers() {
    require_kvm();
    let mut proto = SandboxBuilder::new().build().unwrap();
    proto
        .register_host_function("math", "add", |args| {
            let a = args[0].as_f64().ok_or("a is not a number")?;
            let b = args[1].as_f64().ok_or("b is not a number")?;
            Ok(json!(a + b))
        })
        .unwrap();
    proto
        .register_host_function("math", "fail", |_| Err("no luck".into()))
        .unwrap();
    assert_eq!(
        proto
            .register_host_function("bad name", "x", |_| Ok(json!(0)))
            .unwrap_err()
            .code(),
        "ERR_INVALID_ARG"
    );
    let mut js = proto.load_runtime().unwrap();
    js.add_handler("h", "function handler(e) { let m; try { host.math.fail(); } catch (err) { m = err.message; } return [host.math.add(e.a, 2), m]; }").unwrap();
    let mut sb = js.get_loaded_sandbox().unwrap();
    let out = run(&mut sb, json!({"a": 40}));
    assert_eq!(out[0], json!(42));
    assert!(out[1].as_str().unwrap().contains("no luck"), "{out}");
}

#[test]
fn date_now_advances_at_real_speed_inside_a_call() {
    // A handler that busy-waits 300 ms by the clock: the host must see about
    // that long, so the guest clock neither races nor crawls.
    let mut sb = load(
        "function handler(e) { const t0 = Date.now(); let n = 0; while (Date.now() - t0 < e.ms) { n++; } return { n, waited: Date.now() - t0 }; }",
    );
    // The same call without a wait: what the call itself costs here (in
    // kernel mode every guest instruction is emulated, and a loaded machine
    // stretches that), so that the bound below is about the clock alone.
    let start = std::time::Instant::now();
    run(&mut sb, json!({"ms": 0}));
    let overhead = start.elapsed();
    let start = std::time::Instant::now();
    let out = run(&mut sb, json!({"ms": 300}));
    let took = start.elapsed();
    assert!(out["waited"].as_f64().unwrap() >= 300.0, "{out}");
    assert!(
        took >= std::time::Duration::from_millis(290)
            && took < overhead * 2 + std::time::Duration::from_millis(1500),
        "a 300 ms wait took {took:?} (a call without one: {overhead:?})"
    );
}

/// Large payloads cross the guest's own virtqueue transport intact in both
/// directions: a 1 MB event and result, and host-function arguments and
/// answers of hundreds of kilobytes; an argument too large for the
/// guest-to-host buffer is refused with a reason.
#[test]
fn large_payloads_cross_the_transport_intact() {
    require_kvm();
    let mut proto = SandboxBuilder::new().build().unwrap();
    proto
        .register_host_function("blob", "make", |args| {
            let n = args[0].as_u64().ok_or("n is not a number")? as usize;
            Ok(json!("ab".repeat(n / 2)))
        })
        .unwrap();
    proto
        .register_host_function("blob", "len", |args| {
            Ok(json!(args[0].as_str().ok_or("not a string")?.len()))
        })
        .unwrap();
    let mut js = proto.load_runtime().unwrap();
    js.add_handler(
        "h",
        "function handler(e) {
           const made = host.blob.make(300000);
           const sent = host.blob.len(e.s.slice(0, 500000));
           let tooBig;
           try { host.blob.len(e.s + e.s); } catch (err) { tooBig = err.message; }
           return { s: e.s, made: made.length, ok: made.startsWith('abab') && made.endsWith('ab'), sent, tooBig };
         }",
    )
    .unwrap();
    let mut sb = js.get_loaded_sandbox().unwrap();
    let s: String = (0..1_000_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let out = run(&mut sb, json!({ "s": s }));
    assert_eq!(out["s"].as_str().unwrap(), s);
    assert_eq!(out["made"], json!(300_000));
    assert_eq!(out["ok"], json!(true));
    assert_eq!(out["sent"], json!(500_000));
    // An argument larger than a guest-to-host buffer is refused with a reason.
    let too_big = out["tooBig"].as_str().unwrap();
    assert!(
        too_big.contains("blob.len could not be called") && too_big.contains("output size"),
        "{too_big}"
    );
}
