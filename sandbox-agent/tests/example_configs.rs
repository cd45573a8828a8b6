//! Every shipped sandbox-agent example config parses and validates.
#![allow(clippy::expect_used)]

use std::path::PathBuf;

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging/examples")
}

#[test]
fn full_example_parses() {
    let config = sandbox_agent::config::Config::load(&examples().join("sandbox-agent.toml"))
        .unwrap_or_else(|e| panic!("packaging/examples/sandbox-agent.toml: {e}"));
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/airlock-agent"));
}

#[test]
fn a_mistyped_key_in_an_example_would_be_caught() {
    let text =
        std::fs::read_to_string(examples().join("sandbox-agent.toml")).expect("read example");
    let broken = text.replacen("max_sandboxes", "max_sandboxs", 1);
    let err = sandbox_agent::config::Config::parse(&broken, std::path::Path::new("broken.toml"))
        .expect_err("a misspelt key must be refused");
    assert!(err.to_string().contains("max_sandboxs"), "{err}");
}
