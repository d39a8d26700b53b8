//! API keys this process has looked up recently, so a busy key does not cost a database read on
//! every request.
//!
//! An entry is trusted for [`KEY_CACHE_TTL`]. Whatever this process changes that a cached entry
//! depends on (a key revoked, a role changed) empties the cache before the change is answered,
//! so in one process a revocation holds at once. Another process sharing the database (a
//! Postgres replica) sees it within [`KEY_CACHE_TTL`]. Only keys that exist are cached: an
//! unknown key is read again every time, so a key created elsewhere works at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use app::ports::{Principal, StoredKey};

/// How long a looked-up key is trusted before it is read again.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(1);

/// Keys kept at most; when full, the cache starts over (a lookup is only a read).
const MAX_ENTRIES: usize = 10_000;

struct Entry {
    read_at: Instant,
    principal: Principal,
    key: StoredKey,
}

#[derive(Default)]
struct Entries {
    by_secret_hash: HashMap<String, Entry>,
    /// Raised by every invalidation. A lookup that began before one does not store its result,
    /// so a read that raced a revocation cannot bring the revoked key back.
    generation: u64,
}

#[derive(Default)]
pub struct KeyCache {
    entries: Mutex<Entries>,
}

/// Where a lookup stood when it began: pass it back to [`KeyCache::store`].
#[derive(Debug, Clone, Copy)]
pub struct LookupStart(u64);

impl KeyCache {
    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The key and its owner, if read less than [`KEY_CACHE_TTL`] ago; otherwise where the
    /// lookup that will read it begins.
    pub fn get(&self, secret_hash: &str) -> Result<(Principal, StoredKey), LookupStart> {
        let entries = self.entries();
        match entries.by_secret_hash.get(secret_hash) {
            Some(e) if e.read_at.elapsed() < KEY_CACHE_TTL => {
                Ok((e.principal.clone(), e.key.clone()))
            }
            _ => Err(LookupStart(entries.generation)),
        }
    }

    /// Keeps what a lookup read, unless the cache was invalidated since it began.
    pub fn store(
        &self,
        start: LookupStart,
        secret_hash: &str,
        principal: &Principal,
        key: &StoredKey,
    ) {
        let mut entries = self.entries();
        if entries.generation != start.0 {
            return;
        }
        if entries.by_secret_hash.len() >= MAX_ENTRIES {
            entries.by_secret_hash.clear();
        }
        entries.by_secret_hash.insert(
            secret_hash.to_owned(),
            Entry {
                read_at: Instant::now(),
                principal: principal.clone(),
                key: key.clone(),
            },
        );
    }

    /// Forgets every key: call after a change to keys or roles, before answering it.
    pub fn invalidate(&self) {
        let mut entries = self.entries();
        entries.generation += 1;
        entries.by_secret_hash.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use domain::{Role, UserId};

    fn sample() -> (Principal, StoredKey) {
        let user_id = UserId::parse("alice").unwrap();
        (
            Principal {
                user_id: user_id.clone(),
                display_name: "Alice".into(),
                role: Role::User,
            },
            StoredKey {
                key_id: 1,
                user_id,
                name: "laptop".into(),
                prefix: "tm_abcd".into(),
                scopes: vec![],
                created_at: Utc::now(),
                last_used_at: None,
                revoked_at: None,
            },
        )
    }

    #[test]
    fn a_stored_key_is_found_until_invalidated() {
        let cache = KeyCache::default();
        let (principal, key) = sample();
        let start = cache.get("h").unwrap_err();
        cache.store(start, "h", &principal, &key);
        assert_eq!(cache.get("h").unwrap().1, key);
        assert!(cache.get("other").is_err());
        cache.invalidate();
        assert!(cache.get("h").is_err());
    }

    #[test]
    fn a_lookup_that_raced_an_invalidation_is_not_kept() {
        let cache = KeyCache::default();
        let (principal, key) = sample();
        let start = cache.get("h").unwrap_err();
        cache.invalidate(); // e.g. the key was revoked while the lookup read the old row
        cache.store(start, "h", &principal, &key);
        assert!(cache.get("h").is_err());
    }
}
