//! The Node object: registration, Ready condition, heartbeat and node lease, as the kubelet keeps them.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;

pub const LEASE_NAMESPACE: &str = "kube-node-lease";
const LEASE_SECONDS: i32 = 40;
pub const HEARTBEAT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub cpu: String,
    pub memory: String,
    pub pods: String,
    pub address: String,
}

fn conditions(now: &Time) -> Vec<NodeCondition> {
    let cond = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    };
    vec![
        cond(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "nodesim has sufficient memory available",
        ),
        cond(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "nodesim has no disk pressure",
        ),
        cond(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "nodesim has sufficient PID available",
        ),
        cond(
            "Ready",
            "True",
            "KubeletReady",
            "nodesim is posting ready status",
        ),
    ]
}

fn status(cfg: &NodeConfig) -> NodeStatus {
    let now = Time(Timestamp::now());
    let resources: BTreeMap<String, Quantity> = [
        ("cpu", &cfg.cpu),
        ("memory", &cfg.memory),
        ("pods", &cfg.pods),
        ("ephemeral-storage", &"100Gi".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Quantity(v.clone())))
    .collect();
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        conditions: Some(conditions(&now)),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: cfg.address.clone(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: cfg.name.clone(),
            },
        ]),
        node_info: Some(NodeSystemInfo {
            architecture: std::env::consts::ARCH
                .replace("x86_64", "amd64")
                .replace("aarch64", "arm64"),
            operating_system: "linux".into(),
            kubelet_version: "v1.36.3-nodesim".into(),
            kube_proxy_version: String::new(),
            container_runtime_version: "nodesim://0.1.0".into(),
            os_image: "leakhunt nodesim".into(),
            kernel_version: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            machine_id: String::new(),
            system_uuid: String::new(),
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates the Node (replacing a stale one of the same name) and posts a Ready status.
pub async fn register(client: &Client, cfg: &NodeConfig) -> kube::Result<Node> {
    let nodes: Api<Node> = Api::all(client.clone());
    let labels: BTreeMap<String, String> = [
        ("kubernetes.io/hostname", cfg.name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("beta.kubernetes.io/os", "linux"),
        ("leakhunt.dev/nodesim", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let node = Node {
        metadata: ObjectMeta {
            name: Some(cfg.name.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        ..Default::default()
    };
    let node = match nodes.create(&PostParams::default(), &node).await {
        Ok(n) => n,
        Err(kube::Error::Api(e)) if e.code == 409 => nodes.get(&cfg.name).await?,
        Err(e) => return Err(e),
    };
    heartbeat(client, cfg).await?;
    Ok(node)
}

/// Posts the node status (Ready, fresh heartbeat times) and renews the node lease.
pub async fn heartbeat(client: &Client, cfg: &NodeConfig) -> kube::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let patch = json!({ "status": status(cfg) });
    let node = nodes
        .patch_status(&cfg.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    renew_lease(client, cfg, &node).await
}

async fn renew_lease(client: &Client, cfg: &NodeConfig, node: &Node) -> kube::Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(cfg.name.clone()),
            namespace: Some(LEASE_NAMESPACE.into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: cfg.name.clone(),
                uid: node.metadata.uid.clone().unwrap_or_default(),
                ..Default::default()
            }]),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(cfg.name.clone()),
            lease_duration_seconds: Some(LEASE_SECONDS),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..Default::default()
        }),
    };
    leases
        .patch(
            &cfg.name,
            &PatchParams::apply("nodesim").force(),
            &Patch::Apply(&lease),
        )
        .await
        .map(|_| ())
}

/// Removes the Node and its lease; the pod GC then deletes whatever was still bound to it.
pub async fn deregister(client: &Client, name: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let _ = leases.delete(name, &DeleteParams::default()).await;
    let _ = nodes.delete(name, &DeleteParams::default()).await;
}
