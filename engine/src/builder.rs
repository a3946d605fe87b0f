//! `SandboxBuilder`: sizes for a new sandbox, then [`SandboxBuilder::build`].

use hyperlight_host::is_hypervisor_present;
use tracing::instrument;

use crate::error::{Error, Result};
use crate::guest_image::GUEST;
use crate::host_functions::{self, HostRegistry};
use crate::proto::ProtoJSSandbox;

/// Sizes of one sandbox, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SandboxConfig {
    /// Guest heap: the JavaScript heap and the runtime's own allocations.
    pub heap_size: u64,
    /// Guest stack: bounds JavaScript recursion (`ERR_STACK_OVERFLOW` past it).
    pub stack_size: u64,
    /// Largest event, as JSON text, that a call accepts.
    pub input_buffer_size: u64,
    /// Largest result, as JSON text, that a call may return.
    pub output_buffer_size: u64,
    /// Where the JavaScript engine runs inside the micro-VM.
    pub guest_mode: GuestMode,
    /// Hyperlight's scratch region (all memory the guest may write: copies of
    /// written heap pages, the stack, the transport buffers); `None`: what the
    /// sizes above need. A smaller value is raised to that.
    pub scratch_size: Option<u64>,
    /// Console bytes one call may log; the rest of the call's output is dropped.
    pub console_max_bytes: u64,
    /// Console lines one call may log; the rest of the call's output is dropped.
    pub console_max_lines: u64,
}

/// Where the JavaScript engine runs inside the micro-VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestMode {
    /// Everything at CPL0, as a stock hyperlight guest. On paravirtual KVM
    /// (kvm-pvm) kernel-mode code is emulated: ~1 µs per instruction.
    Kernel,
    /// QuickJS and the handlers at CPL3, natively even on kvm-pvm; the guest
    /// kernel is entered only through faults, and its pages are not
    /// accessible from user mode.
    User,
}

impl GuestMode {
    /// The default: `HYPERLIGHT_JS_GUEST_MODE=kernel|user` when set, else user mode.
    pub fn from_env() -> Self {
        match std::env::var("HYPERLIGHT_JS_GUEST_MODE").as_deref() {
            Ok("kernel") => Self::Kernel,
            _ => Self::User,
        }
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            heap_size: SandboxBuilder::DEFAULT_HEAP_SIZE,
            stack_size: SandboxBuilder::DEFAULT_STACK_SIZE,
            input_buffer_size: SandboxBuilder::DEFAULT_INPUT_BUFFER_SIZE,
            output_buffer_size: SandboxBuilder::DEFAULT_OUTPUT_BUFFER_SIZE,
            guest_mode: GuestMode::from_env(),
            scratch_size: None,
            console_max_bytes: SandboxBuilder::DEFAULT_CONSOLE_MAX_BYTES,
            console_max_lines: SandboxBuilder::DEFAULT_CONSOLE_MAX_LINES,
        }
    }
}

/// Room kept outside QuickJS's own heap limit for the runtime's Rust
/// allocations (handler table, call frames, the event and result strings).
const RUNTIME_RESERVE: u64 = 2 * 1024 * 1024;
/// Native stack kept outside QuickJS's recursion limit for the dispatch path.
const STACK_RESERVE: u64 = 64 * 1024;
/// Scratch beyond heap, stack and buffers: page tables and transport rings.
const SCRATCH_SLACK: u64 = 4 * 1024 * 1024;
/// Framing around an event or result in the transport (key, flatbuffer headers).
const TRANSPORT_SLACK: u64 = 16 * 1024;

impl SandboxConfig {
    /// Checks every size; each must be greater than zero and the heap must
    /// hold the runtime.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("heap size", self.heap_size),
            ("stack size", self.stack_size),
            ("input buffer size", self.input_buffer_size),
            ("output buffer size", self.output_buffer_size),
            ("scratch size", self.scratch_size.unwrap_or(1)),
            ("console byte limit", self.console_max_bytes),
            ("console line limit", self.console_max_lines),
        ] {
            positive(name, v)?;
        }
        if self.heap_size < SandboxBuilder::MIN_HEAP_SIZE {
            return Err(Error::InvalidArgument(format!(
                "heap size of {} bytes is too small for the JavaScript runtime (minimum {} bytes)",
                self.heap_size,
                SandboxBuilder::MIN_HEAP_SIZE
            )));
        }
        Ok(())
    }

    /// QuickJS's heap limit.
    pub(crate) fn js_memory_limit(&self) -> u64 {
        self.heap_size
            .saturating_sub(RUNTIME_RESERVE + self.input_buffer_size + self.output_buffer_size)
            .max(self.heap_size / 2)
    }

    /// QuickJS's recursion limit.
    pub(crate) fn js_stack_limit(&self) -> u64 {
        self.stack_size
            .saturating_sub(STACK_RESERVE)
            .max(STACK_RESERVE)
    }

    /// Applies these sizes to a hyperlight builder. Sandboxes built from a
    /// snapshot get the same values, which match the snapshot's layout.
    pub(crate) fn sized(
        &self,
        builder: hyperlight_host::SandboxBuilder,
    ) -> Result<hyperlight_host::SandboxBuilder> {
        let g2h_buffer = usize_of(self.output_buffer_size + TRANSPORT_SLACK)?;
        let h2g_buffer = usize_of(self.input_buffer_size + TRANSPORT_SLACK)?;
        Ok(builder
            .heap_size(self.heap_size)
            .scratch_size(usize_of(self.scratch_size())?)
            .h2g_buffer_size(h2g_buffer)
            // Two receive buffers: Hyperlight sends a call with a byte
            // parameter (the working set) only while it can keep one spare.
            .h2g_pool_pages(2 * h2g_buffer.div_ceil(4096))
            .g2h_buffer_size(g2h_buffer)
            // A host call holds two output-sized buffers at once: its
            // arguments and room for the answer (Hyperlight's minimum is
            // one, which fails every host call with arguments of more than
            // 256 bytes). Plus the page of small buffers.
            .g2h_pool_pages(1 + 2 * g2h_buffer.div_ceil(4096)))
    }

    fn scratch_size(&self) -> u64 {
        // Scratch holds every page written since the last snapshot (copy-on-write),
        // the on-demand stack and the transport buffers (two of each size).
        let needed = self.heap_size
            + self.stack_size
            + 2 * self.input_buffer_size
            + 2 * self.output_buffer_size
            + SCRATCH_SLACK;
        needed
            .max(self.scratch_size.unwrap_or(0))
            .next_multiple_of(64 * 1024)
    }
}

/// Checks that a size or count is greater than zero (`ERR_INVALID_ARG`).
pub fn positive(name: &str, value: u64) -> Result<u64> {
    if value == 0 {
        return Err(Error::InvalidArgument(format!(
            "{name} must be greater than zero"
        )));
    }
    Ok(value)
}

/// Configures and builds a sandbox: a micro-VM with the guest runtime in it,
/// not yet running JavaScript.
///
/// ```no_run
/// use hyperlight_js_engine::{CallOptions, SandboxBuilder};
/// # fn main() -> Result<(), hyperlight_js_engine::Error> {
/// let proto = SandboxBuilder::new().heap_size(16 << 20).build()?;
/// let mut js = proto.load_runtime()?;
/// js.add_handler("greet", "function handler(e) { return { hi: e.name }; }")?;
/// let mut loaded = js.get_loaded_sandbox()?;
/// let out = loaded.call_handler("greet", &serde_json::json!({"name": "World"}), &CallOptions::default())?;
/// assert_eq!(out["hi"], "World");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct SandboxBuilder {
    config: SandboxConfig,
}

impl SandboxBuilder {
    /// Default guest heap: 32 MiB.
    pub const DEFAULT_HEAP_SIZE: u64 = 32 * 1024 * 1024;
    /// Default guest stack: 1 MiB.
    pub const DEFAULT_STACK_SIZE: u64 = 1024 * 1024;
    /// Default input buffer (largest event): 1 MiB.
    pub const DEFAULT_INPUT_BUFFER_SIZE: u64 = 1024 * 1024;
    /// Default output buffer (largest result): 1 MiB.
    pub const DEFAULT_OUTPUT_BUFFER_SIZE: u64 = 1024 * 1024;
    /// Default console output per call: 64 KiB.
    pub const DEFAULT_CONSOLE_MAX_BYTES: u64 = 64 * 1024;
    /// Default console output per call: 1000 lines.
    pub const DEFAULT_CONSOLE_MAX_LINES: u64 = 1000;
    /// Smallest heap that holds the QuickJS runtime and a full context.
    pub const MIN_HEAP_SIZE: u64 = 4 * 1024 * 1024;

    /// A builder with default sizes.
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder with the given sizes.
    pub fn from_config(config: SandboxConfig) -> Self {
        Self { config }
    }

    /// Sets the guest heap size in bytes (must be > 0).
    pub fn heap_size(mut self, bytes: u64) -> Self {
        self.config.heap_size = bytes;
        self
    }

    /// Sets the guest stack size in bytes (must be > 0).
    pub fn stack_size(mut self, bytes: u64) -> Self {
        self.config.stack_size = bytes;
        self
    }

    /// Sets the input buffer size in bytes: the largest event accepted (must be > 0).
    pub fn input_buffer_size(mut self, bytes: u64) -> Self {
        self.config.input_buffer_size = bytes;
        self
    }

    /// Sets the output buffer size in bytes: the largest result returned (must be > 0).
    pub fn output_buffer_size(mut self, bytes: u64) -> Self {
        self.config.output_buffer_size = bytes;
        self
    }

    /// Sets Hyperlight's scratch region in bytes (must be > 0): all memory
    /// the guest may write between snapshots. Values below what the heap,
    /// stack and buffer sizes need are raised to that.
    pub fn scratch_size(mut self, bytes: u64) -> Self {
        self.config.scratch_size = Some(bytes);
        self
    }

    /// Caps console output per call (must be > 0 each): past `max_bytes`
    /// bytes or `max_lines` lines the rest of the call's output is dropped
    /// and one `console output truncated: …` warning is logged instead.
    pub fn console_limits(mut self, max_bytes: u64, max_lines: u64) -> Self {
        self.config.console_max_bytes = max_bytes;
        self.config.console_max_lines = max_lines;
        self
    }

    /// Chooses where the JavaScript engine runs inside the micro-VM.
    pub fn guest_mode(mut self, mode: GuestMode) -> Self {
        self.config.guest_mode = mode;
        self
    }

    /// The sizes so far.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Creates the micro-VM and starts the guest (no JavaScript runtime yet).
    #[instrument(name = "sandbox.build", skip_all, err(Display))]
    pub fn build(self) -> Result<ProtoJSSandbox> {
        let config = self.config;
        config.validate()?;
        if !is_hypervisor_present() {
            return Err(Error::NoHypervisor(
                "no hypervisor found: /dev/kvm (or /dev/mshv) is missing or not accessible to this user".into(),
            ));
        }
        let registry = HostRegistry::default();
        let builder = config.sized(hyperlight_host::SandboxBuilder::from_bytes(GUEST))?;
        let sandbox = host_functions::install(builder, &registry)
            .build()
            .map_err(crate::error_map::from_hyperlight)?;
        Ok(ProtoJSSandbox::new(Box::new(sandbox), config, registry))
    }
}

impl SandboxBuilder {
    /// Prepares sandboxes from a snapshot loaded from disk: register its host
    /// functions on the [`SandboxRestorer`], then restore. The sizes are the
    /// snapshot's; a builder whose sizes were changed to other values is
    /// refused (`ERR_INVALID_ARG`) rather than silently ignored.
    pub fn build_from_snapshot(
        self,
        snapshot: &crate::PersistedSnapshot,
    ) -> Result<crate::SandboxRestorer> {
        if self.config != SandboxConfig::default() && self.config != *snapshot.config() {
            return Err(Error::InvalidArgument(format!(
                "a sandbox restored from a snapshot has the snapshot's sizes ({:?}), not the builder's ({:?})",
                snapshot.config(),
                self.config
            )));
        }
        if !is_hypervisor_present() {
            return Err(Error::NoHypervisor(
                "no hypervisor found: /dev/kvm (or /dev/mshv) is missing or not accessible to this user".into(),
            ));
        }
        Ok(crate::SandboxRestorer::new(snapshot.clone()))
    }
}

fn usize_of(v: u64) -> Result<usize> {
    usize::try_from(v)
        .map_err(|_| Error::InvalidArgument(format!("{v} bytes does not fit this platform")))
}
