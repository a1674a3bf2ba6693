//! The PBFT replica (Castro & Liskov, OSDI 1999 / TOCS 2002) as a pure,
//! deterministic state machine.
//!
//! No I/O, no clock, no randomness: everything comes in through
//! [`Replica::handle`] as an [`Input`] with the current time, and everything
//! the replica wants done goes out as [`Output`]s, executed by a driver (the
//! node on tokio, or the simulator) in order. [`Replica::poll_timeout`] tells
//! the driver when to deliver the next [`Input::Tick`].
//!
//! Start reading at [`replica`] (state and dispatch), then [`normal`]
//! (request, pre-prepare, prepare, commit, execute), [`checkpoint`]
//! (checkpoints, garbage collection, state transfer), [`view_change`] and
//! [`ordering`] (the heartbeat that replaces a primary too slow to order).
//! [`client_quorum`] is the client's side of the protocol (how many matching
//! replies decide, which view to believe), shared by the SDK and the
//! simulator so both count replies the same way.

pub mod checkpoint;
pub mod client_quorum;
pub mod client_table;
pub mod config;
pub mod ids;
pub mod io;
pub mod message;
pub mod normal;
pub mod ordering;
pub mod replica;
pub mod retransmit;
pub mod view_change;

pub use config::{Config, ConfigError, ReadMode};
pub use ids::{ClientId, Instant, ReplicaId, RequestId, SeqNum, View};
pub use io::{Input, Output, PhaseTimes, Record};
pub use message::Message;
pub use replica::{Replica, RestoreError, Status};
