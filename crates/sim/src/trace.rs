//! Event tracing: a hash of the run (for determinism checks) and one-line
//! descriptions of messages (for `--verbose`).

use pbft_core::Message;

/// FNV-1a over the events of a run: two runs with the same seed must agree.
#[derive(Clone, Debug)]
pub(crate) struct TraceHash(u64);

impl TraceHash {
    pub fn new() -> Self {
        TraceHash(0xcbf2_9ce4_8422_2325)
    }

    pub fn add_bytes(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn add(&mut self, words: &[u64]) {
        for w in words {
            self.add_bytes(&w.to_le_bytes());
        }
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// A one-line summary of a message.
pub(crate) fn describe(m: &Message) -> String {
    match m {
        Message::Request(r) => format!(
            "REQUEST c{} t{} ro={}",
            &r.client.0.to_hex()[..6],
            r.request_id.0,
            r.read_only
        ),
        Message::PrePrepare(pp, b) => format!(
            "PRE-PREPARE {} {} {} ({} requests) from r{}",
            pp.view,
            pp.seq,
            pp.digest,
            b.requests.len(),
            pp.replica.0
        ),
        Message::Prepare(p) => format!(
            "PREPARE {} {} {} from r{}",
            p.view, p.seq, p.digest, p.replica.0
        ),
        Message::Commit(c) => format!(
            "COMMIT {} {} {} from r{}",
            c.view, c.seq, c.digest, c.replica.0
        ),
        Message::Checkpoint(c) => {
            format!("CHECKPOINT {} {} from r{}", c.seq, c.digest, c.replica.0)
        }
        Message::ViewChange(vc) => format!(
            "VIEW-CHANGE to {} stable {} prepared {:?} from r{}",
            vc.new_view,
            vc.checkpoint.seq,
            vc.prepared
                .iter()
                .map(|p| (p.pre_prepare.view.0, p.pre_prepare.seq.0))
                .collect::<Vec<_>>(),
            vc.replica.0
        ),
        Message::NewView(nv, b) => format!(
            "NEW-VIEW {} ({} view changes, pre-prepares {:?}, {} batches) from r{}",
            nv.view,
            nv.view_changes.len(),
            nv.pre_prepares
                .iter()
                .map(|pp| pp.seq.0)
                .collect::<Vec<_>>(),
            b.len(),
            nv.replica.0
        ),
        Message::FetchBatch(m) => format!("FETCH-BATCH {} from r{}", m.digest, m.replica.0),
        Message::BatchData(m) => format!("BATCH-DATA {} from r{}", m.batch.digest(), m.replica.0),
        Message::FetchState(m) => {
            format!("FETCH-STATE {} {:?} from r{}", m.seq, m.part, m.replica.0)
        }
        Message::StateData(m) => format!(
            "STATE-DATA {} {} from r{}",
            m.seq,
            match &m.body {
                pbft_core::message::StateBody::Summary { count, .. } =>
                    format!("summary ({count} pages)"),
                pbft_core::message::StateBody::Leaves { group, leaves } =>
                    format!("leaves of group {group} ({})", leaves.len()),
                pbft_core::message::StateBody::Page { index, bytes } =>
                    format!("page {index} ({} bytes)", bytes.len()),
            },
            m.replica.0
        ),
        Message::Reply(r) => format!("REPLY t{} {} from r{}", r.request_id.0, r.view, r.replica.0),
        Message::Progress(m) => format!(
            "PROGRESS {} active={} stable {} executed {} from r{}",
            m.view, m.active, m.stable, m.last_executed, m.replica.0
        ),
        Message::Certificate(cert, batch) => match cert.commits.first() {
            Some(c) => format!(
                "CERTIFICATE {} {} {} ({} commits, batch {})",
                c.view,
                c.seq,
                c.digest,
                cert.commits.len(),
                batch.is_some()
            ),
            None => "CERTIFICATE (empty)".to_string(),
        },
        other => other.kind().to_uppercase(),
    }
}
