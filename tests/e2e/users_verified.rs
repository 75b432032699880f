//! Verified tokens are remembered so that a token's signature is checked
//! once, not on every call: the cache never outlives what verification
//! itself would accept (a withdrawn key, an expired token).

use crate::users::{check_in_as, registered_child};
use cpis_devkit::users::{DevUsers, SigningKey, TokenSpec};
use cpis_runtime::users::UserAuthSettings;
use cpis_testkit::*;
use serde_json::Value;
use std::time::Duration;
use tonic::Code;

#[tokio::test]
async fn a_token_verified_before_its_key_was_withdrawn_is_refused_once_the_key_set_is_read_again() {
    // Verified tokens are remembered (their signature is checked once); a
    // key the provider withdraws must still stop them at the next read.
    let idp_dir = tempfile::tempdir().unwrap();
    let idp = DevUsers::new(idp_dir.path());
    idp.init().unwrap();
    let mut configs = cpis::suite::ServiceConfigs {
        notification: notification_settings(Duration::from_millis(500)),
        ..Default::default()
    };
    configs.attendance.users =
        UserAuthSettings { jwks_max_age: Duration::from_secs(1), leeway: Duration::ZERO, ..idp.user_auth_settings() };
    let ts = TestSuite::start_with(configs).await;
    let child = registered_child(&ts, 2305, "MCR-USERS-5").await;
    let spec = TokenSpec { ttl: Duration::from_secs(600), ..TokenSpec::new(ALDER_HEY, &["B0107"]) };
    let old = idp.token(&spec).unwrap();
    for _ in 0..3 {
        assert!(check_in_as(&ts, &old, &child).await.expect("a token of the first key, every time"));
    }

    // The provider signs with a new key and withdraws the first one.
    let old_kid = jsonwebtoken::decode_header(&old.token).unwrap().kid.unwrap();
    idp.add_key(&SigningKey::generate_es256().unwrap()).unwrap();
    let mut set: Value = serde_json::from_slice(&std::fs::read(idp.jwks_path()).unwrap()).unwrap();
    set["keys"].as_array_mut().unwrap().retain(|k| k["kid"] != old_kid.as_str());
    let tmp = idp_dir.path().join("jwks.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&set).unwrap()).unwrap();
    std::fs::rename(&tmp, idp.jwks_path()).unwrap();
    let new = idp.token(&spec).unwrap();

    // Within one background read (1 s here), the remembered token is refused.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let refused = check_in_as(&ts, &old, &child).await.expect_err("its key is gone");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("signing key"), "{refused:?}");
    assert!(check_in_as(&ts, &new, &child).await.expect("the new key's token"));

    // A token that expires is refused at its exp, remembered or not.
    let short = idp.token(&TokenSpec { ttl: Duration::from_secs(2), ..spec.clone() }).unwrap();
    assert!(check_in_as(&ts, &short, &child).await.expect("valid for 2 s"));
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let expired = check_in_as(&ts, &short, &child).await.expect_err("expired");
    assert!(expired.message().contains("expired"), "{expired:?}");
    ts.suite.stop().await.unwrap();
}
