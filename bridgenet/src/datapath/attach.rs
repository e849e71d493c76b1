//! Attachments that outlive the daemon, and how to tell they are still there.
//!
//! With tcx (Linux 6.6+) and for XDP, attachments are bpf links pinned in the pin directory; a
//! restarted daemon swaps its programs into them atomically. Before 6.6, and on endpoints'
//! veths always (`uses_tcx`), TC programs are netlink filters on a clsact qdisc, which outlive
//! the process by themselves: a record in the state dir names each (priority, handle), and a
//! restart puts the new filter in first, then removes the old one, so there is no gap.
use std::path::Path;

use anyhow::{Context as _, Result};
use aya::programs::{
    SchedClassifier, TcAttachType, Xdp, XdpMode,
    links::{FdLink, PinnedLink},
    tc,
    tc::{NlOptions, SchedClassifierLink, TcAttachOptions},
    xdp::XdpLink,
};

use bridgenet_common::programs;

use super::{Datapath, program_mut, tcx_supported};

/// Where a program is attached on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    TcIngress,
    TcEgress,
    Xdp,
}

impl Hook {
    fn tc(self) -> Option<TcAttachType> {
        match self {
            Hook::TcIngress => Some(TcAttachType::Ingress),
            Hook::TcEgress => Some(TcAttachType::Egress),
            Hook::Xdp => None,
        }
    }
}

/// The programs attached to interfaces (the others are host access's cgroup hooks).
pub const INTERFACE_PROGRAMS: [&str; 5] = [
    programs::UPLINK_INGRESS,
    programs::UPLINK_EGRESS,
    programs::UPLINK_XDP,
    programs::ENDPOINT_INGRESS,
    programs::BRIDGE_INGRESS,
];

/// Whether `program` is attached with tcx rather than as a netlink filter. An endpoint's veth
/// comes and goes with its container, and a tcx attach waits for an RCU grace period
/// (`tcx_entry_sync`: 10-14 ms here, most of an endpoint's creation); a netlink filter does not.
pub fn uses_tcx(program: &str) -> bool {
    tcx_supported() && program != programs::ENDPOINT_INGRESS
}

/// Prefix of the pinned links in the pin directory.
pub const LINK_PIN_PREFIX: &str = "link_";

/// Prefix of the files that record netlink TC filters (before Linux 6.6): priority, handle.
const NL_RECORD_PREFIX: &str = "nlfilter_";

/// The file names (pin or record) of program `name` on `iface`. The ifindex is in the name:
/// the attachment of a deleted interface is never taken for that of a new one.
fn file_name(prefix: &str, name: &str, iface: &str, ifindex: u32) -> String {
    format!("{prefix}{name}_{iface}_{ifindex}")
}

fn parse_filter(s: &str) -> Option<(u16, u32)> {
    let mut it = s.split_whitespace();
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

impl Datapath {
    /// Attaches program `name` to `iface` so that it stays attached after the daemon exits
    /// (even on SIGKILL). An attachment left by an earlier daemon is replaced without a gap;
    /// one that someone else detached is replaced by a new one.
    pub fn attach_pinned(
        &mut self,
        name: &str,
        iface: &str,
        hook: Hook,
        pin_dir: &Path,
        record_dir: &Path,
    ) -> Result<()> {
        let ifindex = nix::net::if_::if_nametoindex(iface)
            .with_context(|| format!("no interface {iface}"))?;
        let pin = pin_dir.join(file_name(LINK_PIN_PREFIX, name, iface, ifindex));
        let old = PinnedLink::from_pin(&pin).ok().map(FdLink::from);
        if old.is_some() {
            std::fs::remove_file(&pin)?;
        }
        let link: FdLink = match hook.tc() {
            None => {
                let program: &mut Xdp = program_mut(&mut self.ebpf, name)?;
                let replaced = old
                    .and_then(|old| XdpLink::try_from(old).ok())
                    .and_then(|old| program.attach_to_link(old).ok());
                let id = match replaced {
                    Some(id) => id,
                    // Native XDP where the driver has it, else generic.
                    None => program
                        .attach(iface, XdpMode::Driver)
                        .or_else(|_| program.attach(iface, XdpMode::Skb))
                        .with_context(|| format!("attaching {name} to {iface}"))?,
                };
                program.take_link(id)?.try_into()?
            }
            Some(direction) if uses_tcx(name) => {
                let program: &mut SchedClassifier = program_mut(&mut self.ebpf, name)?;
                // A link someone detached cannot be updated: attach anew.
                let replaced = old
                    .and_then(|old| old.try_into().ok())
                    .and_then(|old| program.attach_to_link(old).ok());
                let id = match replaced {
                    Some(id) => id,
                    None => program
                        .attach(iface, direction)
                        .with_context(|| format!("attaching {name} to {iface}"))?,
                };
                program.take_link(id)?.try_into()?
            }
            Some(direction) => {
                return self.attach_netlink_persistent(name, iface, ifindex, direction, record_dir);
            }
        };
        link.pin(&pin)
            .with_context(|| format!("pinning {}", pin.display()))?;
        Ok(())
    }

    /// Before Linux 6.6: a netlink filter, recorded in `record_dir`; the recorded filter of an
    /// earlier daemon goes once the new one is in (the kernel puts the new one first).
    fn attach_netlink_persistent(
        &mut self,
        name: &str,
        iface: &str,
        ifindex: u32,
        direction: TcAttachType,
        record_dir: &Path,
    ) -> Result<()> {
        match tc::qdisc_add_clsact(iface) {
            Ok(()) => {}
            Err(tc::TcError::NetlinkError(err)) if err.raw_os_error() == Some(libc::EEXIST) => {}
            Err(err) => return Err(err).with_context(|| format!("adding clsact to {iface}")),
        }
        let program: &mut SchedClassifier = program_mut(&mut self.ebpf, name)?;
        // Netlink even where aya would take tcx (`uses_tcx`).
        let netlink = TcAttachOptions::Netlink(NlOptions::default());
        let id = program
            .attach_with_options(iface, direction, netlink)
            .with_context(|| format!("attaching {name} to {iface}"))?;
        let link = program.take_link(id)?;
        let record = record_dir.join(file_name(NL_RECORD_PREFIX, name, iface, ifindex));
        let (priority, handle) = (link.priority()?, u32::from(link.handle()?));
        // When someone deleted the old filter, the new one may have taken its place: same
        // priority and handle, and not to be removed.
        if let Some(old) = std::fs::read_to_string(&record)
            .ok()
            .and_then(|s| parse_filter(&s))
            && old != (priority, handle)
            && let Ok(old) =
                SchedClassifierLink::attached(iface, direction, old.0, old.1.into(), None)
        {
            // Dropping a link detaches it.
            drop(old);
        }
        std::fs::write(&record, format!("{priority} {handle}"))?;
        // Dropping the link would detach the filter: keep it past the process.
        std::mem::forget(link);
        Ok(())
    }

    /// The kernel's id of program `name`: what an attachment check looks for.
    pub fn program_id(&self, name: &str) -> Result<u32> {
        let program = self
            .ebpf
            .program(name)
            .with_context(|| format!("program {name} missing from the object"))?;
        Ok(program.info()?.id())
    }

    /// The ids of the programs attached with tcx to `iface` in `hook` (Linux 6.6+).
    pub fn tcx_program_ids(iface: &str, hook: Hook) -> Result<Vec<u32>> {
        let direction = hook.tc().context("not a TC hook")?;
        let (_, programs) = SchedClassifier::query_tcx(iface, direction)
            .with_context(|| format!("querying tcx on {iface}"))?;
        Ok(programs.iter().map(|p| p.id()).collect())
    }

    /// Removes the pins and records of every attachment on `iface` (whatever its ifindex):
    /// for an interface that is going away, or before re-creating it.
    pub fn forget_attachments(pin_dir: &Path, record_dir: &Path, iface: &str) {
        let suffix = format!("_{iface}_");
        for dir in [pin_dir, record_dir] {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let file = entry.file_name().to_string_lossy().into_owned();
                let ours = file.starts_with(LINK_PIN_PREFIX) || file.starts_with(NL_RECORD_PREFIX);
                if ours && file.contains(&suffix) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }

    /// Removes every pin and record of the interface programs but those of `keep` (program,
    /// interface, ifindex).
    pub fn prune_attachments(pin_dir: &Path, record_dir: &Path, keep: &[(&str, String, u32)]) {
        let kept: Vec<String> = keep
            .iter()
            .flat_map(|(program, iface, ifindex)| {
                [LINK_PIN_PREFIX, NL_RECORD_PREFIX]
                    .map(|prefix| file_name(prefix, program, iface, *ifindex))
            })
            .collect();
        for dir in [pin_dir, record_dir] {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let file = entry.file_name().to_string_lossy().into_owned();
                let ours = INTERFACE_PROGRAMS.iter().any(|program| {
                    [LINK_PIN_PREFIX, NL_RECORD_PREFIX]
                        .iter()
                        .any(|prefix| file.starts_with(&format!("{prefix}{program}_")))
                });
                if ours && !kept.contains(&file) {
                    tracing::info!("removing stale attachment {file}");
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }

    /// Detaches what `attach_pinned` left in this namespace: unpins the links in `pin_dir`
    /// (which detaches them) and removes the netlink filters of `programs` from `ifaces`.
    /// Detaches every program bridgenet attached to `iface`, which stays (an adopted bridge):
    /// the pins go (and with them tcx links), and before tcx the netlink filters.
    pub fn detach_interface(pin_dir: &Path, record_dir: &Path, iface: &str) {
        Self::forget_attachments(pin_dir, record_dir, iface);
        Self::detach_filters(iface);
    }

    pub fn detach_pinned(pin_dir: &Path, record_dir: &Path, ifaces: &[String]) {
        for dir in [pin_dir, record_dir] {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let file = entry.file_name().to_string_lossy().into_owned();
                if file.starts_with(LINK_PIN_PREFIX) || file.starts_with(NL_RECORD_PREFIX) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        for iface in ifaces {
            Self::detach_filters(iface);
        }
    }

    /// Removes from `iface` the netlink filters of the programs that are not attached with tcx.
    fn detach_filters(iface: &str) {
        for name in INTERFACE_PROGRAMS.into_iter().filter(|p| !uses_tcx(p)) {
            for direction in [TcAttachType::Ingress, TcAttachType::Egress] {
                let _ = tc::qdisc_detach_program(iface, direction, name);
            }
        }
    }
}
