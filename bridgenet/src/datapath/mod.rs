//! Loads the embedded eBPF object, attaches its programs and reads its maps.
use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::PerCpuHashMap,
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        tc::{self, NlOptions, TcAttachOptions},
    },
};
use bridgenet_common::{IfCounters, maps, programs};

/// The object built from bridgenet-ebpf by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bridgenet"));

/// How a TC program is attached: tcx links exist from Linux 6.6; before that, a netlink
/// filter on a clsact qdisc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcMode {
    /// tcx where the kernel has it, else netlink (aya's default choice).
    Auto,
    /// Always netlink clsact, as on kernels before 6.6.
    Netlink,
}

/// The loaded programs and maps of one bridgenet datapath.
pub struct Datapath {
    ebpf: Ebpf,
}

impl Datapath {
    /// Loads the programs into the kernel (without attaching them).
    pub fn load() -> Result<Self> {
        if OBJECT.is_empty() {
            bail!("this binary was built with AYA_BUILD_SKIP=1 and carries no eBPF programs");
        }
        let mut ebpf = Ebpf::load(OBJECT).context("loading the eBPF object")?;
        let tc: &mut SchedClassifier = program_mut(&mut ebpf, programs::TC_COUNT)?;
        tc.load()
            .with_context(|| format!("verifying program {}", programs::TC_COUNT))?;
        let xdp: &mut Xdp = program_mut(&mut ebpf, programs::XDP_COUNT)?;
        xdp.load()
            .with_context(|| format!("verifying program {}", programs::XDP_COUNT))?;
        Ok(Self { ebpf })
    }

    /// The underlying aya object, for tests that run programs with BPF_PROG_TEST_RUN.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Attaches the TC counter to `iface` in the calling thread's network namespace.
    pub fn attach_tc_count(
        &mut self,
        iface: &str,
        direction: TcAttachType,
        mode: TcMode,
    ) -> Result<()> {
        let program: &mut SchedClassifier = program_mut(&mut self.ebpf, programs::TC_COUNT)?;
        let options = match mode {
            TcMode::Auto => None,
            TcMode::Netlink => Some(TcAttachOptions::Netlink(NlOptions::default())),
        };
        // tcx needs no qdisc; the netlink path (also aya's fallback on old kernels) does.
        if mode == TcMode::Netlink || !tcx_supported() {
            match tc::qdisc_add_clsact(iface) {
                Ok(()) => {}
                Err(tc::TcError::NetlinkError(err)) if err.raw_os_error() == Some(libc::EEXIST) => {
                }
                Err(err) => {
                    return Err(err).with_context(|| format!("adding clsact qdisc to {iface}"));
                }
            }
        }
        match options {
            None => program.attach(iface, direction),
            Some(options) => program.attach_with_options(iface, direction, options),
        }
        .with_context(|| {
            format!(
                "attaching {} to {iface} ({direction:?})",
                programs::TC_COUNT
            )
        })?;
        Ok(())
    }

    /// Attaches the XDP counter to `iface`: native mode where the driver has it, else generic.
    pub fn attach_xdp_count(&mut self, iface: &str) -> Result<XdpMode> {
        let program: &mut Xdp = program_mut(&mut self.ebpf, programs::XDP_COUNT)?;
        match program.attach(iface, XdpMode::Driver) {
            Ok(_) => Ok(XdpMode::Driver),
            Err(_) => {
                program
                    .attach(iface, XdpMode::Skb)
                    .with_context(|| format!("attaching {} to {iface}", programs::XDP_COUNT))?;
                Ok(XdpMode::Skb)
            }
        }
    }

    /// Packet and byte counts per ifindex, summed over CPUs.
    pub fn if_counters(&self) -> Result<BTreeMap<u32, IfCounters>> {
        let map = self
            .ebpf
            .map(maps::IF_COUNTERS)
            .context("map IF_COUNTERS missing")?;
        let map: PerCpuHashMap<_, u32, IfCounters> = PerCpuHashMap::try_from(map)?;
        let mut totals = BTreeMap::new();
        for entry in map.iter() {
            let (ifindex, per_cpu) = entry?;
            let total: &mut IfCounters = totals.entry(ifindex).or_default();
            for counters in per_cpu.iter() {
                total.packets += counters.packets;
                total.bytes += counters.bytes;
            }
        }
        Ok(totals)
    }
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))?;
    Ok(program.try_into()?)
}

/// Whether the running kernel has tcx (Linux 6.6 and later).
pub fn tcx_supported() -> bool {
    kernel_version().is_some_and(|v| v >= (6, 6))
}

/// The running kernel's (major, minor) version.
pub fn kernel_version() -> Option<(u32, u32)> {
    let release = nix::sys::utsname::uname()
        .ok()?
        .release()
        .to_str()?
        .to_owned();
    let mut parts = release.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}
