//! Snapshot cache benchmark: start to ready of the worker (stdin mode, no
//! broker) with six ~320 KB handlers, each with its own heap size (so six
//! runtime inits and six compiles cold), with an empty `[snapshots] dir`
//! (cold) and with the cache it filled (warm), plus a start without any cache
//! as the baseline, all in the same run. Prints one table.
//!
//! ```text
//! cargo build --release -p hyperlight-js-worker
//! cargo run --release -p hyperlight-js-e2e --bin snapshot-cache-bench
//! ```
//! Environment: `BENCH_RUNS` (warm and baseline starts, default 3),
//! `BENCH_HANDLER_KB` (default 320), `BENCH_KEEP_DIR` (print and keep the directory).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::{Duration, Instant};

use hyperlight_js_e2e::{bundle_config, run_within, stdin_worker, temp_dir, worker_bin_beside};

const KEYS: usize = 6;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One start with one event per key: (pools loaded ms from the worker's own
/// log line, whole process ms).
fn start(config: &Path) -> (u64, u64) {
    let input = config.with_extension("jsonl");
    let events: String = (0..KEYS)
        .map(|k| format!("{{\"key\":\"bundle{k}\",\"event\":{{\"n\":{k}}}}}\n"))
        .collect();
    std::fs::write(&input, events).unwrap();
    let mut cmd = stdin_worker(&worker_bin_beside(), config);
    cmd.stdin(std::fs::File::open(&input).unwrap());
    let t = Instant::now();
    let out = run_within(cmd, Duration::from_secs(600));
    let total = t.elapsed().as_millis() as u64;
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let ok = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("\"result\""))
        .count();
    assert_eq!(ok, KEYS, "every key answers: {log}");
    let loaded = log
        .lines()
        .find(|l| l.contains("all sandbox pools loaded"))
        .and_then(|l| l.split("elapsed_ms=").nth(1))
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no pool load time in the log:\n{log}"));
    (loaded, total)
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn dir_bytes(p: &Path) -> u64 {
    std::fs::read_dir(p).map_or(0, |rd| {
        rd.flatten()
            .map(|e| {
                let m = e.metadata().unwrap();
                if m.is_dir() {
                    dir_bytes(&e.path())
                } else {
                    m.len()
                }
            })
            .sum()
    })
}

fn main() {
    let runs = env_usize("BENCH_RUNS", 3).max(1);
    let kb = env_usize("BENCH_HANDLER_KB", 320);
    let dir = temp_dir("snapshot-cache-bench");
    let cache = dir.join("cache");
    let plain = bundle_config(&dir, "plain.toml", KEYS, kb, true, None);
    let cached = bundle_config(&dir, "cached.toml", KEYS, kb, true, Some(&cache));
    let size = std::fs::metadata(dir.join("bundle0.js")).unwrap().len();

    let base: Vec<(u64, u64)> = (0..runs).map(|_| start(&plain)).collect();
    let cold = start(&cached);
    let disk = dir_bytes(&cache);
    let warm: Vec<(u64, u64)> = (0..runs).map(|_| start(&cached)).collect();

    let row = |name: &str, v: &[(u64, u64)]| {
        let loaded = median(v.iter().map(|r| r.0).collect());
        let total = median(v.iter().map(|r| r.1).collect());
        (name.to_string(), loaded, total, v.len())
    };
    let rows = [
        row("no cache (baseline)", &base),
        row("cold cache (init + compile + save)", &[cold]),
        row("warm cache (checked load)", &warm),
    ];
    let baseline = rows[0].1 as f64;
    println!(
        "\nworker start to ready, {KEYS} keys of {} KB each, six heap sizes, pool_size 2 ({runs} runs, medians)\n",
        size / 1024
    );
    println!("| start | pools loaded ms | process ms | vs baseline | runs |");
    println!("|---|---|---|---|---|");
    for (name, loaded, total, n) in &rows {
        println!(
            "| {name} | {loaded} | {total} | {:.0} % | {n} |",
            *loaded as f64 * 100.0 / baseline
        );
    }
    println!(
        "\ncache on disk: {:.1} MiB for {KEYS} keys",
        disk as f64 / (1 << 20) as f64
    );
    if std::env::var_os("BENCH_KEEP_DIR").is_some() {
        println!("kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
