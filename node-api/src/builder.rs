//! `SandboxBuilder`: sizes, then `build()` → `Promise<ProtoJSSandbox>`.

use hyperlight_js_engine as engine;
use napi::Env;
use napi::bindgen_prelude::{Object, This, Unknown};
use napi_derive::napi;

use crate::error::{Failure, positive_integer};
use crate::lane::{Lane, rejected};
use crate::proto::ProtoJSSandbox;
use crate::restorer::SandboxRestorer;
use crate::snapshot::Snapshot;

/// Creates and configures a new sandbox.
#[napi]
pub struct SandboxBuilder {
    /// `None` once `build()` has been called.
    builder: Option<engine::SandboxBuilder>,
}

impl Default for SandboxBuilder {
    fn default() -> Self {
        Self::new()
    }
}

#[napi]
impl SandboxBuilder {
    /// A builder with the engine's default sizes.
    #[napi(constructor)]
    pub fn new() -> Self {
        Self {
            builder: Some(engine::SandboxBuilder::new()),
        }
    }

    fn set(
        &mut self,
        name: &str,
        value: &Unknown<'_>,
        apply: fn(engine::SandboxBuilder, u64) -> engine::SandboxBuilder,
    ) -> napi::Result<(), String> {
        let bytes = positive_integer(name, value)?;
        engine::positive(name, bytes).map_err(Failure::from)?;
        let builder = self
            .builder
            .take()
            .ok_or_else(|| Failure::consumed("SandboxBuilder"))?;
        self.builder = Some(apply(builder, bytes));
        Ok(())
    }

    /// Sets the guest heap size in bytes (> 0); chainable.
    #[napi]
    pub fn set_heap_size<'env>(
        &mut self,
        this: This<'env>,
        bytes: Unknown<'env>,
    ) -> napi::Result<This<'env>, String> {
        self.set("heap size", &bytes, engine::SandboxBuilder::heap_size)?;
        Ok(this)
    }

    /// Sets the guest stack size in bytes (> 0); chainable.
    #[napi]
    pub fn set_stack_size<'env>(
        &mut self,
        this: This<'env>,
        bytes: Unknown<'env>,
    ) -> napi::Result<This<'env>, String> {
        self.set("stack size", &bytes, engine::SandboxBuilder::stack_size)?;
        Ok(this)
    }

    /// Sets Hyperlight's scratch region in bytes (> 0): all memory the guest
    /// may write between snapshots (written heap pages, stack, transport
    /// buffers); raised to what the other sizes need. Chainable.
    #[napi]
    pub fn set_scratch_size<'env>(
        &mut self,
        this: This<'env>,
        bytes: Unknown<'env>,
    ) -> napi::Result<This<'env>, String> {
        self.set("scratch size", &bytes, engine::SandboxBuilder::scratch_size)?;
        Ok(this)
    }

    /// Sets the input buffer size in bytes (> 0); chainable.
    #[napi]
    pub fn set_input_buffer_size<'env>(
        &mut self,
        this: This<'env>,
        bytes: Unknown<'env>,
    ) -> napi::Result<This<'env>, String> {
        self.set(
            "input buffer size",
            &bytes,
            engine::SandboxBuilder::input_buffer_size,
        )?;
        Ok(this)
    }

    /// Sets the output buffer size in bytes (> 0); chainable.
    #[napi]
    pub fn set_output_buffer_size<'env>(
        &mut self,
        this: This<'env>,
        bytes: Unknown<'env>,
    ) -> napi::Result<This<'env>, String> {
        self.set(
            "output buffer size",
            &bytes,
            engine::SandboxBuilder::output_buffer_size,
        )?;
        Ok(this)
    }

    /// Prepares sandboxes from a snapshot loaded by `Snapshot.load()`:
    /// `Promise<SandboxRestorer>`. The sizes are the snapshot's (a builder
    /// set to other sizes is refused with `ERR_INVALID_ARG`). Consumes this
    /// builder.
    #[napi(ts_return_type = "Promise<SandboxRestorer>")]
    pub fn build_from_snapshot<'env>(
        &mut self,
        env: &'env Env,
        snapshot: &Snapshot,
    ) -> napi::Result<Object<'env>> {
        let persisted = match snapshot.persisted() {
            Ok(p) => p.clone(),
            Err(f) => return rejected(env, f),
        };
        let Some(builder) = self.builder.take() else {
            return rejected(env, Failure::consumed("SandboxBuilder"));
        };
        Lane::promise_on_new(
            env,
            move || {
                builder
                    .build_from_snapshot(&persisted)
                    .map_err(Failure::from)
            },
            |lane, restorer| Ok(SandboxRestorer::new(lane, restorer)),
        )
    }

    /// Builds the micro-VM on a new sandbox thread: `Promise<ProtoJSSandbox>`.
    #[napi(ts_return_type = "Promise<ProtoJSSandbox>")]
    pub fn build<'env>(&mut self, env: &'env Env) -> napi::Result<Object<'env>> {
        let Some(builder) = self.builder.take() else {
            return rejected(env, Failure::consumed("SandboxBuilder"));
        };
        Lane::promise_on_new(
            env,
            move || builder.build().map_err(Failure::from),
            |lane, proto| Ok(ProtoJSSandbox::new(lane, proto)),
        )
    }
}
