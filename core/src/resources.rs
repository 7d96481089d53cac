//! Resources as integers: milli-cpus and bytes. No floats, so sums and comparisons are exact.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Thousandths of a cpu: 1000 = one full core.
    pub milli_cpu: u64,
    pub memory_bytes: u64,
}

impl Resources {
    pub const ZERO: Resources = Resources { milli_cpu: 0, memory_bytes: 0 };

    pub fn new(milli_cpu: u64, memory_bytes: u64) -> Self {
        Resources { milli_cpu, memory_bytes }
    }

    /// True when `other` fits inside `self` in every dimension.
    pub fn fits(&self, other: &Resources) -> bool {
        other.milli_cpu <= self.milli_cpu && other.memory_bytes <= self.memory_bytes
    }

    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        Resources {
            milli_cpu: self.milli_cpu.saturating_sub(other.milli_cpu),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
        }
    }
}

impl std::ops::Add for Resources {
    type Output = Resources;
    fn add(self, other: Resources) -> Resources {
        Resources {
            milli_cpu: self.milli_cpu.saturating_add(other.milli_cpu),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
        }
    }
}

impl std::ops::AddAssign for Resources {
    fn add_assign(&mut self, other: Resources) {
        *self = *self + other;
    }
}

impl std::iter::Sum for Resources {
    fn sum<I: Iterator<Item = Resources>>(iter: I) -> Resources {
        iter.fold(Resources::ZERO, |a, b| a + b)
    }
}
