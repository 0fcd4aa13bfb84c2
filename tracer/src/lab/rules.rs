//! The lab's iptables rules as `iptables-restore --noflush` input: pure
//! text, built from the plan. Node rules are the VPC CNI's (SNAT and
//! connmark, as `iptables-save` shows them on a worker node) plus
//! kube-proxy's for the one ClusterIP service; the VPC router's rules play
//! the internet gateway.

use std::fmt::Write as _;

use sha1::{Digest as _, Sha1};

use super::plan::{NodePlan, PRIMARY_ENI_MARK, Plan};

/// kube-proxy's masquerade mark.
const KUBE_MASQ_MARK: u32 = 0x4000;

/// A kube-proxy style chain name: `KUBE-SVC-` or `KUBE-SEP-` and 16 base32
/// characters of a hash of what it stands for (kube-proxy hashes with
/// sha256; any stable hash gives the same shape).
pub fn kube_chain(prefix: &str, seed: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha1::digest(seed);
    let mut bits = u128::from_be_bytes(digest[..16].try_into().expect("sha1 has 20 bytes"));
    let mut name = format!("{prefix}-");
    for _ in 0..16 {
        name.push(char::from(ALPHABET[(bits >> 123) as usize]));
        bits <<= 5;
    }
    name
}

/// The node's nat and mangle rules: AWS-SNAT-CHAIN-0 and the connmark rules
/// of the CNI, kube-proxy's DNAT for the service.
pub fn node_rules(plan: &Plan, node: &NodePlan) -> String {
    let vpc = plan.vpc_cidr;
    let primary = &node.enis[0];
    let mark = format!("{PRIMARY_ENI_MARK:#x}/{PRIMARY_ENI_MARK:#x}");
    let masq = format!("{KUBE_MASQ_MARK:#x}/{KUBE_MASQ_MARK:#x}");
    let mut r = String::new();
    let mut line = |s: String| {
        r.push_str(&s);
        r.push('\n');
    };

    line("*mangle".into());
    line(format!(
        "-A PREROUTING -i {} -m comment --comment \"AWS, primary ENI\" -m addrtype --dst-type LOCAL \
         --limit-iface-in -j CONNMARK --set-xmark {mark}",
        primary.name
    ));
    line(format!(
        "-A PREROUTING -i eni+ -m comment --comment \"AWS, primary ENI\" -j CONNMARK --restore-mark \
         --nfmask {PRIMARY_ENI_MARK:#x} --ctmask {PRIMARY_ENI_MARK:#x}"
    ));
    line("COMMIT".into());

    let svc = &plan.service;
    let svc_name = format!("{}/{}", svc.namespace, svc.name);
    let svc_chain = kube_chain("KUBE-SVC", &format!("{svc_name}:tcp"));
    let backends = plan.backends();
    let sep_chains: Vec<String> = backends
        .iter()
        .map(|b| {
            kube_chain(
                "KUBE-SEP",
                &format!("{svc_name}:tcp:{}:{}", b.ip, svc.target_port),
            )
        })
        .collect();

    line("*nat".into());
    let chains = [
        "KUBE-SERVICES",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
        "AWS-SNAT-CHAIN-0",
        "AWS-CONNMARK-CHAIN-0",
        &svc_chain,
    ];
    for chain in chains
        .into_iter()
        .chain(sep_chains.iter().map(String::as_str))
    {
        line(format!(":{chain} - [0:0]"));
    }
    line(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".into(),
    );
    line(
        "-A PREROUTING -i eni+ -m comment --comment \"AWS, outbound connections\" -j AWS-CONNMARK-CHAIN-0"
            .into(),
    );
    line(format!(
        "-A PREROUTING -m comment --comment \"AWS, CONNMARK\" -j CONNMARK --restore-mark \
         --nfmask {PRIMARY_ENI_MARK:#x} --ctmask {PRIMARY_ENI_MARK:#x}"
    ));
    line("-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".into());
    line(
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING"
            .into(),
    );
    line("-A POSTROUTING -m comment --comment \"AWS SNAT CHAIN\" -j AWS-SNAT-CHAIN-0".into());
    line(format!(
        "-A AWS-CONNMARK-CHAIN-0 -d {vpc} -m comment --comment \"AWS CONNMARK CHAIN, VPC CIDR\" -j RETURN"
    ));
    line(format!(
        "-A AWS-CONNMARK-CHAIN-0 -m comment --comment \"AWS, CONNMARK\" -j CONNMARK --set-xmark {mark}"
    ));
    line(format!(
        "-A AWS-SNAT-CHAIN-0 -d {vpc} -m comment --comment \"AWS SNAT CHAIN\" -j RETURN"
    ));
    line(format!(
        "-A AWS-SNAT-CHAIN-0 ! -o vlan+ -m comment --comment \"AWS, SNAT\" -m addrtype ! --dst-type LOCAL \
         -j SNAT --to-source {} --random-fully",
        primary.primary_ip
    ));
    line(format!("-A KUBE-MARK-MASQ -j MARK --set-xmark {masq}"));
    line(format!(
        "-A KUBE-POSTROUTING -m mark ! --mark {masq} -j RETURN"
    ));
    line(format!(
        "-A KUBE-POSTROUTING -j MARK --set-xmark {KUBE_MASQ_MARK:#x}/0x0"
    ));
    line(
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE \
         --random-fully"
            .into(),
    );
    line(format!(
        "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"{svc_name} cluster IP\" -m tcp --dport {} -j {svc_chain}",
        svc.ip, svc.port
    ));
    for (i, (backend, sep)) in backends.iter().zip(&sep_chains).enumerate() {
        let target = format!("{}:{}", backend.ip, svc.target_port);
        let left = backends.len() - i;
        let pick = if left > 1 {
            // kube-proxy: the i-th of n endpoints with probability 1/(n-i).
            format!(
                " -m statistic --mode random --probability {:.11}",
                1.0 / left as f64
            )
        } else {
            String::new()
        };
        line(format!(
            "-A {svc_chain} -m comment --comment \"{svc_name} -> {target}\"{pick} -j {sep}"
        ));
        line(format!(
            "-A {sep} -s {}/32 -m comment --comment \"{svc_name}\" -j KUBE-MARK-MASQ",
            backend.ip
        ));
        line(format!(
            "-A {sep} -p tcp -m comment --comment \"{svc_name}\" -m tcp -j DNAT --to-destination {target}"
        ));
    }
    line("COMMIT".into());
    r
}

/// The VPC router's filter rules: the internet gateway forwards only for
/// addresses that have a public IP mapping (the nodes' primary IPs), so a
/// pod's packet reaches the internet only after the node's SNAT, as on AWS.
pub fn vpc_rules(plan: &Plan) -> String {
    let igw = &plan.internet.fabric_port;
    let mut r = String::from("*filter\n");
    for node in &plan.nodes {
        let ip = node.enis[0].primary_ip;
        let _ = writeln!(
            r,
            "-A FORWARD -o {igw} -s {ip}/32 -m comment --comment \"IGW: {} has a public IP\" -j ACCEPT",
            node.name
        );
        let _ = writeln!(
            r,
            "-A FORWARD -i {igw} -d {ip}/32 -m comment --comment \"IGW: {} has a public IP\" -j ACCEPT",
            node.name
        );
    }
    let _ = writeln!(
        r,
        "-A FORWARD -o {igw} -m comment --comment \"IGW: no public IP for this source\" -j DROP"
    );
    let _ = writeln!(
        r,
        "-A FORWARD -i {igw} -m comment --comment \"IGW: no public IP for this destination\" -j DROP"
    );
    r.push_str("COMMIT\n");
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_a_has_the_cnis_snat_and_connmark_rules() {
        let plan = Plan::default();
        let rules = node_rules(&plan, &plan.nodes[0]);
        for want in [
            "-A POSTROUTING -m comment --comment \"AWS SNAT CHAIN\" -j AWS-SNAT-CHAIN-0",
            "-A AWS-SNAT-CHAIN-0 -d 192.168.0.0/16 -m comment --comment \"AWS SNAT CHAIN\" -j RETURN",
            "-A AWS-SNAT-CHAIN-0 ! -o vlan+ -m comment --comment \"AWS, SNAT\" -m addrtype ! --dst-type LOCAL \
             -j SNAT --to-source 192.168.1.10 --random-fully",
            "-A PREROUTING -i ens5 -m comment --comment \"AWS, primary ENI\" -m addrtype --dst-type LOCAL \
             --limit-iface-in -j CONNMARK --set-xmark 0x80/0x80",
            "-A PREROUTING -i eni+ -m comment --comment \"AWS, primary ENI\" -j CONNMARK --restore-mark \
             --nfmask 0x80 --ctmask 0x80",
        ] {
            assert!(
                rules.lines().any(|l| l == want),
                "missing {want}\nin\n{rules}"
            );
        }
        let node_b = node_rules(&plan, &plan.nodes[1]);
        assert!(node_b.contains("--to-source 192.168.2.10 --random-fully"));
        assert_eq!(rules.matches("COMMIT").count(), 2);
    }

    #[test]
    fn service_dnat_picks_each_backend_like_kube_proxy() {
        let plan = Plan::default();
        let rules = node_rules(&plan, &plan.nodes[0]);
        let dnat: Vec<&str> = rules.lines().filter(|l| l.contains("-j DNAT")).collect();
        assert_eq!(dnat.len(), 2);
        assert!(
            dnat[0].ends_with("--to-destination 192.168.1.21:8080"),
            "{}",
            dnat[0]
        );
        assert!(
            dnat[1].ends_with("--to-destination 192.168.2.11:8080"),
            "{}",
            dnat[1]
        );
        assert!(
            rules.contains("-m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-")
        );
        assert!(rules.contains("-A KUBE-SERVICES -d 10.100.0.10/32 -p tcp"));
        // Every chain used is declared.
        for chain in rules.split_whitespace().filter(|w| w.starts_with("KUBE-S")) {
            assert!(
                rules.contains(&format!(":{chain} - [0:0]")),
                "{chain} undeclared"
            );
        }
    }

    #[test]
    fn kube_chain_names_have_kube_proxys_shape() {
        let a = kube_chain("KUBE-SVC", "default/web:tcp");
        assert_eq!(a.len(), "KUBE-SVC-".len() + 16);
        assert!(
            a["KUBE-SVC-".len()..]
                .bytes()
                .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
        );
        assert_eq!(a, kube_chain("KUBE-SVC", "default/web:tcp"));
        assert_ne!(a, kube_chain("KUBE-SVC", "default/other:tcp"));
    }

    #[test]
    fn igw_passes_only_node_primary_ips() {
        let rules = vpc_rules(&Plan::default());
        assert!(rules.contains("-A FORWARD -o igw -s 192.168.1.10/32"));
        assert!(rules.contains("-A FORWARD -i igw -d 192.168.2.10/32"));
        assert!(rules.lines().rev().nth(1).unwrap().ends_with("-j DROP"));
    }
}
