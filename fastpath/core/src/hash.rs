//! Consistent hashing with a Maglev table (Eisenbud et al., NSDI 2016), as Envoy's `MAGLEV`
//! load balancer: a request's hash key (a header, a cookie, the caller's address) picks the
//! same endpoint every time, and when an endpoint joins or leaves only about 1/n of the keys
//! move.
//!
//! The hash is FNV-1a, fixed and unseeded, so every sidecar of a caller builds the same table
//! from the same endpoints and sends a key to the same instance.

pub use crate::tunables::MAGLEV_TABLE_SIZE as TABLE_SIZE;

fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV's low bits mix poorly for short inputs: finish with a 64-bit avalanche.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

/// The hash of a request's key, as lookups take it.
pub fn key_hash(key: &[u8]) -> u64 {
    fnv1a(0, key)
}

/// A request's hash key, carried from the route layer to endpoint choice.
#[derive(Debug, Clone, Copy)]
pub struct Key(pub u64);

/// The calling workload's address, carried on a request for source-IP hashing.
#[derive(Debug, Clone, Copy)]
pub struct PeerIp(pub std::net::IpAddr);

/// A request's hash key under a route's policy, and the `Set-Cookie` to send back when the
/// policy is a cookie the caller does not have yet (a fresh random value, so a new caller
/// lands anywhere and then stays).
pub fn request_key(
    policy: &crate::config::ConsistentHash,
    headers: &http::HeaderMap,
    peer: Option<std::net::IpAddr>,
) -> (Option<u64>, Option<String>) {
    if let Some(name) = &policy.header {
        return (
            headers.get(name.as_str()).map(|v| key_hash(v.as_bytes())),
            None,
        );
    }
    if let Some(cookie) = &policy.cookie {
        let found = headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == cookie.name).then(|| v.to_owned())
            });
        return match found {
            Some(value) => (Some(key_hash(value.as_bytes())), None),
            None => {
                let value = format!("{:016x}", rand::random::<u64>());
                let set = format!(
                    "{}={value}; Max-Age={}; Path=/; HttpOnly",
                    cookie.name,
                    cookie.ttl_ms / 1000
                );
                (Some(key_hash(value.as_bytes())), Some(set))
            }
        };
    }
    if policy.source_ip == Some(true) {
        return (peer.map(|ip| key_hash(ip.to_string().as_bytes())), None);
    }
    (None, None)
}

/// A lookup table from hash to endpoint index.
#[derive(Debug, Clone)]
pub struct Maglev {
    table: Vec<u32>,
}

impl Maglev {
    /// Builds the table for endpoints named by `names` (their addresses), in any order: the
    /// table depends on the names, not their order.
    pub fn build<S: AsRef<str>>(names: &[S]) -> Option<Maglev> {
        Maglev::with_size(names, TABLE_SIZE)
    }

    fn with_size<S: AsRef<str>>(names: &[S], m: usize) -> Option<Maglev> {
        if names.is_empty() {
            return None;
        }
        // Fill in a name order so the result is independent of the caller's order.
        let mut order: Vec<usize> = (0..names.len()).collect();
        order.sort_by(|&a, &b| names[a].as_ref().cmp(names[b].as_ref()));
        let perms: Vec<(u64, u64)> = order
            .iter()
            .map(|&i| {
                let n = names[i].as_ref().as_bytes();
                let offset = fnv1a(0x9e37_79b9, n) % m as u64;
                let skip = fnv1a(0x7f4a_7c15, n) % (m as u64 - 1) + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0u64; order.len()];
        let mut table = vec![u32::MAX; m];
        let mut filled = 0;
        'fill: loop {
            for (j, &(offset, skip)) in perms.iter().enumerate() {
                let mut c = ((offset + next[j] * skip) % m as u64) as usize;
                while table[c] != u32::MAX {
                    next[j] += 1;
                    c = ((offset + next[j] * skip) % m as u64) as usize;
                }
                table[c] = order[j] as u32;
                next[j] += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
        Some(Maglev { table })
    }

    /// A table of one endpoint.
    pub fn single() -> Maglev {
        Maglev { table: vec![0] }
    }

    /// The index (into the names it was built from) of the endpoint for `hash`.
    pub fn pick(&self, hash: u64) -> usize {
        self.table[(hash % self.table.len() as u64) as usize] as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:8080")).collect()
    }

    fn owners(table: &Maglev, names: &[String], keys: usize) -> Vec<String> {
        (0..keys)
            .map(|k| names[table.pick(key_hash(format!("user-{k}").as_bytes()))].clone())
            .collect()
    }

    #[test]
    fn a_key_always_lands_on_the_same_endpoint_whatever_the_order() {
        let a = names(5);
        let mut b = a.clone();
        b.reverse();
        let (ta, tb) = (Maglev::build(&a).unwrap(), Maglev::build(&b).unwrap());
        assert_eq!(owners(&ta, &a, 1000), owners(&tb, &b, 1000));
    }

    #[test]
    fn load_is_spread_evenly() {
        let n = names(5);
        let t = Maglev::build(&n).unwrap();
        for name in &n {
            let share = owners(&t, &n, 20_000).iter().filter(|o| *o == name).count();
            assert!((3_400..=4_600).contains(&share), "{name}: {share} of 20000");
        }
    }

    #[test]
    fn few_keys_move_when_an_endpoint_joins_or_leaves() {
        let before = names(5);
        let after = names(6);
        let t5 = Maglev::build(&before).unwrap();
        let t6 = Maglev::build(&after).unwrap();
        let (o5, o6) = (owners(&t5, &before, 10_000), owners(&t6, &after, 10_000));
        let moved = o5.iter().zip(&o6).filter(|(a, b)| a != b).count();
        // Ideal is 1/6 (1,667): only keys the new endpoint takes. Maglev moves a little more.
        assert!(moved < 2_200, "{moved} of 10000 keys moved");
        // An endpoint leaving: its keys go elsewhere, and few others move.
        let gone = &before[2];
        let fewer: Vec<String> = before.iter().filter(|n| *n != gone).cloned().collect();
        let t4 = Maglev::build(&fewer).unwrap();
        let o4 = owners(&t4, &fewer, 10_000);
        let moved_others = o5
            .iter()
            .zip(&o4)
            .filter(|(a, b)| *a != gone && a != b)
            .count();
        assert!(
            moved_others < 600,
            "{moved_others} keys of staying endpoints moved"
        );
        assert!(!o4.contains(gone));
    }

    #[test]
    fn keys_come_from_the_header_the_cookie_or_the_peer() {
        use crate::config::{ConsistentHash, HashCookie};
        let by_header = ConsistentHash {
            header: Some("x-user".into()),
            cookie: None,
            source_ip: None,
        };
        let mut h = http::HeaderMap::new();
        assert_eq!(request_key(&by_header, &h, None), (None, None));
        h.insert("x-user", "alice".parse().unwrap());
        assert_eq!(
            request_key(&by_header, &h, None).0,
            Some(key_hash(b"alice"))
        );

        let by_cookie = ConsistentHash {
            header: None,
            cookie: Some(HashCookie {
                name: "aff".into(),
                ttl_ms: 90_000,
            }),
            source_ip: None,
        };
        let (key, set) = request_key(&by_cookie, &http::HeaderMap::new(), None);
        let set = set.expect("a new caller is given the cookie");
        let value = set.split(';').next().unwrap().strip_prefix("aff=").unwrap();
        assert_eq!(key, Some(key_hash(value.as_bytes())));
        assert!(set.ends_with("; Max-Age=90; Path=/; HttpOnly"));
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            format!("x=1; aff={value}").parse().unwrap(),
        );
        assert_eq!(
            request_key(&by_cookie, &h, None),
            (Some(key_hash(value.as_bytes())), None)
        );

        let by_peer = ConsistentHash {
            header: None,
            cookie: None,
            source_ip: Some(true),
        };
        let ip = "10.1.2.3".parse().unwrap();
        assert_eq!(
            request_key(&by_peer, &http::HeaderMap::new(), Some(ip)).0,
            Some(key_hash(b"10.1.2.3"))
        );
    }

    #[test]
    fn small_tables_fill_every_slot() {
        let t = Maglev::with_size(&names(3), 7).unwrap();
        assert!(t.table.iter().all(|&e| e < 3));
        assert!(Maglev::build::<String>(&[]).is_none());
    }
}
