//! The catalog of machines that can be bought (or, for owned capacity, switched on): one
//! [`Offering`] per provider, region and instance type, with integer prices.
//!
//! It parses the project's price CSVs (`core/data/prices/*.csv`) from text; reading the files
//! is the caller's business, so this module does no I/O. It deliberately knows nothing about
//! a provider's API: an offering is only what the planner needs to compare costs.

use super::model::MicrosPerHour;
use crate::resources::Resources;
use std::collections::BTreeMap;
use std::collections::HashMap;

const GIB: u64 = 1 << 30;

/// One kind of machine that can be had.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Offering {
    pub provider: String,
    pub region: String,
    /// Zones it can be placed in; empty means the provider picks.
    pub zones: Vec<String>,
    pub instance_type: String,
    pub capacity: Resources,
    pub gpus: u32,
    /// Empty means "amd64".
    pub arch: String,
    /// Labels every machine of this offering will carry (for label constraints).
    pub labels: BTreeMap<String, String>,
    pub price_on_demand: MicrosPerHour,
    /// Known for few offerings; `None` means spot cannot be bought (or its price is unknown).
    pub price_spot: Option<MicrosPerHour>,
    /// Owned capacity priced at an amortized rate: already paid for, so using it is free.
    pub sunk: bool,
}

impl Offering {
    pub fn arch(&self) -> &str {
        if self.arch.is_empty() { "amd64" } else { &self.arch }
    }

    /// What one more machine of this offering adds to the hourly bill: nothing for owned
    /// capacity, the spot or on-demand price otherwise.
    pub fn marginal_price(&self, spot: bool) -> Option<MicrosPerHour> {
        if self.sunk {
            return Some(0);
        }
        if spot { self.price_spot } else { Some(self.price_on_demand) }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
    pub offerings: Vec<Offering>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CatalogError {
    #[error("price catalog has no header line")]
    Empty,
    #[error("price catalog header lacks column {0}")]
    MissingColumn(&'static str),
    #[error("price catalog line {line}: {field} {value:?} is not a number")]
    BadNumber { line: usize, field: &'static str, value: String },
    #[error("price catalog line {line}: expected {expected} fields, found {found}")]
    BadWidth { line: usize, expected: usize, found: usize },
}

impl Catalog {
    /// Parses one of the shipped price CSVs (`aws.csv`, `azure.csv`, or any CSV with the
    /// columns `provider,region,instance_type,vcpus,memory_gib,gpus,arch,price_ondemand_hour,
    /// price_spot_hour` in any order; other columns are ignored). Rows without an on-demand
    /// price are skipped: they cannot be bought at a known price.
    pub fn from_csv(text: &str) -> Result<Catalog, CatalogError> {
        let mut lines = text.lines().enumerate();
        let header = lines.next().ok_or(CatalogError::Empty)?.1;
        let columns: HashMap<&str, usize> = header.split(',').map(str::trim).enumerate().map(|(i, c)| (c, i)).collect();
        let col = |name: &'static str| columns.get(name).copied().ok_or(CatalogError::MissingColumn(name));
        let (provider, region, instance_type) = (col("provider")?, col("region")?, col("instance_type")?);
        let (vcpus, memory, gpus, arch) = (col("vcpus")?, col("memory_gib")?, col("gpus")?, col("arch")?);
        let (on_demand, spot) = (col("price_ondemand_hour")?, col("price_spot_hour")?);
        let width = columns.len();

        let mut offerings = Vec::new();
        for (index, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            let line_number = index + 1;
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            if fields.len() != width {
                return Err(CatalogError::BadWidth { line: line_number, expected: width, found: fields.len() });
            }
            let number = |at: usize, field: &'static str| {
                parse_micros(fields[at]).ok_or_else(|| CatalogError::BadNumber {
                    line: line_number,
                    field,
                    value: fields[at].to_string(),
                })
            };
            if fields[on_demand].is_empty() {
                continue;
            }
            let price_spot = if fields[spot].is_empty() { None } else { Some(number(spot, "price_spot_hour")?) };
            offerings.push(Offering {
                provider: fields[provider].to_string(),
                region: fields[region].to_string(),
                zones: Vec::new(),
                instance_type: fields[instance_type].to_string(),
                capacity: Resources::new(
                    number(vcpus, "vcpus")? / 1000,
                    gib_micros_to_bytes(number(memory, "memory_gib")?),
                ),
                gpus: u32::try_from(number(gpus, "gpus")? / 1_000_000).unwrap_or(u32::MAX),
                arch: fields[arch].to_string(),
                labels: BTreeMap::new(),
                price_on_demand: number(on_demand, "price_ondemand_hour")?,
                price_spot,
                sunk: false,
            });
        }
        Ok(Catalog { offerings })
    }

    pub fn extend(&mut self, other: Catalog) {
        self.offerings.extend(other.offerings);
    }

    pub fn is_empty(&self) -> bool {
        self.offerings.is_empty()
    }
}

/// Per-unit rates for owned capacity (the shipped `onprem_reference.csv`), used to price a
/// bare-metal or private-cloud machine class at an amortized hourly rate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnedRates {
    pub per_vcpu_hour: MicrosPerHour,
    pub per_gib_hour: MicrosPerHour,
    pub per_gpu_hour: MicrosPerHour,
}

impl OwnedRates {
    /// Parses `provider,resource,unit,price_ondemand,price_spot` rows, reading the `vcpu`,
    /// `memory` and `gpu` resources' on-demand rates.
    pub fn from_csv(text: &str) -> Result<OwnedRates, CatalogError> {
        let mut rates = OwnedRates::default();
        for (index, line) in text.lines().enumerate().skip(1) {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            if fields.len() < 4 {
                continue;
            }
            let rate = parse_micros(fields[3]).ok_or_else(|| CatalogError::BadNumber {
                line: index + 1,
                field: "price_ondemand",
                value: fields[3].to_string(),
            })?;
            match fields[1] {
                "vcpu" => rates.per_vcpu_hour = rate,
                "memory" => rates.per_gib_hour = rate,
                "gpu" => rates.per_gpu_hour = rate,
                _ => {}
            }
        }
        Ok(rates)
    }

    /// An owned machine class (sunk cost) priced from these rates.
    pub fn offering(
        &self,
        provider: &str,
        region: &str,
        instance_type: &str,
        capacity: Resources,
        gpus: u32,
    ) -> Offering {
        let price = (capacity.milli_cpu as u128 * self.per_vcpu_hour as u128 / 1000
            + capacity.memory_bytes as u128 * self.per_gib_hour as u128 / GIB as u128
            + gpus as u128 * self.per_gpu_hour as u128) as u64;
        Offering {
            provider: provider.to_string(),
            region: region.to_string(),
            instance_type: instance_type.to_string(),
            capacity,
            gpus,
            price_on_demand: price,
            sunk: true,
            ..Offering::default()
        }
    }
}

/// Parses a non-negative decimal ("0.0104", "16", "1.75") into millionths, rounding half up
/// past the sixth decimal. Integers keep prices exact, so sums and comparisons are too.
pub fn parse_micros(text: &str) -> Option<u64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    if !whole.bytes().all(|b| b.is_ascii_digit()) || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u64 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let mut micros = whole.checked_mul(1_000_000)?;
    let digits = fraction.as_bytes();
    let mut scale = 100_000;
    for &digit in digits.iter().take(6) {
        micros += u64::from(digit - b'0') * scale;
        scale /= 10;
    }
    if digits.get(6).is_some_and(|&d| d >= b'5') {
        micros += 1;
    }
    Some(micros)
}

/// GiB in millionths to bytes, exactly for the catalogs' values (0.75, 1.75, 3.5, ...).
pub fn gib_micros_to_bytes(micros: u64) -> u64 {
    (micros as u128 * GIB as u128 / 1_000_000) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_become_exact_micros() {
        assert_eq!(parse_micros("0.0104"), Some(10_400));
        assert_eq!(parse_micros("16"), Some(16_000_000));
        assert_eq!(parse_micros("0.00005479452"), Some(55));
        assert_eq!(parse_micros("1.75"), Some(1_750_000));
        assert_eq!(parse_micros(""), None);
        assert_eq!(parse_micros("-1"), None);
        assert_eq!(parse_micros("1e3"), None);
    }

    #[test]
    fn parses_both_catalog_layouts() {
        let aws = "provider,region,instance_type,vcpus,memory_gib,gpus,gpu_model,accelerators,arch,price_ondemand_hour,price_spot_hour,spec_source\n\
                   aws,us-east-1,c5.large,2,4,0,,0,amd64,0.085,0.03404,karpenter-docs\n";
        let azure = "provider,region,instance_type,vcpus,memory_gib,gpus,arch,price_ondemand_hour,price_spot_hour,spec_source\n\
                     azure,australiacentral,Standard_A1,1,1.75,0,,0.071,,ccf\n";
        let aws = Catalog::from_csv(aws).expect("aws parses");
        let c5 = &aws.offerings[0];
        assert_eq!(c5.capacity, Resources::new(2000, 4 * GIB));
        assert_eq!((c5.price_on_demand, c5.price_spot), (85_000, Some(34_040)));
        let azure = Catalog::from_csv(azure).expect("azure parses");
        let a1 = &azure.offerings[0];
        assert_eq!(a1.capacity.memory_bytes, GIB * 7 / 4);
        assert_eq!((a1.arch(), a1.price_spot), ("amd64", None));
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let text = "provider,region,instance_type,vcpus,memory_gib,gpus,arch,price_ondemand_hour,price_spot_hour\n\
                    aws,r,t,two,4,0,amd64,0.1,\n";
        let err = Catalog::from_csv(text).expect_err("bad vcpus");
        assert_eq!(err.to_string(), "price catalog line 2: vcpus \"two\" is not a number");
        assert_eq!(Catalog::from_csv("provider\n"), Err(CatalogError::MissingColumn("region")));
    }

    #[test]
    fn owned_capacity_is_priced_by_the_reference_rates_and_sunk() {
        let rates = OwnedRates::from_csv(
            "provider,resource,unit,price_ondemand,price_spot\ncustom-default,vcpu,vCPU-hour,0.031611,0.006655\n\
             custom-default,memory,GiB-hour,0.004237,0.000892\ncustom-default,gpu,GPU-hour,0.95,\n",
        )
        .expect("rates parse");
        let metal = rates.offering("baremetal", "dc1", "r740", Resources::new(64_000, 256 * GIB), 0);
        assert_eq!(metal.price_on_demand, 64 * 31_611 + 256 * 4_237);
        assert_eq!(metal.marginal_price(false), Some(0));
    }
}
