//! The guest functions the engine calls (names in `hyperlight_js_abi::guest_fn`).

use alloc::string::String;

use hyperlight_guest_bin::guest_function;
use hyperlight_js_abi::encode_ok;

use crate::handlers::{self, reply};
use crate::runtime;

#[guest_function("LoadRuntime")]
fn load_runtime(max_stack: u64, memory_limit: u64, output_limit: u64, host_fns: String) -> String {
    let r = runtime::load(
        max_stack as usize,
        memory_limit as usize,
        output_limit as usize,
        &host_fns,
    );
    reply(r.map(|()| String::from("null")))
}

#[guest_function("RegisterHandler")]
fn register_handler(key: String, code: String) -> String {
    match handlers::register(&key, &code) {
        Ok(()) => encode_ok("null"),
        Err(f) => f.encode(),
    }
}

#[guest_function("CallHandler")]
fn call_handler(key: String, event: String, gc: bool, seed: u64) -> String {
    runtime::reseed(seed);
    reply(handlers::call(&key, &event, gc))
}
