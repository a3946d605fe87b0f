//! `[snapshots] dir` end to end (stdin mode, no broker): the first start
//! fills the cache, the second loads it (a log line and faster to ready), a
//! corrupted entry is rebuilt rather than used.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use hyperlight_js_e2e::*;
use serde_json::Value;

const EVENTS: &str =
    "{\"key\":\"count\",\"event\":{\"id\":1}}\n{\"key\":\"echo\",\"event\":{\"id\":2}}\n";

/// Runs the worker on `config` with EVENTS on stdin; returns the outcome
/// lines, the log and the time its pools took to load (its own log line).
fn start(config: &Path) -> (Vec<Value>, String, u64) {
    let input = config.with_file_name("events.jsonl");
    std::fs::write(&input, EVENTS).unwrap();
    let mut cmd = stdin_worker(&worker_bin(), config);
    cmd.stdin(std::fs::File::open(&input).unwrap());
    let out = run_within(cmd, Duration::from_secs(180));
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let loaded = log
        .lines()
        .find(|l| l.contains("all sandbox pools loaded"))
        .and_then(|l| l.split("elapsed_ms=").nth(1))
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no pool load time in the log:\n{log}"));
    (lines, log, loaded)
}

fn assert_outcomes(lines: &[Value]) {
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert_eq!(lines[0]["result"]["count"], 1, "{lines:#?}");
    assert_eq!(lines[1]["result"]["id"], 2, "{lines:#?}");
}

fn outcomes(log: &str, outcome: &str) -> usize {
    let (quoted, bare) = (
        format!("outcome=\"{outcome}\""),
        format!("outcome={outcome} "),
    );
    log.lines()
        .filter(|l| l.contains("snapshot cache lookup"))
        .filter(|l| l.contains(&quoted) || format!("{l} ").contains(&bare))
        .count()
}

fn entries(cache: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_warm_cache_is_used_and_a_corrupt_entry_is_rebuilt() {
    let dir = temp_dir("it-snapcache");
    let cache = dir.join("cache");
    // Two sizes: two runtime inits cold, none warm.
    let (config, _) = write_config(
        &dir,
        "",
        &[
            HandlerSpec::new("count", test_handler("counter.js")),
            HandlerSpec::new("echo", test_handler("echo.js")).with("heap_size = 16777216"),
        ],
    );
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml.push_str("\n[snapshots]\ndir = \"cache\"\n");
    std::fs::write(&config, toml).unwrap();

    let (lines, log, cold) = start(&config);
    assert_outcomes(&lines);
    assert_eq!(outcomes(&log, "miss"), 2, "{log}");
    assert_eq!(log.matches("snapshot cached").count(), 2, "{log}");
    assert_eq!(
        entries(&cache).len(),
        2,
        "no temporary left: {:?}",
        entries(&cache)
    );

    let (lines, log, warm) = start(&config);
    assert_outcomes(&lines);
    assert_eq!(outcomes(&log, "hit"), 2, "{log}");
    assert!(!log.contains("snapshot cached"), "{log}");
    eprintln!("pools loaded: cold {cold} ms, warm {warm} ms");
    assert!(
        warm < cold,
        "a warm start loads faster: cold {cold} ms, warm {warm} ms"
    );

    // Damage every memory image of one entry (new files: never in place).
    let entry = cache.join(&entries(&cache)[0]);
    for e in std::fs::read_dir(entry.join("blobs/sha256")).unwrap() {
        let path = e.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        if bytes.len() > 1 << 20 {
            let at = bytes.len() / 2;
            bytes[at] ^= 0xa5;
            let tmp = path.with_extension("tmp");
            std::fs::File::create(&tmp)
                .unwrap()
                .write_all(&bytes)
                .unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        }
    }
    let (lines, log, _) = start(&config);
    assert_outcomes(&lines);
    assert_eq!(outcomes(&log, "rebuild"), 1, "{log}");
    assert_eq!(outcomes(&log, "hit"), 1, "{log}");
    assert!(log.contains("ERR_SNAPSHOT_CORRUPT"), "{log}");
    assert_eq!(log.matches("snapshot cached").count(), 1, "{log}");

    let (lines, log, _) = start(&config);
    assert_outcomes(&lines);
    assert_eq!(outcomes(&log, "hit"), 2, "the rebuilt entry is used: {log}");
    let _ = std::fs::remove_dir_all(&dir);
}
