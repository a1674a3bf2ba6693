//! Client histories of the key-value service and the check that they are
//! linearizable: one implementation, used by the deterministic simulator
//! (`pbft-sim`, through `pbft_sim::checker::linearizability`), by
//! `pbft check-history` and by the fault-injection tool (`pbft chaos`).
//!
//! * [`linearizability`]: the history model ([`History`], [`Operation`]) and
//!   the Wing & Gong search per key against the sequential model
//!   ([`pbft_app::kv::KvStore`]); an operation without a response (unknown
//!   outcome) may or may not have taken effect.
//! * [`file`](mod@file): the on-disk form of a recorded history, one JSON object per
//!   line, so a history recorded against real processes can be checked (and
//!   re-checked) later.

pub mod file;
pub mod linearizability;

pub use file::{Entry, HistoryFileError, Outcome};
pub use linearizability::{
    check, check_detailed, check_key, format_op, format_result, op_key, History, Operation,
    Response, Violation,
};
