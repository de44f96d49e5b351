//! Flags of the cluster subcommands (each also read from an environment variable, as the chart
//! sets them) and their `main`s: logging, the metrics/health server, signals, leader election.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use kube::Client;
use leakhunt_operator::alerts::{AlertConfig, WebhookFormat};
use leakhunt_operator::cluster::{
    agent, analyze_job, controller, job_spec::JobTemplate, leader::LeaderElector,
};
use leakhunt_operator::http::{self, Health};
use leakhunt_operator::metrics::Metrics;
use leakhunt_operator::node::Thresholds;
use leakhunt_operator::units::{parse_duration, parse_percent, parse_size, Bare};

fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text)
}

fn size(text: &str) -> Result<u64, String> {
    parse_size(text)
}

fn percent(text: &str) -> Result<f64, String> {
    let v = parse_percent(text, Bare::Percent)?;
    // A threshold of 0 % is always reached, one of 100 % never before the kill.
    if !(0.01..=0.99).contains(&v) {
        return Err(format!("percentage out of range 1..99: {text:?}"));
    }
    Ok(v)
}

#[derive(Args, Debug)]
pub struct OperatorArgs {
    /// The operator's own namespace: analyzer Jobs and the leader Lease live there.
    #[arg(long, env = "POD_NAMESPACE", default_value = "leakhunt")]
    namespace: String,
    /// Namespaces to watch, comma-separated; empty: all.
    #[arg(
        long,
        env = "LEAKHUNT_WATCH_NAMESPACES",
        value_delimiter = ',',
        default_value = ""
    )]
    watch_namespaces: Vec<String>,
    /// Serve read-only report pages on the admin address: `/reports`, `/reports/NS/NAME` (chart
    /// value `ui.enabled`; reach them with `kubectl port-forward`).
    #[arg(long, env = "LEAKHUNT_UI")]
    ui: bool,
    /// Image of the analyzer Jobs (the same `leakhunt` image).
    #[arg(long, env = "LEAKHUNT_IMAGE", default_value = "leakhunt:0.1.0")]
    image: String,
    #[arg(
        long,
        env = "LEAKHUNT_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    image_pull_policy: String,
    /// ServiceAccount of the analyzer Jobs (may patch only leakreports/status).
    #[arg(
        long,
        env = "LEAKHUNT_ANALYZER_SERVICE_ACCOUNT",
        default_value = "leakhunt-analyzer"
    )]
    analyzer_service_account: String,
    /// Host directory where the agent writes snapshots; Jobs mount it read-only.
    #[arg(
        long,
        env = "LEAKHUNT_SNAPSHOT_DIR",
        default_value = "/var/lib/leakhunt/snapshots"
    )]
    snapshot_dir: String,
    /// An analysis running longer is stopped and the report marked Failed.
    #[arg(long, env = "LEAKHUNT_ANALYSIS_TIMEOUT", default_value = "10m", value_parser = duration)]
    analysis_timeout: Duration,
    /// Finished analyzer Jobs are deleted after this.
    #[arg(long, env = "LEAKHUNT_JOB_TTL", default_value = "1h", value_parser = duration)]
    job_ttl: Duration,
    #[arg(
        long,
        env = "LEAKHUNT_ANALYZER_MEMORY_REQUEST",
        default_value = "256Mi"
    )]
    analyzer_memory_request: String,
    /// The least memory limit of an analyzer Job: a bigger snapshot pair gets more.
    #[arg(long, env = "LEAKHUNT_ANALYZER_MEMORY_LIMIT", default_value = "1Gi")]
    analyzer_memory_limit: String,
    /// The most memory an analyzer Job may be given, however big its snapshot pair.
    #[arg(long, env = "LEAKHUNT_ANALYZER_MEMORY_MAX", default_value = "8Gi")]
    analyzer_memory_max: String,
    #[arg(long, env = "LEAKHUNT_ANALYZER_CPU_REQUEST", default_value = "100m")]
    analyzer_cpu_request: String,
    #[arg(long, env = "LEAKHUNT_ANALYZER_CPU_LIMIT", default_value = "1")]
    analyzer_cpu_limit: String,
    /// Serves /metrics, /livez and /readyz.
    #[arg(long, env = "LEAKHUNT_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Lead through a Lease so that several replicas are safe.
    #[arg(long, env = "LEAKHUNT_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    #[arg(long, env = "LEAKHUNT_LEASE_NAME", default_value = "leakhunt-operator")]
    lease_name: String,
    /// Record Kubernetes Events (OOMKilled, LeakDetected, AnalysisFailed).
    #[arg(long, env = "LEAKHUNT_EVENTS", default_value_t = true, action = clap::ArgAction::Set)]
    events: bool,
    /// POST a JSON payload per alert here.
    #[arg(long, env = "LEAKHUNT_WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// `json` or `slack`.
    #[arg(long, env = "LEAKHUNT_WEBHOOK_FORMAT", default_value = "json")]
    webhook_format: WebhookFormat,
    /// Alertmanager base URL; alerts go to its v2 API.
    #[arg(long, env = "LEAKHUNT_ALERTMANAGER_URL")]
    alertmanager_url: Option<String>,
    /// Extra Alertmanager labels, `k=v,k2=v2`.
    #[arg(
        long,
        env = "LEAKHUNT_ALERT_LABELS",
        value_delimiter = ',',
        default_value = ""
    )]
    alert_labels: Vec<String>,
    /// URL prefixes a LeakWatch may route alerts to (comma-separated); none: only the chart's.
    #[arg(long, env = "LEAKHUNT_ALLOWED_ALERT_URLS", value_delimiter = ',')]
    allowed_alert_urls: Vec<String>,
    /// At most one alert per workload and kind within this.
    #[arg(long, env = "LEAKHUNT_ALERT_COOLDOWN", default_value = "10m", value_parser = duration)]
    alert_cooldown: Duration,
    /// Log filter (`info`, `leakhunt_operator=debug`).
    #[arg(long, env = "LEAKHUNT_LOG", default_value = "info")]
    log: String,
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// This node's name (the downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Where the memory cgroup hierarchy is mounted (v1 `memory/` below it, or v2).
    #[arg(long, env = "LEAKHUNT_CGROUP_ROOT", default_value = "/sys/fs/cgroup")]
    cgroup_root: std::path::PathBuf,
    /// The host's /proc (the agent runs with hostPID).
    #[arg(long, env = "LEAKHUNT_PROC_ROOT", default_value = "/proc")]
    proc_root: std::path::PathBuf,
    /// Host directory for snapshot files (0700; files 0600).
    #[arg(
        long,
        env = "LEAKHUNT_SNAPSHOT_DIR",
        default_value = "/var/lib/leakhunt/snapshots"
    )]
    snapshot_dir: std::path::PathBuf,
    /// Sampling interval.
    #[arg(long, env = "LEAKHUNT_INTERVAL", default_value = "1s", value_parser = duration)]
    interval: Duration,
    /// How often memory samples go into an opted-in workload's report.
    #[arg(long, env = "LEAKHUNT_REPORT_INTERVAL", default_value = "10s", value_parser = duration)]
    report_interval: Duration,
    /// Record Kubernetes Events (CaptureFailed, CaptureSkipped) unless a LeakWatch says otherwise.
    #[arg(long, env = "LEAKHUNT_EVENTS", default_value_t = true, action = clap::ArgAction::Set)]
    events: bool,
    /// Largest snapshot file (pods opted in by annotation; a LeakWatch sets its own).
    #[arg(long, env = "LEAKHUNT_MAX_SNAPSHOT_SIZE", default_value = "1Gi", value_parser = size)]
    max_snapshot_size: u64,
    /// Snapshot A at this percentage of the memory limit.
    #[arg(long, env = "LEAKHUNT_BASELINE", default_value = "50", value_parser = percent)]
    baseline: f64,
    /// Snapshot B at this percentage of the memory limit.
    #[arg(long, env = "LEAKHUNT_NEAR_LIMIT", default_value = "85", value_parser = percent)]
    near_limit: f64,
    /// Minimum time between two hunts of one container.
    #[arg(long, env = "LEAKHUNT_COOLDOWN", default_value = "10m", value_parser = duration)]
    cooldown: Duration,
    /// Kernel log to name OOM-killed processes (needs CAP_SYSLOG); empty: off.
    #[arg(long, env = "LEAKHUNT_KERNEL_LOG", default_value = "")]
    kernel_log: String,
    #[arg(long, env = "LEAKHUNT_METRICS_ADDR", default_value = "0.0.0.0:8081")]
    metrics_addr: SocketAddr,
    #[arg(long, env = "LEAKHUNT_LOG", default_value = "info")]
    log: String,
}

#[derive(Args, Debug)]
pub struct AnalyzeJobArgs {
    /// The LeakReport to write, `namespace/name`.
    #[arg(long)]
    report: String,
    /// Snapshot A.
    #[arg(long)]
    before: std::path::PathBuf,
    /// Snapshot B.
    #[arg(long)]
    after: std::path::PathBuf,
    /// SHA-256 the agent recorded for A; a file that differs is not analysed.
    #[arg(long)]
    sha256_before: Option<String>,
    #[arg(long)]
    sha256_after: Option<String>,
    /// Refuse with a clear error (written to the report) rather than hold more than this many
    /// bytes: the operator sets it below the Job's memory limit.
    #[arg(long, value_name = "BYTES")]
    memory_budget: Option<u64>,
    /// Allocation tracing was on at B and used this much of the process's memory: left out of its
    /// native growth, and the top suspect's address is kept for the agent to read its sites.
    #[arg(long, value_name = "BYTES")]
    tracer_bytes: Option<u64>,
    /// A one-time rise of memory between the snapshots counts as a step (not a leak) once memory
    /// has been flat this long after it; the Job waits up to this long past B to see.
    #[arg(long, default_value = "30s", value_parser = duration)]
    settle: Duration,
    #[arg(long, env = "LEAKHUNT_LOG", default_value = "info")]
    log: String,
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: container logs are files read by collectors.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs a subcommand's future on a new runtime; its error is logged and printed as `what`'s.
fn block_on(what: &str, work: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("leakhunt: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(what, e),
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Binds the admin address (failing loudly when taken) and serves /metrics, /livez and /readyz
/// until SIGTERM; returns the metrics to fill and the health to set ready.
async fn serve_admin(
    addr: SocketAddr,
    pages: Option<http::Pages>,
) -> anyhow::Result<(Metrics, Health)> {
    let metrics = Metrics::new();
    let health = Health::new();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    tokio::spawn(http::serve_pages(
        listener,
        metrics.clone(),
        health.clone(),
        pages,
        shutdown_signal(),
    ));
    Ok((metrics, health))
}

async fn client() -> anyhow::Result<Client> {
    Client::try_default()
        .await
        .map_err(|e| anyhow::anyhow!("no Kubernetes credentials (in-cluster or KUBECONFIG): {e}"))
}

fn fail(what: &str, e: anyhow::Error) -> ExitCode {
    tracing::error!("{what}: {e:#}");
    eprintln!("leakhunt {what}: {e:#}");
    ExitCode::FAILURE
}

pub fn operator(args: OperatorArgs) -> ExitCode {
    init_logging(&args.log);
    block_on("operator", run_operator(args))
}

async fn run_operator(args: OperatorArgs) -> anyhow::Result<()> {
    let mut labels = std::collections::BTreeMap::new();
    for pair in args.alert_labels.iter().filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--alert-labels: {pair:?} is not key=value"))?;
        labels.insert(k.trim().to_string(), v.trim().to_string());
    }
    let alerts = AlertConfig {
        events: args.events,
        webhook_url: args.webhook_url.filter(|u| !u.is_empty()),
        webhook_format: args.webhook_format,
        alertmanager_url: args.alertmanager_url.filter(|u| !u.is_empty()),
        labels,
        cooldown: args.alert_cooldown,
        allowed_url_prefixes: args
            .allowed_alert_urls
            .into_iter()
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect(),
    };
    let instance = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "leakhunt-operator".into());
    let cfg = controller::OperatorConfig {
        watch_namespaces: args
            .watch_namespaces
            .into_iter()
            .filter(|n| !n.is_empty())
            .collect(),
        job: JobTemplate {
            namespace: args.namespace.clone(),
            image: args.image,
            image_pull_policy: args.image_pull_policy,
            service_account: args.analyzer_service_account,
            snapshot_dir: args.snapshot_dir,
            timeout: args.analysis_timeout,
            ttl: args.job_ttl,
            memory_request: args.analyzer_memory_request,
            memory_limit: args.analyzer_memory_limit,
            memory_max: args.analyzer_memory_max,
            cpu_request: args.analyzer_cpu_request,
            cpu_limit: args.analyzer_cpu_limit,
            log: args.log.clone(),
            owner: None,
        },
        alerts,
        instance: instance.clone(),
    };
    let client = client().await?;
    let pages = args
        .ui
        .then(|| leakhunt_operator::html::pages(client.clone(), cfg.watch_namespaces.clone()));
    let (metrics, health) = serve_admin(args.metrics_addr, pages).await?;
    let identity = format!("{instance}-{}", std::process::id());
    let elector = args.leader_election.then(|| {
        LeaderElector::new(
            kube::Api::namespaced(client.clone(), &args.namespace),
            &args.lease_name,
            &identity,
            Duration::from_secs(15),
        )
    });
    // A standby replica is healthy and ready: it is waiting, by design.
    health.set_ready(true);
    if let Some(e) = &elector {
        tracing::info!(lease = %args.lease_name, %identity, "waiting for leadership");
        tokio::select! {
            _ = e.acquire() => {}
            _ = shutdown_signal() => return Ok(()),
        }
        tracing::info!(%identity, "leading");
    }
    let mut cfg = cfg;
    cfg.job.owner = own_deployment(&client, &args.namespace, &instance).await;
    let ctx = controller::Context::new(client, cfg, metrics);
    let lost = async {
        match &elector {
            Some(e) => e.keep().await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        _ = controller::run(ctx, shutdown_signal()) => Ok(()),
        _ = lost => return Err(anyhow::anyhow!("lost the leader lease; exiting so a new leader takes over")),
    };
    if let Some(e) = &elector {
        e.release().await;
    }
    result
}

/// The Deployment this operator pod belongs to (outside a cluster, or as a bare pod: none).
async fn own_deployment(
    client: &Client,
    namespace: &str,
    pod_name: &str,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    use leakhunt_operator::cluster::workload;
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client.clone(), namespace);
    let pod = pods.get_opt(pod_name).await.ok().flatten()?;
    let w = workload::resolve(&workload::ApiLookup::new(client.clone()), &pod)
        .await
        .ok()?;
    (w.kind == "Deployment")
        .then(|| workload::owner_reference(&w))
        .flatten()
}

pub fn agent(args: AgentArgs) -> ExitCode {
    init_logging(&args.log);
    if args.baseline >= args.near_limit {
        eprintln!("leakhunt agent: --baseline must be below --near-limit");
        return ExitCode::from(2);
    }
    block_on("agent", run_agent(args))
}

async fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    let cfg = agent::AgentConfig {
        node_name: args.node_name,
        cgroup_root: args.cgroup_root,
        proc_root: args.proc_root,
        snapshot_dir: args.snapshot_dir,
        interval: args.interval,
        max_snapshot_size: args.max_snapshot_size,
        thresholds: Thresholds::shares(args.baseline, args.near_limit, args.cooldown.as_secs_f64()),
        report_interval: args.report_interval,
        events: args.events,
        kernel_log: Some(args.kernel_log)
            .filter(|k| !k.is_empty())
            .map(Into::into),
    };
    let (metrics, health) = serve_admin(args.metrics_addr, None).await?;
    let client = client().await?;
    let ready = {
        let health = health.clone();
        move || health.set_ready(true)
    };
    agent::Agent::new(client, cfg, metrics)
        .run(ready, shutdown_signal())
        .await
}

pub fn analyze_job(args: AnalyzeJobArgs) -> ExitCode {
    init_logging(&args.log);
    leakhunt_analyzer::budget::set_budget(args.memory_budget);
    let Some((namespace, report)) = args.report.split_once('/') else {
        eprintln!("leakhunt analyze-job: --report must be namespace/name");
        return ExitCode::from(2);
    };
    let job = analyze_job::AnalyzeJob {
        namespace: namespace.to_string(),
        report: report.to_string(),
        before: args.before,
        after: args.after,
        sha256_before: args.sha256_before,
        sha256_after: args.sha256_after,
        settle: args.settle,
        tracer_bytes: args.tracer_bytes,
    };
    block_on("analyze-job", async move {
        let client = client().await?;
        analyze_job::run(client, job).await
    })
}
