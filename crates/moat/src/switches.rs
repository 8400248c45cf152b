//! `moat switch ...` (alias `moat network ...`): virtual switches.

use crate::format;
use anyhow::Result;
use clap::Subcommand;
use moat_engine::view::NetworkRow;
use moat_engine::Engine;

/// Switch subcommands.
#[derive(Subcommand, Debug)]
pub enum SwitchCmd {
    /// Create a switch.
    Create {
        /// Switch name (any case, spaces allowed).
        name: String,
        /// Subnet in CIDR form, IPv4 (default: a free /24 from 10.89.0.0/16)
        /// and, with --ipv6, IPv6 (default: a unique-local /64); repeatable.
        #[arg(long)]
        subnet: Vec<ipnet::IpNet>,
        /// Gateway address (default: the first address of the subnet), one per family.
        #[arg(long)]
        gateway: Vec<std::net::IpAddr>,
        /// No outbound NAT and no forwarding off the switch.
        #[arg(long)]
        internal: bool,
        /// Driver (only `bridge`; accepted for docker compatibility).
        #[arg(short = 'd', long, default_value = "bridge")]
        driver: String,
        /// Label `KEY=VALUE` (repeatable).
        #[arg(long)]
        label: Vec<String>,
        /// Driver options `KEY=VALUE` (none are supported: refused by name).
        #[arg(short = 'o', long = "opt")]
        opt: Vec<String>,
        /// Dual-stack: IPv6 beside IPv4 (on the switch and to the host; no IPv6 NAT).
        #[arg(long)]
        ipv6: bool,
        /// Hand out addresses from this part of the subnet only (CIDR).
        #[arg(long = "ip-range")]
        ip_range: Option<ipnet::Ipv4Net>,
        /// Reserve an address: `NAME=IP` (repeatable).
        #[arg(long = "aux-address")]
        aux_address: Vec<String>,
        /// IPAM driver (only `default`).
        #[arg(long = "ipam-driver", default_value = "default")]
        ipam_driver: String,
        /// IPAM option `KEY=VALUE` (repeatable; kept and shown).
        #[arg(long = "ipam-opt")]
        ipam_opt: Vec<String>,
    },
    /// List switches.
    #[command(alias = "list")]
    Ls {
        /// Only IDs.
        #[arg(short, long)]
        quiet: bool,
        /// Do not truncate IDs.
        #[arg(long)]
        no_trunc: bool,
        /// Filters: name=, id=, driver=, type=builtin|custom, dangling=true|false.
        #[arg(short, long = "filter")]
        filter: Vec<String>,
        /// `table`, `json` or a Go template (`{{.Name}} {{.ID}}`).
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Show switches as JSON (or a Go template).
    Inspect {
        /// A Go template.
        #[arg(short = 'f', long)]
        format: Option<String>,
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
    /// Remove switches no container uses (never the default switch).
    Prune {
        /// Do not prompt (moat never prompts).
        #[arg(short, long)]
        force: bool,
    },
    /// Attach a container to a switch (a running process container at once).
    Connect {
        /// Switch.
        switch: String,
        /// Container.
        container: String,
        /// Address on the switch.
        #[arg(long)]
        ip: Option<std::net::Ipv4Addr>,
        /// MAC address on the switch.
        #[arg(long = "mac-address")]
        mac_address: Option<String>,
        /// More names the container answers to on this switch (repeatable).
        #[arg(long = "alias")]
        alias: Vec<String>,
    },
    /// Detach a container from a switch (a running process container at once).
    Disconnect {
        /// Switch.
        switch: String,
        /// Container.
        container: String,
    },
}

/// Runs a switch subcommand.
pub fn run(e: &mut Engine, cmd: SwitchCmd) -> Result<i32> {
    match cmd {
        SwitchCmd::Create {
            name,
            subnet,
            gateway,
            internal,
            driver,
            label,
            opt,
            ipv6,
            ip_range,
            aux_address,
            ipam_driver,
            ipam_opt,
        } => {
            let mut aux_addresses = std::collections::BTreeMap::new();
            for a in &aux_address {
                let (n, ip) =
                    a.split_once('=').ok_or_else(|| anyhow::anyhow!("invalid --aux-address {a:?}: use NAME=IP"))?;
                let ip = ip
                    .parse()
                    .map_err(|_| anyhow::anyhow!("invalid --aux-address {a:?}: {ip:?} is not an IPv4 address"))?;
                aux_addresses.insert(n.to_string(), ip);
            }
            let one = |what: &str, n: usize| -> Result<()> {
                if n > 1 {
                    anyhow::bail!("a switch has one {what}");
                }
                Ok(())
            };
            let v4: Vec<ipnet::Ipv4Net> =
                subnet.iter().filter_map(|s| if let ipnet::IpNet::V4(s) = s { Some(*s) } else { None }).collect();
            let v6: Vec<ipnet::Ipv6Net> =
                subnet.iter().filter_map(|s| if let ipnet::IpNet::V6(s) = s { Some(*s) } else { None }).collect();
            let g4: Vec<std::net::Ipv4Addr> =
                gateway.iter().filter_map(|g| if let std::net::IpAddr::V4(g) = g { Some(*g) } else { None }).collect();
            let g6: Vec<std::net::Ipv6Addr> =
                gateway.iter().filter_map(|g| if let std::net::IpAddr::V6(g) = g { Some(*g) } else { None }).collect();
            one("IPv4 subnet", v4.len())?;
            one("IPv6 subnet", v6.len())?;
            one("IPv4 gateway", g4.len())?;
            one("IPv6 gateway", g6.len())?;
            if !v6.is_empty() && !ipv6 {
                anyhow::bail!("an IPv6 subnet needs --ipv6");
            }
            let req = moat_engine::network::SwitchRequest {
                name,
                driver,
                subnet: v4.first().copied(),
                gateway: g4.first().copied(),
                subnet6: v6.first().copied(),
                gateway6: g6.first().copied(),
                ip_range,
                aux_addresses,
                ipam_driver,
                ipam_options: ipam_opt.iter().map(|l| moat_engine::flags::label(l)).collect(),
                options: opt,
                ipv6,
                internal,
                labels: label.iter().map(|l| moat_engine::flags::label(l)).collect(),
            };
            outln!("{}", e.create_switch(&req)?.id);
        }
        SwitchCmd::Ls { quiet, no_trunc, filter, format } => {
            let f = moat_engine::network::SwitchFilter::new(moat_engine::filter::Filters::from_args(&filter)?)?;
            let all = e.switches_matching(&f)?;
            let rows: Vec<NetworkRow> = all.iter().map(|s| NetworkRow::of(s, no_trunc)).collect();
            if quiet {
                for r in &rows {
                    outln!("{}", r.id);
                }
                return Ok(0);
            }
            format::list(
                &format,
                "SWITCH ID",
                &["SWITCH ID", "NAME", "DRIVER", "SUBNET", "MODE", "BRIDGE"],
                &rows,
                |r| {
                    vec![
                        r.id.clone(),
                        r.name.clone(),
                        r.driver.clone(),
                        r.subnet.clone(),
                        if r.internal { "internal".into() } else { "nat".into() },
                        r.bridge.clone(),
                    ]
                },
            )?;
        }
        SwitchCmd::Inspect { format, switches } => {
            let mut out = Vec::new();
            let mut code = 0;
            for n in &switches {
                match e.inspect_switch(n) {
                    Ok(s) => out.push(serde_json::to_value(s)?),
                    Err(err) => {
                        error_line!("{err}");
                        code = 1;
                    }
                }
            }
            format::inspect(format.as_deref(), &out)?;
            return Ok(code);
        }
        SwitchCmd::Rm { switches } => {
            for n in &switches {
                e.remove_switch(n)?;
                outln!("{n}");
            }
        }
        SwitchCmd::Prune { force: _ } => {
            let names = e.prune_switches()?;
            if !names.is_empty() {
                outln!("Deleted Networks:");
                for n in names {
                    outln!("{n}");
                }
            }
        }
        SwitchCmd::Connect { switch, container, ip, mac_address, alias } => {
            e.connect_switch_as(&switch, &container, ip, mac_address.as_deref(), &alias)?
        }
        SwitchCmd::Disconnect { switch, container } => e.disconnect_switch(&switch, &container)?,
    }
    Ok(0)
}
