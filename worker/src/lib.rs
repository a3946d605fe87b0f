//! The hyperlight-js worker: consumes events from RabbitMQ (or JSON lines on
//! stdin), runs each through a pooled, snapshotted JavaScript sandbox of the
//! engine, and publishes the outcome.
//!
//! Modules follow the data flow: [`pool`] keeps loaded sandboxes per routing
//! key (from the [`snapshot_cache`] of `[snapshots] dir` when one is
//! configured), [`process`] turns one message into an [`process::Outcome`], [`amqp`]
//! moves messages between the broker and the processor with acknowledgements
//! and publisher confirms, [`stdin`] is the broker-less default, [`http`]
//! serves health and metrics, [`telemetry`] sets up logs and traces,
//! [`reload`] swaps a key's handler on SIGHUP, [`version`] names a handler's code.
#![deny(missing_docs)]

pub mod amqp;
pub mod check;
pub mod codes;
pub mod error;
pub mod health;
pub mod http;
pub mod metrics;
pub mod pool;
pub mod process;
pub mod reload;
pub mod run;
pub mod snapshot_cache;
pub mod stdin;
pub mod telemetry;
pub mod version;

pub use error::WorkerError;
pub use hyperlight_js_config as config;
pub use process::{Outcome, Processor, Request};
