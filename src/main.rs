//! `ratio1`: the operator and its tools, one binary.

use clap::{Parser, Subcommand};
use ratio1::controller::run::{run, OperatorConfig};
use ratio1::telemetry::{self, LogFormat};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "ratio1", version, about = "Ratio1 decentralized AI meta-OS on Kubernetes")]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty, env = "RATIO1_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers (R1Node, R1Pipeline, R1Model).
    Operator(OperatorArgs),
    /// Write the CRDs as YAML (into a directory, or to stdout).
    Crdgen {
        /// Directory to write one file per CRD into; stdout when absent.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Exit non-zero when the files in --out differ instead of writing.
        #[arg(long, requires = "out")]
        check: bool,
        /// Also write the Markdown field reference to this file.
        #[arg(long)]
        docs: Option<PathBuf>,
    },
    /// Print the version.
    Version,
}

#[derive(clap::Args)]
struct OperatorArgs {
    /// Namespace of the operator (identity and license Secrets, leader Lease).
    #[arg(long, env = "POD_NAMESPACE", default_value = "ratio1-system")]
    namespace: String,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "RATIO1_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Campaign for a Lease and reconcile only while holding it.
    #[arg(long, env = "RATIO1_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the leader Lease.
    #[arg(long, default_value = "ratio1-operator-leader")]
    lease_name: String,
    /// Seconds a leader Lease stays valid without renewal.
    #[arg(long, default_value_t = 15)]
    lease_duration_secs: u64,
    /// Seconds between renewals (and candidate retries).
    #[arg(long, default_value_t = 5)]
    lease_retry_secs: u64,
    /// This replica's identity in the Lease (default: POD_NAME, else host name and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds between drift checks of a healthy object.
    #[arg(long, default_value_t = 300)]
    resync_secs: u64,
    /// Reconciles running at once per controller.
    #[arg(long, default_value_t = 8)]
    concurrency: u16,
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    format!("{}-{}", if host.is_empty() { "ratio1" } else { &host }, std::process::id())
}

fn crdgen(out: Option<PathBuf>, check: bool) -> anyhow::Result<()> {
    let Some(dir) = out else {
        for (_, crd) in ratio1::crd::all() {
            print!("{}", ratio1::crd::to_yaml(&crd));
        }
        return Ok(());
    };
    let mut stale = vec![];
    for (file, crd) in ratio1::crd::all() {
        let path = dir.join(file);
        let want = ratio1::crd::to_yaml(&crd);
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(want.as_str()) {
                stale.push(path.display().to_string());
            }
        } else {
            std::fs::create_dir_all(&dir)?;
            std::fs::write(&path, want).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        }
    }
    if !stale.is_empty() {
        anyhow::bail!("stale CRDs (run `ratio1 crdgen --out {}`): {}", dir.display(), stale.join(", "));
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let result = match cli.command {
        Command::Version => {
            println!("ratio1 {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Crdgen { out, check, docs } => crdgen(out, check).and_then(|()| match docs {
            Some(path) => {
                let crds: Vec<_> = ratio1::crd::all().into_iter().map(|(_, c)| c).collect();
                std::fs::write(&path, ratio1::crd::reference::markdown(&crds))
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
            }
            None => Ok(()),
        }),
        Command::Operator(a) => {
            let cfg = OperatorConfig {
                namespace: a.namespace,
                metrics_addr: a.metrics_addr,
                leader_election: a.leader_election,
                lease_name: a.lease_name,
                lease_duration: Duration::from_secs(a.lease_duration_secs),
                lease_retry: Duration::from_secs(a.lease_retry_secs),
                identity: a.identity.unwrap_or_else(default_identity),
                resync: Duration::from_secs(a.resync_secs),
                concurrency: a.concurrency,
            };
            run(cfg).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: what failed, then its causes.
            let causes: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("error: {}", causes.join(": "));
            ExitCode::FAILURE
        }
    }
}
