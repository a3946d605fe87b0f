//! Ports for the processes the tests start (broker containers with host
//! networking, the worker's HTTP listener), chosen so that nothing else on
//! the machine takes them between the choice and the bind.
//!
//! A port the kernel hands out for `bind(…:0)` lies in its ephemeral range
//! (`/proc/sys/net/ipv4/ip_local_port_range`, 32768–60999 by default), the
//! same range it draws every outgoing connection's source port from: with
//! tests running side by side, a client connecting elsewhere could take the
//! port after it was released and before the broker bound it (seen:
//! RabbitMQ's `dist_port_already_used` at boot). So ports come from a range
//! below the ephemeral one, each handed out once per process and checked
//! free by binding it.

use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;

/// The ports handed out: below the kernel's default ephemeral range, and such
/// that a port + 10 010 (RabbitMQ's CLI tools use a node's distribution port
/// + 10 000 to + 10 010) stays below it too.
const RANGE: std::ops::Range<u16> = 12_000..22_000;

/// The next candidate, from a start that differs per process (test binaries
/// of one run follow each other; containers of the last one may linger).
static NEXT: Mutex<Option<u16>> = Mutex::new(None);

/// The kernel's ephemeral range, if it can be read.
fn ephemeral_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(|p| p.parse::<u16>().ok());
    Some((it.next()??, it.next()??))
}

/// `n` distinct ports on 127.0.0.1 that were free when chosen, outside the
/// kernel's ephemeral range.
///
/// # Panics
/// If the machine's ephemeral range overlaps [`RANGE`], or no `n` free ports
/// are left in it.
pub fn free_ports(n: usize) -> Vec<u16> {
    if let Some((lo, hi)) = ephemeral_range() {
        assert!(
            hi < RANGE.start || lo > RANGE.end + 10_010,
            "the ephemeral port range {lo}-{hi} overlaps the tests' ports {RANGE:?}"
        );
    }
    let span = RANGE.end - RANGE.start;
    let mut next = NEXT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut port =
        next.unwrap_or_else(|| RANGE.start + (std::process::id() % u32::from(span)) as u16);
    let mut ports = Vec::with_capacity(n);
    for _ in 0..span {
        if ports.len() == n {
            break;
        }
        let candidate = port;
        port = if port + 1 >= RANGE.end {
            RANGE.start
        } else {
            port + 1
        };
        if TcpListener::bind(("127.0.0.1", candidate)).is_ok() {
            ports.push(candidate);
        }
    }
    *next = Some(port);
    assert_eq!(ports.len(), n, "no {n} free ports left in {RANGE:?}");
    ports
}

/// One address on 127.0.0.1 from [`free_ports`].
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_ports(1)[0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_outside_the_ephemeral_range() {
        let ports = free_ports(50);
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 50, "a port handed out twice: {ports:?}");
        let (lo, hi) = ephemeral_range().expect("/proc/sys/net/ipv4/ip_local_port_range");
        for p in &ports {
            assert!(
                !(lo..=hi).contains(p),
                "{p} is in the ephemeral range {lo}-{hi}"
            );
        }
        // Free when handed out: each binds now (no test here binds them).
        for p in ports {
            TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
    }

    #[test]
    fn a_port_in_use_is_passed_over() {
        let first = free_ports(1)[0];
        let held = TcpListener::bind(("127.0.0.1", first)).unwrap();
        // Rewind the cursor to the held port: the next choice must skip it.
        *NEXT.lock().unwrap() = Some(first);
        let next = free_ports(1)[0];
        assert_ne!(next, first);
        drop(held);
    }
}
