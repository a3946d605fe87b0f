//! The guest runtime binary, built by `build.rs` and embedded here.

/// The guest ELF (QuickJS on hyperlight-guest-bin, soft-float, `x86_64-unknown-none`).
pub static GUEST: &[u8] = include_bytes!(env!("HYPERLIGHT_JS_GUEST_PATH"));
