//! Guest user mode: JavaScript runs at CPL3 and cannot touch the guest
//! kernel's pages; a fault there is reported and the sandbox recovers by restore.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use hyperlight_js_engine::{CallOptions, GuestMode, SandboxBuilder};
use serde_json::json;

/// A fresh runtime with the guest in user mode.
fn user_runtime() -> hyperlight_js_engine::JSSandbox {
    assert!(
        hyperlight_js_engine::hypervisor_available(),
        "needs /dev/kvm"
    );
    SandboxBuilder::new()
        .guest_mode(GuestMode::User)
        .build()
        .unwrap()
        .load_runtime()
        .unwrap()
}

fn user_sandbox() -> (
    hyperlight_js_engine::LoadedJSSandbox,
    hyperlight_js_engine::Snapshot,
) {
    let mut js = user_runtime();
    js.add_handler(
        "sum",
        "function handler(e) { let s = 0; for (let i = 0; i < e.n; i++) s += i; return s; }",
    )
    .unwrap();
    let mut sb = js.get_loaded_sandbox().unwrap();
    let snap = sb.snapshot().unwrap();
    (sb, snap)
}

/// Restores `sb` and checks that it serves calls again.
fn recovers_by_restore(
    sb: &mut hyperlight_js_engine::LoadedJSSandbox,
    snap: &hyperlight_js_engine::Snapshot,
) {
    sb.restore(snap).unwrap();
    assert_eq!(
        sb.call_handler("sum", &json!({"n": 4}), &CallOptions::default())
            .unwrap(),
        json!(6)
    );
}

#[test]
fn user_mode_reads_its_own_data() {
    let (mut sb, _) = user_sandbox();
    assert_eq!(sb.probe_read(0).unwrap(), 42);
    assert!(!sb.poisoned());
}

#[test]
fn user_mode_cannot_touch_kernel_pages_and_restore_recovers() {
    let (mut sb, snap) = user_sandbox();
    // The user-mode kernel page, the IDT/GDT/TSS page, the stack
    // initialisation ran on, the page tables and exception stack at the top
    // of scratch, and the kernel stack calls run on: the lowest and the
    // highest of its pages, the lowest of the twelve pages hyperlight 0.18
    // reserves at the top of scratch (which ends at 0xffff_ffff_ffff_efff).
    for addr in [
        1u64,
        0xffff_fd00_0000_0000,
        0xffff_ff00_0000_0000 - 8,
        0xffff_ffff_ffff_e000,
        0xffff_ffff_ffff_f000 - 12 * 4096,
        0xffff_ffff_ffff_f000 - 8 * 4096 - 8,
    ] {
        let err = sb.probe_read(addr).unwrap_err();
        assert_eq!(err.code(), "ERR_GUEST_ABORT", "{addr:#x}: {err}");
        assert!(err.to_string().contains("may not access"), "{err}");
        assert!(sb.poisoned(), "a faulted user run poisons the sandbox");
        assert_eq!(
            sb.call_handler("sum", &json!({"n": 3}), &CallOptions::default())
                .unwrap_err()
                .code(),
            "ERR_POISONED"
        );
        recovers_by_restore(&mut sb, &snap);
    }
}

/// Every exception user mode raises is served by the guest kernel's own
/// entry, never by hyperlight-guest-bin's handlers (which consult hook
/// tables in user-writable memory): a divide error or a breakpoint ends the
/// run as a user fault, and restore brings the sandbox back.
#[test]
fn other_exceptions_from_user_mode_are_user_faults() {
    let (mut sb, snap) = user_sandbox();
    for (probe, vector) in [(2u64, 0u64), (3, 3)] {
        let err = sb.probe_read(probe).unwrap_err();
        assert_eq!(err.code(), "ERR_GUEST_ABORT", "{err}");
        assert!(
            err.to_string()
                .contains(&format!("user mode faulted: vector {vector} ")),
            "{err}"
        );
        assert!(sb.poisoned());
        recovers_by_restore(&mut sb, &snap);
    }
}

#[test]
fn compute_runs_natively_and_counts_few_kernel_entries() {
    let (mut sb, _) = user_sandbox();
    sb.call_handler("sum", &json!({"n": 10}), &CallOptions::default())
        .unwrap();
    let before = sb.guest_kernel_entries().unwrap();
    // A million iterations: hours if emulated, milliseconds in user mode.
    let out = sb
        .call_handler(
            "sum",
            &json!({"n": 1_000_000}),
            &CallOptions::default().wall_clock_timeout(std::time::Duration::from_secs(20)),
        )
        .unwrap();
    assert_eq!(out, json!(499_999_500_000u64));
    let entries = sb.guest_kernel_entries().unwrap() - before;
    assert!(entries < 200, "{entries} kernel entries for one warm call");
}

/// The whole call (transport, decoding, handler, result) runs in user mode:
/// a warm call enters the guest kernel once, to leave user mode at its end.
#[test]
fn a_warm_call_enters_the_guest_kernel_only_to_finish() {
    let (mut sb, _) = user_sandbox();
    let opts = CallOptions::default().gc(false);
    sb.call_handler("sum", &json!({"n": 3}), &opts).unwrap();
    // The count covers entries up to the start of its own call; its own
    // entries (a system call and an exit) show in the next count.
    let x = sb.guest_kernel_entries().unwrap();
    let own = sb.guest_kernel_entries().unwrap() - x;
    assert_eq!(own, 2);
    let a = sb.guest_kernel_entries().unwrap();
    sb.call_handler("sum", &json!({"n": 3}), &opts).unwrap();
    let b = sb.guest_kernel_entries().unwrap();
    assert_eq!(b - a - own, 1, "kernel entries for one warm call");
}

/// After a restore every heap page is copy-on-write again, and user mode
/// copies each one itself on first touch (the kernel only swaps the page):
/// megabytes of state built before the snapshot must read back exactly,
/// including through a backward `memmove` (`copyWithin` shifting right).
#[test]
fn copy_on_write_after_restore_keeps_every_byte() {
    let mut js = user_runtime();
    js.add_handler(
        "state",
        "const big = new Float64Array(200000); for (let i = 0; i < big.length; i++) big[i] = i * 1.5;
         const bytes = new Uint8Array(300000); for (let i = 0; i < bytes.length; i++) bytes[i] = i & 255;
         function handler(e) {
           let s = 0; for (let i = 0; i < big.length; i++) s += big[i];
           big[e.i] = -1;
           bytes.copyWithin(1, 0, bytes.length - 1);
           let ok = true;
           for (let i = 1; i < bytes.length; i++) if (bytes[i] !== ((i - 1) & 255)) { ok = false; break; }
           return { s, ok };
         }",
    )
    .unwrap();
    let mut sb = js.get_loaded_sandbox().unwrap();
    let snap = sb.snapshot().unwrap();
    let opts = CallOptions::default().wall_clock_timeout(std::time::Duration::from_secs(30));
    for i in 0..3 {
        sb.restore(&snap).unwrap();
        let out = sb.call_handler("state", &json!({ "i": i }), &opts).unwrap();
        assert_eq!(
            out,
            json!({ "s": 29_999_850_000u64, "ok": true }),
            "run {i}"
        );
    }
}

#[test]
fn kernel_mode_still_works() {
    assert!(
        hyperlight_js_engine::hypervisor_available(),
        "needs /dev/kvm"
    );
    let mut js = SandboxBuilder::new()
        .guest_mode(GuestMode::Kernel)
        .build()
        .unwrap()
        .load_runtime()
        .unwrap();
    js.add_handler("echo", "function handler(e) { return e; }")
        .unwrap();
    let mut sb = js.get_loaded_sandbox().unwrap();
    assert_eq!(
        sb.call_handler("echo", &json!({"a": 1}), &CallOptions::default())
            .unwrap(),
        json!({"a": 1})
    );
    assert_eq!(sb.probe_read(0).unwrap(), 42);
}

/// The kernel stack and the exception stack sit in the pages hyperlight
/// reserves at the top of scratch, with no guard page between them or below
/// them (hyperlight's page tables): every kind of kernel entry must stay well
/// inside its stack. Entries of each kind after a restore (which zeroes both
/// stacks), then the high-water marks: at most half of each stack.
#[test]
fn kernel_entries_of_every_kind_stay_within_half_of_their_stacks() {
    let mut proto = SandboxBuilder::new()
        .guest_mode(GuestMode::User)
        .build()
        .unwrap();
    proto
        .register_host_function("m", "twice", |args| {
            Ok(json!(args[0].as_i64().unwrap_or(0) * 2))
        })
        .unwrap();
    let mut js = proto.load_runtime().unwrap();
    js.add_handler(
        "all",
        "const kept = new Uint8Array(1 << 20).fill(7);
         function handler(e) {
           // Copy-on-write faults on the snapshot's heap, fresh zeroed pages,
           // an emulated `out` (the host function), a thrown error caught.
           let s = 0; for (let i = 0; i < kept.length; i += 4096) { kept[i]++; s += kept[i]; }
           const fresh = new Float64Array(1 << 17).fill(1.5);
           try { JSON.parse('{'); } catch (_) { s += 1; }
           function deep(n) { return n === 0 ? 0 : 1 + deep(n - 1); }
           return { s, fresh: fresh[fresh.length - 1], twice: host.m.twice(21), deep: deep(200) };
         }",
    )
    .unwrap();
    js.add_handler("throws", "function handler() { throw new Error('no'); }")
        .unwrap();
    let mut sb = js.get_loaded_sandbox().unwrap();
    let snap = sb.snapshot().unwrap();
    let opts = CallOptions::default().wall_clock_timeout(std::time::Duration::from_secs(20));
    for round in 0..2 {
        sb.restore(&snap).unwrap();
        let out = sb.call_handler("all", &json!({}), &opts).unwrap();
        assert_eq!(out["twice"], json!(42), "round {round}: {out}");
        assert_eq!(out["deep"], json!(200), "round {round}: {out}");
        let err = sb.call_handler("throws", &json!({}), &opts).unwrap_err();
        assert_eq!(err.code(), "ERR_HANDLER_THREW", "{err}");
        sb.call_handler("all", &json!({}), &opts).unwrap();
        sb.guest_kernel_entries().unwrap();
        let [[kernel, kernel_size], [exception, exception_size]] = sb.guest_stack_use().unwrap();
        println!(
            "round {round}: kernel stack {kernel}/{kernel_size} B, exception stack {exception}/{exception_size} B"
        );
        assert_eq!(kernel_size, 4 * 4096);
        assert!(exception_size >= 4 * 4096, "{exception_size}");
        // The calls ran on the kernel stack: it shows their frames.
        assert!(kernel > 0, "the kernel stack looks unused");
        assert!(
            kernel <= kernel_size / 2,
            "kernel stack {kernel} of {kernel_size} bytes"
        );
        assert!(
            exception <= exception_size / 2,
            "exception stack {exception} of {exception_size} bytes"
        );
    }
    // A fatal fault (user mode reading the kernel page) is delivered on the
    // same stack; the hook still answers on the poisoned sandbox.
    sb.restore(&snap).unwrap();
    sb.call_handler("all", &json!({}), &opts).unwrap();
    assert_eq!(sb.probe_read(1).unwrap_err().code(), "ERR_GUEST_ABORT");
    let [[kernel, kernel_size], [exception, exception_size]] = sb.guest_stack_use().unwrap();
    println!(
        "after a fatal fault: kernel stack {kernel}/{kernel_size} B, exception stack {exception}/{exception_size} B"
    );
    assert!(
        kernel > 0 && kernel <= kernel_size / 2,
        "kernel stack {kernel} of {kernel_size} bytes"
    );
    assert!(
        exception <= exception_size / 2,
        "exception stack {exception} of {exception_size} bytes"
    );
}
