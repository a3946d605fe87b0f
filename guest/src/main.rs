//! The JavaScript runtime that runs inside each hyperlight-js micro-VM.
//!
//! It is QuickJS (through rquickjs) on hyperlight-guest-bin, built for
//! `x86_64-unknown-none` as a soft-float binary: no SSE and no x87
//! instruction anywhere, so that it runs on paravirtual KVM hosts (whose
//! kernel-mode emulator rejects them) as well as on hardware KVM and MSHV.
//! The engine crate builds this binary and embeds it; nobody runs it by hand.
//!
//! Handlers are registered under a routing key; each handler's code defines
//! `function handler(event)`. The guest knows nothing of the host beyond the
//! functions named in `hyperlight_js_abi`.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod clock;
#[cfg(target_os = "none")]
mod dispatch;
#[cfg(target_os = "none")]
mod exports;
#[cfg(target_os = "none")]
mod handlers;
#[cfg(target_os = "none")]
mod host;
#[cfg(target_os = "none")]
mod libc_shims;
#[cfg(target_os = "none")]
mod runtime;
#[cfg(target_os = "none")]
mod transport;
#[cfg(target_os = "none")]
mod usermode;
#[cfg(target_os = "none")]
mod web;

/// Called by hyperlight-guest-bin at the end of its initialisation; ends it
/// with our own dispatch entry (see [`dispatch`]).
#[cfg(target_os = "none")]
#[unsafe(no_mangle)]
pub extern "C" fn hyperlight_main() {
    dispatch::finish_init()
}

/// On the host this crate is only a placeholder: the real binary exists for
/// `x86_64-unknown-none` and is built by the engine's build script.
#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "hyperlight-js-guest runs only inside a hyperlight micro-VM (target x86_64-unknown-none)"
    );
    std::process::exit(2);
}
