//! `pbft_core::Message::decode` (every message kind, nested certificates and
//! batches), then what the node does next with a decoded message: the
//! signature and structure checks of the verification stage. A decoded
//! message re-encodes to bytes that decode to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbft_core::Message;
use pbft_crypto::{ClusterId, Verifier};
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    static CONFIG: OnceLock<pbft_core::Config> = OnceLock::new();
    let config = CONFIG.get_or_init(pbft_fuzz::config);
    let Ok(message) = Message::decode(data) else {
        return;
    };
    let again = Message::decode(&message.encode()).expect("re-encoded message decodes");
    assert_eq!(again, message);
    let _ = message.kind();
    let _ = message.replica();
    let _ = Verifier::new(ClusterId(pbft_fuzz::CLUSTER)).verify(message, config);
});
