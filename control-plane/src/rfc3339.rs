//! `SystemTime` as RFC 3339 text (UTC): serde for the wire shapes that carry
//! times ([`crate::gateway::AgentInfo`]) and [`display`] for tables and logs.

use std::time::SystemTime;

use serde::{Deserialize, Deserializer, Serializer};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Serialize.
pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let odt = OffsetDateTime::from(*t);
    let text = odt.format(&Rfc3339).map_err(serde::ser::Error::custom)?;
    s.serialize_str(&text)
}

/// Deserialize.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
    let text = String::deserialize(d)?;
    let odt = OffsetDateTime::parse(&text, &Rfc3339).map_err(serde::de::Error::custom)?;
    Ok(odt.into())
}

/// Format for humans (the CLI table).
pub fn display(t: SystemTime) -> String {
    let odt = OffsetDateTime::from(t)
        .replace_nanosecond(0)
        .unwrap_or_else(|_| OffsetDateTime::from(t));
    odt.format(&Rfc3339).unwrap_or_else(|_| "-".to_owned())
}
