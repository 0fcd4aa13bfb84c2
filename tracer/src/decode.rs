//! Decoding of kernel records into [`Packet`]s: pure, no I/O, no clock.
//!
//! Headers are parsed with etherparse's lax parser, because a record holds
//! at most the first `snaplen` bytes of a packet (a TCP segment's headers
//! alone, when its payload lies apart from them in the kernel).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use etherparse::{LaxNetSlice, LaxSlicedPacket, LinkSlice, TransportSlice};
use tracer_common::{Direction, EventKind, MAX_SNAPLEN, PROBE_MAGIC, PacketEvent};

/// Where a packet was seen: one direction of one interface of one netns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HookId {
    /// Kernel netns cookie.
    pub netns_cookie: u64,
    /// Interface index inside that netns.
    pub ifindex: u32,
    /// TC ingress or egress.
    pub dir: Direction,
}

/// The network layer of a packet, as far as podtrace explains it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L3 {
    /// IPv4 header fields that NAT leaves alone (id, total length) and the
    /// addresses it may rewrite.
    Ipv4 {
        /// Source address.
        src: Ipv4Addr,
        /// Destination address.
        dst: Ipv4Addr,
        /// IP identification.
        id: u16,
        /// IP total length.
        total_len: u16,
        /// Time to live.
        ttl: u8,
        /// Protocol number.
        proto: u8,
        /// Fragment bits: [`MORE_FRAGMENTS`], and the offset in units of
        /// 8 bytes (`& 0x1fff`); 0 for a whole datagram. Only a first
        /// fragment (offset 0) carries the transport header.
        frag: u16,
    },
    /// ARP request or reply.
    Arp {
        /// 1 request, 2 reply.
        op: u16,
        /// Sender protocol address.
        sender: Ipv4Addr,
        /// Target protocol address.
        target: Ipv4Addr,
        /// Sender hardware address (what a reply tells).
        sender_mac: [u8; 6],
    },
    /// IPv6: the fixed header's fields. podtrace follows IPv4 flows
    /// only; IPv6 packets are decoded for `capture` to show.
    Ipv6 {
        /// Source address.
        src: Ipv6Addr,
        /// Destination address.
        dst: Ipv6Addr,
        /// Hop limit.
        hop_limit: u8,
        /// The protocol after any extension headers (6 TCP, 17 UDP, 58
        /// ICMPv6).
        proto: u8,
    },
    /// Anything else, by EtherType.
    Other(u16),
}

/// The IPv4 "more fragments" flag, in [`L3::Ipv4`]'s `frag`.
pub const MORE_FRAGMENTS: u16 = 0x2000;

/// The transport layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// TCP header fields.
    Tcp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
        /// Sequence number.
        seq: u32,
        /// Acknowledgment number.
        ack: u32,
        /// Flags byte (FIN=0x01 SYN=0x02 RST=0x04 PSH=0x08 ACK=0x10).
        flags: u8,
    },
    /// UDP ports.
    Udp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
        /// The header's length field, the header's 8 bytes included.
        ulen: u16,
        /// What the IP header leaves for the datagram, header included
        /// (65535 at most): a `ulen` past it is tcpdump's `bad length`.
        room: u16,
    },
    /// ICMPv4; id and seq are meaningful for echo (type 8 and 0).
    Icmp {
        /// ICMP type.
        ty: u8,
        /// ICMP code.
        code: u8,
        /// Echo identifier.
        id: u16,
        /// Echo sequence number.
        seq: u16,
    },
    /// An ICMPv4 error (destination unreachable, time exceeded, parameter
    /// problem) that quotes the packet it is about; [`L4::Icmp`] when too
    /// little of the quote was captured.
    IcmpError {
        /// ICMP type.
        ty: u8,
        /// ICMP code.
        code: u8,
        /// The header's last two bytes: the next hop's MTU of a
        /// "fragmentation needed" (type 3 code 4).
        mtu: u16,
        /// The packet it is about.
        quote: Quote,
    },
    /// ICMPv6; id and seq are meaningful for echo (type 128 and 129).
    Icmp6 {
        /// ICMPv6 type.
        ty: u8,
        /// ICMPv6 code.
        code: u8,
        /// Echo identifier.
        id: u16,
        /// Echo sequence number.
        seq: u16,
    },
    /// No transport header decoded.
    None,
}

/// One packet seen at one hook, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Kernel CLOCK_MONOTONIC time, ns.
    pub ts_ns: u64,
    /// Where it was seen.
    pub hook: HookId,
    /// Why the kernel reported it ([`tracer_common::reason`] bits).
    pub reason: u32,
    /// Whole packet length on the wire.
    pub len: u32,
    /// Bytes captured (at most [`MAX_SNAPLEN`]: 16 bits keep the packet,
    /// copied per event, at 112 bytes).
    pub cap_len: u16,
    /// skb mark.
    pub mark: u32,
    /// Network layer.
    pub l3: L3,
    /// Transport layer.
    pub l4: L4,
    /// [`payload_hash`] of the first (up to 32) payload bytes: NAT does not
    /// touch them.
    pub payload_hash: u64,
    /// Carries podtrace's probe tag.
    pub probe: bool,
    /// The `length` tcpdump prints, from the headers (not what was
    /// captured): a TCP segment's or UDP datagram's payload, an ICMP
    /// message with its header, else the IP payload; 0 for no IP. An IPv4
    /// packet whose total length is 0 (a BIG TCP send, over 64 KiB) takes
    /// it from the packet's length on the wire, as tcpdump does.
    pub length: u32,
}

/// The packet an ICMPv4 error is about, read from the IPv4 header and the
/// first 8 bytes of it that the error quotes. NAT rewrites the quote with
/// the error, so at each hook it reads as the packet did there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quote {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Protocol number.
    pub proto: u8,
    /// TCP/UDP source port; for an ICMP echo, as [`icmp_ports`] puts its id.
    pub sport: u16,
    /// TCP/UDP destination port; for an ICMP echo, as [`icmp_ports`] puts its id.
    pub dport: u16,
    /// An ICMP echo's sequence number (0 for other protocols): which
    /// probe of a ping an error is about.
    pub seq: u16,
}

/// ICMP errors that quote the packet they are about and say it went no
/// further: destination unreachable, time exceeded, parameter problem
/// (not a redirect or source quench, which quote a packet that was
/// delivered).
fn is_icmp_error(ty: u8) -> bool {
    matches!(ty, 3 | 11 | 12)
}

/// The ports of an ICMP message in a tuple's convention (what the kernel's
/// flow counters key it by): an echo request's id as its source port, an
/// echo reply's as its destination port, nothing for other types.
pub fn icmp_ports(ty: u8, id: u16) -> (u16, u16) {
    match ty {
        8 => (id, 0),
        0 => (0, id),
        _ => (0, 0),
    }
}

/// For an ICMP error, reads the packet it quotes (`pkt.l4` becomes
/// [`L4::IcmpError`]) and fingerprints it by what NAT leaves alone (the quoted IP id, length and
/// protocol, TCP's sequence number, UDP's length, an echo's sequence
/// number) in place of the payload's first bytes, which NAT rewrites: one
/// error then reads as one packet at every hook. `payload`: the bytes
/// after the ICMP header.
#[inline]
fn icmp_error_quote(pkt: &mut Packet, payload: &[u8]) {
    if let L4::Icmp { ty, code, seq, .. } = pkt.l4
        && is_icmp_error(ty)
    {
        read_quote(pkt, payload, (ty, code, seq));
    }
}

/// [`icmp_error_quote`]'s work, for an error whose type, code and last
/// header half (`seq`) are given.
#[cold]
fn read_quote(pkt: &mut Packet, payload: &[u8], (ty, code, seq): (u8, u8, u16)) {
    if payload.len() < 20 || payload[0] >> 4 != 4 {
        return;
    }
    let ihl = usize::from(payload[0] & 0x0f) * 4;
    let proto = payload[9];
    // Only a first fragment (offset 0) carries the ports; Linux sends no
    // error about a later one, but a crafted one must not be read so.
    let first = u16::from_be_bytes([payload[6], payload[7]]) & 0x1fff == 0;
    let Some(l4) = payload.get(ihl..ihl + 8).filter(|_| ihl >= 20 && first) else {
        return;
    };
    let (sport, dport) = match proto {
        6 | 17 => (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        ),
        1 => icmp_ports(l4[0], u16::from_be_bytes([l4[4], l4[5]])),
        _ => (0, 0),
    };
    pkt.l4 = L4::IcmpError {
        ty,
        code,
        mtu: seq,
        quote: Quote {
            src: Ipv4Addr::new(payload[12], payload[13], payload[14], payload[15]),
            dst: Ipv4Addr::new(payload[16], payload[17], payload[18], payload[19]),
            proto,
            sport,
            dport,
            seq: if proto == 1 {
                u16::from_be_bytes([l4[6], l4[7]])
            } else {
                0
            },
        },
    };
    // What NAT leaves alone: IP id, total length, protocol, then TCP's
    // sequence number, UDP's length or an echo's type and sequence number.
    let mut kept = [0u8; 9];
    kept[..2].copy_from_slice(&payload[4..6]);
    kept[2..4].copy_from_slice(&payload[2..4]);
    kept[4] = proto;
    match proto {
        6 => kept[5..9].copy_from_slice(&l4[4..8]),
        17 => kept[5..7].copy_from_slice(&l4[4..6]),
        1 => (kept[5], kept[6], kept[7]) = (l4[0], l4[6], l4[7]),
        _ => {}
    }
    pkt.payload_hash = payload_hash(&kept);
}

/// Why a record could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than the header of a packet event.
    #[error("record of {0} bytes is shorter than a packet event")]
    Short(usize),
    /// A kind this version does not know.
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    /// Corrupt direction or length.
    #[error("corrupt packet event")]
    Corrupt,
}

/// Reads the raw kernel record out of a ring buffer item.
/// A record is a [`PacketEvent`] cut short after its captured bytes; the
/// missing tail reads as zeros.
pub fn raw_event(bytes: &[u8]) -> Result<PacketEvent, DecodeError> {
    if bytes.len() < PacketEvent::HEADER_LEN {
        return Err(DecodeError::Short(bytes.len()));
    }
    let n = bytes.len().min(size_of::<PacketEvent>());
    // SAFETY: PacketEvent is plain data valid for any bits, zeros included;
    // at most its size is copied into it.
    let ev: PacketEvent = unsafe {
        let mut ev = std::mem::MaybeUninit::<PacketEvent>::zeroed();
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), ev.as_mut_ptr().cast::<u8>(), n);
        ev.assume_init()
    };
    if ev.kind != EventKind::Packet as u32 {
        return Err(DecodeError::UnknownKind(ev.kind));
    }
    if ev.cap_len as usize > n - PacketEvent::HEADER_LEN {
        return Err(DecodeError::Corrupt);
    }
    Ok(ev)
}

/// Decodes a kernel record.
pub fn decode(ev: &PacketEvent) -> Result<Packet, DecodeError> {
    let dir = Direction::from_u32(ev.direction).ok_or(DecodeError::Corrupt)?;
    let cap = usize::try_from(ev.cap_len).map_err(|_| DecodeError::Corrupt)?;
    if cap > MAX_SNAPLEN {
        return Err(DecodeError::Corrupt);
    }
    let mut pkt = decode_frame(&ev.data[..cap]);
    pkt.ts_ns = ev.ts_ns;
    pkt.hook = HookId {
        netns_cookie: ev.netns_cookie,
        ifindex: ev.ifindex,
        dir,
    };
    pkt.reason = ev.reason;
    pkt.len = ev.pkt_len;
    pkt.cap_len = cap as u16;
    pkt.mark = ev.mark;
    gso_length(&mut pkt, &ev.data[..cap]);
    Ok(pkt)
}

/// Where a record's captured bytes start: `PacketEvent::data`.
const DATA_AT: usize = std::mem::offset_of!(PacketEvent, data);

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Asks the CPU for the bytes about 900 bytes past this record: a batch
/// holds records back to back (48 to 304 bytes each, 176 with the default
/// snaplen), and the reader goes through them in order, so that is 3 to
/// 18 records ahead. 5 lines a record keep up with the
/// largest records. Only a hint: past the ring's end a prefetch is ignored.
#[inline]
fn prefetch_following(record: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        let at = record.as_ptr().wrapping_add(896);
        for line in [0, 64, 128, 192, 256] {
            // SAFETY: prefetching is a hint, valid for any address.
            unsafe {
                use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(line).cast());
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = record;
}

/// Decodes a ring buffer item in place: [`raw_event`] then [`decode`],
/// with the same results and errors, but reading only the fields and
/// header bytes it needs instead of copying the whole record. Also returns
/// the captured bytes (at most [`MAX_SNAPLEN`]).
pub fn decode_record(bytes: &[u8]) -> Result<(Packet, &[u8]), DecodeError> {
    decode_record_as(bytes, true)
}

/// [`decode_record`], or with `frame` false only the record's header: the
/// packet's hook, time, lengths, reason and mark, with no L3 or L4 (what
/// a reader that only writes the bytes out needs; the frame's parse was a
/// fifth of its time per record).
pub fn decode_record_as(bytes: &[u8], frame: bool) -> Result<(Packet, &[u8]), DecodeError> {
    use std::mem::offset_of;
    if bytes.len() < DATA_AT {
        return Err(DecodeError::Short(bytes.len()));
    }
    let kind = u32_at(bytes, offset_of!(PacketEvent, kind));
    if kind != EventKind::Packet as u32 {
        return Err(DecodeError::UnknownKind(kind));
    }
    let dir = Direction::from_u32(u32_at(bytes, offset_of!(PacketEvent, direction)))
        .ok_or(DecodeError::Corrupt)?;
    let cap_len = u32_at(bytes, offset_of!(PacketEvent, cap_len));
    let cap = usize::try_from(cap_len).map_err(|_| DecodeError::Corrupt)?;
    // The record is cut short after the captured bytes (see PacketEvent).
    if cap > MAX_SNAPLEN || bytes.len() < DATA_AT + cap {
        return Err(DecodeError::Corrupt);
    }
    let data = &bytes[DATA_AT..DATA_AT + cap];
    prefetch_following(bytes);
    let mut pkt = if frame {
        decode_frame(data)
    } else {
        unparsed(data.len())
    };
    pkt.ts_ns = u64_at(bytes, offset_of!(PacketEvent, ts_ns));
    pkt.hook = HookId {
        netns_cookie: u64_at(bytes, offset_of!(PacketEvent, netns_cookie)),
        ifindex: u32_at(bytes, offset_of!(PacketEvent, ifindex)),
        dir,
    };
    pkt.reason = u32_at(bytes, offset_of!(PacketEvent, reason));
    pkt.len = u32_at(bytes, offset_of!(PacketEvent, pkt_len));
    pkt.cap_len = cap as u16;
    if frame {
        gso_length(&mut pkt, data);
    }
    pkt.mark = u32_at(bytes, offset_of!(PacketEvent, mark));
    Ok((pkt, data))
}

/// An IPv4 packet over 64 KiB (BIG TCP: a GSO send the kernel has not yet
/// cut into segments) carries total length 0. tcpdump then takes the
/// length from the packet on the wire; so does this, with the packet's
/// length as the kernel gave it (`pkt.len`), less the headers.
pub(crate) fn gso_length(pkt: &mut Packet, frame: &[u8]) {
    const ETH: usize = 14;
    let L3::Ipv4 {
        total_len: 0,
        frag: 0,
        ..
    } = pkt.l3
    else {
        return;
    };
    // A frame read as IPv4 behind a VLAN tag has its headers elsewhere.
    if frame.get(12..14) != Some(&[0x08, 0x00]) {
        return;
    }
    let Some(&vihl) = frame.get(ETH) else {
        return;
    };
    let ihl = usize::from(vihl & 0x0f) * 4;
    let l4 = match pkt.l4 {
        L4::Tcp { .. } => frame
            .get(ETH + ihl + 12)
            .map_or(0, |&d| usize::from(d >> 4) * 4),
        L4::Udp { .. } => 8,
        _ => 0,
    };
    let headers = u32::try_from(ETH + ihl + l4).unwrap_or(u32::MAX);
    pkt.length = pkt.len.saturating_sub(headers);
}

/// Decodes an Ethernet frame (or its first bytes); hook fields are zero.
pub fn decode_frame(frame: &[u8]) -> Packet {
    let mut pkt = unparsed(frame.len());
    if !fast_ipv4(frame, &mut pkt) {
        etherparse_frame(frame, &mut pkt);
    }
    pkt
}

/// A packet of `len` captured bytes, nothing read from them: no L3 or L4,
/// hook fields zero.
fn unparsed(len: usize) -> Packet {
    Packet {
        ts_ns: 0,
        hook: HookId {
            netns_cookie: 0,
            ifindex: 0,
            dir: Direction::Ingress,
        },
        reason: 0,
        len: len as u32,
        cap_len: u16::try_from(len).unwrap_or(u16::MAX),
        mark: 0,
        l3: L3::Other(0),
        l4: L4::None,
        payload_hash: 0,
        probe: false,
        length: 0,
    }
}

/// [`decode_frame`] by etherparse's lax parser: every case.
fn etherparse_frame(frame: &[u8], pkt: &mut Packet) {
    let Ok(sliced) = LaxSlicedPacket::from_ethernet(frame) else {
        return;
    };
    if let Some(LinkSlice::Ethernet2(eth)) = &sliced.link {
        pkt.l3 = L3::Other(eth.ether_type().0);
    }
    // The IP payload's length by the header: tcpdump's `length` but for
    // what the transport header takes off it.
    let mut ip_len = 0;
    match &sliced.net {
        Some(LaxNetSlice::Ipv4(ip)) => {
            let h = ip.header();
            // An authentication header (AH) is not the transport's.
            let ah = ip.extensions().auth.map_or(0, |a| a.slice().len());
            ip_len = usize::from(h.total_len()).saturating_sub(usize::from(h.ihl()) * 4 + ah);
            pkt.l3 = L3::Ipv4 {
                src: h.source_addr(),
                dst: h.destination_addr(),
                id: h.identification(),
                total_len: h.total_len(),
                ttl: h.ttl(),
                proto: h.protocol().0,
                frag: (u16::from(h.more_fragments()) << 13) | h.fragments_offset().value(),
            };
        }
        Some(LaxNetSlice::Ipv6(ip)) => {
            let h = ip.header();
            ip_len = usize::from(h.payload_length()).saturating_sub(ip.extensions().slice().len());
            pkt.l3 = L3::Ipv6 {
                src: h.source_addr(),
                dst: h.destination_addr(),
                hop_limit: h.hop_limit(),
                proto: ip.payload().ip_number.0,
            };
        }
        Some(LaxNetSlice::Arp(arp)) => {
            let ip4 = |b: &[u8]| <[u8; 4]>::try_from(b).map(Ipv4Addr::from).ok();
            if let (Some(sender), Some(target)) = (
                ip4(arp.sender_protocol_addr()),
                ip4(arp.target_protocol_addr()),
            ) {
                pkt.l3 = L3::Arp {
                    op: arp.operation().0,
                    sender,
                    target,
                    sender_mac: <[u8; 6]>::try_from(arp.sender_hw_addr()).unwrap_or_default(),
                };
            }
        }
        None => {}
    }
    pkt.length = clamp16(ip_len);
    let payload: &[u8] = match &sliced.transport {
        Some(TransportSlice::Tcp(t)) => {
            pkt.length = clamp16(ip_len.saturating_sub(t.header_len()));
            pkt.l4 = L4::Tcp {
                sport: t.source_port(),
                dport: t.destination_port(),
                seq: t.sequence_number(),
                ack: t.acknowledgment_number(),
                flags: t.slice()[13],
            };
            t.payload()
        }
        Some(TransportSlice::Udp(u)) => {
            pkt.length = u32::from(u.length().saturating_sub(8));
            pkt.l4 = L4::Udp {
                sport: u.source_port(),
                dport: u.destination_port(),
                ulen: u.length(),
                room: u16::try_from(ip_len).unwrap_or(u16::MAX),
            };
            u.payload()
        }
        Some(TransportSlice::Icmpv4(i)) => {
            let (id, seq) = echo_id_seq(i.bytes5to8());
            pkt.l4 = L4::Icmp {
                ty: i.type_u8(),
                code: i.code_u8(),
                id,
                seq,
            };
            i.payload()
        }
        Some(TransportSlice::Icmpv6(i)) => {
            let (id, seq) = echo_id_seq(i.bytes5to8());
            pkt.l4 = L4::Icmp6 {
                ty: i.type_u8(),
                code: i.code_u8(),
                id,
                seq,
            };
            i.payload()
        }
        // etherparse leaves a fragment's transport alone; the first
        // fragment has the header, read as the fast path reads it.
        _ => match pkt.l3 {
            L3::Ipv4 {
                proto,
                frag: MORE_FRAGMENTS,
                ..
            } if matches!(proto, 1 | 6 | 17) => ipv4_payload(frame)
                .and_then(|t| l4_header(proto, t, ip_len, pkt))
                .unwrap_or(&[]),
            _ => &[],
        },
    };
    pkt.probe = payload.starts_with(&PROBE_MAGIC);
    pkt.payload_hash = payload_hash(payload);
    icmp_error_quote(pkt, payload);
}

/// The IPv4 payload of an Ethernet frame, as far as the header's total
/// length and the capture go (the whole capture when the length is off).
fn ipv4_payload(frame: &[u8]) -> Option<&[u8]> {
    const ETH: usize = 14;
    let ip = frame.get(ETH..)?;
    let ihl = usize::from(*ip.first()? & 0x0f) * 4;
    if ihl < 20 || ip.len() < ihl {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    Some(if total < ihl || total > ip.len() {
        &ip[ihl..]
    } else {
        &ip[ihl..total]
    })
}

/// Reads a TCP, UDP or ICMP header at the start of `t` into `pkt.l4` and
/// returns the payload after it; None, with `pkt` untouched, when `t` is
/// too short for it or it is one etherparse reads differently.
#[inline]
fn l4_header<'a>(proto: u8, t: &'a [u8], ip_len: usize, pkt: &mut Packet) -> Option<&'a [u8]> {
    Some(match proto {
        6 => {
            let doff = usize::from(t.get(12).copied().unwrap_or(0) >> 4) * 4;
            if t.len() < 20 || doff < 20 || t.len() < doff {
                return None;
            }
            pkt.l4 = L4::Tcp {
                sport: u16::from_be_bytes([t[0], t[1]]),
                dport: u16::from_be_bytes([t[2], t[3]]),
                seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
                ack: u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
                flags: t[13],
            };
            pkt.length = clamp16(ip_len.saturating_sub(doff));
            &t[doff..]
        }
        17 => {
            if t.len() < 8 {
                return None;
            }
            let ulen = u16::from_be_bytes([t[4], t[5]]);
            pkt.l4 = L4::Udp {
                sport: u16::from_be_bytes([t[0], t[1]]),
                dport: u16::from_be_bytes([t[2], t[3]]),
                ulen,
                room: u16::try_from(ip_len).unwrap_or(u16::MAX),
            };
            let len = usize::from(ulen);
            pkt.length = clamp16(len.saturating_sub(8));
            if t.len() < len || len < 8 {
                &t[8..]
            } else {
                &t[8..len]
            }
        }
        _ => {
            // Timestamps (13, 14) have a 20-byte header in etherparse.
            if t.len() < 8 || matches!(t[0], 13 | 14) {
                return None;
            }
            pkt.l4 = L4::Icmp {
                ty: t[0],
                code: t[1],
                id: u16::from_be_bytes([t[4], t[5]]),
                seq: u16::from_be_bytes([t[6], t[7]]),
            };
            pkt.length = clamp16(ip_len);
            &t[8..]
        }
    })
}

/// A length from IP headers, which never exceeds 16 bits.
fn clamp16(n: usize) -> u32 {
    u32::from(u16::try_from(n).unwrap_or(u16::MAX))
}

/// An ICMP or ICMPv6 header's bytes 5 to 8: an echo's identifier and
/// sequence number.
fn echo_id_seq(b: [u8; 4]) -> (u16, u16) {
    (
        u16::from_be_bytes([b[0], b[1]]),
        u16::from_be_bytes([b[2], b[3]]),
    )
}

/// The common case of [`decode_frame`], read straight from the bytes:
/// Ethernet II, an IPv4 header (options allowed, no AH) and a whole TCP,
/// UDP or ICMP header (none after a fragment's first). Gives exactly what etherparse's lax
/// parser gives (see the differential test); `false`, with `pkt` untouched,
/// for anything else, which etherparse then decodes.
#[inline]
fn fast_ipv4(frame: &[u8], pkt: &mut Packet) -> bool {
    const ETH: usize = 14;
    let be16 = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]);
    if frame.len() < ETH + 20 || frame[12..14] != [0x08, 0x00] || frame[ETH] >> 4 != 4 {
        return false;
    }
    let ihl = usize::from(frame[ETH] & 0x0f) * 4;
    let proto = frame[ETH + 9];
    if ihl < 20 || frame.len() < ETH + ihl || !matches!(proto, 1 | 6 | 17) {
        return false;
    }
    let ip = &frame[ETH..];
    let total_len = be16(ETH + 2);
    let total = usize::from(total_len);
    // etherparse: a total length shorter than the header or longer than
    // the capture falls back to what was captured.
    let ip_payload = if total < ihl || total > ip.len() {
        &ip[ihl..]
    } else {
        &ip[ihl..total]
    };
    let frag = be16(ETH + 6) & 0x3fff;
    let ip_len = total.saturating_sub(ihl);
    // Only a first fragment (offset 0) carries the transport header.
    let payload: &[u8] = if frag & 0x1fff != 0 {
        pkt.length = clamp16(ip_len);
        &[]
    } else {
        match l4_header(proto, ip_payload, ip_len, pkt) {
            Some(p) => p,
            None => return false,
        }
    };
    pkt.l3 = L3::Ipv4 {
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        id: be16(ETH + 4),
        total_len,
        ttl: ip[8],
        proto,
        frag,
    };
    pkt.probe = payload.starts_with(&PROBE_MAGIC);
    pkt.payload_hash = payload_hash(payload);
    icmp_error_quote(pkt, payload);
    true
}

/// Fingerprint of a packet's payload: a hash of its first (up to) 32
/// bytes, 8 at a time (folded multiplies, as foldhash): a few ns where
/// FNV-1a's byte-serial chain took about 20. Stable across runs.
pub fn payload_hash(payload: &[u8]) -> u64 {
    const MUL: u64 = 0x9e37_79b9_7f4a_7c15;
    fn fold(a: u64, b: u64) -> u64 {
        let m = u128::from(a) * u128::from(b);
        (m as u64) ^ ((m >> 64) as u64)
    }
    let bytes = &payload[..payload.len().min(32)];
    let mut h = 0x243f_6a88_85a3_08d3 ^ bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        h = fold(h ^ u64::from_le_bytes(w.try_into().expect("8 bytes")), MUL);
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = fold(h ^ u64::from_le_bytes(w), MUL);
    }
    fold(h, 0x2d35_8dcc_aa6c_78a5)
}

/// 64-bit FNV-1a: cheap, stable across runs, good enough for fingerprints.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl fmt::Display for Packet {
    /// tcpdump-like summary of L3/L4: `IP a > b: ICMP echo request, id 1, seq 2, length 64`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Family tag, addresses and protocol; `length` as tcpdump's.
        let (ip, src, dst, proto): (_, IpAddr, IpAddr, _) = match self.l3 {
            L3::Ipv4 {
                src, dst, proto, ..
            } => ("IP", src.into(), dst.into(), proto),
            L3::Ipv6 {
                src, dst, proto, ..
            } => ("IP6", src.into(), dst.into(), proto),
            L3::Arp {
                op: 1,
                sender,
                target,
                ..
            } => return write!(f, "ARP, Request who-has {target} tell {sender}"),
            L3::Arp {
                sender, sender_mac, ..
            } => {
                return write!(
                    f,
                    "ARP, Reply {sender} is-at {}",
                    crate::lab::Mac(sender_mac)
                );
            }
            // Too few bytes kept for an Ethernet header (`--snaplen`
            // below 14): tcpdump's mark for a cut header.
            L3::Other(_) if self.cap_len < 14 => return write!(f, "[|ether], length {}", self.len),
            L3::Other(et) => return write!(f, "ethertype 0x{et:04x}, length {}", self.len),
        };
        self.fmt_l4(f, ip, src, dst, self.length, proto)?;
        // The first fragment of a datagram: its header reads as usual, and
        // the later fragments give the same id.
        match self.l3 {
            L3::Ipv4 { id, frag, .. } if frag == MORE_FRAGMENTS && self.l4 != L4::None => {
                write!(f, ", fragment id {id} offset 0+")
            }
            _ => Ok(()),
        }
    }
}

impl Packet {
    /// Part of a fragmented IPv4 datagram (more to come, or not the first).
    fn fragment(&self) -> bool {
        matches!(self.l3, L3::Ipv4 { frag, .. } if frag & (MORE_FRAGMENTS | 0x1fff) != 0)
    }

    fn fmt_l4(
        &self,
        f: &mut fmt::Formatter<'_>,
        ip: &str,
        src: IpAddr,
        dst: IpAddr,
        len: u32,
        proto: u8,
    ) -> fmt::Result {
        match self.l4 {
            L4::Tcp {
                sport,
                dport,
                seq,
                ack,
                flags,
            } => write!(
                f,
                "{ip} {src}.{sport} > {dst}.{dport}: Flags [{}], seq {seq}, ack {ack}, length {len}",
                tcp_flags(flags)
            ),
            // tcpdump's words for a length field shorter than the header.
            L4::Udp {
                sport, dport, ulen, ..
            } if ulen < 8 => write!(
                f,
                "{ip} {src}.{sport} > {dst}.{dport}: truncated-udplength {ulen}"
            ),
            // A length field past what the IP header leaves, as tcpdump
            // says it (a fragment's first part is short by design).
            L4::Udp {
                sport,
                dport,
                ulen,
                room,
            } if ulen > room && !self.fragment() => write!(
                f,
                "{ip} {src}.{sport} > {dst}.{dport}: UDP, bad length {} > {}",
                ulen - 8,
                room.saturating_sub(8)
            ),
            L4::Udp { sport, dport, .. } => {
                write!(f, "{ip} {src}.{sport} > {dst}.{dport}: UDP, length {len}")
            }
            L4::Icmp { ty, code, id, seq } if src.is_ipv4() => {
                write!(f, "{ip} {src} > {dst}: ICMP ")?;
                match ty {
                    8 => write!(f, "echo request, id {id}, seq {seq}"),
                    0 => write!(f, "echo reply, id {id}, seq {seq}"),
                    3 => write!(f, "unreachable, code {code}"),
                    11 => write!(f, "time exceeded"),
                    _ => write!(f, "type {ty} code {code}"),
                }?;
                write!(f, ", length {len}")
            }
            // tcpdump's words, with the quoted packet's address.
            L4::IcmpError {
                ty,
                code,
                mtu,
                quote: q,
            } if src.is_ipv4() => {
                write!(f, "{ip} {src} > {dst}: ICMP ")?;
                match (ty, code, q.proto) {
                    (3, 0, _) => write!(f, "net {} unreachable", q.dst),
                    (3, 1, _) => write!(f, "host {} unreachable", q.dst),
                    (3, 2, p) => write!(f, "{} protocol {p} unreachable", q.dst),
                    (3, 3, 6) => write!(f, "{} tcp port {} unreachable", q.dst, q.dport),
                    (3, 3, 17) => write!(f, "{} udp port {} unreachable", q.dst, q.dport),
                    (3, 4, _) => write!(f, "{} unreachable - need to frag (mtu {mtu})", q.dst),
                    (3, 9, _) => write!(f, "net {} unreachable - admin prohibited", q.dst),
                    (3, 10, _) => write!(f, "host {} unreachable - admin prohibited", q.dst),
                    (3, 13, _) => {
                        write!(f, "host {} unreachable - admin prohibited filter", q.dst)
                    }
                    (3, ..) => write!(f, "{} unreachable, code {code}", q.dst),
                    (11, 0, _) => write!(f, "time exceeded in-transit"),
                    (11, ..) => write!(f, "ip reassembly time exceeded"),
                    _ => write!(f, "type {ty} code {code}"),
                }?;
                write!(f, ", length {len}")
            }
            L4::Icmp6 { ty, code, id, seq } if src.is_ipv6() => {
                write!(f, "{ip} {src} > {dst}: ICMP6, ")?;
                match ty {
                    128 => write!(f, "echo request, id {id}, seq {seq}"),
                    129 => write!(f, "echo reply, id {id}, seq {seq}"),
                    1 => write!(f, "destination unreachable, code {code}"),
                    2 => write!(f, "packet too big"),
                    3 => write!(f, "time exceeded"),
                    130 => write!(f, "multicast listener query"),
                    131 => write!(f, "multicast listener report"),
                    132 => write!(f, "multicast listener done"),
                    143 => write!(f, "multicast listener report v2"),
                    133 => write!(f, "router solicitation"),
                    134 => write!(f, "router advertisement"),
                    135 => write!(f, "neighbor solicitation"),
                    136 => write!(f, "neighbor advertisement"),
                    _ => write!(f, "type {ty} code {code}"),
                }?;
                write!(f, ", length {len}")
            }
            _ => match self.l3 {
                // A later fragment: tcpdump's `ip-proto-N`, and which
                // datagram and where in it, which tcpdump shows with -v.
                L3::Ipv4 { id, frag, .. } if frag & 0x1fff != 0 => write!(
                    f,
                    "{ip} {src} > {dst}: ip-proto-{proto}, fragment id {id} offset {}{}, length {len}",
                    u32::from(frag & 0x1fff) * 8,
                    if frag & MORE_FRAGMENTS != 0 { "+" } else { "" }
                ),
                _ => write!(f, "{ip} {src} > {dst}: proto {proto}, length {len}"),
            },
        }
    }
}

/// tcpdump's flag letters: S F R P . (ack).
pub fn tcp_flags(flags: u8) -> String {
    let mut s = String::new();
    for (bit, c) in [
        (0x02, 'S'),
        (0x01, 'F'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x10, '.'),
    ] {
        if flags & bit != 0 {
            s.push(c);
        }
    }
    s
}

/// The name of an ICMPv4 message that is not an echo: what a router or
/// host says about a packet it could not deliver (`port unreachable`).
pub fn icmp_name(ty: u8, code: u8) -> Option<&'static str> {
    Some(match (ty, code) {
        (3, 0) => "net unreachable",
        (3, 1) => "host unreachable",
        (3, 2) => "protocol unreachable",
        (3, 3) => "port unreachable",
        (3, 4) => "fragmentation needed",
        (3, 9) => "net administratively prohibited",
        (3, 10) => "host administratively prohibited",
        (3, 13) => "administratively prohibited (filter)",
        (3, _) => "destination unreachable",
        (4, _) => "source quench",
        (5, _) => "redirect",
        (11, 0) => "TTL exceeded in transit",
        (11, _) => "fragment reassembly time exceeded",
        (12, _) => "parameter problem",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use etherparse::PacketBuilder;

    use super::*;

    /// Serialises a finished etherparse builder step (each step type has
    /// its own `write`, hence a macro).
    macro_rules! frame {
        ($builder:expr, $payload:expr $(,)?) => {{
            let mut out = Vec::new();
            $builder.write(&mut out, $payload).unwrap();
            out
        }};
    }

    fn eth() -> etherparse::PacketBuilderStep<etherparse::Ethernet2Header> {
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
    }

    /// A ping too big for the MTU: the first fragment decodes as the echo
    /// it starts, the later ones say which datagram they belong to.
    #[test]
    fn fragments_say_which_datagram_they_belong_to() {
        let whole = frame!(
            eth()
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .icmpv4_echo_request(0x1234, 7),
            &[0; 64],
        );
        let fragment = |flags_offset: u16| {
            let mut f = whole.clone();
            f[18..20].copy_from_slice(&0x4242u16.to_be_bytes());
            f[20..22].copy_from_slice(&flags_offset.to_be_bytes());
            decode_frame(&f)
        };
        let first = fragment(MORE_FRAGMENTS);
        assert_eq!(
            first.to_string(),
            "IP 10.0.0.1 > 10.0.0.2: ICMP echo request, id 4660, seq 7, length 72, \
             fragment id 16962 offset 0+"
        );
        assert!(matches!(first.l4, L4::Icmp { ty: 8, .. }));
        // Offset 185 x 8 = 1480; then the last one.
        assert_eq!(
            fragment(MORE_FRAGMENTS | 185).to_string(),
            "IP 10.0.0.1 > 10.0.0.2: ip-proto-1, fragment id 16962 offset 1480+, length 72"
        );
        let last = fragment(370);
        assert_eq!(last.l4, L4::None);
        assert_eq!(
            last.to_string(),
            "IP 10.0.0.1 > 10.0.0.2: ip-proto-1, fragment id 16962 offset 2960, length 72"
        );
        // A whole datagram is not marked.
        assert!(!decode_frame(&whole).to_string().contains("fragment"));
    }

    /// `length` is tcpdump's, from the headers: a TCP segment's payload
    /// (past its options), a UDP datagram's, even when the capture stops
    /// at the headers.
    #[test]
    fn lengths_are_tcpdumps_from_the_headers() {
        let a = [10, 0, 0, 1];
        let b = [10, 0, 0, 2];
        let tcp = frame!(
            eth()
                .ipv4(a, b, 64)
                .tcp(40000, 8080, 1, 512)
                .ack(7)
                .psh()
                .options(&[etherparse::TcpOptionElement::Timestamp(1, 2)])
                .unwrap(),
            &[9; 100],
        );
        // 14 + 20 + 32 bytes of headers.
        for cut in [tcp.len(), 66] {
            let p = decode_frame(&tcp[..cut]);
            assert_eq!(
                p.to_string(),
                "IP 10.0.0.1.40000 > 10.0.0.2.8080: Flags [P.], seq 1, ack 7, length 100",
                "cut at {cut}"
            );
        }
        let udp = frame!(eth().ipv4(a, b, 64).udp(5353, 53), &[1; 30]);
        for cut in [udp.len(), 42] {
            assert_eq!(
                decode_frame(&udp[..cut]).to_string(),
                "IP 10.0.0.1.5353 > 10.0.0.2.53: UDP, length 30",
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn icmp_echo_with_probe_tag() {
        let mut payload = PROBE_MAGIC.to_vec();
        payload.extend_from_slice(&[0; 24]);
        let f = frame!(
            eth()
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .icmpv4_echo_request(0x1234, 7),
            &payload,
        );
        let p = decode_frame(&f);
        assert!(matches!(p.l3, L3::Ipv4 { proto: 1, .. }));
        assert_eq!(
            p.l4,
            L4::Icmp {
                ty: 8,
                code: 0,
                id: 0x1234,
                seq: 7
            }
        );
        assert!(p.probe);
        assert_eq!(
            p.to_string(),
            "IP 10.0.0.1 > 10.0.0.2: ICMP echo request, id 4660, seq 7, length 40"
        );
    }

    /// An ICMP error about a UDP datagram, as the host that refused it
    /// sent it (`to`: the datagram's source, `sport` its port).
    fn port_unreachable(to: [u8; 4], sport: u16) -> Vec<u8> {
        let quoted = frame!(eth().ipv4(to, [10, 0, 0, 9], 63).udp(sport, 53), &[7; 12],);
        frame!(
            eth().ipv4([10, 0, 0, 9], to, 64).icmpv4(
                etherparse::Icmpv4Type::DestinationUnreachable(
                    etherparse::icmpv4::DestUnreachableHeader::Port
                )
            ),
            &quoted[14..],
        )
    }

    /// An ICMP error says which packet it is about, and reads as one
    /// packet before and after NAT rewrote it and its quote.
    #[test]
    fn icmp_errors_quote_their_packet() {
        let before = port_unreachable([192, 168, 1, 5], 31000);
        let after = port_unreachable([192, 168, 1, 21], 40000);
        let (p, q) = (decode_frame(&before), decode_frame(&after));
        assert_eq!(
            q.l4,
            L4::IcmpError {
                ty: 3,
                code: 3,
                mtu: 0,
                quote: Quote {
                    src: Ipv4Addr::new(192, 168, 1, 21),
                    dst: Ipv4Addr::new(10, 0, 0, 9),
                    proto: 17,
                    sport: 40000,
                    dport: 53,
                    seq: 0,
                }
            }
        );
        assert_eq!(p.payload_hash, q.payload_hash, "NAT leaves the fingerprint");
        assert_eq!(
            q.to_string(),
            "IP 10.0.0.9 > 192.168.1.21: ICMP 10.0.0.9 udp port 53 unreachable, length 48"
        );
        // Both parsers read the quote alike.
        let mut e = decode_frame(&[]);
        etherparse_frame(&after, &mut e);
        assert_eq!((e.l4, e.payload_hash), (q.l4, q.payload_hash));
        // A datagram other than the quoted one fingerprints differently.
        let mut other = after.clone();
        other[14 + 28 + 5] ^= 1; // the quoted IP id
        assert_ne!(decode_frame(&other).payload_hash, q.payload_hash);
        // Cut before the quote's ports, it is a plain ICMP message.
        let cut = decode_frame(&after[..after.len() - 20]);
        assert!(
            matches!(cut.l4, L4::Icmp { ty: 3, code: 3, .. }),
            "{:?}",
            cut.l4
        );
        // The error keeps the packet's size: a packet is copied per event.
        assert!(size_of::<Packet>() <= 112, "{}", size_of::<Packet>());
    }

    #[test]
    fn arp_replies_and_multicast_listener_reports_read_like_tcpdumps() {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 0xab, 0x08, 0x06]);
        // Ethernet/IPv4, 6-byte MACs, 4-byte addresses, reply.
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
        f.extend_from_slice(&[2, 0, 0, 0, 0, 0xab, 10, 0, 0, 2]);
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 10, 0, 0, 1]);
        assert_eq!(
            decode_frame(&f).to_string(),
            "ARP, Reply 10.0.0.2 is-at 02:00:00:00:00:ab"
        );
        f[21] = 1;
        assert_eq!(
            decode_frame(&f).to_string(),
            "ARP, Request who-has 10.0.0.1 tell 10.0.0.2"
        );
        let mld = decode_frame(&frame!(
            eth()
                .ipv6(V6_A, V6_B, 1)
                .icmpv6(etherparse::Icmpv6Type::Unknown {
                    type_u8: 143,
                    code_u8: 0,
                    bytes5to8: [0, 0, 0, 1],
                }),
            &[0; 20],
        ));
        assert_eq!(
            mld.to_string(),
            "IP6 fd00::1 > fd00::2: ICMP6, multicast listener report v2, length 28"
        );
    }

    #[test]
    fn a_capture_shorter_than_the_ethernet_header_says_so() {
        let f = frame!(
            eth()
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .icmpv4_echo_request(1, 1),
            &[0; 56],
        );
        for keep in [0, 1, 13] {
            let mut p = decode_frame(&f[..keep]);
            p.len = 98;
            assert_eq!(p.to_string(), "[|ether], length 98", "{keep} bytes kept");
        }
        // 14 bytes: the EtherType is there, the IPv4 header is not.
        let mut p = decode_frame(&f[..14]);
        p.len = 98;
        assert_eq!(p.to_string(), "ethertype 0x0800, length 98");
    }

    /// fd00::1 and fd00::2 as etherparse's builder takes them.
    const V6_A: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const V6_B: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    #[test]
    fn ipv6_lines_read_like_tcpdumps() {
        let echo = decode_frame(&frame!(
            eth().ipv6(V6_A, V6_B, 64).icmpv6_echo_request(1778, 1),
            &[0; 56],
        ));
        assert_eq!(
            echo.l3,
            L3::Ipv6 {
                src: "fd00::1".parse().unwrap(),
                dst: "fd00::2".parse().unwrap(),
                hop_limit: 64,
                proto: 58,
            }
        );
        assert_eq!(
            echo.to_string(),
            "IP6 fd00::1 > fd00::2: ICMP6, echo request, id 1778, seq 1, length 64"
        );
        let reply = decode_frame(&frame!(
            eth().ipv6(V6_B, V6_A, 64).icmpv6_echo_reply(1778, 1),
            &[0; 56],
        ));
        assert_eq!(
            reply.to_string(),
            "IP6 fd00::2 > fd00::1: ICMP6, echo reply, id 1778, seq 1, length 64"
        );
        let syn = decode_frame(&frame!(
            eth().ipv6(V6_A, V6_B, 64).tcp(40000, 80, 1000, 512).syn(),
            &[],
        ));
        assert_eq!(
            syn.to_string(),
            "IP6 fd00::1.40000 > fd00::2.80: Flags [S], seq 1000, ack 0, length 0"
        );
        let udp = decode_frame(&frame!(eth().ipv6(V6_B, V6_A, 1).udp(53, 5353), b"hello"));
        assert_eq!(
            udp.l4,
            L4::Udp {
                sport: 53,
                dport: 5353,
                ulen: 13,
                room: 13
            }
        );
        assert_eq!(
            udp.to_string(),
            "IP6 fd00::2.53 > fd00::1.5353: UDP, length 5"
        );
        // Cut inside the ICMPv6 header: the addresses, no transport.
        let cut = decode_frame(
            &frame!(
                eth().ipv6(V6_A, V6_B, 64).icmpv6_echo_request(1, 1),
                &[0; 56],
            )[..14 + 40 + 2],
        );
        assert_eq!(cut.l4, L4::None);
        assert_eq!(
            cut.to_string(),
            "IP6 fd00::1 > fd00::2: proto 58, length 64"
        );
    }

    #[test]
    fn truncated_tcp_still_gives_ports() {
        let f = frame!(
            eth()
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .tcp(40000, 80, 1000, 512)
                .syn(),
            &[0xaa; 400],
        );
        let p = decode_frame(&f[..80]);
        match p.l4 {
            L4::Tcp {
                sport: 40000,
                dport: 80,
                seq: 1000,
                flags,
                ..
            } => assert_eq!(flags & 0x02, 2),
            other => panic!("unexpected {other:?}"),
        }
        assert!(!p.probe);
    }

    /// A UDP length field shorter than the header reads as tcpdump's
    /// `truncated-udplength N` (it printed `length 0`), in both parsers.
    #[test]
    fn a_udp_length_below_the_header_reads_like_tcpdumps() {
        for (ulen, want) in [
            (4u16, "truncated-udplength 4"),
            (0, "truncated-udplength 0"),
            (8, "UDP, length 0"),
            (28, "UDP, length 20"),
            (29, "UDP, bad length 21 > 20"),
            (100, "UDP, bad length 92 > 20"),
        ] {
            let mut f = frame!(
                eth().ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64).udp(5000, 6000),
                &[b'x'; 20],
            );
            f[38..40].copy_from_slice(&ulen.to_be_bytes());
            let p = decode_frame(&f);
            assert_eq!(
                p.to_string(),
                format!("IP 10.0.0.1.5000 > 10.0.0.2.6000: {want}")
            );
            let mut e = decode_frame(&[]);
            etherparse_frame(&f, &mut e);
            assert_eq!((e.l4, e.length), (p.l4, p.length), "ulen {ulen}");
        }
    }

    #[test]
    fn udp_and_payload_hash_ignores_headers() {
        let a = decode_frame(&frame!(
            eth().ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64).udp(1, 2),
            b"hello"
        ));
        let b = decode_frame(&frame!(
            eth().ipv4([9, 9, 9, 9], [10, 0, 0, 2], 63).udp(7, 2),
            b"hello"
        ));
        assert_eq!(
            a.l4,
            L4::Udp {
                sport: 1,
                dport: 2,
                ulen: 13,
                room: 13
            }
        );
        assert_eq!(a.payload_hash, b.payload_hash);
    }

    /// The fast path and etherparse agree on every frame the fast path
    /// takes, valid or mangled.
    #[test]
    fn fast_path_matches_etherparse() {
        let mut frames = vec![
            frame!(
                eth()
                    .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                    .tcp(40000, 80, 1000, 512)
                    .syn(),
                &[0xaa; 40],
            ),
            frame!(
                eth().ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64).udp(1, 2),
                b"PODTRACE and some more bytes than thirty-two",
            ),
            frame!(
                eth()
                    .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                    .icmpv4_echo_request(7, 9),
                &[3; 50],
            ),
            port_unreachable([10, 0, 0, 1], 4000),
        ];
        let mut with_opts = frames[1].clone();
        with_opts[14] = 0x46; // 4 bytes of options
        frames.push(with_opts);
        let mut rng = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let (mut fast, mut total) = (0, 0);
        for base in &frames {
            for _ in 0..20_000 {
                let mut f = base.clone();
                for _ in 0..(next() % 4) {
                    let at = 14 + (next() as usize % (f.len() - 14));
                    // Mostly the bytes that steer parsing.
                    let at = match next() % 4 {
                        0 => 14 + [0, 2, 3, 6, 9][next() as usize % 5],
                        1 => 34 + [0, 4, 5, 12][next() as usize % 4],
                        _ => at,
                    };
                    if at < f.len() {
                        f[at] = next() as u8;
                    }
                }
                if next() % 3 == 0 {
                    f[34] = [1u8, 6, 17, 13, 14][next() as usize % 5];
                    f.swap(34, 14 + 9);
                }
                f.truncate(14 + (next() as usize % (f.len() - 13)));
                let want = {
                    let mut p = decode_frame(&[]);
                    p.len = f.len() as u32;
                    p.cap_len = f.len() as u16;
                    etherparse_frame(&f, &mut p);
                    p
                };
                let mut p = want;
                p.l3 = L3::Other(0);
                p.l4 = L4::None;
                total += 1;
                fast += usize::from(fast_ipv4(&f, &mut p));
                assert_eq!(decode_frame(&f), want, "frame {f:02x?}");
            }
        }
        assert!(fast > total / 4, "fast path taken {fast} of {total}");
    }

    /// A UDP frame and the whole record the kernel would write for it.
    fn udp_record() -> (Vec<u8>, PacketEvent) {
        let f = frame!(
            eth().ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64).udp(1, 2),
            b"hello",
        );
        let mut ev = PacketEvent {
            kind: EventKind::Packet as u32,
            reason: 5,
            ts_ns: 77,
            netns_cookie: 9,
            ifindex: 3,
            direction: 1,
            pkt_len: 200,
            cap_len: f.len() as u32,
            mark: 0x42,
            l3_offset: 14,
            ethertype: 0x0800,
            data: [0; MAX_SNAPLEN],
        };
        ev.data[..f.len()].copy_from_slice(&f);
        (f, ev)
    }

    /// A record's bytes, as the ring buffer holds them.
    fn bytes(ev: &PacketEvent) -> Vec<u8> {
        // SAFETY: plain data viewed as its bytes.
        unsafe {
            std::slice::from_raw_parts(
                std::ptr::from_ref(ev).cast::<u8>(),
                size_of::<PacketEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn record_in_place_equals_copy_then_decode() {
        let (f, mut ev) = udp_record();
        let b = bytes(&ev);
        let (p, data) = decode_record(&b).unwrap();
        assert_eq!(p, decode(&raw_event(&b).unwrap()).unwrap());
        assert_eq!(data, &f[..]);
        ev.direction = 7;
        assert_eq!(
            decode_record(&bytes(&ev)).unwrap_err(),
            DecodeError::Corrupt
        );
        ev.direction = 0;
        ev.cap_len = MAX_SNAPLEN as u32 + 1;
        assert_eq!(
            decode_record(&bytes(&ev)).unwrap_err(),
            DecodeError::Corrupt
        );
        ev.kind = 0;
        assert_eq!(
            decode_record(&bytes(&ev)).unwrap_err(),
            DecodeError::UnknownKind(0)
        );
        assert_eq!(decode_record(&[0; 10]).unwrap_err(), DecodeError::Short(10));
    }

    /// A BIG TCP send (IPv4 over 64 KiB) has total length 0 in its header:
    /// its length comes from the packet's, as tcpdump's does; any other
    /// packet's from its headers.
    #[test]
    fn a_big_tcp_segment_takes_its_length_from_the_wire() {
        let mut f = frame!(
            eth()
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .tcp(40000, 8080, 1, 65535)
                .ack(7),
            &[0x55; 100],
        );
        let (_, mut ev) = udp_record();
        ev.data = [0; MAX_SNAPLEN];
        ev.data[..f.len()].copy_from_slice(&f);
        ev.cap_len = f.len() as u32;
        ev.pkt_len = f.len() as u32;
        let (p, _) = decode_record(&bytes(&ev)).unwrap();
        assert_eq!(p.length, 100, "from the headers");
        // 14 + 20 + 20 bytes of headers and 150000 of payload.
        f[16..18].copy_from_slice(&[0, 0]);
        ev.data[..f.len()].copy_from_slice(&f);
        ev.pkt_len = 54 + 150_000;
        let (p, _) = decode_record(&bytes(&ev)).unwrap();
        assert_eq!(p.length, 150_000);
        assert!(p.to_string().ends_with("length 150000"), "{p}");
        assert_eq!(p, decode(&ev).unwrap(), "both decoders agree");
        // A record read without its frame has no length to give.
        let (q, _) = decode_record_as(&bytes(&ev), false).unwrap();
        assert_eq!(q.length, 0);
    }

    #[test]
    fn records_cut_short_after_their_bytes_decode_the_same() {
        let (f, ev) = udp_record();
        let full = &bytes(&ev)[..];
        // The kernel's 64-byte class: the header and 64 data bytes.
        let short = &full[..PacketEvent::HEADER_LEN + 64];
        let (p, data) = decode_record(short).unwrap();
        assert_eq!(data, &f[..]);
        assert_eq!(p, decode_record(full).unwrap().0);
        assert_eq!(p, decode(&raw_event(short).unwrap()).unwrap());
        // A record too short for its cap_len is corrupt, in both decoders.
        let cut = &full[..PacketEvent::HEADER_LEN + f.len() - 1];
        assert_eq!(decode_record(cut).unwrap_err(), DecodeError::Corrupt);
        assert_eq!(raw_event(cut).unwrap_err(), DecodeError::Corrupt);
    }

    #[test]
    fn a_record_without_its_frame_keeps_its_header_fields() {
        let (f, ev) = udp_record();
        let b = bytes(&ev);
        let (whole, _) = decode_record(&b).unwrap();
        let (p, data) = decode_record_as(&b, false).unwrap();
        assert_eq!(data, &f[..], "the bytes are there to write out");
        assert_eq!(
            (p.ts_ns, p.hook, p.reason, p.len, p.cap_len, p.mark),
            (
                whole.ts_ns,
                whole.hook,
                whole.reason,
                whole.len,
                whole.cap_len,
                whole.mark
            )
        );
        assert_eq!((p.l3, p.l4), (decode_frame(&[]).l3, decode_frame(&[]).l4));
        assert_ne!(p.l3, whole.l3, "the frame was not parsed");
    }

    #[test]
    fn payload_hash_sees_32_bytes_and_length() {
        let a = [7u8; 40];
        let mut b = a;
        b[35] = 0;
        assert_eq!(payload_hash(&a), payload_hash(&b), "only 32 bytes count");
        b[31] = 0;
        assert_ne!(payload_hash(&a), payload_hash(&b));
        assert_ne!(
            payload_hash(&[0; 3]),
            payload_hash(&[0; 4]),
            "length counts"
        );
        assert_ne!(payload_hash(&[]), payload_hash(&[0]));
    }

    #[test]
    fn raw_event_rejects_short_and_unknown() {
        assert_eq!(raw_event(&[0; 10]).unwrap_err(), DecodeError::Short(10));
        let bytes = vec![0u8; size_of::<PacketEvent>()];
        assert_eq!(raw_event(&bytes).unwrap_err(), DecodeError::UnknownKind(0));
    }
}
