//! Tokens already verified, so that a clinician's token, sent with every
//! call of a shift, has its signature checked once rather than on every call
//! (the ECDSA check was most of a not-flagged check-in's CPU: BENCHMARKS.md).
//!
//! The invariant: a hit is a token that a full verification would accept at
//! that moment. An entry is keyed by the SHA-256 of the whole token (so only
//! the same bytes hit), holds the claims that verification produced, and is
//! used only
//! - while `exp` plus the leeway has not passed (the check `jsonwebtoken`
//!   makes), and
//! - while the identity provider's key set is the one it was verified under
//!   ([`super::jwks::KeySet::generation`]): a key set that changed, such as
//!   a key withdrawn, sends every token through full verification again.
//!
//! Anything else is a miss, and the token is verified in full, so every
//! refusal is the full verification's. Refused tokens are never stored. The
//! map holds at most `capacity` entries: when full, entries that could no
//! longer hit are dropped, and if it is still full the token is simply not
//! stored (a flood of distinct tokens costs verification, as before, and no
//! memory).

use super::token::Claims;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The SHA-256 of a token: the only thing of it that is kept.
pub type TokenDigest = [u8; 32];

/// Verified tokens by digest, bounded.
#[derive(Debug)]
pub struct VerifiedTokens {
    capacity: usize,
    leeway_secs: u64,
    map: Mutex<HashMap<TokenDigest, Entry>>,
}

#[derive(Debug)]
struct Entry {
    claims: Arc<Claims>,
    generation: u64,
}

impl Entry {
    fn usable(&self, generation: u64, now_secs: u64, leeway_secs: u64) -> bool {
        self.generation == generation && now_secs <= self.claims.exp.saturating_add(leeway_secs)
    }
}

/// The key of `token` in the map.
pub fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

impl VerifiedTokens {
    /// At most `capacity` tokens (0: none, every call verifies), usable
    /// until their `exp` plus `leeway_secs`, as verification allows.
    pub fn new(capacity: usize, leeway_secs: u64) -> Self {
        Self { capacity, leeway_secs, map: Mutex::default() }
    }

    /// The claims of the token with `digest`, if it was verified under key
    /// set `generation` and has not expired at `now_secs` (Unix seconds).
    pub fn get(&self, digest: &TokenDigest, generation: u64, now_secs: u64) -> Option<Arc<Claims>> {
        if self.capacity == 0 {
            return None;
        }
        let mut map = self.map.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match map.get(digest) {
            Some(entry) if entry.usable(generation, now_secs, self.leeway_secs) => Some(entry.claims.clone()),
            Some(_) => {
                map.remove(digest);
                None
            }
            None => None,
        }
    }

    /// Keeps `claims`, just verified under key set `generation` (read
    /// before the key was looked up, so a change during verification makes
    /// the entry stale rather than wrongly fresh).
    pub fn insert(&self, digest: TokenDigest, claims: Arc<Claims>, generation: u64, now_secs: u64) {
        if self.capacity == 0 {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if map.len() >= self.capacity && !map.contains_key(&digest) {
            let leeway = self.leeway_secs;
            map.retain(|_, entry| entry.usable(generation, now_secs, leeway));
            if map.len() >= self.capacity {
                return;
            }
        }
        map.insert(digest, Entry { claims, generation });
    }
}

#[cfg(test)]
impl VerifiedTokens {
    fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Arc<Claims> {
        Arc::new(Claims {
            sub: "s".into(),
            exp,
            nhsid_useruid: None,
            name: None,
            nhsid_nrbac_roles: vec![],
            selected_roleid: None,
            nhsid_user_orgs: vec![],
        })
    }

    #[test]
    fn a_hit_needs_the_same_token_the_same_key_set_and_an_unexpired_token() {
        let cache = VerifiedTokens::new(10, 30);
        let (a, b) = (digest("a.b.c"), digest("a.b.d"));
        cache.insert(a, claims(1_000), 7, 900);
        assert!(cache.get(&a, 7, 900).is_some());
        assert!(cache.get(&b, 7, 900).is_none(), "another token, even one byte apart");
        assert!(cache.get(&a, 7, 1_030).is_some(), "until exp plus the leeway, as verification allows");
        assert!(cache.get(&a, 7, 1_031).is_none(), "expired: verified again, which refuses it");
        assert!(cache.is_empty(), "an entry that cannot hit any more is dropped");
        cache.insert(a, claims(1_000), 7, 900);
        assert!(cache.get(&a, 8, 900).is_none(), "the key set changed: verified again");
        assert!(cache.get(&a, 7, 900).is_none(), "and the stale entry is gone");
    }

    #[test]
    fn it_never_holds_more_than_its_capacity_and_makes_room_from_dead_entries_only() {
        let cache = VerifiedTokens::new(3, 0);
        for (i, exp) in [(0u8, 100), (1, 100), (2, 500)] {
            cache.insert([i; 32], claims(exp), 1, 50);
        }
        cache.insert([3; 32], claims(500), 1, 50);
        assert_eq!(cache.len(), 3, "full of live entries: the new one is not kept");
        assert!(cache.get(&[3; 32], 1, 50).is_none());
        cache.insert([3; 32], claims(500), 1, 200);
        assert_eq!(cache.len(), 2, "the two expired ones made room");
        assert!(cache.get(&[3; 32], 1, 200).is_some());
        assert!(cache.get(&[2; 32], 1, 200).is_some());
        let off = VerifiedTokens::new(0, 0);
        off.insert([1; 32], claims(500), 1, 50);
        assert!(off.get(&[1; 32], 1, 50).is_none(), "capacity 0 turns it off");
    }
}
