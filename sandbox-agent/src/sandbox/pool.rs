//! The warm pool: started containers whose executors are up and answered
//! `Ready`, kept per [`ProfileKey`] (image and everything fixed at creation),
//! so `provision` hands one out instead of creating it. Env, workdir, session
//! and expiry are applied at hand-out. Refilling runs in the service's
//! background task; this module is the bookkeeping, testable without Docker.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use super::executor_client::ExecutorClient;
use super::policy::ProfileKey;

/// A ready, unassigned sandbox.
#[derive(Debug)]
pub struct Warm<C = ExecutorClient> {
    /// Sandbox id (already in the container's labels).
    pub sandbox_id: String,
    /// Container id.
    pub container_id: String,
    /// Creation time, unix seconds.
    pub created_at: u64,
    /// Connection to its executor.
    pub client: C,
}

/// Warm containers by profile, plus how many are being created.
#[derive(Debug)]
pub struct Pool<C = ExecutorClient> {
    target: usize,
    inner: Mutex<HashMap<ProfileKey, Slot<C>>>,
}

#[derive(Debug)]
struct Slot<C> {
    ready: VecDeque<Warm<C>>,
    creating: usize,
}

impl<C> Default for Slot<C> {
    fn default() -> Self {
        Self {
            ready: VecDeque::new(),
            creating: 0,
        }
    }
}

impl<C> Pool<C> {
    /// A pool keeping `target` containers per profile.
    pub fn new(target: usize) -> Self {
        Self {
            target,
            inner: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ProfileKey, Slot<C>>> {
        // Each operation leaves the map consistent; recover from a poisoned lock.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take a warm sandbox of `profile`, the oldest first, skipping any whose
    /// executor is gone (`alive` says which are alive; dead ones are returned
    /// for removal).
    pub fn take(
        &self,
        profile: &ProfileKey,
        alive: impl Fn(&C) -> bool,
    ) -> (Option<Warm<C>>, Vec<Warm<C>>) {
        let mut map = self.lock();
        let mut dead = Vec::new();
        let Some(slot) = map.get_mut(profile) else {
            return (None, dead);
        };
        while let Some(w) = slot.ready.pop_front() {
            if alive(&w.client) {
                return (Some(w), dead);
            }
            dead.push(w);
        }
        (None, dead)
    }

    /// How many more of `profile` to start creating now (and count them as creating).
    pub fn reserve(&self, profile: &ProfileKey, max_parallel: usize) -> usize {
        let mut map = self.lock();
        let slot = map.entry(profile.clone()).or_default();
        let have = slot.ready.len() + slot.creating;
        let n = self
            .target
            .saturating_sub(have)
            .min(max_parallel.saturating_sub(slot.creating));
        slot.creating += n;
        n
    }

    /// A reserved creation finished: `Some` adds it to the pool.
    pub fn created(&self, profile: &ProfileKey, warm: Option<Warm<C>>) {
        let mut map = self.lock();
        let slot = map.entry(profile.clone()).or_default();
        slot.creating = slot.creating.saturating_sub(1);
        if let Some(w) = warm {
            slot.ready.push_back(w);
        }
    }

    /// Remove every warm sandbox (shutdown) and return them for removal.
    pub fn drain(&self) -> Vec<Warm<C>> {
        self.lock()
            .values_mut()
            .flat_map(|s| s.ready.drain(..))
            .collect()
    }

    /// Remove the warm sandboxes whose executor is gone.
    pub fn prune(&self, alive: impl Fn(&C) -> bool) -> Vec<Warm<C>> {
        let mut out = Vec::new();
        for slot in self.lock().values_mut() {
            let (keep, gone): (VecDeque<_>, VecDeque<_>) =
                slot.ready.drain(..).partition(|w| alive(&w.client));
            slot.ready = keep;
            out.extend(gone);
        }
        out
    }

    /// Ready count of `profile`.
    pub fn ready(&self, profile: &ProfileKey) -> usize {
        self.lock().get(profile).map_or(0, |s| s.ready.len())
    }

    /// Warm containers ready and being created, over every profile.
    pub fn totals(&self) -> (usize, usize) {
        let map = self.lock();
        (
            map.values().map(|s| s.ready.len()).sum(),
            map.values().map(|s| s.creating).sum(),
        )
    }

    /// Whether this sandbox id is a warm (unassigned) one.
    pub fn contains(&self, sandbox_id: &str) -> bool {
        self.lock()
            .values()
            .any(|s| s.ready.iter().any(|w| w.sandbox_id == sandbox_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ProfileKey {
        ProfileKey {
            image: "img".into(),
            millicpu: 1000,
            memory_bytes: 1,
            pids: 1,
            disk_bytes: 1,
            network: None,
            workdir: "/w".into(),
        }
    }

    fn warm(id: &str, alive: bool) -> Warm<bool> {
        Warm {
            sandbox_id: id.into(),
            container_id: id.into(),
            created_at: 0,
            client: alive,
        }
    }

    #[test]
    fn reserve_fills_to_target_and_take_skips_dead() {
        let pool: Pool<bool> = Pool::new(3);
        assert_eq!(pool.reserve(&key(), 2), 2);
        assert_eq!(
            pool.reserve(&key(), 2),
            0,
            "two already creating with parallelism 2"
        );
        pool.created(&key(), Some(warm("a", false)));
        pool.created(&key(), Some(warm("b", true)));
        assert_eq!(pool.reserve(&key(), 2), 1);
        pool.created(&key(), None);
        let (got, dead) = pool.take(&key(), |c| *c);
        assert_eq!(got.unwrap().sandbox_id, "b");
        assert_eq!(dead.len(), 1);
        assert_eq!(pool.ready(&key()), 0);
        assert!(pool.take(&key(), |c| *c).0.is_none());
    }
}
