//! Capture sources. Each one turns what it reads (a pcap file, the kernel ring buffer)
//! into [`crate::packet::Segment`]s of analysed connections; everything after is shared.

pub mod live;
pub mod pcap;
pub mod ring;
