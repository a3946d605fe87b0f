//! The worker's container image, run the way the Helm chart runs it: non-root
//! (65532), read-only root filesystem, every capability dropped, no new
//! privileges, `/dev/kvm` as a device the user may open through a
//! supplemental group, the configuration mounted read-only and a writable
//! `/tmp` of its own.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{repo_root, run_within, unique, worker_bin};

/// The environment variable naming a worker image built beforehand (CI
/// builds one with `scripts/worker-image.sh`).
pub const WORKER_IMAGE_ENV: &str = "HLJS_TEST_WORKER_IMAGE";

/// How long one `docker` command may run (a build copies the binary).
const DOCKER_TIMEOUT: Duration = Duration::from_secs(300);

/// `docker ARGS`, bounded; its output (panics with it on failure).
pub fn docker(args: &[&str]) -> String {
    let mut cmd = Command::new("docker");
    cmd.args(args);
    let out = run_within(cmd, DOCKER_TIMEOUT);
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}{}\nIs Docker running? `bash scripts/docker.sh` starts it.",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The image to test: `HLJS_TEST_WORKER_IMAGE` (it must exist: panics
/// otherwise), or else one built now by `scripts/worker-image.sh` from the
/// test profile's worker binary.
pub fn worker_image() -> String {
    if let Ok(image) = std::env::var(WORKER_IMAGE_ENV)
        && !image.trim().is_empty()
    {
        let image = image.trim().to_string();
        let mut cmd = Command::new("docker");
        cmd.args(["image", "inspect", "--format", "{{.Id}}", &image]);
        let out = run_within(cmd, DOCKER_TIMEOUT);
        assert!(
            out.status.success(),
            "{WORKER_IMAGE_ENV}={image} names no local image: build it with \
             `bash scripts/worker-image.sh BINARY {image}` ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return image;
    }
    let tag = "hyperlight-js-worker:e2e";
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("scripts/worker-image.sh"))
        .arg(worker_bin())
        .arg(tag);
    let out = run_within(cmd, DOCKER_TIMEOUT);
    assert!(
        out.status.success(),
        "scripts/worker-image.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tag.into()
}

/// A `/dev/kvm` for a container user that is not root, and the group that
/// opens it.
pub struct KvmDevice {
    /// The device node to pass with `--device NODE:/dev/kvm`.
    pub node: PathBuf,
    /// The group to pass with `--group-add` (the chart's `kvm.groupId`).
    pub gid: u32,
}

impl KvmDevice {
    /// The host's `/dev/kvm` when its group may read and write it (a node's
    /// usual `root:kvm 0660`). Otherwise (this project's machines have
    /// `root:root 0600`) a node of the same device in `dir`, made `0660` with
    /// a group of its own, which Docker copies into the container with its
    /// mode and owner: the same setup as a node with a kvm group, without
    /// changing the host's device.
    pub fn for_non_root(dir: &Path) -> KvmDevice {
        let mut cmd = Command::new("stat");
        cmd.args(["-c", "%a %g %t %T", "/dev/kvm"]);
        let out = run_within(cmd, Duration::from_secs(10));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let fields: Vec<&str> = text.split_whitespace().collect();
        assert!(
            out.status.success() && fields.len() == 4,
            "no /dev/kvm on this machine: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mode = u32::from_str_radix(fields[0], 8).expect("octal mode");
        let gid: u32 = fields[1].parse().expect("gid");
        if mode & 0o060 == 0o060 {
            return KvmDevice {
                node: "/dev/kvm".into(),
                gid,
            };
        }
        let (major, minor) = (
            u32::from_str_radix(fields[2], 16).expect("major"),
            u32::from_str_radix(fields[3], 16).expect("minor"),
        );
        // A group no account of the image has.
        let gid = 10232;
        let node = dir.join("kvm");
        for (what, args) in [
            (
                "mknod",
                vec![
                    node.display().to_string(),
                    "c".into(),
                    major.to_string(),
                    minor.to_string(),
                ],
            ),
            ("chgrp", vec![gid.to_string(), node.display().to_string()]),
            ("chmod", vec!["0660".into(), node.display().to_string()]),
        ] {
            let mut cmd = Command::new(what);
            cmd.args(&args);
            let out = run_within(cmd, Duration::from_secs(10));
            assert!(
                out.status.success(),
                "{what} {args:?} failed (making a group-accessible /dev/kvm needs root): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        KvmDevice { node, gid }
    }
}

/// A worker container (`docker run -d`), removed when dropped.
pub struct WorkerContainer {
    /// Its name.
    pub name: String,
}

impl WorkerContainer {
    /// `docker run -d --name <unique> ARGS`.
    pub fn run(prefix: &str, args: &[String]) -> WorkerContainer {
        let name = unique(prefix);
        let mut all = vec!["run", "-d", "--name", name.as_str()];
        all.extend(args.iter().map(String::as_str));
        docker(&all);
        WorkerContainer { name }
    }

    /// Its standard output and error so far.
    pub fn logs(&self) -> String {
        let mut cmd = Command::new("docker");
        cmd.args(["logs", &self.name]);
        let out = run_within(cmd, Duration::from_secs(30));
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Whether it still runs.
    pub fn running(&self) -> bool {
        docker(&["inspect", "-f", "{{.State.Running}}", &self.name]).trim() == "true"
    }

    /// `docker stop -t SECS` (SIGTERM, SIGKILL after SECS); returns when it
    /// has exited, and its exit code.
    pub fn stop(&self, secs: u32) -> i64 {
        docker(&["stop", "-t", &secs.to_string(), &self.name]);
        self.exit_code()
    }

    /// Its exit code (0 while it runs).
    pub fn exit_code(&self) -> i64 {
        docker(&["inspect", "-f", "{{.State.ExitCode}}", &self.name])
            .trim()
            .parse()
            .expect("an exit code")
    }

    /// Waits (bounded) until `GET /readyz` on `addr` answers 200; panics with
    /// its log when it exits or the time is up.
    pub async fn wait_ready(&self, addr: std::net::SocketAddr, timeout: Duration) {
        let started = Instant::now();
        loop {
            if let Some((200, _)) = crate::http_get(addr, "/readyz").await {
                return;
            }
            assert!(
                self.running(),
                "the worker container exited with {} before it was ready:\n{}",
                self.exit_code(),
                self.logs()
            );
            assert!(
                started.elapsed() < timeout,
                "the worker container was not ready within {timeout:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for WorkerContainer {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
    }
}
