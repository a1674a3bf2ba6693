//! Key files (pbft-crypto): fuzzed bytes as a secret key file (mode 0600)
//! and as a public key file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbft_crypto::keyfile::{read_public, read_secret};
use std::path::PathBuf;
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| pbft_fuzz::scratch("keyfile"));
    let path = dir.join("fuzzed.key");
    let _ = std::fs::remove_file(&path);
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .expect("create key file");
        f.write_all(data).expect("write");
    }
    if let Ok(key) = read_secret(&path) {
        assert_eq!(read_secret(&path).expect("again").public(), key.public());
    }
    let _ = read_public(&path);
});
