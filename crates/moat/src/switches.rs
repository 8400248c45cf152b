//! `moat switch ...` (alias `moat network ...`): virtual switches.

use crate::output;
use anyhow::{Context, Result};
use clap::Subcommand;
use moat_engine::Engine;
use std::path::Path;

/// Switch subcommands.
#[derive(Subcommand, Debug)]
pub enum SwitchCmd {
    /// Create a switch.
    Create {
        /// Switch name (any case, spaces allowed).
        name: String,
        /// Subnet in CIDR form (default: a free /24 from 10.89.0.0/16).
        #[arg(long)]
        subnet: Option<ipnet::Ipv4Net>,
        /// Gateway address (default: the first address of the subnet).
        #[arg(long)]
        gateway: Option<std::net::Ipv4Addr>,
        /// No outbound NAT and no forwarding off the switch.
        #[arg(long)]
        internal: bool,
        /// Driver (only `bridge`; accepted for docker compatibility).
        #[arg(short = 'd', long, default_value = "bridge")]
        driver: String,
    },
    /// List switches.
    #[command(alias = "list")]
    Ls {
        /// Only names... IDs.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show switches as JSON.
    Inspect {
        /// Switches.
        #[arg(required = true)]
        switches: Vec<String>,
    },
    /// Remove switches.
    #[command(alias = "remove")]
    Rm {
        /// Switches.
        #[arg(required = true)]
        switches: Vec<String>,
    },
    /// Attach a stopped container to a switch.
    Connect {
        /// Switch.
        switch: String,
        /// Container.
        container: String,
        /// Address on the switch.
        #[arg(long)]
        ip: Option<std::net::Ipv4Addr>,
    },
    /// Detach a stopped container from a switch.
    Disconnect {
        /// Switch.
        switch: String,
        /// Container.
        container: String,
    },
}

fn json(e: &Engine, s: &moat_engine::network::Switch) -> serde_json::Value {
    let mut members = serde_json::Map::new();
    let mut eng_list = Vec::new();
    if let Ok(mut e2) = Engine::open(e.layout().root()) {
        eng_list = e2.list().unwrap_or_default();
    }
    for c in eng_list {
        for ep in c.config.networks.iter().filter(|ep| ep.switch_id == s.id) {
            members.insert(
                c.id().to_string(),
                serde_json::json!({ "Name": c.name(), "IPv4Address": format!("{}/{}", ep.ip, ep.prefix), "MacAddress": ep.mac }),
            );
        }
    }
    serde_json::json!({
        "Name": s.name,
        "Id": s.id,
        "Created": s.created.to_rfc3339(),
        "Driver": "bridge",
        "Scope": "local",
        "Internal": s.config.internal,
        "IPAM": { "Driver": "default", "Config": [{ "Subnet": s.config.subnet.to_string(), "Gateway": s.config.gateway.to_string() }] },
        "Options": { "com.docker.network.bridge.name": s.config.bridge },
        "Bridge": s.config.bridge,
        "Containers": members,
        "Labels": s.config.labels,
    })
}

/// Runs a switch subcommand.
pub fn run(root: &Path, cmd: SwitchCmd) -> Result<i32> {
    let mut e = Engine::open(root).with_context(|| format!("cannot open moat root {}", root.display()))?;
    match cmd {
        SwitchCmd::Create { name, subnet, gateway, internal, driver } => {
            if driver != "bridge" {
                anyhow::bail!("unsupported driver {driver:?}: moat switches are bridges");
            }
            let s = e.create_switch(&name, subnet, gateway, internal)?;
            println!("{}", s.id);
        }
        SwitchCmd::Ls { quiet } => {
            let all = e.switches()?;
            if quiet {
                for s in &all {
                    println!("{}", &s.id[..12]);
                }
            } else {
                let rows: Vec<Vec<String>> = all
                    .iter()
                    .map(|s| {
                        vec![
                            s.id[..12].to_string(),
                            s.name.clone(),
                            "bridge".into(),
                            s.config.subnet.to_string(),
                            if s.config.internal { "internal".into() } else { "nat".into() },
                            s.config.bridge.clone(),
                        ]
                    })
                    .collect();
                output::table(&["SWITCH ID", "NAME", "DRIVER", "SUBNET", "MODE", "BRIDGE"], &rows)?;
            }
        }
        SwitchCmd::Inspect { switches } => {
            let mut out = Vec::new();
            let mut code = 0;
            for n in &switches {
                match e.find_switch(n) {
                    Ok(s) => out.push(json(&e, &s)),
                    Err(err) => {
                        eprintln!("Error: {err}");
                        code = 1;
                    }
                }
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
            return Ok(code);
        }
        SwitchCmd::Rm { switches } => {
            for n in &switches {
                e.remove_switch(n)?;
                println!("{n}");
            }
        }
        SwitchCmd::Connect { switch, container, ip } => e.connect_switch(&switch, &container, ip)?,
        SwitchCmd::Disconnect { switch, container } => e.disconnect_switch(&switch, &container)?,
    }
    Ok(0)
}
