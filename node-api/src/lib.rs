//! Node.js binding of the hyperlight-js engine, published as
//! `@hyperlight/js-host-api`.
//!
//! This crate only translates: JavaScript values ⇄ JSON text, Promises ⇄
//! blocking engine calls on a per-sandbox worker thread ([`lane`]), and
//! engine errors ⇄ JavaScript `Error`s carrying `error.code` ([`error`]).
//! Every state object of a sandbox (proto, runtime loaded, handlers loaded)
//! runs its hypervisor work on one thread, its lane, so that calls on one
//! sandbox are serialized and the vCPU never migrates between threads, while
//! different sandboxes run in parallel.
//!
//! The JavaScript layer (`index.js`) adds what is easier in JavaScript: JSON
//! encoding with Uint8Array/Buffer tagging, call options, and the promise
//! plumbing of host-function callbacks.

mod bench;
mod builder;
mod error;
mod host;
mod interrupt;
mod js_sandbox;
mod lane;
mod loaded;
mod proto;
mod restorer;
mod snapshot;

pub use builder::SandboxBuilder;
pub use error::{engine_error_codes, reject_engine_error, throw_engine_error};
pub use host::{HostModule, settle_host_call};
pub use interrupt::InterruptHandle;
pub use js_sandbox::JSSandbox;
pub use loaded::LoadedJSSandbox;
pub use proto::ProtoJSSandbox;
pub use restorer::SandboxRestorer;
pub use snapshot::Snapshot;
