//! The monitor's maps (`bridgenet monitor`): what the programs emit, the ring buffer they
//! emit into, and what they did not emit. Each daemon's own, never pinned.
use anyhow::{Context as _, Result};
use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use bridgenet_common::{MonitorConfig, MonitorEvent, maps};

use super::Datapath;

/// The ring buffer's reader.
pub struct MonitorEvents(RingBuf<MapData>);

/// What the programs emit, and what they did not.
pub struct MonitorControl {
    config: Array<MapData, MonitorConfig>,
    lost: PerCpuArray<MapData, u64>,
}

impl Datapath {
    /// Takes the monitor's maps out of the loaded object: their reader and their control.
    pub fn take_monitor(&mut self) -> Result<(MonitorEvents, MonitorControl)> {
        let mut take = |name: &str| {
            self.ebpf
                .take_map(name)
                .with_context(|| format!("map {name} missing"))
        };
        let events = RingBuf::try_from(take(maps::MONITOR_EVENTS)?)?;
        let config = Array::try_from(take(maps::MONITOR_CONFIG)?)?;
        let lost = PerCpuArray::try_from(take(maps::MONITOR_LOST)?)?;
        Ok((MonitorEvents(events), MonitorControl { config, lost }))
    }
}

impl MonitorEvents {
    /// The next event in the ring, if any.
    pub fn read(&mut self) -> Option<MonitorEvent> {
        let item = self.0.next()?;
        // Records are written whole by the programs; a shorter one would be a bug there.
        (item.len() >= size_of::<MonitorEvent>())
            .then(|| bytemuck::pod_read_unaligned(&item[..size_of::<MonitorEvent>()]))
    }
}

impl std::os::fd::AsRawFd for MonitorEvents {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

impl MonitorControl {
    /// What the programs emit (`monitor::DROPS`, `monitor::FLOWS`; 0: nothing), at most
    /// `rate` events a second per CPU.
    pub fn configure(&mut self, kinds: u32, rate: u32) -> Result<()> {
        self.config
            .set(0, MonitorConfig { kinds, rate }, 0)
            .context("writing MONITOR_CONFIG")
    }

    /// Events the programs did not emit (over the rate, or the ring full), since they loaded.
    pub fn lost(&self) -> Result<u64> {
        let per_cpu = self.lost.get(&0, 0).context("reading MONITOR_LOST")?;
        Ok(per_cpu.iter().sum())
    }
}
