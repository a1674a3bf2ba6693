//! The ordering watch: a backup that knows a client waits expects the
//! primary to keep pre-preparing, and starts a view change when it stops.
//!
//! # Why a second timer
//! Each waiting request has its own view-change deadline, one timeout after
//! it started waiting (see [`crate::replica::Pending::deadline`]). That
//! catches a primary that drops requests, however busy it keeps the others,
//! but not one that orders every request just before its deadline: a
//! primary that delays each PRE-PREPARE to just under the timeout holds
//! every operation for most of a timeout, forever, without tripping any
//! request's deadline (the attack of Clement et al., "Making Byzantine Fault
//! Tolerant Systems Tolerate Byzantine Faults", NSDI 2009). On real
//! processes it cut throughput to under 1% of the fault-free figure.
//!
//! Aardvark's answer is a heartbeat: while requests wait, the primary must
//! issue a PRE-PREPARE every T_pp. This module does that:
//!
//! * A backup **awaits ordering** while it holds a request that came on its
//!   client's own link (so the client is waiting on it: it broadcasts only
//!   after its first timeout) and that no pre-prepare of the current view
//!   holds yet (`Pending::deadline` set, `Pending::proposed` false: a backup
//!   sets `proposed` when an accepted pre-prepare carries the request).
//! * The watch starts when the backup begins to await ordering, and starts
//!   again at every new pre-prepare it accepts from the primary and when it
//!   enters a view. It expires one **ordering timeout** later.
//! * When it expires and the backup still awaits ordering, it starts a view
//!   change, exactly as when a request's deadline passes.
//!
//! Any new pre-prepare restarts the watch, not only one holding the awaited
//! request: an honest primary under more load than it can order still
//! proposes a batch every few round trips, while the request waits its turn
//! under its own deadline. What the heartbeat checks is that ordering goes
//! on; the deadline checks that it reaches every request.
//!
//! # The ordering timeout
//! `ORDER_ROUNDS` times this replica's estimate of one round of agreement
//! (a moving average of the time from accepting a pre-prepare to
//! committed-local), kept within `[timeout / 10, timeout / 2]` of the
//! current view-change timeout (so it backs off with it after failed view
//! changes). The round is set by the honest replicas' network and disks,
//! not by the primary: it runs from the pre-prepare's arrival, and the
//! 2f+1 commits it waits for include f+1 honest ones, so a faulty primary
//! can neither stretch it nor shrink it below what the honest replicas
//! take. On a WAN the watch scales with the round; on a LAN it sits at the
//! floor, which absorbs fsync stalls and scheduling on shared cores.
//!
//! # What it bounds, and what it does not
//! A primary that wants to stay in office must now pre-prepare within one
//! ordering timeout of a backup learning that a client waits. Backups learn
//! it when the client broadcasts the request, which the SDK does once the
//! reply is late for that client (four times its smoothed latency, at
//! least 100 ms, at most 500 ms), so the worst a slow primary can do
//! unreplaced is hold each operation for about that wait plus one ordering
//! timeout, instead of most of a view-change timeout. Tightening that
//! further needs backups to see requests at once (clients sending to every
//! replica) or throughput expectations carried across views, as Aardvark
//! does; neither is done here.
//!
//! Nothing here is persisted: after a restart the watch starts again from
//! whatever requests arrive.

use crate::io::Output;
use crate::replica::Replica;
use crate::Instant;
use std::time::Duration;

/// The ordering timeout is this many agreement rounds (within its bounds).
const ORDER_ROUNDS: u32 = 8;
/// The moving average of the round gives each new sample 1 / this weight.
const ROUND_SMOOTHING: u32 = 8;

impl Replica {
    /// How long a backup waiting on ordering waits for a new pre-prepare.
    pub(crate) fn ordering_timeout(&self) -> Duration {
        let timeout = self.view_change_timeout();
        (self.round_estimate * ORDER_ROUNDS).clamp(timeout / 10, timeout / 2)
    }

    /// Whether this replica, as a backup in an active view, holds a request
    /// its client waits on that no pre-prepare of this view holds.
    fn awaits_ordering(&self) -> bool {
        self.active
            && !self.is_primary()
            && self
                .pending
                .values()
                .any(|p| p.deadline.is_some() && !p.proposed)
    }

    /// A request its client waits on started to await ordering here: start
    /// the watch unless it runs already (a backup in an active view only).
    pub(crate) fn watch_ordering(&mut self) {
        if self.timer_order.is_none() && self.active && !self.is_primary() {
            self.timer_order = Some(self.now + self.ordering_timeout());
        }
    }

    /// The primary pre-prepared something new, or a view began: the watch
    /// starts again if anything still awaits ordering, and stops otherwise.
    pub(crate) fn ordering_progressed(&mut self) {
        self.timer_order = self
            .awaits_ordering()
            .then(|| self.now + self.ordering_timeout());
    }

    /// The watch expired: no new pre-prepare for one ordering timeout while
    /// a client waited. Leave the view, unless nothing awaits ordering any
    /// more (it executed, or arrived in a pre-prepare meanwhile), or a state
    /// transfer is under way (the awaited requests may be inside the state
    /// it brings; the request deadlines still run).
    pub(crate) fn on_timeout_order(&mut self, out: &mut Vec<Output>) {
        self.timer_order = None;
        if !self.awaits_ordering() {
            return;
        }
        if self.state_fetch.is_some() {
            self.timer_order = Some(self.now + self.ordering_timeout());
            return;
        }
        tracing::info!(
            view = self.view.0,
            primary = self.primary().0,
            waited_ms = self.ordering_timeout().as_millis() as u64,
            "no pre-prepare while a client waits; leaving the primary's view"
        );
        self.on_timeout_view_change(out);
    }

    /// A slot this replica accepted a pre-prepare for at `pre_prepared`
    /// committed now: one more sample of the agreement round.
    pub(crate) fn note_round(&mut self, pre_prepared: Instant) {
        let sample = self.now.since(pre_prepared);
        self.round_estimate =
            (self.round_estimate * (ROUND_SMOOTHING - 1) + sample) / ROUND_SMOOTHING;
    }
}
