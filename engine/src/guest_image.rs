//! The guest runtime binary, built by `build.rs` and embedded here.

/// Page alignment for the embedded bytes: `include_bytes!` alone gives
/// alignment 1, and ELF readers (and mappers) want the header aligned.
#[repr(C, align(4096))]
struct Aligned<Bytes: ?Sized>(Bytes);

static ALIGNED: &Aligned<[u8]> = &Aligned(*include_bytes!(env!("HYPERLIGHT_JS_GUEST_PATH")));

/// The guest ELF (QuickJS on hyperlight-guest-bin, soft-float, `x86_64-unknown-none`).
pub static GUEST: &[u8] = &ALIGNED.0;
