//! The Rust side of `bench/bench.mjs`: engine calls timed without Node.

use std::time::Instant;

use hyperlight_js_engine::{CallOptions, Error, LoadedJSSandbox};
use serde_json::Value;

/// Calls `key` with `event` `iterations` times through the engine's typed API
/// and returns each call's duration in milliseconds.
pub(crate) fn engine_calls(
    loaded: &mut LoadedJSSandbox,
    key: &str,
    event: &Value,
    iterations: u32,
) -> Result<Vec<f64>, Error> {
    let options = CallOptions::default();
    let mut times = Vec::with_capacity(iterations as usize);
    for _ in 0..iterations {
        let start = Instant::now();
        let out = loaded.call_handler(key, event, &options)?;
        std::hint::black_box(out);
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(times)
}
