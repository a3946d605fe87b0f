//! Wall-clock and CPU-time limits, kill from another thread, poisoning and
//! recovery. Run one at a time: their timing is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::sandbox;
use hyperlight_js_engine::monitor::ThreadCpuClock;
use hyperlight_js_engine::{CallOptions, CancelReason, Error};
use serde_json::json;

/// How late a monitor may fire.
const SLACK: Duration = Duration::from_millis(100);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn an_infinite_loop_is_killed_by_the_wall_clock_limit_on_time() {
    let _g = serial();
    let (mut sb, _) = sandbox();
    let limit = Duration::from_millis(500);
    let start = Instant::now();
    let err = sb
        .call_handler(
            "spin",
            &json!({}),
            &CallOptions::default().wall_clock_timeout(limit),
        )
        .unwrap_err();
    let took = start.elapsed();
    assert_eq!(err.code(), "ERR_CANCELLED");
    assert!(
        matches!(err, Error::Cancelled(CancelReason::WallClock(d)) if d == limit),
        "{err:?}"
    );
    assert!(
        took >= limit && took <= limit + SLACK,
        "fired after {took:?} for a {limit:?} limit"
    );
}

#[test]
fn an_infinite_loop_is_killed_by_the_cpu_limit_on_time() {
    let _g = serial();
    let (mut sb, _) = sandbox();
    let limit = Duration::from_millis(500);
    let clock = ThreadCpuClock::current().unwrap();
    let cpu_start = clock.now().unwrap();
    let err = sb
        .call_handler(
            "spin",
            &json!({}),
            &CallOptions::default()
                .cpu_timeout(limit)
                .wall_clock_timeout(Duration::from_secs(30)),
        )
        .unwrap_err();
    let cpu = clock.now().unwrap() - cpu_start;
    assert!(
        matches!(err, Error::Cancelled(CancelReason::CpuTime(d)) if d == limit),
        "{err:?}"
    );
    assert!(
        cpu >= limit && cpu <= limit + SLACK,
        "fired after {cpu:?} of CPU for a {limit:?} limit"
    );
}

#[test]
fn with_both_limits_the_first_to_fire_wins() {
    let _g = serial();
    let (mut sb, snap) = sandbox();
    let both = CallOptions::default()
        .cpu_timeout(Duration::from_millis(300))
        .wall_clock_timeout(Duration::from_secs(20));
    let err = sb.call_handler("spin", &json!({}), &both).unwrap_err();
    assert!(
        matches!(err, Error::Cancelled(CancelReason::CpuTime(_))),
        "{err:?}"
    );
    sb.restore(&snap).unwrap();
    let both = CallOptions::default()
        .cpu_timeout(Duration::from_secs(20))
        .wall_clock_timeout(Duration::from_millis(300));
    let err = sb.call_handler("spin", &json!({}), &both).unwrap_err();
    assert!(
        matches!(err, Error::Cancelled(CancelReason::WallClock(_))),
        "{err:?}"
    );
}

#[test]
fn kill_from_another_thread_poisons_until_restore() {
    let _g = serial();
    let (mut sb, snap) = sandbox();
    let handle = sb.interrupt_handle();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        handle.kill()
    });
    let start = Instant::now();
    let err = sb
        .call_handler("spin", &json!({}), &CallOptions::default())
        .unwrap_err();
    assert!(killer.join().unwrap(), "kill saw the running call");
    assert!(
        matches!(err, Error::Cancelled(CancelReason::Killed)),
        "{err:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(5));

    assert!(sb.poisoned());
    let err = sb
        .call_handler("echo", &json!(1), &CallOptions::default())
        .unwrap_err();
    assert_eq!(err.code(), "ERR_POISONED");
    assert_eq!(sb.snapshot().unwrap_err().code(), "ERR_POISONED");

    sb.restore(&snap).unwrap();
    assert!(!sb.poisoned());
    assert_eq!(
        sb.call_handler("echo", &json!(1), &CallOptions::default())
            .unwrap(),
        json!(1)
    );
}

#[test]
fn a_timed_out_sandbox_recovers_by_restore_and_a_fast_call_is_untouched() {
    let _g = serial();
    let (mut sb, snap) = sandbox();
    let limits = CallOptions::default()
        .wall_clock_timeout(Duration::from_secs(10))
        .cpu_timeout(Duration::from_secs(10));
    // A call well inside its limits is not disturbed by the monitors.
    assert_eq!(
        sb.call_handler("echo", &json!("fast"), &limits).unwrap(),
        json!("fast")
    );
    let err = sb
        .call_handler(
            "spin",
            &json!({}),
            &CallOptions::default().wall_clock_timeout(Duration::from_millis(200)),
        )
        .unwrap_err();
    assert_eq!(err.code(), "ERR_CANCELLED");
    assert!(sb.poisoned());
    sb.restore(&snap).unwrap();
    assert_eq!(
        sb.call_handler("echo", &json!("again"), &limits).unwrap(),
        json!("again")
    );
}

#[test]
fn a_kill_between_calls_does_not_hit_the_next_call() {
    let _g = serial();
    let (mut sb, _) = sandbox();
    assert!(!sb.interrupt_handle().kill(), "nothing was running");
    assert_eq!(
        sb.call_handler("echo", &json!(2), &CallOptions::default())
            .unwrap(),
        json!(2)
    );
}
