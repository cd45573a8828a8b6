//! Versioned migrations, shared by both backends.
//!
//! Each backend keeps a list of `(version, sql)` steps in order; a
//! `catalog_migrations` table records the applied versions. Opening a
//! catalog applies the missing steps, each in its own transaction, and
//! refuses a database migrated by a newer binary.

use crate::error::{CatalogError, Result};

/// A migration step.
pub(crate) type Step = (i64, &'static str);

/// The steps to apply on a database whose highest applied version is `found`.
pub(crate) fn pending(found: i64, steps: &'static [Step]) -> Result<&'static [Step]> {
    let supported = steps.last().map_or(0, |s| s.0);
    if found > supported {
        return Err(CatalogError::SchemaTooNew { found, supported });
    }
    let first = steps
        .iter()
        .position(|s| s.0 > found)
        .unwrap_or(steps.len());
    Ok(&steps[first..])
}

#[cfg(test)]
mod tests {
    use super::*;

    static STEPS: [Step; 2] = [(1, "a"), (2, "b")];

    #[test]
    fn pending_steps_and_too_new() {
        assert_eq!(pending(0, &STEPS).unwrap().len(), 2);
        assert_eq!(pending(1, &STEPS).unwrap(), &STEPS[1..]);
        assert!(pending(2, &STEPS).unwrap().is_empty());
        let e = pending(3, &STEPS).unwrap_err();
        assert!(
            matches!(
                e,
                CatalogError::SchemaTooNew {
                    found: 3,
                    supported: 2
                }
            ),
            "{e}"
        );
    }
}
