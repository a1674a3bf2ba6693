//! The properties checked on every run, one module per property.
//!
//! * [`agreement`]: safety of the replicated log and of checkpoints.
//! * [`certificates`]: every certificate an honest replica acts on is backed
//!   by replicas that really signed its parts, checked when it is acted on.
//! * [`linearizability`]: the clients' history against the sequential KV model
//!   (the `pbft-history` crate, shared with `pbft check-history` and the
//!   fault-injection tool, re-exported here).
//! * [`liveness`]: every request completes once the faults heal.

pub mod agreement;
pub mod certificates;
pub use pbft_history::linearizability;
pub mod liveness;
