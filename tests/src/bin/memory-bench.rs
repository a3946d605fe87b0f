//! Memory benchmark: RSS and PSS (`/proc/<pid>/smaps_rollup`) of N sandboxes
//! made from one persisted snapshot against N made from an in-memory one (the
//! baseline), of a second process holding the same snapshot, and of the real
//! worker binary started twice on one `[snapshots] dir` (six ~320 KB handlers,
//! pool 2, stdin mode) against two workers without a cache (the baseline).
//! Every process is measured while the others of its row are alive. What a
//! second process adds to the node is the sum of both processes' PSS minus
//! the first one's alone (RSS counts shared pages in full in each process,
//! so it cannot show sharing); see worker/README.md, "Memory".
//!
//! ```text
//! cargo build --release -p hyperlight-js-worker
//! cargo run --release -p hyperlight-js-e2e --bin memory-bench
//! ```
//! Environment: `BENCH_SANDBOXES` (default `1,8,32`), `BENCH_HANDLER_KB`
//! (default 320), `BENCH_KEEP_DIR` (print and keep the directory).
//!
//! `memory-bench child SOURCE N PATH` is one engine process of the table
//! (also used by `tests/memory.rs`): SOURCE `fresh` builds the runtime,
//! compiles the handler file PATH and snapshots in memory; `persisted` loads
//! the layout PATH (checked, as the worker does). It builds N sandboxes,
//! prints `idle`, waits for a line on stdin, calls each sandbox once and
//! restores it, prints `called`, and exits when stdin closes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::BufRead as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hyperlight_js_e2e::memory::{Staged, Usage, executable, files_under, mib, rollup};
use hyperlight_js_e2e::{bundle_config, bundle_handler, stdin_worker, temp_dir, worker_bin_beside};
use hyperlight_js_engine::{CallOptions, LoadedJSSandbox, SandboxBuilder, Snapshot};
use serde_json::json;

const KEYS: usize = 6;
/// The key and tag of the engine rows' snapshot.
const KEY: &str = "bundle0";
const TAG: &str = "app";
const STEP: Duration = Duration::from_secs(600);

fn child(args: &[String]) {
    let [source, n, path] = args else {
        panic!("usage: memory-bench child fresh|persisted N PATH");
    };
    let n: usize = n.parse().expect("N");
    let (snapshot, mut sandboxes) = match source.as_str() {
        "fresh" => {
            let code = std::fs::read_to_string(path).expect("handler file");
            let mut js = SandboxBuilder::new()
                .build()
                .unwrap()
                .load_runtime()
                .unwrap();
            js.add_handler(KEY, &code).unwrap();
            let mut first = js.get_loaded_sandbox().unwrap();
            let snapshot = first.snapshot().unwrap();
            // The sandbox the snapshot was taken in is the first, as in the worker.
            let first = (n > 0).then_some(first);
            (snapshot, first.into_iter().collect::<Vec<_>>())
        }
        "persisted" => {
            let persisted = Snapshot::load(path, TAG).unwrap();
            let snapshot = SandboxBuilder::new()
                .build_from_snapshot(&persisted)
                .unwrap()
                .into_snapshot()
                .unwrap();
            (snapshot, Vec::new())
        }
        other => panic!("unknown source {other}"),
    };
    while sandboxes.len() < n {
        sandboxes.push(LoadedJSSandbox::from_snapshot(&snapshot).unwrap());
    }
    println!("idle");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).unwrap();
    for sb in &mut sandboxes {
        let out = sb
            .call_handler(KEY, &json!({"n": 1}), &CallOptions::default())
            .unwrap();
        assert_eq!(out["key"], 0, "{out}");
        sb.restore(&snapshot).unwrap();
    }
    println!("called");
    while std::io::stdin().lock().read_line(&mut line).unwrap_or(0) > 0 {}
}

fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

/// One measured process of a row.
struct Row {
    what: String,
    idle: Usage,
    called: Usage,
    /// The snapshot files' mappings after the calls.
    files: Usage,
    /// The executable's mappings after the calls.
    exe: Usage,
}

/// An engine child of this binary, at its `idle` stage.
fn engine_child(source: &str, n: usize, path: &Path) -> Staged {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["child", source, &n.to_string(), path.to_str().unwrap()])
        .env("RUST_LOG", "warn");
    let mut c = Staged::spawn(cmd).unwrap();
    c.wait_for(false, STEP, |l| l == "idle");
    c
}

fn call(c: &mut Staged) {
    c.send("go").unwrap();
    c.wait_for(false, STEP, |l| l == "called");
}

fn files(pid: u32, dir: Option<&Path>) -> Usage {
    dir.map_or_else(Usage::default, |d| files_under(pid, d).unwrap().1)
}

/// Measures a process of a row now.
fn measure(what: String, c: &Staged, idle: Usage, dir: Option<&Path>) -> Row {
    Row {
        what,
        idle,
        called: rollup(c.pid()).unwrap(),
        files: files(c.pid(), dir),
        exe: executable(c.pid()).unwrap(),
    }
}

/// Runs one engine process to its `called` stage and measures it.
fn engine_row(what: String, source: &str, n: usize, path: &Path, dir: Option<&Path>) -> Row {
    let mut c = engine_child(source, n, path);
    let idle = rollup(c.pid()).unwrap();
    call(&mut c);
    let row = measure(what, &c, idle, dir);
    assert!(c.close_stdin(STEP).success());
    row
}

/// A pair of processes: the first measured alone, then both.
struct Pair {
    first_alone: Row,
    first_with: Row,
    second: Row,
}

impl Pair {
    /// What the second process adds to the node: the sum of both processes'
    /// PSS minus the first's alone (a page both map is counted once).
    fn added(&self) -> i64 {
        (self.first_with.called.pss + self.second.called.pss) as i64
            - self.first_alone.called.pss as i64
    }

    /// `added` as a percentage of the first's RSS alone.
    fn ratio(&self) -> f64 {
        self.added() as f64 * 100.0 / self.first_alone.called.rss as f64
    }

    /// `added` as a percentage of the first's PSS alone (what the node held
    /// for it: the honest denominator, PSS <= RSS).
    fn ratio_pss(&self) -> f64 {
        self.added() as f64 * 100.0 / self.first_alone.called.pss as f64
    }

    /// What the second adds besides the executable's pages (which any second
    /// process of the same binary shares, cache or not), as a percentage of
    /// the first's PSS alone besides its executable.
    fn ratio_no_exe(&self) -> f64 {
        let exe_added = (self.first_with.exe.pss + self.second.exe.pss) as i64
            - self.first_alone.exe.pss as i64;
        let rest = self.first_alone.called.pss - self.first_alone.exe.pss;
        (self.added() - exe_added) as f64 * 100.0 / rest as f64
    }
}

/// Two processes from `spawn`, each exercised once: the first measured alone,
/// then the second, then the first beside it; `noun` names them in the rows.
fn pair(
    label: &str,
    noun: &str,
    dir: Option<&Path>,
    spawn: impl Fn() -> Staged,
    exercise: impl Fn(&mut Staged),
) -> Pair {
    let mut a = spawn();
    let a_idle = rollup(a.pid()).unwrap();
    exercise(&mut a);
    let first_alone = measure(format!("{label}: first {noun}, alone"), &a, a_idle, dir);
    let mut b = spawn();
    let b_idle = rollup(b.pid()).unwrap();
    exercise(&mut b);
    let second = measure(format!("{label}: second {noun}"), &b, b_idle, dir);
    let first_with = measure(format!("{label}: first {noun}, beside it"), &a, a_idle, dir);
    assert!(a.close_stdin(STEP).success());
    assert!(b.close_stdin(STEP).success());
    Pair {
        first_alone,
        first_with,
        second,
    }
}

fn engine_pair(label: &str, source: &str, n: usize, path: &Path, dir: Option<&Path>) -> Pair {
    pair(
        label,
        "process",
        dir,
        || engine_child(source, n, path),
        call,
    )
}

/// A worker in stdin mode, its pools loaded.
fn worker(config: &Path) -> Staged {
    let mut w = Staged::spawn(stdin_worker(&worker_bin_beside(), config)).unwrap();
    w.wait_for(true, STEP, |l| l.contains("all sandbox pools loaded"));
    w
}

/// One event per key; waits for the six outcomes.
fn worker_events(w: &mut Staged) {
    for k in 0..KEYS {
        w.send(&format!(
            "{{\"key\":\"bundle{k}\",\"event\":{{\"n\":{k}}}}}"
        ))
        .unwrap();
    }
    for _ in 0..KEYS {
        let line = w.wait_for(false, STEP, |l| l.contains("\"key\""));
        assert!(line.contains("\"result\""), "{line}");
    }
}

fn worker_pair(label: &str, config: &Path, cache: Option<&Path>) -> Pair {
    pair(label, "worker", cache, || worker(config), worker_events)
}

/// A pair's rows in table order.
fn pair_rows(p: &Pair) -> [&Row; 3] {
    [&p.first_alone, &p.second, &p.first_with]
}

fn print_rows(rows: &[&Row]) {
    println!(
        "| process | RSS idle | PSS idle | RSS after calls | PSS after calls | Shared_Clean | Anonymous | snapshot files RSS / PSS | executable RSS / PSS |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} / {} | {} / {} |",
            r.what,
            mib(r.idle.rss),
            mib(r.idle.pss),
            mib(r.called.rss),
            mib(r.called.pss),
            mib(r.called.shared_clean),
            mib(r.called.anonymous),
            mib(r.files.rss),
            mib(r.files.pss),
            mib(r.exe.rss),
            mib(r.exe.pss),
        );
    }
}

fn print_added(label: &str, p: &Pair) {
    println!(
        "| {label} | {} | {} | {} | {} | {:.0} % | {:.0} % | {:.0} % |",
        mib(p.first_alone.called.rss),
        mib(p.first_alone.called.pss),
        mib(p.second.called.private()),
        mib(p.added().max(0) as u64),
        p.ratio(),
        p.ratio_pss(),
        p.ratio_no_exe(),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        return child(&args[2..]);
    }
    assert!(
        hyperlight_js_engine::hypervisor_available(),
        "this benchmark needs a usable /dev/kvm (or /dev/mshv)"
    );
    let counts = env_list("BENCH_SANDBOXES", "1,8,32");
    let kb = std::env::var("BENCH_HANDLER_KB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(320);
    let dir = temp_dir("memory-bench");
    let handler = dir.join("bundle0.js");
    std::fs::write(&handler, bundle_handler(0, kb)).unwrap();
    let layout = dir.join("layout");
    {
        let mut js = SandboxBuilder::new()
            .build()
            .unwrap()
            .load_runtime()
            .unwrap();
        js.add_handler(KEY, &std::fs::read_to_string(&handler).unwrap())
            .unwrap();
        let mut sb = js.get_loaded_sandbox().unwrap();
        sb.snapshot().unwrap().save(&layout, TAG).unwrap();
    }

    // (a) The engine: N sandboxes in one process.
    let mut rows = vec![engine_row(
        "no sandbox (snapshot loaded)".into(),
        "persisted",
        0,
        &layout,
        Some(&layout),
    )];
    for &n in &counts {
        rows.push(engine_row(
            format!("{n} from an in-memory snapshot (baseline)"),
            "fresh",
            n,
            &handler,
            None,
        ));
        rows.push(engine_row(
            format!("{n} from the persisted snapshot"),
            "persisted",
            n,
            &layout,
            Some(&layout),
        ));
    }
    let pair_n = counts
        .iter()
        .copied()
        .find(|&n| n == 8)
        .unwrap_or(counts[0]);
    let engine_fresh = engine_pair(
        &format!("{pair_n}, in-memory"),
        "fresh",
        pair_n,
        &handler,
        None,
    );
    let engine_persisted = engine_pair(
        &format!("{pair_n}, persisted"),
        "persisted",
        pair_n,
        &layout,
        Some(&layout),
    );

    // (b) The worker, twice on one node.
    let cache = dir.join("cache");
    let plain = bundle_config(&dir, "plain.toml", KEYS, kb, true, None);
    let cached = bundle_config(&dir, "cached.toml", KEYS, kb, true, Some(&cache));
    let no_cache = worker_pair("no cache", &plain, None);
    // Fills the cache (a cold start), then two warm workers.
    let filler = worker(&cached);
    assert!(filler.close_stdin(STEP).success());
    let warm = worker_pair("warm cache", &cached, Some(&cache));

    println!(
        "\nMiB from /proc/<pid>/smaps_rollup; handler {kb} KB; \"after calls\": one call + restore per sandbox (engine) or one event per key (worker)\n"
    );
    println!("(a) engine, one process\n");
    print_rows(&rows.iter().collect::<Vec<_>>());
    println!("\n(a) engine, two processes with {pair_n} sandboxes each\n");
    print_rows(
        &pair_rows(&engine_fresh)
            .into_iter()
            .chain(pair_rows(&engine_persisted))
            .collect::<Vec<_>>(),
    );
    println!(
        "\n(b) worker, {KEYS} keys of {kb} KB, pool_size 2 ({} sandboxes), two processes on one node\n",
        KEYS * 2
    );
    print_rows(
        &pair_rows(&no_cache)
            .into_iter()
            .chain(pair_rows(&warm))
            .collect::<Vec<_>>(),
    );
    println!(
        "\nwhat the second process adds (sum of both PSS minus the first's alone), after calls\n"
    );
    println!(
        "| pair | first's RSS | first's PSS | second's private (USS) | second adds | of first's RSS | of first's PSS | of first's PSS, executable aside |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    print_added(
        &format!("engine, {pair_n} sandboxes, in-memory snapshot"),
        &engine_fresh,
    );
    print_added(
        &format!("engine, {pair_n} sandboxes, persisted snapshot"),
        &engine_persisted,
    );
    print_added("worker, no cache", &no_cache);
    print_added("worker, warm cache", &warm);
    println!(
        "\ntarget: the second worker adds <= 50 % of the first one's RSS: {:.0} % of its RSS, {:.0} % of its PSS ({}); without the cache {:.0} % / {:.0} %",
        warm.ratio(),
        warm.ratio_pss(),
        if warm.ratio_pss() <= 50.0 {
            "met"
        } else {
            "missed"
        },
        no_cache.ratio(),
        no_cache.ratio_pss(),
    );
    if std::env::var_os("BENCH_KEEP_DIR").is_some() {
        println!("kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
