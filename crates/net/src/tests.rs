//! End-to-end tests on 127.0.0.1 with ephemeral ports.

use crate::tls::{Identity, SERVER_NAME};
use crate::*;
use bytes::Bytes;
use pbft_crypto::{
    Authenticated, ClusterId, KeyPair, PublicKey, SigChecks, Signable, Signed, Signer,
    UnknownSigner, Verifier, VerifyError,
};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout};

const LIMIT: Duration = Duration::from_secs(20);

fn key(n: u8) -> KeyPair {
    KeyPair::from_seed([n; 32])
}

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn cfg() -> NetConfig {
    NetConfig {
        reconnect_backoff_min: Duration::from_millis(20),
        reconnect_backoff_max: Duration::from_millis(300),
        idle_timeout: Duration::from_secs(5),
        keep_alive: Duration::from_secs(1),
        ..NetConfig::default()
    }
}

/// Runs a test body under the global time limit.
async fn bounded<F: Future<Output = ()>>(body: F) {
    timeout(LIMIT, body).await.expect("test timed out");
}

async fn recv(rx: &mut Inbound) -> InboundFrame {
    timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no frame in time")
        .expect("channel closed")
}

/// Asserts nothing arrives for a while.
async fn quiet(rx: &mut Inbound, wait: Duration) {
    if let Ok(Some(frame)) = timeout(wait, rx.recv()).await {
        panic!("unexpected frame from {:?}", frame.from);
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        sleep(Duration::from_millis(20)).await;
    }
    panic!("condition never held: {what}");
}

fn any_client_policy(replicas: &[PublicKey]) -> AcceptPolicy {
    AcceptPolicy::replicas(replicas.iter().copied()).allow_any_client()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_exchange_frames_both_ways() {
    bounded(async {
        let (ka, kb) = (key(1), key(2));
        let policy = AcceptPolicy::replicas([ka.public(), kb.public()]);
        let (a, mut ra) = Endpoint::bind(localhost(), &ka, policy.clone(), cfg()).expect("bind a");
        let (b, mut rb) = Endpoint::bind(localhost(), &kb, policy, cfg()).expect("bind b");
        a.add_peer(kb.public(), b.local_addr());
        b.add_peer(ka.public(), a.local_addr());
        for i in 0..100u32 {
            a.send(kb.public(), Bytes::from(format!("a{i}")))
                .expect("a send");
            b.send(ka.public(), Bytes::from(format!("b{i}")))
                .expect("b send");
        }
        for i in 0..100u32 {
            let f = recv(&mut rb).await;
            assert_eq!(f.from, ka.public());
            assert_eq!(f.bytes, Bytes::from(format!("a{i}")), "in order");
            let f = recv(&mut ra).await;
            assert_eq!(f.from, kb.public());
            assert_eq!(f.bytes, Bytes::from(format!("b{i}")));
        }
        // Empty frames are frames too.
        a.send(kb.public(), Bytes::new()).expect("empty");
        assert!(recv(&mut rb).await.bytes.is_empty());
        assert!(a.stats().frames_sent >= 101);
        assert_eq!(b.stats().frames_received, 101);
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gets_reply_over_its_own_connection() {
    bounded(async {
        let (kr, kc) = (key(1), key(9));
        let (replica, mut rr) =
            Endpoint::bind(localhost(), &kr, any_client_policy(&[kr.public()]), cfg())
                .expect("bind");
        let (client, mut rc) = Endpoint::client(&kc, cfg()).expect("client");
        // Before the client connects, the replica has no route to it.
        assert_eq!(
            replica.send(kc.public(), Bytes::from_static(b"early")),
            Err(SendError::NotConnected(kc.public()))
        );
        client.add_peer(kr.public(), replica.local_addr());
        client
            .send(kr.public(), Bytes::from_static(b"request"))
            .expect("send");
        let f = recv(&mut rr).await;
        assert_eq!((f.from, &f.bytes[..]), (kc.public(), &b"request"[..]));
        assert!(replica.is_connected(&kc.public()));
        replica
            .send(kc.public(), Bytes::from_static(b"reply"))
            .expect("reply");
        let f = recv(&mut rc).await;
        assert_eq!((f.from, &f.bytes[..]), (kr.public(), &b"reply"[..]));
        client.shutdown().await;
        replica.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialler_pinning_the_wrong_key_never_connects() {
    bounded(async {
        let (kr, kc, wrong) = (key(1), key(9), key(3));
        let (replica, mut rr) =
            Endpoint::bind(localhost(), &kr, any_client_policy(&[kr.public()]), cfg())
                .expect("bind");
        let (client, _rc) = Endpoint::client(&kc, cfg()).expect("client");
        client.add_peer(wrong.public(), replica.local_addr());
        // Queued while (never) connecting.
        client
            .send(wrong.public(), Bytes::from_static(b"secret"))
            .expect("queued");
        wait_until("two failed dials", || client.stats().dial_failures >= 2).await;
        assert!(!client.is_connected(&wrong.public()));
        quiet(&mut rr, Duration::from_millis(300)).await;
        let stats = replica.stats();
        assert_eq!(stats.frames_received, 0);
        assert!(stats.handshake_failures >= 1, "{stats:?}");
        assert_eq!(client.stats().frames_sent, 0);
        client.shutdown().await;
        replica.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_client_is_refused_and_allow_listed_one_accepted() {
    bounded(async {
        let (kr, stranger, friend) = (key(1), key(8), key(9));
        let policy = AcceptPolicy::replicas([kr.public()]).with_clients([friend.public()]);
        let (replica, mut rr) = Endpoint::bind(localhost(), &kr, policy, cfg()).expect("bind");

        let (s, _rs) = Endpoint::client(&stranger, cfg()).expect("stranger");
        s.add_peer(kr.public(), replica.local_addr());
        s.send(kr.public(), Bytes::from_static(b"let me in"))
            .expect("queued");
        wait_until("refusal", || replica.stats().refused_peers >= 1).await;
        quiet(&mut rr, Duration::from_millis(300)).await;
        assert!(!replica.is_connected(&stranger.public()));

        let (f, _rf) = Endpoint::client(&friend, cfg()).expect("friend");
        f.add_peer(kr.public(), replica.local_addr());
        f.send(kr.public(), Bytes::from_static(b"hello"))
            .expect("send");
        let got = recv(&mut rr).await;
        assert_eq!(got.from, friend.public());

        // Revoking the friend closes its connection.
        replica.set_policy(AcceptPolicy::replicas([kr.public()]));
        wait_until("revoked", || !replica.is_connected(&friend.public())).await;
        for c in [s, f] {
            c.shutdown().await;
        }
        replica.shutdown().await;
    })
    .await;
}

/// Replica `a` (limited by `limits` to two client slots, in all or per
/// address), three clients (keys from `client_seed`) of which two get in
/// and the third is refused, then replica `b`, which still gets in. Returns
/// `a`, its inbound lanes, the clients, the keys of the two admitted, and `b`.
async fn two_client_slots_then_a_replica(
    limits: NetConfig,
    client_seed: u8,
) -> (
    Endpoint,
    Inbound,
    Vec<(Endpoint, Inbound)>,
    std::collections::BTreeSet<PublicKey>,
    Endpoint,
) {
    let (ka, kb) = (key(1), key(2));
    let policy = any_client_policy(&[ka.public(), kb.public()]);
    let (a, mut ra) = Endpoint::bind(localhost(), &ka, policy.clone(), limits).expect("a");
    let mut clients = Vec::new();
    for n in 0..3u8 {
        let (c, rc) = Endpoint::client(&key(client_seed + n), cfg()).expect("client");
        c.add_peer(ka.public(), a.local_addr());
        c.send(ka.public(), Bytes::from(vec![n])).expect("queued");
        clients.push((c, rc));
    }
    let mut admitted = std::collections::BTreeSet::new();
    for _ in 0..2 {
        admitted.insert(recv(&mut ra).await.from);
    }
    wait_until("the third client refused", || a.stats().refused_peers >= 1).await;
    quiet(&mut ra, Duration::from_millis(300)).await;
    assert_eq!(admitted.len(), 2, "two client slots");

    // Every client slot is held; a replica still gets in.
    let (b, _rb) = Endpoint::bind(localhost(), &kb, policy, cfg()).expect("b");
    b.add_peer(ka.public(), a.local_addr());
    b.send(ka.public(), Bytes::from_static(b"replica"))
        .expect("queued");
    let got = recv(&mut ra).await;
    assert_eq!((got.from, &got.bytes[..]), (kb.public(), &b"replica"[..]));
    (a, ra, clients, admitted, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_holding_every_slot_leave_room_for_replicas() {
    bounded(async {
        let limits = NetConfig {
            max_connections: 2,
            ..cfg()
        };
        let (a, _ra, clients, _, b) = two_client_slots_then_a_replica(limits, 20).await;
        for (c, _) in clients {
            c.shutdown().await;
        }
        b.shutdown().await;
        a.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_closes_that_connection_only() {
    bounded(async {
        let (kr, kr2, big, small) = (key(1), key(2), key(7), key(9));
        let limits = NetConfig {
            max_frame_len: 8192,
            max_client_frame_len: 1024,
            ..cfg()
        };
        let (replica, mut rr) = Endpoint::bind(
            localhost(),
            &kr,
            any_client_policy(&[kr.public(), kr2.public()]),
            limits.clone(),
        )
        .expect("bind");
        // A local send over the limit fails at once.
        assert_eq!(
            replica.send(big.public(), Bytes::from(vec![0; 8193])),
            Err(SendError::TooLarge {
                len: 8193,
                max: 8192
            })
        );

        // A client with a larger limit sends more than the replica accepts from clients.
        let (b, _rb) = Endpoint::client(&big, cfg()).expect("big");
        b.add_peer(kr.public(), replica.local_addr());
        b.send(kr.public(), Bytes::from(vec![7; 4096]))
            .expect("send");
        wait_until("oversize close", || replica.stats().oversize_closes >= 1).await;
        quiet(&mut rr, Duration::from_millis(200)).await;

        // Other peers are still served: a client within its limit...
        let (s, mut rs) = Endpoint::client(&small, limits.clone()).expect("small");
        s.add_peer(kr.public(), replica.local_addr());
        s.send(kr.public(), Bytes::from(vec![1; 1024]))
            .expect("send");
        let f = recv(&mut rr).await;
        assert_eq!((f.from, f.bytes.len()), (small.public(), 1024));
        replica
            .send(small.public(), Bytes::from_static(b"ok"))
            .expect("reply");
        assert_eq!(&recv(&mut rs).await.bytes[..], b"ok");
        // ...and a replica, whose limit is the larger one.
        let (r2, _rr2) = Endpoint::bind(
            localhost(),
            &kr2,
            AcceptPolicy::replicas([kr.public()]),
            limits,
        )
        .expect("bind r2");
        r2.add_peer(kr.public(), replica.local_addr());
        r2.send(kr.public(), Bytes::from(vec![2; 4096]))
            .expect("send");
        let f = recv(&mut rr).await;
        assert_eq!((f.from, f.bytes.len()), (kr2.public(), 4096));

        // The offender reconnects and may send frames within the limit.
        let mut delivered = false;
        for _ in 0..100 {
            let _ = b.send(kr.public(), Bytes::from_static(b"sorry"));
            if let Ok(Some(f)) = timeout(Duration::from_millis(100), rr.recv()).await {
                assert_eq!(f.from, big.public());
                delivered = true;
                break;
            }
        }
        assert!(delivered, "offender could not reconnect");
        assert_eq!(replica.stats().oversize_closes, 1);
        for e in [b, s, r2, replica] {
            e.shutdown().await;
        }
    })
    .await;
}

/// A raw QUIC connection attempt to `server` with the given TLS.
async fn raw_connect(
    tls: rustls::ClientConfig,
    server: &Endpoint,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let tls = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    let quic = quinn::Endpoint::client(localhost()).expect("raw endpoint");
    quic.connect_with(
        quinn::ClientConfig::new(Arc::new(tls)),
        server.local_addr(),
        SERVER_NAME,
    )
    .expect("connect")
    .await
}

/// A raw QUIC connection, authenticated as `as_key`, to `server`.
async fn raw_connection(as_key: &KeyPair, server: &Endpoint) -> quinn::Connection {
    let identity = Identity::new(as_key).expect("identity");
    let tls = identity
        .client_config(server.public_key())
        .expect("client tls");
    raw_connect(tls, server).await.expect("handshake")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_required() {
    bounded(async {
        let (kr, kc) = (key(1), key(9));
        let (replica, mut rr) =
            Endpoint::bind(localhost(), &kr, any_client_policy(&[kr.public()]), cfg())
                .expect("bind");
        let identity = Identity::new(&kc).expect("identity");
        let tls = identity.client_config_without_cert(replica.public_key());
        // TLS 1.3 lets the client finish before the server has checked its
        // certificate; the server then closes the connection.
        if let Ok(conn) = raw_connect(tls, &replica).await {
            if let Ok(mut s) = conn.open_uni().await {
                let _ = s.write_all(&[0, 0, 0, 1, 42]).await;
                let _ = s.finish();
            }
            let closed = timeout(Duration::from_secs(5), conn.closed())
                .await
                .expect("closed");
            assert!(
                matches!(closed, quinn::ConnectionError::ConnectionClosed(_)),
                "{closed:?}"
            );
        }
        quiet(&mut rr, Duration::from_millis(200)).await;
        assert!(replica.stats().handshake_failures >= 1);
        assert_eq!(replica.stats().frames_received, 0);
        replica.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_does_not_hurt_the_endpoint() {
    bounded(async {
        let (kr, kg, kc) = (key(1), key(6), key(9));
        let (replica, mut rr) =
            Endpoint::bind(localhost(), &kr, any_client_policy(&[kr.public()]), cfg())
                .expect("bind");

        // Random UDP datagrams at the QUIC socket.
        let udp = tokio::net::UdpSocket::bind(localhost()).await.expect("udp");
        for i in 0..50u8 {
            let junk: Vec<u8> = (0..1200u32).map(|j| (j as u8).wrapping_mul(i)).collect();
            let _ = udp.send_to(&junk, replica.local_addr()).await;
        }

        // An authenticated peer writing a huge length prefix.
        let conn = raw_connection(&kg, &replica).await;
        let mut s = conn.open_uni().await.expect("uni");
        let _ = s.write_all(&[0xff; 64]).await;
        let _ = s.finish();
        let closed = timeout(Duration::from_secs(5), conn.closed())
            .await
            .expect("closed");
        assert!(
            matches!(closed, quinn::ConnectionError::ApplicationClosed(ref c)
            if c.error_code == quinn::VarInt::from_u32(close_code::FRAME_TOO_LARGE))
        );

        // A frame cut short by the end of the stream.
        let conn = raw_connection(&kg, &replica).await;
        let mut s = conn.open_uni().await.expect("uni");
        let _ = s.write_all(&[0, 0, 0, 10, 1, 2, 3]).await;
        let _ = s.finish();
        let closed = timeout(Duration::from_secs(5), conn.closed())
            .await
            .expect("closed");
        assert!(
            matches!(closed, quinn::ConnectionError::ApplicationClosed(ref c)
            if c.error_code == quinn::VarInt::from_u32(close_code::PROTOCOL_VIOLATION))
        );

        // A stream reset mid-frame, then a half header.
        let conn = raw_connection(&kg, &replica).await;
        let mut s = conn.open_uni().await.expect("uni");
        let _ = s.write_all(&[0, 0, 1, 0, 9, 9]).await;
        let _ = s.reset(quinn::VarInt::from_u32(77));
        let mut s = conn.open_uni().await.expect("uni");
        let _ = s.write_all(&[0, 0]).await;
        let _ = s.finish();
        let _ = timeout(Duration::from_secs(5), conn.closed()).await;

        // Bidirectional streams are not allowed.
        let conn = raw_connection(&kg, &replica).await;
        assert!(timeout(Duration::from_millis(200), conn.open_bi())
            .await
            .is_err());
        conn.close(0u32.into(), b"bye");

        quiet(&mut rr, Duration::from_millis(200)).await;
        let stats = replica.stats();
        assert!(
            stats.oversize_closes >= 1 && stats.bad_frames >= 2,
            "{stats:?}"
        );

        // Still serving.
        let (c, _rc) = Endpoint::client(&kc, cfg()).expect("client");
        c.add_peer(kr.public(), replica.local_addr());
        c.send(kr.public(), Bytes::from_static(b"fine"))
            .expect("send");
        assert_eq!(recv(&mut rr).await.from, kc.public());
        c.shutdown().await;
        replica.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialler_reconnects_after_listener_restart() {
    bounded(async {
        let (kr, kc) = (key(1), key(9));
        let policy = any_client_policy(&[kr.public()]);
        let (replica, mut rr) =
            Endpoint::bind(localhost(), &kr, policy.clone(), cfg()).expect("bind");
        let addr = replica.local_addr();
        let (client, mut rc) = Endpoint::client(&kc, cfg()).expect("client");
        client.add_peer(kr.public(), addr);
        client
            .send(kr.public(), Bytes::from_static(b"one"))
            .expect("send");
        assert_eq!(&recv(&mut rr).await.bytes[..], b"one");

        replica.shutdown().await;
        // After shutdown the receiver ends and sends fail.
        assert!(recv_or_end(&mut rr).await.is_none());
        assert_eq!(
            replica.send(kc.public(), Bytes::new()),
            Err(SendError::Shutdown)
        );
        drop(replica);
        wait_until("client noticed", || !client.is_connected(&kr.public())).await;

        // Same key, same address.
        let (replica, mut rr) = Endpoint::bind(addr, &kr, policy, cfg()).expect("rebind");
        let mut delivered = false;
        for i in 0..100u32 {
            let _ = client.send(kr.public(), Bytes::from(format!("again{i}")));
            if let Ok(Some(f)) = timeout(Duration::from_millis(100), rr.recv()).await {
                assert_eq!(f.from, kc.public());
                delivered = true;
                break;
            }
        }
        assert!(delivered, "no frame after restart");
        replica
            .send(kc.public(), Bytes::from_static(b"back"))
            .expect("reply");
        assert_eq!(&recv(&mut rc).await.bytes[..], b"back");
        client.shutdown().await;
        replica.shutdown().await;
    })
    .await;
}

async fn recv_or_end(rx: &mut Inbound) -> Option<InboundFrame> {
    timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("receiver did not end")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_on_a_used_port_fails() {
    bounded(async {
        let k = key(1);
        let (a, _ra) =
            Endpoint::bind(localhost(), &k, AcceptPolicy::default(), cfg()).expect("bind");
        let err = Endpoint::bind(a.local_addr(), &k, AcceptPolicy::default(), cfg())
            .expect_err("port in use");
        assert!(matches!(err, NetError::Bind { addr, .. } if addr == a.local_addr()));
        assert!(err.to_string().contains(&a.local_addr().to_string()));
        a.shutdown().await;
    })
    .await;
}

#[test]
fn endpoints_need_a_runtime_and_a_sane_config() {
    let k = key(1);
    assert!(matches!(
        Endpoint::client(&k, NetConfig::default()),
        Err(NetError::NoRuntime)
    ));
    let bad = NetConfig {
        max_frame_len: 0,
        ..NetConfig::default()
    };
    assert!(matches!(bad.validate(), Err(NetError::Config(_))));
    let bad = NetConfig {
        max_client_frame_len: NetConfig::default().max_frame_len + 1,
        ..NetConfig::default()
    };
    assert!(matches!(bad.validate(), Err(NetError::Config(_))));
    let bad = NetConfig {
        keep_alive: Duration::from_secs(30),
        ..NetConfig::default()
    };
    assert!(matches!(bad.validate(), Err(NetError::Config(_))));
    assert!(NetConfig::default().validate().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_drops_instead_of_growing() {
    bounded(async {
        let (kc, nobody) = (key(9), key(5));
        // A port with nothing behind it.
        let dead = std::net::UdpSocket::bind(localhost())
            .expect("udp")
            .local_addr()
            .expect("addr");
        let small = NetConfig {
            send_queue_len: 4,
            ..cfg()
        };
        let (client, _rc) = Endpoint::client(&kc, small).expect("client");
        assert_eq!(
            client.send(nobody.public(), Bytes::new()),
            Err(SendError::NotConnected(nobody.public()))
        );
        client.add_peer(nobody.public(), dead);
        for _ in 0..4 {
            client.send(nobody.public(), Bytes::new()).expect("queued");
        }
        assert_eq!(
            client.send(nobody.public(), Bytes::new()),
            Err(SendError::QueueFull(nobody.public()))
        );
        assert_eq!(client.stats().frames_dropped, 2);
        client.remove_peer(&nobody.public());
        assert_eq!(
            client.send(nobody.public(), Bytes::new()),
            Err(SendError::NotConnected(nobody.public()))
        );
        client.shutdown().await;
    })
    .await;
}

// ---- verification stage ----

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Note {
    author: u8,
    text: String,
}

impl Signable for Note {
    const KIND: &'static str = "net-test-note";
}

struct Keys(Vec<PublicKey>);

/// A local wrapper (the orphan rule forbids implementing for `Signed<Note>` here).
struct SignedNote(Signed<Note>);

impl Authenticated for SignedNote {
    type Keys = Keys;
    fn collect_signatures(&self, keys: &Keys, checks: &mut SigChecks) -> Result<(), VerifyError> {
        let key = keys
            .0
            .get(self.0.value.author as usize)
            .ok_or_else(|| UnknownSigner(format!("author {}", self.0.value.author)))?;
        checks.add(*key, &self.0);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_stage_forwards_good_and_drops_bad() {
    forwards_good_and_drops_bad(2).await;
}

#[tokio::test(flavor = "current_thread")]
async fn inline_verify_stage_forwards_good_and_drops_bad() {
    forwards_good_and_drops_bad(0).await;
}

/// 200 items (a tenth with bad signatures, a tenth naming unknown signers)
/// through a stage of `workers` threads (0: inline) with batches of 8.
async fn forwards_good_and_drops_bad(workers: usize) {
    bounded(async {
        let cluster = ClusterId(3);
        let signers: Vec<Signer> = (0..3u8).map(|i| Signer::new(key(i + 1), cluster)).collect();
        let keys = Arc::new(Keys(signers.iter().map(|s| s.public_key()).collect()));
        let (in_tx, in_rx) = mpsc::channel(16);
        let (out_tx, mut out_rx) = mpsc::channel(16);
        let handle = spawn_verifier_with(Verifier::new(cluster), keys, in_rx, out_tx, workers, 8);

        let total = 200usize;
        let feeder = tokio::spawn(async move {
            for i in 0..total {
                let author = (i % 3) as u8;
                let mut signed = signers[author as usize].sign(Note {
                    author,
                    text: format!("n{i}"),
                });
                if i % 10 == 3 {
                    signed.signature.0[0] ^= 1; // bad signature
                }
                if i % 10 == 7 {
                    signed.value.author = 42; // unknown signer
                }
                in_tx
                    .send(Unchecked::new(PublicKey([author; 32]), SignedNote(signed)))
                    .await
                    .expect("feed");
            }
        });
        let mut got = Vec::new();
        while let Some(Checked { from, value, .. }) = out_rx.recv().await {
            let note = value.into_inner().0.value;
            assert_eq!(from, PublicKey([note.author; 32]));
            got.push(note.text);
        }
        feeder.await.expect("feeder");
        let expected: Vec<String> = (0..total)
            .filter(|i| i % 10 != 3 && i % 10 != 7)
            .map(|i| format!("n{i}"))
            .collect();
        assert_eq!(got, expected, "good items, in order");
        let stats = handle.stats();
        assert_eq!(stats.verified, expected.len() as u64);
        assert_eq!(stats.rejected, (total - expected.len()) as u64);
        assert!(stats.batches >= 1);
        handle.join().await;
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn verify_stage_ends_when_its_output_is_dropped_or_it_is_aborted() {
    ends_when_output_dropped_or_aborted([3, 2]).await;
}

#[tokio::test(flavor = "current_thread")]
async fn inline_verify_stage_ends_when_its_output_is_dropped_or_it_is_aborted() {
    ends_when_output_dropped_or_aborted([0, 0]).await;
}

/// The two endings, on stages of `workers[0]` and `workers[1]` threads.
async fn ends_when_output_dropped_or_aborted(workers: [usize; 2]) {
    bounded(async {
        let cluster = ClusterId(3);
        let signer = Signer::new(key(1), cluster);
        let keys = Arc::new(Keys(vec![signer.public_key()]));
        let note = |i: usize| {
            SignedNote(signer.sign(Note {
                author: 0,
                text: format!("n{i}"),
            }))
        };
        // The output receiver goes away while the input stays open.
        let (in_tx, in_rx) = mpsc::channel(16);
        let (out_tx, mut out_rx) = mpsc::channel(1);
        let handle = spawn_verifier_with(
            Verifier::new(cluster),
            keys.clone(),
            in_rx,
            out_tx,
            workers[0],
            4,
        );
        in_tx
            .send(Unchecked::new(PublicKey([0; 32]), note(0)))
            .await
            .expect("feed");
        assert!(out_rx.recv().await.is_some());
        drop(out_rx);
        handle.join().await;
        assert!(in_tx.is_closed(), "the stage dropped its input");

        // Aborted while idle, input and output open.
        let (in_tx, in_rx) = mpsc::channel::<Unchecked<SignedNote>>(16);
        let (out_tx, _out_rx) = mpsc::channel(1);
        let handle =
            spawn_verifier_with(Verifier::new(cluster), keys, in_rx, out_tx, workers[1], 4);
        handle.abort();
        handle.join().await;
        assert!(in_tx.is_closed(), "the stage dropped its input");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_frames_go_ahead_of_a_client_backlog() {
    bounded(async {
        let (ka, kb, kc) = (key(1), key(2), key(30));
        let policy = any_client_policy(&[ka.public(), kb.public()]);
        let (a, mut ra) = Endpoint::bind(localhost(), &ka, policy.clone(), cfg()).expect("a");
        let (c, _rc) = Endpoint::client(&kc, cfg()).expect("client");
        c.add_peer(ka.public(), a.local_addr());
        let backlog = 200usize;
        for i in 0..backlog {
            c.send(ka.public(), Bytes::from((i as u32).to_be_bytes().to_vec()))
                .expect("queued");
        }
        wait_until("the client's frames are queued", || ra.len() == backlog).await;

        let (b, _rb) = Endpoint::bind(localhost(), &kb, policy, cfg()).expect("b");
        b.add_peer(ka.public(), a.local_addr());
        b.send(ka.public(), Bytes::from_static(b"replica"))
            .expect("queued");
        wait_until("the replica's frame is queued", || ra.len() == backlog + 1).await;

        // It arrived last, and is read first.
        let first = recv(&mut ra).await;
        assert_eq!(
            (first.from, &first.bytes[..]),
            (kb.public(), &b"replica"[..])
        );
        for i in 0..backlog {
            let f = recv(&mut ra).await;
            assert_eq!(
                (f.from, &f.bytes[..]),
                (kc.public(), &(i as u32).to_be_bytes()[..])
            );
        }
        for e in [c, b, a] {
            e.shutdown().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_holds_at_most_its_byte_budget_until_the_consumer_lets_go() {
    bounded(async {
        let (kr, kc) = (key(1), key(31));
        let limits = NetConfig {
            max_client_frame_len: 1024,
            client_lane_bytes: 4096,
            ..cfg()
        };
        let (r, mut rr) =
            Endpoint::bind(localhost(), &kr, any_client_policy(&[kr.public()]), limits)
                .expect("bind");
        let (c, _rc) = Endpoint::client(&kc, cfg()).expect("client");
        c.add_peer(kr.public(), r.local_addr());
        for i in 0..10u8 {
            c.send(kr.public(), Bytes::from(vec![i; 1024]))
                .expect("queued");
        }
        wait_until("four frames fill the budget", || rr.len() == 4).await;
        quiet_for_a_while(&rr, 4).await;

        // Taken from the queue but still held: the budget stays spent.
        let held: Vec<InboundFrame> = [recv(&mut rr).await, recv(&mut rr).await].into();
        assert_eq!(held.iter().map(|f| f.held.bytes()).sum::<usize>(), 2048);
        quiet_for_a_while(&rr, 2).await;

        // Let go of them, and two more come in.
        drop(held);
        wait_until("two more frames", || rr.len() == 4).await;
        let mut rest = Vec::new();
        while rest.len() < 8 {
            rest.push(recv(&mut rr).await.bytes[0]);
        }
        assert_eq!(rest, (2..10).collect::<Vec<u8>>(), "nothing lost, in order");
        c.shutdown().await;
        r.shutdown().await;
    })
    .await;
}

/// Asserts that the lanes keep exactly `len` frames for a while.
async fn quiet_for_a_while(rx: &Inbound, len: usize) {
    for _ in 0..10 {
        sleep(Duration::from_millis(30)).await;
        assert_eq!(rx.len(), len, "more frames than the budget allows");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_from_one_address_are_limited_and_replicas_still_get_in() {
    bounded(async {
        let limits = NetConfig {
            max_connections_per_address: 2,
            ..cfg()
        };
        let (a, mut ra, clients, from_clients, b) =
            two_client_slots_then_a_replica(limits, 40).await;
        let ka = key(1);

        // A client that leaves frees its slot for another (the refused one,
        // which keeps redialling, leaves first).
        let (refused, admitted): (Vec<_>, Vec<_>) = clients
            .into_iter()
            .partition(|(c, _)| !from_clients.contains(&c.public_key()));
        for (c, _) in refused {
            c.shutdown().await;
        }
        let mut clients = admitted;
        let (gone, _) = clients.remove(0);
        gone.shutdown().await;
        let (d, _rd) = Endpoint::client(&key(50), cfg()).expect("client");
        d.add_peer(ka.public(), a.local_addr());
        let mut admitted = false;
        for _ in 0..100 {
            let _ = d.send(ka.public(), Bytes::from_static(b"late"));
            if let Ok(Some(f)) = timeout(Duration::from_millis(100), ra.recv()).await {
                if f.from == key(50).public() {
                    admitted = true;
                    break;
                }
            }
        }
        assert!(admitted, "a freed slot is given to a new client");
        for (c, _) in clients {
            c.shutdown().await;
        }
        for e in [d, b, a] {
            e.shutdown().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_cannot_make_a_replica_queue_more_than_its_budgets() {
    bounded(async {
        let kr = key(1);
        const FRAME: usize = 64 * 1024;
        const PER_CLIENT: usize = 512 * 1024;
        const ALL_CLIENTS: usize = 768 * 1024;
        let limits = NetConfig {
            max_frame_len: 256 * 1024,
            max_client_frame_len: 64 * 1024,
            client_send_queue_bytes: PER_CLIENT,
            client_send_bytes_total: ALL_CLIENTS,
            ..cfg()
        };
        let (r, _rr) = Endpoint::bind(localhost(), &kr, any_client_policy(&[kr.public()]), limits)
            .expect("bind");
        // Clients that read nothing, and buffer little before their QUIC
        // windows close.
        let lazy = NetConfig {
            max_frame_len: 1024 * 1024,
            replica_lane_bytes: 1024 * 1024,
            client_lane_bytes: 1024 * 1024,
            client_send_bytes_total: 1024 * 1024,
            recv_queue_len: 4,
            ..cfg()
        };
        let mut clients = Vec::new();
        for n in 0..2u8 {
            let kc = key(60 + n);
            let (c, rc) = Endpoint::client(&kc, lazy.clone()).expect("client");
            c.add_peer(kr.public(), r.local_addr());
            c.send(kr.public(), Bytes::from_static(b"hello"))
                .expect("queued");
            clients.push((kc.public(), c, rc));
        }
        wait_until("both clients connected", || {
            clients.iter().all(|(k, _, _)| r.is_connected(k))
        })
        .await;

        let (mut sent, mut refused, mut most) = (0usize, 0usize, 0u64);
        for i in 0..2000 {
            for (k, _, _) in &clients {
                match r.send(*k, Bytes::from(vec![i as u8; FRAME])) {
                    Ok(()) => sent += 1,
                    Err(SendError::QueueFull(_)) => refused += 1,
                    Err(e) => panic!("unexpected send error {e}"),
                }
                most = most.max(r.stats().queued_send_bytes);
            }
            if i % 32 == 0 {
                sleep(Duration::from_millis(2)).await;
            }
        }
        assert!(
            refused > 0,
            "sends were refused once the budgets were spent"
        );
        assert!(
            most <= ALL_CLIENTS as u64,
            "at most {ALL_CLIENTS} bytes queued for clients, saw {most}"
        );
        assert!(
            (sent * FRAME) < 4000 * FRAME / 2,
            "most frames were refused: {sent} sent, {refused} refused"
        );
        for (_, c, _) in clients {
            c.shutdown().await;
        }
        wait_until("the queues are given back", || {
            r.stats().queued_send_bytes == 0
        })
        .await;
        r.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_stage_takes_the_first_lane_ahead_of_the_second() {
    bounded(async {
        let cluster = ClusterId(3);
        let signer = Signer::new(key(1), cluster);
        let keys = Arc::new(Keys(vec![signer.public_key()]));
        let note = |text: String| SignedNote(signer.sign(Note { author: 0, text }));
        let (replicas_tx, replicas_rx) = mpsc::channel(64);
        let (clients_tx, clients_rx) = mpsc::channel(64);
        // The clients' backlog is queued first.
        for i in 0..40 {
            clients_tx
                .try_send(Unchecked::new(PublicKey([2; 32]), note(format!("c{i}"))))
                .expect("queued");
        }
        for i in 0..8 {
            replicas_tx
                .try_send(Unchecked::new(PublicKey([1; 32]), note(format!("r{i}"))))
                .expect("queued");
        }
        drop((replicas_tx, clients_tx));
        let (out_tx, mut out_rx) = mpsc::channel(64);
        let lanes = Lanes::new(replicas_rx, clients_rx);
        let handle = spawn_verifier_with(Verifier::new(cluster), keys, lanes, out_tx, 1, 4);
        let mut got = Vec::new();
        while let Some(checked) = out_rx.recv().await {
            got.push(checked.value.into_inner().0.value.text);
        }
        let expected: Vec<String> = (0..8)
            .map(|i| format!("r{i}"))
            .chain((0..40).map(|i| format!("c{i}")))
            .collect();
        assert_eq!(
            got, expected,
            "replica items first, then the clients' in order"
        );
        handle.join().await;
    })
    .await;
}
