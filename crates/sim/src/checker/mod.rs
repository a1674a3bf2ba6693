//! The properties checked on every run, one module per property.
//!
//! * [`agreement`]: safety of the replicated log and of checkpoints.
//! * [`linearizability`]: the clients' history against the sequential KV model.
//! * [`liveness`]: every request completes once the faults heal.

pub mod agreement;
pub mod linearizability;
pub mod liveness;
