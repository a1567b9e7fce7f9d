//! `ratio1`: the operator and its tools, one binary.

use clap::{Parser, Subcommand};
use ratio1::controller::run::{run, OperatorConfig};
use ratio1::telemetry::{self, LogFormat};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

mod economy_cli;
mod edil_cli;

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
    Operator(Box<OperatorArgs>),
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
    /// Issue and check node licenses; link them to nodes in the network's
    /// registry.
    #[command(subcommand)]
    License(LicenseCmd),
    /// Claim a license's Proof-of-Availability rewards.
    #[command(subcommand)]
    Rewards(economy_cli::RewardsCmd),
    /// The token economy as the ledger holds it.
    #[command(subcommand)]
    Economy(economy_cli::EconomyCmd),
    /// Look at the network as a running operator sees it.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Read and write CSTORE, the network's replicated state, through a
    /// running operator.
    Cstore(CstoreArgs),
    /// OracleSync: where the last epochs stand; check a final epoch record.
    #[command(subcommand)]
    Oracle(OracleCmd),
    /// Network placement of R1Pipelines: where one would go, where one runs.
    Deeploy(DeeployArgs),
    /// R1FS, the network's content store.
    Fs(FsArgs),
    /// EDIL: the federated trainings an operator runs (`status`), and its
    /// cryptography and built-in trainer by hand (keys, train, encrypt,
    /// aggregate, decrypt: files, no network).
    #[command(subcommand)]
    Edil(edil_cli::EdilCmd),
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum LicenseCmd {
    /// Create an issuer key pair: the secret goes to --out (mode 0600), the
    /// public key (what networks trust) is printed.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a license bound to a node's PeerId; prints the token.
    Issue {
        /// File written by `license keygen`.
        #[arg(long)]
        issuer_key: PathBuf,
        #[arg(long)]
        peer_id: String,
        #[arg(long, value_enum, default_value = "ND")]
        class: ratio1::dauth::license::Class,
        /// Validity in days from now.
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// License id (default: class and a random suffix).
        #[arg(long)]
        id: Option<String>,
    },
    /// Revoke a license: sign a revocation and write it to CSTORE through a
    /// running operator, which replicates it to every node (each checks the
    /// issuer's signature and disconnects the license's node).
    Revoke {
        /// File written by `license keygen` (the issuer of the license).
        #[arg(long)]
        issuer_key: PathBuf,
        /// The license id to revoke.
        #[arg(long)]
        id: String,
        /// The operator's local API (`--api-addr`).
        #[arg(long, default_value = "http://127.0.0.1:9090", env = "RATIO1_API")]
        endpoint: String,
    },
    #[command(flatten)]
    Registry(economy_cli::RegistryCmd),
    /// Verify a token: exit 0 and print its claims, or exit 1 with the reason.
    Verify {
        token: String,
        /// Public key of a trusted issuer (repeatable).
        #[arg(long = "trusted-issuer", required = true)]
        trusted_issuers: Vec<String>,
        /// The PeerId the license must be bound to (default: the one it names).
        #[arg(long)]
        peer_id: Option<String>,
    },
}

#[derive(Subcommand)]
enum OracleCmd {
    /// The last two closed epochs as an operator sees them (final, faulty
    /// or collecting; participants and signers), the registered oracles
    /// and recent oracle misbehaviour.
    Status {
        /// The operator's local API (`--api-addr`).
        #[arg(long, default_value = "http://127.0.0.1:9090", env = "RATIO1_API")]
        endpoint: String,
    },
    /// Check an epoch's final record, trusting nothing of the node that
    /// serves it: every signature, every signer's license from a trusted
    /// issuer, and signers more than half of the registered oracles. Exit 0
    /// and print the agreed table, or 1 with the reason.
    Verify {
        epoch: u64,
        /// Public key of a trusted license issuer (repeatable).
        #[arg(long = "trusted-issuer", required = true)]
        trusted_issuers: Vec<String>,
        /// The operator's local API (`--api-addr`) to read the record from.
        #[arg(long, default_value = "http://127.0.0.1:9090", env = "RATIO1_API")]
        endpoint: String,
        /// Read the record (its JSON) from this file instead.
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct CstoreArgs {
    /// The operator's local API (`--api-addr`).
    #[arg(long, global = true, default_value = "http://127.0.0.1:9090", env = "RATIO1_API")]
    endpoint: String,
    #[command(subcommand)]
    cmd: CstoreCmd,
}

#[derive(clap::Args)]
struct FsArgs {
    /// The operator's local API (`--api-addr`).
    #[arg(long, global = true, default_value = "http://127.0.0.1:9090", env = "RATIO1_API")]
    endpoint: String,
    #[command(subcommand)]
    cmd: FsCmd,
}

/// The key of sealed content: a file, or the key itself in the
/// environment (as pods get it from a Secret).
#[derive(clap::Args)]
struct KeyArgs {
    /// Key file: base64 of 32 bytes (`add --encrypt` makes it, mode 0600,
    /// if it does not exist: keep it, nothing else can open the content).
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// The key itself (base64), read from this variable only, never from
    /// a flag (a flag's value shows in `ps`); a Secret's key in pods.
    #[arg(
        long = "key-from-env",
        hide = true,
        env = "RATIO1_R1FS_KEY",
        hide_env_values = true,
        conflicts_with = "key_file"
    )]
    key_env: Option<String>,
}

impl KeyArgs {
    /// The key, if one is given; with `create`, a key file that does not
    /// exist is made (and said so on stderr).
    fn key(&self, create: bool) -> anyhow::Result<Option<ratio1::r1fs::seal::Key>> {
        if let Some(text) = &self.key_env {
            return Ok(Some(ratio1::r1fs::seal::parse_key(text, "RATIO1_R1FS_KEY")?));
        }
        let Some(path) = &self.key_file else { return Ok(None) };
        let (key, new) = ratio1::r1fs::seal::key_file(path, create)?;
        if new {
            eprintln!("new key written to {}: keep it, nothing else can open this content", path.display());
        }
        Ok(Some(key))
    }
}

#[derive(Subcommand)]
enum FsCmd {
    /// Add a file or directory to R1FS through a running operator and pin
    /// it there; prints its CID, the one `ipfs add --cid-version 1` gives
    /// (CIDv1, raw leaves, 256 KiB chunks, balanced layout). With
    /// --only-hash, only prints the CID: no operator needed.
    Add {
        /// Compute the CID only; store nothing.
        #[arg(long)]
        only_hash: bool,
        /// Include files and directories whose name starts with `.` (as
        /// `ipfs add -r --hidden`).
        #[arg(long)]
        hidden: bool,
        /// Owner of the pin (each owner releases its own pin).
        #[arg(long, default_value = ratio1::r1fs::api::DEFAULT_OWNER)]
        owner: String,
        /// Seal the file with AES-256-GCM before adding it (the CID is of
        /// the ciphertext: the nodes that hold it cannot read it); needs
        /// --key-file (made if it does not exist) or RATIO1_R1FS_KEY.
        #[arg(long, conflicts_with = "only_hash")]
        encrypt: bool,
        #[command(flatten)]
        key: KeyArgs,
        /// (The operator's import Jobs) pin for this `import/…` owner
        /// through the gateway's import routes, with RATIO1_IMPORT_TOKEN.
        #[arg(long, hide = true, env = "RATIO1_IMPORT_OWNER", requires = "import_token")]
        import_owner: Option<String>,
        #[arg(long, hide = true, env = "RATIO1_IMPORT_TOKEN")]
        import_token: Option<String>,
        path: PathBuf,
    },
    /// Write a file or directory to OUT (default: ./CID), fetched from
    /// peers by the operator if it does not hold it.
    Get {
        cid: String,
        out: Option<PathBuf>,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Write a file's content to stdout.
    Cat {
        cid: String,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Keep content on the operator's node (fetched from peers first).
    Pin {
        cid: String,
        #[arg(long, default_value = ratio1::r1fs::api::DEFAULT_OWNER)]
        owner: String,
    },
    /// Release a pin; unpinned blocks go at the next GC.
    Unpin {
        cid: String,
        #[arg(long, default_value = ratio1::r1fs::api::DEFAULT_OWNER)]
        owner: String,
    },
    /// List the pins of the operator's node.
    Ls,
    /// What the node holds of CID, who pins it, which nodes hold it.
    Stat { cid: String },
    /// Collect blocks no pin reaches.
    Gc,
}

#[derive(clap::Args)]
struct DeeployArgs {
    /// The operator's local API (`--api-addr`).
    #[arg(long, global = true, default_value = "http://127.0.0.1:9090", env = "RATIO1_API")]
    endpoint: String,
    #[command(subcommand)]
    cmd: DeeployCmd,
}

#[derive(Subcommand)]
enum DeeployCmd {
    /// Print where the R1Pipeline in FILE (YAML or JSON) would run if it
    /// were applied on this operator's cluster, and why; applies nothing.
    Plan { file: PathBuf },
    /// Print where an R1Pipeline runs across the network.
    Status {
        name: String,
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
    },
}

/// Keys are paths; `~/rest` names `node/<this node's PeerId>/rest`, the
/// namespace a node may write. Values are JSON (quote strings: '"text"').
#[derive(Subcommand)]
enum CstoreCmd {
    /// Print a key's value.
    Get { key: String },
    /// Set a key to a JSON value.
    Set {
        key: String,
        value: String,
        /// Seconds until the key expires.
        #[arg(long)]
        ttl: Option<f64>,
    },
    /// Delete a key.
    Del { key: String },
    /// Set a field of a hash to a JSON value.
    Hset {
        hash: String,
        field: String,
        value: String,
        #[arg(long)]
        ttl: Option<f64>,
    },
    /// Print a field of a hash.
    Hget { hash: String, field: String },
    /// Print every field of a hash (`field<TAB>value`).
    Hgetall { hash: String },
    /// Delete a field of a hash.
    Hdel { hash: String, field: String },
    /// List keys and hash names starting with a prefix.
    Keys {
        #[arg(default_value = "")]
        prefix: String,
    },
    /// Print changes under a prefix as they arrive, one JSON line each.
    Watch {
        #[arg(default_value = "")]
        prefix: String,
        /// Stop after this many changes.
        #[arg(long)]
        count: Option<usize>,
    },
    /// The replica's size, and anti-entropy with each peer.
    Status,
}

#[derive(Subcommand)]
enum NetworkCmd {
    /// Table of the licensed peers this node sees.
    Peers {
        /// The operator's local API (`--api-addr`).
        #[arg(long, default_value = "http://127.0.0.1:9090")]
        endpoint: String,
    },
    /// The current epoch and the time left in it, and each peer's
    /// availability in the last epoch as this node saw its heartbeats.
    Epoch {
        /// The operator's local API (`--api-addr`).
        #[arg(long, default_value = "http://127.0.0.1:9090")]
        endpoint: String,
    },
}

#[derive(clap::Args)]
struct OperatorArgs {
    /// Namespace of the operator (identity and license Secrets, leader Lease).
    #[arg(long, env = "POD_NAMESPACE", default_value = "ratio1-system")]
    namespace: String,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "RATIO1_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Address of the local API (/v1/network: peers, licenses, dAuth log).
    #[arg(long, env = "RATIO1_API_ADDR", default_value = "127.0.0.1:9090")]
    api_addr: SocketAddr,
    /// Campaign for a Lease and reconcile only while holding it.
    #[arg(long, env = "RATIO1_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the leader Lease.
    #[arg(long, default_value = "ratio1-operator-leader")]
    lease_name: String,
    /// Seconds a candidate waits, from when it last saw the leader Lease
    /// change, before taking it.
    #[arg(long, default_value_t = 15)]
    lease_duration_secs: u64,
    /// Seconds the leader may go without renewing before it steps down
    /// (exits); less than the lease duration, more than the retry period.
    #[arg(long, default_value_t = 10)]
    lease_renew_deadline_secs: u64,
    /// Seconds between renewals (and candidate retries).
    #[arg(long, default_value_t = 2)]
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
    /// Public key of a license issuer this network trusts (repeatable).
    #[arg(long = "trusted-issuer", env = "RATIO1_TRUSTED_ISSUERS", value_delimiter = ',')]
    trusted_issuers: Vec<String>,
    /// File of revoked licenses, one `<issuer key id> <license id>` per
    /// line; re-read every few seconds while running.
    #[arg(long, env = "RATIO1_REVOKED_LICENSES")]
    revoked_licenses: Option<PathBuf>,
    /// libp2p listen multiaddrs (override R1Node spec.p2p.listen).
    #[arg(long = "p2p-listen", value_delimiter = ',')]
    p2p_listen: Vec<String>,
    /// Bootstrap peers (override spec.p2p.bootstrap).
    #[arg(long = "p2p-bootstrap", value_delimiter = ',')]
    p2p_bootstrap: Vec<String>,
    /// External addresses (override spec.p2p.external).
    #[arg(long = "p2p-external", value_delimiter = ',')]
    p2p_external: Vec<String>,
    /// Seconds between heartbeats.
    #[arg(long, default_value_t = ratio1::p2p::Tuning::default().heartbeat_interval.as_secs())]
    heartbeat_interval_secs: u64,
    /// Seconds without a heartbeat after which a peer is stale.
    #[arg(long, default_value_t = ratio1::p2p::Tuning::default().heartbeat_timeout.as_secs())]
    heartbeat_timeout_secs: u64,
    /// Seconds a new peer has to prove its license.
    #[arg(long, default_value_t = ratio1::p2p::Tuning::default().admission_timeout.as_secs())]
    admission_timeout_secs: u64,
    /// Seconds a refused peer stays blocked.
    #[arg(long, default_value_t = ratio1::p2p::Tuning::default().block_duration.as_secs())]
    block_secs: u64,
    /// Start of epoch 0, Unix ms; the same on every node of a network.
    #[arg(long, default_value_t = ratio1::oracle::epoch::DEFAULT_GENESIS_MS)]
    epoch_genesis_ms: u64,
    /// Length of an epoch in seconds (Ratio1: a day); the same on every
    /// node, and at least ten heartbeat intervals.
    #[arg(long, default_value_t = ratio1::oracle::epoch::Epochs::DAY_MS / 1000)]
    epoch_length_secs: u64,
    /// etcd client URLs of this cluster's own CSTORE etcd (never the
    /// Kubernetes API's etcd, nor another cluster's); none: CSTORE off.
    #[arg(long, env = "RATIO1_CSTORE_ENDPOINTS", value_delimiter = ',')]
    cstore_endpoints: Vec<String>,
    /// CA certificate (PEM) that signed the CSTORE etcd's server certificate.
    #[arg(long, env = "RATIO1_CSTORE_CA_FILE")]
    cstore_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for CSTORE's etcd.
    #[arg(long, env = "RATIO1_CSTORE_CERT_FILE", requires = "cstore_key_file")]
    cstore_cert_file: Option<PathBuf>,
    /// Client key (PEM) for CSTORE's etcd.
    #[arg(long, env = "RATIO1_CSTORE_KEY_FILE", requires = "cstore_cert_file")]
    cstore_key_file: Option<PathBuf>,
    /// Root of CSTORE's keys in its etcd.
    #[arg(long, default_value_t = ratio1::cstore::CstoreConfig::default().prefix)]
    cstore_prefix: String,
    /// Seconds between anti-entropy rounds (with one random peer each).
    #[arg(long, default_value_t = ratio1::cstore::CstoreConfig::default().anti_entropy_interval.as_secs_f64())]
    cstore_anti_entropy_secs: f64,
    /// Seconds a tombstone is kept before it is collected.
    #[arg(long, default_value_t = ratio1::cstore::CstoreConfig::default().tombstone_horizon.as_secs())]
    cstore_tombstone_horizon_secs: u64,
    /// Seconds without a heartbeat after which a cluster loses the
    /// pipelines placed on it (default: 3 heartbeat intervals).
    #[arg(long)]
    deeploy_failover_after_secs: Option<f64>,
    /// Seconds between checks of the pipelines placed here against their
    /// intents (changes are applied at once; this catches drift).
    #[arg(long, default_value_t = ratio1::deeploy::DeeployConfig::default().resync.as_secs())]
    deeploy_resync_secs: u64,
    /// OracleSync: seconds each step may take after an epoch ends (local
    /// tables by 1×, medians by 2×, signatures by 3×); 3× must be less
    /// than an epoch (default: 30 s, or a tenth of the epoch if shorter).
    #[arg(long)]
    oracle_phase_secs: Option<f64>,
    /// OracleSync: least availability (0..255) in the previous final epoch
    /// for an oracle to take part (Ratio1: 230, i.e. 90%).
    #[arg(long, default_value_t = ratio1::oracle::agree::Rules::default().min_availability)]
    oracle_min_availability: u8,
    /// OracleSync: an oracle's value further than this from the median is
    /// an outlier (Ratio1: 50).
    #[arg(long, default_value_t = ratio1::oracle::agree::Rules::default().outlier_limit)]
    oracle_outlier_limit: u8,
    /// OracleSync: participants must be more than this many per mille of
    /// the registered oracles (Ratio1: 300).
    #[arg(long, default_value_t = ratio1::oracle::agree::Rules::default().registered_permille,
          value_parser = clap::value_parser!(u32).range(0..=1000))]
    oracle_registered_permille: u32,
    /// OracleSync: … and more than this many per mille of the online
    /// oracles (Ratio1: 400).
    #[arg(long, default_value_t = ratio1::oracle::agree::Rules::default().online_permille,
          value_parser = clap::value_parser!(u32).range(0..=1000))]
    oracle_online_permille: u32,
    /// License registry: least seconds between two links of one license
    /// (Ratio1: 24 h).
    #[arg(long, default_value_t = 86_400)]
    relink_secs: u64,
    /// The economy's constants (supply, shares, epochs of each license
    /// class, adoption thresholds, PoAI split): a JSON file of the fields
    /// to change (docs/economy.md); Ratio1's values otherwise.
    #[arg(long)]
    economy_constants: Option<PathBuf>,
    /// A dataset this node holds for EDIL's federated training, as
    /// NAME=PATH (a CSV of numbers, the 0/1 label last); repeatable. It
    /// never leaves this node: only encrypted updates trained on it do.
    #[arg(long = "edil-dataset", value_name = "NAME=PATH")]
    edil_datasets: Vec<String>,
    /// A trainer image this node runs for EDIL trainings that name a
    /// container trainer: the image, or a prefix ending in `/`, `:` or
    /// `@` (e.g. `registry.example/trainers/`); repeatable. The image
    /// reads this node's shard: allow only images you trust. A container
    /// trainer mounts the dataset's PATH from the node (hostPath,
    /// read-only) and needs R1FS delivery to pods (`--r1fs-pod-endpoint`).
    /// None: no container trainer runs here.
    #[arg(long = "edil-trainer-image", value_name = "PREFIX")]
    edil_trainer_images: Vec<String>,
    /// Run a trainer's `command` and `args`, which the model's owner
    /// chooses (with a general-purpose image, any program on this node's
    /// shard); by default only trainers that set neither run.
    #[arg(long = "edil-trainer-owner-args")]
    edil_trainer_owner_args: bool,
    /// Directory of the operator's data: R1FS blocks and pins under
    /// `r1fs/`. None: R1FS off. Without CSTORE, R1FS holds, serves and
    /// fetches content but replicates nothing.
    #[arg(long, env = "RATIO1_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Bytes of R1FS blocks above which unpinned blocks are collected.
    #[arg(long)]
    r1fs_quota_bytes: Option<u64>,
    /// Address of R1FS's read-only gateway for pods (`GET /ipfs/<cid>`);
    /// the local API serves it too.
    #[arg(long)]
    r1fs_gateway_addr: Option<std::net::SocketAddr>,
    /// URL of the R1FS gateway as pods reach it (`$(HOST_IP)` stands for
    /// the node's IP), for the init containers that deliver R1Pipelines'
    /// models and inputs; with --r1fs-fetch-image.
    #[arg(long, requires = "r1fs_fetch_image")]
    r1fs_pod_endpoint: Option<String>,
    /// Image with `ratio1` on its PATH (the operator's own) for those init
    /// containers; with --r1fs-pod-endpoint.
    #[arg(long, requires = "r1fs_pod_endpoint")]
    r1fs_fetch_image: Option<String>,
}

fn r1fs_config(a: &OperatorArgs) -> Option<ratio1::r1fs::service::R1fsConfig> {
    let mut c = ratio1::r1fs::service::R1fsConfig::new(a.data_dir.as_ref()?.join("r1fs"));
    c.quota_bytes = a.r1fs_quota_bytes;
    c.gateway_addr = a.r1fs_gateway_addr;
    if let (Some(endpoint), Some(image)) = (&a.r1fs_pod_endpoint, &a.r1fs_fetch_image) {
        c.delivery = Some(ratio1::r1fs::service::Delivery { endpoint: endpoint.clone(), image: image.clone() });
    }
    Some(c)
}

fn deeploy_config(a: &OperatorArgs) -> anyhow::Result<ratio1::deeploy::DeeployConfig> {
    let failover = a.deeploy_failover_after_secs.unwrap_or(3.0 * a.heartbeat_interval_secs.max(1) as f64);
    anyhow::ensure!(
        failover.is_finite() && failover >= a.heartbeat_interval_secs.max(1) as f64,
        "--deeploy-failover-after-secs must be at least one heartbeat interval ({} s)",
        a.heartbeat_interval_secs.max(1)
    );
    Ok(ratio1::deeploy::DeeployConfig {
        failover_after: Duration::from_secs_f64(failover),
        resync: Duration::from_secs(a.deeploy_resync_secs.max(1)),
    })
}

fn oracle_config(a: &OperatorArgs) -> anyhow::Result<ratio1::oracle::service::OracleConfig> {
    let length = a.epoch_length_secs as f64;
    let phase = a.oracle_phase_secs.unwrap_or((length / 10.0).min(30.0));
    anyhow::ensure!(
        phase.is_finite() && phase > 0.0 && 3.0 * phase < length,
        "--oracle-phase-secs ({phase}) must be positive and three of them less than an epoch ({length} s)"
    );
    Ok(ratio1::oracle::service::OracleConfig {
        phase: Duration::from_secs_f64(phase),
        rules: ratio1::oracle::agree::Rules {
            min_availability: a.oracle_min_availability,
            outlier_limit: a.oracle_outlier_limit,
            registered_permille: a.oracle_registered_permille,
            online_permille: a.oracle_online_permille,
        },
    })
}

fn edil_config(a: &OperatorArgs) -> anyhow::Result<ratio1::edil::service::EdilConfig> {
    let mut datasets = std::collections::BTreeMap::new();
    for d in &a.edil_datasets {
        let (name, path) =
            d.split_once('=').ok_or_else(|| anyhow::anyhow!("--edil-dataset {d:?}: NAME=PATH expected"))?;
        anyhow::ensure!(!name.is_empty() && !path.is_empty(), "--edil-dataset {d:?}: NAME=PATH expected");
        anyhow::ensure!(std::path::Path::new(path).is_file(), "--edil-dataset {name}: {path} is not a file");
        anyhow::ensure!(
            datasets.insert(name.to_string(), PathBuf::from(path)).is_none(),
            "--edil-dataset {name} twice"
        );
    }
    for i in &a.edil_trainer_images {
        anyhow::ensure!(
            !i.is_empty() && i.len() <= 256,
            "--edil-trainer-image {i:?}: an image or prefix of 1..=256 bytes"
        );
    }
    Ok(ratio1::edil::service::EdilConfig {
        datasets,
        trainer_images: a.edil_trainer_images.clone(),
        trainer_owner_args: a.edil_trainer_owner_args,
    })
}

fn economy_config(a: &OperatorArgs) -> anyhow::Result<ratio1::economy::service::EconomyConfig> {
    let constants = match &a.economy_constants {
        None => Default::default(),
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?;
            let c: ratio1::economy::Constants =
                serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            c.validate().map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            c
        }
    };
    Ok(ratio1::economy::service::EconomyConfig {
        registry: ratio1::economy::registry::Rules { relink_ms: a.relink_secs.saturating_mul(1000) },
        constants,
    })
}

fn cstore_config(a: &OperatorArgs) -> anyhow::Result<Option<ratio1::cstore::CstoreConfig>> {
    if a.cstore_endpoints.is_empty() {
        return Ok(None);
    }
    anyhow::ensure!(
        a.cstore_anti_entropy_secs.is_finite() && a.cstore_anti_entropy_secs >= 0.05,
        "--cstore-anti-entropy-secs must be at least 0.05"
    );
    anyhow::ensure!(
        a.cstore_prefix.starts_with('/') && a.cstore_prefix.ends_with('/'),
        "--cstore-prefix must start and end with /"
    );
    Ok(Some(ratio1::cstore::CstoreConfig {
        endpoints: a.cstore_endpoints.clone(),
        tls: ratio1::cstore::TlsFiles {
            ca: a.cstore_ca_file.clone(),
            cert: a.cstore_cert_file.clone(),
            key: a.cstore_key_file.clone(),
        },
        prefix: a.cstore_prefix.clone(),
        anti_entropy_interval: Duration::from_secs_f64(a.cstore_anti_entropy_secs),
        tombstone_horizon: Duration::from_secs(a.cstore_tombstone_horizon_secs.max(1)),
        ..Default::default()
    }))
}

/// The public keys given with `--trusted-issuer`.
fn issuer_keys(keys: &[String]) -> anyhow::Result<Vec<libp2p_identity::ed25519::PublicKey>> {
    keys.iter().map(|k| ratio1::dauth::license::decode_public(k).map_err(anyhow::Error::msg)).collect()
}

fn net_options(a: &OperatorArgs) -> anyhow::Result<ratio1::controller::NetOptions> {
    use ratio1::dauth::license::TrustStore;
    let issuers = issuer_keys(&a.trusted_issuers)?;
    let revoked = match &a.revoked_licenses {
        Some(p) => ratio1::controller::run::read_revocations(p)?,
        None => Default::default(),
    };
    // A perfect node scores about 255·(L − hb)/L and oracles take part
    // from 230 on: shorter epochs would make every epoch faulty.
    anyhow::ensure!(
        a.epoch_length_secs >= 10 * a.heartbeat_interval_secs.max(1),
        "--epoch-length-secs ({}) must be at least ten heartbeat intervals ({} s)",
        a.epoch_length_secs,
        10 * a.heartbeat_interval_secs.max(1)
    );
    let tuning = ratio1::p2p::Tuning {
        epochs: ratio1::oracle::epoch::Epochs { genesis_ms: a.epoch_genesis_ms, length_ms: a.epoch_length_secs * 1000 },
        heartbeat_interval: Duration::from_secs(a.heartbeat_interval_secs.max(1)),
        heartbeat_timeout: Duration::from_secs(a.heartbeat_timeout_secs.max(1)),
        admission_timeout: Duration::from_secs(a.admission_timeout_secs.max(1)),
        block_duration: Duration::from_secs(a.block_secs),
        ..Default::default()
    };
    Ok(ratio1::controller::NetOptions {
        trust: TrustStore::new(issuers, revoked),
        listen: a.p2p_listen.clone(),
        bootstrap: a.p2p_bootstrap.clone(),
        external: a.p2p_external.clone(),
        tuning,
        cstore: None,
        r1fs: None,
    })
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

async fn license(cmd: LicenseCmd) -> anyhow::Result<()> {
    use ratio1::dauth::license::*;
    match cmd {
        LicenseCmd::Keygen { out } => {
            let kp = libp2p_identity::ed25519::Keypair::generate();
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&out)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out.display()))?;
            writeln!(f, "{}", encode_secret(&kp))?;
            println!("key id:     {}", key_id(&kp.public()));
            println!("public key: {}", encode_public(&kp.public()));
            Ok(())
        }
        LicenseCmd::Issue { issuer_key, peer_id, class, days, id } => {
            let kp = read_issuer_key(&issuer_key)?;
            peer_id.parse::<libp2p_identity::PeerId>().map_err(|_| anyhow::anyhow!("{peer_id:?} is not a PeerId"))?;
            anyhow::ensure!(days > 0, "--days must be positive");
            let now = unix_now();
            let claims = Claims {
                id: id.unwrap_or_else(|| format!("{class}-{:08x}", rand::random::<u32>())),
                class,
                peer: peer_id,
                iat: now,
                exp: now + days * 86_400,
                iss: key_id(&kp.public()),
            };
            println!("{}", issue(&kp, &claims));
            Ok(())
        }
        LicenseCmd::Revoke { issuer_key, id, endpoint } => revoke(issuer_key, id, endpoint).await,
        LicenseCmd::Registry(cmd) => economy_cli::registry(cmd).await,
        LicenseCmd::Verify { token, trusted_issuers, peer_id } => {
            let trust = TrustStore::new(issuer_keys(&trusted_issuers)?, []);
            let peer = match peer_id {
                Some(p) => p,
                None => decode(&token).map(|(c, _, _)| c.peer).map_err(|e| anyhow::anyhow!("{e}"))?,
            };
            let c = trust.verify(&token, &peer, unix_now()).map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "valid: {} license {} for {} (issuer {}), expires {}",
                c.class,
                c.id,
                c.peer,
                c.iss,
                show_time(c.exp)
            );
            Ok(())
        }
    }
}

async fn network(cmd: NetworkCmd) -> anyhow::Result<()> {
    let endpoint = match cmd {
        NetworkCmd::Peers { endpoint } => endpoint,
        NetworkCmd::Epoch { endpoint } => return epoch(&endpoint).await,
    };
    let url = format!("{}/v1/network", endpoint.trim_end_matches('/'));
    let view: serde_json::Value = ratio1::http::get_json(&url).await?;
    let now = ratio1::p2p::now_ms();
    println!("{:<54} {:<12} {:<14} {:<5} {:<16} {:>9}", "PEER", "NODE", "LICENSE", "CLASS", "ROLES", "LAST-HB");
    for p in view["peers"].as_object().into_iter().flat_map(|m| m.values()) {
        let roles: Vec<&str> = p["roles"].as_array().into_iter().flatten().filter_map(|r| r.as_str()).collect();
        let age =
            p["lastHeartbeat"].as_i64().map(|t| format!("{:.1}s ago", (now - t) as f64 / 1000.0)).unwrap_or("-".into());
        println!(
            "{:<54} {:<12} {:<14} {:<5} {:<16} {:>9}",
            p["peerId"].as_str().unwrap_or("?"),
            p["node"].as_str().unwrap_or(""),
            p["licenseId"].as_str().unwrap_or(""),
            p["class"].as_str().unwrap_or(""),
            roles.join(","),
            age
        );
    }
    println!(
        "\nthis node: {} · license: {}",
        view["peerId"].as_str().unwrap_or("?"),
        view["licensed"].get("Ok").or(view["licensed"].get("Err")).and_then(|v| v.as_str()).unwrap_or("not verified")
    );
    Ok(())
}

/// `ratio1 oracle status|verify`.
async fn oracle(cmd: OracleCmd) -> anyhow::Result<()> {
    match cmd {
        OracleCmd::Status { endpoint } => {
            let s = call(http::Method::GET, &format!("{}/v1/oracle", endpoint.trim_end_matches('/')), None).await?;
            let role = if s["oracle"] == true { "an oracle" } else { "not an oracle" };
            let registered = s["registered"].as_array().map_or(0, |r| r.len());
            println!("this node is {role}; {registered} oracles registered; last final epoch: {}", s["lastFinal"]);
            println!(
                "
{:>8} {:<10} {:>12} {:>8} {:>10} {:<8} REASON",
                "EPOCH", "STATE", "PARTICIPANTS", "SIGNERS", "FINAL-AFTER", "STEP"
            );
            for e in s["epochs"].as_array().into_iter().flatten() {
                let after = e["finalAfterMs"].as_u64().map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
                println!(
                    "{:>8} {:<10} {:>12} {:>8} {:>10} {:<8} {}",
                    e["epoch"],
                    e["state"].as_str().unwrap_or(""),
                    format!("{}/{}", e["participants"], e["registered"]),
                    e["signers"],
                    after,
                    e["step"].as_str().unwrap_or("-"),
                    e["reason"].as_str().unwrap_or("")
                );
            }
            for r in s["reports"].as_array().into_iter().flatten() {
                println!(
                    "misbehaviour: {} {} (epoch {}): {}",
                    r["oracle"].as_str().unwrap_or("?"),
                    r["kind"].as_str().unwrap_or("?"),
                    r["epoch"],
                    r["detail"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        OracleCmd::Verify { epoch, trusted_issuers, endpoint, file } => {
            let trust = ratio1::dauth::license::TrustStore::new(issuer_keys(&trusted_issuers)?, []);
            // Every oracle keeps its copy of the record under its own key;
            // each is checked on its own.
            let values: Vec<(String, serde_json::Value)> = match file {
                Some(f) => {
                    let text =
                        std::fs::read_to_string(&f).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", f.display()))?;
                    let v =
                        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{} is not JSON: {e}", f.display()))?;
                    vec![(f.display().to_string(), v)]
                }
                None => {
                    let base = endpoint.trim_end_matches('/');
                    let url =
                        format!("{base}/v1/cstore/keys?{}", query(&[("prefix", ratio1::oracle::sync::ORACLE_PREFIX)]));
                    let keys: Vec<String> = serde_json::from_value(call(http::Method::GET, &url, None).await?)?;
                    let suffix = format!("/epoch/{epoch}/final");
                    let mut out = vec![];
                    for key in keys.into_iter().filter(|k| k.ends_with(&suffix)) {
                        let url = format!("{base}/v1/cstore/get?{}", query(&[("key", &key)]));
                        out.push((key, call(http::Method::GET, &url, None).await?["value"].clone()));
                    }
                    anyhow::ensure!(
                        !out.is_empty(),
                        "no final record of epoch {epoch} at {endpoint} (not decided yet, or faulty)"
                    );
                    out
                }
            };
            let mut good: Vec<(ratio1::oracle::agree::EpochRecord, ratio1::oracle::agree::Verified)> = vec![];
            let mut bad = vec![];
            for (at, value) in values {
                let checked = serde_json::from_value::<ratio1::oracle::agree::EpochRecord>(value)
                    .map_err(|e| format!("{at}: not an epoch record: {e}"))
                    .and_then(|r| {
                        if r.agreed.epoch != epoch {
                            return Err(format!("{at}: a record of epoch {}", r.agreed.epoch));
                        }
                        let v = r.verify(&trust).map_err(|e| format!("{at}: {e}"))?;
                        Ok((r, v))
                    });
                match checked {
                    Ok(rv) => good.push(rv),
                    Err(e) => bad.push(e),
                }
            }
            let tables: std::collections::BTreeSet<String> = good.iter().map(|(r, _)| r.agreed.id()).collect();
            anyhow::ensure!(tables.len() <= 1, "epoch {epoch} has {} different final tables: {tables:?}", tables.len());
            let Some((record, v)) = good.into_iter().max_by_key(|(_, v)| v.signers) else {
                anyhow::bail!("epoch {epoch}'s record does not verify: {}", bad.join("; "));
            };
            println!(
                "epoch {epoch} is final: {} of {} registered oracles signed table {} ({} nodes)",
                v.signers,
                v.registered,
                record.agreed.id(),
                record.agreed.table.len()
            );
            for (oracle, why) in &v.ignored {
                println!("not counted: {oracle}: {why}");
            }
            println!("{:<54} {:>5}", "NODE", "AVAIL");
            for (node, a) in &record.agreed.table {
                println!("{node:<54} {a:>5}");
            }
            Ok(())
        }
    }
}

/// `ratio1 network epoch`.
async fn epoch(endpoint: &str) -> anyhow::Result<()> {
    let url = format!("{}/v1/network", endpoint.trim_end_matches('/'));
    let view: serde_json::Value = ratio1::http::get_json(&url).await?;
    let e = &view["epoch"];
    let Some(current) = e["current"].as_u64() else {
        anyhow::bail!("the operator at {endpoint} reports no epoch (its network is not running, or genesis is ahead)");
    };
    let left = e["endMs"].as_u64().unwrap_or(0).saturating_sub(ratio1::p2p::now_ms() as u64);
    let source = match e["source"].as_str().unwrap_or("") {
        s if s.starts_with("dauth:") => format!("the oracle {}'s, through dAuth", &s[6..]),
        _ => "this node's flags".into(),
    };
    println!(
        "epoch {current}: ends in {} (length {}, genesis {} ms; clock: {source})",
        human_secs(left / 1000),
        human_secs(e["lengthMs"].as_u64().unwrap_or(0) / 1000),
        e["genesisMs"]
    );
    let Some(last) = e["last"].as_u64() else { return Ok(()) };
    if e["complete"] != true {
        println!("\nepoch {last} is not scored here: this node's network started after it began");
        return Ok(());
    }
    println!("\navailability in epoch {last}, from the heartbeats this node received (0..255):");
    println!("{:<54} {:<12} {:>5}", "PEER", "NODE", "AVAIL");
    for (peer, a) in e["observed"].as_object().into_iter().flatten() {
        let node = view["peers"][peer]["node"].as_str().unwrap_or("");
        println!("{peer:<54} {node:<12} {:>5}", a);
    }
    Ok(())
}

fn human_secs(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m{:02}s", s / 3600, s % 3600 / 60, s % 60),
    }
}

/// One call of the CLI to an operator's local API (30 s at most: a write
/// waits for its etcd).
async fn call(method: http::Method, url: &str, body: Option<String>) -> anyhow::Result<serde_json::Value> {
    ratio1::http::request_json(method, url, body, Duration::from_secs(30)).await
}

/// Signs a revocation with the issuer's key and writes it to CSTORE.
async fn revoke(issuer_key: PathBuf, id: String, endpoint: String) -> anyhow::Result<()> {
    use ratio1::dauth::license::{issue_revocation, key_id};
    let kp = read_issuer_key(&issuer_key)?;
    ratio1::cstore::record::check_name("license id", &id).map_err(anyhow::Error::msg)?;
    let proof = issue_revocation(&kp, &id, unix_now());
    let key = ratio1::cstore::rules::revocation_key(&key_id(&kp.public()), &id);
    let url = format!("{}/v1/cstore/set?{}", endpoint.trim_end_matches('/'), query(&[("key", &key)]));
    call(http::Method::PUT, &url, Some(serde_json::json!({ "proof": proof }).to_string())).await?;
    println!("revoked {id}: {key} written to CSTORE; every node disconnects its holder as the record reaches it");
    Ok(())
}

/// The issuer's key pair, from a file written by `license keygen`.
fn read_issuer_key(path: &std::path::Path) -> anyhow::Result<libp2p_identity::ed25519::Keypair> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    ratio1::dauth::license::decode_secret(&text).map_err(anyhow::Error::msg)
}

/// A query string of `pairs`, percent-encoded.
fn query(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).expect("string pairs encode")
}

fn json_arg(value: &str) -> anyhow::Result<String> {
    let v: serde_json::Value = serde_json::from_str(value)
        .map_err(|e| anyhow::anyhow!("value is not JSON ({e}); quote strings, e.g. '\"text\"'"))?;
    Ok(v.to_string())
}

/// A progress bar on stderr for what takes a while (hidden when stderr is
/// not a terminal).
fn progress_bar(total: Option<u64>) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(total, indicatif::ProgressDrawTarget::stderr());
    let template = if total.is_some() {
        "{bytes}/{total_bytes} {wide_bar} {bytes_per_sec} eta {eta}"
    } else {
        "{bytes} {bytes_per_sec} {spinner}"
    };
    bar.set_style(indicatif::ProgressStyle::with_template(template).expect("a valid template"));
    bar
}

/// Bytes of block stream per upload request.
const UPLOAD_BATCH: usize = 8 * 1024 * 1024;

async fn fs(a: FsArgs) -> anyhow::Result<()> {
    let base = a.endpoint.trim_end_matches('/').to_string();
    let long = Duration::from_secs(600);
    let cid_arg =
        |c: &str| ratio1::r1fs::cid::parse(c).map(|c| ratio1::r1fs::cid::canonical(&c)).map_err(anyhow::Error::msg);
    match a.cmd {
        FsCmd::Add { only_hash: true, hidden, path, .. } => {
            let bar = progress_bar(Some(total_size(&path)));
            let added = ratio1::r1fs::add::only_hash(&path, hidden, &mut |n| bar.set_position(n))
                .map_err(|e| anyhow::anyhow!("cannot add: {e}"))?;
            bar.finish_and_clear();
            println!("{}", added.cid);
        }
        FsCmd::Add { only_hash: false, hidden, owner, encrypt, key, import_owner, import_token, path } => {
            // An import Job writes through the gateway's import routes, with its token.
            let (blocks_url, pin_url) = match (&import_owner, &import_token) {
                (Some(o), Some(t)) => {
                    let q = query(&[("owner", o), ("token", t)]);
                    (format!("{base}/v1/r1fs/import/blocks?{q}"), format!("{base}/v1/r1fs/import/pin?{q}"))
                }
                _ => (format!("{base}/v1/r1fs/blocks"), format!("{base}/v1/r1fs/pin?{}", query(&[("owner", &owner)]))),
            };
            let key = match encrypt {
                true => {
                    anyhow::ensure!(
                        std::fs::metadata(&path).map(|m| m.is_file()).unwrap_or(false),
                        "--encrypt seals one file: {} is not a readable file",
                        path.display()
                    );
                    Some(
                        key.key(true)?
                            .ok_or_else(|| anyhow::anyhow!("--encrypt needs --key-file or RATIO1_R1FS_KEY"))?,
                    )
                }
                false => None,
            };
            // Blocks are made here and streamed to the operator in batches;
            // it verifies each, then the pin checks the DAG is whole.
            let bar = progress_bar(Some(total_size(&path)));
            let (tx, mut rx) = tokio::sync::mpsc::channel::<(ratio1::r1fs::cid::Cid, Vec<u8>)>(64);
            let adder = {
                let bar = bar.clone();
                tokio::task::spawn_blocking(move || {
                    let mut sink =
                        |c, b| tx.blocking_send((c, b)).map_err(|_| std::io::Error::other("the upload stopped"));
                    match key {
                        Some(key) => {
                            let f = std::fs::File::open(&path)?;
                            let sealed = ratio1::r1fs::seal::Sealer::new(std::io::BufReader::new(f), &key);
                            ratio1::r1fs::add::add_reader(sealed, &mut sink, &mut |n| bar.set_position(n))
                        }
                        None => ratio1::r1fs::add::add_path(&path, hidden, &mut sink, &mut |n| bar.set_position(n)),
                    }
                })
            };
            let url = blocks_url;
            let mut batch = Vec::with_capacity(UPLOAD_BATCH + 1024 * 1024);
            let post = |batch: Vec<u8>| {
                let url = url.clone();
                async move { ratio1::http::request(http::Method::POST, &url, batch, "application/octet-stream", long).await }
            };
            while let Some((c, b)) = rx.recv().await {
                ratio1::r1fs::api::push_block(&mut batch, &c, &b);
                if batch.len() >= UPLOAD_BATCH {
                    post(std::mem::take(&mut batch)).await?;
                }
            }
            if !batch.is_empty() {
                post(batch).await?;
            }
            let added = adder.await?.map_err(|e| anyhow::anyhow!("cannot add: {e}"))?;
            bar.finish_and_clear();
            let cid = added.cid.to_string();
            call(http::Method::POST, &format!("{pin_url}&{}", query(&[("cid", &cid)])), None).await?;
            println!("{cid}");
        }
        FsCmd::Get { cid, out, key } => {
            let cid = cid_arg(&cid)?;
            let out = out.unwrap_or_else(|| PathBuf::from(&cid));
            let key = key.key(false)?;
            let bar = progress_bar(None);
            let n = fs_get(&base, &cid, &out, &bar, 0, key.as_ref()).await?;
            bar.finish_and_clear();
            eprintln!("{cid}: {n} bytes written to {}", out.display());
        }
        FsCmd::Cat { cid, key } => {
            let url = format!("{base}/ipfs/{}", cid_arg(&cid)?);
            let out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
            match key.key(false)? {
                Some(key) => {
                    let mut opener = ratio1::r1fs::seal::Opener::new(out, &key);
                    ratio1::r1fs::api::download(&url, &mut opener, &|_| {}).await?;
                    opener.finish()?;
                }
                None => {
                    ratio1::r1fs::api::download(&url, &mut { out }, &|_| {}).await?;
                }
            }
        }
        FsCmd::Pin { cid, owner } => {
            let q = query(&[("cid", &cid_arg(&cid)?), ("owner", &owner)]);
            let v = ratio1::http::request(
                http::Method::POST,
                &format!("{base}/v1/r1fs/pin?{q}"),
                vec![],
                "application/json",
                long,
            )
            .await?;
            println!("pinned {} ({} bytes, {} blocks)", v["cid"].as_str().unwrap_or("?"), v["dagSize"], v["blocks"]);
        }
        FsCmd::Unpin { cid, owner } => {
            let q = query(&[("cid", &cid_arg(&cid)?), ("owner", &owner)]);
            let v = call(http::Method::DELETE, &format!("{base}/v1/r1fs/pin?{q}"), None).await?;
            println!("unpinned {} ({} owner(s) left)", v["cid"].as_str().unwrap_or("?"), v["owners"]);
        }
        FsCmd::Ls => {
            let v = call(http::Method::GET, &format!("{base}/v1/r1fs/pins"), None).await?;
            println!("{:<62} {:>12}  OWNERS", "CID", "BYTES");
            for p in v["pins"].as_array().into_iter().flatten() {
                let owners = p["owners"]
                    .as_object()
                    .map(|o| o.keys().cloned().collect::<Vec<_>>().join(","))
                    .unwrap_or_default();
                let size = p["owners"]
                    .as_object()
                    .and_then(|o| o.values().next())
                    .map(|p| p["dagSize"].clone())
                    .unwrap_or_default();
                println!("{:<62} {:>12}  {owners}", p["cid"].as_str().unwrap_or("?"), size);
            }
        }
        FsCmd::Stat { cid } => {
            let q = query(&[("cid", &cid_arg(&cid)?)]);
            let v = call(http::Method::GET, &format!("{base}/v1/r1fs/stat?{q}"), None).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        FsCmd::Gc => {
            let v = call(http::Method::POST, &format!("{base}/v1/r1fs/gc"), None).await?;
            println!("removed {} blocks, freed {} bytes, kept {}", v["removed"], v["freed"], v["kept"]);
        }
    }
    Ok(())
}

/// Writes `cid` to `out`: a file, or a directory with everything under it
/// (`/v1/r1fs/ls` says which); returns the bytes written.
fn fs_get<'a>(
    base: &'a str,
    cid: &'a str,
    out: &'a std::path::Path,
    bar: &'a indicatif::ProgressBar,
    done: u64,
    key: Option<&'a ratio1::r1fs::seal::Key>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<u64>> + Send + 'a>> {
    Box::pin(async move {
        let url = format!("{base}/ipfs/{cid}");
        let listing = ratio1::r1fs::api::list_dir(base, cid).await?;
        let Some(entries) = listing else {
            let tmp = out.with_extension("r1fs-partial");
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(&tmp).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?,
            );
            let n = match key {
                Some(key) => {
                    let mut opener = ratio1::r1fs::seal::Opener::new(f, key);
                    let got = ratio1::r1fs::api::download(&url, &mut opener, &|n| bar.set_position(done + n)).await;
                    // Nothing of content that does not open is left behind.
                    if let Err(e) = got.and_then(|_| opener.finish().map(drop).map_err(anyhow::Error::from)) {
                        let _ = std::fs::remove_file(&tmp);
                        return Err(e);
                    }
                    std::fs::metadata(&tmp)?.len()
                }
                None => {
                    let n = ratio1::r1fs::api::download(&url, &mut f, &|n| bar.set_position(done + n)).await?;
                    drop(f);
                    n
                }
            };
            std::fs::rename(&tmp, out)?;
            return Ok(n);
        };
        anyhow::ensure!(key.is_none(), "{cid} is a directory: content added with --encrypt is one file");
        std::fs::create_dir_all(out).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out.display()))?;
        let mut total = 0;
        for (name, child) in entries {
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                anyhow::bail!("{cid} has an entry named {name:?}: refusing to write outside {}", out.display());
            }
            total += fs_get(base, &child, &out.join(&name), bar, done + total, None).await?;
        }
        Ok(total)
    })
}

/// Bytes of the files under `path` (for the progress bar; 0 on error).
fn total_size(path: &std::path::Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    if meta.is_file() {
        return meta.len();
    }
    if !meta.is_dir() {
        return 0;
    }
    std::fs::read_dir(path).map(|it| it.flatten().map(|e| total_size(&e.path())).sum()).unwrap_or(0)
}

/// Reads one R1Pipeline from a YAML or JSON file, with a one-line cause.
fn read_pipeline(file: &std::path::Path) -> anyhow::Result<ratio1::crd::R1Pipeline> {
    let text = std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(<serde_yaml::Value as serde::Deserialize>::deserialize)
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{}: not YAML: {e}", file.display()))?;
    let mut found = docs.into_iter().filter(|d| d.get("kind").and_then(|k| k.as_str()) == Some("R1Pipeline"));
    let doc = found.next().ok_or_else(|| anyhow::anyhow!("{}: holds no R1Pipeline", file.display()))?;
    anyhow::ensure!(found.next().is_none(), "{}: holds several R1Pipelines; give one", file.display());
    serde_yaml::from_value(doc).map_err(|e| anyhow::anyhow!("{}: not a valid R1Pipeline: {e}", file.display()))
}

async fn deeploy(a: DeeployArgs) -> anyhow::Result<()> {
    use http::Method;
    let base = format!("{}/v1/deeploy", a.endpoint.trim_end_matches('/'));
    match a.cmd {
        DeeployCmd::Plan { file } => {
            let p = read_pipeline(&file)?;
            let v = call(Method::POST, &format!("{base}/plan"), Some(serde_json::to_string(&p)?)).await?;
            let plan = &v["plan"];
            println!("{:<20} {:<54} {:<8} WHY", "NODE", "PEER", "CHOSEN");
            for x in plan["verdicts"].as_array().into_iter().flatten() {
                let why = match (x["chosen"].as_bool(), x["reason"].as_str()) {
                    (Some(true), _) if x["peer"] == v["origin"] => "fits (the origin)",
                    (Some(true), _) => "fits",
                    (_, Some(r)) => r,
                    _ => "fits, not needed",
                };
                let chosen = if x["chosen"] == true { "yes" } else { "no" };
                println!(
                    "{:<20} {:<54} {:<8} {why}",
                    x["node"].as_str().unwrap_or(""),
                    x["peer"].as_str().unwrap_or(""),
                    chosen
                );
            }
            let placed = plan["targets"].as_array().map_or(0, |t| t.len());
            println!("placed on {placed} of {} clusters", plan["wanted"]);
            if let Some(msg) = plan["unmet"].get(1).and_then(|m| m.as_str()) {
                println!("{}: {msg}", plan["unmet"][0].as_str().unwrap_or(""));
            }
        }
        DeeployCmd::Status { name, namespace } => {
            let url = format!("{base}/status?{}", query(&[("namespace", &namespace), ("name", &name)]));
            let v = call(Method::GET, &url, None).await?;
            let all = v["pipelines"].as_array().cloned().unwrap_or_default();
            anyhow::ensure!(!all.is_empty(), "no placement of {namespace}/{name} is known to this node");
            for p in all {
                let i = &p["intent"];
                println!(
                    "{namespace}/{name} from {} ({}), generation {}, spec {}",
                    i["originNode"].as_str().unwrap_or("?"),
                    p["origin"].as_str().unwrap_or("?"),
                    i["generation"],
                    i["specHash"].as_str().unwrap_or("?")
                );
                println!("  {:<20} {:<54} {:>8} {:>6} {:<10} MESSAGE", "NODE", "PEER", "REPLICAS", "READY", "PHASE");
                let reports = p["reports"].as_array().cloned().unwrap_or_default();
                for (peer, replicas) in i["targets"].as_object().into_iter().flatten() {
                    let r = reports.iter().find(|r| r["peer"] == *peer).map(|r| &r["report"]);
                    let current = r.filter(|r| r["specHash"] == i["specHash"]);
                    let (ready, phase, msg) = match current {
                        Some(r) if r["refused"].is_string() => {
                            (0, "Refused".to_string(), r["refused"].as_str().unwrap_or("").to_string())
                        }
                        Some(r) => (
                            r["readyReplicas"].as_i64().unwrap_or(0).clamp(0, replicas.as_i64().unwrap_or(0)),
                            r["phase"].as_str().unwrap_or("?").to_string(),
                            r["message"].as_str().unwrap_or("").to_string(),
                        ),
                        None if p["origin"] == *peer => {
                            (0, "-".into(), "the origin (see kubectl get r1p there)".into())
                        }
                        None => (0, "Pending".into(), "no report for this spec yet".into()),
                    };
                    let node = r.and_then(|r| r["node"].as_str()).unwrap_or("");
                    println!("  {node:<20} {peer:<54} {replicas:>8} {ready:>6} {phase:<10} {msg}");
                }
            }
        }
    }
    Ok(())
}

async fn cstore(a: CstoreArgs) -> anyhow::Result<()> {
    use http::Method;
    let base = format!("{}/v1/cstore", a.endpoint.trim_end_matches('/'));
    let ttl = |t: Option<f64>| t.map(|t| format!("&ttl={t}")).unwrap_or_default();
    let show = |v: &serde_json::Value| println!("{}", v["value"]);
    match a.cmd {
        CstoreCmd::Get { key } => {
            show(&call(Method::GET, &format!("{base}/get?{}", query(&[("key", &key)])), None).await?)
        }
        CstoreCmd::Set { key, value, ttl: t } => {
            let url = format!("{base}/set?{}{}", query(&[("key", &key)]), ttl(t));
            call(Method::PUT, &url, Some(json_arg(&value)?)).await?;
            println!("OK");
        }
        CstoreCmd::Del { key } => {
            let v = call(Method::DELETE, &format!("{base}/del?{}", query(&[("key", &key)])), None).await?;
            println!("{}", if v["deleted"] == true { "deleted" } else { "not found (tombstone written anyway)" });
        }
        CstoreCmd::Hset { hash, field, value, ttl: t } => {
            let url = format!("{base}/hset?{}{}", query(&[("hash", &hash), ("field", &field)]), ttl(t));
            call(Method::PUT, &url, Some(json_arg(&value)?)).await?;
            println!("OK");
        }
        CstoreCmd::Hget { hash, field } => show(
            &call(Method::GET, &format!("{base}/hget?{}", query(&[("hash", &hash), ("field", &field)])), None).await?,
        ),
        CstoreCmd::Hgetall { hash } => {
            let v = call(Method::GET, &format!("{base}/hgetall?{}", query(&[("hash", &hash)])), None).await?;
            for (f, r) in v.as_object().into_iter().flatten() {
                println!("{f}\t{}", r["value"]);
            }
        }
        CstoreCmd::Hdel { hash, field } => {
            let url = format!("{base}/hdel?{}", query(&[("hash", &hash), ("field", &field)]));
            let v = call(Method::DELETE, &url, None).await?;
            println!("{}", if v["deleted"] == true { "deleted" } else { "not found (tombstone written anyway)" });
        }
        CstoreCmd::Keys { prefix } => {
            let v = call(Method::GET, &format!("{base}/keys?{}", query(&[("prefix", &prefix)])), None).await?;
            for k in v.as_array().into_iter().flatten() {
                println!("{}", k.as_str().unwrap_or_default());
            }
        }
        CstoreCmd::Watch { prefix, count } => {
            let url = format!("{base}/watch?{}", query(&[("prefix", &prefix)]));
            ratio1::cstore::api::follow(&url, count, |line| println!("{line}")).await?;
        }
        CstoreCmd::Status => {
            let v = call(Method::GET, &format!("{base}/status"), None).await?;
            println!(
                "replica: {} records ({} tombstones, {} bytes) in {} under {} · etcd {}",
                v["records"],
                v["tombstones"],
                v["bytes"],
                v["endpoints"]
                    .as_array()
                    .map(|e| e.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(","))
                    .unwrap_or_default(),
                v["prefix"].as_str().unwrap_or(""),
                if v["up"] == true { "up" } else { "DOWN" }
            );
            let r = &v["sync"]["lastRound"];
            if r.is_object() {
                let ago = (ratio1::p2p::now_ms() - r["at"].as_i64().unwrap_or(0)) as f64 / 1000.0;
                println!(
                    "last anti-entropy round: {:.1}s ago with {} in {} ms: {} differing, {} fetched, {} B in, {} B out{}",
                    ago,
                    r["peer"].as_str().unwrap_or("?"),
                    r["millis"],
                    r["differingLines"],
                    r["fetched"],
                    r["bytesIn"],
                    r["bytesOut"],
                    r["error"].as_str().map(|e| format!(", failed: {e}")).unwrap_or_default()
                );
            } else {
                println!("last anti-entropy round: none yet");
            }
            println!("{:<54} {:>12} {:>14} {:>14}", "PEER", "IN-SYNC", "LAST-ROUND", "GOSSIP-LAG");
            let now = ratio1::p2p::now_ms();
            let ago = |t: &serde_json::Value| {
                t.as_i64().map(|t| format!("{:.1}s ago", (now - t) as f64 / 1e3)).unwrap_or("-".into())
            };
            for (peer, p) in v["sync"]["peers"].as_object().into_iter().flatten() {
                let lag = p["gossipLagMs"].as_i64().map(|l| format!("{l} ms")).unwrap_or("-".into());
                println!("{peer:<54} {:>12} {:>14} {:>14}", ago(&p["inSyncAt"]), ago(&p["lastRound"]), lag);
            }
        }
    }
    Ok(())
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
        Command::License(cmd) => license(cmd).await,
        Command::Network(cmd) => network(cmd).await,
        Command::Cstore(a) => cstore(a).await,
        Command::Deeploy(a) => deeploy(a).await,
        Command::Oracle(cmd) => oracle(cmd).await,
        Command::Rewards(cmd) => economy_cli::rewards(cmd).await,
        Command::Economy(cmd) => economy_cli::economy(cmd).await,
        Command::Fs(a) => fs(a).await,
        Command::Edil(cmd) => edil_cli::edil(cmd).await,
        Command::Operator(a) => match net_options(&a)
            .and_then(|n| Ok((n, cstore_config(&a)?, deeploy_config(&a)?, oracle_config(&a)?, economy_config(&a)?)))
            .and_then(|c| Ok((c, edil_config(&a)?)))
        {
            Err(e) => Err(e),
            Ok(((net, cstore, deeploy, oracle, economy), edil)) => {
                let r1fs = r1fs_config(&a);
                let cfg = OperatorConfig {
                    namespace: a.namespace,
                    metrics_addr: a.metrics_addr,
                    leader_election: a.leader_election,
                    lease_name: a.lease_name,
                    lease_duration: Duration::from_secs(a.lease_duration_secs),
                    lease_renew_deadline: Duration::from_secs(a.lease_renew_deadline_secs),
                    lease_retry: Duration::from_secs(a.lease_retry_secs),
                    identity: a.identity.unwrap_or_else(default_identity),
                    resync: Duration::from_secs(a.resync_secs),
                    concurrency: a.concurrency,
                    net,
                    api_addr: a.api_addr,
                    revoked_licenses: a.revoked_licenses,
                    pod: std::env::var("POD_NAME").ok().filter(|p| !p.is_empty()),
                    cstore,
                    deeploy,
                    oracle,
                    economy,
                    edil,
                    r1fs,
                };
                // Checked before anything starts: such timing could let two
                // replicas lead at once.
                let (lease, deadline, retry) = (cfg.lease_duration, cfg.lease_renew_deadline, cfg.lease_retry);
                let timing =
                    if cfg.leader_election { ratio1::leader::validate_timing(lease, deadline, retry) } else { Ok(()) };
                match timing {
                    Err(e) => Err(anyhow::anyhow!("{e} (flags --lease-*-secs)")),
                    Ok(()) => run(cfg).await,
                }
            }
        },
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
