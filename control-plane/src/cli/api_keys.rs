//! `control-plane api-keys create|list|revoke`: API keys for the public API,
//! managed directly in the catalog (works with or without a running
//! server). A key is shown once, at creation; the catalog keeps only its
//! SHA-256.

use catalog::{Catalog, GeneratedKey, NewApiKey};
use serde_json::json;

use crate::config::Config;

/// Why an `api-keys` command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiKeyCommandError {
    /// A bad argument (names the flag).
    #[error("invalid {flag}: {message}")]
    Usage {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The catalog failed (open, migrate, read or write).
    #[error("catalog: {0}")]
    Catalog(#[from] catalog::CatalogError),
}

async fn open(config: &Config) -> Result<std::sync::Arc<dyn Catalog>, ApiKeyCommandError> {
    Ok(catalog::open_catalog(&config.catalog).await?)
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    session_store::format_rfc3339(t)
}

/// `api-keys create --name NAME [--role admin|read-only]`: prints the key
/// once; returns its id.
pub async fn create(
    config: &Config,
    name: &str,
    role: &str,
    json_out: bool,
) -> Result<String, ApiKeyCommandError> {
    let Some(role) = catalog::KeyRole::parse(role) else {
        return Err(ApiKeyCommandError::Usage {
            flag: "--role",
            message: format!("expected admin or read-only, got {role:?}"),
        });
    };
    if name.trim().is_empty() || name.len() > 256 {
        return Err(ApiKeyCommandError::Usage {
            flag: "--name",
            message: "must be 1 to 256 characters".to_owned(),
        });
    }
    let catalog = open(config).await?;
    let key = GeneratedKey::generate();
    let record = catalog
        .create_api_key_with_role(
            NewApiKey {
                id: format!("key_{}", uuid::Uuid::now_v7().simple()),
                name: name.to_owned(),
                key_hash: key.key_hash.clone(),
                hint: key.hint.clone(),
            },
            role,
        )
        .await?;
    tracing::info!(key_id = %record.id, role = %record.role, "api key created");
    if json_out {
        println!(
            "{}",
            json!({"id": record.id, "name": record.name, "role": record.role.as_str(), "key": key.plaintext, "created_at": rfc3339(record.created_at)})
        );
    } else {
        println!(
            "created api key {} ({}, role {})",
            record.id, record.name, record.role
        );
        println!("{}", key.plaintext);
        println!("store it now: only its hash is kept, it cannot be shown again");
    }
    Ok(record.id)
}

/// `api-keys list`.
pub async fn list(config: &Config, json_out: bool) -> Result<(), ApiKeyCommandError> {
    let keys = open(config).await?.list_api_keys().await?;
    if json_out {
        let rows: Vec<_> = keys
            .iter()
            .map(|k| {
                json!({"id": k.id, "name": k.name, "role": k.role.as_str(), "hint": k.hint, "created_at": rfc3339(k.created_at),
                       "revoked_at": k.revoked_at.map(rfc3339)})
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    println!(
        "{:<38} {:<20} {:<10} {:<16} {:<21} REVOKED",
        "ID", "NAME", "ROLE", "KEY", "CREATED"
    );
    for k in &keys {
        println!(
            "{:<38} {:<20} {:<10} {:<16} {:<21} {}",
            k.id,
            k.name,
            k.role.as_str(),
            format!("{}…", k.hint),
            rfc3339(k.created_at),
            k.revoked_at.map(rfc3339).unwrap_or_else(|| "-".to_owned())
        );
    }
    Ok(())
}

/// `api-keys revoke KEY_ID`: the key stops authenticating at once.
pub async fn revoke(config: &Config, key_id: &str) -> Result<(), ApiKeyCommandError> {
    let record = open(config).await?.revoke_api_key(key_id).await?;
    println!("revoked api key {} ({})", record.id, record.name);
    Ok(())
}
