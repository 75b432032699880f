//! The TLS handshake slots of one listener: at most so many handshakes in
//! progress in all, and at most a share of them from one client address, so
//! that clients that open connections and never finish TLS from one address
//! (or one IPv6 /64) cannot take every slot while the relay, the Registry
//! client and everyone else reconnect from theirs.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The slots of one listener.
#[derive(Debug, Clone)]
pub struct HandshakeSlots {
    total: Arc<Semaphore>,
    per_address: usize,
    by_address: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One handshake's place; given back when dropped.
#[derive(Debug)]
pub struct HandshakeSlot {
    _total: OwnedSemaphorePermit,
    address: IpAddr,
    by_address: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl HandshakeSlots {
    /// `total` handshakes at once, at most `per_address` of them from one address.
    pub fn new(total: usize, per_address: usize) -> Self {
        Self {
            total: Arc::new(Semaphore::new(total)),
            per_address: per_address.max(1),
            by_address: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A slot for a handshake from `remote`, or `None` when the listener or
    /// that address has none left.
    pub fn try_acquire(&self, remote: IpAddr) -> Option<HandshakeSlot> {
        let address = address_key(remote);
        let mut counts = self.by_address.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = counts.entry(address).or_insert(0);
        if *count >= self.per_address {
            return None;
        }
        let permit = self.total.clone().try_acquire_owned().ok()?;
        *count += 1;
        Some(HandshakeSlot { _total: permit, address, by_address: self.by_address.clone() })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut counts = self.by_address.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = counts.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

/// The address a share is counted by: an IPv4 address (also when mapped
/// into IPv6), or an IPv6 address's /64 (one host usually holds a whole /64).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_address_gets_its_share_and_others_the_rest() {
        let slots = HandshakeSlots::new(4, 2);
        let a1 = slots.try_acquire(ip("10.0.0.1")).expect("first");
        let _a2 = slots.try_acquire(ip("10.0.0.1")).expect("second");
        assert!(slots.try_acquire(ip("10.0.0.1")).is_none(), "beyond its share");
        assert!(slots.try_acquire(ip("::ffff:10.0.0.1")).is_none(), "the same address mapped into IPv6");
        let _b1 = slots.try_acquire(ip("10.0.0.2")).expect("another address");
        let _c1 = slots.try_acquire(ip("10.0.0.3")).expect("the last slot");
        assert!(slots.try_acquire(ip("10.0.0.4")).is_none(), "the listener is full");
        drop(a1);
        assert!(slots.try_acquire(ip("10.0.0.1")).is_some(), "a slot given back is free again");
    }

    #[test]
    fn an_ipv6_host_counts_by_its_64() {
        let slots = HandshakeSlots::new(10, 1);
        let _a = slots.try_acquire(ip("2001:db8:1:2::1")).expect("first");
        assert!(slots.try_acquire(ip("2001:db8:1:2:ffff::9")).is_none(), "same /64");
        assert!(slots.try_acquire(ip("2001:db8:1:3::1")).is_some(), "another /64");
    }
}
