//! Builds the guest runtime for `x86_64-unknown-none` and embeds it.
//!
//! The guest is a workspace member but must be compiled for the bare-metal
//! target with soft-float C flags, so this script runs a nested `cargo build`
//! into `<target-dir>/guest` (shared by every profile of the outer build).
//! A user never runs a separate guest build step.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const GUEST_TARGET: &str = "x86_64-unknown-none";

fn main() {
    if let Err(e) = run() {
        // A build script reports failure by exiting non-zero with a message.
        eprintln!("error: building the hyperlight-js guest failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let root = manifest_dir
        .parent()
        .ok_or("engine/ has no parent")?
        .to_path_buf();
    for dir in [
        "guest/src",
        "guest/Cargo.toml",
        "guest-mm/src",
        "guest-mm/Cargo.toml",
        "abi/src",
        "abi/Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    for var in [
        "HYPERLIGHT_JS_GUEST_CC",
        "HYPERLIGHT_JS_GUEST_AR",
        "HYPERLIGHT_JS_GUEST_LINT",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    // OUT_DIR is <target>/<profile>/build/<pkg>/out; the guest shares <target>/guest.
    let target_root = out_dir
        .ancestors()
        .nth(4)
        .ok_or("unexpected OUT_DIR layout")?
        .to_path_buf();
    let guest_target_dir = target_root.join("guest");

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let libc_dir = hyperlight_libc_dir(&cargo, &root)?;
    let picolibc = libc_dir.join("third_party/picolibc");

    let cc = env::var("HYPERLIGHT_JS_GUEST_CC").unwrap_or_else(|_| "clang".into());
    let ar = env::var("HYPERLIGHT_JS_GUEST_AR").unwrap_or_else(|_| find_llvm_ar());

    // Flags shared by the C compiler and bindgen. `-U__linux__` with the linux
    // triple keeps clang's stack-clash protection while hiding Linux headers;
    // `EMSCRIPTEN` drops QuickJS's pthread use but, unlike `__wasi__`, keeps its
    // native stack check, which the engine relies on for ERR_STACK_OVERFLOW.
    let includes = [
        picolibc.join("libc/include"),
        picolibc.join("libc/stdio"),
        libc_dir.join("include"),
    ];
    let mut common: Vec<String> = [
        "--target=x86_64-unknown-linux-none",
        "-U__linux__",
        "-nostdlibinc",
        "-fno-stack-protector",
        "-fstack-clash-protection",
        "-mstack-probe-size=4096",
        "-mno-red-zone",
        "-fPIC",
        "-DHYPERLIGHT=1",
        "-D__HYPERLIGHT__=1",
        "-DEMSCRIPTEN=1",
        "-D_POSIX_MONOTONIC_CLOCK=1",
        "-mlong-double-64",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for inc in &includes {
        common.push("-isystem".into());
        common.push(inc.display().to_string());
    }
    // No SSE and no x87 in C: doubles become soft-float libcalls (compiler_builtins).
    let soft_float = [
        "-mno-sse",
        "-mno-sse2",
        "-Xclang",
        "-target-feature",
        "-Xclang",
        "+soft-float",
    ];
    let cflags: Vec<String> = common
        .iter()
        .cloned()
        .chain(soft_float.iter().map(|s| s.to_string()))
        .collect();

    let rustflags = [
        "--cfg=hyperlight",
        "-Clink-args=-eentrypoint",
        "-Clink-args=-znostart-stop-gc",
        "-Clink-args=--wrap=clock_gettime",
    ]
    .join("\x1f");

    // With HYPERLIGHT_JS_GUEST_LINT=1 (CI) the guest is also linted with
    // clippy, warnings denied: the outer `cargo clippy` cannot see it.
    let lint = env::var_os("HYPERLIGHT_JS_GUEST_LINT").is_some_and(|v| v == "1");
    let mut subcommands = vec![vec!["build"]];
    if lint {
        subcommands.push(vec!["clippy", "--", "-D", "warnings"]);
    }
    for sub in subcommands {
        let (verb, extra) = sub.split_at(1);
        let mut cmd = guest_cargo(&cargo, &root, &guest_target_dir, verb[0]);
        cmd.args(extra);
        nested_env(&mut cmd, &cc, &ar, &cflags, &common, &rustflags);
        let status = cmd
            .status()
            .map_err(|e| format!("cannot run {cargo}: {e}"))?;
        if !status.success() {
            return Err(format!(
                "`cargo {} -p hyperlight-js-guest --target {GUEST_TARGET}` failed ({status}); \
                 the guest needs clang, libclang-dev and llvm-ar (see README.md)",
                verb[0]
            ));
        }
    }

    let guest = guest_target_dir
        .join(GUEST_TARGET)
        .join("release")
        .join("hyperlight-js-guest");
    let embedded = out_dir.join("hyperlight-js-guest");
    std::fs::copy(&guest, &embedded).map_err(|e| format!("copy {}: {e}", guest.display()))?;
    println!(
        "cargo:rustc-env=HYPERLIGHT_JS_GUEST_PATH={}",
        embedded.display()
    );
    Ok(())
}

/// `cargo <verb>` of the guest for its target, into its own target directory.
fn guest_cargo(
    cargo: &str,
    root: &std::path::Path,
    target_dir: &std::path::Path,
    verb: &str,
) -> Command {
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args([
            verb,
            "--release",
            "--locked",
            "-p",
            "hyperlight-js-guest",
            "--target",
            GUEST_TARGET,
        ])
        .arg("--target-dir")
        .arg(target_dir);
    cmd
}

/// The nested build's environment: nothing of the outer build, plus the C
/// toolchain and flags of the soft-float guest.
fn nested_env(
    cmd: &mut Command,
    cc: &str,
    ar: &str,
    cflags: &[String],
    common: &[String],
    rustflags: &str,
) {
    // The outer build's settings must not leak into the nested one.
    // That includes clippy's wrapper (a nested `cargo clippy` sets its own).
    for (key, value) in env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let leaks = (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || matches!(
                key.as_str(),
                "RUSTFLAGS" | "OUT_DIR" | "TARGET" | "RUSTC_WRAPPER" | "RUSTC_WORKSPACE_WRAPPER"
            )
            || key.contains("CLIPPY")
            || value.to_string_lossy().contains("clippy-driver");
        if leaks {
            cmd.env_remove(&key);
        }
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env("CC_x86_64_unknown_none", cc)
        .env("AR_x86_64_unknown_none", ar)
        .env("CFLAGS_x86_64_unknown_none", cflags.join(" "))
        .env(
            "BINDGEN_EXTRA_CLANG_ARGS_x86_64_unknown_none",
            common.join(" "),
        )
        .env("HYPERLIGHT_GUEST_clang", cc);
}

/// Finds hyperlight-libc's sources (for picolibc's headers) through `cargo metadata`.
fn hyperlight_libc_dir(cargo: &str, root: &Path) -> Result<PathBuf, String> {
    let out = Command::new(cargo)
        .current_dir(root)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--filter-platform",
            GUEST_TARGET,
        ])
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .map_err(|e| format!("cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo metadata: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let manifest = meta["packages"]
        .as_array()
        .and_then(|pkgs| pkgs.iter().find(|p| p["name"] == "hyperlight-libc"))
        .and_then(|p| p["manifest_path"].as_str())
        .ok_or("hyperlight-libc is not in the dependency graph")?;
    Path::new(manifest)
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "bad manifest path".into())
}

fn find_llvm_ar() -> String {
    for name in [
        "llvm-ar",
        "llvm-ar-19",
        "llvm-ar-18",
        "llvm-ar-17",
        "llvm-ar-16",
        "llvm-ar-15",
        "llvm-ar-14",
    ] {
        if Command::new(name)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return name.into();
        }
    }
    "llvm-ar".into()
}
