//! The foundation test: real programs, real netns, real ICMP echo.

use std::{net::Ipv4Addr, sync::Arc, time::Duration};

use podtrace_tests::VethPair;
use tracer::{
    decode::{L3, L4, Packet},
    events::EventReader,
    kernel::{Kernel, LoadOptions, podtrace_links},
    netns::Netns,
};
use tracer_common::Direction;

#[tokio::test]
async fn icmp_echo_reports_both_directions_with_addresses() {
    let pair = VethPair::new("at");
    let ns_a = Arc::new(Netns::open(&pair.a).unwrap());
    let mut kernel = Kernel::load(&LoadOptions::default()).expect("load programs");
    let ifindex = kernel.attach(&ns_a, "va").expect("attach va").ifindex;
    let mut reader = EventReader::new();
    for ring in kernel.take_new_rings() {
        reader.add(ring).unwrap();
    }

    VethPair::exec(
        &pair.a,
        &["ping", "-c", "3", "-i", "0.2", "-W", "1", VethPair::IP_B],
    );

    let mut seen: Vec<Packet> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        reader
            .next_batch(&kernel, |r| seen.push(r.expect("decodes").0))
            .await
            .unwrap();
        let done = |dir, ty| {
            seen.iter()
                .filter(|p| p.hook.dir == dir && matches!(p.l4, L4::Icmp { ty: t, .. } if t == ty))
                .count()
                >= 3
        };
        if done(Direction::Egress, 8) && done(Direction::Ingress, 0) {
            break;
        }
    }
    let a: Ipv4Addr = VethPair::IP_A.parse().unwrap();
    let b: Ipv4Addr = VethPair::IP_B.parse().unwrap();
    let requests: Vec<_> = seen
        .iter()
        .filter(|p| matches!(p.l4, L4::Icmp { ty: 8, .. }))
        .collect();
    let replies: Vec<_> = seen
        .iter()
        .filter(|p| matches!(p.l4, L4::Icmp { ty: 0, .. }))
        .collect();
    assert_eq!(requests.len(), 3, "echo requests seen: {seen:#?}");
    assert_eq!(replies.len(), 3, "echo replies seen: {seen:#?}");
    for p in &requests {
        assert_eq!(p.hook.dir, Direction::Egress, "a request leaves va");
        assert_eq!(p.hook.ifindex, ifindex);
        assert_eq!(p.hook.netns_cookie, ns_a.cookie);
        assert!(matches!(p.l3, L3::Ipv4 { src, dst, .. } if src == a && dst == b));
    }
    for p in &replies {
        assert_eq!(p.hook.dir, Direction::Ingress, "a reply arrives on va");
        assert!(matches!(p.l3, L3::Ipv4 { src, dst, .. } if src == b && dst == a));
    }
    let stats = kernel.hook_stats().unwrap();
    let egress = stats
        .iter()
        .find(|(k, _)| k.netns_cookie == ns_a.cookie && k.direction == Direction::Egress as u32)
        .map(|(_, s)| *s)
        .expect("egress hook counted");
    assert!(egress.seen >= 3 && egress.lost == 0, "{egress:?}");

    assert!(!podtrace_links().is_empty(), "links visible while attached");
    drop(reader);
    drop(kernel);
    assert!(
        podtrace_links().is_empty(),
        "nothing left attached: {:?}",
        podtrace_links()
    );
}
