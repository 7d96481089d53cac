//! Canopy's OpenStack provider (work in progress).
