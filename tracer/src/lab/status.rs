//! `podtrace lab status`: nodes, ENIs and pods in tables a person reads at a
//! glance. Rendering is pure (inventory in, text out); only [`run`] looks
//! at the system.

use std::{fmt::Write as _, path::Path, process::ExitCode};

use super::{
    INVENTORY_PATH, LabError,
    inventory::Inventory,
    plan::Plan,
    teardown::{existing_netns, whoami_pid},
};
use crate::netns::NETNS_RUN_DIR;

/// Prints the status; exit 0 when a complete lab is up, 1 when there is no
/// lab or only part of one.
pub fn run(json: bool) -> Result<ExitCode, LabError> {
    let inv = match Inventory::load(INVENTORY_PATH) {
        Ok(inv) => inv,
        Err(LabError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            let left = existing_netns(&Plan::default());
            let say = if left.is_empty() {
                "no lab is up (`podtrace lab up` builds one)".to_owned()
            } else {
                format!(
                    "no lab inventory, but these lab namespaces exist: {} (left by an unfinished \
                     `podtrace lab up`?); `podtrace lab down` removes them",
                    left.join(", ")
                )
            };
            // With --json, stdout holds JSON or nothing: a script reads
            // the exit status, a person the message.
            if json {
                eprintln!("podtrace: {say}");
            } else {
                println!("{say}");
            }
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e),
    };
    let missing: Vec<String> = inv
        .plan()
        .netns_names()
        .into_iter()
        .filter(|n| !Path::new(NETNS_RUN_DIR).join(n).exists())
        .map(str::to_owned)
        .collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&inv).expect("plain data serializes")
        );
    } else {
        print!("{}", render(&inv, &missing));
        if whoami_pid().is_none() {
            println!(
                "\nwarning: the whoami service is not running (`podtrace lab down; podtrace lab up`)"
            );
        }
    }
    Ok(if missing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The tables. Namespaces listed in `missing` are marked as such.
pub fn render(inv: &Inventory, missing: &[String]) -> String {
    let plan = inv.plan();
    let ns = |name: &str| {
        if missing.iter().any(|m| m == name) {
            format!("{name} (MISSING)")
        } else {
            name.to_owned()
        }
    };
    let mut out = format!(
        "VPC {} (router and subnet bridges in netns {})\n\n",
        plan.vpc_cidr,
        ns(&plan.vpc_netns)
    );
    let mut rows = vec![row(&[
        "NODE",
        "NETNS",
        "SUBNET",
        "ENI",
        "INDEX",
        "MAC",
        "PRIMARY IP",
        "SECONDARY IPS",
    ])];
    for node in &plan.nodes {
        for (i, eni) in node.enis.iter().enumerate() {
            let first = i == 0;
            let secondary: Vec<String> =
                eni.secondary_ips.iter().map(ToString::to_string).collect();
            rows.push(vec![
                if first {
                    node.name.clone()
                } else {
                    String::new()
                },
                if first {
                    ns(&node.netns)
                } else {
                    String::new()
                },
                if first {
                    node.subnet.to_string()
                } else {
                    String::new()
                },
                eni.name.clone(),
                eni.index.to_string(),
                eni.mac.to_string(),
                eni.primary_ip.to_string(),
                secondary.join(" "),
            ]);
        }
    }
    out.push_str(&table(&rows));
    out.push('\n');
    let mut rows = vec![row(&["POD", "IP", "NODE", "ENI", "HOST VETH", "NETNS"])];
    for pod in &plan.pods {
        rows.push(vec![
            pod.full_name(),
            pod.ip.to_string(),
            pod.node.clone(),
            pod.eni.clone(),
            pod.host_veth.clone(),
            ns(&pod.netns),
        ]);
    }
    out.push_str(&table(&rows));
    out.push('\n');
    let svc = &plan.service;
    let backends: Vec<String> = plan
        .backends()
        .iter()
        .map(|b| format!("{} {}:{}", b.name, b.ip, svc.target_port))
        .collect();
    let internet = &plan.internet;
    let port = internet
        .port
        .map(|p| format!(", whoami on tcp/{p}"))
        .unwrap_or_default();
    let mut rows = vec![
        row(&["SERVICE", "ADDRESS", "NETNS / BACKENDS"]),
        vec![
            "internet host".into(),
            internet.ip.to_string(),
            format!("{}{port}", ns(&internet.netns)),
        ],
        vec![
            "nlb (IP targets)".into(),
            plan.nlb.ip.to_string(),
            ns(&plan.nlb.netns),
        ],
        vec![
            format!("{}/{} (ClusterIP)", svc.namespace, svc.name),
            format!("{}:{}", svc.ip, svc.port),
            backends.join(", "),
        ],
    ];
    if let Some(pod) = plan.pods.first() {
        rows.push(vec![
            "whoami on pods".into(),
            format!("<pod IP>:{}", pod.port),
            format!(
                "answers \"<who> <peer ip>:<port>\", logged to {}",
                plan.peers_log
            ),
        ]);
    }
    out.push_str(&table(&rows));
    out
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

/// Left-aligned columns, two spaces apart, no trailing blanks.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (cell, width) in r.iter().zip(&widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_show_nodes_enis_and_pods() {
        let inv = Inventory::from_plan(&Plan::default());
        let text = render(&inv, &["lab-default-pod-4".to_owned()]);
        let line = |start: &str| {
            text.lines()
                .find(|l| l.starts_with(start))
                .unwrap_or_else(|| panic!("no line starting {start} in\n{text}"))
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            line("node-a"),
            [
                "node-a",
                "node-a",
                "192.168.1.0/24",
                "ens5",
                "0",
                "02:ec:2a:01:00:00",
                "192.168.1.10",
                "192.168.1.11",
                "192.168.1.12",
                "192.168.1.13"
            ]
        );
        assert_eq!(
            line("default/pod-2"),
            [
                "default/pod-2",
                "192.168.1.21",
                "node-a",
                "ens6",
                "enifbd243bfedd",
                "lab-default-pod-2"
            ]
        );
        assert!(line("default/pod-4").ends_with(&["lab-default-pod-4", "(MISSING)"]));
        assert!(text.contains("10.100.0.10:80"));
        assert!(text.contains("pod-2 192.168.1.21:8080, pod-3 192.168.2.11:8080"));
        assert!(text.lines().all(|l| l == l.trim_end()));
    }
}
