//! Persisted snapshots on real micro-VMs: save → load → restore gives the
//! same state as the original; missing, corrupt and incompatible snapshots
//! and missing host functions fail with their codes; unload works on a
//! restored sandbox.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use hyperlight_js_engine::{
    CallOptions, ErrorCode, LoadedJSSandbox, PersistedSnapshot, SandboxBuilder, SandboxRestorer,
    Snapshot,
};
use serde_json::{Value, json};

const COUNTER: &str = "let count = 0; function handler(e) { count += 1; return count; }";
const SUM: &str = "function handler(e) { return host.math.add(e.a, e.b); }";

/// A directory of its own under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "hljs-persist-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn layout(&self) -> PathBuf {
        self.0.join("layout")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn add(args: Value) -> Result<Value, String> {
    Ok(json!(
        args[0].as_f64().unwrap_or(0.0) + args[1].as_f64().unwrap_or(0.0)
    ))
}

/// A sandbox with `counter` and `sum` whose counter has run once.
fn original() -> LoadedJSSandbox {
    common::require_kvm();
    let mut proto = SandboxBuilder::new().build().unwrap();
    proto.register_host_function("math", "add", add).unwrap();
    let mut js = proto.load_runtime().unwrap();
    js.add_handler("counter", COUNTER).unwrap();
    js.add_handler("sum", SUM).unwrap();
    let mut sb = js.get_loaded_sandbox().unwrap();
    assert_eq!(call(&mut sb, "counter"), json!(1));
    sb
}

fn call(sb: &mut LoadedJSSandbox, key: &str) -> Value {
    sb.call_handler(key, &json!({"a": 1, "b": 2}), &CallOptions::default())
        .unwrap()
}

fn restorer(p: &PersistedSnapshot) -> SandboxRestorer {
    let mut r = SandboxBuilder::new().build_from_snapshot(p).unwrap();
    r.register_host_function("math", "add", add).unwrap();
    r
}

/// Saves the original's snapshot into a new layout; returns it and the digest.
fn saved(name: &str) -> (TempDir, String) {
    let dir = TempDir::new(name);
    let mut sb = original();
    let digest = sb.snapshot().unwrap().save(dir.layout(), "app").unwrap();
    (dir, digest)
}

fn json_file(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

/// The config blob of the manifest tagged `tag`.
fn config_blob(layout: &Path, tag: &str) -> PathBuf {
    let index = json_file(&layout.join("index.json"));
    let manifest = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap();
    let manifest = json_file(&blob(layout, manifest["digest"].as_str().unwrap()));
    blob(layout, manifest["config"]["digest"].as_str().unwrap())
}

/// Replaces a file with new contents (a new inode: never in place).
fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn save_load_restore_gives_the_original_state() {
    let dir = TempDir::new("roundtrip");
    let mut sb = original();
    let snap = sb.snapshot().unwrap();
    let digest = snap.save(dir.layout(), "app").unwrap();
    assert!(digest.starts_with("sha256:"), "{digest}");
    // What the original gives from its snapshot…
    let mut twin = LoadedJSSandbox::from_snapshot(&snap).unwrap();
    let expected = (call(&mut twin, "counter"), call(&mut twin, "sum"));
    assert_eq!(expected, (json!(2), json!(3)));

    // …a restored sandbox gives too, loaded by tag, by digest, or unverified.
    for persisted in [
        Snapshot::load(dir.layout(), "app").unwrap(),
        Snapshot::load(dir.layout(), &digest).unwrap(),
        Snapshot::load_unverified(dir.layout(), "app").unwrap(),
    ] {
        assert_eq!(persisted.digest(), digest);
        assert_eq!(
            persisted.handler_keys().collect::<Vec<_>>(),
            ["counter", "sum"]
        );
        assert_eq!(
            persisted.required_host_functions().collect::<Vec<_>>(),
            ["math.add"]
        );
        assert_eq!(persisted.config(), sb.config());
        let mut restored = restorer(&persisted).restore_loaded_sandbox().unwrap();
        assert_eq!(
            (call(&mut restored, "counter"), call(&mut restored, "sum")),
            expected
        );
        // Its own snapshots and restores work as for any sandbox.
        let again = restored.snapshot().unwrap();
        assert_eq!(call(&mut restored, "counter"), json!(3));
        restored.restore(&again).unwrap();
        assert_eq!(call(&mut restored, "counter"), json!(3));
    }

    // One lineage from one restorer: the clones restore its snapshot.
    let persisted = Snapshot::load(dir.layout(), "app").unwrap();
    let shared = restorer(&persisted).into_snapshot().unwrap();
    let mut a = LoadedJSSandbox::from_snapshot(&shared).unwrap();
    let mut b = LoadedJSSandbox::from_snapshot(&shared).unwrap();
    assert_eq!(call(&mut a, "counter"), json!(2));
    assert_eq!(call(&mut a, "counter"), json!(3));
    a.restore(&shared).unwrap();
    assert_eq!(call(&mut a, "counter"), json!(2));
    assert_eq!(call(&mut b, "counter"), json!(2));

    // A loaded snapshot saves again, and loads from there.
    let other = TempDir::new("resave");
    let redigest = persisted.save(other.layout(), "copy").unwrap();
    let copy = Snapshot::load(other.layout(), &redigest).unwrap();
    let mut c = restorer(&copy).restore_loaded_sandbox().unwrap();
    assert_eq!(call(&mut c, "counter"), json!(2));
}

#[test]
fn unload_of_a_restored_sandbox_goes_back_to_the_saved_runtime() {
    let (dir, _) = saved("unload");
    let persisted = Snapshot::load(dir.layout(), "app").unwrap();
    let restored = restorer(&persisted).restore_loaded_sandbox().unwrap();
    let mut js = restored.unload().unwrap();
    assert_eq!(js.handler_keys().count(), 0);
    js.add_handler("counter", COUNTER).unwrap();
    js.add_handler("sum", SUM).unwrap();
    let mut fresh = js.get_loaded_sandbox().unwrap();
    // The counter starts again: this is the runtime, not the saved state;
    // the host function is still there.
    assert_eq!(call(&mut fresh, "counter"), json!(1));
    assert_eq!(call(&mut fresh, "sum"), json!(3));

    let mut js = restorer(&persisted).restore_js_sandbox().unwrap();
    js.add_handler("sum", SUM).unwrap();
    let mut sb = js.get_loaded_sandbox().unwrap();
    assert_eq!(call(&mut sb, "sum"), json!(3));
}

#[test]
fn a_corrupted_blob_fails_the_checked_load() {
    let (dir, _) = saved("corrupt");
    let layout = dir.layout();
    let mut corrupted = 0;
    for entry in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        // The memory images (the JSON blobs are small).
        if bytes.len() > 1 << 20 {
            let at = bytes.len() / 2;
            bytes[at] ^= 0x5a;
            replace(&path, &bytes);
            corrupted += 1;
        }
    }
    assert_eq!(corrupted, 2, "the loaded and the runtime image");
    let e = Snapshot::load(&layout, "app").unwrap_err();
    assert_eq!(e.code(), ErrorCode::SnapshotCorrupt, "{e}");
    assert!(e.to_string().contains("digest"), "{e}");

    // A truncated blob fails even unverified (its size is checked).
    let (dir, _) = saved("truncated");
    let layout = dir.layout();
    for entry in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        if bytes.len() > 1 << 20 {
            replace(&path, &bytes[..bytes.len() - 4096]);
        }
    }
    for e in [
        Snapshot::load(&layout, "app").unwrap_err(),
        Snapshot::load_unverified(&layout, "app").unwrap_err(),
    ] {
        assert_eq!(e.code(), ErrorCode::SnapshotCorrupt, "{e}");
    }
}

#[test]
fn a_missing_tag_digest_or_layout_is_not_found() {
    let (dir, digest) = saved("missing");
    let unknown = format!("sha256:{}", "0".repeat(64));
    for (layout, reference) in [
        (dir.layout(), "nope"),
        (dir.layout(), unknown.as_str()),
        (dir.0.join("no-such-dir"), "app"),
        (dir.0.clone(), "app"),
    ] {
        let e = Snapshot::load(&layout, reference).unwrap_err();
        assert_eq!(e.code(), ErrorCode::SnapshotNotFound, "{reference}: {e}");
    }
    assert!(Snapshot::load(dir.layout(), &digest).is_ok());
    for bad in ["", "bad tag", "sha256:xyz"] {
        let e = Snapshot::load(dir.layout(), bad).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidArg, "{bad:?}: {e}");
    }
    let mut sb = original();
    let e = sb
        .snapshot()
        .unwrap()
        .save(dir.layout(), &"t".repeat(125))
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArg, "{e}");
}

#[test]
fn another_guest_build_or_hyperlight_version_is_incompatible() {
    type Tamper = fn(&mut Value);
    let cases: [(&str, Tamper); 3] = [
        ("guest_build", |c| {
            c["metadata"]["hyperlight-js-workers.engine"]["guest_build"] = json!("0".repeat(64));
        }),
        ("our hyperlight_version", |c| {
            c["metadata"]["hyperlight-js-workers.engine"]["hyperlight_version"] = json!("0.17.0");
        }),
        ("hyperlight's own hyperlight_version", |c| {
            c["hyperlight_version"] = json!("0.99.0");
        }),
    ];
    for (what, tamper) in cases {
        let (dir, _) = saved("incompatible");
        let path = config_blob(&dir.layout(), "app");
        let mut config = json_file(&path);
        assert_eq!(
            config["metadata"]["hyperlight-js-workers.engine"]["guest_build"],
            hyperlight_js_engine::guest_build_id(),
            "the metadata records the guest build"
        );
        tamper(&mut config);
        replace(&path, &serde_json::to_vec(&config).unwrap());
        for e in [
            Snapshot::load(dir.layout(), "app").unwrap_err(),
            Snapshot::load_unverified(dir.layout(), "app").unwrap_err(),
        ] {
            assert_eq!(e.code(), ErrorCode::SnapshotIncompatible, "{what}: {e}");
        }
    }
}

#[test]
fn missing_host_functions_fail_the_restore_and_hand_the_restorer_back() {
    let (dir, _) = saved("hostfns");
    let persisted = Snapshot::load(dir.layout(), "app").unwrap();
    let mut bare = SandboxBuilder::new()
        .build_from_snapshot(&persisted)
        .unwrap();
    bare.register_host_function("math", "sub", add).unwrap();
    let e = bare.restore_loaded_sandbox().unwrap_err();
    assert_eq!(
        e.error.code(),
        ErrorCode::SnapshotIncompatible,
        "{}",
        e.error
    );
    assert!(e.error.to_string().contains("math.add"), "{}", e.error);
    let e = e.state.restore_js_sandbox().unwrap_err();
    assert_eq!(e.error.code(), ErrorCode::SnapshotIncompatible);
    let mut r = e.state;
    r.register_host_function("math", "add", add).unwrap();
    let mut sb = r.restore_loaded_sandbox().unwrap();
    assert_eq!(call(&mut sb, "sum"), json!(3));

    // The sizes are the snapshot's: a builder set to others is refused.
    let e = SandboxBuilder::new()
        .heap_size(64 << 20)
        .build_from_snapshot(&persisted)
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArg, "{e}");
    assert!(
        SandboxBuilder::from_config(*persisted.config())
            .build_from_snapshot(&persisted)
            .is_ok()
    );
}
