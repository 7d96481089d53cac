//! The metering controller: keeps the materialised cost ledger (`Store::meter`) current and
//! checks team budgets (`Store::check_budgets`), at most once per interval since a day's
//! ledger is recomputed whole each time; then delivers pending budget webhooks.

use crate::store::{Result, Store};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Metering {
    interval: Duration,
    last: Mutex<Option<Instant>>,
    webhooks: reqwest::Client,
}

impl Default for Metering {
    fn default() -> Self {
        Metering::new(Duration::from_secs(60))
    }
}

impl Metering {
    pub fn new(interval: Duration) -> Metering {
        let webhooks = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_default();
        Metering { interval, last: Mutex::new(None), webhooks }
    }

    /// Meters up to now when `interval` has passed since the last time (or never ran).
    pub async fn step(&self, store: &Store) -> Result<()> {
        let due = self.last.lock().map(|last| last.is_none_or(|at| at.elapsed() >= self.interval)).unwrap_or(true);
        if !due {
            return Ok(());
        }
        let now = chrono::Utc::now();
        if let Some(days) = store.meter(now).await? {
            tracing::debug!(days, "metered");
        }
        if let Some(alerts) = store.check_budgets(now).await?
            && alerts > 0
        {
            tracing::warn!(alerts, "team budget forecasts crossed their budgets");
        }
        self.deliver_webhooks(store).await?;
        if let Ok(mut last) = self.last.lock() {
            *last = Some(Instant::now());
        }
        Ok(())
    }

    /// POSTs each pending alert to its webhook; a failure is retried at the next step.
    async fn deliver_webhooks(&self, store: &Store) -> Result<()> {
        for webhook in store.pending_webhooks().await? {
            let sent = self.webhooks.post(&webhook.url).json(&webhook.payload).send().await;
            let error = match sent.and_then(|response| response.error_for_status()) {
                Ok(_) => None,
                Err(error) => Some(error.without_url().to_string()),
            };
            if let Some(error) = &error {
                tracing::warn!(alert = webhook.id, %error, "budget webhook failed");
            }
            store.webhook_attempted(webhook.id, error.as_deref()).await?;
        }
        Ok(())
    }
}
