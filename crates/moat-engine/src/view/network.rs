//! Views of switches (Docker's networks): inspect and `network ls` rows.

use super::*;
use crate::Container;
use serde::Serialize;
use std::collections::BTreeMap;

/// IPAM of a network.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Ipam {
    /// `default`.
    pub driver: String,
    /// Subnets.
    pub config: Vec<IpamConfig>,
    /// Options.
    pub options: BTreeMap<String, String>,
}

/// One subnet of a network.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamConfig {
    /// Subnet.
    pub subnet: String,
    /// Gateway.
    pub gateway: String,
    /// The range addresses are handed out from (when one was given).
    #[serde(rename = "IPRange", skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<String>,
    /// Reserved addresses (when some were given).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub auxiliary_addresses: BTreeMap<String, String>,
}

/// A container on a network.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkContainer {
    /// Name.
    pub name: String,
    /// Endpoint ID.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// MAC.
    pub mac_address: String,
    /// `IP/prefix`.
    #[serde(rename = "IPv4Address")]
    pub ipv4_address: String,
    /// IPv6.
    #[serde(rename = "IPv6Address")]
    pub ipv6_address: String,
}

/// A switch as a Docker network (API `GET /networks/{id}`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkInspect {
    /// Name.
    pub name: String,
    /// ID.
    pub id: String,
    /// Creation time.
    pub created: String,
    /// `local`.
    pub scope: String,
    /// `bridge`.
    pub driver: String,
    /// IPv6 (no).
    #[serde(rename = "EnableIPv6")]
    pub enable_ipv6: bool,
    /// Addressing.
    #[serde(rename = "IPAM")]
    pub ipam: Ipam,
    /// No NAT or forwarding.
    pub internal: bool,
    /// Attachable.
    pub attachable: bool,
    /// Ingress.
    pub ingress: bool,
    /// Members.
    pub containers: BTreeMap<String, NetworkContainer>,
    /// Options (the bridge's name).
    pub options: BTreeMap<String, String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The network it takes its config from (none).
    pub config_from: ConfigFrom,
    /// false: a switch is a network, not a config-only template.
    pub config_only: bool,
}

/// `ConfigFrom` of a network.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ConfigFrom {
    /// `""`.
    pub network: String,
}

impl NetworkInspect {
    /// The view of switch `s` with its members among `all`.
    pub fn of(s: &crate::network::Switch, all: &[Container]) -> Self {
        let mut containers = BTreeMap::new();
        for c in all {
            for ep in c.config.networks.iter().filter(|ep| ep.switch_id == s.id) {
                containers.insert(
                    c.id().to_string(),
                    NetworkContainer {
                        name: c.name().to_string(),
                        endpoint_id: format!("{}{}", &c.id()[..32], &s.id[..32]),
                        mac_address: ep.mac.clone(),
                        ipv4_address: format!("{}/{}", ep.ip, ep.prefix),
                        ipv6_address: ep.ip6.map(|a| format!("{a}/{}", ep.prefix6)).unwrap_or_default(),
                    },
                );
            }
        }
        Self {
            name: crate::network::shown_name(&s.name).to_string(),
            id: s.id.clone(),
            created: rfc3339(Some(s.created)),
            scope: "local".into(),
            driver: "bridge".into(),
            enable_ipv6: s.config.subnet6.is_some(),
            ipam: Ipam {
                driver: "default".into(),
                config: std::iter::once(IpamConfig {
                    subnet: s.config.subnet.to_string(),
                    gateway: s.config.gateway.to_string(),
                    ip_range: s.config.ip_range.map(|r| r.to_string()),
                    auxiliary_addresses: s
                        .config
                        .aux_addresses
                        .iter()
                        .map(|(k, v)| (k.clone(), v.to_string()))
                        .collect(),
                })
                .chain(s.config.subnet6.map(|s6| IpamConfig {
                    subnet: s6.to_string(),
                    gateway: s.config.gateway6.map(|g| g.to_string()).unwrap_or_default(),
                    ip_range: None,
                    auxiliary_addresses: BTreeMap::new(),
                }))
                .collect(),
                options: s.config.ipam_options.clone(),
            },
            internal: s.config.internal,
            attachable: true,
            ingress: false,
            containers,
            options: [("com.docker.network.bridge.name".to_string(), s.config.bridge.clone())].into_iter().collect(),
            labels: s.config.labels.clone(),
            config_from: ConfigFrom::default(),
            config_only: false,
        }
    }
}

/// A row of `network ls` (Docker's network format context: `{{.Name}}`, ...).
#[derive(Debug, Clone, Serialize)]
pub struct NetworkRow {
    /// Short ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Name.
    #[serde(rename = "Name")]
    pub name: String,
    /// `bridge`.
    #[serde(rename = "Driver")]
    pub driver: String,
    /// `local`.
    #[serde(rename = "Scope")]
    pub scope: String,
    /// Subnet.
    #[serde(rename = "Subnet")]
    pub subnet: String,
    /// No outbound NAT.
    #[serde(rename = "Internal")]
    pub internal: bool,
    /// Linux bridge.
    #[serde(rename = "Bridge")]
    pub bridge: String,
}

impl NetworkRow {
    /// The row of a switch.
    pub fn of(s: &crate::network::Switch, no_trunc: bool) -> Self {
        Self {
            id: if no_trunc { s.id.clone() } else { s.id[..12].to_string() },
            name: crate::network::shown_name(&s.name).to_string(),
            driver: "bridge".into(),
            scope: "local".into(),
            subnet: s.config.subnet.to_string(),
            internal: s.config.internal,
            bridge: s.config.bridge.clone(),
        }
    }
}
