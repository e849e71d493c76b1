//! Which program belongs on which interface, and putting back what someone else detached
//! (`tc filter del`, `bpftool link detach`, `ip link set dev X xdp off`). Until the daemon
//! notices, the programs fail closed for each other: bridge_ingress drops what an endpoint
//! sends without endpoint_ingress's mark, uplink_ingress repeats uplink_xdp's early drops.
use anyhow::Result;
use bridgenet_common::programs;

use super::Daemon;
use crate::{
    datapath::{Datapath, Hook, uses_tcx},
    netlink::Link,
};

/// One program on one interface.
#[derive(Clone, Debug)]
pub(super) struct Attachment {
    pub program: &'static str,
    pub iface: String,
    pub hook: Hook,
}

impl Attachment {
    fn new(program: &'static str, iface: &str, hook: Hook) -> Self {
        Self {
            program,
            iface: iface.to_owned(),
            hook,
        }
    }
}

impl Daemon {
    /// Every attachment the store and the uplinks call for.
    pub(super) fn attachments(&self) -> Vec<Attachment> {
        let mut out = Vec::new();
        for uplink in &self.uplinks {
            out.push(Attachment::new(
                programs::UPLINK_INGRESS,
                &uplink.name,
                Hook::TcIngress,
            ));
            out.push(Attachment::new(
                programs::UPLINK_EGRESS,
                &uplink.name,
                Hook::TcEgress,
            ));
            if uplink.xdp {
                out.push(Attachment::new(
                    programs::UPLINK_XDP,
                    &uplink.name,
                    Hook::Xdp,
                ));
            }
        }
        for network in self.state.networks.values() {
            out.push(Attachment::new(
                programs::BRIDGE_INGRESS,
                &network.bridge,
                Hook::TcIngress,
            ));
        }
        for endpoint in self.state.endpoints.values() {
            if let Some(veth) = endpoint.veth() {
                out.push(Attachment::new(
                    programs::ENDPOINT_INGRESS,
                    veth,
                    Hook::TcIngress,
                ));
            }
        }
        out
    }

    /// Attaches (or takes over from an earlier daemon) one program.
    pub(super) fn attach(&mut self, a: &Attachment) -> Result<()> {
        self.dp
            .attach_pinned(a.program, &a.iface, a.hook, &self.pin_dir, &self.state_dir)
    }

    /// Whether `a` is attached now, by the id of the program the kernel has there.
    pub(super) async fn attached(&self, a: &Attachment, links: &[Link]) -> Result<bool> {
        let Some(link) = links.iter().find(|l| l.name == a.iface) else {
            // The interface is gone: reconciling it is the store's business, not ours.
            return Ok(true);
        };
        let id = self.dp.program_id(a.program)?;
        Ok(match a.hook {
            Hook::Xdp => link.xdp_program == Some(id),
            hook if uses_tcx(a.program) => Datapath::tcx_program_ids(&a.iface, hook)?.contains(&id),
            hook => self
                .nl
                .tc_program_ids(link.index, hook == Hook::TcIngress)
                .await?
                .contains(&id),
        })
    }

    /// Re-attaches every program that is missing; returns how many it restored. One that
    /// cannot be put back (another program holds the hook) is logged once, not every second,
    /// and does not keep the others from being checked; `status` names it until it is back.
    pub(super) async fn restore_attachments(&mut self) -> Result<usize> {
        let mut restored = 0;
        let links = self.nl.links().await?;
        for a in self.attachments() {
            let key = (a.program, a.iface.clone());
            if self.attached(&a, &links).await? {
                self.observed.attach_failing.remove(&key);
                continue;
            }
            let known = self.observed.attach_failing.contains(&key);
            if !known {
                tracing::warn!(
                    program = a.program,
                    interface = a.iface,
                    "{} was detached from {} by someone else: attaching it again",
                    a.program,
                    a.iface
                );
            }
            match self.attach(&a) {
                Ok(()) => {
                    restored += 1;
                    if known {
                        tracing::info!(
                            program = a.program,
                            interface = a.iface,
                            "{} is attached to {} again",
                            a.program,
                            a.iface
                        );
                    }
                    self.observed.attach_failing.remove(&key);
                }
                Err(err) if !known => {
                    tracing::warn!(
                        program = a.program,
                        interface = a.iface,
                        "{} on {}: cannot attach it again, retrying every second: {err:#}",
                        a.program,
                        a.iface
                    );
                    self.observed.attach_failing.insert(key);
                }
                Err(_) => {}
            }
        }
        Ok(restored)
    }
}
