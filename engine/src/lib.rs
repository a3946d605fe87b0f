//! Run untrusted JavaScript event handlers in Hyperlight micro-VMs.
//!
//! Each sandbox is a micro-VM (KVM or MSHV) running our QuickJS guest. The
//! API is a typed state machine, one type per state:
//!
//! [`SandboxBuilder`] → [`build`](SandboxBuilder::build) → [`ProtoJSSandbox`]
//! → [`load_runtime`](ProtoJSSandbox::load_runtime) → [`JSSandbox`]
//! → [`get_loaded_sandbox`](JSSandbox::get_loaded_sandbox) → [`LoadedJSSandbox`]
//! ⇄ [`unload`](LoadedJSSandbox::unload).
//!
//! A [`Snapshot`] can be [saved](Snapshot::save) to disk and
//! [loaded](Snapshot::load) in another process as a [`PersistedSnapshot`];
//! [`SandboxBuilder::build_from_snapshot`] → [`SandboxRestorer`] (host
//! functions again) → [`LoadedJSSandbox`] or [`JSSandbox`], without the
//! runtime init or the compile.
//!
//! Every failure is an [`Error`] with a stable [`code`](Error::code).
//!
//! # Threads and async
//! Every operation that touches the hypervisor blocks the calling thread
//! (the vCPU runs on it). All states are `Send`; from tokio, move the sandbox
//! into `spawn_blocking` and back. [`InterruptHandle`] is `Send + Sync`.
#![deny(missing_docs)]

mod builder;
mod clock;
mod error;
mod error_map;
mod guest_image;
mod host_functions;
mod interrupt;
mod js_sandbox;
mod loaded;
pub mod monitor;
mod persist;
mod proto;
mod snapshot;

pub use builder::{GuestMode, SandboxBuilder, SandboxConfig, positive};
pub use error::{CancelReason, Error, ErrorCode, Result, TransitionError, UnknownErrorCode};
pub use guest_image::GUEST;
pub use host_functions::HostFn;
pub use interrupt::InterruptHandle;
pub use js_sandbox::JSSandbox;
#[doc(hidden)]
pub use loaded::KernelEntries;
pub use loaded::{CallOptions, CallStats, LoadedJSSandbox};
pub use persist::{HYPERLIGHT_VERSION, PersistedSnapshot, SandboxRestorer, guest_build_id};
pub use proto::ProtoJSSandbox;
pub use snapshot::Snapshot;

/// Whether this host can run sandboxes (a usable `/dev/kvm` or `/dev/mshv`).
pub fn hypervisor_available() -> bool {
    hyperlight_host::is_hypervisor_present()
}

/// The README's Rust example is compiled and run as a doctest, so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
