//! Tears a TCP connection down from the server's side, as `ss -K` does: a sock_diag
//! SOCK_DESTROY request (Linux ≥ 4.5 with CONFIG_INET_DIAG_DESTROY) makes the kernel abort
//! the local socket and send the peer a RST, so neither end hangs.
//!
//! The kernel finds the socket with `inet_lookup`, which falls back to the *listening*
//! socket when no connection has that 4-tuple (`inet_diag_find_one_icsk`): destroying
//! blindly would close the server's listener when the connection is already gone — or
//! never existed, for a spoofed client. So the socket is looked up first
//! (SOCK_DIAG_BY_FAMILY), kept only if it is that very connection, and destroyed by its
//! cookie, which the kernel checks (`sock_diag_check_cookie`).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// linux/sock_diag.h
const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
/// linux/netlink.h
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_ACK: u16 = 0x04;
const NLMSG_ERROR: u16 = 2;
const NLMSG_HEADER_LEN: usize = 16;
/// linux/inet_diag.h: every TCP state but LISTEN (10), which is never a connection.
const CONNECTION_STATES: u32 = 0xfff & !(1 << TCP_LISTEN);
const TCP_LISTEN: u8 = 10;
const INET_DIAG_NOCOOKIE: [u8; 8] = [0xff; 8];
/// Offsets in `struct inet_diag_msg`: state, then `id` (sport, dport, src, dst, if,
/// cookie).
const MSG_STATE: usize = 1;
const MSG_SPORT: usize = 4;
const MSG_DPORT: usize = 6;
const MSG_COOKIE: usize = 44;
const MSG_LEN: usize = 72;

/// Destroys the TCP socket bound to `local` and connected to `remote` in this network
/// namespace. `Ok(false)` when there is no such connection (already closed, or never
/// opened: a spoofed client).
pub fn destroy(local: SocketAddr, remote: SocketAddr) -> io::Result<bool> {
    let fd = netlink_socket()?;
    let reply = exchange(
        &fd,
        &request(
            SOCK_DIAG_BY_FAMILY,
            NLM_F_REQUEST,
            local,
            remote,
            INET_DIAG_NOCOOKIE,
        ),
    )?;
    let Some(cookie) = connection_cookie(&reply, local, remote)? else {
        return Ok(false);
    };
    let reply = exchange(
        &fd,
        &request(
            SOCK_DESTROY,
            NLM_F_REQUEST | NLM_F_ACK,
            local,
            remote,
            cookie,
        ),
    )?;
    match error_code(&reply) {
        Some(0) => Ok(true),
        Some(e) if -e == libc::ENOENT => Ok(false), // Closed in between.
        Some(e) => Err(io::Error::from_raw_os_error(-e)),
        None => Err(io::Error::other("unexpected sock_diag reply")),
    }
}

fn netlink_socket() -> io::Result<OwnedFd> {
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
    // SAFETY: `fd` is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends one request to the kernel and returns its (first) reply message.
fn exchange(fd: &OwnedFd, request: &[u8]) -> io::Result<Vec<u8>> {
    // SAFETY: sendto(2) of our buffer to the kernel's netlink address (all zero but the
    // family); lengths are the buffers' own.
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
    let mut reply = vec![0u8; 512];
    // SAFETY: recv(2) into our buffer, at most its length.
    let got = unsafe { libc::recv(fd.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    reply.truncate(got as usize);
    Ok(reply)
}

/// The error code of an NLMSG_ERROR reply (0 is an acknowledgement).
fn error_code(reply: &[u8]) -> Option<i32> {
    if reply.len() < NLMSG_HEADER_LEN + 4 || u16::from_ne_bytes([reply[4], reply[5]]) != NLMSG_ERROR
    {
        return None;
    }
    Some(i32::from_ne_bytes([
        reply[16], reply[17], reply[18], reply[19],
    ]))
}

/// The cookie of the socket the lookup found, if it is the connection asked for (not a
/// listener the kernel fell back to).
fn connection_cookie(
    reply: &[u8],
    local: SocketAddr,
    remote: SocketAddr,
) -> io::Result<Option<[u8; 8]>> {
    match error_code(reply) {
        Some(e) if -e == libc::ENOENT => return Ok(None),
        Some(e) => return Err(io::Error::from_raw_os_error(-e)),
        None => {}
    }
    let Some(msg) = reply.get(NLMSG_HEADER_LEN..NLMSG_HEADER_LEN + MSG_LEN) else {
        return Err(io::Error::other("short sock_diag reply"));
    };
    let port = |at: usize| u16::from_be_bytes([msg[at], msg[at + 1]]);
    let same = msg[MSG_STATE] != TCP_LISTEN
        && port(MSG_SPORT) == local.port()
        && port(MSG_DPORT) == remote.port();
    let mut cookie = [0u8; 8];
    cookie.copy_from_slice(&msg[MSG_COOKIE..MSG_COOKIE + 8]);
    Ok(same.then_some(cookie))
}

fn request(
    kind: u16,
    flags: u16,
    local: SocketAddr,
    remote: SocketAddr,
    cookie: [u8; 8],
) -> Vec<u8> {
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
    // struct inet_diag_req_v2: family, protocol, ext, pad, states, then the socket id
    // (ports and addresses in network order, interface, cookie).
    let mut body = Vec::with_capacity(56);
    body.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    body.extend_from_slice(&CONNECTION_STATES.to_ne_bytes());
    body.extend_from_slice(&local.port().to_be_bytes());
    body.extend_from_slice(&remote.port().to_be_bytes());
    body.extend_from_slice(&addr(local.ip()));
    body.extend_from_slice(&addr(remote.ip()));
    body.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    body.extend_from_slice(&cookie);
    let mut msg = Vec::with_capacity(NLMSG_HEADER_LEN + body.len());
    msg.extend_from_slice(&((NLMSG_HEADER_LEN + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
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
            SOCK_DESTROY,
            NLM_F_REQUEST,
            "10.0.0.2:80".parse().unwrap(),
            "10.0.0.1:40000".parse().unwrap(),
            [1, 2, 3, 4, 5, 6, 7, 8],
        );
        assert_eq!(r.len(), 16 + 56);
        assert_eq!(&r[16..18], &[libc::AF_INET as u8, libc::IPPROTO_TCP as u8]);
        assert_eq!(&r[24..28], &[0, 80, 0x9c, 0x40], "ports in network order");
        assert_eq!(&r[28..32], &[10, 0, 0, 2]);
        assert_eq!(&r[64..72], &[1, 2, 3, 4, 5, 6, 7, 8], "the cookie");
    }

    #[test]
    fn a_socket_that_does_not_exist_is_not_an_error() {
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

    #[test]
    fn a_listener_is_never_destroyed() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: SOCK_DESTROY needs CAP_NET_ADMIN");
            return;
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        // No connection from this peer: the kernel's lookup falls back to the listener.
        let got = destroy(local, "127.0.0.1:40999".parse().unwrap());
        assert!(matches!(got, Ok(false)), "{got:?}");
        // Still listening.
        let client = std::net::TcpStream::connect(local);
        assert!(client.is_ok(), "the listener was destroyed");
        // A real connection is destroyed.
        let client = client.unwrap();
        let peer = client.local_addr().unwrap();
        let (_server_side, _) = listener.accept().unwrap();
        assert!(matches!(destroy(local, peer), Ok(true)));
    }
}
