//! What lets sandboxes and worker processes share a persisted snapshot's
//! memory, checked against the kernel's accounting (`/proc/<pid>/smaps`),
//! not our own code: a loaded snapshot is the blob file mapped read-only,
//! one mapping however many sandboxes use it, never copied into private
//! memory, and a second process reading the same blob shares those pages
//! (the first one's PSS for them drops below its RSS). Then the issue's
//! target on the real worker binary: a second worker on the same
//! `[snapshots] dir` adds at most half of what the first one holds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::Duration;

use hyperlight_js_e2e::memory::{Staged, executable, files_under, rollup};
use hyperlight_js_e2e::{bundle_config, bundle_handler, stdin_worker, temp_dir, worker_bin};
use hyperlight_js_engine::{CallOptions, LoadedJSSandbox, SandboxBuilder, Snapshot};
use serde_json::json;

/// Runs `f` on a thread of its own; fails the test after `limit`.
fn within(limit: Duration, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(limit) {
        Ok(()) => worker.join().unwrap(),
        // The closure panicked: re-raise its panic.
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            std::panic::resume_unwind(worker.join().unwrap_err())
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("did not finish within {limit:?}")
        }
    }
}

#[test]
fn persisted_snapshot_is_one_shared_file_mapping() {
    within(Duration::from_secs(300), || {
        assert!(
            hyperlight_js_engine::hypervisor_available(),
            "this test needs a usable /dev/kvm (or /dev/mshv); none was found"
        );
        let dir = temp_dir("memory");
        let layout = dir.join("layout");
        {
            let mut js = SandboxBuilder::new()
                .build()
                .unwrap()
                .load_runtime()
                .unwrap();
            js.add_handler("bundle0", &bundle_handler(0, 64)).unwrap();
            let mut sb = js.get_loaded_sandbox().unwrap();
            sb.snapshot().unwrap().save(&layout, "app").unwrap();
        }

        // Four sandboxes from one checked load, each called once and restored.
        let persisted = Snapshot::load(&layout, "app").unwrap();
        let snapshot = SandboxBuilder::new()
            .build_from_snapshot(&persisted)
            .unwrap()
            .into_snapshot()
            .unwrap();
        let mut sandboxes: Vec<LoadedJSSandbox> = (0..4)
            .map(|_| LoadedJSSandbox::from_snapshot(&snapshot).unwrap())
            .collect();
        for sb in &mut sandboxes {
            let out = sb
                .call_handler("bundle0", &json!({"n": 1}), &CallOptions::default())
                .unwrap();
            assert_eq!(out["key"], 0);
            sb.restore(&snapshot).unwrap();
        }

        let me = std::process::id();
        let (maps, alone) = files_under(me, &layout).unwrap();
        // The loaded image and the runtime image `unload` goes back to: one
        // mapping each, shared by the four sandboxes.
        assert!(
            !maps.is_empty() && maps.len() <= 2,
            "one mapping per loaded blob, not one per sandbox: {maps:#?}"
        );
        for m in &maps {
            assert!(
                m.perms.starts_with('r') && !m.perms.contains('w'),
                "read-only: {m:#?}"
            );
            assert_eq!(
                m.usage.anonymous, 0,
                "no page copied out of the file: {m:#?}"
            );
            assert_eq!(m.usage.private_dirty, 0, "no page written: {m:#?}");
        }
        assert!(
            alone.rss >= 256,
            "the guests ran from the file's pages (resident through its mapping): {alone:?}"
        );

        // A second process with a sandbox of the same blob, called once.
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_memory-bench"));
        cmd.args(["child", "persisted", "1", layout.to_str().unwrap()]);
        let mut other = Staged::spawn(cmd).unwrap();
        let step = Duration::from_secs(120);
        other.wait_for(false, step, |l| l == "idle");
        other.send("go").unwrap();
        other.wait_for(false, step, |l| l == "called");
        let (_, theirs) = files_under(other.pid(), &layout).unwrap();
        let (_, beside) = files_under(me, &layout).unwrap();
        assert!(
            theirs.shared_clean > 0 && beside.shared_clean > 0,
            "the pages are shared between the processes: ours {beside:?}, theirs {theirs:?}"
        );
        // Every page both map counts half in each PSS.
        assert!(
            beside.pss * 4 <= beside.rss * 3,
            "our PSS of the blob drops well below its RSS: alone {alone:?}, beside {beside:?}"
        );
        assert_eq!(beside.anonymous + theirs.anonymous, 0);
        assert!(other.close_stdin(step).success());
        drop(sandboxes);
        let _ = std::fs::remove_dir_all(&dir);
    });
}

const WORKER_KEYS: usize = 3;

/// The worker in stdin mode on `config`, its pools loaded.
fn worker(config: &std::path::Path, step: Duration) -> Staged {
    let mut w = Staged::spawn(stdin_worker(&worker_bin(), config)).unwrap();
    w.wait_for(true, step, |l| l.contains("all sandbox pools loaded"));
    w
}

/// One event per key, each answered with a result.
fn one_event_per_key(w: &mut Staged, step: Duration) {
    for k in 0..WORKER_KEYS {
        w.send(&format!(
            "{{\"key\":\"bundle{k}\",\"event\":{{\"n\":{k}}}}}"
        ))
        .unwrap();
    }
    for _ in 0..WORKER_KEYS {
        let line = w.wait_for(false, step, |l| l.contains("\"key\""));
        assert!(line.contains("\"result\""), "{line}");
    }
}

#[test]
fn a_second_worker_on_a_warm_cache_adds_at_most_half_of_the_first() {
    within(Duration::from_secs(600), || {
        assert!(
            hyperlight_js_engine::hypervisor_available(),
            "this test needs a usable /dev/kvm (or /dev/mshv); none was found"
        );
        let step = Duration::from_secs(180);
        let dir = temp_dir("memory-worker");
        let cache = dir.join("cache");
        // Three keys of 64 KiB, default heaps, `[snapshots] dir = cache`.
        let config = bundle_config(&dir, "worker.toml", WORKER_KEYS, 64, false, Some(&cache));
        // A cold start fills the cache; the two measured workers load it.
        let filler = worker(&config, step);
        assert!(filler.close_stdin(step).success());

        let mut first = worker(&config, step);
        one_event_per_key(&mut first, step);
        let first_alone = rollup(first.pid()).unwrap();
        let exe_alone = executable(first.pid()).unwrap();
        let (_, first_files_alone) = files_under(first.pid(), &cache).unwrap();
        assert!(
            first_files_alone.rss >= 256 && first_files_alone.anonymous == 0,
            "the pools run from the cache's files, not from copies: {first_files_alone:?}"
        );

        let mut second = worker(&config, step);
        one_event_per_key(&mut second, step);
        let second_usage = rollup(second.pid()).unwrap();
        let first_beside = rollup(first.pid()).unwrap();
        let (_, first_files) = files_under(first.pid(), &cache).unwrap();
        let (_, second_files) = files_under(second.pid(), &cache).unwrap();
        assert!(
            second_files.rss >= 256 && second_files.anonymous == 0,
            "the second worker runs from the same files: {second_files:?}"
        );
        // Kernel semantics: a page mapped by two processes counts in full
        // in each one's RSS and half in each one's PSS.
        assert!(
            first_files.shared_clean > 0 && second_files.shared_clean > 0,
            "the cache's pages are shared: first {first_files:?}, second {second_files:?}"
        );
        assert!(
            second_files.pss * 4 <= second_files.rss * 3,
            "the second worker's PSS of the cache's files is split with the first: {second_files:?}"
        );
        // What the node holds more with the second worker: each mapped page
        // counts once in the sum of its mappers' PSS.
        let added = (first_beside.pss + second_usage.pss) as i64 - first_alone.pss as i64;
        // The executable is shared by any two processes of one binary, cache
        // or not: the same sums without its pages say what the cache does.
        let exe_added = (executable(first.pid()).unwrap().pss
            + executable(second.pid()).unwrap().pss) as i64
            - exe_alone.pss as i64;
        let added_rest = added - exe_added;
        let rest = (first_alone.pss - exe_alone.pss) as i64;
        eprintln!(
            "first alone {first_alone:?} (executable {exe_alone:?})\nsecond {second_usage:?}\nfirst beside it {first_beside:?}\n\
             added {added} KiB: {:.0} % of the first's RSS, {:.0} % of its PSS; besides the executable {added_rest} KiB, {:.0} % of the first's {rest} KiB",
            added as f64 * 100.0 / first_alone.rss as f64,
            added as f64 * 100.0 / first_alone.pss as f64,
            added_rest as f64 * 100.0 / rest as f64,
        );
        assert!(
            added * 2 <= first_alone.pss as i64,
            "the second worker adds {added} KiB, more than half of the first's {} KiB (PSS alone)",
            first_alone.pss
        );
        // And not only thanks to the shared executable: without the cache
        // (in-memory snapshots, anonymous) it adds all of this part again.
        assert!(
            added_rest * 2 <= rest,
            "besides the executable, the second worker adds {added_rest} KiB, more than half of the first's {rest} KiB"
        );
        assert!(first.close_stdin(step).success());
        assert!(second.close_stdin(step).success());
        let _ = std::fs::remove_dir_all(&dir);
    });
}
