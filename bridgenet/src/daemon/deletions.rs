//! Endpoint veths deleted after the API has answered. RTM_DELLINK waits for RCU grace periods
//! (25-40 ms here), most of an endpoint's removal; by the time it is sent the endpoint is
//! already cut off (no `ENDPOINTS` entry: its veth's program drops everything it sends; its
//! ports closed, its flows revoked; the bridge no longer sends it its MAC's frames). A new veth
//! of the same name waits for it.
use tokio::task::JoinHandle;

use crate::netlink::Netlink;

struct Deletion {
    veth: String,
    task: JoinHandle<()>,
}

/// The deletions under way.
#[derive(Default)]
pub(super) struct Deletions(Vec<Deletion>);

impl Deletions {
    /// Deletes link `index`, endpoint veth `veth`, in the background.
    pub fn start(&mut self, nl: &Netlink, veth: &str, index: u32) {
        self.0.retain(|d| !d.task.is_finished());
        let (nl, name) = (nl.clone(), veth.to_owned());
        let task = tokio::spawn(async move {
            // Not found: the kernel's cleanup of its namespace took the pair first.
            if let Err(err) = nl.delete_if_present(index).await {
                tracing::warn!("deleting {name}: {err:#}");
            }
        });
        self.0.push(Deletion {
            veth: veth.to_owned(),
            task,
        });
    }

    /// Waits for the deletion of a veth named `veth`, if one is under way.
    pub async fn wait_for(&mut self, veth: &str) {
        self.wait(|d| d.veth == veth).await;
    }

    /// Waits for every deletion: before a bridge goes (an adopted one stays, without our
    /// ports) and before the daemon exits.
    pub async fn wait_all(&mut self) {
        self.wait(|_| true).await;
    }

    async fn wait(&mut self, mut collides: impl FnMut(&Deletion) -> bool) {
        let (waited, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.0)
            .into_iter()
            .partition(|d| collides(d));
        self.0 = kept;
        for d in waited {
            let _ = d.task.await;
        }
    }
}
