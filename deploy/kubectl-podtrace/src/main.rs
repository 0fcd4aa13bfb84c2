//! `kubectl-podtrace`: the kubectl plugin (on PATH, `kubectl podtrace ...`).

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};
use kubectl_podtrace::{
    cluster::{self, Timing},
    kubeconfig,
    manifest::{self, DebugPod, PingFlags, ping_args, pod_name, qualify},
};

/// Runs podtrace on a cluster node, in a node debug pod that is deleted
/// when done.
///
/// Exit codes: podtrace's (0 replies received, 1 no reply, 2 usage or
/// resolution error); 2 when the plugin itself fails; 130 on Ctrl-C.
#[derive(Parser, Debug)]
#[command(name = "kubectl podtrace", bin_name = "kubectl podtrace", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// `podtrace ping SRC DST` on SRC's node: the path each probe took,
    /// the ENI used, SNAT/DNAT rewrites.
    Ping(PingArgs),
}

#[derive(Args, Debug)]
struct PingArgs {
    /// Source pod: name (in --namespace), namespace/name, or pod IP.
    src: String,
    /// Destination: a pod (name or namespace/name), an IP, or a hostname.
    dst: String,
    /// Number of probes (1-10000).
    #[arg(short = 'c', long, value_parser = clap::value_parser!(u16).range(1..=10000))]
    count: Option<u16>,
    /// Time between probes (e.g. 200ms, 1s).
    #[arg(short = 'i', long, value_parser = duration)]
    interval: Option<String>,
    /// How long to wait for each reply (more than 0).
    #[arg(short = 'W', long, value_parser = positive_duration)]
    timeout: Option<String>,
    /// Probe protocol.
    #[arg(long, value_parser = ["icmp", "tcp", "udp"])]
    proto: Option<String>,
    /// Destination port for --proto tcp|udp.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..), requires = "proto")]
    port: Option<u16>,
    /// podtrace prints one JSON document.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Args, Debug)]
#[command(next_help_heading = "Cluster")]
struct ClusterArgs {
    /// Namespace of SRC and DST given by bare name (default: the context's).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Kubeconfig context.
    #[arg(long)]
    context: Option<String>,
    /// Kubeconfig file (default: $KUBECONFIG, ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// podtrace's image, pullable by the nodes.
    #[arg(long, env = "PODTRACE_IMAGE", default_value = manifest::DEFAULT_IMAGE)]
    image: String,
    /// Namespace of the debug pod: that of deploy/rbac.yaml's service
    /// account.
    #[arg(long, default_value = manifest::DEFAULT_NAMESPACE)]
    debug_namespace: String,
    /// Service account of the debug pod (read-only pod access for pod
    /// names; without it podtrace uses the kubelet's credentials or shows
    /// IPs).
    #[arg(long, default_value = manifest::DEFAULT_SERVICE_ACCOUNT)]
    service_account: String,
    /// How long the debug pod may take to start (image pull included), in
    /// seconds.
    #[arg(long, default_value_t = 120)]
    start_timeout: u64,
    /// Print the debug pod (JSON) instead of running it.
    #[arg(long)]
    dry_run: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let result = runtime
        .context("starting the runtime")
        .and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("kubectl-podtrace: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<i32> {
    let Command::Ping(args) = cli.command;
    let c = &args.cluster;
    let (client, default_ns, url) = client(c).await?;
    let namespace = c.namespace.clone().unwrap_or(default_ns);
    let src = cluster::locate(&client, &namespace, &args.src)
        .await
        .map_err(|e| {
            let msg = format!("{e:#}").replacen(
                cluster::UNREACHABLE,
                &format!("{} {url}", cluster::UNREACHABLE),
                1,
            );
            anyhow::anyhow!(msg)
        })?;
    let flags = PingFlags {
        count: args.count,
        interval: args.interval.clone(),
        timeout: args.timeout.clone(),
        proto: args.proto.clone(),
        port: args.port,
        json: args.json,
    };
    let pod = DebugPod {
        name: pod_name(&src.node, suffix()),
        namespace: c.debug_namespace.clone(),
        node: src.node.clone(),
        image: c.image.clone(),
        service_account: c.service_account.clone(),
        args: ping_args(&src.pod, &qualify(&namespace, &args.dst), &flags),
    };
    if c.dry_run {
        println!("{}", serde_json::to_string_pretty(&pod.to_json())?);
        return Ok(0);
    }
    eprintln!(
        "kubectl-podtrace: {} runs on {}; debug pod {}/{}",
        src.pod, src.node, pod.namespace, pod.name
    );
    let timing = Timing {
        start: Duration::from_secs(c.start_timeout),
        poll: Duration::from_millis(500),
    };
    cluster::run(&client, &pod, timing, &mut tokio::io::stdout()).await
}

/// A client for the kubeconfig and context given (or the defaults), the
/// context's namespace, and the API server's address.
async fn client(c: &ClusterArgs) -> Result<(Client, String, String)> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    if let Some(problem) = kubeconfig::missing(
        c.kubeconfig.as_deref(),
        std::env::var_os("KUBECONFIG").as_deref(),
        home.as_deref(),
    ) {
        anyhow::bail!(problem);
    }
    let options = KubeConfigOptions {
        context: c.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match &c.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &options).await
        }
        None => Config::from_kubeconfig(&options).await,
    }
    .context("loading the kubeconfig")?;
    let namespace = config.default_namespace.clone();
    let url = config.cluster_url.to_string();
    Ok((
        Client::try_from(config).context("creating the API client")?,
        namespace,
        url,
    ))
}

/// A duration as podtrace reads one (`500ms`, `2s`, `1m`, or seconds),
/// checked here so that a typo fails before a debug pod is made; passed on
/// as written.
fn duration(s: &str) -> Result<String, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    match (num.parse::<f64>(), unit) {
        (Ok(v), "ms" | "s" | "m") if v.is_finite() && v >= 0.0 => Ok(s.to_owned()),
        _ => Err(format!("{s:?} is not a duration (e.g. 500ms, 2s, 1m)")),
    }
}

/// [`duration`], more than 0.
fn positive_duration(s: &str) -> Result<String, String> {
    let d = duration(s)?;
    let num = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    if num.parse::<f64>().is_ok_and(|v| v == 0.0) {
        return Err(format!(
            "{s:?} is no time at all: give more than 0 (e.g. 500ms, 2s)"
        ));
    }
    Ok(d)
}

/// Distinguishes this run's debug pod from others on the same node.
fn suffix() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.subsec_nanos() ^ std::process::id().rotate_left(20)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::Cli;

    /// What podtrace would refuse is refused here, before any cluster
    /// access or debug pod.
    #[test]
    fn bad_ping_flags_fail_before_the_cluster() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(["kubectl podtrace", "ping", "a", "b"].iter().chain(args))
        };
        for bad in [
            &["--proto", "sctp"][..],
            &["-c", "0"],
            &["-c", "10001"],
            &["-W", "0"],
            &["-W", "0ms"],
            &["-i", "5x"],
            &["--port", "0", "--proto", "tcp"],
            &["--port", "80"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
        for good in [
            &[
                "--proto", "udp", "--port", "53", "-c", "5", "-i", "0", "-W", "1.5s",
            ][..],
            &["-i", "200ms", "-W", "2m"],
        ] {
            assert!(parse(good).is_ok(), "{good:?} was refused");
        }
    }
}
