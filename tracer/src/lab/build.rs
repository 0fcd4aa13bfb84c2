//! Builds the plan: namespaces, then links, addresses, routes, rules and
//! neighbours over netlink (each connection opened inside its namespace),
//! sysctls through /proc/sys (per-thread netns), iptables through
//! `iptables-restore` spawned inside the node's namespace, and the whoami
//! service. Nothing is ever touched in the namespace podtrace runs in: every
//! netlink socket, sysctl write and command is made inside a lab netns.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::Write as _,
    net::{Ipv4Addr, SocketAddrV4, TcpListener},
    path::Path,
    process::{Command, Stdio},
};

use super::{
    LabError, WHOAMI_PIDFILE,
    addr::Cidr,
    netlink::{MAIN_TABLE, Nl, Route, Rule},
    plan::{HostPlan, NodePlan, POD_GATEWAY, PRIMARY_ENI_MARK, Plan, PodPlan},
    rules, whoami,
};
use crate::netns::{NETNS_RUN_DIR, Netns};

/// An open lab namespace: for entering it, and as an fd for netlink to
/// create a veth's peer in it.
struct Space {
    ns: Netns,
    file: File,
}

/// All lab namespaces by name.
struct Spaces(BTreeMap<String, Space>);

impl Spaces {
    fn get(&self, name: &str) -> &Space {
        &self.0[name]
    }
}

/// Builds everything in `plan`. On error the caller tears down.
pub async fn build(plan: &Plan) -> Result<(), LabError> {
    let names = plan.netns_names();
    let mut spaces = BTreeMap::new();
    for name in names.iter().rev() {
        // The namespace file itself is the only thing made outside the lab.
        run(None, &["ip", "netns", "add", name], None)?;
        // Recorded at once, so that `down` removes it and nothing else.
        super::teardown::mark_owned(name)?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        let file = File::open(&path).map_err(|source| LabError::Io {
            what: "opening netns",
            path,
            source,
        })?;
        let ns = Netns::open(name)?;
        // IPv4 only, as in an IPv4 EKS cluster; this also keeps DAD and
        // router solicitations out of every trace. Set before any link
        // exists, so that every link inherits it.
        for key in [
            "ipv6/conf/all/disable_ipv6",
            "ipv6/conf/default/disable_ipv6",
        ] {
            sysctl(&ns, key, "1")?;
        }
        spaces.insert((*name).to_owned(), Space { ns, file });
    }
    let spaces = Spaces(spaces);

    let vpc = spaces.get(&plan.vpc_netns);
    sysctl(&vpc.ns, "ipv4/ip_forward", "1")?;
    let nl_vpc = Nl::open(&vpc.ns)?;
    nl_vpc.up("lo").await?;
    for node in &plan.nodes {
        nl_vpc.add_bridge(&node.bridge, node.bridge_mac).await?;
        nl_vpc
            .add_addr(&node.bridge, node.gateway, node.subnet.prefix, true)
            .await?;
    }
    for host in [&plan.internet, &plan.nlb] {
        build_host(&nl_vpc, spaces.get(&host.netns), host).await?;
    }
    for node in &plan.nodes {
        build_node(plan, &nl_vpc, &vpc.file, &spaces, node).await?;
    }
    // What the VPC knows: which ENI owns each secondary IP. The router
    // forwards to that ENI's MAC (found by ARP on its primary IP, which
    // only that ENI answers thanks to arp_ignore=1 on the node).
    for node in &plan.nodes {
        for eni in &node.enis {
            for ip in &eni.secondary_ips {
                nl_vpc
                    .add_route(Route {
                        dst: Cidr::host(*ip),
                        via: Some(eni.primary_ip),
                        dev: &node.bridge,
                        table: MAIN_TABLE,
                        link_scope: false,
                    })
                    .await?;
            }
        }
    }
    iptables_restore(&vpc.ns, &rules::vpc_rules(plan))?;
    for node in &plan.nodes {
        iptables_restore(&spaces.get(&node.netns).ns, &rules::node_rules(plan, node))?;
    }
    start_whoami(plan, &spaces)
}

/// The internet host or the NLB: one veth to the VPC router.
async fn build_host(nl_vpc: &Nl, space: &Space, host: &HostPlan) -> Result<(), LabError> {
    nl_vpc
        .add_veth(
            (&host.fabric_port, host.fabric_mac),
            ("eth0", host.mac),
            &space.file,
        )
        .await?;
    nl_vpc
        .add_addr(&host.fabric_port, host.gateway, host.prefix, true)
        .await?;
    nl_vpc.up(&host.fabric_port).await?;
    let nl = Nl::open(&space.ns)?;
    nl.up("lo").await?;
    nl.add_addr("eth0", host.ip, host.prefix, true).await?;
    nl.up("eth0").await?;
    nl.add_route(default_via(host.gateway, "eth0", MAIN_TABLE))
        .await
}

/// A worker node: ENIs on the subnet bridge, the CNI's node-wide routes,
/// rules and sysctls, then its pods.
async fn build_node(
    plan: &Plan,
    nl_vpc: &Nl,
    vpc_file: &File,
    spaces: &Spaces,
    node: &NodePlan,
) -> Result<(), LabError> {
    let space = spaces.get(&node.netns);
    let ns = &space.ns;
    sysctl(ns, "ipv4/ip_forward", "1")?;
    for conf in ["all", "default"] {
        // Loose reverse-path filtering, as the CNI sets it: a reply may
        // leave by ens5 for a packet that came in by ens6.
        sysctl(ns, &format!("ipv4/conf/{conf}/rp_filter"), "2")?;
        // Two ENIs on one L2 segment: each answers ARP only for its own
        // addresses and announces only its own, or the router would reach
        // ens6's IPs through ens5.
        sysctl(ns, &format!("ipv4/conf/{conf}/arp_ignore"), "1")?;
        sysctl(ns, &format!("ipv4/conf/{conf}/arp_announce"), "2")?;
    }
    let nl = Nl::open(ns)?;
    nl.up("lo").await?;
    for eni in &node.enis {
        nl.add_veth(
            (&eni.name, eni.mac),
            (&eni.fabric_port, eni.fabric_mac),
            vpc_file,
        )
        .await?;
        nl_vpc.set_master(&eni.fabric_port, &node.bridge).await?;
        nl_vpc.up(&eni.fabric_port).await?;
        // The CNI keeps a secondary ENI's subnet route out of the main
        // table: only its pods reach the subnet through it (table N).
        nl.add_addr(
            &eni.name,
            eni.primary_ip,
            node.subnet.prefix,
            eni.index == 0,
        )
        .await?;
        sysctl(ns, &format!("ipv4/conf/{}/rp_filter", eni.name), "2")?;
        nl.up(&eni.name).await?;
        if let Some(table) = eni.route_table() {
            nl.add_route(Route {
                dst: Cidr::host(node.gateway),
                via: None,
                dev: &eni.name,
                table,
                link_scope: true,
            })
            .await?;
            nl.add_route(default_via(node.gateway, &eni.name, table))
                .await?;
        }
    }
    nl.add_route(default_via(node.gateway, &node.enis[0].name, MAIN_TABLE))
        .await?;
    nl.add_rule(Rule {
        priority: 1024,
        from: None,
        to: None,
        fwmark: Some((PRIMARY_ENI_MARK, PRIMARY_ENI_MARK)),
        table: MAIN_TABLE,
    })
    .await?;
    for pod in plan.pods.iter().filter(|p| p.node == node.name) {
        build_pod(plan, &nl, spaces.get(&pod.netns), pod).await?;
    }
    Ok(())
}

/// A pod, wired as the CNI's `SetupPodNetwork` wires it.
async fn build_pod(
    plan: &Plan,
    nl_node: &Nl,
    space: &Space,
    pod: &PodPlan,
) -> Result<(), LabError> {
    nl_node
        .add_veth(
            (&pod.host_veth, pod.host_veth_mac),
            ("eth0", pod.eth0_mac),
            &space.file,
        )
        .await?;
    nl_node.up(&pod.host_veth).await?;

    let nl = Nl::open(&space.ns)?;
    nl.up("lo").await?;
    nl.add_addr("eth0", pod.ip, 32, true).await?;
    nl.up("eth0").await?;
    nl.add_route(Route {
        dst: Cidr::host(POD_GATEWAY),
        via: None,
        dev: "eth0",
        table: MAIN_TABLE,
        link_scope: true,
    })
    .await?;
    nl.add_route(default_via(POD_GATEWAY, "eth0", MAIN_TABLE))
        .await?;
    nl.add_permanent_neighbour("eth0", POD_GATEWAY, pod.host_veth_mac)
        .await?;

    nl_node
        .add_route(Route {
            dst: Cidr::host(pod.ip),
            via: None,
            dev: &pod.host_veth,
            table: MAIN_TABLE,
            link_scope: true,
        })
        .await?;
    nl_node
        .add_rule(Rule {
            priority: 512,
            from: None,
            to: Some(Cidr::host(pod.ip)),
            fwmark: None,
            table: MAIN_TABLE,
        })
        .await?;
    if pod.eni_index > 0 {
        nl_node
            .add_rule(Rule {
                priority: 1536,
                from: Some(Cidr::host(pod.ip)),
                to: Some(plan.vpc_cidr),
                fwmark: None,
                table: pod.eni_index + 1,
            })
            .await?;
    }
    Ok(())
}

fn default_via(gateway: Ipv4Addr, dev: &str, table: u32) -> Route<'_> {
    Route {
        dst: Cidr::new(Ipv4Addr::UNSPECIFIED, 0),
        via: Some(gateway),
        dev,
        table,
        link_scope: false,
    }
}

/// Opens the whoami listeners, each in its namespace, and forks the
/// daemon that serves them all.
fn start_whoami(plan: &Plan, spaces: &Spaces) -> Result<(), LabError> {
    let mut endpoints = Vec::new();
    let mut listen = |space: &Space, who: String, addr: SocketAddrV4| -> Result<(), LabError> {
        let listener = space
            .ns
            .run(|| TcpListener::bind(addr))?
            .map_err(|source| LabError::Io {
                what: "listening for the whoami service in netns",
                path: space.ns.path.clone(),
                source,
            })?;
        endpoints.push(whoami::Endpoint { who, listener });
        Ok(())
    };
    let internet = &plan.internet;
    if let Some(port) = internet.port {
        listen(
            spaces.get(&internet.netns),
            "internet".to_owned(),
            SocketAddrV4::new(internet.ip, port),
        )?;
    }
    for pod in &plan.pods {
        listen(
            spaces.get(&pod.netns),
            pod.full_name(),
            SocketAddrV4::new(pod.ip, pod.port),
        )?;
    }
    let home = spaces.get(&internet.netns);
    let io = |what, path: &str| {
        let path = path.into();
        move |source| LabError::Io { what, path, source }
    };
    if let Some(dir) = Path::new(WHOAMI_PIDFILE).parent() {
        fs::create_dir_all(dir).map_err(io("creating", "/run/podtrace"))?;
    }
    fs::write(&plan.peers_log, b"").map_err(io("creating", &plan.peers_log))?;
    let pid = whoami::spawn(
        endpoints,
        &home.file,
        &home.ns.path,
        Path::new(&plan.peers_log),
    )
    .map_err(io("starting the whoami service, log", &plan.peers_log))?;
    fs::write(WHOAMI_PIDFILE, format!("{pid}\n")).map_err(io("writing", WHOAMI_PIDFILE))
}

/// Writes `/proc/sys/net/<key>` as seen from inside `ns` (the calling
/// thread's netns decides which namespace's value /proc/sys/net shows).
fn sysctl(ns: &Netns, key: &str, value: &str) -> Result<(), LabError> {
    let path = Path::new("/proc/sys/net").join(key);
    ns.run(|| fs::write(&path, value))?
        .map_err(|source| LabError::Io {
            what: "writing sysctl",
            path: path.clone(),
            source,
        })
}

/// Feeds `rules` to `iptables-restore --noflush` running inside `ns`.
fn iptables_restore(ns: &Netns, rules: &str) -> Result<(), LabError> {
    run(Some(ns), &["iptables-restore", "--noflush"], Some(rules))
}

/// Runs a command to completion, inside `ns` if given (a child inherits
/// the netns of the thread that spawns it), with `stdin` as its input.
pub(super) fn run(ns: Option<&Netns>, args: &[&str], stdin: Option<&str>) -> Result<(), LabError> {
    let spawn = || -> std::io::Result<std::process::Output> {
        let mut child = Command::new(args[0])
            .args(&args[1..])
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())?;
        }
        child.wait_with_output()
    };
    let out = match ns {
        Some(ns) => ns.run(spawn)?,
        None => spawn(),
    };
    let netns = ns.map_or("host", |n| n.name.as_str()).to_owned();
    let cmd = args.join(" ");
    match out {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(LabError::Command {
            netns,
            cmd,
            detail: String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', "; "),
        }),
        Err(e) => Err(LabError::Command {
            netns,
            cmd,
            detail: e.to_string(),
        }),
    }
}
