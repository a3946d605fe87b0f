//! Persisted snapshots: a [`Snapshot`] saved to an OCI image layout on disk
//! (hyperlight's format), loaded back by tag or digest in another process,
//! and turned into sandboxes again once its host functions are supplied.
//!
//! What the engine needs besides hyperlight's memory image — the sizes, the
//! handler keys, the host functions the guest was told about, the guest build
//! and hyperlight version, and the runtime snapshot that `unload` goes back to
//! — is stored as metadata inside hyperlight's config blob, so a checked load
//! verifies it with everything else. The runtime snapshot is saved in the
//! same layout under `<tag>.runtime` and named by digest in the metadata.

use std::collections::BTreeSet;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use hyperlight_host::sandbox::snapshot::{OciDigest, OciReference, OciTag, Snapshot as HlSnapshot};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tracing::instrument;

use crate::builder::{GuestMode, SandboxConfig};
use crate::error::{Error, Result, TransitionError};
use crate::host_functions::{self, HostFn, HostRegistry};
use crate::js_sandbox::JSSandbox;
use crate::loaded::{LoadedJSSandbox, Shared};
use crate::snapshot::Snapshot;

/// The hyperlight-host version this engine is built against. A persisted
/// snapshot records the version that wrote it; any other is refused
/// (`ERR_SNAPSHOT_INCOMPATIBLE`): hyperlight 0.x promises no stable format.
pub const HYPERLIGHT_VERSION: &str = "0.18.0";

/// Our namespace in hyperlight's snapshot metadata.
const NAMESPACE: &str = "hyperlight-js-workers.engine";
/// Version of [`Metadata`]'s shape.
const FORMAT: u32 = 1;
/// Suffix of the runtime snapshot's tag beside the loaded one.
const RUNTIME_SUFFIX: &str = ".runtime";
/// Longest tag a caller may give (OCI allows 128; the suffix needs room).
const MAX_TAG: usize = 128 - RUNTIME_SUFFIX.len();
/// hyperlight's own bound on the JSON files of a layout.
const MAX_JSON: u64 = 1024 * 1024;

/// The sha256 (hex) of the embedded guest ELF: snapshots are only valid for
/// the guest build that made them.
pub fn guest_build_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| hex(&Sha256::digest(crate::GUEST)))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the engine stores beside hyperlight's image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    format: u32,
    engine_version: String,
    guest_build: String,
    hyperlight_version: String,
    config: PersistedConfig,
    handlers: BTreeSet<String>,
    host_functions: BTreeSet<String>,
    /// Manifest digest of the runtime snapshot (no handlers) in the same layout.
    runtime: String,
}

/// [`SandboxConfig`] as stored (kept apart so the public type carries no
/// serialization promise).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PersistedConfig {
    heap_size: u64,
    stack_size: u64,
    input_buffer_size: u64,
    output_buffer_size: u64,
    user_mode: bool,
    scratch_size: Option<u64>,
    console_max_bytes: u64,
    console_max_lines: u64,
}

impl From<&SandboxConfig> for PersistedConfig {
    fn from(c: &SandboxConfig) -> Self {
        Self {
            heap_size: c.heap_size,
            stack_size: c.stack_size,
            input_buffer_size: c.input_buffer_size,
            output_buffer_size: c.output_buffer_size,
            user_mode: c.guest_mode == GuestMode::User,
            scratch_size: c.scratch_size,
            console_max_bytes: c.console_max_bytes,
            console_max_lines: c.console_max_lines,
        }
    }
}

impl From<&PersistedConfig> for SandboxConfig {
    fn from(c: &PersistedConfig) -> Self {
        Self {
            heap_size: c.heap_size,
            stack_size: c.stack_size,
            input_buffer_size: c.input_buffer_size,
            output_buffer_size: c.output_buffer_size,
            guest_mode: if c.user_mode {
                GuestMode::User
            } else {
                GuestMode::Kernel
            },
            scratch_size: c.scratch_size,
            console_max_bytes: c.console_max_bytes,
            console_max_lines: c.console_max_lines,
        }
    }
}

fn tag_of(tag: &str) -> Result<OciTag> {
    if tag.len() > MAX_TAG {
        return Err(Error::InvalidArgument(format!(
            "snapshot tag '{tag}' is longer than {MAX_TAG} bytes (the runtime snapshot is saved beside it as <tag>{RUNTIME_SUFFIX})"
        )));
    }
    OciTag::new(tag).map_err(|e| Error::InvalidArgument(e.to_string()))
}

/// Saves `hl` (a loaded sandbox's state) and `runtime` into the layout at `dir`.
fn save_pair(
    dir: &Path,
    tag: &str,
    hl: &HlSnapshot,
    runtime: &HlSnapshot,
    config: &SandboxConfig,
    handlers: &BTreeSet<String>,
    host_functions: BTreeSet<String>,
) -> Result<String> {
    let main_tag = tag_of(tag)?;
    let runtime_tag = tag_of(&format!("{tag}{RUNTIME_SUFFIX}"))?;
    let failed = |e: hyperlight_host::HyperlightError| {
        Error::Internal(format!(
            "cannot save the snapshot to {}: {e}",
            dir.display()
        ))
    };
    let runtime_digest = runtime.save(dir, &runtime_tag).map_err(failed)?;
    let meta = Metadata {
        format: FORMAT,
        engine_version: env!("CARGO_PKG_VERSION").to_owned(),
        guest_build: guest_build_id().to_owned(),
        hyperlight_version: HYPERLIGHT_VERSION.to_owned(),
        config: config.into(),
        handlers: handlers.clone(),
        host_functions,
        runtime: runtime_digest.to_string(),
    };
    let with_meta = hl.with_metadata(NAMESPACE, &meta).map_err(failed)?;
    let digest = with_meta.save(dir, &main_tag).map_err(failed)?;
    Ok(digest.to_string())
}

impl Snapshot {
    /// Saves this snapshot into the OCI image layout at `dir` (created if
    /// absent; its parent must exist) under `tag`, and returns the digest
    /// (`sha256:…`) that [`Snapshot::load`] also accepts. The tag moves if it
    /// was taken; other snapshots in the layout stay.
    ///
    /// The runtime snapshot (where `unload` goes back to) is saved beside it
    /// as `<tag>.runtime`. Never overwrite a layout's files in place while a
    /// process may have it loaded: loaded blobs stay memory-mapped. Write a
    /// new directory and rename it instead.
    #[instrument(name = "snapshot.save", skip_all, fields(tag = %tag), err(Display))]
    pub fn save(&self, dir: impl AsRef<Path>, tag: &str) -> Result<String> {
        save_pair(
            dir.as_ref(),
            tag,
            &self.hl,
            &self.shared.runtime_snapshot,
            &self.shared.config,
            &self.handlers,
            self.shared.registry.names().into_iter().collect(),
        )
    }

    /// Loads a snapshot saved by [`save`](Self::save) from the layout at
    /// `dir`, by tag or by digest (`sha256:…`), checking every blob against
    /// its digest. Fails with `ERR_SNAPSHOT_NOT_FOUND` (no such tag or
    /// digest, no layout), `ERR_SNAPSHOT_CORRUPT` (a blob does not match its
    /// digest, a file is damaged) or `ERR_SNAPSHOT_INCOMPATIBLE` (another
    /// guest build, hyperlight version, hypervisor or CPU vendor).
    ///
    /// The digest check detects damage, not tampering: whoever can write the
    /// files can recompute the digests. Load only from a directory you trust.
    pub fn load(dir: impl AsRef<Path>, reference: &str) -> Result<PersistedSnapshot> {
        PersistedSnapshot::load_inner(dir.as_ref(), reference, true)
    }

    /// Like [`load`](Self::load) without the digest checks (which read every
    /// byte of the image): for layouts this process or a trusted one wrote.
    /// A damaged image may then fail later, in the guest, in any way.
    pub fn load_unverified(dir: impl AsRef<Path>, reference: &str) -> Result<PersistedSnapshot> {
        PersistedSnapshot::load_inner(dir.as_ref(), reference, false)
    }
}

/// A snapshot loaded from disk by [`Snapshot::load`]. It needs its host
/// functions again before it becomes sandboxes:
/// [`SandboxBuilder::build_from_snapshot`](crate::SandboxBuilder::build_from_snapshot)
/// gives a [`SandboxRestorer`] to register them on.
///
/// Its memory image stays mapped from the layout's blob file while it, or
/// any sandbox built from it, lives: do not overwrite or truncate that file.
#[derive(Clone)]
pub struct PersistedSnapshot {
    hl: Arc<HlSnapshot>,
    runtime: Arc<HlSnapshot>,
    config: SandboxConfig,
    handlers: Arc<BTreeSet<String>>,
    host_functions: BTreeSet<String>,
    digest: String,
}

impl std::fmt::Debug for PersistedSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersistedSnapshot")
            .field("digest", &self.digest)
            .field("handlers", &self.handlers)
            .field("host_functions", &self.host_functions)
            .finish_non_exhaustive()
    }
}

impl PersistedSnapshot {
    /// The manifest digest it was loaded as (`sha256:…`).
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The routing keys of its compiled handlers.
    pub fn handler_keys(&self) -> impl Iterator<Item = &str> {
        self.handlers.iter().map(String::as_str)
    }

    /// The sizes it was built with; sandboxes restored from it get these.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// The host functions (`module.function`) its handlers were given: each
    /// must be registered again before restoring.
    pub fn required_host_functions(&self) -> impl Iterator<Item = &str> {
        self.host_functions.iter().map(String::as_str)
    }

    /// Saves it again, into another layout or under another tag.
    pub fn save(&self, dir: impl AsRef<Path>, tag: &str) -> Result<String> {
        save_pair(
            dir.as_ref(),
            tag,
            &self.hl,
            &self.runtime,
            &self.config,
            &self.handlers,
            self.host_functions.clone(),
        )
    }

    #[instrument(name = "snapshot.load", skip(dir), fields(dir = %dir.display()), err(Display))]
    fn load_inner(dir: &Path, reference: &str, verify: bool) -> Result<Self> {
        let reference = OciReference::from_str(reference).map_err(|e| {
            Error::InvalidArgument(format!("'{reference}' is neither a tag nor a digest: {e}"))
        })?;
        // Our own read first: it tells a missing tag from a damaged file and
        // an incompatible snapshot from a corrupt one (hyperlight's load
        // errors are plain strings), and pins the tag to one manifest digest.
        let digest = find_manifest(dir, &reference)?;
        let pre = read_metadata(dir, &digest)?;
        check_compatible(&pre)?;
        let digest_ref = OciDigest::from_str(&digest)
            .map_err(|e| Error::SnapshotCorrupt(format!("bad manifest digest {digest}: {e}")))?;
        let hl = load_hl(dir, digest_ref, verify)?;
        // The copy hyperlight read (and, checked, verified) is the one used.
        let meta: Metadata = hl
            .metadata(NAMESPACE)
            .map_err(|e| Error::SnapshotCorrupt(format!("its engine metadata is unreadable: {e}")))?
            .ok_or_else(|| {
                Error::SnapshotIncompatible("it was not saved by hyperlight-js-workers".into())
            })?;
        check_compatible(&meta)?;
        let runtime_ref = OciDigest::from_str(&meta.runtime).map_err(|e| {
            Error::SnapshotCorrupt(format!("bad runtime digest {}: {e}", meta.runtime))
        })?;
        find_manifest(dir, &OciReference::Digest(runtime_ref.clone())).map_err(|e| {
            Error::SnapshotCorrupt(format!(
                "the runtime snapshot {} it names is missing: {e}",
                meta.runtime
            ))
        })?;
        let runtime = load_hl(dir, runtime_ref, verify)?;
        let config = SandboxConfig::from(&meta.config);
        config
            .validate()
            .map_err(|e| Error::SnapshotCorrupt(format!("its sizes are invalid: {e}")))?;
        Ok(Self {
            hl: Arc::new(hl),
            runtime: Arc::new(runtime),
            config,
            handlers: Arc::new(meta.handlers),
            host_functions: meta.host_functions,
            digest,
        })
    }
}

fn load_hl(dir: &Path, digest: OciDigest, verify: bool) -> Result<HlSnapshot> {
    let loaded = if verify {
        HlSnapshot::checked_load(dir, digest)
    } else {
        HlSnapshot::load(dir, digest)
    };
    loaded.map_err(|e| {
        let message = e.to_string();
        // hyperlight's portability checks, told apart from damage.
        let portability = [
            "architecture mismatch",
            "ABI version mismatch",
            "hypervisor mismatch",
            "CPU vendor mismatch",
            "is incompatible with snapshot ABI",
            "no hypervisor available",
        ];
        if portability.iter().any(|p| message.contains(p)) {
            Error::SnapshotIncompatible(message)
        } else {
            Error::SnapshotCorrupt(message)
        }
    })
}

fn check_compatible(meta: &Metadata) -> Result<()> {
    if meta.format != FORMAT {
        return Err(Error::SnapshotIncompatible(format!(
            "its engine metadata has format {}, this engine reads format {FORMAT}",
            meta.format
        )));
    }
    if meta.hyperlight_version != HYPERLIGHT_VERSION {
        return Err(Error::SnapshotIncompatible(format!(
            "it was written by hyperlight {}, this engine runs hyperlight {HYPERLIGHT_VERSION}",
            meta.hyperlight_version
        )));
    }
    if meta.guest_build != guest_build_id() {
        return Err(Error::SnapshotIncompatible(format!(
            "it was made by guest build {}, this engine embeds guest build {}",
            short(&meta.guest_build),
            short(guest_build_id())
        )));
    }
    Ok(())
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn read_json(path: &Path) -> std::io::Result<Value> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_JSON + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_JSON {
        return Err(std::io::Error::other(format!(
            "{} is over {MAX_JSON} bytes",
            path.display()
        )));
    }
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}

fn blob_path(dir: &Path, digest: &str) -> Result<std::path::PathBuf> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| Error::SnapshotCorrupt(format!("bad blob digest {digest:?}")))?;
    Ok(dir.join("blobs").join("sha256").join(hex))
}

/// The manifest digest `reference` names in the layout's index.
fn find_manifest(dir: &Path, reference: &OciReference) -> Result<String> {
    if !dir.join("oci-layout").is_file() || !dir.join("index.json").is_file() {
        return Err(Error::SnapshotNotFound(format!(
            "{} holds no snapshot layout",
            dir.display()
        )));
    }
    let index = read_json(&dir.join("index.json"))
        .map_err(|e| Error::SnapshotCorrupt(format!("{}/index.json: {e}", dir.display())))?;
    let manifests = index
        .get("manifests")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            Error::SnapshotCorrupt(format!("{}/index.json lists no manifests", dir.display()))
        })?;
    let matches = |d: &&Value| match reference {
        OciReference::Tag(t) => {
            d.pointer("/annotations/org.opencontainers.image.ref.name")
                .and_then(Value::as_str)
                == Some(t.as_str())
        }
        OciReference::Digest(g) => d.get("digest").and_then(Value::as_str) == Some(g.as_str()),
    };
    let found = manifests.iter().find(matches).ok_or_else(|| {
        Error::SnapshotNotFound(format!("no snapshot {reference} in {}", dir.display()))
    })?;
    let digest = found
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::SnapshotCorrupt(format!("the entry of {reference} has no digest")))?;
    Ok(digest.to_owned())
}

/// Our metadata as the (unverified) config blob of manifest `digest` holds it.
fn read_metadata(dir: &Path, digest: &str) -> Result<Metadata> {
    let corrupt = |what: &str, e: &dyn std::fmt::Display| {
        Error::SnapshotCorrupt(format!("{what} of {digest} in {}: {e}", dir.display()))
    };
    let manifest = read_json(&blob_path(dir, digest)?).map_err(|e| corrupt("the manifest", &e))?;
    let config_digest = manifest
        .pointer("/config/digest")
        .and_then(Value::as_str)
        .ok_or_else(|| corrupt("the manifest", &"no config digest"))?;
    let config =
        read_json(&blob_path(dir, config_digest)?).map_err(|e| corrupt("the config", &e))?;
    let written_by = config
        .get("hyperlight_version")
        .and_then(Value::as_str)
        .unwrap_or("an unknown version");
    if written_by != HYPERLIGHT_VERSION {
        return Err(Error::SnapshotIncompatible(format!(
            "it was written by hyperlight {written_by}, this engine runs hyperlight {HYPERLIGHT_VERSION}"
        )));
    }
    let meta = config
        .pointer(&format!("/metadata/{NAMESPACE}"))
        .ok_or_else(|| {
            Error::SnapshotIncompatible("it was not saved by hyperlight-js-workers".into())
        })?;
    serde_json::from_value(meta.clone()).map_err(|e| {
        Error::SnapshotIncompatible(format!("its engine metadata is not this engine's: {e}"))
    })
}

/// A [`PersistedSnapshot`] waiting for its host functions. Register every
/// function it needs ([`PersistedSnapshot::required_host_functions`]), then
/// restore a [`LoadedJSSandbox`] (its handlers compiled, its JavaScript
/// state as saved) or a [`JSSandbox`] (the fresh runtime, no handlers).
pub struct SandboxRestorer {
    /// Shared: keeps `TransitionError<SandboxRestorer>` small.
    snapshot: Arc<PersistedSnapshot>,
    registry: HostRegistry,
}

impl std::fmt::Debug for SandboxRestorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxRestorer")
            .field("snapshot", &self.snapshot)
            .field("registered", &self.registry.names())
            .finish()
    }
}

impl SandboxRestorer {
    pub(crate) fn new(snapshot: PersistedSnapshot) -> Self {
        Self {
            snapshot: Arc::new(snapshot),
            registry: HostRegistry::default(),
        }
    }

    /// Registers a host function, as
    /// [`ProtoJSSandbox::register_host_function`](crate::ProtoJSSandbox::register_host_function)
    /// does. Only those the snapshot's runtime was given are visible to its
    /// handlers.
    pub fn register_host_function(
        &mut self,
        module: &str,
        function: &str,
        f: impl Fn(Value) -> std::result::Result<Value, String> + Send + Sync + 'static,
    ) -> Result<()> {
        let f: HostFn = Arc::new(f);
        self.registry.register_checked(module, function, f)
    }

    /// The snapshot it restores.
    pub fn persisted(&self) -> &PersistedSnapshot {
        &self.snapshot
    }

    /// The required host functions not registered yet (`module.function`).
    pub fn missing_host_functions(&self) -> Vec<String> {
        let registered: BTreeSet<String> = self.registry.names().into_iter().collect();
        self.snapshot
            .host_functions
            .difference(&registered)
            .cloned()
            .collect()
    }

    fn shared(&self) -> Result<Arc<Shared>> {
        let missing = self.missing_host_functions();
        if !missing.is_empty() {
            return Err(Error::SnapshotIncompatible(format!(
                "its handlers need host functions that are not registered: {}",
                missing.join(", ")
            )));
        }
        Ok(Arc::new(Shared {
            config: self.snapshot.config,
            registry: self.registry.clone(),
            runtime_snapshot: self.snapshot.runtime.clone(),
        }))
    }

    /// An in-memory [`Snapshot`] of the persisted state, with these host
    /// functions: build any number of sandboxes of one lineage from it with
    /// [`LoadedJSSandbox::from_snapshot`] (they may restore it).
    pub fn into_snapshot(self) -> Result<Snapshot, TransitionError<Self>> {
        match self.shared() {
            Ok(shared) => Ok(Snapshot {
                hl: self.snapshot.hl.clone(),
                handlers: self.snapshot.handlers.clone(),
                shared,
                // Learned again: addresses are not persisted with the snapshot.
                working_set: Default::default(),
            }),
            Err(error) => Err(TransitionError { error, state: self }),
        }
    }

    /// A new sandbox in the saved state: same handlers, same JavaScript
    /// state. `unload` takes it back to the saved runtime.
    #[instrument(name = "snapshot.restore_loaded", skip_all, err(Display))]
    pub fn restore_loaded_sandbox(self) -> Result<LoadedJSSandbox, TransitionError<Self>> {
        let restorer = SandboxRestorer {
            snapshot: self.snapshot.clone(),
            registry: self.registry.clone(),
        };
        let snapshot = self.into_snapshot()?;
        LoadedJSSandbox::from_snapshot(&snapshot).map_err(|error| TransitionError {
            error,
            state: restorer,
        })
    }

    /// A new sandbox with the saved runtime and no handlers (the state
    /// `unload` goes back to), to add handlers to.
    #[instrument(name = "snapshot.restore_js", skip_all, err(Display))]
    pub fn restore_js_sandbox(self) -> Result<JSSandbox, TransitionError<Self>> {
        let built = self.shared().and_then(|shared| {
            let builder = shared
                .config
                .sized(hyperlight_host::SandboxBuilder::from_snapshot(
                    shared.runtime_snapshot.clone(),
                ))?;
            let sandbox = host_functions::install(builder, &shared.registry)
                .build()
                .map_err(crate::error_map::from_hyperlight)?;
            Ok(JSSandbox::from_parts(Box::new(sandbox), shared))
        });
        built.map_err(|error| TransitionError { error, state: self })
    }
}
