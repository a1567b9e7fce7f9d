//! End-to-end tests against a real kube-apiserver + controller-manager +
//! etcd (`e2e/kube/up.sh`), with the operator as a real process.
//! Run them with `bash e2e/test.sh`, which starts and stops that control plane
//! (`docs` and `edil` need none: they run the CLI alone). CSTORE's tests
//! start their own etcd per cluster.

mod harness;

mod cstore;
mod deeploy;
mod docs;
mod economy;
mod edil;
mod federation;
mod hostile;
mod install;
mod leader;
mod nodes;
mod oracle;
mod pipelines;
mod placement;
mod r1fs;
mod r1fs_network;
mod running;
mod validation;
