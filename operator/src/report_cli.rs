//! `leakhunt report`: a LeakReport as a self-contained HTML page, from a file (`kubectl get
//! leakreport NAME -o yaml`, `leakhunt hunt --report`) or from the cluster (`-n NS NAME`, the
//! kubeconfig as kubectl finds it).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use kube::{Api, Client};
use leakhunt_operator::crd::LeakReport;
use leakhunt_operator::html;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A LeakReport as YAML or JSON; with `-n`, the name of one in the cluster.
    report: String,
    /// Read the LeakReport named REPORT from this namespace of the cluster.
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Where the page goes (`-`: standard output).
    #[arg(long, value_name = "FILE")]
    html: PathBuf,
}

pub fn report(args: ReportArgs) -> ExitCode {
    let loaded = match &args.namespace {
        None => from_file(&args.report),
        Some(ns) => from_cluster(ns, &args.report),
    };
    let report = match loaded {
        Ok(r) => r,
        Err(e) => {
            eprintln!("leakhunt report: {e}");
            return ExitCode::FAILURE;
        }
    };
    let written = if args.html.as_os_str() == "-" {
        std::io::stdout().write_all(html::render(&report, &html::generated_by()).as_bytes())
    } else {
        leakhunt_operator::hunt::output::write_html(&report, &args.html)
    };
    match written {
        Ok(()) => {
            if args.html.as_os_str() != "-" {
                println!("{}", args.html.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("leakhunt report: writing {}: {e}", args.html.display());
            ExitCode::FAILURE
        }
    }
}

fn from_file(path: &str) -> Result<LeakReport, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?;
    // YAML reads JSON too.
    let report: LeakReport =
        serde_yaml::from_str(&text).map_err(|e| format!("{path} is not a LeakReport: {e}"))?;
    Ok(report)
}

fn from_cluster(namespace: &str, name: &str) -> Result<LeakReport, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    rt.block_on(async {
        let client = Client::try_default()
            .await
            .map_err(|e| format!("no Kubernetes credentials (in-cluster or KUBECONFIG): {e}"))?;
        let api: Api<LeakReport> = Api::namespaced(client, namespace);
        api.get(name)
            .await
            .map_err(|e| format!("LeakReport {namespace}/{name}: {e}"))
    })
}
