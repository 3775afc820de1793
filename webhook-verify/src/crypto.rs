//! Thin wrappers over `ring`, `subtle`, `hex` and `base64`, so the scheme modules read
//! as the providers' documentation does. Every comparison of secret-derived bytes goes
//! through [`ct_eq`].

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::{digest, hmac, signature};
use subtle::ConstantTimeEq as _;

/// HMAC-SHA256 over the concatenation of `parts`, without building the concatenation.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(hmac_parts(hmac::HMAC_SHA256, key, parts).as_ref());
    out
}

/// HMAC-SHA1, which Twilio still uses.
pub(crate) fn hmac_sha1(key: &[u8], parts: &[&[u8]]) -> [u8; 20] {
    let mut out = [0; 20];
    out.copy_from_slice(hmac_parts(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key, parts).as_ref());
    out
}

fn hmac_parts(alg: hmac::Algorithm, key: &[u8], parts: &[&[u8]]) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(&hmac::Key::new(alg, key));
    for part in parts {
        ctx.update(part);
    }
    ctx.sign()
}

/// SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

/// Constant-time equality. Lengths are public (they are fixed by each scheme), so an
/// early return on a length mismatch leaks nothing.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Ed25519 verification of `signature` over the concatenation of `parts`.
pub(crate) fn ed25519_verify(public_key: &[u8; 32], parts: &[&[u8]], sig: &[u8]) -> bool {
    let message = parts.concat();
    signature::UnparsedPublicKey::new(&signature::ED25519, public_key)
        .verify(&message, sig)
        .is_ok()
}

/// The public key for a 32-byte Ed25519 seed; `None` if the seed is not 32 bytes.
pub(crate) fn ed25519_public_key(seed: &[u8]) -> Option<[u8; 32]> {
    let pair = signature::Ed25519KeyPair::from_seed_unchecked(seed).ok()?;
    let mut out = [0; 32];
    out.copy_from_slice(signature::KeyPair::public_key(&pair).as_ref());
    Some(out)
}

/// Ed25519 signature over the concatenation of `parts`; `None` if the seed is not 32 bytes.
pub(crate) fn ed25519_sign(seed: &[u8], parts: &[&[u8]]) -> Option<[u8; 64]> {
    let pair = signature::Ed25519KeyPair::from_seed_unchecked(seed).ok()?;
    let mut out = [0; 64];
    out.copy_from_slice(pair.sign(&parts.concat()).as_ref());
    Some(out)
}

/// Standard (padded) base64, as every provider here uses.
pub(crate) fn b64_encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes standard base64 into exactly `N` bytes.
pub(crate) fn b64_decode_exact<const N: usize>(text: &str) -> Option<[u8; N]> {
    STANDARD.decode(text).ok()?.try_into().ok()
}

/// Decodes standard base64 of any length.
pub(crate) fn b64_decode(text: &str) -> Option<Vec<u8>> {
    STANDARD.decode(text).ok()
}

/// Decodes hex (either case) into exactly `N` bytes.
pub(crate) fn hex_decode_exact<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut out = [0; N];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test case 2 (HMAC-SHA256, key "Jefe").
    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        assert_eq!(
            hex::encode(hmac_sha256(
                b"Jefe",
                &[b"what do ya want ", b"for nothing?"]
            )),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// RFC 2202 test case 2 (HMAC-SHA1, key "Jefe").
    #[test]
    fn hmac_sha1_matches_rfc_2202() {
        assert_eq!(
            hex::encode(hmac_sha1(b"Jefe", &[b"what do ya want for nothing?"])),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
    }

    /// RFC 8032 section 7.1, TEST 1, 2 and 3: (secret seed, public key, message, signature).
    const RFC_8032: [(&str, &str, &str, &str); 3] = [
        (
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        ),
        (
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "72",
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        ),
        (
            "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
            "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
            "af82",
            "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
        ),
    ];

    #[test]
    fn ed25519_matches_rfc_8032() {
        for (seed, public, msg, sig) in RFC_8032 {
            let seed = hex::decode(seed).unwrap();
            let public: [u8; 32] = hex_decode_exact(public).unwrap();
            let msg = hex::decode(msg).unwrap();
            let sig = hex::decode(sig).unwrap();
            assert_eq!(ed25519_public_key(&seed), Some(public));
            assert_eq!(ed25519_sign(&seed, &[&msg]).unwrap().to_vec(), sig);
            assert!(ed25519_verify(&public, &[&msg], &sig));
            let mut bad = sig.clone();
            bad[0] ^= 1;
            assert!(!ed25519_verify(&public, &[&msg], &bad));
        }
    }

    #[test]
    fn decoders_insist_on_length() {
        assert!(hex_decode_exact::<2>("abcd").is_some());
        assert!(hex_decode_exact::<2>("ABCD").is_some());
        assert!(hex_decode_exact::<2>("abc").is_none());
        assert!(hex_decode_exact::<2>("abcdef").is_none());
        assert!(b64_decode_exact::<3>("YWJj").is_some());
        assert!(b64_decode_exact::<3>("YWI=").is_none());
        assert!(b64_decode_exact::<3>("not base64!").is_none());
    }
}
