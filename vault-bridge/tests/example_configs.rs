//! Every shipped vault-bridge example config parses and validates.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use vault_bridge::config::{BackendConfig, Config, OpenbaoAuth, SecretSource};

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging/examples")
}

#[test]
fn file_example_parses_with_the_values_it_states() {
    let c = Config::load(&examples().join("vault-bridge.toml"))
        .unwrap_or_else(|e| panic!("packaging/examples/vault-bridge.toml: {e}"));
    assert_eq!(
        c.bridge.data_dir,
        Path::new("/var/lib/airlock-vault-bridge")
    );
    assert_eq!(c.bridge.shutdown_grace, Duration::from_secs(10));
    let BackendConfig::File(f) = c.backend else {
        panic!("file backend expected")
    };
    assert_eq!(
        f.key,
        SecretSource::File("/var/lib/airlock-vault-bridge/credentials.key".into())
    );
    // The example states the defaults: it means the same as no file at all.
    let d = Config::defaults().unwrap();
    let BackendConfig::File(df) = d.backend else {
        panic!("file backend expected")
    };
    assert_eq!((df.path, df.key), (f.path, f.key));
}

#[test]
fn openbao_example_parses() {
    let c = Config::load(&examples().join("vault-bridge-openbao.toml"))
        .unwrap_or_else(|e| panic!("packaging/examples/vault-bridge-openbao.toml: {e}"));
    let BackendConfig::Openbao(o) = c.backend else {
        panic!("openbao backend expected")
    };
    assert_eq!(o.address, "https://bao.internal.example:8200");
    assert!(matches!(
        o.auth,
        OpenbaoAuth::Approle { secret_id: SecretSource::SystemdCredential(ref n), .. } if n == "openbao-secret-id"
    ));
}

#[test]
fn a_mistyped_key_in_an_example_would_be_caught() {
    for (name, key) in [
        ("vault-bridge.toml", "request_timeout_seconds"),
        ("vault-bridge-openbao.toml", "path_prefix"),
    ] {
        let text = std::fs::read_to_string(examples().join(name)).unwrap();
        let broken = text.replacen(&format!("\n{key} ="), &format!("\n{key}x ="), 1);
        assert_ne!(broken, text, "{name} sets {key}");
        let err =
            Config::parse(&broken, Path::new(name)).expect_err("a misspelt key must be refused");
        assert!(err.to_string().contains(&format!("{key}x")), "{err}");
    }
}

#[test]
fn every_example_named_vault_bridge_is_tested() {
    let mut names: Vec<String> = std::fs::read_dir(examples())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("vault-bridge") && n.ends_with(".toml"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec!["vault-bridge-openbao.toml", "vault-bridge.toml"]
    );
}
