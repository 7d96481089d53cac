//! The price catalogs shipped in `core/data/prices`, embedded: the single-provider baseline of
//! the savings report and the offerings of the history generator.

use canopy_core::schedule::{Catalog, OwnedRates};
use std::sync::OnceLock;

const CLOUD_CATALOGS: [&str; 2] =
    [include_str!("../../core/data/prices/aws.csv"), include_str!("../../core/data/prices/azure.csv")];
const OWNED_RATES: &str = include_str!("../../core/data/prices/onprem_reference.csv");

/// AWS and Azure, every region, parsed once.
pub fn shipped_catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        let mut catalog = Catalog::default();
        for text in CLOUD_CATALOGS {
            match Catalog::from_csv(text) {
                Ok(parsed) => catalog.extend(parsed),
                Err(error) => tracing::error!(%error, "shipped price catalog unreadable"),
            }
        }
        catalog
    })
}

/// The reference rates owned capacity is amortized at.
pub fn owned_rates() -> OwnedRates {
    OwnedRates::from_csv(OWNED_RATES).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_shipped_catalogs_parse() {
        assert!(super::shipped_catalog().offerings.len() > 50_000);
        assert!(super::owned_rates().per_vcpu_hour > 0);
    }
}
