//! What the operator's writes have in common (its field manager, its
//! managed-by label) and the flag its caches raise once filled: shared by
//! the controllers and by Deeploy, which sits below them.

use std::sync::Arc;

/// Field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "ratio1-operator";
/// Label on every object the operator creates.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "ratio1-operator");

/// Whether a cache's first list is done. A flag, not
/// `Store::wait_until_ready`: that wakes only one of several waiters.
#[derive(Clone, Default)]
pub struct Filled(Arc<std::sync::atomic::AtomicBool>);

impl Filled {
    /// A flag already set (a cache that is not wired counts as filled).
    pub fn set() -> Self {
        let f = Self::default();
        f.0.store(true, std::sync::atomic::Ordering::Release);
        f
    }

    pub fn mark(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    /// For `inspect` on a reflected watch: sets the flag at its first
    /// `InitDone` (after the store has swapped in the list).
    pub fn on_init_done<K>(&self) -> impl Fn(&Result<kube::runtime::watcher::Event<K>, kube::runtime::watcher::Error>) {
        let flag = self.0.clone();
        move |ev| {
            if let Ok(kube::runtime::watcher::Event::InitDone) = ev {
                flag.store(true, std::sync::atomic::Ordering::Release);
            }
        }
    }
}
