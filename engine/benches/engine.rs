//! The engine benchmark: prints one markdown table.
//!
//! Every figure is taken in the same run, next to its baseline: the same
//! guest call and restore made straight through hyperlight-host with no
//! engine layer. Run with `cargo bench -p hyperlight-js-engine`.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod emulated;

use std::time::{Duration, Instant};

use hyperlight_host::sandbox::snapshot::Snapshot as HlSnapshot;
use hyperlight_js_abi::{guest_fn, host_fn};
use hyperlight_js_engine::{CallOptions, LoadedJSSandbox, SandboxBuilder, SandboxConfig};
use std::sync::Arc;

const ECHO: &str = "function handler(event) { return event; }";
const EVENT: &str = r#"{"name":"World","n":42,"tags":["a","b"]}"#;

struct Stats(Vec<Duration>);

impl Stats {
    fn measure(n: usize, mut f: impl FnMut()) -> Self {
        f(); // warm-up
        let mut v: Vec<Duration> = (0..n)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect();
        v.sort();
        Self(v)
    }
    fn pct(&self, p: f64) -> Duration {
        self.0[((self.0.len() - 1) as f64 * p).round() as usize]
    }
    fn p50(&self) -> Duration {
        self.pct(0.5)
    }
    fn p99(&self) -> Duration {
        self.pct(0.99)
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn row(name: &str, s: &Stats, baseline: Option<&Stats>) {
    let ratio = baseline.map_or(String::from("—"), |b| {
        format!("{:.2}×", s.p50().as_secs_f64() / b.p50().as_secs_f64())
    });
    println!("| {name} | {} | {} | {ratio} |", ms(s.p50()), ms(s.p99()));
}

fn once(name: &str, d: Duration) {
    println!("| {name} | {} | — | — |", ms(d));
}

/// The same guest, driven through hyperlight-host only.
fn raw_sandbox(config: &SandboxConfig) -> (hyperlight_host::Sandbox, Arc<HlSnapshot>) {
    let mut sb = hyperlight_host::SandboxBuilder::from_bytes(hyperlight_js_engine::GUEST)
        .heap_size(config.heap_size)
        .scratch_size(64 << 20)
        .h2g_buffer_size((config.input_buffer_size + 16384) as usize)
        .g2h_buffer_size((config.output_buffer_size + 16384) as usize)
        .host_function(host_fn::NOW_MICROS, || -> u64 { 0 })
        .host_function(host_fn::CONSOLE, |_: i32, _: String| -> i32 { 0 })
        .host_function(host_fn::CALL, |_: String, _: String, _: String| -> String {
            String::new()
        })
        .build()
        .expect("raw build");
    let _: String = sb
        .call(
            guest_fn::LOAD_RUNTIME,
            (
                960u64 << 10,
                28u64 << 20,
                config.output_buffer_size,
                String::new(),
                config.guest_mode == hyperlight_js_engine::GuestMode::User,
            ),
        )
        .expect("raw load");
    let _: String = sb
        .call(
            guest_fn::REGISTER_HANDLER,
            ("echo".to_string(), ECHO.to_string()),
        )
        .expect("raw register");
    let snap = sb.snapshot().expect("raw snapshot");
    (sb, snap)
}

/// The engine's echo call, made straight through hyperlight-host.
fn raw_echo(raw: &mut hyperlight_host::Sandbox) {
    let args = (
        EVENT_KEY.to_string(),
        EVENT.to_string(),
        "{}".to_string(),
        false,
        0u64,
        0u64,
        0u64,
        Vec::<u8>::new(),
    );
    let _: String = raw.call(guest_fn::CALL_HANDLER, args).expect("raw call");
}

const EVENT_KEY: &str = "echo";

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    assert!(
        hyperlight_js_engine::hypervisor_available(),
        "the benchmark needs /dev/kvm"
    );
    let n: usize = std::env::var("BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let config = SandboxConfig::default();
    // BENCH_ONLY=entries prints only the kernel-entry and emulated-instruction tables.
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "entries") {
        kernel_entries(n);
        println!();
        emulated_instructions(n);
        return;
    }

    println!("| operation | p50 ms | p99 ms | vs baseline |");
    println!("|---|---|---|---|");

    let t = Instant::now();
    let proto = SandboxBuilder::new().build().expect("build");
    once("build (new micro-VM)", t.elapsed());
    let t = Instant::now();
    let mut js = proto.load_runtime().expect("load_runtime");
    once("load_runtime (QuickJS init)", t.elapsed());
    js.add_handler("echo", ECHO).expect("add");
    let t = Instant::now();
    let mut sb = js.get_loaded_sandbox().expect("get_loaded_sandbox");
    once("get_loaded_sandbox (1 handler)", t.elapsed());
    let snap = sb.snapshot().expect("snapshot");

    let from_snap = Stats::measure(n.min(20), || {
        drop(LoadedJSSandbox::from_snapshot(&snap).expect("from snapshot"))
    });
    row("sandbox from snapshot", &from_snap, None);

    // Baselines: the same guest call and restore straight through hyperlight-host.
    let (mut raw, raw_snap) = raw_sandbox(&config);
    let raw_call = Stats::measure(n, || raw_echo(&mut raw));
    let raw_restore = Stats::measure(n, || raw.restore(raw_snap.clone()).expect("raw restore"));
    let raw_call_restore = Stats::measure(n, || {
        raw_echo(&mut raw);
        raw.restore(raw_snap.clone()).expect("raw restore");
    });
    row(
        "baseline: hyperlight-host call (echo, no gc)",
        &raw_call,
        None,
    );
    row("baseline: hyperlight-host restore", &raw_restore, None);
    row(
        "baseline: hyperlight-host call + restore",
        &raw_call_restore,
        None,
    );

    let no_gc = CallOptions::default().gc(false);
    let call = |sb: &mut LoadedJSSandbox, o: &CallOptions| {
        sb.call_handler_json("echo", EVENT, o).expect("call");
    };
    let echo_no_gc = Stats::measure(n, || call(&mut sb, &no_gc));
    row("echo call, gc off", &echo_no_gc, Some(&raw_call));
    let echo_gc = Stats::measure(n, || call(&mut sb, &CallOptions::default()));
    row("echo call, gc on", &echo_gc, Some(&raw_call));
    let wall = no_gc.clone().wall_clock_timeout(Duration::from_secs(10));
    let echo_wall = Stats::measure(n, || call(&mut sb, &wall));
    row(
        "echo call + wall-clock monitor",
        &echo_wall,
        Some(&echo_no_gc),
    );
    let cpu = no_gc.clone().cpu_timeout(Duration::from_secs(10));
    let echo_cpu = Stats::measure(n, || call(&mut sb, &cpu));
    row("echo call + CPU monitor", &echo_cpu, Some(&echo_no_gc));
    let both = wall.clone().cpu_timeout(Duration::from_secs(10));
    let echo_both = Stats::measure(n, || call(&mut sb, &both));
    row("echo call + both monitors", &echo_both, Some(&echo_no_gc));

    let snapshot = Stats::measure(n.min(20), || {
        call(&mut sb, &no_gc); // dirty the sandbox so the snapshot is real work
        drop(sb.snapshot().expect("snapshot"));
    });
    row("echo call + snapshot", &snapshot, Some(&echo_no_gc));
    let restore = Stats::measure(n, || sb.restore(&snap).expect("restore"));
    row("restore", &restore, Some(&raw_restore));
    let call_restore = Stats::measure(n, || {
        call(&mut sb, &no_gc);
        sb.restore(&snap).expect("restore");
    });
    row(
        "call + restore (worker path)",
        &call_restore,
        Some(&raw_call_restore),
    );

    // 200 loaded sandboxes with default sizes, alive at once.
    let before = rss_mib();
    let t = Instant::now();
    let mut many: Vec<LoadedJSSandbox> = (0..200)
        .map(|_| LoadedJSSandbox::from_snapshot(&snap).expect("from snapshot"))
        .collect();
    let created = t.elapsed();
    let rss_idle = rss_mib() - before;
    for sb in &mut many {
        call(sb, &no_gc);
    }
    let rss_called = rss_mib() - before;
    println!();
    println!(
        "200 loaded sandboxes (default sizes): created in {:.1} s; RSS +{:.0} MiB idle, +{:.0} MiB after one call each (target < 2048 MiB)",
        created.as_secs_f64(),
        rss_idle,
        rss_called
    );
    drop(many);
    println!(
        "engine overhead: call {:+.1}% (target ≤ 10%), restore {:+.1}% (target ≤ 20%), call+restore {:+.1}%",
        (echo_no_gc.p50().as_secs_f64() / raw_call.p50().as_secs_f64() - 1.0) * 100.0,
        (restore.p50().as_secs_f64() / raw_restore.p50().as_secs_f64() - 1.0) * 100.0,
        (call_restore.p50().as_secs_f64() / raw_call_restore.p50().as_secs_f64() - 1.0) * 100.0,
    );

    println!();
    guest_modes(n);
    println!();
    kernel_entries(n);
    println!();
    emulated_instructions(n);
}

/// The issue's comparison handler: the total of an order's 20 line items.
const ORDER: &str = "function handler(o) { let t = 0; for (const l of o.items) t += l.qty * l.cents; return { id: o.id, total: t }; }";

fn order_event() -> String {
    let items: Vec<String> = (0..20)
        .map(|i| {
            format!(
                r#"{{"sku":"sku-{i}","qty":{},"cents":{}}}"#,
                1 + i % 3,
                199 + 10 * i
            )
        })
        .collect();
    format!(r#"{{"id":"order-1","items":[{}]}}"#, items.join(","))
}

/// A sandbox of its own (default settings) with the `echo` and `order` handlers.
fn echo_and_order() -> LoadedJSSandbox {
    let mut js = SandboxBuilder::new()
        .build()
        .expect("build")
        .load_runtime()
        .expect("load");
    js.add_handler("echo", ECHO).expect("add");
    js.add_handler("order", ORDER).expect("add");
    js.get_loaded_sandbox().expect("loaded")
}

/// Kernel entries of a call right after a restore (the worker's path) and of
/// a warm call, per kind, with the time the guest kernel's handler spends on
/// each kind; the rest of an entry's cost (exception delivery, the trap
/// path's register save and restore) is what remains of the call's extra time.
fn kernel_entries(n: usize) {
    let no_gc = CallOptions::default().gc(false);
    let mut sb = echo_and_order();
    // The first query turns counting on; the snapshot keeps it on.
    sb.guest_kernel_stats().expect("stats");
    let snap = sb.snapshot().expect("snapshot");
    let order = order_event();
    println!("Kernel entries per call (guest user mode), medians of {n} calls:");
    println!();
    println!("| handler | kind | warm: count | after a restore: count | handler µs per entry |");
    println!("|---|---|---|---|---|");
    let mut summary = Vec::new();
    // The replayed and the faulted calls alternate, so that the machine's
    // load drifts over both alike.
    for (key, event) in [("echo", EVENT), ("order", order.as_str())] {
        let kinds = hyperlight_js_abi::KERNEL_ENTRY_KINDS;
        let mut runs = [Samples::new(kinds.len()), Samples::new(kinds.len())];
        // As in the traced tables: the working set learned and complete first.
        for replay in [true, true, true, true, true] {
            sb.replay_working_sets(replay);
            sb.restore(&snap).expect("restore");
            sb.call_handler_json(key, event, &no_gc).expect("call");
        }
        for _ in 0..n {
            for (replay, samples) in [false, true].into_iter().zip(runs.iter_mut()) {
                sb.replay_working_sets(replay);
                sb.restore(&snap).expect("restore");
                let t = Instant::now();
                sb.call_handler_json(key, event, &no_gc).expect("call");
                samples.cold_t.push(t.elapsed());
                for e in sb.guest_kernel_stats().expect("stats") {
                    let i = kinds.iter().position(|k| *k == e.kind).expect("known kind");
                    samples.cold_counts[i].push(e.count as f64);
                    if e.count > 0 {
                        samples.cold_micros[i].push(e.handler_micros / e.count as f64);
                    }
                }
                let t = Instant::now();
                sb.call_handler_json(key, event, &no_gc).expect("call");
                samples.warm_t.push(t.elapsed());
                for e in sb.guest_kernel_stats().expect("stats") {
                    let i = kinds.iter().position(|k| *k == e.kind).expect("known kind");
                    samples.warm_counts[i].push(e.count as f64);
                }
            }
        }
        let median = |v: &mut Vec<f64>| {
            if v.is_empty() {
                return 0.0;
            }
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        for (replay, mut samples) in [false, true].into_iter().zip(runs) {
            let key_label = if replay {
                format!("{key}, working set replayed")
            } else {
                key.to_string()
            };
            let (mut cold_entries, mut warm_entries, mut handler_ms) = (0.0, 0.0, 0.0);
            for (i, kind) in kinds.iter().enumerate() {
                let (w, c, us) = (
                    median(&mut samples.warm_counts[i]),
                    median(&mut samples.cold_counts[i]),
                    median(&mut samples.cold_micros[i]),
                );
                warm_entries += w;
                cold_entries += c;
                handler_ms += c * us / 1e3;
                println!("| {key_label} | {kind} | {w} | {c} | {us:.1} |");
            }
            let (warm, cold) = (
                Stats(sorted(samples.warm_t)).p50(),
                Stats(sorted(samples.cold_t)).p50(),
            );
            summary.push((
                key_label,
                warm,
                cold,
                warm_entries,
                cold_entries,
                handler_ms,
            ));
        }
    }
    println!();
    println!(
        "| handler | warm call p50 ms | call after a restore p50 ms | entries warm / after | kernel handlers ms | rest per extra entry µs |"
    );
    println!("|---|---|---|---|---|---|");
    for (key, warm, cold, we, ce, hms) in summary {
        let extra = cold.as_secs_f64() * 1e3 - warm.as_secs_f64() * 1e3 - hms;
        let per = if ce > we {
            extra * 1e3 / (ce - we)
        } else {
            0.0
        };
        println!(
            "| {key} | {} | {} | {we} / {ce} | {hms:.2} | {per:.0} |",
            ms(warm),
            ms(cold)
        );
    }
}

/// Guest-kernel instructions KVM emulates per call (kvm-pvm emulates every
/// CPL0 instruction, at ~1-2 µs each): a warm call, a call right after a
/// restore with and without the working-set replay, and where the latter go.
/// Its own sandbox, with the kernel's entry counters off as in production.
fn emulated_instructions(n: usize) {
    let title = "Emulated guest-kernel instructions per call (kvm:kvm_emulate_insn)";
    let mut tracer = match emulated::Tracer::open() {
        Ok(t) => t,
        Err(why) => {
            println!("{title}: skipped, {why}.");
            return;
        }
    };
    let no_gc = CallOptions::default().gc(false);
    let mut sb = echo_and_order();
    let snap = sb.snapshot().expect("snapshot");
    let order = order_event();
    // Per handler: warm counts, and per replay setting the counts and the
    // merged trace of the calls after a restore.
    let mut results = Vec::new();
    let traced = (|| -> Result<(), String> {
        for (key, event) in [("echo", EVENT), ("order", order.as_str())] {
            let mut warm = Vec::new();
            let mut warm_trace = emulated::Trace::default();
            let mut cold: [(Vec<emulated::Counts>, emulated::Trace); 2] = Default::default();
            // The first call of a handler after a restore records its working
            // set, and the next few that replay it add the faults they still
            // take, until one takes none: traced before that, the means
            // below would carry those calls' faults, which no later call has.
            for replay in [false, true, true, true, true, true] {
                sb.replay_working_sets(replay);
                sb.restore(&snap).expect("restore");
                sb.call_handler_json(key, event, &no_gc).expect("call");
            }
            // Alternated, as in the kernel-entry tables.
            for _ in 0..n {
                for (replay, (counts, merged)) in [false, true].into_iter().zip(cold.iter_mut()) {
                    sb.replay_working_sets(replay);
                    sb.restore(&snap).expect("restore");
                    let t = tracer.trace(|| {
                        sb.call_handler_json(key, event, &no_gc).expect("call");
                    })?;
                    counts.push(t.counts());
                    merged.merge(t);
                    let t = tracer.trace(|| {
                        sb.call_handler_json(key, event, &no_gc).expect("call");
                    })?;
                    // After a faulted call the next one also opens the page
                    // of the second receive buffer, which a replay opens
                    // with the rest: warm means after the replayed one.
                    if replay {
                        warm.push(t.counts());
                        warm_trace.merge(t);
                    }
                }
            }
            results.push((key, warm, cold, warm_trace));
        }
        Ok(())
    })();
    if let Err(why) = traced {
        println!("{title}: skipped, {why}.");
        return;
    }
    drop(tracer);
    let median = |v: &[emulated::Counts], i: usize| {
        let mut v: Vec<u64> = v.iter().map(|c| c[i]).collect();
        v.sort();
        v[v.len() / 2]
    };
    // One table: per handler, a cell of the warm calls', the faulted ones'
    // and the replayed ones' medians.
    let table = |cell: &dyn Fn(&[emulated::Counts]) -> String| {
        println!(
            "| handler | warm call | call after a restore | after a restore, working set replayed |"
        );
        println!("|---|---|---|---|");
        for (key, warm, [(plain, _), (replayed, _)], _) in &results {
            println!(
                "| {key} | {} | {} | {} |",
                cell(warm),
                cell(plain),
                cell(replayed)
            );
        }
    };
    println!("{title}, medians of {n} calls:");
    println!();
    table(&|v| median(v, 0).to_string());
    println!();
    println!(
        "And KVM's own work for them, in its shadow page tables (which the guest never sees; kvm-pvm has no EPT): shadow faults served / shadow entries set (with prefetches) / shadow pages looked up / walks of the guest's tables / shadow pages zapped / synced / let go out of sync, medians:"
    );
    println!();
    table(&|v| {
        (1..=emulated::COUNTED.len())
            .map(|i| median(v, i).to_string())
            .collect::<Vec<_>>()
            .join(" / ")
    });

    let symbols = match emulated::Symbols::new(hyperlight_js_engine::GUEST) {
        Ok(s) => s,
        Err(why) => {
            println!();
            println!("Per-function breakdown skipped: {why}.");
            return;
        }
    };
    let columns: Vec<(String, &emulated::Trace)> = results
        .iter()
        .flat_map(|(key, _, [(_, plain), (_, replayed)], _)| {
            [
                (key.to_string(), plain),
                (format!("{key}, replayed"), replayed),
            ]
        })
        .collect();
    let offset = match symbols.load_offset(columns[0].1) {
        Ok(o) => o,
        Err(why) => {
            println!();
            println!("Per-function breakdown skipped: {why}.");
            return;
        }
    };
    let per: Vec<Vec<(String, f64)>> = columns
        .iter()
        .map(|(_, t)| symbols.per_function(t, offset, n))
        .collect();
    // BENCH_RIPS=<function>[,<function>...]: those functions' instructions
    // one by one (ELF address, count and µs per call, bytes), per column, to find
    // their hot paths.
    let rips_of = std::env::var("BENCH_RIPS").unwrap_or_default();
    // The warm calls too (BENCH_RIPS=all: every function, warm calls only).
    let warm_columns: Vec<(String, &emulated::Trace)> = results
        .iter()
        .map(|(key, _, _, w)| (format!("{key}, warm"), w))
        .collect();
    for func in rips_of.split(',').filter(|f| !f.is_empty()) {
        for (name, t) in columns.iter().chain(&warm_columns) {
            println!();
            println!("{func} in {name}, per call:");
            let mut rips: Vec<_> = t
                .by_rip
                .iter()
                .filter(|(rip, _)| {
                    func == "all" && name.ends_with("warm")
                        || symbols.name(rip.wrapping_sub(offset)) == func
                })
                .collect();
            rips.sort_by_key(|(rip, _)| **rip);
            for (rip, r) in rips {
                println!(
                    "  {:#x} {:>7.1} {:>8.1} µs {:02x?}",
                    rip.wrapping_sub(offset),
                    r.count as f64 / n as f64,
                    r.micros / n as f64,
                    r.bytes
                );
            }
        }
    }
    println!();
    println!(
        "Where the calls after a restore spend them: instructions per call (means of {n}), top guest functions (guest rip = ELF vaddr + {offset:#x}):"
    );
    println!();
    function_table(&columns, &per, |col| {
        col.iter().map(|(_, v)| v).sum::<f64>()
    });
    let per_micros: Vec<Vec<(String, f64)>> = columns
        .iter()
        .map(|(_, t)| symbols.per_function_micros(t, offset, n))
        .collect();
    println!();
    println!(
        "And the time the emulator took for them, µs per call (means of {n}; from the tracepoint's timestamps, each instruction charged until the next event, except those that leave the emulator: `iretq`, `out`, `hlt`; a string instruction such as `rep movsq` costs ~1 µs per element):"
    );
    println!();
    function_table(&columns, &per_micros, |col| {
        col.iter().map(|(_, v)| v).sum::<f64>()
    });
}

/// A table of the top 12 functions by their sum over `columns`, one cell per
/// column from `per`, then the rest and `total` of each column.
fn function_table(
    columns: &[(String, &emulated::Trace)],
    per: &[Vec<(String, f64)>],
    total: impl Fn(&[(String, f64)]) -> f64,
) {
    let mut ranked: Vec<(String, f64)> = Vec::new();
    for (name, v) in per.iter().flatten() {
        match ranked.iter_mut().find(|(r, _)| r == name) {
            Some(r) => r.1 += v,
            None => ranked.push((name.clone(), *v)),
        }
    }
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked.truncate(12);
    let cell = |col: &[(String, f64)], name: &str| {
        col.iter().find(|(f, _)| f == name).map_or(0.0, |(_, v)| *v)
    };
    println!(
        "| function | {} |",
        columns
            .iter()
            .map(|(c, _)| c.as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|{}", "---|".repeat(columns.len()));
    for (name, _) in &ranked {
        let cells: Vec<String> = per
            .iter()
            .map(|col| format!("{:.0}", cell(col, name)))
            .collect();
        println!("| `{name}` | {} |", cells.join(" | "));
    }
    let rest: Vec<String> = per
        .iter()
        .map(|col| {
            let top: f64 = ranked.iter().map(|(name, _)| cell(col, name)).sum();
            format!("{:.0}", total(col) - top)
        })
        .collect();
    println!("| everything else | {} |", rest.join(" | "));
    let totals: Vec<String> = per.iter().map(|col| format!("{:.0}", total(col))).collect();
    println!("| total | {} |", totals.join(" | "));
}

/// One variant's samples in [`kernel_entries`], per kind of entry.
struct Samples {
    warm_counts: Vec<Vec<f64>>,
    cold_counts: Vec<Vec<f64>>,
    cold_micros: Vec<Vec<f64>>,
    warm_t: Vec<Duration>,
    cold_t: Vec<Duration>,
}

impl Samples {
    fn new(kinds: usize) -> Self {
        Self {
            warm_counts: vec![Vec::new(); kinds],
            cold_counts: vec![Vec::new(); kinds],
            cold_micros: vec![Vec::new(); kinds],
            warm_t: Vec::new(),
            cold_t: Vec::new(),
        }
    }
}

fn sorted(mut v: Vec<Duration>) -> Vec<Duration> {
    v.sort();
    v
}

const LOOP: &str =
    "function handler(e) { let s = 0; for (let i = 0; i < e.n; i++) s += i; return s; }";

/// Kernel-mode guest against user-mode guest, in one run.
fn guest_modes(n: usize) {
    use hyperlight_js_engine::GuestMode;
    let no_gc = CallOptions::default().gc(false);
    let mut rows: Vec<(&str, [String; 2])> = Vec::new();
    let mut cells = |row: &'static str, i: usize, v: String| {
        if let Some(r) = rows.iter_mut().find(|(name, _)| *name == row) {
            r.1[i] = v;
        } else {
            let mut c = [String::new(), String::new()];
            c[i] = v;
            rows.push((row, c));
        }
    };
    let mut loop_ms = [0.0f64; 2];
    let mut echo_after_restore = [0.0f64; 2];
    for (i, mode) in [GuestMode::Kernel, GuestMode::User].into_iter().enumerate() {
        let t = Instant::now();
        let mut js = SandboxBuilder::new()
            .guest_mode(mode)
            .build()
            .expect("build")
            .load_runtime()
            .expect("load");
        cells("runtime init (build + load_runtime)", i, ms(t.elapsed()));
        js.add_handler("echo", ECHO).expect("add");
        js.add_handler("loop", LOOP).expect("add");
        let mut sb = js.get_loaded_sandbox().expect("loaded");
        let snap = sb.snapshot().expect("snapshot");
        let warm = Stats::measure(n, || {
            sb.call_handler_json("echo", EVENT, &no_gc).expect("call");
        });
        cells("echo call warm, p50", i, ms(warm.p50()));
        cells("echo call warm, p99", i, ms(warm.p99()));
        let mut after = Vec::new();
        let restore = Stats::measure(n, || {
            let t = Instant::now();
            sb.restore(&snap).expect("restore");
            let r = t.elapsed();
            let t = Instant::now();
            sb.call_handler_json("echo", EVENT, &no_gc).expect("call");
            after.push(t.elapsed());
            let _ = r;
        });
        let after = Stats({
            after.sort();
            after
        });
        cells(
            "restore + echo call (worker path), p50",
            i,
            ms(restore.p50()),
        );
        cells("echo call right after a restore, p50", i, ms(after.p50()));
        cells("echo call right after a restore, p99", i, ms(after.p99()));
        echo_after_restore[i] = after.p50().as_secs_f64();
        let t = Instant::now();
        sb.restore(&snap).expect("restore");
        cells("restore alone", i, ms(t.elapsed()));
        // Kernel entries per call: only user mode counts them (kernel mode is all kernel).
        if mode == GuestMode::User {
            // The count reads entries up to the start of its own call; its
            // own entries (one system call, one exit) are measured and taken off.
            sb.call_handler_json("echo", EVENT, &no_gc).expect("call");
            let mut count = || sb.guest_kernel_entries().expect("count");
            count();
            let own = {
                let x = count();
                count() - x
            };
            let a = count();
            sb.call_handler_json("echo", EVENT, &no_gc).expect("call");
            let b = sb.guest_kernel_entries().expect("count");
            sb.restore(&snap).expect("restore");
            let at_snapshot = sb.guest_kernel_entries().expect("count");
            sb.restore(&snap).expect("restore");
            sb.call_handler_json("echo", EVENT, &no_gc).expect("call");
            let d = sb.guest_kernel_entries().expect("count");
            cells(
                "kernel entries per echo call, warm",
                i,
                (b - a - own).to_string(),
            );
            cells(
                "kernel entries per echo call after a restore",
                i,
                (d - at_snapshot).to_string(),
            );
        } else {
            cells("kernel entries per echo call, warm", i, "all code".into());
            cells(
                "kernel entries per echo call after a restore",
                i,
                "all code".into(),
            );
        }
        // The JS loop: 1e5 iterations in user mode; kernel mode is measured on
        // 1e3 and scaled (1e5 would take about a minute emulated).
        let (iters, scale) = if mode == GuestMode::User {
            (100_000u64, 1.0)
        } else {
            (1_000, 100.0)
        };
        let ev = format!("{{\"n\":{iters}}}");
        sb.call_handler_json("loop", &ev, &no_gc).expect("loop");
        let l = Stats::measure(3, || {
            sb.call_handler_json("loop", &ev, &no_gc).expect("loop");
        });
        let v = l.p50().as_secs_f64() * 1e3 * scale
            - if scale > 1.0 {
                warm.p50().as_secs_f64() * 1e3 * (scale - 1.0)
            } else {
                0.0
            };
        loop_ms[i] = v;
        cells(
            "JS loop, 1e5 integer additions (one call)",
            i,
            format!("{v:.3}{}", if scale > 1.0 { " (from 1e3)" } else { "" }),
        );
    }
    println!("| guest mode | kernel (CPL0) | user (CPL3) |");
    println!("|---|---|---|");
    for (name, c) in &rows {
        println!("| {name} | {} | {} |", c[0], c[1]);
    }
    println!();
    println!(
        "user mode vs kernel mode: JS loop {:.0}× faster (target ≥ 100×), echo right after a restore {:.1}× faster (target ≥ 5×)",
        loop_ms[0] / loop_ms[1],
        echo_after_restore[0] / echo_after_restore[1]
    );
}
