//! `canopy hosts`: the bare-metal hosts an operator registers, which Canopy powers on through
//! their BMC (Redfish) when the pool needs them and off when they are idle.
//!
//! The BMC password is read from an environment variable, never from a flag (flags end up in
//! shell history and in `ps`), and it is never printed: the API does not return it either.

use super::client::Client;
use super::print;
use super::table::Table;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::env::VarError;

#[derive(clap::Subcommand, Debug)]
pub enum HostsCommand {
    /// Register a host (admin). Canopy does not contact its BMC until the pool needs it.
    Add(Box<AddArgs>),
    /// Registered hosts: free, running a machine, or quarantined.
    List,
    /// Remove a host (admin); one running a machine must be drained first.
    Remove { name: String },
    /// Put a quarantined host back into the pool (admin).
    Restore { name: String },
}

#[derive(clap::Args, Debug)]
pub struct AddArgs {
    /// The host's name: 1-63 lowercase letters, digits or '-'.
    name: String,
    /// The BMC's Redfish endpoint, e.g. https://10.0.0.5.
    #[arg(long = "bmc", value_name = "URL")]
    bmc_url: String,
    /// The user the BMC's Redfish API accepts.
    #[arg(long, value_name = "USER")]
    bmc_username: String,
    /// Name of the environment variable holding the BMC password.
    #[arg(long, value_name = "VAR", default_value = "CANOPY_BMC_PASSWORD")]
    bmc_password_env: String,
    /// The id in /redfish/v1/Systems/<id>, e.g. System.Embedded.1.
    #[arg(long, value_name = "ID")]
    system_id: String,
    /// Whole cores the host offers to workloads.
    #[arg(long, value_name = "N")]
    cpus: u32,
    /// Memory the host offers to workloads, e.g. 64Gi.
    #[arg(long)]
    memory: String,
    /// Region the host is in [server default: onprem].
    #[arg(long)]
    region: Option<String>,
    /// Hosts of one class in one region are interchangeable [server default: bm-<cpus>c-<GiB>g].
    #[arg(long)]
    class: Option<String>,
    /// A label, as key=value, for placement; repeat for more. Machines of a class carry only
    /// the labels every host of that class shares.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Amortized cost in dollars per hour, e.g. 0.35 [server default: from the reference rates].
    #[arg(long, value_name = "DOLLARS")]
    price_per_hour: Option<String>,
}

/// The `POST /v1/hosts` body; unset optional fields are left out so the server's defaults apply.
#[derive(Serialize)]
struct NewHost<'a> {
    name: &'a str,
    bmc_url: &'a str,
    bmc_username: &'a str,
    bmc_password: String,
    system_id: &'a str,
    cpus: u32,
    memory: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    region: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    class: Option<&'a str>,
    labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    price_per_hour: Option<&'a str>,
}

/// The part of the API's host (`HostRow`) the table shows.
#[derive(Deserialize)]
struct ListedHost {
    name: String,
    region: String,
    class: String,
    milli_cpu: i64,
    memory: i64,
    price_micros: i64,
    bmc_url: String,
    claim_key: Option<String>,
    quarantined: Option<String>,
}

pub async fn run(client: &Client, command: HostsCommand, json: bool) -> Result<()> {
    match command {
        HostsCommand::Add(args) => {
            let password = bmc_password(&args.bmc_password_env, std::env::var(&args.bmc_password_env))?;
            let body = new_host(&args, password)?;
            let host: serde_json::Value = client.post("/v1/hosts", &body).await?;
            let listed = listed(&host)?;
            print(json, &host, || {
                format!(
                    "host {} registered: region {}, class {}, {} cpus, {} memory, ${}/hour\n",
                    listed.name,
                    listed.region,
                    listed.class,
                    cpus(listed.milli_cpu),
                    memory(listed.memory),
                    dollars(listed.price_micros)
                )
            })
        }
        HostsCommand::List => {
            let hosts: serde_json::Value = client.get("/v1/hosts").await?;
            let listed: Vec<ListedHost> =
                serde_json::from_value(hosts.clone()).context("the control service's host list")?;
            print(json, &hosts, || hosts_table(&listed))
        }
        HostsCommand::Remove { name } => {
            client.delete(&format!("/v1/hosts/{name}")).await?;
            print(json, &serde_json::json!({"removed": name}), || format!("host {name} removed\n"))
        }
        HostsCommand::Restore { name } => {
            let host: serde_json::Value =
                client.post(&format!("/v1/hosts/{name}/restore"), &serde_json::json!({})).await?;
            let listed = listed(&host)?;
            print(json, &host, || format!("host {} is back in the pool: {}\n", listed.name, state(&listed)))
        }
    }
}

/// The password from the variable's value as `std::env::var` read it; errors name the variable.
fn bmc_password(variable: &str, value: Result<String, VarError>) -> Result<String> {
    match value {
        Ok(password) if password.is_empty() => bail!(
            "the BMC password variable {variable} is set but empty: set it to the BMC's password \
             (or name another variable with --bmc-password-env)"
        ),
        Ok(password) => Ok(password),
        Err(VarError::NotPresent) => bail!(
            "the BMC password is read from the environment variable {variable}, which is not set: \
             export {variable}=<password> (or name another variable with --bmc-password-env)"
        ),
        Err(VarError::NotUnicode(_)) => bail!("the BMC password variable {variable} is not valid UTF-8"),
    }
}

fn new_host(args: &AddArgs, bmc_password: String) -> Result<NewHost<'_>> {
    let mut labels = BTreeMap::new();
    for (key, value) in &args.labels {
        if labels.insert(key.clone(), value.clone()).is_some() {
            bail!("--label {key} is given twice");
        }
    }
    Ok(NewHost {
        name: &args.name,
        bmc_url: &args.bmc_url,
        bmc_username: &args.bmc_username,
        bmc_password,
        system_id: &args.system_id,
        cpus: args.cpus,
        memory: &args.memory,
        region: args.region.as_deref(),
        class: args.class.as_deref(),
        labels,
        price_per_hour: args.price_per_hour.as_deref(),
    })
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("{text:?} is not a label: use key=value")),
    }
}

fn listed(host: &serde_json::Value) -> Result<ListedHost> {
    serde_json::from_value(host.clone()).context("the control service's host")
}

fn hosts_table(hosts: &[ListedHost]) -> String {
    let mut table = Table::new(&["NAME", "REGION", "CLASS", "CPU", "MEMORY", "$/HOUR", "STATE", "BMC"]);
    for h in hosts {
        table.row(vec![
            h.name.clone(),
            h.region.clone(),
            h.class.clone(),
            cpus(h.milli_cpu),
            memory(h.memory),
            dollars(h.price_micros),
            state(h),
            h.bmc_url.clone(),
        ]);
    }
    table.to_string()
}

/// `free`, `machine <key>`, or `quarantined: <reason>`; a quarantined host can still hold the
/// claim of the machine whose power-on failed, and then says so.
fn state(host: &ListedHost) -> String {
    match (&host.quarantined, &host.claim_key) {
        (Some(reason), Some(key)) => format!("quarantined: {reason} (machine {key})"),
        (Some(reason), None) => format!("quarantined: {reason}"),
        (None, Some(key)) => format!("machine {key}"),
        (None, None) => "free".to_string(),
    }
}

fn cpus(milli_cpu: i64) -> String {
    if milli_cpu % 1000 == 0 { (milli_cpu / 1000).to_string() } else { format!("{milli_cpu}m") }
}

fn memory(bytes: i64) -> String {
    if bytes % (1 << 30) == 0 { format!("{}Gi", bytes >> 30) } else { format!("{}Mi", bytes >> 20) }
}

fn dollars(micros: i64) -> String {
    format!("{:.4}", micros as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use crate::store::HostRow;
    use clap::Parser;

    fn add_args(extra: &[&str]) -> Result<AddArgs, clap::Error> {
        let mut argv = vec![
            "canopy",
            "hosts",
            "add",
            "rack1-07",
            "--bmc",
            "https://10.0.0.5",
            "--bmc-username",
            "root",
            "--system-id",
            "System.Embedded.1",
            "--cpus",
            "32",
            "--memory",
            "64Gi",
        ];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv)?.command {
            Command::Hosts(HostsCommand::Add(args)) => Ok(*args),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn add_sends_only_the_fields_given_so_the_server_defaults_apply() {
        let args = add_args(&[]).expect("parses");
        assert_eq!(args.bmc_password_env, "CANOPY_BMC_PASSWORD");
        let body = serde_json::to_value(new_host(&args, "s3cret".into()).expect("body")).expect("json");
        assert_eq!(
            body,
            serde_json::json!({"name": "rack1-07", "bmc_url": "https://10.0.0.5", "bmc_username": "root",
                               "bmc_password": "s3cret", "system_id": "System.Embedded.1", "cpus": 32,
                               "memory": "64Gi", "labels": {}})
        );
    }

    #[test]
    fn add_sends_every_optional_field_given() {
        let args = add_args(&[
            "--region",
            "dc-paris",
            "--class",
            "gpu-a",
            "--label",
            "rack=r1",
            "--label",
            "disk=nvme",
            "--price-per-hour",
            "0.35",
            "--bmc-password-env",
            "RACK1_BMC",
        ])
        .expect("parses");
        assert_eq!(args.bmc_password_env, "RACK1_BMC");
        let body = serde_json::to_value(new_host(&args, "pw".into()).expect("body")).expect("json");
        assert_eq!(body["region"], "dc-paris");
        assert_eq!(body["class"], "gpu-a");
        assert_eq!(body["labels"], serde_json::json!({"rack": "r1", "disk": "nvme"}));
        assert_eq!(body["price_per_hour"], "0.35");
    }

    #[test]
    fn bad_or_repeated_labels_are_refused() {
        let error = add_args(&["--label", "rack"]).expect_err("no '='");
        assert!(error.to_string().contains("key=value"), "{error}");
        let args = add_args(&["--label", "rack=r1", "--label", "rack=r2"]).expect("parses");
        let error = new_host(&args, "pw".into()).err().expect("repeated key");
        assert!(error.to_string().contains("--label rack"), "{error}");
    }

    #[test]
    fn a_missing_or_empty_password_variable_is_named_in_the_error() {
        let error = bmc_password("RACK1_BMC", Err(VarError::NotPresent)).expect_err("unset");
        assert!(error.to_string().contains("RACK1_BMC, which is not set"), "{error}");
        let error = bmc_password("RACK1_BMC", Ok(String::new())).expect_err("empty");
        assert!(error.to_string().contains("RACK1_BMC is set but empty"), "{error}");
        assert_eq!(bmc_password("RACK1_BMC", Ok("pw".into())).expect("set"), "pw");
    }

    fn row(claim_key: Option<&str>, quarantined: Option<&str>) -> HostRow {
        HostRow {
            name: "rack1-07".into(),
            region: "onprem".into(),
            class: "bm-32c-64g".into(),
            milli_cpu: 32_000,
            memory: 64 << 30,
            labels: sqlx::types::Json(BTreeMap::new()),
            price_micros: 350_000,
            bmc_url: "https://10.0.0.5".into(),
            bmc_username: "root".into(),
            system_id: "System.Embedded.1".into(),
            claim_key: claim_key.map(str::to_string),
            quarantined: quarantined.map(str::to_string),
            created_at: chrono::DateTime::UNIX_EPOCH,
        }
    }

    /// Reads the table's fields from the API's own type, so the two cannot drift apart.
    fn listed_from(row: HostRow) -> ListedHost {
        serde_json::from_value(serde_json::to_value(row).expect("json")).expect("a HostRow reads as a ListedHost")
    }

    #[test]
    fn the_table_shows_each_host_state() {
        let hosts: Vec<ListedHost> = [
            row(None, None),
            row(Some("m-42"), None),
            row(None, Some("power on failed")),
            row(Some("m-43"), Some("power on failed")),
        ]
        .into_iter()
        .map(listed_from)
        .collect();
        let states: Vec<String> = hosts.iter().map(state).collect();
        assert_eq!(
            states,
            ["free", "machine m-42", "quarantined: power on failed", "quarantined: power on failed (machine m-43)"]
        );
        let table = hosts_table(&hosts[..1]);
        let lines: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(lines[0], ["NAME", "REGION", "CLASS", "CPU", "MEMORY", "$/HOUR", "STATE", "BMC"]);
        assert_eq!(lines[1], ["rack1-07", "onprem", "bm-32c-64g", "32", "64Gi", "0.3500", "free", "https://10.0.0.5"]);
    }
}
