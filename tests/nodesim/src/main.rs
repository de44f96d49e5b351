//! nodesim: a simulated Kubernetes node for leakhunt's end-to-end tests.
//!
//! It registers a Node, keeps it Ready (status heartbeat and node lease), and runs every container of every
//! pod the scheduler binds to it as a local process in its own memory cgroup — so a container over its
//! limit is OOM-killed by the kernel, for real. Images map to local commands through `images.yaml`.
//! On SIGTERM/SIGINT every process it started is killed and every cgroup it made is removed.

mod cgroup;
mod images;
mod node;
mod pod;
mod spec;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Parser, Debug)]
#[command(
    name = "nodesim",
    about = "Simulated Kubernetes node: pod containers as local processes in memory cgroups"
)]
struct Args {
    /// Admin kubeconfig of the cluster to join.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// Node name.
    #[arg(long, default_value = "nodesim")]
    node_name: String,
    /// Root of the node's memory cgroups (pods go under ROOT/kubepods/...). Default:
    /// /sys/fs/cgroup/memory/leakhunt-nodesim-<node> on cgroup v1, /sys/fs/cgroup/leakhunt-nodesim-<node> on v2.
    #[arg(long)]
    cgroup_root: Option<PathBuf>,
    /// Directory for pod volumes, kubeconfigs and container logs.
    #[arg(long, default_value = "/tmp/leakhunt-nodesim")]
    state_dir: PathBuf,
    /// Image → command map.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/images.yaml"))]
    images: PathBuf,
    /// Address reported as node InternalIP, pod IP and host IP (all pods share the host network).
    #[arg(long, default_value = "127.0.0.1")]
    address: String,
    #[arg(long, default_value = "4")]
    cpu: String,
    #[arg(long, default_value = "16Gi")]
    memory: String,
    #[arg(long, default_value = "110")]
    max_pods: String,
    /// First crash-loop back-off; doubles per restart (the kubelet's is 10s).
    #[arg(long, default_value = "10", value_name = "SECONDS")]
    backoff_base: u64,
    /// Longest crash-loop back-off (the kubelet's is 300s).
    #[arg(long, default_value = "300", value_name = "SECONDS")]
    backoff_max: u64,
    /// Keep the Node object on exit (default: delete it and its lease).
    #[arg(long)]
    keep_node: bool,
}

fn default_cgroup_root(node: &str) -> PathBuf {
    let v1 = PathBuf::from("/sys/fs/cgroup/memory");
    if v1.join("memory.limit_in_bytes").exists() {
        v1.join(format!("leakhunt-nodesim-{node}"))
    } else {
        PathBuf::from("/sys/fs/cgroup").join(format!("leakhunt-nodesim-{node}"))
    }
}

/// The cluster's CA as PEM, for the kubeconfigs handed to pods.
fn ca_pem(kubeconfig: &Kubeconfig) -> anyhow::Result<String> {
    let ctx_name = kubeconfig.current_context.clone().unwrap_or_default();
    let cluster_name = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .unwrap_or_default();
    let cluster = kubeconfig
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.as_ref())
        .context("kubeconfig has no current cluster")?;
    if let Some(file) = &cluster.certificate_authority {
        return std::fs::read_to_string(file).with_context(|| format!("read CA {file}"));
    }
    if let Some(data) = &cluster.certificate_authority_data {
        return base64_decode(data).context("certificate-authority-data is not base64");
    }
    bail!("kubeconfig cluster has no certificate authority")
}

fn base64_decode(s: &str) -> Option<String> {
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(v);
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    String::from_utf8(out).ok()
}

struct Worker {
    tx: watch::Sender<Option<Pod>>,
    task: JoinHandle<()>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();

    let raw = Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("read kubeconfig {}", args.kubeconfig.display()))?;
    let ca = ca_pem(&raw)?;
    let config = kube::Config::from_custom_kubeconfig(raw, &KubeConfigOptions::default())
        .await
        .context("load kubeconfig")?;
    let server = config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_string();
    let client = Client::try_from(config).context("build client")?;

    let cgroup_root_path = args
        .cgroup_root
        .clone()
        .unwrap_or_else(|| default_cgroup_root(&args.node_name));
    let cgroup_root = cgroup::CgroupMemory::root(&cgroup_root_path).with_context(|| {
        format!(
            "cgroup root {} (nodesim needs root and a writable memory cgroup hierarchy)",
            cgroup_root_path.display()
        )
    })?;
    let images = images::ImageMap::load(&args.images)?;
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("create {}", args.state_dir.display()))?;

    let node_cfg = node::NodeConfig {
        name: args.node_name.clone(),
        cpu: args.cpu.clone(),
        memory: args.memory.clone(),
        pods: args.max_pods.clone(),
        address: args.address.clone(),
    };
    // A freshly started API server may not have its system namespaces yet (the node lease lives
    // in kube-node-lease); on a loaded machine that takes a while: retry for a minute.
    let mut attempt = 0;
    loop {
        match node::register(&client, &node_cfg).await {
            Ok(_) => break,
            Err(e) if attempt < 60 => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "node registration failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e).context("register node"),
        }
    }
    tracing::info!(node = %args.node_name, cgroup_root = %cgroup_root_path.display(), ?cgroup_root.hierarchy, "node registered and Ready");
    println!(
        "nodesim: ready node={} cgroup-root={}",
        args.node_name,
        cgroup_root_path.display()
    );

    let rt = Arc::new(pod::Runtime {
        client: client.clone(),
        node_name: args.node_name.clone(),
        node_ip: args.address.clone(),
        images,
        cgroup_root,
        state_dir: args.state_dir.clone(),
        server,
        ca_pem: ca,
        backoff_base: Duration::from_secs(args.backoff_base),
        backoff_max: Duration::from_secs(args.backoff_max.max(args.backoff_base)),
        created_mountpoints: Mutex::new(HashSet::new()),
    });

    let heartbeat = {
        let client = client.clone();
        let cfg = node_cfg.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(node::HEARTBEAT);
            loop {
                tick.tick().await;
                if let Err(e) = node::heartbeat(&client, &cfg).await {
                    tracing::warn!(error = %e, "node heartbeat failed");
                }
            }
        })
    };

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let result = tokio::select! {
        r = watch_pods(rt.clone(), shutdown_rx) => r,
        _ = shutdown_signal() => { tracing::info!("stopping"); Ok(()) }
    };
    heartbeat.abort();

    // Tear down: signal every worker, give them a moment to kill their processes, then sweep the whole
    // cgroup root so nothing survives even if a worker was stuck.
    let _ = shutdown_tx.send(true);
    tokio::time::sleep(Duration::from_secs(4)).await;
    cgroup::destroy_tree(&rt.cgroup_root.path).await;
    if let Ok(set) = rt.created_mountpoints.lock() {
        let mut dirs: Vec<&PathBuf> = set.iter().collect();
        dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for d in dirs {
            let _ = std::fs::remove_dir(d).or_else(|_| {
                if d.is_file() && std::fs::metadata(d).map(|m| m.len() == 0).unwrap_or(false) {
                    std::fs::remove_file(d)
                } else {
                    Ok(())
                }
            });
        }
    }
    if !args.keep_node {
        node::deregister(&client, &args.node_name).await;
    }
    tracing::info!("stopped");
    result
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Watches the pods bound to this node and keeps one worker per pod UID.
async fn watch_pods(rt: Arc<pod::Runtime>, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::all(rt.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", rt.node_name));
    let mut stream = watcher::watcher(pods, cfg).default_backoff().boxed();
    let mut workers: HashMap<String, Worker> = HashMap::new();
    let mut seen: Option<HashSet<String>> = None;
    while let Some(event) = stream.next().await {
        workers.retain(|_, w| !w.task.is_finished());
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "pod watch");
                continue;
            }
        };
        match event {
            Event::Init => seen = Some(HashSet::new()),
            Event::InitApply(p) | Event::Apply(p) => {
                let Some(uid) = p.metadata.uid.clone() else {
                    continue;
                };
                if let Some(s) = seen.as_mut() {
                    s.insert(uid.clone());
                }
                match workers.get(&uid) {
                    Some(w) => {
                        let _ = w.tx.send(Some(p));
                    }
                    None => {
                        let (tx, rx) = watch::channel(Some(p));
                        let task = tokio::spawn(pod::run(rt.clone(), rx, shutdown.clone()));
                        workers.insert(uid, Worker { tx, task });
                    }
                }
            }
            Event::Delete(p) => {
                if let Some(w) = p.metadata.uid.as_ref().and_then(|u| workers.get(u)) {
                    let _ = w.tx.send(None);
                }
            }
            Event::InitDone => {
                if let Some(s) = seen.take() {
                    for (uid, w) in &workers {
                        if !s.contains(uid) {
                            let _ = w.tx.send(None);
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_roundtrip() {
        assert_eq!(
            base64_decode(&pod::base64_encode(b"-----BEGIN CERT")).as_deref(),
            Some("-----BEGIN CERT")
        );
    }
}
