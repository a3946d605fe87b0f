//! `[snapshots] dir`: each key's loaded snapshot kept on disk between starts,
//! so that a later start maps it back instead of running the runtime init and
//! the compile.
//!
//! An entry is one OCI layout directory named by a hash of everything that
//! shapes the snapshot: the guest build, the hyperlight version, this worker's
//! version, the routing key, the handler's code and the sandbox sizes. A
//! change to any of them is another entry; an entry that does not load is
//! removed and rebuilt, never used.
//!
//! Entries are loaded with the engine's checked load, which verifies every
//! blob against its digest: the directory is often a shared volume that other
//! processes write, and a torn or damaged blob loaded unverified would fail
//! inside the guest in any way, while a verified one fails here and is
//! rebuilt. Hashing costs a few ms per MB, far below an init and a compile.
//!
//! Workers sharing the directory never see a half-written entry: an entry is
//! written under a temporary name in the same directory and renamed into
//! place in one step (a rename onto an existing entry fails, and the loser
//! drops its copy). Files of an entry are never rewritten in place (a loaded
//! blob stays memory-mapped); a bad entry is renamed away, then deleted.

use std::path::{Path, PathBuf};

use hyperlight_js_config::HandlerConfig;
use hyperlight_js_engine::{SandboxBuilder, Snapshot};
use sha2::{Digest as _, Sha256};
use tracing::{info, warn};

/// The tag of the one snapshot in an entry's layout.
const TAG: &str = "handler";
/// Prefix of entries being written.
const TMP_PREFIX: &str = ".tmp-";
/// Prefix of entries being removed.
const TRASH_PREFIX: &str = ".trash-";

/// What [`SnapshotCache::load`] found.
#[derive(Debug)]
pub enum Lookup {
    /// A valid entry: the snapshot, ready for sandboxes.
    Hit(Snapshot),
    /// No entry for this key.
    Miss,
    /// An entry that does not load (corrupt, incompatible): removed; the
    /// error code says why.
    Rebuild(&'static str),
}

impl Lookup {
    /// The metric label: `hit`, `miss` or `rebuild`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Hit(_) => "hit",
            Self::Miss => "miss",
            Self::Rebuild(_) => "rebuild",
        }
    }
}

/// One cache directory.
#[derive(Clone, Debug)]
pub struct SnapshotCache {
    dir: PathBuf,
}

impl SnapshotCache {
    /// The cache at `dir` (created when the first entry is stored).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The cache `handler` is configured with, if any.
    pub fn of(handler: &HandlerConfig) -> Option<Self> {
        handler.snapshot_dir.as_ref().map(Self::new)
    }

    /// The sandbox sizes of `handler`, as the pool builds it.
    pub fn builder(handler: &HandlerConfig) -> SandboxBuilder {
        SandboxBuilder::new()
            .heap_size(handler.heap_size)
            .stack_size(handler.stack_size)
            .input_buffer_size(handler.max_message_bytes)
            .output_buffer_size(handler.max_result_bytes)
    }

    /// The entry name of `handler`: a hash of what shapes its snapshot.
    pub fn entry_name(handler: &HandlerConfig) -> String {
        let mut h = Sha256::new();
        for part in [
            "hyperlight-js-workers snapshot cache v1",
            hyperlight_js_engine::guest_build_id(),
            hyperlight_js_engine::HYPERLIGHT_VERSION,
            env!("CARGO_PKG_VERSION"),
            &format!("{:?}", Self::builder(handler).config()),
            &handler.key,
            &handler.source,
        ] {
            // Length-prefixed, so that no two part lists hash alike.
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The entry directory of `handler`.
    pub fn entry(&self, handler: &HandlerConfig) -> PathBuf {
        self.dir.join(Self::entry_name(handler))
    }

    /// Loads `handler`'s entry (checked). A bad one is removed.
    pub fn load(&self, handler: &HandlerConfig) -> Lookup {
        let entry = self.entry(handler);
        if !entry.is_dir() {
            return Lookup::Miss;
        }
        let restored = Snapshot::load(&entry, TAG).and_then(|persisted| {
            let keys: Vec<&str> = persisted.handler_keys().collect();
            if keys != [handler.key.as_str()] {
                return Err(hyperlight_js_engine::Error::SnapshotIncompatible(format!(
                    "it holds handlers {keys:?}, not '{}'",
                    handler.key
                )));
            }
            Self::builder(handler)
                .build_from_snapshot(&persisted)?
                .into_snapshot()
                .map_err(hyperlight_js_engine::Error::from)
        });
        match restored {
            Ok(snapshot) => Lookup::Hit(snapshot),
            Err(e) => {
                warn!(key = %handler.key, entry = %entry.display(), code = %e.code(), error = %e,
                    "snapshot cache entry unusable; removing it and rebuilding");
                remove_entry(&self.dir, &entry);
                Lookup::Rebuild(e.code().as_str())
            }
        }
    }

    /// Saves `snapshot` as `handler`'s entry: written under a temporary name,
    /// then renamed into place. Returns whether this call put it there
    /// (`false`: another worker stored it first). Failures are logged and
    /// leave the cache as it was: the cache is an optimisation only.
    pub fn store(&self, handler: &HandlerConfig, snapshot: &Snapshot) -> bool {
        let entry = self.entry(handler);
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            warn!(key = %handler.key, dir = %self.dir.display(), error = %e, "cannot create the snapshot cache directory");
            return false;
        }
        let tmp = self.dir.join(format!(
            "{TMP_PREFIX}{}-{}-{}",
            Self::entry_name(handler),
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        if let Err(e) = snapshot.save(&tmp, TAG) {
            warn!(key = %handler.key, code = %e.code(), error = %e, "cannot save the snapshot to the cache");
            let _ = std::fs::remove_dir_all(&tmp);
            return false;
        }
        // Blobs on disk before the entry becomes visible (a crash after the
        // rename must not leave a named entry of unwritten blobs; a torn one
        // would be caught by the checked load anyway).
        sync_tree(&tmp);
        match std::fs::rename(&tmp, &entry) {
            Ok(()) => {
                sync_dir(&self.dir);
                info!(key = %handler.key, entry = %entry.display(), "snapshot cached");
                true
            }
            Err(e) => {
                // Another worker renamed its copy in first (a directory does
                // not replace a non-empty one): keep theirs.
                if !entry.is_dir() {
                    warn!(key = %handler.key, error = %e, "cannot move the snapshot into the cache");
                }
                let _ = std::fs::remove_dir_all(&tmp);
                false
            }
        }
    }
}

/// Renames `entry` out of the way (atomically: no process sees it half
/// deleted), then deletes it. Processes that still map its blobs keep them
/// until they unmap (deleting a mapped file is safe; rewriting it is not).
fn remove_entry(dir: &Path, entry: &Path) {
    let trash = dir.join(format!("{TRASH_PREFIX}{}", uuid::Uuid::new_v4().simple()));
    match std::fs::rename(entry, &trash) {
        Ok(()) => {
            if let Err(e) = std::fs::remove_dir_all(&trash) {
                warn!(path = %trash.display(), error = %e, "cannot delete a removed snapshot cache entry");
            }
        }
        // Already removed by another worker.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            warn!(entry = %entry.display(), error = %e, "cannot remove a bad snapshot cache entry")
        }
    }
}

fn sync_tree(path: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_dir() {
        if let Ok(entries) = std::fs::read_dir(path) {
            for e in entries.flatten() {
                sync_tree(&e.path());
            }
        }
        sync_dir(path);
    } else if meta.is_file()
        && let Ok(f) = std::fs::File::open(path)
    {
        let _ = f.sync_all();
    }
}

fn sync_dir(path: &Path) {
    if let Ok(d) = std::fs::File::open(path) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyperlight_js_config::{RetryPolicy, TimeLimits};
    use hyperlight_js_engine::{CallOptions, LoadedJSSandbox};
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    fn handler(dir: &Path, source: &str) -> HandlerConfig {
        let ms = Duration::from_millis(1000);
        HandlerConfig {
            key: "count".into(),
            file: dir.join("count.js"),
            source: source.into(),
            pool_size: 1,
            heap_size: 8 << 20,
            stack_size: 1 << 20,
            limits: TimeLimits {
                cpu: ms,
                max_cpu: ms,
                wall: ms,
                max_wall: ms,
            },
            max_message_bytes: 1 << 16,
            max_result_bytes: 1 << 16,
            max_deliveries: 1,
            retry: RetryPolicy::none(),
            snapshot_dir: Some(dir.to_path_buf()),
        }
    }

    const CODE: &str = "let n = 41; function handler(e) { n += 1; return n; }";

    fn loaded(h: &HandlerConfig) -> Snapshot {
        let mut js = SnapshotCache::builder(h)
            .build()
            .unwrap()
            .load_runtime()
            .unwrap();
        js.add_handler(&h.key, &h.source).unwrap();
        js.get_loaded_sandbox().unwrap().snapshot().unwrap()
    }

    fn call(s: &Snapshot) -> serde_json::Value {
        LoadedJSSandbox::from_snapshot(s)
            .unwrap()
            .call_handler("count", &serde_json::json!({}), &CallOptions::default())
            .unwrap()
    }

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "hljs-cache-{name}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_key_covers_code_sizes_and_key() {
        let dir = Path::new("/nonexistent");
        let base = handler(dir, CODE);
        let name = SnapshotCache::entry_name(&base);
        assert_eq!(name, SnapshotCache::entry_name(&handler(dir, CODE)));
        let mut other = handler(dir, CODE);
        other.source.push(' ');
        assert_ne!(SnapshotCache::entry_name(&other), name);
        let mut other = handler(dir, CODE);
        other.heap_size *= 2;
        assert_ne!(SnapshotCache::entry_name(&other), name);
        let mut other = handler(dir, CODE);
        other.max_result_bytes += 1;
        assert_ne!(SnapshotCache::entry_name(&other), name);
        let mut other = handler(dir, CODE);
        other.key = "count2".into();
        assert_ne!(SnapshotCache::entry_name(&other), name);
        // Pool size and time limits do not shape the snapshot.
        let mut other = handler(dir, CODE);
        other.pool_size = 7;
        assert_eq!(SnapshotCache::entry_name(&other), name);
    }

    #[test]
    fn miss_store_hit_and_a_corrupt_entry_is_removed() {
        let dir = temp_dir("roundtrip");
        let h = handler(&dir, CODE);
        let cache = SnapshotCache::of(&h).unwrap();
        assert!(matches!(cache.load(&h), Lookup::Miss));
        assert!(cache.store(&h, &loaded(&h)));
        let Lookup::Hit(s) = cache.load(&h) else {
            panic!("expected a hit")
        };
        assert_eq!(call(&s), serde_json::json!(42));
        assert_eq!(names(&dir), [SnapshotCache::entry_name(&h)]);

        // Flip a byte in each memory image (as a new file, never in place).
        let blobs = cache.entry(&h).join("blobs/sha256");
        for e in std::fs::read_dir(&blobs).unwrap() {
            let p = e.unwrap().path();
            let mut bytes = std::fs::read(&p).unwrap();
            if bytes.len() > 1 << 20 {
                let at = bytes.len() / 3;
                bytes[at] ^= 0xff;
                std::fs::write(p.with_extension("new"), &bytes).unwrap();
                std::fs::rename(p.with_extension("new"), &p).unwrap();
            }
        }
        match cache.load(&h) {
            Lookup::Rebuild(code) => assert_eq!(code, "ERR_SNAPSHOT_CORRUPT"),
            other => panic!("expected a rebuild, got {other:?}"),
        }
        assert!(names(&dir).is_empty(), "{:?}", names(&dir));
        assert!(matches!(cache.load(&h), Lookup::Miss));
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn racing_writers_leave_one_valid_entry() {
        let dir = temp_dir("race");
        let h = handler(&dir, CODE);
        let snapshot = loaded(&h);
        let writers = 4;
        let barrier = Arc::new(Barrier::new(writers));
        let won: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..writers)
                .map(|_| {
                    let (barrier, h, snapshot) = (barrier.clone(), &h, &snapshot);
                    s.spawn(move || {
                        let cache = SnapshotCache::of(h).unwrap();
                        barrier.wait();
                        cache.store(h, snapshot)
                    })
                })
                .collect();
            handles.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
        // No temporary left over; the one entry loads (checked) and runs.
        assert_eq!(names(&dir), [SnapshotCache::entry_name(&h)]);
        let Lookup::Hit(s) = SnapshotCache::of(&h).unwrap().load(&h) else {
            panic!("expected a hit")
        };
        assert_eq!(call(&s), serde_json::json!(42));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
