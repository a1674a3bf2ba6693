//! TLS identities: self-signed ed25519 certificates, key pinning on the
//! dialling side, key extraction on the accepting side.
//!
//! Only the certificate's subject public key matters. Names, validity dates,
//! issuer and the certificate's self-signature are ignored: possession of the
//! key is proved by the TLS 1.3 `CertificateVerify` handshake signature, which
//! both verifiers check with *ring* (only the ed25519 scheme is offered and
//! accepted), and the key itself is then either compared with the pinned one
//! (dialler) or handed to the [`AcceptPolicy`](crate::AcceptPolicy) (acceptor).

use crate::NetError;
use pbft_crypto::{KeyPair, PublicKey};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, PeerMisbehaved, SignatureScheme,
};
use std::sync::Arc;

/// The ALPN protocol id of this transport.
pub const ALPN: &[u8] = b"pbft/1";

/// The TLS server name a dialler sends. Verifiers ignore it: peers are
/// identified by key, not by name.
pub(crate) const SERVER_NAME: &str = "pbft";

/// DER prefix of an ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE {
/// SEQUENCE { OID 1.3.101.112 }, BIT STRING (0 unused bits) }, followed by the
/// 32 key bytes. It is the only valid DER encoding, as the algorithm has no
/// parameters.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The raw ed25519 key of a DER SubjectPublicKeyInfo, if it is one.
pub(crate) fn key_from_spki(spki: &[u8]) -> Option<PublicKey> {
    let raw = spki.strip_prefix(&ED25519_SPKI_PREFIX[..])?;
    let bytes: [u8; 32] = raw.try_into().ok()?;
    Some(PublicKey(bytes))
}

/// The ed25519 subject key of an X.509 certificate.
pub(crate) fn key_from_cert(cert: &CertificateDer<'_>) -> Result<PublicKey, rustls::Error> {
    let parsed = rustls::server::ParsedCertificate::try_from(cert)?;
    key_from_spki(parsed.subject_public_key_info().as_ref()).ok_or(
        rustls::Error::InvalidCertificate(CertificateError::BadEncoding),
    )
}

/// The certificate the peer of an established connection presented.
pub(crate) fn peer_cert(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().cloned()
}

/// The authenticated ed25519 key of the peer of an established connection.
pub(crate) fn peer_key(conn: &quinn::Connection) -> Option<PublicKey> {
    key_from_cert(&peer_cert(conn)?).ok()
}

/// A serial number unique to this process and identity: peers tell a
/// restarted process from the one before it by its certificate.
fn incarnation_serial() -> rcgen::SerialNumber {
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // Randomly keyed per process (and per call).
    let random = std::collections::hash_map::RandomState::new().hash_one(nanos);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&nanos.to_be_bytes());
    bytes[8..].copy_from_slice(&random.to_be_bytes());
    bytes[0] &= 0x7f; // a positive serial
    rcgen::SerialNumber::from_slice(&bytes)
}

fn check_tls13_signature(
    algs: &WebPkiSupportedAlgorithms,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme.into());
    }
    // The certificate must carry an ed25519 key (already checked by the
    // certificate verifier; repeated so this function stands alone).
    key_from_cert(cert)?;
    rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
}

fn tls12_refused() -> rustls::Error {
    rustls::Error::General("TLS 1.2 is not supported".into())
}

/// Dialler side: accepts exactly one ed25519 key.
#[derive(Debug)]
struct PinnedServerKey {
    expected: PublicKey,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServerKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::BadEncoding,
            ));
        }
        let key = key_from_cert(end_entity)?;
        if key != self.expected {
            tracing::debug!(
                expected = %crate::Short(&self.expected),
                presented = %crate::Short(&key),
                "server presented an unexpected key"
            );
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        check_tls13_signature(&self.algs, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Acceptor side: requires a client certificate with an ed25519 key; whether
/// the key is welcome is decided after the handshake by the accept policy.
#[derive(Debug)]
struct AnyEd25519Client {
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyEd25519Client {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::BadEncoding,
            ));
        }
        key_from_cert(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        check_tls13_signature(&self.algs, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// An endpoint's TLS identity: its key and self-signed certificate.
pub(crate) struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    provider: Arc<CryptoProvider>,
}

fn tls_err(e: impl std::fmt::Display) -> NetError {
    NetError::Tls(e.to_string())
}

impl Identity {
    /// Makes a certificate for `key`, self-signed with it.
    pub(crate) fn new(key: &KeyPair) -> Result<Self, NetError> {
        let cert_err = |e: rcgen::Error| NetError::Certificate(e.to_string());
        let pkcs8 = PrivatePkcs8KeyDer::from(key.to_pkcs8_der()?);
        let signing = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)
            .map_err(cert_err)?;
        let mut params =
            rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()]).map_err(cert_err)?;
        let mut name = rcgen::DistinguishedName::new();
        name.push(
            rcgen::DnType::CommonName,
            format!("pbft {}", crate::Short(&key.public())),
        );
        params.distinguished_name = name;
        params.serial_number = Some(incarnation_serial());
        let cert = params
            .self_signed(&signing)
            .map_err(cert_err)?
            .der()
            .clone();
        // Our own certificate must carry our key, or every peer would refuse us.
        let in_cert = key_from_cert(&cert).map_err(tls_err)?;
        if in_cert != key.public() {
            return Err(NetError::Certificate(
                "certificate key differs from the key pair".into(),
            ));
        }
        Ok(Identity {
            cert,
            key: pkcs8,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        })
    }

    /// TLS for accepting: our certificate, a mandatory ed25519 client certificate.
    pub(crate) fn server_config(&self) -> Result<rustls::ServerConfig, NetError> {
        let verifier = Arc::new(AnyEd25519Client {
            algs: self.provider.signature_verification_algorithms,
        });
        let mut cfg = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![self.cert.clone()],
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )
            .map_err(tls_err)?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        // Every connection does a full handshake, with the peer's certificate.
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
        cfg.max_early_data_size = 0;
        Ok(cfg)
    }

    /// TLS for dialling the peer whose key is `expected`.
    pub(crate) fn client_config(
        &self,
        expected: PublicKey,
    ) -> Result<rustls::ClientConfig, NetError> {
        let verifier = Arc::new(PinnedServerKey {
            expected,
            algs: self.provider.signature_verification_algorithms,
        });
        let mut cfg = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(
                vec![self.cert.clone()],
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )
            .map_err(tls_err)?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        cfg.resumption = rustls::client::Resumption::disabled();
        cfg.enable_early_data = false;
        Ok(cfg)
    }

    #[cfg(test)]
    pub(crate) fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// Like [`Identity::client_config`] but presenting no client certificate.
    #[cfg(test)]
    pub(crate) fn client_config_without_cert(&self, expected: PublicKey) -> rustls::ClientConfig {
        let verifier = Arc::new(PinnedServerKey {
            expected,
            algs: self.provider.signature_verification_algorithms,
        });
        let mut cfg = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_carries_the_key() {
        let kp = KeyPair::from_seed([7; 32]);
        let id = Identity::new(&kp).expect("identity");
        assert_eq!(key_from_cert(id.cert()).expect("key"), kp.public());
    }

    #[test]
    fn non_ed25519_certificates_are_rejected() {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("p256");
        let cert = rcgen::CertificateParams::new(vec!["x".to_string()])
            .expect("params")
            .self_signed(&kp)
            .expect("cert");
        assert!(key_from_cert(cert.der()).is_err());
        assert!(key_from_cert(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])).is_err());
        assert!(key_from_spki(&ED25519_SPKI_PREFIX).is_none());
        let mut long = ED25519_SPKI_PREFIX.to_vec();
        long.extend_from_slice(&[0; 33]);
        assert!(key_from_spki(&long).is_none());
    }
}
