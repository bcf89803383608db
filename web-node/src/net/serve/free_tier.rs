//! The free tier's daily quota: tokens a charging node serves free to each client, counted by
//! peer id and, where the client connects directly, by IP address too.
//!
//! A fresh key costs nothing, so a peer-id quota alone stops nobody who wants more: the IP
//! count caps a host that dials directly, whatever keys it makes. Clients behind a relay
//! circuit (tabs) show the node no IP of their own and are counted by key only. What bounds
//! the free tier whatever the number of keys is the slot split: free sessions run in lottery
//! slots only (see [`queue`](super::queue)), so they share a fifth of the node among
//! themselves and never take a scored slot from a paying client. The counts live in memory:
//! a restarted node starts the day afresh.

use std::collections::HashMap;
use std::net::IpAddr;

use libp2p::PeerId;

/// Seconds in a quota day (days start at midnight UTC).
const DAY_S: u64 = 86_400;

/// Tokens used today, per client.
#[derive(Debug, Default)]
pub struct FreeQuota {
    day: u64,
    by_peer: HashMap<PeerId, u64>,
    by_ip: HashMap<IpAddr, u64>,
}

/// The quota would be passed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the free tier's {quota} tokens a day are used up for this client ({used} used today): pay to go on")]
pub struct QuotaUsed {
    /// The daily quota.
    pub quota: u64,
    /// Tokens used today by the peer or its IP, whichever used more.
    pub used: u64,
}

impl FreeQuota {
    /// Counts `tokens` for `peer` (and `ip`) at Unix time `now_s` if they stay within `quota`
    /// a day (0 tokens: whether any are left), and returns what is left; otherwise counts
    /// nothing.
    pub fn take(
        &mut self,
        peer: PeerId,
        ip: Option<IpAddr>,
        tokens: u64,
        quota: u64,
        now_s: u64,
    ) -> Result<u64, QuotaUsed> {
        let used = self.used(peer, ip, now_s);
        if used >= quota || used.saturating_add(tokens) > quota {
            return Err(QuotaUsed { quota, used });
        }
        *self.by_peer.entry(peer).or_default() += tokens;
        if let Some(ip) = ip {
            *self.by_ip.entry(ip).or_default() += tokens;
        }
        Ok(quota - used - tokens)
    }

    /// Tokens `peer` (or `ip`, if more) used today.
    fn used(&mut self, peer: PeerId, ip: Option<IpAddr>, now_s: u64) -> u64 {
        let day = now_s / DAY_S;
        if day != self.day {
            *self = FreeQuota { day, ..FreeQuota::default() };
        }
        let by_peer = self.by_peer.get(&peer).copied().unwrap_or(0);
        let by_ip = ip.and_then(|ip| self.by_ip.get(&ip).copied()).unwrap_or(0);
        by_peer.max(by_ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_quota_a_day_by_key_and_by_ip() {
        let mut q = FreeQuota::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let t = 5 * DAY_S + 100;
        q.take(a, Some(ip), 60, 100, t).unwrap();
        assert_eq!(q.take(a, Some(ip), 41, 100, t), Err(QuotaUsed { quota: 100, used: 60 }));
        q.take(a, Some(ip), 40, 100, t).unwrap();
        // Nothing left: even a check (0 tokens) says so.
        assert_eq!(q.take(a, Some(ip), 0, 100, t), Err(QuotaUsed { quota: 100, used: 100 }));
        // A fresh key from the same address gets nothing more; from elsewhere, its own quota.
        assert_eq!(q.take(b, Some(ip), 1, 100, t), Err(QuotaUsed { quota: 100, used: 100 }));
        q.take(b, None, 100, 100, t).unwrap();
        // The next day starts afresh.
        q.take(a, Some(ip), 100, 100, t + DAY_S).unwrap();
    }
}
