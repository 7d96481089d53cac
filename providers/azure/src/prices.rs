//! The price book: resource SKUs (what exists where, its size and zones) joined with the
//! Retail Prices API (Linux consumption prices, on-demand and Spot).

use crate::arm::ArmClient;
use canopy_core::resources::Resources;
use canopy_core::schedule::{Offering, gib_micros_to_bytes, parse_micros};
use canopy_providers::ProviderError;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};

pub(crate) const SKUS_API_VERSION: &str = "2021-07-01";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ResourceSku {
    #[serde(default)]
    resource_type: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    location_info: Vec<LocationInfo>,
    #[serde(default)]
    capabilities: Vec<Capability>,
    #[serde(default)]
    restrictions: Vec<Restriction>,
}

#[derive(Debug, Deserialize)]
struct LocationInfo {
    #[serde(default)]
    zones: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Capability {
    name: String,
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Restriction {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    restriction_info: RestrictionInfo,
}

#[derive(Debug, Default, Deserialize)]
struct RestrictionInfo {
    #[serde(default)]
    zones: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RetailPage {
    #[serde(default)]
    items: Vec<RetailPrice>,
    next_page_link: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RetailPrice {
    #[serde(default)]
    arm_sku_name: String,
    #[serde(default)]
    sku_name: String,
    #[serde(default)]
    product_name: String,
    #[serde(rename = "type", default)]
    price_type: String,
    #[serde(default)]
    unit_of_measure: String,
    retail_price: f64,
}

/// Hourly prices of one size in one region, in millionths of a dollar.
#[derive(Debug, Default, Clone, Copy)]
struct Prices {
    on_demand: Option<u64>,
    spot: Option<u64>,
}

impl ResourceSku {
    fn capability(&self, name: &str) -> Option<&str> {
        self.capabilities.iter().find(|c| c.name == name).map(|c| c.value.as_str())
    }

    /// The offering of this SKU at these prices; `None` when it cannot be bought here (restricted
    /// for the subscription, no on-demand price, no size).
    fn offering(&self, region: &str, prices: Prices) -> Option<Offering> {
        if self.resource_type != "virtualMachines" || self.restrictions.iter().any(|r| r.kind == "Location") {
            return None;
        }
        let restricted_zones: Vec<&String> =
            self.restrictions.iter().filter(|r| r.kind == "Zone").flat_map(|r| &r.restriction_info.zones).collect();
        let zones = self
            .location_info
            .iter()
            .flat_map(|info| &info.zones)
            .filter(|zone| !restricted_zones.contains(zone))
            .cloned()
            .collect();
        let vcpus: u64 = self.capability("vCPUs")?.parse().ok()?;
        let memory = gib_micros_to_bytes(parse_micros(self.capability("MemoryGB")?)?);
        let arch = match self.capability("CpuArchitectureType") {
            Some("Arm64") => "arm64",
            _ => "amd64",
        };
        Some(Offering {
            provider: "azure".to_string(),
            region: region.to_string(),
            zones,
            instance_type: self.name.clone(),
            capacity: Resources::new(vcpus * 1000, memory),
            gpus: self.capability("GPUs").and_then(|g| g.parse().ok()).unwrap_or(0),
            arch: arch.to_string(),
            labels: BTreeMap::new(),
            price_on_demand: prices.on_demand?,
            price_spot: prices.spot,
            sunk: false,
        })
    }
}

/// Every offering of `region`: its VM SKUs priced from the Retail Prices API.
#[tracing::instrument(skip_all, fields(region = %region))]
pub(crate) async fn region_offerings(
    arm: &ArmClient,
    subscription_id: &str,
    retail_prices_url: &str,
    region: &str,
) -> Result<Vec<Offering>, ProviderError> {
    let url = format!(
        "{}&$filter={}",
        arm.url(&format!("/subscriptions/{subscription_id}/providers/Microsoft.Compute/skus"), SKUS_API_VERSION),
        encode(&format!("location eq '{region}'"))
    );
    let skus: Vec<ResourceSku> = arm.list(url, "resource skus").await?;
    let prices = retail_prices(arm.http(), retail_prices_url, region).await?;
    let offerings: Vec<Offering> = skus
        .iter()
        .filter_map(|sku| sku.offering(region, prices.get(&sku.name.to_ascii_lowercase()).copied().unwrap_or_default()))
        .collect();
    tracing::info!(skus = skus.len(), priced = prices.len(), offerings = offerings.len(), "price book loaded");
    Ok(offerings)
}

/// Linux consumption prices per size (lowercased name): the API lists Windows, Low Priority
/// and Spot as separate meters; Windows and Low Priority are skipped.
async fn retail_prices(
    http: &reqwest::Client,
    base_url: &str,
    region: &str,
) -> Result<HashMap<String, Prices>, ProviderError> {
    let filter =
        format!("serviceName eq 'Virtual Machines' and armRegionName eq '{region}' and priceType eq 'Consumption'");
    let mut next = Some(format!("{base_url}?api-version=2023-01-01-preview&$filter={}", encode(&filter)));
    let mut prices: HashMap<String, Prices> = HashMap::new();
    while let Some(url) = next {
        let response = http.get(&url).send().await.map_err(|e| ProviderError::Other(format!("retail prices: {e}")))?;
        if response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(ProviderError::Throttled { retry_after: std::time::Duration::from_secs(5) });
        }
        let response = response.error_for_status().map_err(|e| ProviderError::Other(format!("retail prices: {e}")))?;
        let page: RetailPage = response
            .json()
            .await
            .map_err(|e| ProviderError::Other(format!("retail prices: unexpected response: {e}")))?;
        for item in page.items {
            if item.price_type != "Consumption"
                || item.unit_of_measure != "1 Hour"
                || item.product_name.contains("Windows")
                || item.sku_name.ends_with("Low Priority")
            {
                continue;
            }
            let Some(micros) = parse_micros(&format!("{}", item.retail_price)) else { continue };
            let entry = prices.entry(item.arm_sku_name.to_ascii_lowercase()).or_default();
            let slot = if item.sku_name.ends_with(" Spot") { &mut entry.spot } else { &mut entry.on_demand };
            *slot = Some(slot.map_or(micros, |known| known.min(micros)));
        }
        next = page.next_page_link.filter(|link| !link.is_empty());
    }
    Ok(prices)
}

/// Percent-encodes a query value (the OData filters hold spaces and quotes).
pub(crate) fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
