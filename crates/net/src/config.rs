//! Tunables of an [`Endpoint`](crate::Endpoint).

use crate::NetError;
use std::time::Duration;

/// Tunables of an [`Endpoint`](crate::Endpoint). Every queue and size here is a
/// hard bound; see the crate documentation for what they bound together.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Largest frame payload sent, or accepted from a replica, in bytes (default
    /// 16 MiB, at most `u32::MAX`). A peer that announces a larger frame has its
    /// connection closed. Connections we dial are to replicas.
    pub max_frame_len: usize,
    /// Largest frame accepted on an inbound connection admitted as a client
    /// (default 1 MiB, at most `max_frame_len`). Clients are the unbounded set
    /// of peers, so their limit bounds most of the endpoint's memory.
    pub max_client_frame_len: usize,
    /// Frames queued per peer connection before [`Endpoint::send`](crate::Endpoint::send)
    /// drops new ones with [`SendError::QueueFull`](crate::SendError::QueueFull) (default 1024).
    pub send_queue_len: usize,
    /// Bytes queued per connection to a replica before sends are dropped
    /// (default 64 MiB). A frame always fits an empty queue, so one frame of
    /// up to `max_frame_len` can always be sent.
    pub send_queue_bytes: usize,
    /// Bytes queued per connection to a client (default 4 MiB; the same
    /// one-frame rule).
    pub client_send_queue_bytes: usize,
    /// Bytes queued on all client connections together (default 256 MiB, at
    /// least `max_frame_len`).
    pub client_send_bytes_total: usize,
    /// Capacity in frames of each inbound lane, the replicas' and the
    /// clients' (default 4096). When a lane is full, its readers wait, and
    /// QUIC flow control slows the senders.
    pub recv_queue_len: usize,
    /// Byte budget of the replicas' inbound lane (default 256 MiB, at least
    /// `max_frame_len`): frames from replicas queued or still held by the
    /// consumer (see [`Held`](crate::Held)).
    pub replica_lane_bytes: usize,
    /// Byte budget of the clients' inbound lane (default 64 MiB, at least
    /// `max_client_frame_len`), shared by every client.
    pub client_lane_bytes: usize,
    /// Most inbound client connections (handshaking or established) at once
    /// (default 512). Replicas do not count once authenticated, and
    /// [`REPLICA_RESERVE`](crate::REPLICA_RESERVE) more handshake slots are kept for them, so clients
    /// holding every slot cannot lock replicas out. Every connection attempt
    /// first proves its source address (a QUIC retry).
    pub max_connections: usize,
    /// Most inbound client connections from one IP address (default 256),
    /// counted like `max_connections`, with the same reserve for replicas.
    pub max_connections_per_address: usize,
    /// First delay before redialling a peer (default 100 ms).
    pub reconnect_backoff_min: Duration,
    /// Largest delay between redials; the delay doubles from the minimum up to
    /// this (default 5 s). Each delay gets up to 25 % random jitter.
    pub reconnect_backoff_max: Duration,
    /// A connection (or handshake) silent for this long is closed (default 10 s).
    pub idle_timeout: Duration,
    /// Interval of keep-alive packets on idle connections; must be below
    /// `idle_timeout` (default 2 s).
    pub keep_alive: Duration,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            max_frame_len: 16 * 1024 * 1024,
            max_client_frame_len: 1024 * 1024,
            send_queue_len: 1024,
            send_queue_bytes: 64 * 1024 * 1024,
            client_send_queue_bytes: 4 * 1024 * 1024,
            client_send_bytes_total: 256 * 1024 * 1024,
            recv_queue_len: 4096,
            replica_lane_bytes: 256 * 1024 * 1024,
            client_lane_bytes: 64 * 1024 * 1024,
            max_connections: 512,
            max_connections_per_address: 256,
            reconnect_backoff_min: Duration::from_millis(100),
            reconnect_backoff_max: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(2),
        }
    }
}

impl NetConfig {
    /// Checks that the values are usable.
    pub fn validate(&self) -> Result<(), NetError> {
        let bad = |msg: &str| Err(NetError::Config(msg.to_string()));
        if self.max_frame_len == 0 || u32::try_from(self.max_frame_len).is_err() {
            return bad("max_frame_len must be between 1 and u32::MAX");
        }
        if self.max_client_frame_len == 0 || self.max_client_frame_len > self.max_frame_len {
            return bad("max_client_frame_len must be between 1 and max_frame_len");
        }
        if self.send_queue_len == 0 || self.recv_queue_len == 0 {
            return bad("send_queue_len and recv_queue_len must be positive");
        }
        if self.send_queue_bytes == 0
            || self.client_send_queue_bytes == 0
            || self.client_send_bytes_total < self.max_frame_len
        {
            return bad("send_queue_bytes and client_send_queue_bytes must be positive, and client_send_bytes_total at least max_frame_len");
        }
        if self.replica_lane_bytes < self.max_frame_len
            || self.client_lane_bytes < self.max_client_frame_len
            || u32::try_from(self.replica_lane_bytes).is_err()
            || u32::try_from(self.client_lane_bytes).is_err()
        {
            return bad("replica_lane_bytes and client_lane_bytes must be at least the frame limits of their peers and below 4 GiB");
        }
        if self.max_connections == 0 || self.max_connections_per_address == 0 {
            return bad("max_connections and max_connections_per_address must be positive");
        }
        if self.reconnect_backoff_min.is_zero()
            || self.reconnect_backoff_min > self.reconnect_backoff_max
        {
            return bad("need 0 < reconnect_backoff_min <= reconnect_backoff_max");
        }
        if self.keep_alive.is_zero() || self.keep_alive >= self.idle_timeout {
            return bad("need 0 < keep_alive < idle_timeout");
        }
        Ok(())
    }
}
