//! Liveness and readiness state shared by the broker loop and the HTTP endpoint.

use std::sync::atomic::{AtomicBool, Ordering};

/// What `/readyz` reports.
#[derive(Debug)]
pub struct Health {
    needs_broker: bool,
    pools_loaded: AtomicBool,
    broker_connected: AtomicBool,
    draining: AtomicBool,
}

impl Health {
    /// State of a worker that needs a broker connection to be ready (or not, in stdin mode).
    pub fn new(needs_broker: bool) -> Self {
        Self {
            needs_broker,
            pools_loaded: AtomicBool::new(false),
            broker_connected: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        }
    }

    /// Every pool is loaded.
    pub fn set_pools_loaded(&self, v: bool) {
        self.pools_loaded.store(v, Ordering::SeqCst);
    }

    /// The broker session is up (connected, topology declared, consuming).
    pub fn set_broker_connected(&self, v: bool) {
        self.broker_connected.store(v, Ordering::SeqCst);
    }

    /// Shutdown has begun.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// `Ok(())` when ready, else the reason.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.draining.load(Ordering::SeqCst) {
            return Err("draining");
        }
        if !self.pools_loaded.load(Ordering::SeqCst) {
            return Err("sandbox pools are loading");
        }
        if self.needs_broker && !self.broker_connected.load(Ordering::SeqCst) {
            return Err("not connected to the broker");
        }
        Ok(())
    }
}
