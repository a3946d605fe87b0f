//! The command line without a broker: stdin/JSON-lines mode and start-up failures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::process::{Command, Stdio};

use hyperlight_js_e2e::*;
use serde_json::{Value, json};

fn run_lines(args: &[&str], input: &str, no_broker: bool) -> (i32, Vec<Value>, String) {
    run_bytes(args, input.as_bytes(), no_broker)
}

fn run_bytes(args: &[&str], input: &[u8], no_broker: bool) -> (i32, Vec<Value>, String) {
    let mut cmd = Command::new(worker_bin());
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.env("RUST_LOG", "warn");
    if no_broker {
        cmd.env_remove("AMQP_URL");
    }
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    (
        out.status.code().unwrap_or(-1),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn stdin_mode_prints_one_outcome_line_per_event_of_the_examples() {
    let config = example("worker.toml");
    let events = std::fs::read_to_string(example("events.jsonl")).unwrap();
    let (code, lines, stderr) = run_lines(
        &["--config", config.to_str().unwrap(), "--stdin"],
        &events,
        false,
    );
    assert_eq!(code, 0, "{stderr}");
    let n = events.lines().filter(|l| !l.trim().is_empty()).count();
    assert_eq!(lines.len(), n, "{lines:#?}");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["line"], i + 1, "outcomes come in input order");
    }
    assert_eq!(
        lines[0]["result"],
        json!({"name": "World", "message": "Hello, World!"})
    );
    assert_eq!(lines[1]["result"]["result"], 42);
    assert_eq!(lines[2]["error"]["code"], "ERR_HANDLER_THREW");
    assert_eq!(lines[3]["result"]["count"], 1);
    assert_eq!(
        lines[4]["result"]["count"], 1,
        "no state leaks between events"
    );
    assert!(lines[5]["result"]["slept_ms"].as_i64().unwrap() >= 200);
    assert_eq!(lines[6]["error"]["code"], "ERR_CANCELLED");
    assert_eq!(lines[7]["error"]["code"], "ERR_HANDLER_THREW");
    assert_eq!(lines[8]["error"]["code"], "ERR_UNKNOWN_HANDLER");
}

#[test]
fn without_a_broker_the_worker_reads_json_lines_with_the_same_codes() {
    let dir = temp_dir("it-cli");
    let (config, _) = write_config(
        &dir,
        "",
        &[HandlerSpec::new("errors", test_handler("errors.js"))
            .with("max_message_bytes = 512\nstack_size = 262144")],
    );
    let big = "a".repeat(600);
    let input = format!(
        "{}\n\n{}\n{}\nnot json\n{}\n{}\n",
        json!({"key": "errors", "event": {"mode": "ok"}, "id": "a"}),
        json!({"key": "errors", "event": {"mode": "loop"}, "cpu_timeout_ms": 100}),
        json!({"key": "errors", "event": {"mode": "recurse"}}),
        json!({"key": "errors", "event": {"pad": big}}),
        json!({"key": "errors", "event": {"mode": "ok"}, "wall_timeout_ms": -5}),
    );
    let (code, lines, stderr) = run_lines(&["--config", config.to_str().unwrap()], &input, true);
    assert_eq!(code, 0, "{stderr}");
    let codes: Vec<Value> = lines.iter().map(|l| l["error"]["code"].clone()).collect();
    assert_eq!(lines[0]["result"], json!({"ok": true, "mode": "ok"}));
    assert_eq!(lines[0]["id"], "a");
    assert_eq!(
        codes[1..],
        [
            json!("ERR_CANCELLED"),
            json!("ERR_STACK_OVERFLOW"),
            json!("ERR_INVALID_JSON"),
            json!("ERR_MESSAGE_TOO_LARGE"),
            json!("ERR_INVALID_ARG")
        ]
    );
    assert_eq!(lines[3]["key"], Value::Null);
}

#[test]
fn invalid_config_fails_at_start_naming_the_key_and_the_file() {
    let dir = temp_dir("it-badcfg");
    let (config, _) = write_config(
        &dir,
        "",
        &[HandlerSpec::new("greet", example("handlers/greet.js")).pool(0)],
    );
    let (code, lines, stderr) = run_lines(&["--config", config.to_str().unwrap()], "", true);
    assert_eq!(code, 2);
    assert!(lines.is_empty());
    assert!(
        stderr.contains("ERR_CONFIG_INVALID")
            && stderr.contains("'greet'")
            && stderr.contains("greet.js"),
        "{stderr}"
    );
    assert!(stderr.contains("worker.toml"), "{stderr}");
}

#[test]
fn an_unknown_code_in_retry_on_fails_at_start_naming_the_key_and_the_file() {
    let dir = temp_dir("it-retry-on");
    let (config, _) = write_config(
        &dir,
        "",
        &[HandlerSpec::new("greet", example("handlers/greet.js"))
            .with("retry_on = [\"ERR_CANCELLED\", \"ERR_CANCELED\"]")],
    );
    let (code, lines, stderr) = run_lines(&["--config", config.to_str().unwrap()], "", true);
    assert_eq!(code, 2, "{stderr}");
    assert!(lines.is_empty());
    assert!(
        stderr.contains("ERR_CONFIG_INVALID")
            && stderr.contains("ERR_CANCELED")
            && stderr.contains("'greet'")
            && stderr.contains("greet.js")
            && stderr.contains("worker.toml"),
        "{stderr}"
    );
}

#[test]
fn a_handler_written_as_an_es_module_serves_events() {
    let dir = temp_dir("it-module");
    let (config, _) = write_config(
        &dir,
        "",
        &[HandlerSpec::new("mod", test_handler("module.js"))],
    );
    let (code, lines, stderr) = run_lines(
        &["--config", config.to_str().unwrap()],
        "{\"key\":\"mod\",\"event\":{\"name\":\"ESM\"}}\n",
        true,
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        lines[0]["result"],
        json!({"message": "Hello, ESM!", "key": "mod", "attempt": 1})
    );
}

#[test]
fn a_line_that_is_not_utf8_gets_its_own_outcome_and_the_run_goes_on() {
    let mut input = Vec::new();
    input.extend_from_slice(b"{\"key\":\"greet\",\"event\":{\"name\":\"A\"}}\n");
    input.extend_from_slice(b"\xff\xfe\n");
    input.extend_from_slice(b"{\"key\":\"greet\",\"event\":{\"name\":\"B\"}}\n");
    let config = example("worker.toml");
    let (code, lines, stderr) = run_bytes(&["--config", config.to_str().unwrap()], &input, true);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0]["result"]["message"], "Hello, A!");
    assert_eq!(lines[1]["line"], 2);
    assert_eq!(lines[1]["error"]["code"], "ERR_INVALID_JSON");
    assert_eq!(lines[2]["result"]["message"], "Hello, B!");
}

#[test]
fn a_handler_that_does_not_compile_fails_at_start() {
    let dir = temp_dir("it-compile");
    let (config, _) = write_config(
        &dir,
        "",
        &[
            HandlerSpec::new("greet", example("handlers/greet.js")),
            HandlerSpec::new("broken", test_handler("broken.js")),
        ],
    );
    let (code, lines, stderr) = run_lines(&["--config", config.to_str().unwrap()], "", true);
    assert_eq!(code, 2, "{stderr}");
    assert!(lines.is_empty());
    assert!(
        stderr.contains("ERR_COMPILE")
            && stderr.contains("'broken'")
            && stderr.contains("broken.js"),
        "{stderr}"
    );
}

#[test]
fn broker_urls_are_redacted_in_errors() {
    let dir = temp_dir("it-redact");
    let (config, _) = write_config(
        &dir,
        "",
        &[HandlerSpec::new("greet", example("handlers/greet.js"))],
    );
    let out = Command::new(worker_bin())
        .args([
            "--config",
            config.to_str().unwrap(),
            "publish",
            "--key",
            "greet",
            "{}",
        ])
        .env("AMQP_URL", "amqp://user:s3cr3t@127.0.0.1:1/%2f")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("ERR_BROKER") && stderr.contains("***@127.0.0.1:1"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cr3t"), "{stderr}");
}

/// `check-config` with `args` (and `env`), no broker: exit code, stdout, stderr.
fn check_config(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(worker_bin());
    cmd.args(args)
        .env_remove("AMQP_URL")
        .env_remove("HLJS_CONFIG")
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_passes_a_good_config_with_a_one_line_summary() {
    let dir = temp_dir("it-check-ok");
    let (config, _) = write_config(
        &dir,
        "",
        &[
            HandlerSpec::new("greet", example("handlers/greet.js")),
            HandlerSpec::new("calculator", example("handlers/calculator.js")).pool(2),
        ],
    );
    let path = config.to_str().unwrap();
    let (code, stdout, stderr) = check_config(&["check-config", "--config", path], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.contains("ok")
            && stdout.contains("2 handler(s)")
            && stdout.contains("greet, calculator")
            && stdout.contains("3 sandbox(es)")
            && stdout.contains("worker.toml"),
        "{stdout}"
    );
    // HLJS_CONFIG instead of --config, and the broker URL printed redacted.
    let (code, stdout, stderr) = check_config(
        &["check-config"],
        &[
            ("HLJS_CONFIG", path),
            ("AMQP_URL", "amqp://user:s3cret@127.0.0.1:1/%2f"),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("amqp://***@127.0.0.1:1/%2f"), "{stdout}");
    assert!(!stdout.contains("s3cret") && !stderr.contains("s3cret"));
}

#[test]
fn check_config_refuses_an_unknown_key_with_exit_2() {
    let dir = temp_dir("it-check-key");
    let (config, _) = write_config(
        &dir,
        "bogus_key = 1",
        &[HandlerSpec::new("greet", example("handlers/greet.js"))],
    );
    let (code, stdout, stderr) =
        check_config(&["check-config", "--config", config.to_str().unwrap()], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.starts_with("error[ERR_CONFIG_PARSE]: ") && stderr.contains("bogus_key"),
        "{stderr}"
    );
}

#[test]
fn check_config_applies_environment_overrides_as_the_worker_does() {
    let dir = temp_dir("it-check-env");
    let (config, _) = write_config(
        &dir,
        "",
        &[HandlerSpec::new("greet", example("handlers/greet.js"))],
    );
    let (code, _, stderr) = check_config(
        &["check-config", "--config", config.to_str().unwrap()],
        &[("HLJS__BROKER__PREFETCH_PER_SANDBOX", "0")],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.starts_with("error[ERR_CONFIG_INVALID]: ")
            && stderr.contains("prefetch_per_sandbox"),
        "{stderr}"
    );
    let (code, _, stderr) = check_config(
        &["check-config", "--config", config.to_str().unwrap()],
        &[("AMQP_URL", "http://not-amqp")],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.starts_with("error[ERR_CONFIG_INVALID]: "),
        "{stderr}"
    );
}

#[test]
fn check_config_compiles_every_handler_and_names_the_one_that_fails() {
    let dir = temp_dir("it-check-compile");
    let (config, _) = write_config(
        &dir,
        "",
        &[
            HandlerSpec::new("greet", example("handlers/greet.js")),
            HandlerSpec::new("broken", test_handler("broken.js")),
        ],
    );
    let (code, stdout, stderr) =
        check_config(&["check-config", "--config", config.to_str().unwrap()], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.starts_with("error[ERR_COMPILE]: ")
            && stderr.contains("'broken'")
            && stderr.contains("broken.js"),
        "{stderr}"
    );
    // Without --config (or HLJS_CONFIG) it is exit 2 as well.
    let (code, _, stderr) = check_config(&["check-config"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("ERR_INVALID_ARG"), "{stderr}");
}
