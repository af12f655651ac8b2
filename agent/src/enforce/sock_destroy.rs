//! Tears a TCP connection down from the server's side, as `ss -K` does: a sock_diag
//! SOCK_DESTROY request (Linux ≥ 4.5 with CONFIG_INET_DIAG_DESTROY) makes the kernel abort
//! the local socket and send the peer a RST, so neither end hangs.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// linux/sock_diag.h
const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DESTROY: u16 = 21;
/// linux/netlink.h
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_ACK: u16 = 0x04;
const NLMSG_ERROR: u16 = 2;
const NLMSG_HEADER_LEN: usize = 16;
/// linux/inet_diag.h: every TCP state.
const ALL_STATES: u32 = 0xfff;
const INET_DIAG_NOCOOKIE: u32 = !0;

/// Destroys the TCP socket bound to `local` and connected to `remote` in this network
/// namespace. `Ok(false)` when there is no such socket (already closed).
pub fn destroy(local: SocketAddr, remote: SocketAddr) -> io::Result<bool> {
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor we just opened and own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let request = request(local, remote);
    // SAFETY: sending our own buffer on our own socket; the kernel is the destination
    // (a zeroed sockaddr_nl with the family set).
    let sent = unsafe {
        let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        libc::sendto(
            fd.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut reply = [0u8; 256];
    // SAFETY: receiving into our own buffer of the given length.
    let got = unsafe { libc::recv(fd.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    let reply = &reply[..got as usize];
    if reply.len() < NLMSG_HEADER_LEN + 4 || u16::from_ne_bytes([reply[4], reply[5]]) != NLMSG_ERROR
    {
        return Err(io::Error::other("unexpected sock_diag reply"));
    }
    match i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]) {
        0 => Ok(true),
        e if -e == libc::ENOENT => Ok(false),
        e => Err(io::Error::from_raw_os_error(-e)),
    }
}

/// nlmsghdr + inet_diag_req_v2 (linux/inet_diag.h), built field by field: ports and
/// addresses in network order, the rest in host order.
fn request(local: SocketAddr, remote: SocketAddr) -> Vec<u8> {
    let family = match local.ip() {
        IpAddr::V4(_) => libc::AF_INET,
        IpAddr::V6(_) => libc::AF_INET6,
    } as u8;
    let addr = |ip: IpAddr| -> [u8; 16] {
        let mut out = [0u8; 16];
        match ip {
            IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => out = v6.octets(),
        }
        out
    };
    let mut body = Vec::with_capacity(56);
    body.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    body.extend_from_slice(&ALL_STATES.to_ne_bytes());
    body.extend_from_slice(&local.port().to_be_bytes());
    body.extend_from_slice(&remote.port().to_be_bytes());
    body.extend_from_slice(&addr(local.ip()));
    body.extend_from_slice(&addr(remote.ip()));
    body.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    body.extend_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());
    body.extend_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());
    let mut msg = Vec::with_capacity(NLMSG_HEADER_LEN + body.len());
    msg.extend_from_slice(&((NLMSG_HEADER_LEN + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&SOCK_DESTROY.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    msg.extend_from_slice(&body);
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout_matches_inet_diag_req_v2() {
        let r = request(
            "10.0.0.2:80".parse().unwrap(),
            "10.0.0.1:40000".parse().unwrap(),
        );
        assert_eq!(r.len(), 16 + 56);
        assert_eq!(&r[16..18], &[libc::AF_INET as u8, libc::IPPROTO_TCP as u8]);
        assert_eq!(&r[24..28], &[0, 80, 0x9c, 0x40], "ports in network order");
        assert_eq!(&r[28..32], &[10, 0, 0, 2]);
    }

    #[test]
    fn a_socket_that_does_not_exist_is_not_an_error() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: SOCK_DESTROY needs CAP_NET_ADMIN");
            return;
        }
        let got = destroy(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        assert!(matches!(got, Ok(false)), "{got:?}");
    }
}
