//! `/v1/hosts`: bare-metal hosts an operator registers; Canopy powers them on through their
//! BMC (Redfish) when the pool needs them and off when they are idle.

use super::{ApiError, AppState, Body};
use crate::auth::{Caller, Role};
use crate::store::HostRow;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use canopy_core::Resources;
use canopy_core::quantity::Bytes;
use canopy_core::schedule::{OwnedRates, parse_micros};
use canopy_provider_baremetal::Host;
use serde::Deserialize;
use std::collections::BTreeMap;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/hosts", get(list).post(register))
        .route("/hosts/{name}", delete(remove))
        .route("/hosts/{name}/restore", post(restore))
}

/// The reference rates for owned capacity, when the operator gives no amortized price.
const OWNED_RATES: &str = include_str!("../../../core/data/prices/onprem_reference.csv");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewHost {
    name: String,
    /// The BMC's Redfish endpoint, e.g. `https://10.0.0.5`.
    bmc_url: String,
    bmc_username: String,
    bmc_password: String,
    /// The id in `/redfish/v1/Systems/<id>`.
    system_id: String,
    /// Whole cores the host offers to workloads.
    cpus: u32,
    /// Memory it offers, e.g. `"64Gi"`.
    memory: String,
    #[serde(default = "default_region")]
    region: String,
    /// Hosts of one class in one region are interchangeable; default `bm-<cpus>c-<GiB>g`.
    #[serde(default)]
    class: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Amortized cost per hour, e.g. `"0.35"`; default from the reference rates per core and GiB.
    #[serde(default)]
    price_per_hour: Option<String>,
}

fn default_region() -> String {
    "onprem".into()
}

impl NewHost {
    /// Checks every field; the error names the first bad one.
    fn validate(self) -> Result<Host, ApiError> {
        canopy_core::spec::validate_name("name", &self.name)?;
        let url = reqwest::Url::parse(&self.bmc_url)
            .map_err(|e| ApiError::invalid(format!("bmc_url: {e} (expected e.g. https://10.0.0.5)")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(ApiError::invalid("bmc_url: must be an http(s) URL with a host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ApiError::invalid("bmc_url: put credentials in bmc_username and bmc_password, not the URL"));
        }
        if self.bmc_username.is_empty() {
            return Err(ApiError::invalid("bmc_username: must not be empty"));
        }
        if self.system_id.is_empty() || self.system_id.contains('/') {
            return Err(ApiError::invalid("system_id: must be a Redfish system id (no '/')"));
        }
        if self.cpus == 0 {
            return Err(ApiError::invalid("cpus: must be at least 1"));
        }
        let memory = Bytes::parse(&self.memory).map_err(|e| ApiError::invalid(format!("memory: {e}")))?;
        if memory.0 < 1 << 30 {
            return Err(ApiError::invalid("memory: must be at least 1Gi"));
        }
        canopy_core::spec::validate_name("region", &self.region)?;
        let capacity = Resources::new(u64::from(self.cpus) * 1000, memory.0);
        let class = self.class.unwrap_or_else(|| format!("bm-{}c-{}g", self.cpus, memory.0 >> 30));
        canopy_core::spec::validate_name("class", &class)?;
        let price_per_hour = match &self.price_per_hour {
            Some(text) => parse_micros(text).ok_or_else(|| {
                ApiError::invalid(format!("price_per_hour: {text:?} is not a non-negative decimal amount"))
            })?,
            None => {
                let rates = OwnedRates::from_csv(OWNED_RATES)
                    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
                rates.offering("baremetal", &self.region, &class, capacity, 0).price_on_demand
            }
        };
        Ok(Host {
            name: self.name,
            bmc_url: self.bmc_url.trim_end_matches('/').to_string(),
            bmc_username: self.bmc_username,
            bmc_password: self.bmc_password,
            system_id: self.system_id,
            region: self.region,
            class,
            capacity,
            labels: self.labels,
            price_per_hour,
        })
    }
}

async fn register(
    State(state): State<AppState>,
    caller: Caller,
    Body(request): Body<NewHost>,
) -> Result<(StatusCode, Json<HostRow>), ApiError> {
    caller.require(&[Role::Admin], "register hosts")?;
    let host = request.validate()?;
    Ok((StatusCode::CREATED, Json(state.store.register_host(&caller.actor(), &host).await?)))
}

async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<HostRow>>, ApiError> {
    caller.require(&[Role::Admin, Role::Developer, Role::Finance], "list hosts")?;
    Ok(Json(state.store.hosts().await?))
}

async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(&[Role::Admin], "remove hosts")?;
    state.store.remove_host(&caller.actor(), &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn restore(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<HostRow>, ApiError> {
    caller.require(&[Role::Admin], "restore hosts")?;
    Ok(Json(state.store.restore_host(&caller.actor(), &name).await?))
}
