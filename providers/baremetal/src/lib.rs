//! Canopy's bare-metal provider (work in progress).
