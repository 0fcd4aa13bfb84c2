//! Reading a namespace's conntrack table through netlink (ctnetlink), so a
//! flow that was NATed can show the kernel's own original and reply tuples.
//! The dump is the edge; [`parse_entry`] and [`find`] are pure.

use std::{io, net::Ipv4Addr};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla as _,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
    conntrack::{
        ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Tuple as NlTuple,
    },
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use crate::{
    correlate::{ConntrackInfo, Tuple},
    netns::Netns,
};

/// `CTA_PROTO_ICMP_ID`: ctnetlink's attribute for the ICMP echo id, which
/// the packet crate leaves as a raw attribute.
const CTA_PROTO_ICMP_ID: u16 = 4;

/// Dumps the IPv4 conntrack table of `ns`.
pub fn dump(ns: &Netns) -> io::Result<Vec<ConntrackInfo>> {
    // The socket belongs to the namespace the thread is in when it is made.
    let mut socket = ns
        .run(|| Socket::new(NETLINK_NETFILTER))
        .map_err(|e| io::Error::other(e.to_string()))??;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut msg = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::IPv4, libc::NFNETLINK_V0 as u8, 0),
            ConntrackMessage::Get(vec![]),
        )),
    );
    msg.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let mut entries = Vec::new();
    let mut rx = vec![0u8; 1 << 16];
    loop {
        let n = socket.recv(&mut &mut rx[..], 0)?;
        let mut off = 0;
        while off < n {
            let reply = NetlinkMessage::<NetfilterMessage>::deserialize(&rx[off..n])
                .map_err(|e| io::Error::other(format!("ctnetlink: {e}")))?;
            let len = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::Done(_) => return Ok(entries),
                NetlinkPayload::Error(e) => {
                    return Err(e.code.map_or_else(
                        || io::Error::other("ctnetlink error"),
                        |c| io::Error::from_raw_os_error(-c.get()),
                    ));
                }
                NetlinkPayload::InnerMessage(NetfilterMessage {
                    inner:
                        NetfilterMessageInner::Conntrack(
                            ConntrackMessage::New(attrs) | ConntrackMessage::Get(attrs),
                        ),
                    ..
                }) => entries.extend(parse_entry(&attrs)),
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += len.next_multiple_of(4);
        }
    }
}

/// One entry's tuples and mark, if it is IPv4.
pub fn parse_entry(attrs: &[ConntrackAttribute]) -> Option<ConntrackInfo> {
    let mut original = None;
    let mut reply = None;
    let mut mark = 0;
    for a in attrs {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => original = tuple(t),
            ConntrackAttribute::CtaTupleReply(t) => reply = tuple(t),
            ConntrackAttribute::CtaMark(m) => mark = *m,
            _ => {}
        }
    }
    Some(ConntrackInfo {
        id: None,
        original: original?,
        reply: reply?,
        mark,
    })
}

fn tuple(parts: &[NlTuple]) -> Option<Tuple> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, 0u8, 0u16, 0u16);
    for p in parts {
        match p {
            NlTuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(std::net::IpAddr::V4(a)) => src = Some(*a),
                        IPTuple::DestinationAddress(std::net::IpAddr::V4(a)) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            NlTuple::Proto(ps) => {
                for p in ps {
                    match p {
                        ProtoTuple::Protocol(pr) => proto = proto_number(pr),
                        ProtoTuple::SourcePort(s) => sport = *s,
                        ProtoTuple::DestinationPort(d) => dport = *d,
                        ProtoTuple::Other(nla) if nla.kind() == CTA_PROTO_ICMP_ID => {
                            let mut v = vec![0; nla.value_len()];
                            nla.emit_value(&mut v);
                            if v.len() >= 2 {
                                sport = u16::from_be_bytes([v[0], v[1]]);
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Tuple {
        proto,
        src: src?,
        sport,
        dst: dst?,
        dport,
    })
}

fn proto_number(p: &Protocol) -> u8 {
    match p {
        Protocol::Icmp => 1,
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Other(n) => *n,
        _ => 0,
    }
}

/// The entry whose original tuple is `t` (as seen before any NAT: the
/// client's side), matching ports for TCP and UDP, and for ICMP the echo
/// id when `t` has one (in `sport`, as conntrack's original tuple has it):
/// every ping between two addresses has an entry of its own, and only
/// the id tells them apart.
pub fn find<'a>(entries: &'a [ConntrackInfo], t: &Tuple) -> Option<&'a ConntrackInfo> {
    let ports = matches!(t.proto, 6 | 17);
    let icmp_id = t.proto == 1 && t.sport != 0;
    entries.iter().find(|e| {
        let o = &e.original;
        o.proto == t.proto
            && o.src == t.src
            && o.dst == t.dst
            && (!ports || (o.sport == t.sport && o.dport == t.dport))
            && (!icmp_id || o.sport == t.sport)
    })
}

/// Where the reply of `e` is addressed: the source after SNAT.
pub fn snat_to(e: &ConntrackInfo) -> Option<Ipv4Addr> {
    (e.reply.dst != e.original.src).then_some(e.reply.dst)
}

/// The backend a DNAT chose: the reply's source.
pub fn dnat_to(e: &ConntrackInfo) -> Option<Ipv4Addr> {
    (e.reply.src != e.original.dst).then_some(e.reply.src)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(proto: u8, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Tuple {
        Tuple {
            proto,
            src: src.into(),
            sport,
            dst: dst.into(),
            dport,
        }
    }

    #[test]
    fn snat_and_dnat_read_from_the_reply_tuple() {
        let snat = ConntrackInfo {
            id: None,
            original: t(1, [192, 168, 1, 11], 4711, [203, 0, 113, 10], 0),
            reply: t(1, [203, 0, 113, 10], 20946, [192, 168, 1, 10], 0),
            mark: 0,
        };
        assert_eq!(snat_to(&snat), Some([192, 168, 1, 10].into()));
        assert_eq!(dnat_to(&snat), None);
        let dnat = ConntrackInfo {
            id: None,
            original: t(6, [192, 168, 1, 11], 40000, [10, 100, 0, 10], 80),
            reply: t(6, [192, 168, 2, 11], 8080, [192, 168, 1, 11], 40000),
            mark: 0,
        };
        assert_eq!(dnat_to(&dnat), Some([192, 168, 2, 11].into()));
        let entries = [snat, dnat];
        assert!(
            find(
                &entries,
                &t(6, [192, 168, 1, 11], 40000, [10, 100, 0, 10], 80)
            )
            .is_some()
        );
        assert!(
            find(
                &entries,
                &t(6, [192, 168, 1, 11], 40001, [10, 100, 0, 10], 80)
            )
            .is_none()
        );
        assert!(
            find(&entries, &t(1, [192, 168, 1, 11], 0, [203, 0, 113, 10], 0)).is_some(),
            "no id known: match on addresses"
        );
        // Two pings between the same addresses: the id picks the entry.
        let older = ConntrackInfo {
            id: None,
            original: t(1, [192, 168, 1, 11], 4700, [203, 0, 113, 10], 0),
            reply: t(1, [203, 0, 113, 10], 31000, [192, 168, 1, 10], 0),
            mark: 0,
        };
        let entries = [older, entries[0].clone()];
        let found = find(
            &entries,
            &t(1, [192, 168, 1, 11], 4711, [203, 0, 113, 10], 0),
        );
        assert_eq!(found.map(|e| e.reply.sport), Some(20946));
        assert!(
            find(
                &entries,
                &t(1, [192, 168, 1, 11], 4712, [203, 0, 113, 10], 0)
            )
            .is_none()
        );
    }
}
