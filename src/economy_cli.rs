//! `ratio1 license link|unlink|ban|unban|show`, `ratio1 rewards claim`,
//! `ratio1 economy status`: the license registry and the ledger through a
//! running operator's API.

use crate::{query, read_issuer_key};
use clap::Subcommand;
use ratio1::dauth::license::{issue_statement, key_id, Action, Class, Statement};
use ratio1::economy::{parse_r1, show_r1};
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The operator's local API.
#[derive(clap::Args, Clone)]
pub struct Endpoint {
    /// The operator's local API (`--api-addr`).
    #[arg(long, default_value = "http://127.0.0.1:9090", env = "RATIO1_API")]
    endpoint: String,
}

impl Endpoint {
    pub fn url(&self, path: &str, pairs: &[(&str, &str)]) -> String {
        format!("{}{path}?{}", self.endpoint.trim_end_matches('/'), query(pairs))
    }
}

/// A registry change, signed by the license's issuer.
#[derive(clap::Args)]
pub struct Change {
    /// File written by `license keygen` (the issuer of the license).
    #[arg(long)]
    issuer_key: PathBuf,
    /// The license id.
    #[arg(long)]
    id: String,
    /// How long to wait for the registry to take the change in.
    #[arg(long, default_value_t = 30)]
    wait_secs: u64,
    #[command(flatten)]
    api: Endpoint,
}

#[derive(Subcommand)]
pub enum RegistryCmd {
    /// Link a license to a node (one node per license, one license per
    /// node; not within --relink-secs of its last link).
    Link {
        #[command(flatten)]
        change: Change,
        #[arg(long)]
        peer_id: String,
        #[arg(long, value_enum)]
        class: Class,
        /// MND, GND: what the license may earn over its window, in R1.
        #[arg(long)]
        assigned: Option<String>,
    },
    /// Unlink a license from its node (that node may still claim the
    /// link's epochs, up to the last one claimable now).
    Unlink {
        #[command(flatten)]
        change: Change,
    },
    /// Ban a license: no link, no reward, until unbanned.
    Ban {
        #[command(flatten)]
        change: Change,
    },
    /// Lift a ban.
    Unban {
        #[command(flatten)]
        change: Change,
    },
    /// A license as the registry holds it: links, ban, claims.
    Show {
        /// `<issuer key id>/<id>`, or the id alone if one issuer uses it.
        license: String,
        #[command(flatten)]
        api: Endpoint,
    },
}

#[derive(Subcommand)]
pub enum RewardsCmd {
    /// Claim a license's rewards through its node's operator: the claim
    /// covers the unclaimed epochs (100 at most; run again for more) and is
    /// settled once more than half of the oracles accept it.
    Claim {
        /// `<issuer key id>/<id>`, or the id alone if one issuer uses it.
        license: String,
        /// How long to wait for the oracles' verdicts.
        #[arg(long, default_value_t = 120)]
        wait_secs: u64,
        #[command(flatten)]
        api: Endpoint,
    },
}

#[derive(Subcommand)]
pub enum EconomyCmd {
    /// The economy in one table: supply, minted per class, the MND buffer,
    /// PoAI escrow, payments, burn and refunds, whether the books balance;
    /// then every license, every PoAI job and each license's balance.
    Status {
        #[command(flatten)]
        api: Endpoint,
    },
}

/// One call to the operator's API, with no body.
pub async fn call(method: http::Method, url: &str) -> anyhow::Result<Value> {
    crate::call(method, url, None).await
}

fn amount(v: &Value) -> String {
    v.as_str().and_then(|s| s.parse::<u128>().ok()).map_or("?".into(), show_r1)
}

pub async fn registry(cmd: RegistryCmd) -> anyhow::Result<()> {
    let (change, action, peer, class, assigned) = match cmd {
        RegistryCmd::Show { license, api } => return show(&license, &api).await,
        RegistryCmd::Link { change, peer_id, class, assigned } => {
            peer_id.parse::<libp2p_identity::PeerId>().map_err(|_| anyhow::anyhow!("{peer_id:?} is not a PeerId"))?;
            let assigned = match (class, assigned) {
                (Class::Nd, None) => None,
                (Class::Nd, Some(_)) => anyhow::bail!("--assigned is for MND and GND licenses"),
                (_, None) => anyhow::bail!("an {class} license needs --assigned (R1 it may earn over its window)"),
                (_, Some(a)) => Some(parse_r1(&a).map_err(anyhow::Error::msg)?.to_string()),
            };
            (change, Action::Link, Some(peer_id), Some(class), assigned)
        }
        RegistryCmd::Unlink { change } => (change, Action::Unlink, None, None, None),
        RegistryCmd::Ban { change } => (change, Action::Ban, None, None, None),
        RegistryCmd::Unban { change } => (change, Action::Unban, None, None, None),
    };
    let kp = read_issuer_key(&change.issuer_key)?;
    ratio1::cstore::record::check_name("license id", &change.id).map_err(anyhow::Error::msg)?;
    let iss = key_id(&kp.public());
    let at = ratio1::p2p::now_ms() as u64;
    let s = Statement { iss: iss.clone(), id: change.id.clone(), action, peer, class, assigned, at };
    let key = ratio1::cstore::rules::statement_key(&iss, &change.id, at);
    let body = serde_json::json!({ "proof": issue_statement(&kp, &s) }).to_string();
    let url = change.api.url("/v1/cstore/set", &[("key", &key)]);
    crate::call(http::Method::PUT, &url, Some(body)).await?;
    let name = format!("{iss}/{}", change.id);
    eprintln!("{action:?} of {name} written to CSTORE ({key}); waiting for the registry");
    // The registry folds every statement; this one is in once the license
    // shows it applied or refused.
    let deadline = Instant::now() + Duration::from_secs(change.wait_secs);
    loop {
        if let Ok(v) = call(http::Method::GET, &change.api.url("/v1/economy/license", &[("name", &name)])).await {
            let l = &v["license"];
            let refused = l["refused"].as_array().into_iter().flatten().find(|r| r["atMs"] == at);
            if let Some(r) = refused {
                anyhow::bail!("{action:?} refused: {}", r["reason"].as_str().unwrap_or("?"));
            }
            let links = l["links"].as_array().cloned().unwrap_or_default();
            let applied = match action {
                Action::Link => links.iter().any(|k| k["fromMs"] == at),
                Action::Unlink => links.iter().any(|k| k["toMs"] == at),
                Action::Ban => l["banned"] == true,
                Action::Unban => l["banned"] == false,
            };
            if applied {
                println!("{name}: {action:?} applied");
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "the registry at {} has not taken the {action:?} in after {} s",
                change.api.endpoint,
                change.wait_secs
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn show(license: &str, api: &Endpoint) -> anyhow::Result<()> {
    let v = call(http::Method::GET, &api.url("/v1/economy/license", &[("name", license)])).await?;
    let l = &v["license"];
    println!(
        "license {} ({}), banned: {}",
        l["name"].as_str().unwrap_or(license),
        l["class"].as_str().unwrap_or("?"),
        l["banned"]
    );
    if l["class"] != "ND" {
        println!("assigned: {} R1", amount(&l["assigned"]));
    }
    for k in l["links"].as_array().into_iter().flatten() {
        let to = k["toMs"].as_u64().map_or("now".to_string(), |t| format!("{t} ms"));
        println!("linked to {} from {} ms to {to}", k["peer"].as_str().unwrap_or("?"), k["fromMs"]);
    }
    for r in l["refused"].as_array().into_iter().flatten() {
        println!(
            "refused {} at {} ms: {}",
            r["action"].as_str().unwrap_or("?"),
            r["atMs"],
            r["reason"].as_str().unwrap_or("")
        );
    }
    match (&l["claimable"].get("Ok"), &l["claimable"].get("Err")) {
        (Some(c), _) => println!("claimable now: epochs {}..={}, {} R1", c["from"], c["to"], amount(&c["amount"])),
        (_, Some(why)) => println!("claimable now: {}", why.as_str().unwrap_or("")),
        _ => {}
    }
    println!("\n{:>6} {:>6} {:>24} {:<9} {:>9} REFUSED BY", "FROM", "TO", "AMOUNT (R1)", "STATE", "ACCEPTED");
    for c in v["claims"].as_array().into_iter().flatten() {
        let state = if c["settled"] == true { "settled" } else { "pending" };
        let accepted = format!("{}/{}", c["acceptedBy"].as_array().map_or(0, |a| a.len()), c["registered"]);
        let refused: Vec<String> = c["refused"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(o, r)| format!("{}…: {}", &o[..o.len().min(12)], r.as_str().unwrap_or("")))
            .collect();
        let cl = &c["claim"];
        println!(
            "{:>6} {:>6} {:>24} {state:<9} {accepted:>9} {}",
            cl["from"],
            cl["to"],
            amount(&cl["amount"]),
            refused.join("; ")
        );
    }
    Ok(())
}

pub async fn rewards(cmd: RewardsCmd) -> anyhow::Result<()> {
    let RewardsCmd::Claim { license, wait_secs, api } = cmd;
    let made = call(http::Method::POST, &api.url("/v1/economy/claim", &[("license", &license)])).await?;
    let claim = &made["claim"];
    let name = claim["license"].as_str().unwrap_or(&license).to_string();
    let digest = made["digest"].as_str().unwrap_or("").to_string();
    eprintln!(
        "claim of {name} for epochs {}..={} ({} R1) written; waiting for the oracles",
        claim["from"],
        claim["to"],
        amount(&claim["amount"])
    );
    let deadline = Instant::now() + Duration::from_secs(wait_secs);
    let mut said = String::new();
    loop {
        let v = call(http::Method::GET, &api.url("/v1/economy/license", &[("name", &name)])).await?;
        let mine = v["claims"].as_array().into_iter().flatten().find(|c| c["digest"] == digest.as_str()).cloned();
        if let Some(c) = mine {
            let accepted = c["acceptedBy"].as_array().map_or(0, |a| a.len());
            let registered = c["registered"].as_u64().unwrap_or(0) as usize;
            let refused = c["refused"].as_object().cloned().unwrap_or_default();
            if c["settled"] == true {
                println!(
                    "settled: {} R1 for epochs {}..={} of {name}, accepted by {accepted} of {registered} oracles",
                    amount(&claim["amount"]),
                    claim["from"],
                    claim["to"]
                );
                return Ok(());
            }
            // Refused for good once a majority cannot accept any more.
            if 2 * refused.len() >= registered.max(1) && accepted + refused.len() >= registered {
                let why: Vec<String> = refused.values().filter_map(|r| r.as_str().map(String::from)).collect();
                anyhow::bail!("claim refused by {} of {registered} oracles: {}", refused.len(), why.join("; "));
            }
            let now = format!("accepted by {accepted}, refused by {} of {registered} oracles", refused.len());
            if now != said {
                eprintln!("{now}");
                said = now;
            }
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "the claim is not settled after {wait_secs} s ({said}); `ratio1 license show {name}` follows it"
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub async fn economy(cmd: EconomyCmd) -> anyhow::Result<()> {
    let EconomyCmd::Status { api } = cmd;
    let v = call(http::Method::GET, &api.url("/v1/economy", &[])).await?;
    let t = &v["totals"];
    let cap = t["supplyCap"].as_str().and_then(|s| s.parse::<u128>().ok()).unwrap_or(0);
    let minted = t["minted"].as_str().and_then(|s| s.parse::<u128>().ok()).unwrap_or(0);
    println!("{:<28} {:>30}", "", "R1");
    println!("{:<28} {:>30}", "supply cap", show_r1(cap));
    println!("{:<28} {:>30}", "minted (settled claims)", show_r1(minted));
    for (class, m) in t["mintedByClass"].as_object().into_iter().flatten() {
        println!("{:<28} {:>30}", format!("  of which {class}"), amount(m));
    }
    println!("{:<28} {:>30}", "MND buffer (withheld)", amount(&t["mndBuffer"]));
    println!("{:<28} {:>30}", "not yet minted", show_r1(cap.saturating_sub(minted)));
    let p = &v["poai"];
    println!("{:<28} {:>30}", "PoAI escrowed", amount(&p["escrowed"]));
    println!("{:<28} {:>30}", "  paid to licenses (85%)", amount(&p["toLicenses"]));
    println!("{:<28} {:>30}", "  burned (15%)", amount(&p["burned"]));
    println!("{:<28} {:>30}", "  refunded", amount(&p["refunded"]));
    println!("{:<28} {:>30}", "  still in escrow", amount(&p["inEscrow"]));
    let burned = p["burned"].as_str().and_then(|s| s.parse::<u128>().ok()).unwrap_or(0);
    println!("{:<28} {:>30}", "circulating (minted-burned)", show_r1(minted.saturating_sub(burned)));
    let balanced = if v["balanced"] == true { "yes" } else { "NO" };
    println!("{:<28} {:>30}", "books balance", balanced);
    let linked: Vec<String> = t["linked"].as_object().into_iter().flatten().map(|(c, n)| format!("{n} {c}")).collect();
    println!(
        "\nlicenses linked: {}; banned: {}; settled claims: {}",
        if linked.is_empty() { "none".to_string() } else { linked.join(", ") },
        t["banned"],
        t["settledClaims"]
    );
    println!("\n{:<40} {:<5} {:<54} {:>8} CLAIMABLE (R1)", "LICENSE", "CLASS", "NODE", "CLAIMED");
    for l in v["licenses"].as_array().into_iter().flatten() {
        let node = l["links"]
            .as_array()
            .and_then(|k| k.last())
            .filter(|k| k["toMs"].is_null())
            .and_then(|k| k["peer"].as_str());
        let claimable = match (l["claimable"].get("Ok"), l["claimable"].get("Err")) {
            (Some(c), _) => format!("{} (epochs {}..={})", amount(&c["amount"]), c["from"], c["to"]),
            (_, Some(e)) => e.as_str().unwrap_or("").to_string(),
            _ => String::new(),
        };
        let through = l["claimedThrough"].as_u64().map_or("-".into(), |e| e.to_string());
        let banned = if l["banned"] == true { " (banned)" } else { "" };
        println!(
            "{:<40} {:<5} {:<54} {through:>8} {claimable}",
            format!("{}{banned}", l["name"].as_str().unwrap_or("")),
            l["class"].as_str().unwrap_or(""),
            node.unwrap_or("-")
        );
    }
    let jobs = p["jobs"].as_object().filter(|j| !j.is_empty());
    if let Some(jobs) = jobs {
        println!(
            "
{:<36} {:<40} {:>7} {:>6} {:>16} {:>16} STATE",
            "JOB", "PAYER", "EPOCHS", "PAID", "ESCROWED", "LEFT"
        );
        for j in jobs.values() {
            let job = &j["job"];
            let state = match (j["unfunded"].as_str(), j["over"] == true) {
                (Some(why), _) => format!("unfunded: {why}"),
                (None, true) => "over (left refunded)".into(),
                (None, false) => "escrowed".into(),
            };
            println!(
                "{:<36} {:<40} {:>7} {:>6} {:>16} {:>16} {state}",
                format!("{}/{}", job["namespace"].as_str().unwrap_or(""), job["name"].as_str().unwrap_or("")),
                j["payer"].as_str().unwrap_or("-"),
                format!("{}+{}", job["start"], job["epochs"]),
                j["paid"].as_array().map_or(0, |p| p.len()),
                amount(&job["cost"]),
                amount(&j["left"]),
            );
        }
    }
    let balances = p["balances"].as_object().filter(|b| !b.is_empty());
    if let Some(b) = balances {
        println!(
            "
{:<40} {:>30} {:>30}",
            "LICENSE", "BALANCE (R1)", "POAI CREDITS (R1)"
        );
        for (l, bal) in b {
            let credit = p["credits"].get(l).map_or("0".to_string(), amount);
            println!("{l:<40} {:>30} {credit:>30}", amount(bal));
        }
    }
    Ok(())
}
