//! The metering controller: keeps the materialised cost ledger (`Store::meter`) current, at
//! most once per interval, since a day's ledger is recomputed whole each time.

use crate::store::{Result, Store};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Metering {
    interval: Duration,
    last: Mutex<Option<Instant>>,
}

impl Default for Metering {
    fn default() -> Self {
        Metering::new(Duration::from_secs(60))
    }
}

impl Metering {
    pub fn new(interval: Duration) -> Metering {
        Metering { interval, last: Mutex::new(None) }
    }

    /// Meters up to now when `interval` has passed since the last time (or never ran).
    pub async fn step(&self, store: &Store) -> Result<()> {
        let due = self.last.lock().map(|last| last.is_none_or(|at| at.elapsed() >= self.interval)).unwrap_or(true);
        if !due {
            return Ok(());
        }
        if let Some(days) = store.meter(chrono::Utc::now()).await? {
            tracing::debug!(days, "metered");
        }
        if let Ok(mut last) = self.last.lock() {
            *last = Some(Instant::now());
        }
        Ok(())
    }
}
