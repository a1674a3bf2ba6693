//! Two queues read as one, the first ahead of the second: how replica
//! traffic stays ahead of client traffic through every stage of a replica's
//! inbound path (the endpoint's frames, the decoded messages, the
//! verification stage's intake).
//!
//! # Policy
//! An item of the first lane is always taken before one of the second,
//! except that after [`SECOND_LANE_SHARE`] first-lane items in a row the
//! next item comes from the second lane if it has one. So replica traffic
//! waits behind at most one client item in that many, and a flood of replica
//! traffic (a faulty replica can send as fast as its link allows) cannot
//! starve clients altogether: their requests still reach the protocol, whose
//! per-request timers then replace a primary that does not order them.
//!
//! Within a lane, order is kept. Nothing is buffered here: the bounds are the
//! two channels' own.

use tokio::sync::mpsc;

/// After this many first-lane items in a row, one second-lane item (if any)
/// is taken next.
pub const SECOND_LANE_SHARE: u32 = 16;

/// Two receivers read as one, the first lane ahead of the second (see the
/// [module docs](self)).
#[derive(Debug)]
pub struct Lanes<T> {
    first: mpsc::Receiver<T>,
    second: mpsc::Receiver<T>,
    /// First-lane items taken since the last second-lane one.
    streak: u32,
}

impl<T> Lanes<T> {
    /// `first` ahead of `second`.
    pub fn new(first: mpsc::Receiver<T>, second: mpsc::Receiver<T>) -> Self {
        Lanes {
            first,
            second,
            streak: 0,
        }
    }

    /// One lane only (the second is closed and empty).
    pub fn single(only: mpsc::Receiver<T>) -> Self {
        let (_, closed) = mpsc::channel(1);
        Lanes::new(only, closed)
    }

    /// The two receivers, first lane first.
    pub fn into_parts(self) -> (mpsc::Receiver<T>, mpsc::Receiver<T>) {
        (self.first, self.second)
    }

    /// The next item by the policy, or `None` once both lanes are closed and
    /// empty. Cancel safe.
    pub async fn recv(&mut self) -> Option<T> {
        if let Some(item) = self.try_recv() {
            return Some(item);
        }
        tokio::select! {
            biased;
            Some(item) = self.first.recv() => {
                self.streak = self.streak.saturating_add(1);
                Some(item)
            }
            Some(item) = self.second.recv() => {
                self.streak = 0;
                Some(item)
            }
            else => None,
        }
    }

    /// The next item by the policy if one is queued now.
    pub fn try_recv(&mut self) -> Option<T> {
        if self.streak >= SECOND_LANE_SHARE {
            if let Ok(item) = self.second.try_recv() {
                self.streak = 0;
                return Some(item);
            }
        }
        if let Ok(item) = self.first.try_recv() {
            self.streak = self.streak.saturating_add(1);
            return Some(item);
        }
        let item = self.second.try_recv().ok()?;
        self.streak = 0;
        Some(item)
    }

    /// Items queued in both lanes.
    pub fn len(&self) -> usize {
        self.first.len() + self.second.len()
    }

    /// Whether both lanes are empty now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> From<mpsc::Receiver<T>> for Lanes<T> {
    fn from(only: mpsc::Receiver<T>) -> Self {
        Lanes::single(only)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(first: usize, second: usize) -> Lanes<(char, usize)> {
        let (a, ra) = mpsc::channel(first.max(1));
        let (b, rb) = mpsc::channel(second.max(1));
        for i in 0..first {
            a.try_send(('r', i)).expect("test channel");
        }
        for i in 0..second {
            b.try_send(('c', i)).expect("test channel");
        }
        Lanes::new(ra, rb)
    }

    #[test]
    fn the_first_lane_goes_ahead_but_leaves_the_second_its_share() {
        let share = SECOND_LANE_SHARE as usize;
        let mut lanes = filled(2 * share + 1, 3);
        let order: Vec<_> = std::iter::from_fn(|| lanes.try_recv()).collect();
        let mut expected: Vec<_> = (0..share).map(|i| ('r', i)).collect();
        expected.push(('c', 0));
        expected.extend((share..2 * share).map(|i| ('r', i)));
        expected.push(('c', 1));
        expected.push(('r', 2 * share));
        expected.push(('c', 2));
        assert_eq!(order, expected);
    }

    #[test]
    fn the_second_lane_alone_flows_in_order() {
        let mut lanes = filled(0, 5);
        let order: Vec<_> = std::iter::from_fn(|| lanes.try_recv()).collect();
        assert_eq!(order, (0..5).map(|i| ('c', i)).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn recv_waits_for_either_lane_and_ends_when_both_close() {
        let (a, ra) = mpsc::channel(4);
        let (b, rb) = mpsc::channel(4);
        let mut lanes = Lanes::new(ra, rb);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(item) = lanes.recv().await {
                got.push(item);
            }
            got
        });
        b.send(1).await.expect("test channel");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        a.send(2).await.expect("test channel");
        drop(a);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        b.send(3).await.expect("test channel");
        drop(b);
        assert_eq!(reader.await.expect("reader"), vec![1, 2, 3]);
    }
}
