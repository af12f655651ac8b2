//! Capture sources. Each one turns what it reads (a pcap file, the kernel ring buffer)
//! into [`Segment`]s of client → server TCP traffic; everything after is shared.

use std::net::{IpAddr, SocketAddr};

use crate::Nanos;

pub mod live;
pub mod pcap;
pub mod ring;

/// One TCP segment travelling from a client to an analysed server port.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    /// Capture time of the packet.
    pub ts: Nanos,
    pub flow: FlowKey,
    pub seq: u32,
    pub flags: TcpFlags,
    /// The payload bytes the capture kept.
    pub payload: &'a [u8],
    /// The payload length on the wire: more than `payload.len()` when the capture was
    /// cut short (snaplen), so reassembly knows the size of the hole.
    pub wire_len: u32,
}

impl Segment<'_> {
    /// An acknowledgement with no bytes and no SYN, FIN or RST: nothing for the agent.
    /// The kernel program does not even hand these over; replay skips them likewise.
    pub fn is_bare_ack(&self) -> bool {
        self.wire_len == 0 && !self.flags.syn && !self.flags.fin && !self.flags.rst
    }
}

/// A connection, named from the client's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    pub client: SocketAddr,
    pub server: SocketAddr,
}

impl std::hash::Hash for FlowKey {
    // Addresses and ports as whole words: `SocketAddr`'s derived hash feeds the hasher
    // byte slices and discriminants, several calls per address.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        for addr in [self.client, self.server] {
            let ip = match addr.ip() {
                IpAddr::V4(v4) => u128::from(v4.to_bits()),
                IpAddr::V6(v6) => v6.to_bits() ^ (1 << 127),
            };
            state.write_u128(ip);
            state.write_u16(addr.port());
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpFlags {
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
}
