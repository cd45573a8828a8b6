//! Every shipped control-plane example config parses and validates.
#![allow(clippy::expect_used)]

use std::path::PathBuf;

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging/examples")
}

#[test]
fn full_example_parses_with_the_values_it_states() {
    let config = control_plane::config::Config::load(&examples().join("control-plane.toml"))
        .unwrap_or_else(|e| panic!("packaging/examples/control-plane.toml: {e}"));
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/airlock"));
    assert_eq!(config.tunnel_listen.port(), 7443);
    assert_eq!(config.enroll.listen.port(), 7444);
    assert_eq!(config.api.listen.port(), 8080);
}

#[test]
fn postgres_replica_example_parses() {
    control_plane::config::Config::load(&examples().join("control-plane-postgres.toml"))
        .unwrap_or_else(|e| panic!("packaging/examples/control-plane-postgres.toml: {e}"));
}

#[test]
fn every_example_named_control_plane_is_tested() {
    let mut names: Vec<String> = std::fs::read_dir(examples())
        .expect("examples dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("control-plane") && n.ends_with(".toml"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["control-plane-postgres.toml", "control-plane.toml"],
        "add a test for a new example"
    );
}
