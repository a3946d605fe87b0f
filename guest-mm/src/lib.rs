//! The memory rules of the hyperlight-js guest kernel, as pure functions.
//!
//! The guest kernel (`guest/src/usermode/`) serves every page fault that the
//! JavaScript engine raises in user mode. What it may do for a fault is
//! decided here, from plain numbers (addresses, page-table entries, error
//! codes), so that the rules every reviewer must audit run, and are tested,
//! on the host without a micro-VM. The kernel only carries the decisions out.
//!
//! `no_std` and dependency-free: the guest is built for `x86_64-unknown-none`.
#![no_std]
#![deny(missing_docs)]

pub mod fault;
pub mod pte;
pub mod regions;
pub mod working_set;

pub use fault::{Decision, FaultKind, PageFault, decide};
pub use regions::UserRegions;

/// The size of a page.
pub const PAGE_SIZE: u64 = 4096;

/// The page that holds `addr`.
pub const fn page_of(addr: u64) -> u64 {
    addr & !(PAGE_SIZE - 1)
}
