//! The signing key on disk: generated once with mode 0600, reloaded with the same kid, readable
//! by openssl conventions (PKCS#8 / SPKI PEM), and its JWKS usable by a verifier as is.

use liquid_auth::scopes::WRITE_TRADES;
use liquid_auth::{AuthConfig, PublicKeyAlgorithm, SigningKey};

use crate::common::*;

#[tokio::test]
async fn the_dev_key_is_generated_once_private_and_stable_across_restarts() {
    let files = Files::new();
    let path = files.dir.path().join("keys").join("dev-signing-key.pem");
    let first = SigningKey::load_or_generate(&path).unwrap();
    let second = SigningKey::load_or_generate(&path).unwrap();
    assert_eq!(first.kid(), second.kid());
    assert_eq!(first.public_key_pem(), second.public_key_pem());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{text}");
    // No temporary files left behind.
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
    assert_eq!(names.len(), 1);

    // A token minted before the restart verifies with the key loaded after it.
    let token = first.mint(&request(&[WRITE_TRADES])).unwrap();
    let v = verifier(&files.pem_config(&second.public_key_pem(), PublicKeyAlgorithm::EdDSA)).await;
    assert_eq!(v.verify(&token).unwrap().tenant_id(), "acme");
}

#[tokio::test]
async fn save_replaces_the_file_and_load_reads_it_back() {
    let files = Files::new();
    let path = files.dir.path().join("k.pem");
    let a = SigningKey::generate().unwrap();
    let b = SigningKey::generate().unwrap();
    a.save(&path).unwrap();
    b.save(&path).unwrap();
    assert_eq!(SigningKey::load(&path).unwrap().kid(), b.kid());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}

#[tokio::test]
async fn the_keys_own_jwks_verifies_its_tokens_by_kid() {
    let key = SigningKey::generate().unwrap();
    let files = Files::new();
    let v = verifier(&files.jwks_config(&key.jwks())).await;
    assert_eq!(v.key_ids(), [key.kid().to_owned()]);
    let token = key.mint(&request(&[WRITE_TRADES])).unwrap();
    let claims = v.verify(&token).unwrap();
    assert_eq!(claims.scopes, [WRITE_TRADES]);
    assert_eq!(claims.iss, ISS);
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.kid.as_deref(), Some(key.kid()));
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
}

#[tokio::test]
async fn keys_in_the_openssl_formats_are_read() {
    // What `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout` produce: PKCS#8 v1
    // and SubjectPublicKeyInfo PEM. Built here from the test key's DER so no tool is needed.
    let ed = TestKey::eddsa("x");
    let key =
        SigningKey::from_pkcs8_pem(&ed.private_pem, std::path::Path::new("openssl.pem")).unwrap();
    assert_eq!(key.public_key_pem(), ed.public_pem);
    let files = Files::new();
    let cfg = AuthConfig {
        ..files.pem_config(&ed.public_pem, PublicKeyAlgorithm::EdDSA)
    };
    let v = verifier(&cfg).await;
    assert!(v.verify(&key.mint(&request(&[])).unwrap()).is_ok());
}
