//! Applies verdicts in the kernel: entries in the capture program's block and flag maps
//! (each with an expiry the kernel checks), and a reset of the cut connection.

use std::collections::VecDeque;
use std::net::IpAddr;

use agent_common::{BlockEntry, FlowKey as KernelFlowKey, maps};
use aya::maps::{HashMap, MapData};

use super::{Verdict, VerdictAction, sock_destroy};
use crate::packet::FlowKey;
use crate::source::ring::wall_clock_now;

#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error("kernel map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("resetting {flow}: {source}")]
    Reset {
        flow: String,
        source: std::io::Error,
    },
}

/// The kernel's enforcement maps.
pub struct KernelEnforcer {
    flows: HashMap<MapData, KernelFlowKey, BlockEntry>,
    /// Client and server address of each blocked connection: its fragments.
    pairs: HashMap<MapData, [u8; 32], BlockEntry>,
    clients: HashMap<MapData, [u8; 16], BlockEntry>,
    flagged: HashMap<MapData, KernelFlowKey, BlockEntry>,
    /// Every entry written, oldest first (one TTL: insertion order is expiry order), so
    /// expired entries are deleted without walking the maps: the kernel only deletes
    /// one when a packet with its key comes by.
    written: VecDeque<(u64, Written)>,
    /// Inserts the kernel refused (a full map) even after a sweep.
    refusals: u64,
}

/// Which map an entry went to, and its key.
enum Written {
    Flow(KernelFlowKey),
    Pair([u8; 32]),
    Client([u8; 16]),
    Flagged(KernelFlowKey),
}

impl KernelEnforcer {
    pub fn new(
        flows: HashMap<MapData, KernelFlowKey, BlockEntry>,
        pairs: HashMap<MapData, [u8; 32], BlockEntry>,
        clients: HashMap<MapData, [u8; 16], BlockEntry>,
        flagged: HashMap<MapData, KernelFlowKey, BlockEntry>,
    ) -> Self {
        Self {
            flows,
            pairs,
            clients,
            flagged,
            written: VecDeque::new(),
            refusals: 0,
        }
    }

    /// Blocks first (so a response still in flight is dropped), then resets. Returns the
    /// time from the violating packet to the kernel map update, in nanoseconds. A map
    /// that refuses the entry (full, even after expired entries are swept) is counted
    /// and reported, and the connection is still reset.
    pub fn apply(&mut self, verdict: &Verdict) -> Result<u64, EnforceError> {
        let key = kernel_key(&verdict.flow);
        let expires_ns = monotonic_now().saturating_add(verdict.ttl);
        let entry = |mark| BlockEntry {
            expires_ns,
            mark,
            _pad: 0,
        };
        match verdict.action {
            VerdictAction::Cut { block_client } => {
                let blocked = self.insert(Written::Flow(key), entry(0));
                let latency = wall_clock_now().saturating_sub(verdict.at);
                // Fragments between the two ends: they may not carry the ports.
                let mut pair = [0u8; 32];
                pair[..16].copy_from_slice(&key.client_addr);
                pair[16..].copy_from_slice(&key.server_addr);
                let pair = self.insert(Written::Pair(pair), entry(0));
                let client = if block_client {
                    self.insert(Written::Client(key.client_addr), entry(0))
                } else {
                    Ok(())
                };
                sock_destroy::destroy(verdict.flow.server, verdict.flow.client).map_err(
                    |source| EnforceError::Reset {
                        flow: format!("{} -> {}", verdict.flow.client, verdict.flow.server),
                        source,
                    },
                )?;
                blocked.and(pair).and(client)?;
                Ok(latency)
            }
            VerdictAction::Flag { mark } => {
                self.insert(Written::Flagged(key), entry(mark))?;
                Ok(wall_clock_now().saturating_sub(verdict.at))
            }
        }
    }

    /// Writes one entry; on a refusal, sweeps expired entries and tries once more.
    fn insert(&mut self, written: Written, entry: BlockEntry) -> Result<(), EnforceError> {
        let mut result = self.write(&written, entry);
        if result.is_err() {
            self.sweep();
            result = self.write(&written, entry);
        }
        match result {
            Ok(()) => {
                self.written.push_back((entry.expires_ns, written));
                Ok(())
            }
            Err(e) => {
                self.refusals += 1;
                Err(e)
            }
        }
    }

    fn write(&mut self, written: &Written, entry: BlockEntry) -> Result<(), EnforceError> {
        match written {
            Written::Flow(k) => insert(&mut self.flows, *k, entry, maps::BLOCKED_FLOWS),
            Written::Pair(k) => insert(&mut self.pairs, *k, entry, maps::BLOCKED_PAIRS),
            Written::Client(k) => insert(&mut self.clients, *k, entry, maps::BLOCKED_CLIENTS),
            Written::Flagged(k) => insert(&mut self.flagged, *k, entry, maps::FLAGGED_FLOWS),
        }
    }

    /// Deletes the entries that expired (unless rewritten with a later expiry since).
    pub fn sweep(&mut self) {
        let now = monotonic_now();
        while self.written.front().is_some_and(|(e, _)| *e <= now) {
            let Some((_, written)) = self.written.pop_front() else {
                break;
            };
            let expired = |v: Result<BlockEntry, _>| v.is_ok_and(|v| v.expires_ns <= now);
            // A failed delete is an entry the kernel removed itself.
            let _ = match written {
                Written::Flow(k) if expired(self.flows.get(&k, 0)) => self.flows.remove(&k),
                Written::Pair(k) if expired(self.pairs.get(&k, 0)) => self.pairs.remove(&k),
                Written::Client(k) if expired(self.clients.get(&k, 0)) => self.clients.remove(&k),
                Written::Flagged(k) if expired(self.flagged.get(&k, 0)) => self.flagged.remove(&k),
                _ => Ok(()),
            };
        }
    }

    /// Entries in the kernel's block and flag maps now, counted in the maps.
    pub fn kernel_entries(&self) -> u64 {
        (self.flows.keys().count()
            + self.pairs.keys().count()
            + self.clients.keys().count()
            + self.flagged.keys().count()) as u64
    }

    /// Inserts the kernel refused: enforcement that did not happen in the kernel.
    pub fn refusals(&self) -> u64 {
        self.refusals
    }
}

/// The kernel's view of a connection.
/// Writes one entry into a kernel map, naming the map if the kernel refuses.
fn insert<K: aya::Pod>(
    map: &mut HashMap<MapData, K, BlockEntry>,
    key: K,
    entry: BlockEntry,
    name: &'static str,
) -> Result<(), EnforceError> {
    map.insert(key, entry, 0)
        .map_err(|source| EnforceError::Map { name, source })
}

pub fn kernel_key(flow: &FlowKey) -> KernelFlowKey {
    let (family, client_addr) = addr(flow.client.ip());
    let (_, server_addr) = addr(flow.server.ip());
    KernelFlowKey {
        client_addr,
        server_addr,
        client_port: flow.client.port(),
        server_port: flow.server.port(),
        family,
        _pad: [0; 3],
    }
}

fn addr(ip: IpAddr) -> (u8, [u8; 16]) {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            (4, out)
        }
        IpAddr::V6(v6) => (6, v6.octets()),
    }
}

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`, which checks the expiries.
pub fn monotonic_now() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_keys_match_the_capture_layout() {
        let flow = FlowKey {
            client: "10.0.0.1:40000".parse().unwrap(),
            server: "10.0.0.2:80".parse().unwrap(),
        };
        let k = kernel_key(&flow);
        assert_eq!(
            (k.family, &k.client_addr[..4], k.client_port, k.server_port),
            (4, &[10, 0, 0, 1][..], 40000, 80)
        );
        assert!(k.client_addr[4..].iter().all(|&b| b == 0));
    }
}
