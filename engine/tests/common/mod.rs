//! Shared set-up for the engine's integration tests: real micro-VMs on /dev/kvm.
#![allow(dead_code, clippy::expect_used)]

use std::sync::OnceLock;

use hyperlight_js_engine::{JSSandbox, LoadedJSSandbox, SandboxBuilder, Snapshot};

/// Handlers used across the tests, by routing key.
pub const HANDLERS: &[(&str, &str)] = &[
    ("echo", "function handler(event) { return event; }"),
    (
        "greet",
        "function handler(event) { event.message = 'Hello, ' + event.name + '!'; return event; }",
    ),
    ("who", "function handler(event) { return 'who'; }"),
    (
        "counter",
        "let count = 0; function handler(event) { count += 1; return count; }",
    ),
    ("spin", "function handler(event) { while (true) {} }"),
    (
        "recurse",
        "function handler(event) { function f(n) { return f(n + 1) + 1; } return f(0); }",
    ),
    (
        "hog",
        "function handler(event) { const a = []; while (true) { a.push(new Uint8Array(1 << 20)); } }",
    ),
    (
        "throws",
        "function handler(event) {\n  throw new TypeError('bad event: ' + event.why);\n}",
    ),
    (
        "random",
        "function handler(event) { return [Math.random(), Math.random(), Math.random()]; }",
    ),
    (
        "big",
        "function handler(event) { return 'x'.repeat(event.n); }",
    ),
];

/// Fails loudly when there is no hypervisor: these tests never skip.
pub fn require_kvm() {
    assert!(
        hyperlight_js_engine::hypervisor_available(),
        "these tests need a usable /dev/kvm (or /dev/mshv); none was found"
    );
}

/// A snapshot of a sandbox with every test handler loaded, built once per
/// test binary; each test gets its own micro-VM from it.
pub fn base() -> &'static Snapshot {
    static BASE: OnceLock<Snapshot> = OnceLock::new();
    BASE.get_or_init(|| {
        require_kvm();
        let mut js = SandboxBuilder::new()
            .build()
            .expect("build")
            .load_runtime()
            .expect("load runtime");
        for (key, code) in HANDLERS {
            js.add_handler(key, code).expect("add handler");
        }
        let mut loaded = js.get_loaded_sandbox().expect("load handlers");
        loaded.snapshot().expect("snapshot")
    })
}

/// A fresh sandbox with every test handler, and a snapshot of its start state.
pub fn sandbox() -> (LoadedJSSandbox, Snapshot) {
    let snap = base();
    let sb = LoadedJSSandbox::from_snapshot(snap).expect("sandbox from snapshot");
    (sb, snap.clone())
}

/// A fresh sandbox with the runtime loaded and no handlers.
pub fn runtime() -> JSSandbox {
    require_kvm();
    SandboxBuilder::new()
        .build()
        .expect("build")
        .load_runtime()
        .expect("load runtime")
}
