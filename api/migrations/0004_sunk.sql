-- Owned capacity (bare-metal hosts, a private OpenStack) is paid for whether used or not:
-- keeping it busy costs nothing extra, and giving it back saves nothing. Its price_micros is
-- the amortized rate, for the cost reports.
ALTER TABLE machines ADD COLUMN sunk boolean NOT NULL DEFAULT false;
