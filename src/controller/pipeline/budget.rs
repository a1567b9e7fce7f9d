//! The pipeline reconciler's part in PoAI: on the origin, a pipeline with
//! a `budget` is escrowed once through the economy (which checks that the
//! license linked to this node holds the cost), then its escrow is read
//! back for status. docs/economy.md, "PoAI".

use super::network::Mode;
use crate::conditions::Invalid;
use crate::controller::Context;
use crate::crd::{BudgetStatus, R1Pipeline};
use crate::economy::poai::{Job, JobView};
use crate::economy::service::EscrowError;
use crate::economy::{parse_r1, show_r1, EconomyError};
use kube::ResourceExt;
use std::time::Duration;

/// Funds and the economy come without a change of the pipeline: look
/// again this often.
const RETRY: Duration = Duration::from_secs(15);
/// How often a pipeline whose escrow is not over reads it back.
pub const FOLLOW: Duration = Duration::from_secs(10);

/// The escrow of `p`'s budget (`None`: no budget, or a copy, which the
/// origin pays for). `Err`: why the pipeline cannot run as asked.
pub async fn escrow(p: &R1Pipeline, ctx: &Context, mode: &Mode<'_>) -> Result<Option<BudgetStatus>, Invalid> {
    let Some(budget) = &p.spec.budget else { return Ok(None) };
    let me = match mode {
        Mode::Copy(_) => return Ok(None),
        Mode::Origin(_, me) => me,
        Mode::Local | Mode::Waiting(_) => {
            return Err(Invalid::new(
                "BudgetNeedsNetwork",
                "spec.budget is paid through the network's economy, which needs an R1Node and CSTORE here; \
                 remove the budget to run unpaid",
            ))
        }
    };
    let Some(economy) = ctx.economy.get() else {
        return Err(Invalid::new("BudgetNeedsNetwork", "the economy is not running here yet").retry(RETRY));
    };
    let uid = p.uid().unwrap_or_default();
    let view = match economy.job(me, &uid) {
        Some(view) => view,
        None => {
            let price = parse_r1(&budget.price_per_epoch)
                .map_err(|e| Invalid::new("InvalidBudget", format!("spec.budget.pricePerEpoch: {e}")))?;
            let nodes = p.spec.placement.wanted() as u64;
            let now_epoch = economy
                .now_epoch()
                .ok_or_else(|| Invalid::new("BudgetNeedsNetwork", "the epoch clock is not known yet").retry(RETRY))?;
            let ns = p.namespace().unwrap_or_default();
            let job =
                Job::new(economy.constants(), &ns, &p.name_any(), &uid, me, price, nodes, budget.epochs, now_epoch)
                    .map_err(|e| match e {
                        EconomyError::TooShort(min, _) => Invalid::new(
                            "InvalidBudget",
                            format!("spec.budget.epochs: the network pays jobs of at least {min} epochs"),
                        ),
                        e => Invalid::new("InvalidBudget", format!("spec.budget: {e}")),
                    })?;
            match economy.escrow(job).await {
                Ok(view) => view,
                Err(EscrowError::Unfunded(why)) => {
                    return Err(
                        Invalid::new("InsufficientFunds", format!("the budget cannot be escrowed: {why}")).retry(RETRY)
                    )
                }
                Err(EscrowError::Unavailable(why)) => {
                    return Err(Invalid::new("BudgetNeedsNetwork", why).retry(RETRY));
                }
            }
        }
    };
    if let Some(why) = &view.unfunded {
        // Escrowed here, and not funded as the ledger now folds (e.g. the
        // license was unlinked before the escrow reached the other nodes).
        return Err(Invalid::new("InsufficientFunds", format!("the escrow is not funded: {why}")).retry(RETRY));
    }
    Ok(Some(status(&view)))
}

pub fn status(v: &JobView) -> BudgetStatus {
    let burned: u128 = v.paid.iter().map(|p| p.burned).sum();
    BudgetStatus {
        payer: v.payer.clone(),
        escrowed: show_r1(v.job.cost),
        first_epoch: v.job.start,
        epochs: v.job.epochs,
        nodes: v.job.nodes,
        paid_epochs: v.paid.iter().filter(|p| !p.credited.is_empty()).count() as u64,
        paid: show_r1(v.spent - burned),
        burned: show_r1(burned),
        left: show_r1(v.left),
        over: v.over,
    }
}
