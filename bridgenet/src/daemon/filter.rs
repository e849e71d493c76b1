//! The user filter's verbs: add, list and remove rules; every change recompiles the rules
//! into the datapath (see datapath/filter.rs), and reconcile reapplies them on start.
use anyhow::Context as _;
use bridgenet_common::filter::MAX_RULES;

use super::{Daemon, Error, ports::wire_proto};
use crate::{
    api::{FilterCreate, FilterEntry},
    datapath::filter as dp,
    state::filter::{Action, Dport, Rule, parse_src},
};

impl Daemon {
    pub fn filter_add(&mut self, req: FilterCreate) -> Result<FilterEntry, Error> {
        let bad = Error::BadRequest;
        let src = req.src.as_deref().map(parse_src).transpose().map_err(bad)?;
        let dport = req
            .dport
            .as_deref()
            .map(str::parse::<Dport>)
            .transpose()
            .map_err(bad)?;
        let action: Action = req.action.parse().map_err(bad)?;
        if let Some(network) = &req.network {
            self.network(network)?;
        }
        let rules = &self.state.filter.rules;
        if rules.len() >= MAX_RULES as usize {
            return Err(Error::Conflict(format!(
                "no room for another filter rule ({MAX_RULES} at most)"
            )));
        }
        let slot = (0..MAX_RULES as u16)
            .find(|s| !rules.iter().any(|r| r.slot == *s))
            .expect("fewer rules than slots");
        let rule = Rule {
            id: self.state.filter.next_id.max(1),
            network: req.network,
            src,
            dport,
            action,
            slot,
        };
        self.dp.reset_filter_hits(slot)?;
        let before = self.state.filter.clone();
        self.state.filter.rules.push(rule.clone());
        self.state.filter.next_id = rule.id + 1;
        if let Err(err) = self
            .apply_filter()
            .map_err(Error::Internal)
            .and_then(|()| self.save())
        {
            self.state.filter = before;
            if let Err(undo) = self.apply_filter() {
                tracing::warn!(
                    "filter rule {}: restoring the filter without it: {undo:#}",
                    rule.id
                );
            }
            return Err(err);
        }
        tracing::info!("filter rule {} added", rule.id);
        self.filter_entry(&rule)
    }

    pub fn filter_ls(&self) -> Result<Vec<FilterEntry>, Error> {
        self.state
            .filter
            .rules
            .iter()
            .map(|r| self.filter_entry(r))
            .collect()
    }

    pub fn filter_rm(&mut self, id: &str) -> Result<FilterEntry, Error> {
        let not_found = || Error::NotFound(format!("no filter rule {id}"));
        let id: u32 = id.parse().map_err(|_| not_found())?;
        let at = self
            .state
            .filter
            .rules
            .iter()
            .position(|r| r.id == id)
            .ok_or_else(not_found)?;
        let entry = self.filter_entry(&self.state.filter.rules[at])?;
        let before = self.state.filter.clone();
        self.state.filter.rules.remove(at);
        if let Err(err) = self
            .apply_filter()
            .map_err(Error::Internal)
            .and_then(|()| self.save())
        {
            self.state.filter = before;
            if let Err(undo) = self.apply_filter() {
                tracing::warn!("filter rule {id}: restoring the filter with it: {undo:#}");
            }
            return Err(err);
        }
        tracing::info!("filter rule {id} removed");
        Ok(entry)
    }

    /// Refuses to remove a network that filter rules name.
    pub(super) fn check_unfiltered(&self, network: &str) -> Result<(), Error> {
        let ids: Vec<String> = self
            .state
            .filter
            .rules
            .iter()
            .filter(|r| r.network.as_deref() == Some(network))
            .map(|r| r.id.to_string())
            .collect();
        if ids.is_empty() {
            Ok(())
        } else {
            Err(Error::Conflict(format!(
                "network {network} is named by filter rules {}",
                ids.join(", ")
            )))
        }
    }

    /// Compiles the store's rules into the datapath (also used by reconcile).
    pub(super) fn apply_filter(&mut self) -> anyhow::Result<()> {
        let mut rules = Vec::new();
        for rule in &self.state.filter.rules {
            let network = match &rule.network {
                Some(name) => {
                    let network =
                        self.state.networks.get(name).with_context(|| {
                            format!("filter rule {}: no network {name}", rule.id)
                        })?;
                    Some(super::networks::network_options(network).id)
                }
                None => None,
            };
            rules.push(dp::Rule {
                src: rule.src,
                network,
                port: rule.dport.map(|d| (wire_proto(d.proto), d.port)),
                drop: rule.action == Action::Drop,
                slot: rule.slot,
            });
        }
        self.dp.set_filter(&rules)
    }

    fn filter_entry(&self, rule: &Rule) -> Result<FilterEntry, Error> {
        Ok(FilterEntry {
            id: rule.id,
            network: rule.network.clone(),
            src: rule.src,
            dport: rule.dport,
            action: rule.action,
            packets: self.dp.filter_hits(rule.slot)?,
        })
    }
}
