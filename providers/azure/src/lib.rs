//! Canopy's Azure provider (work in progress).
