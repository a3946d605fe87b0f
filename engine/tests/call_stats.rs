//! Call statistics, the per-call console cap and host-call cancellation.
//! Run one at a time: their timing is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::require_kvm;
use hyperlight_js_engine::{
    CallOptions, CancelReason, Error, LoadedJSSandbox, SandboxBuilder, Snapshot,
};
use serde_json::json;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// One lineage for every test: a slow host function, console limits of
/// 100 bytes and 3 lines, and a few handlers.
fn base() -> &'static Snapshot {
    static BASE: OnceLock<Snapshot> = OnceLock::new();
    BASE.get_or_init(|| {
        require_kvm();
        let mut proto = SandboxBuilder::new()
            .console_limits(100, 3)
            .build()
            .expect("build");
        proto
            .register_host_function("slow", "wait", |_| {
                std::thread::sleep(Duration::from_secs(5));
                Ok(json!("late"))
            })
            .expect("register");
        let mut js = proto.load_runtime().expect("load runtime");
        for (key, code) in [
            ("echo", "function handler(e) { return e; }"),
            ("spin", "function handler(e) { while (true) {} }"),
            ("throws", "function handler(e) { throw new Error('no'); }"),
            (
                "stuck",
                "function handler(e) { try { host.slow.wait(); } catch (x) {} while (true) {} }",
            ),
            (
                "chatty",
                "function handler(e) { for (let i = 0; i < e.n; i++) console.log('line ' + i); return 1; }",
            ),
        ] {
            js.add_handler(key, code).expect("add handler");
        }
        js.get_loaded_sandbox()
            .expect("load handlers")
            .snapshot()
            .expect("snapshot")
    })
}

/// How long an unrelated call may take: kernel mode is emulated (~55 ms
/// warm, more after a restore); either way far below the 5 s host function.
fn call_bound() -> Duration {
    match std::env::var("HYPERLIGHT_JS_GUEST_MODE").as_deref() {
        Ok("kernel") => Duration::from_millis(1500),
        _ => Duration::from_millis(150),
    }
}

fn sandbox() -> LoadedJSSandbox {
    LoadedJSSandbox::from_snapshot(base()).expect("sandbox from snapshot")
}

#[test]
fn a_cpu_stop_is_in_the_stats_with_at_least_the_limit_of_cpu_time() {
    let _g = serial();
    let mut sb = sandbox();
    let limit = Duration::from_millis(300);
    let err = sb
        .call_handler(
            "spin",
            &json!({}),
            &CallOptions::default().cpu_timeout(limit),
        )
        .unwrap_err();
    assert!(
        matches!(err, Error::Cancelled(CancelReason::CpuTime(_))),
        "{err:?}"
    );
    let stats = sb.last_call_stats().expect("stats");
    assert_eq!(stats.terminated_by, Some(CancelReason::CpuTime(limit)));
    assert!(stats.cpu_time >= limit, "{stats:?}");
    assert!(stats.wall_clock >= stats.cpu_time, "{stats:?}");
}

#[test]
fn a_wall_clock_stop_is_in_the_stats() {
    let _g = serial();
    let mut sb = sandbox();
    let limit = Duration::from_millis(300);
    sb.call_handler(
        "spin",
        &json!({}),
        &CallOptions::default().wall_clock_timeout(limit),
    )
    .unwrap_err();
    let stats = sb.last_call_stats().expect("stats");
    assert_eq!(stats.terminated_by, Some(CancelReason::WallClock(limit)));
    assert!(stats.wall_clock >= limit, "{stats:?}");
}

#[test]
fn normal_and_throwing_calls_have_stats_and_no_stop() {
    let _g = serial();
    let mut sb = sandbox();
    assert_eq!(sb.last_call_stats(), None);
    sb.call_handler("echo", &json!({"a": 1}), &CallOptions::default())
        .unwrap();
    let stats = sb.last_call_stats().expect("stats");
    assert_eq!(stats.terminated_by, None);
    assert!(stats.wall_clock > Duration::ZERO);
    assert!(
        stats.cpu_time <= stats.wall_clock + Duration::from_millis(5),
        "{stats:?}"
    );
    let err = sb
        .call_handler("throws", &json!({}), &CallOptions::default())
        .unwrap_err();
    assert_eq!(err.code(), "ERR_HANDLER_THREW");
    assert_eq!(
        sb.last_call_stats()
            .expect("stats after a throw")
            .terminated_by,
        None
    );
    // Refused before entering the VM: no stats.
    sb.call_handler("nope", &json!({}), &CallOptions::default())
        .unwrap_err();
    assert_eq!(sb.last_call_stats(), None);
}

/// Console messages on the `hyperlight_js::console` target.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

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
        self.0.lock().unwrap().push(m.0);
    }
}

#[test]
fn console_output_is_capped_per_call_with_one_notice() {
    use tracing_subscriber::layer::SubscriberExt;
    let _g = serial();
    let lines = Lines::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(lines.clone()));
    let mut sb = sandbox();
    for _ in 0..2 {
        lines.0.lock().unwrap().clear();
        sb.call_handler("chatty", &json!({"n": 50}), &CallOptions::default())
            .unwrap();
        let got = lines.0.lock().unwrap().clone();
        assert_eq!(got[..3], ["line 0", "line 1", "line 2"], "{got:?}");
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(got[3].starts_with("console output truncated: "), "{got:?}");
    }
    // Under the caps: no notice.
    lines.0.lock().unwrap().clear();
    sb.call_handler("chatty", &json!({"n": 2}), &CallOptions::default())
        .unwrap();
    assert_eq!(*lines.0.lock().unwrap(), ["line 0", "line 1"]);
}

#[test]
fn a_stop_reaches_a_call_waiting_in_a_host_function_while_another_sandbox_serves() {
    let _g = serial();
    let mut stuck = sandbox();
    let mut other = sandbox();
    // Warm up: the first call after a restore touches every page again.
    other
        .call_handler("echo", &json!(0), &CallOptions::default())
        .unwrap();
    let server = std::thread::spawn(move || {
        let mut served = 0;
        let until = Instant::now() + Duration::from_millis(400);
        while served == 0 || Instant::now() < until {
            let t = Instant::now();
            let out = other
                .call_handler(
                    "echo",
                    &json!({"n": served}),
                    &CallOptions::default().wall_clock_timeout(Duration::from_secs(5)),
                )
                .unwrap();
            assert_eq!(out, json!({"n": served}));
            assert!(t.elapsed() < call_bound(), "a call took {:?}", t.elapsed());
            served += 1;
        }
        served
    });
    let limit = Duration::from_millis(200);
    let start = Instant::now();
    let err = stuck
        .call_handler(
            "stuck",
            &json!({}),
            &CallOptions::default().wall_clock_timeout(limit),
        )
        .unwrap_err();
    let took = start.elapsed();
    assert!(
        matches!(err, Error::Cancelled(CancelReason::WallClock(_))),
        "{err:?}"
    );
    assert!(took < Duration::from_millis(300), "took {took:?}");
    assert!(stuck.poisoned());
    assert!(server.join().unwrap() > 0);
    stuck.restore(base()).unwrap();
    assert_eq!(
        stuck
            .call_handler("echo", &json!(1), &CallOptions::default())
            .unwrap(),
        json!(1)
    );
}

#[test]
fn kill_reaches_a_call_waiting_in_a_host_function() {
    let _g = serial();
    let mut sb = sandbox();
    let handle = sb.interrupt_handle();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        handle.kill();
    });
    let start = Instant::now();
    let err = sb
        .call_handler("stuck", &json!({}), &CallOptions::default())
        .unwrap_err();
    assert!(
        matches!(err, Error::Cancelled(CancelReason::Killed)),
        "{err:?}"
    );
    assert!(
        start.elapsed() < Duration::from_millis(300),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(
        sb.last_call_stats().unwrap().terminated_by,
        Some(CancelReason::Killed)
    );
    killer.join().unwrap();
}
