use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Errors about key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The bytes or text are not a key of the right length.
    #[error("invalid key encoding: {0}")]
    Encoding(String),
}

/// An ed25519 public key: the identity of a replica or a client.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Lower-case hexadecimal form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses the hexadecimal form.
    pub fn from_hex(s: &str) -> Result<Self, KeyError> {
        let bytes = hex::decode(s.trim()).map_err(|e| KeyError::Encoding(e.to_string()))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError::Encoding("a public key is 32 bytes".into()))?;
        Ok(PublicKey(bytes))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", &self.to_hex()[..12])
    }
}

/// A 64-byte signature.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 64]);

impl Signature {
    /// A signature of all zeros; it never verifies.
    pub const ZERO: Signature = Signature([0; 64]);
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", hex::encode(&self.0[..6]))
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Signature;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 signature bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Signature, E> {
                let bytes: [u8; 64] = v
                    .try_into()
                    .map_err(|_| E::invalid_length(v.len(), &self))?;
                Ok(Signature(bytes))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Signature, A::Error> {
                let mut bytes = [0u8; 64];
                for (i, b) in bytes.iter_mut().enumerate() {
                    *b = seq
                        .next_element()?
                        .ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                Ok(Signature(bytes))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// An ed25519 key pair. The secret never leaves this type except through
/// [`KeyPair::secret_seed`], which key files and the TLS layer use.
#[derive(Clone)]
pub struct KeyPair {
    signing: ed25519_dalek::SigningKey,
}

impl KeyPair {
    /// A fresh key pair from the operating system's random source.
    pub fn generate() -> Self {
        let mut rng = rand::rngs::OsRng;
        KeyPair {
            signing: ed25519_dalek::SigningKey::generate(&mut rng),
        }
    }

    /// The key pair for a 32-byte secret seed (deterministic: the simulator
    /// derives every key from its run seed).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        KeyPair {
            signing: ed25519_dalek::SigningKey::from_bytes(&seed),
        }
    }

    /// The 32-byte secret seed.
    pub fn secret_seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key().to_bytes())
    }

    /// The secret key as PKCS#8 DER, for building a TLS certificate.
    pub fn to_pkcs8_der(&self) -> Result<Vec<u8>, KeyError> {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        self.signing
            .to_pkcs8_der()
            .map(|doc| doc.as_bytes().to_vec())
            .map_err(|e| KeyError::Encoding(e.to_string()))
    }

    pub(crate) fn sign_ed25519(&self, message: &[u8]) -> Signature {
        use ed25519_dalek::Signer as _;
        Signature(self.signing.sign(message).to_bytes())
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPair({:?})", self.public())
    }
}
