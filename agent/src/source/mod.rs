//! Capture sources. Each one turns what it reads (a pcap file, the kernel ring buffer)
//! into [`Segment`]s of client → server TCP traffic; everything after is shared.

use std::net::SocketAddr;

use crate::Nanos;

pub mod pcap;

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

/// A connection, named from the client's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub client: SocketAddr,
    pub server: SocketAddr,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpFlags {
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
}
