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
    /// Expiry of every entry written, oldest first (one TTL: insertion order is expiry
    /// order), to count live entries without walking the kernel maps.
    expiries: VecDeque<u64>,
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
            expiries: VecDeque::new(),
        }
    }

    /// Blocks first (so a response still in flight is dropped), then resets. Returns the
    /// time from the violating packet to the kernel map update, in nanoseconds.
    pub fn apply(&mut self, verdict: &Verdict) -> Result<u64, EnforceError> {
        let key = kernel_key(&verdict.flow);
        let expires_ns = monotonic_now().saturating_add(verdict.ttl);
        let entry = |mark| BlockEntry {
            expires_ns,
            mark,
            _pad: 0,
        };
        self.expiries.push_back(expires_ns);
        if matches!(verdict.action, VerdictAction::Cut { block_client: true }) {
            self.expiries.push_back(expires_ns);
        }
        let latency;
        match verdict.action {
            VerdictAction::Cut { block_client } => {
                insert(&mut self.flows, key, entry(0), maps::BLOCKED_FLOWS)?;
                latency = wall_clock_now().saturating_sub(verdict.at);
                // Fragments between the two ends: they may not carry the ports.
                let mut pair = [0u8; 32];
                pair[..16].copy_from_slice(&key.client_addr);
                pair[16..].copy_from_slice(&key.server_addr);
                insert(&mut self.pairs, pair, entry(0), maps::BLOCKED_PAIRS)?;
                if block_client {
                    insert(
                        &mut self.clients,
                        key.client_addr,
                        entry(0),
                        maps::BLOCKED_CLIENTS,
                    )?;
                }
                sock_destroy::destroy(verdict.flow.server, verdict.flow.client).map_err(
                    |source| EnforceError::Reset {
                        flow: format!("{} -> {}", verdict.flow.client, verdict.flow.server),
                        source,
                    },
                )?;
            }
            VerdictAction::Flag { mark } => {
                insert(&mut self.flagged, key, entry(mark), maps::FLAGGED_FLOWS)?;
                latency = wall_clock_now().saturating_sub(verdict.at);
            }
        }
        Ok(latency)
    }

    /// Entries written to the kernel maps that have not expired yet.
    pub fn active_entries(&mut self) -> usize {
        let now = monotonic_now();
        while self.expiries.front().is_some_and(|&e| e <= now) {
            self.expiries.pop_front();
        }
        self.expiries.len()
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
