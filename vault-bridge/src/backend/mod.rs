//! Where secrets live: the [`SecretBackend`] trait and its implementations.
