//! Active probes for `podtrace ping`: packets built with pnet, carrying
//! podtrace's probe tag ([`tracer_common::PROBE_MAGIC`]) at the start of
//! their payload, sent from inside the source pod's netns by a dedicated
//! thread (setns affects only the calling thread), which also waits for the
//! reply.

use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::Arc,
    time::{Duration, Instant},
};

use pnet_packet::{
    MutablePacket as _,
    icmp::{IcmpPacket, IcmpTypes, checksum, echo_request::MutableEchoRequestPacket},
    tcp::{MutableTcpPacket, TcpFlags, ipv4_checksum},
};
use tokio::sync::mpsc;
use tracer_common::PROBE_MAGIC;

use crate::netns::Netns;

/// Which kind of probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeProto {
    /// ICMP echo request; the reply is the echo reply.
    Icmp,
    /// TCP SYN; the reply is SYN-ACK (open) or RST (closed).
    Tcp,
    /// UDP datagram; the reply is data back or ICMP port unreachable.
    Udp,
}

/// What to send.
#[derive(Clone, Debug)]
pub struct ProbeSpec {
    /// Kind of probe.
    pub proto: ProbeProto,
    /// Source address (the pod's IP, needed for the TCP checksum).
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// TCP/UDP destination port.
    pub port: u16,
    /// Number of probes.
    pub count: u16,
    /// Time between probes.
    pub interval: Duration,
    /// How long to wait for each reply.
    pub timeout: Duration,
}

/// What happened to one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeResult {
    /// Sequence number, from 1.
    pub seq: u16,
    /// Round-trip time, if a reply came.
    pub rtt: Option<Duration>,
    /// What the reply was (`echo reply`, `SYN-ACK`, `RST`, `port unreachable`, ...),
    /// or why the probe never left (see [`refused`]); never a reply
    /// without `rtt`.
    pub reply: Option<String>,
    /// ICMP echo id / TCP or UDP source port used.
    pub ident: u16,
}

/// Bytes of probe payload (tag, sequence number, run id, padding).
pub const PAYLOAD_LEN: usize = 32;

/// Bytes of payload after the tag: sequence number and an id of this run,
/// so two podtrace runs never mistake each other's probes.
fn payload(seq: u16, run: u32) -> [u8; PAYLOAD_LEN] {
    let mut p = [0u8; PAYLOAD_LEN];
    p[..8].copy_from_slice(&PROBE_MAGIC);
    p[8..10].copy_from_slice(&seq.to_be_bytes());
    p[10..14].copy_from_slice(&run.to_be_bytes());
    p
}

/// What [`crate::decode::Packet::payload_hash`] is for probe `seq` of run
/// `run`: it picks one probe's packets at every hop, whatever NAT did.
pub fn payload_hash(seq: u16, run: u32) -> u64 {
    crate::decode::payload_hash(&payload(seq, run))
}

/// Initial sequence number of TCP probe `seq`: the SYN carries it, the
/// SYN-ACK or RST acknowledges it (+ payload + 1), NAT changes neither.
pub fn tcp_isn(seq: u16, run: u32) -> u32 {
    run.wrapping_add(u32::from(seq) << 16)
}

/// Builds an ICMP echo request with the probe payload.
pub fn icmp_echo(id: u16, seq: u16, run: u32) -> Vec<u8> {
    let mut buf = vec![0u8; 8 + PAYLOAD_LEN];
    let mut pkt = MutableEchoRequestPacket::new(&mut buf).expect("buffer fits");
    pkt.set_icmp_type(IcmpTypes::EchoRequest);
    pkt.set_identifier(id);
    pkt.set_sequence_number(seq);
    pkt.set_payload(&payload(seq, run));
    let sum = checksum(&IcmpPacket::new(pkt.packet_mut()).expect("icmp"));
    pkt.set_checksum(sum);
    buf
}

/// Builds a TCP SYN with the probe payload (data in a SYN is legal; the
/// peer ignores it without TCP Fast Open).
pub fn tcp_syn(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    seq: u16,
    run: u32,
) -> Vec<u8> {
    let mut buf = vec![0u8; 20 + PAYLOAD_LEN];
    let mut pkt = MutableTcpPacket::new(&mut buf).expect("buffer fits");
    pkt.set_source(sport);
    pkt.set_destination(dport);
    pkt.set_sequence(tcp_isn(seq, run));
    pkt.set_data_offset(5);
    pkt.set_flags(TcpFlags::SYN);
    pkt.set_window(64240);
    pkt.set_payload(&payload(seq, run));
    let sum = ipv4_checksum(&pkt.to_immutable(), &src, &dst);
    pkt.set_checksum(sum);
    buf
}

/// Starts sending probes from inside `netns`; results arrive on the channel
/// as each probe is answered or times out. The thread ends after the last.
pub fn spawn(
    netns: Arc<Netns>,
    spec: ProbeSpec,
    run: u32,
) -> io::Result<mpsc::Receiver<io::Result<ProbeResult>>> {
    let (tx, rx) = mpsc::channel(usize::from(spec.count.max(1)));
    std::thread::Builder::new()
        .name("podtrace-probe".into())
        .spawn(move || {
            // Enter for good: this thread exists only to send from the pod.
            let guard = match netns.enter() {
                Ok(g) => g,
                Err(e) => {
                    let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
                    return;
                }
            };
            let result = match spec.proto {
                ProbeProto::Icmp => run_icmp(&spec, run, &tx),
                ProbeProto::Tcp => run_tcp(&spec, run, &tx),
                ProbeProto::Udp => run_udp(&spec, run, &tx),
            };
            if let Err(e) = result {
                let _ = tx.blocking_send(Err(e));
            }
            drop(guard);
        })?;
    Ok(rx)
}

/// What a send the kernel refused with EPERM says, or None if it went: a
/// firewall rule in the sending pod's namespace (an iptables or nftables
/// OUTPUT rule) refused the probe before it left; or a cgroup BPF program,
/// of podtrace's own cgroup, since the probes are podtrace's sockets. That
/// is where the probe was lost, not a failure of podtrace: the probe
/// counts as lost and the next one goes. Other errors stay errors.
fn refused(sent: io::Result<()>) -> io::Result<Option<String>> {
    match sent {
        Ok(()) => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(Some(
            "refused in the sender's namespace before it left (\"operation not permitted\": \
             an iptables or nftables OUTPUT rule there, or a cgroup BPF program of \
             podtrace's own cgroup)"
                .into(),
        )),
        Err(e) => Err(e),
    }
}

/// A probe refused before it left, with `why` (see [`refused`]).
fn refused_probe(seq: u16, ident: u16, why: String) -> ProbeResult {
    ProbeResult {
        seq,
        rtt: None,
        reply: Some(why),
        ident,
    }
}

/// Hands on probe `res`, then waits until the next one is due (it was
/// sent at `sent`); false when the receiver is gone.
fn hand_on(tx: &Tx, spec: &ProbeSpec, res: ProbeResult, sent: Instant) -> bool {
    let seq = res.seq;
    if tx.blocking_send(Ok(res)).is_err() {
        return false;
    }
    pace(spec, seq, sent);
    true
}

/// A raw IPv4 socket for `proto` (`libc::IPPROTO_*`): what it sends gets
/// an IP header from the kernel, and is built in one buffer.
pub fn raw_socket(proto: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh, valid descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `buf` from a [`raw_socket`] to `dst`.
pub fn send_to(fd: &OwnedFd, buf: &[u8], dst: Ipv4Addr) -> io::Result<()> {
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(dst).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: buf and addr are valid for the call.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            0,
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Receives one IPv4 datagram (raw sockets deliver the IP header) before
/// `deadline`; None on timeout.
fn recv_until(fd: &OwnedFd, buf: &mut [u8], deadline: Instant) -> io::Result<Option<usize>> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Ok(None);
    }
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&raw mut pfd, 1, ms) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if rc == 0 {
        return Ok(None);
    }
    // SAFETY: buf is valid for writes of its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(Some(n.unsigned_abs()))
    }
}

/// Offset of the L4 header in a received IPv4 datagram, and its source.
fn l4(buf: &[u8]) -> Option<(usize, Ipv4Addr, u8)> {
    if buf.len() < 20 || buf[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(buf[0] & 0x0f) * 4;
    let src = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
    (buf.len() >= ihl + 8).then_some((ihl, src, buf[9]))
}

type Tx = mpsc::Sender<io::Result<ProbeResult>>;

fn pace(spec: &ProbeSpec, seq: u16, started: Instant) {
    if seq < spec.count {
        let next = started + spec.interval;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

fn run_icmp(spec: &ProbeSpec, run: u32, tx: &Tx) -> io::Result<()> {
    let fd = raw_socket(libc::IPPROTO_ICMP)?;
    let id = (run & 0xffff) as u16;
    let mut buf = [0u8; 1500];
    for seq in 1..=spec.count {
        let sent = Instant::now();
        if let Some(why) = refused(send_to(&fd, &icmp_echo(id, seq, run), spec.dst))? {
            if !hand_on(tx, spec, refused_probe(seq, id, why), sent) {
                return Ok(());
            }
            continue;
        }
        let deadline = sent + spec.timeout;
        let mut res = ProbeResult {
            seq,
            rtt: None,
            reply: None,
            ident: id,
        };
        while let Some(n) = recv_until(&fd, &mut buf, deadline)? {
            let Some((o, from, _)) = l4(&buf[..n]) else {
                continue;
            };
            let icmp = &buf[o..n];
            let (ty, rid, rseq) = (
                icmp[0],
                u16::from_be_bytes([icmp[4], icmp[5]]),
                u16::from_be_bytes([icmp[6], icmp[7]]),
            );
            if ty == 0 && rid == id && rseq == seq && icmp[8..].starts_with(&PROBE_MAGIC) {
                res.rtt = Some(sent.elapsed());
                res.reply = Some(format!("echo reply from {from}"));
                break;
            }
            // Errors about our probe quote its IP header + 8 bytes of ICMP.
            if (ty == 3 || ty == 11) && icmp.len() >= 8 + 20 + 8 {
                let quoted = &icmp[8 + 20..];
                if quoted[0] == 8 && u16::from_be_bytes([quoted[6], quoted[7]]) == seq {
                    res.reply = Some(icmp_error(ty, icmp[1], from));
                    break;
                }
            }
        }
        if !hand_on(tx, spec, res, sent) {
            return Ok(());
        }
    }
    Ok(())
}

/// What an ICMP error about a probe says: `port unreachable from 10.0.0.9`.
pub(crate) fn icmp_error(ty: u8, code: u8, from: Ipv4Addr) -> String {
    match (ty, crate::decode::icmp_name(ty, code)) {
        (11, _) => format!("TTL exceeded at {from}"),
        (_, Some(name)) => format!("{name} from {from}"),
        (_, None) => format!("ICMP type {ty} code {code} from {from}"),
    }
}

fn run_tcp(spec: &ProbeSpec, run: u32, tx: &Tx) -> io::Result<()> {
    let fd = raw_socket(libc::IPPROTO_TCP)?;
    let mut buf = [0u8; 1500];
    for seq in 1..=spec.count {
        // A fresh source port per probe: each SYN is its own connection.
        let sport = 40000 + ((run as u16).wrapping_add(seq) % 20000);
        let sent = Instant::now();
        if let Some(why) = refused(send_to(
            &fd,
            &tcp_syn(spec.src, spec.dst, sport, spec.port, seq, run),
            spec.dst,
        ))? {
            if !hand_on(tx, spec, refused_probe(seq, sport, why), sent) {
                return Ok(());
            }
            continue;
        }
        let deadline = sent + spec.timeout;
        let mut res = ProbeResult {
            seq,
            rtt: None,
            reply: None,
            ident: sport,
        };
        while let Some(n) = recv_until(&fd, &mut buf, deadline)? {
            let Some((o, from, _)) = l4(&buf[..n]) else {
                continue;
            };
            let t = &buf[o..n];
            if t.len() < 14
                || u16::from_be_bytes([t[0], t[1]]) != spec.port
                || u16::from_be_bytes([t[2], t[3]]) != sport
            {
                continue;
            }
            let flags = t[13];
            res.rtt = Some(sent.elapsed());
            res.reply = Some(if flags & 0x12 == 0x12 {
                format!("SYN-ACK from {from} (port {} open)", spec.port)
            } else if flags & 0x04 != 0 {
                format!("RST from {from} (port {} closed)", spec.port)
            } else {
                format!("TCP flags 0x{flags:02x} from {from}")
            });
            break;
        }
        if !hand_on(tx, spec, res, sent) {
            return Ok(());
        }
    }
    Ok(())
}

fn run_udp(spec: &ProbeSpec, run: u32, tx: &Tx) -> io::Result<()> {
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    // Every ICMP error about our datagrams, with the type and the sender:
    // without it, a connected socket hears only "hard" errors (port
    // unreachable), and a router's net unreachable reads as a timeout.
    nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::Ipv4RecvErr, &true)?;
    sock.connect(SocketAddrV4::new(spec.dst, spec.port))?;
    let sport = sock.local_addr()?.port();
    let mut buf = [0u8; 1500];
    for seq in 1..=spec.count {
        // What came about earlier probes after their time, or a REJECT's
        // port unreachable for one refused before it left, would fail this
        // send (ECONNREFUSED) or read as this probe's answer: dropped.
        clear_errors(&sock);
        let sent = Instant::now();
        if let Some(why) = refused(sock.send(&payload(seq, run)).map(drop))? {
            if !hand_on(tx, spec, refused_probe(seq, sport, why), sent) {
                return Ok(());
            }
            continue;
        }
        let mut res = ProbeResult {
            seq,
            rtt: None,
            reply: None,
            ident: sport,
        };
        sock.set_read_timeout(Some(spec.timeout))?;
        match sock.recv(&mut buf) {
            Ok(_) => {
                res.rtt = Some(sent.elapsed());
                res.reply = Some(format!("UDP reply from {}", spec.dst));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            // An ICMP error about the datagram: its details wait in the
            // socket's error queue.
            Err(e) => match icmp_error_queued(&sock) {
                Some((ty, code, from)) => {
                    // The destination's own port unreachable is its answer;
                    // anything else means the probe did not get there.
                    if (ty, code) == (3, 3) && from == spec.dst {
                        res.rtt = Some(sent.elapsed());
                    }
                    res.reply = Some(icmp_error(ty, code, from));
                }
                None if e.kind() == io::ErrorKind::ConnectionRefused => {
                    res.rtt = Some(sent.elapsed());
                    res.reply = Some(format!("port unreachable from {}", spec.dst));
                }
                None => return Err(e),
            },
        }
        if !hand_on(tx, spec, res, sent) {
            return Ok(());
        }
    }
    Ok(())
}

/// Empties `sock`'s pending error and its error queue.
fn clear_errors(sock: &UdpSocket) {
    let _ = sock.take_error();
    // Bounded: the kernel caps a socket's error queue by its receive
    // buffer, but a flood must not keep this thread here.
    for _ in 0..64 {
        if next_queued_error(sock).is_none() {
            break;
        }
    }
    let _ = sock.take_error();
}

/// The oldest ICMP error queued on `sock` (`IP_RECVERR`): type, code and
/// the address that sent it.
fn icmp_error_queued(sock: &UdpSocket) -> Option<(u8, u8, Ipv4Addr)> {
    next_queued_error(sock).flatten()
}

/// Takes the oldest entry of `sock`'s error queue: None when it is empty,
/// else the ICMP error it holds, if that is what it holds.
fn next_queued_error(sock: &UdpSocket) -> Option<Option<(u8, u8, Ipv4Addr)>> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrIn, recvmsg};
    let mut data = [0u8; 64];
    let mut iov = [std::io::IoSliceMut::new(&mut data)];
    let mut cmsg = nix::cmsg_space!(libc::sock_extended_err, libc::sockaddr_in);
    let msg = recvmsg::<SockaddrIn>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
    )
    .ok()?;
    Some(msg.cmsgs().ok().and_then(|mut c| {
        c.find_map(|c| match c {
            ControlMessageOwned::Ipv4RecvErr(err, Some(from))
                if err.ee_origin == libc::SO_EE_ORIGIN_ICMP =>
            {
                Some((
                    err.ee_type,
                    err.ee_code,
                    Ipv4Addr::from(u32::from_be(from.sin_addr.s_addr)),
                ))
            }
            _ => None,
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{L4, decode_frame};

    fn with_ip(proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12] = 0x08;
        let total = u16::try_from(20 + l4.len()).unwrap();
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 1, 0, 0, 64, proto, 0, 0, 192, 168, 1, 21, 192, 168, 2, 21,
        ];
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(l4);
        f
    }

    #[test]
    fn icmp_probe_is_tagged_and_decodes() {
        let pkt = icmp_echo(0x1234, 3, 99);
        assert_eq!(
            checksum(&IcmpPacket::new(&pkt).unwrap()),
            u16::from_be_bytes([pkt[2], pkt[3]])
        );
        let d = decode_frame(&with_ip(1, &pkt));
        assert!(d.probe);
        assert_eq!(
            d.l4,
            L4::Icmp {
                ty: 8,
                code: 0,
                id: 0x1234,
                seq: 3
            }
        );
    }

    #[test]
    fn tcp_probe_is_a_tagged_syn() {
        let pkt = tcp_syn(
            [192, 168, 1, 21].into(),
            [192, 168, 2, 21].into(),
            40001,
            80,
            1,
            7,
        );
        let d = decode_frame(&with_ip(6, &pkt));
        assert!(d.probe);
        match d.l4 {
            L4::Tcp {
                sport: 40001,
                dport: 80,
                flags: 0x02,
                ..
            } => {}
            other => panic!("{other:?}"),
        }
    }
}
